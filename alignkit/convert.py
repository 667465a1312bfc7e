"""``alignkit convert llamafactory FILE.yaml [-o OUT.yaml]``: another framework's config as alignkit YAML.

The mapping is ``alignkit.config.llamafactory``; this is the command around it: read, convert, write the result
atomically beside the file (never over it), print the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import ConfigError, read_yaml
from .config.llamafactory import convert, is_llamafactory, key_lines

DIALECTS = ("llamafactory",)


def add_convert_parser(sub) -> None:
    """The ``convert`` subcommand, on the subparsers of alignkit's parser."""
    p = sub.add_parser("convert", help="write another framework's training config as alignkit YAML (llamafactory)",
                       description="alignkit convert: a LLaMA-Factory training YAML (stage: sft / pt / rm / dpo / kto / "
                                   "ppo) as the alignkit config that trains the same thing, with a report of every "
                                   "key mapped only approximately or not at all. `alignkit <recipe> FILE.yaml` also "
                                   "takes such a file directly.")
    p.add_argument("dialect", choices=DIALECTS, help="the config's framework")
    p.add_argument("file", help="the config to convert (never overwritten)")
    p.add_argument("-o", "--out", default=None, help="where to write the alignkit YAML (default: FILE.alignkit.yaml)")


def run_convert(args: argparse.Namespace) -> int:
    from .checkpoint import atomic_write_text

    path = Path(args.file)
    raw, node = read_yaml(path)
    if not is_llamafactory(raw):
        raise ConfigError(f"{path}: not a LLaMA-Factory config (expected top-level stage: and model_name_or_path:)")
    converted = convert(raw, str(path), key_lines(node))
    out = Path(args.out) if args.out else path.with_name(f"{path.stem}.alignkit.yaml")
    if out.resolve() == path.resolve():
        raise ConfigError(f"-o {out}: that is the file being converted; write the alignkit config elsewhere")
    atomic_write_text(out, converted.to_yaml(str(out)))
    print(converted.report())
    print(f"wrote {out}; run it with: alignkit {converted.recipe} {out}")
    return 0
