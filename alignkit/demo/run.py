"""``alignkit demo``: the whole pipeline on the arithmetic world, offline, on a laptop CPU.

Stages so far: build the world and the tiny model -> score the untrained model -> SFT -> score again. Scores come
from the hidden gold judge (correct +1, polite +0.5, rude -0.5, unparseable -1) on eval prompts that include
number pairs held out from all training data.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..config import SFTConfig, validate
from ..data.loading import load_examples
from ..sampling import SamplingParams
from .world import format_reward, gold_reward

# The demo's SFT settings: tuned for the ~1M-parameter model on 2 CPU cores (about a minute).
DEMO_SFT: dict[str, Any] = {
    "model": {"name_or_path": "demo:base", "device": "cpu"},
    "data": {"train": "demo:sft", "eval_fraction": 0.05, "max_length": 96},
    "train": {"batch_size": 32, "max_steps": 1000, "lr": 3e-3, "warmup_ratio": 0.05, "weight_decay": 0.01},
    "run": {"log_every": 10, "eval_every": 250, "sample_every": 250, "num_samples": 4, "sample_max_new_tokens": 32,
            "save_every": 250, "threads": 2},
}
EVAL_SAMPLING = SamplingParams(max_new_tokens=32, temperature=0.0)


def demo_sft_config(run_dir: Path, fast: bool = False, **overrides: Any) -> SFTConfig:
    cfg = {**DEMO_SFT, "run": {**DEMO_SFT["run"], "output_dir": str(run_dir), "progress": not fast}}
    if fast:
        cfg["train"] = {**cfg["train"], "max_steps": 150}
    for section, values in overrides.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return validate(SFTConfig, cfg, source="demo SFT settings")


def train_demo_sft(run_dir: Path, final_copy: Path | None = None, fast: bool = False) -> dict:
    """Run the demo's SFT stage; optionally copy the final model to ``final_copy`` (the demo:sft model)."""
    from ..recipes.sft import train

    summary = train(demo_sft_config(run_dir, fast=fast))
    if final_copy is not None:
        from ..checkpoint import atomic_dir

        with atomic_dir(final_copy) as tmp:
            shutil.copytree(Path(run_dir) / "final", tmp, dirs_exist_ok=True)
    return summary


def score_model(model_path: str, n_prompts: int = 200) -> dict[str, float]:
    """Gold score and well-formed rate of greedy answers to the demo's eval prompts."""
    from ..config import ModelConfig
    from ..eval import evaluate_policy
    from ..models import load_causal_lm, load_tokenizer
    from .assets import demo_data

    model_cfg = ModelConfig(name_or_path=model_path, device="cpu")
    tokenizer = load_tokenizer(model_cfg)
    model = load_causal_lm(model_cfg, tokenizer)
    prompts = load_examples(str(demo_data("prompts_eval")), "prompt")[:n_prompts]
    metrics, _ = evaluate_policy(model, tokenizer, prompts, {"gold": gold_reward, "format": format_reward},
                                 EVAL_SAMPLING, split_field="held_out")
    return metrics


def run_demo(out: str | Path = "runs/demo", fast: bool = False) -> dict[str, dict[str, float]]:
    """Build the world, score the untrained model, run SFT, score again, print the comparison."""
    from rich.console import Console
    from rich.table import Table

    out = Path(out)
    os.environ["ALIGNKIT_DEMO_DIR"] = str(out.resolve())
    console = Console()
    from .assets import demo_model, demo_world

    world = demo_world()
    base = demo_model("base")
    console.print(f"[bold]alignkit demo[/bold]: world in {world.root}, tiny model in {base}")
    results = {"untrained": score_model(str(base))}
    sft_dir = out / "runs" / "sft"
    if sft_dir.exists():
        shutil.rmtree(sft_dir)
    train_demo_sft(sft_dir, final_copy=out / "sft-model", fast=fast)
    results["sft"] = score_model(str(out / "sft-model"))

    table = Table(title="demo: gold judge on 200 eval prompts (greedy)", title_justify="left")
    columns = {"gold": "gold score", "format": "well-formed rate", "gold[held_out=true]": "gold, held-out pairs",
               "eos_rate": "EOS rate"}
    table.add_column("stage")
    for label in columns.values():
        table.add_column(label, justify="right")
    for stage, metrics in results.items():
        table.add_row(stage, *(f"{metrics.get(c, float('nan')):.3f}" for c in columns))
    console.print(table)
    console.print(f"SFT run folder: {sft_dir} (summary.json, training_curves.png, report.html)")
    return results
