"""LLaMA-Factory configs -> alignkit configs.

A LLaMA-Factory training YAML is one flat mapping of its hparams (model_args, data_args, finetuning_args,
generating_args) and transformers' TrainingArguments. ``convert(raw, source)`` maps it onto the alignkit recipe
and config that train the same thing, and says, key by key, what it could not carry over and what it carried over
only approximately. ``alignkit <recipe> FILE.yaml`` accepts such a file directly (``load_llamafactory``), and
``alignkit convert llamafactory FILE.yaml`` writes the alignkit YAML (``Converted.to_yaml``).

Two rules make the mapping honest:
1. A key the file leaves out takes LLaMA-Factory's default, written out, where it differs from alignkit's (the
   learning rate, the schedule, LoRA on by default with rank 8 and alpha 2 x rank, gradient checkpointing on, no
   autocast without bf16 / fp16 ...): the converted run trains what the file would have trained.
2. A key whose loss would change what is trained in kind (the data, freeze tuning, a loss alignkit lacks, the
   reward model) is *blocking*: a direct run refuses it, naming the alignkit key an override may set instead.
   Other keys not carried over are listed; keys that change nothing about the result (worker counts, timeouts,
   cache switches, another stage's settings) are listed as without effect.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .base import C, ConfigError, deep_merge
from .llamafactory_data import KINDS, map_dataset
from .llamafactory_keys import Mapper, map_shared_keys
from .llamafactory_stages import STAGE_KEYS
from .loading import parse_overrides, read_yaml, validate

RECIPES = {"pt": "sft", "sft": "sft", "rm": "rm", "ppo": "ppo", "dpo": "dpo", "kto": "kto"}


@dataclass(frozen=True)
class Converted:
    """A LLaMA-Factory config in alignkit's terms."""

    source: str  # the file it came from
    stage: str  # LLaMA-Factory's stage: pt sft rm ppo dpo kto
    recipe: str  # the alignkit recipe that trains it
    config: dict[str, Any]  # the alignkit config (sections), valid for the recipe's config class
    unmapped: list[tuple[str, str]]  # (LLaMA-Factory key, why) for each key not carried over, blocking ones too
    notes: list[tuple[str, str]]  # (key, what differs) for keys mapped approximately and defaults written out
    ignored: list[tuple[str, str]]  # (key, why) for keys that change nothing about what is trained here
    blocking: dict[str, str]  # unmapped key -> the alignkit key an override may set in its place ("" = none)

    def report(self) -> str:
        """What was converted and what was not, for a person: one header line, then the lists."""
        lines = [f"alignkit: {self.source} is a LLaMA-Factory config (stage: {self.stage}) -> alignkit {self.recipe}"]
        blocking = [(k, why) for k, why in self.unmapped if k in self.blocking]
        dropped = [(k, why) for k, why in self.unmapped if k not in self.blocking]
        if blocking:
            lines.append("  NOT MAPPED, the run would not train what the file means until fixed:")
            lines += [f"    {k}: {why}" + (f" (or override {self.blocking[k]})" if self.blocking[k] else "")
                      for k, why in blocking]
        if dropped:
            lines.append("  not carried over:")
            lines += [f"    {k}: {why}" for k, why in dropped]
        if self.notes:
            lines.append("  mapped approximately:")
            lines += [f"    {k}: {note}" for k, note in self.notes]
        if self.ignored:
            lines.append("  no effect on what is trained: " + ", ".join(k for k, _ in self.ignored))
        return "\n".join(lines)

    def to_yaml(self, path: str = "FILE.yaml") -> str:
        """The alignkit YAML (to be written to ``path``), headed by comments naming the source and every key not
        carried over."""
        head = [f"# Converted from the LLaMA-Factory config {self.source} (stage: {self.stage}) by",
                f"# `alignkit convert llamafactory`. Run it with: alignkit {self.recipe} {path}"]
        if self.unmapped:
            head.append("# Not carried over ([MUST FIX]: the run would not train what the file means until fixed):")
            head += [f"#   {k}{' [MUST FIX]' if k in self.blocking else ''}: {why}" for k, why in self.unmapped]
        if self.notes:
            head.append("# Mapped approximately:")
            head += [f"#   {k}: {note}" for k, note in self.notes]
        if self.ignored:
            head.append("# No effect on what is trained: " + ", ".join(k for k, _ in self.ignored))
        return "\n".join(head) + "\n" + yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True)

    def require_runnable(self, extra: dict[str, Any]) -> None:
        """Refuse a blocking key unless ``extra`` (overrides, a pipeline stage's sections) sets its stand-in."""
        for key, why in self.unmapped:
            if key in self.blocking and not _has_path(extra, self.blocking[key]):
                fix = f", or pass {self.blocking[key]}=..." if self.blocking[key] else ""
                raise ConfigError(f"{self.source}: {key}: {why}{fix}")


def is_llamafactory(raw: Any) -> bool:
    """LLaMA-Factory's dialect: a flat file with a top-level ``stage:`` and ``model_name_or_path:``."""
    return isinstance(raw, dict) and "stage" in raw and "model_name_or_path" in raw


def is_llamafactory_file(path: str | Path) -> bool:
    return is_llamafactory(read_yaml(path)[0])


def convert(raw: dict[str, Any], source: str, lines: dict[str, int] | None = None) -> Converted:
    """Map a LLaMA-Factory config (the YAML's mapping) onto an alignkit recipe and config. ``source`` names the
    file in messages (``lines``: key -> its line, for errors); a relative ``dataset_dir`` is looked up from the
    current folder, then from the file's."""
    stage = raw.get("stage", "sft")
    if stage not in RECIPES:
        where = f"{source} line {lines['stage']}" if lines and "stage" in lines else source
        raise ConfigError(f"{where}: stage: {stage!r} is not a LLaMA-Factory stage ({', '.join(RECIPES)})")
    mapped = Mapper(raw, source, lines)
    _map_data(mapped, stage, Path(source).parent)
    map_shared_keys(mapped, stage)
    if stage in STAGE_KEYS:
        STAGE_KEYS[stage](mapped, stage)
    mapped.finish()
    return Converted(source, stage, RECIPES[stage], mapped.sections(), mapped.unmapped, mapped.notes,
                     mapped.ignored, mapped.blocking)


def key_lines(node: yaml.Node | None) -> dict[str, int]:
    """Top-level key -> its 1-based line in the YAML file (for messages)."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: key.start_mark.line + 1 for key, _ in node.value}


def _map_data(m: Mapper, stage: str, yaml_dir: Path) -> None:
    """``dataset`` -> data.train and ``eval_dataset`` -> data.eval, through dataset_info.json."""
    dataset_dir = str(m.get("dataset_dir") or "data")
    formats = []
    for key, target in (("dataset", "train"), ("eval_dataset", "eval")):
        if key == "eval_dataset" and not m.has(key):
            break
        answer = map_dataset(m.get(key), dataset_dir, stage, yaml_dir)
        for text in answer.notes:
            m.note(key, text)
        for text in answer.dropped:
            m.drop(key, text, track=False)
        if answer.problem:
            m.block(key, answer.problem, f"data.{target}")
            continue
        m.set(f"data.{target}", answer.values["source"])
        formats.append(answer.values.get("format"))
        for field in ("split", "subset"):
            if field in answer.values:
                m.set(f"data.{field}", answer.values[field])
    if len(set(formats)) > 1:  # one data.format reads both files
        m.block("eval_dataset", f"its format ({formats[1]}) differs from the dataset's ({formats[0]}); alignkit "
                "reads both with one data.format", "data.eval")
    elif formats and formats[0]:
        m.set("data.format", formats[0])
    if KINDS[stage] == "prompt" and not m.has("eval_dataset"):
        m.set("data.eval", None)  # alignkit's PPO evaluates on the demo prompts by default: split off train instead


def _has_path(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split(".") if dotted else []:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return bool(dotted)


def converted_sections(recipe: str, raw: dict[str, Any], source: str, extra: dict[str, Any] | None = None,
                       lines: dict[str, int] | None = None) -> dict[str, Any]:
    """The alignkit sections of a LLaMA-Factory config run as ``recipe``, its report printed on stderr. Refused in
    one line: a file whose stage is another recipe's, or a blocking key that ``extra`` (the overrides, a pipeline
    stage's own sections) does not stand in for."""
    converted = convert(raw, source, lines)
    print(converted.report(), file=sys.stderr)
    if converted.recipe != recipe:
        raise ConfigError(f"{source}: stage: {converted.stage} is LLaMA-Factory's {converted.stage} stage, which "
                          f"alignkit trains with `alignkit {converted.recipe}`, not `alignkit {recipe}`")
    converted.require_runnable(extra or {})
    sections = {k: dict(v) if isinstance(v, dict) else v for k, v in converted.config.items()}
    # an override's max_steps / warmup_steps takes over from the file's epochs / warmup_ratio, as in LLaMA-Factory
    # (alignkit refuses a length or warm-up given twice)
    for given, replaced in (("max_steps", "epochs"), ("warmup_steps", "warmup_ratio")):
        if (extra or {}).get("train", {}).get(given):
            sections.get("train", {}).pop(replaced, None)
    return sections


def load_llamafactory(recipe: str, cls: type[C], path: str | Path, overrides: list[str] | None = None) -> C:
    """``alignkit <recipe> FILE.yaml key=value ...`` for a LLaMA-Factory FILE: converted, reported on stderr,
    the overrides laid on top, validated as ``cls``."""
    raw, node = read_yaml(path)
    extra = parse_overrides(overrides or [])
    sections = converted_sections(recipe, raw, str(path), extra, key_lines(node))
    return validate(cls, deep_merge(sections, extra), source=f"{path} (converted from LLaMA-Factory)")
