"""``alignkit <recipe> CONFIG.yaml [key=value ...]``, ``alignkit pipeline PIPELINE.yaml``, ``alignkit demo``.

Each recipe's ``--help`` lists every config field with its default and one-line description.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys

from .config import ConfigError, describe_fields, load_config
from .config.llamafactory import is_llamafactory_file, load_llamafactory
from .convert import add_convert_parser, run_convert
from .data.formats import DataError
from .pipeline import RECIPES
from .scratch import ARCHITECTURES


def _fields_help(config_cls: type) -> str:
    rows = describe_fields(config_cls)
    width = max(len(k) for k, _, _ in rows)
    lines = ["config fields (YAML keys, or key=value overrides):"]
    for key, default, description in rows:
        lines.append(f"  {key:<{width}}  {description} [default: {default}]")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignkit",
        description="The LLM post-training pipeline from one YAML file: SFT, reward model, PPO, DPO, KTO, GRPO, eval.",
        epilog="Run `alignkit <command> --help` for every config field of a recipe.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, recipe in RECIPES.items():
        p = sub.add_parser(name, help=recipe.summary, description=f"alignkit {name}: {recipe.summary}",
                           epilog=_fields_help(recipe.config), formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("config", nargs="?", help="YAML config file (omit to use the defaults: the demo task)")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
        p.add_argument("--accelerate-config", metavar="FILE", default=None,
                       help="run under `accelerate launch --config_file FILE` (DDP / FSDP / DeepSpeed, several GPUs)")
        p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                       help="continue from the latest checkpoint (of RUN_DIR, or of run.output_dir)")
    pipe = sub.add_parser("pipeline", help="run the stages of a pipeline file in order (SFT -> RM -> PPO / DPO / GRPO -> eval)",
                          description="alignkit pipeline: named stages run in order, each referring to earlier outputs "
                                      "with ${stage.output}; finished stages are skipped, interrupted ones resumed, "
                                      "changed ones re-run with the stages after them.")
    pipe.add_argument("config", help="pipeline YAML file (stages:, output_dir:)")
    _pipeline_flags(pipe, default_out=None)
    demo = sub.add_parser("demo", help="the offline showcase: the demo pipeline on the built-in arithmetic world (no downloads)")
    _pipeline_flags(demo, default_out="runs/demo")
    add_convert_parser(sub)  # alignkit convert llamafactory FILE.yaml
    from .data import curate  # argparse only: each data command imports its work when it runs

    curate.add_parser(sub)
    init = sub.add_parser("init", help="build a BPE tokenizer and a small model of a chosen architecture from your corpus",
                          description="alignkit init: train a byte-level BPE on every string of CORPUS (.txt, or any "
                                      "data file alignkit reads) and build a randomly initialised model of ARCH with "
                                      "it, saved as a Hugging Face folder every command loads")
    init.add_argument("corpus", help="a .txt / .jsonl / .json / .parquet / .csv file")
    init.add_argument("--out", required=True, help="the model folder to create (must not exist, or be empty)")
    init.add_argument("--arch", default="llama", choices=sorted(ARCHITECTURES), help="architecture (default llama)")
    for flag, default, what in (("vocab-size", 2000, "BPE vocabulary size"), ("hidden", 128, "hidden size"),
                                ("layers", 4, "decoder layers"), ("heads", 4, "attention heads"),
                                ("max-positions", 256, "longest sequence, in tokens"), ("seed", 0, "initialisation seed")):
        init.add_argument(f"--{flag}", type=int, default=default, help=f"{what} (default {default})")
    return parser


def _pipeline_flags(parser: argparse.ArgumentParser, default_out: str | None) -> None:
    parser.add_argument("--out", default=default_out, help="the pipeline folder (default: the file's output_dir)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only", metavar="STAGE", help="run only this stage (again, if it finished)")
    which.add_argument("--from", dest="start", metavar="STAGE", help="run this stage (again) and every stage after it")


# How Rust-backed libraries (safetensors, tokenizers) quote the OS error under their own exception types.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _one_line(text: object) -> str:
    """An error is one line: several (one per bad config key, say) are joined, never printed as a block."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _os_failure(exc: BaseException, cfg) -> str | None:
    """One line for a failed file-system operation, also when a library re-raised it as its own type
    (safetensors' SafetensorError, torch.save's RuntimeError); None when ``exc`` is not one."""
    run_dir = cfg.run.output_dir if hasattr(cfg, "run") else None
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno:
        code = exc.errno
    elif match := _RUST_OS_ERROR.search(str(exc)):
        code = int(match.group(1))
    elif isinstance(exc, RuntimeError) and "file write failed" in str(exc):  # torch.save's stream writer
        return f"a write under {run_dir or 'the output folder'} failed (torch.save: file write failed); is the disk full?"
    elif isinstance(exc, OSError):  # transformers / the hub: a message of their own (no such repo, no network)
        return _one_line(str(exc))
    else:
        return None
    if code in (errno.ENOSPC, errno.EDQUOT) and run_dir:  # a write to the run folder, nearly always
        return (f"{os.strerror(code)} while writing under {run_dir}; complete checkpoints there are intact: "
                "free space, then rerun with --resume")
    return f"{os.strerror(code)} ({type(exc).__name__}: {_one_line(exc)})"


def _is_model_error(exc: BaseException) -> bool:
    """A `models.ModelError` or `rewards.RewardError`, without importing torch for `alignkit --help`: a module
    not loaded cannot have raised its error."""
    for module, name in (("alignkit.models", "ModelError"), ("alignkit.rewards", "RewardError")):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


def accelerate_command(config_file: str, argv: list[str]) -> list[str]:
    """The same alignkit command under ``accelerate launch --config_file FILE`` (the flag itself removed)."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--accelerate-config":
            skip = True
        elif not arg.startswith("--accelerate-config="):
            rest.append(arg)
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file, "-m", "alignkit.cli", *rest]


def _relaunch(config_file: str, argv: list[str]) -> int:
    import subprocess
    from pathlib import Path

    if not Path(config_file).is_file():
        raise ConfigError(f"--accelerate-config {config_file}: no such file (write one with `accelerate config`)")
    return subprocess.call(accelerate_command(config_file, argv))


def demo_pipeline_file():
    """The demo's pipeline file, shipped inside the package (examples/demo_pipeline.yaml links to it)."""
    from pathlib import Path

    return Path(__file__).parent / "demo" / "demo_pipeline.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    cfg = None
    try:
        if args.command == "data":
            from .data import curate

            return curate.run(args)
        if args.command == "init":
            from .scratch import init_model

            out = init_model(args.corpus, args.out, args.arch, args.vocab_size, hidden=args.hidden, layers=args.layers,
                             heads=args.heads, max_positions=args.max_positions, seed=args.seed)
            print(f"alignkit init: a {args.arch} model and its tokenizer in {out}")
            return 0
        if args.command == "convert":
            return run_convert(args)
        if args.command in ("pipeline", "demo"):
            from .pipeline import run_pipeline

            path = args.config if args.command == "pipeline" else demo_pipeline_file()
            run_pipeline(path, only=args.only, start=args.start, out=args.out)
            return 0
        recipe = RECIPES[args.command]
        if getattr(args, "accelerate_config", None):
            return _relaunch(args.accelerate_config, list(argv if argv is not None else sys.argv[1:]))
        config, overrides = args.config, list(args.overrides)
        if config and "=" in config and not config.endswith((".yaml", ".yml")):
            config, overrides = None, [config, *overrides]  # only overrides were given
        if config and is_llamafactory_file(config):  # a LLaMA-Factory YAML: converted, its report on stderr
            cfg = load_llamafactory(args.command, recipe.config, config, overrides)
        else:
            cfg = load_config(recipe.config, config, overrides)
        from .pipeline import resolve

        cfg = resolve(cfg)
        recipe.train(cfg, args.resume)
        return 0
    except (ConfigError, DataError) as exc:
        print(f"alignkit: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"alignkit: stopped: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:  # only the known kinds of user-facing failure; anything else is a bug: traceback
        message = _one_line(exc) if _is_model_error(exc) else _os_failure(exc, cfg)
        if message is None:
            raise
        print(f"alignkit: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
