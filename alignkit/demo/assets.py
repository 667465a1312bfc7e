"""``demo:`` names: the demo world's data files and models, built on first use into one folder.

The folder is ``$ALIGNKIT_DEMO_DIR`` or ``~/.cache/alignkit/demo-v1``. Everything in it is built from seeds in code
(no downloads); each piece is built into a temporary folder and renamed into place, so an interrupted build is
rebuilt rather than half-used.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import atomic_dir
from .world import WorldPaths, build_world

VERSION = "v1"
DATA_SETS = {  # demo:<name> as a data source -> WorldPaths attribute
    "sft": "sft", "prefs": "prefs", "prefs_eval": "prefs_eval", "ranked": "ranked", "kto": "kto",
    "prompts": "prompts_train", "prompts_eval": "prompts_eval", "sft_eval": "sft_eval", "teacher": "teacher",
    "tools_sft": "tools_sft", "tools_prompts": "tools_prompts", "tools_prompts_eval": "tools_prompts_eval",
    "prm_steps": "prm_steps", "prm_eval": "prm_eval", "prm_prompts": "prm_prompts", "prm_prompts_eval": "prm_prompts_eval",
}
MODELS = ("base", "sft", "rm", "base_large", "teacher", "tools_sft", "prm")
REWARDS = {"demo_gold": "gold_reward", "demo_format": "format_reward"}  # builtin name -> function in demo.world


def demo_root() -> Path:
    return Path(os.environ.get("ALIGNKIT_DEMO_DIR") or Path.home() / ".cache" / "alignkit" / f"demo-{VERSION}")


def demo_world() -> WorldPaths:
    """The demo world's files (seed 0), built if missing."""
    root = demo_root() / "world"
    paths = WorldPaths.at(root)
    if not all(getattr(paths, name).is_file() for name in DATA_SETS.values()) or not paths.meta.is_file():
        with atomic_dir(root) as tmp:
            build_world(tmp, seed=0)
    return WorldPaths.at(root)


def demo_data(name: str) -> Path:
    if name == "constitution":  # shipped in the package, not built: alignkit cai's demo constitution
        return Path(__file__).with_name("constitution.yaml")
    if name not in DATA_SETS:
        raise ValueError(f'unknown demo data set "demo:{name}"; known: {", ".join("demo:" + n for n in DATA_SETS)}')
    return getattr(demo_world(), DATA_SETS[name])


def demo_model(name: str) -> Path:
    """demo:base = the untrained tiny model; demo:sft = it after the demo's SFT run; demo:rm = the demo's reward
    model trained from demo:sft; demo:base_large = a bigger untrained model on the same tokenizer; demo:teacher =
    it after SFT on the world's curated answers; demo:tools_sft = demo:sft after SFT on the tool world's
    transcripts; demo:prm = a process reward model trained from demo:sft on the step world's labelled solutions
    (each trained on first use)."""
    if name not in MODELS:
        raise ValueError(f'unknown demo model "demo:{name}"; known: {", ".join("demo:" + n for n in MODELS)}')
    path = demo_root() / f"{name}-model"
    if (path / "config.json").is_file():
        return path
    if name in ("base", "base_large"):
        from .tiny import build_base_model

        world = demo_world()
        with atomic_dir(path) as tmp:
            build_base_model(tmp, world, seed=0, size="large" if name == "base_large" else "small")
        return path
    from .run import train_demo_stage

    train_demo_stage(name, demo_root() / "runs" / name, final_copy=path)
    return path


def demo_lookup(kind: str, value: str) -> str | dict:
    """What a ``demo:`` name in a path field means (``config.resolve_paths`` calls this for each field of that
    kind): a model folder, a data file, or, for the demo rewards, a Python function source in ``demo.world``
    (keeping its label). Anything else is returned unchanged."""
    if kind == "model" and value.startswith("demo:"):
        return str(demo_model(value.removeprefix("demo:")))
    if kind == "data" and value.startswith("demo:"):
        return str(demo_data(value.removeprefix("demo:")))
    if kind == "builtin" and value in REWARDS:
        return {"builtin": None, "fn": f"alignkit.demo.world:{REWARDS[value]}", "name": value}
    return value


def demo_resolved(cfg):
    """``cfg`` with its ``demo:`` names as real paths. The demo world samples its records with replacement (and
    flips some labels on purpose), so a demo data set keeps its repeats (data.duplicates = keep) where the
    recipe checks for them."""
    from ..config import resolve_paths

    data = getattr(cfg, "data", None)
    refused = getattr(cfg, "REFUSED", {})
    if data is not None and data.train.startswith("demo:") and "data.duplicates" not in refused:
        cfg = cfg.model_copy(update={"data": data.model_copy(update={"duplicates": "keep"})})
    return resolve_paths(cfg, demo_lookup)
