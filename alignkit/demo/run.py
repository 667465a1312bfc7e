"""The demo's stage settings, tuned for the ~1M-parameter model on 2 CPU cores, and its gold-judge reports.

``alignkit demo`` runs ``demo/demo_pipeline.yaml`` (examples/demo_pipeline.yaml links to it) through the pipeline
runner; the settings here build the ``demo:sft`` and ``demo:rm`` models that configs default to, and tests run
short versions of each stage. A test keeps these settings and the pipeline file's equal.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

from ..config import (
    DistillConfig,
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    ModelConfig,
    OnlineDPOConfig,
    PPOConfig,
    PRMConfig,
    RMConfig,
    SFTConfig,
    validate,
)
from ..data.loading import load_examples
from ..sampling import SamplingParams


@dataclass(frozen=True)
class Stage:
    config: type
    settings: dict[str, Any]  # the demo's settings, tuned for the ~1M-parameter model on 2 CPU cores
    fast_steps: int  # max_steps of stage_config(fast=True): the tests' short runs

    @property
    def recipe(self) -> str:
        return {SFTConfig: "sft", RMConfig: "rm", DPOConfig: "dpo", KTOConfig: "kto", GRPOConfig: "grpo",
                PPOConfig: "ppo", DistillConfig: "distill", OnlineDPOConfig: "online_dpo", PRMConfig: "prm"}[self.config]

    @property
    def train(self):
        module: ModuleType = import_module(f"alignkit.recipes.{self.recipe}")
        return module.train


_PREF_TRAIN = {"batch_size": 16, "max_steps": 150, "lr": 1e-4, "warmup_ratio": 0.1}
_PREF_RUN = {"log_every": 5, "eval_every": 50, "save_every": 50, "threads": 2}
DEMO_STAGES: dict[str, Stage] = {
    "sft": Stage(SFTConfig, {
        "model": {"name_or_path": "demo:base", "device": "cpu"},
        "data": {"train": "demo:sft", "eval_fraction": 0.05, "max_length": 96},
        "train": {"batch_size": 32, "max_steps": 1000, "lr": 3e-3, "warmup_ratio": 0.05, "weight_decay": 0.01},
        "run": {"log_every": 10, "eval_every": 250, "sample_every": 250, "num_samples": 4,
                "sample_max_new_tokens": 32, "save_every": 250, "threads": 2},
    }, fast_steps=150),
    "teacher": Stage(SFTConfig, {  # a bigger model on the world's curated answers: what distillation learns from
        "model": {"name_or_path": "demo:base_large", "device": "cpu"},
        "data": {"train": "demo:teacher", "eval_fraction": 0.05, "max_length": 96},
        "train": {"batch_size": 32, "max_steps": 250, "lr": 3e-3, "warmup_ratio": 0.05, "weight_decay": 0.01},
        "run": {"log_every": 10, "eval_every": 125, "sample_every": 125, "num_samples": 4,
                "sample_max_new_tokens": 32, "save_every": 125, "threads": 2},
    }, fast_steps=150),
    "tools_sft": Stage(SFTConfig, {  # tool-use transcripts: the calculator habit, half learned (tools_world.py)
        "model": {"name_or_path": "demo:sft", "device": "cpu"},
        "data": {"train": "demo:tools_sft", "eval_fraction": 0.05, "max_length": 256},
        "train": {"batch_size": 32, "max_steps": 300, "lr": 2e-3, "warmup_ratio": 0.05, "weight_decay": 0.01},
        "run": {"log_every": 10, "eval_every": 100, "sample_every": 0, "save_every": 100, "threads": 2},
    }, fast_steps=100),
    "rm": Stage(RMConfig, {
        "model": {"name_or_path": "demo:sft", "device": "cpu"},
        "data": {"train": "demo:prefs", "eval": "demo:prefs_eval", "max_length": 96},
        "train": {"batch_size": 32, "max_steps": 300, "lr": 1e-3, "warmup_ratio": 0.05},
        "run": {"log_every": 10, "eval_every": 100, "save_every": 100, "threads": 2},
    }, fast_steps=150),
    "prm": Stage(PRMConfig, {  # demo:prm, on first use (not a stage of the demo pipeline): the step world's PRM
        "model": {"name_or_path": "demo:sft", "device": "cpu"},
        "data": {"train": "demo:prm_steps", "eval": "demo:prm_eval", "max_length": 96},
        "train": {"batch_size": 32, "max_steps": 150, "lr": 1e-3, "warmup_ratio": 0.05},
        "run": {"log_every": 10, "eval_every": 50, "save_every": 50, "threads": 2},
    }, fast_steps=60),
    "dpo": Stage(DPOConfig, {
        "model": {"name_or_path": "demo:sft", "device": "cpu"},
        "data": {"train": "demo:prefs", "max_length": 96},
        "train": _PREF_TRAIN, "run": _PREF_RUN,
        "dpo": {"loss": "sigmoid", "beta": 0.1, "nll_weight": 0.5},
    }, fast_steps=150),
    "kto": Stage(KTOConfig, {
        "model": {"name_or_path": "demo:sft", "device": "cpu"},
        "data": {"train": "demo:kto", "max_length": 96},
        "train": _PREF_TRAIN, "run": _PREF_RUN,
    }, fast_steps=150),
    "grpo": Stage(GRPOConfig, {
        "model": {"name_or_path": "demo:sft", "device": "cpu"},
        "train": {"batch_size": 8, "max_steps": 60, "lr": 1e-4},
        "sampling": {"max_new_tokens": 32},
        "grpo": {"group_size": 8, "micro_batch_size": 32},
        "rewards": [{"builtin": "demo_gold"}],
        "eval_rewards": [],
        "run": {"log_every": 5, "eval_every": 20, "sample_every": 20, "save_every": 30, "threads": 2},
    }, fast_steps=40),
    "tools_grpo": Stage(GRPOConfig, {  # GRPO in the calculator environment, from the half-learned habit
        "model": {"name_or_path": "demo:tools_sft", "device": "cpu"},
        "data": {"train": "demo:tools_prompts", "eval": "demo:tools_prompts_eval", "max_length": 96},
        "train": {"batch_size": 8, "max_steps": 30, "lr": 3e-4},
        "sampling": {"max_new_tokens": 48, "temperature": 0.6, "eval_temperature": 0.6},
        "grpo": {"group_size": 8, "micro_batch_size": 32},
        "environment": {"tools": ["alignkit.demo.tools_world:calculator"], "max_turns": 3, "max_tokens": 120},
        "rewards": [{"builtin": "demo_gold"}],
        "eval_rewards": [],
        "run": {"log_every": 2, "eval_every": 10, "sample_every": 10, "save_every": 15, "threads": 2},
    }, fast_steps=10),
    "ppo": Stage(PPOConfig, {
        "model": {"name_or_path": "demo:sft", "device": "cpu"},
        "train": {"batch_size": 32, "max_steps": 30, "lr": 1e-4},
        "sampling": {"max_new_tokens": 32},
        "ppo": {"kl_coef": 0.2, "mini_batch_size": 8, "micro_batch_size": 8},
        "rewards": [{"reward_model": "demo:rm"}],
        "eval_rewards": [{"builtin": "demo_gold"}],
        "run": {"log_every": 2, "eval_every": 10, "sample_every": 10, "save_every": 10, "threads": 2},
    }, fast_steps=30),
    "distill": Stage(DistillConfig, {
        "model": {"name_or_path": "demo:sft", "device": "cpu"},
        "data": {"train": "demo:sft", "max_length": 96},
        "train": {"batch_size": 16, "max_steps": 30, "lr": 3e-4},
        "sampling": {"max_new_tokens": 32},
        "distill": {"teacher": "demo:teacher", "loss": "reverse_kl", "on_policy_fraction": 1.0},
        "run": {"log_every": 5, "eval_every": 0, "sample_every": 0, "save_every": 15, "threads": 2},
    }, fast_steps=10),
    "online_dpo": Stage(OnlineDPOConfig, {
        "model": {"name_or_path": "demo:sft", "device": "cpu"},
        "train": {"batch_size": 8, "max_steps": 20, "lr": 2e-4},
        "sampling": {"max_new_tokens": 32},
        "online": {"samples_per_prompt": 4},
        "rewards": [{"reward_model": "demo:rm"}],
        "eval_rewards": [{"builtin": "demo_gold"}],
        "run": {"log_every": 2, "eval_every": 0, "sample_every": 10, "save_every": 10, "threads": 2},
    }, fast_steps=10),
}
EVAL_SAMPLING = SamplingParams(max_new_tokens=32, temperature=0.0)


def stage_config(recipe: str, run_dir: Path, fast: bool = False, **overrides: Any):
    """The demo's validated config for a stage, writing into ``run_dir``; ``overrides`` are merged per section."""
    stage = DEMO_STAGES[recipe]
    cfg = {section: dict(values) if isinstance(values, dict) else list(values)
           for section, values in stage.settings.items()}
    cfg["run"].update(output_dir=str(run_dir), progress=not fast)
    if fast:
        cfg["train"]["max_steps"] = stage.fast_steps
    for section, values in overrides.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    from .assets import demo_resolved

    return demo_resolved(validate(stage.config, cfg, source=f"demo {recipe} settings"))


def train_demo_stage(recipe: str, run_dir: Path, final_copy: Path | None = None, fast: bool = False) -> dict:
    """Run one demo stage; optionally copy its final model to ``final_copy`` (what demo:sft / demo:rm name)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    summary = DEMO_STAGES[recipe].train(stage_config(recipe, run_dir, fast=fast))
    if final_copy is not None:
        from ..checkpoint import atomic_dir

        with atomic_dir(final_copy) as tmp:
            shutil.copytree(Path(run_dir) / "final", tmp, dirs_exist_ok=True)
    return summary


def score_model(model_path: str, n_prompts: int = 200, rm_path: str | None = None) -> dict[str, float]:
    """Gold score and well-formed rate of greedy answers to the demo's eval prompts (and the reward model's
    normalised score of the same answers, when ``rm_path`` is given), by the one policy evaluator."""
    import torch

    from ..config import RewardSource
    from ..data.templates import tokenize_prompt
    from ..models import load_causal_lm, load_tokenizer
    from ..rewards import RewardSet
    from ..rollout.engines import HFEngine
    from ..rollout.evaluate import evaluate_policy
    from .assets import demo_data, demo_resolved

    model_cfg = ModelConfig(name_or_path=model_path, device="cpu")
    tokenizer = load_tokenizer(model_cfg)
    model = load_causal_lm(model_cfg, tokenizer, trainable=False)
    prompts = load_examples(str(demo_data("prompts_eval")), "prompt")[:n_prompts]
    sources = [RewardSource(builtin="demo_gold", name="gold"), RewardSource(builtin="demo_format", name="format")]
    if rm_path is not None:
        sources.append(RewardSource(reward_model=rm_path, name="rm"))
    sources = [demo_resolved(s) for s in sources]
    metrics, _ = evaluate_policy(HFEngine(None, tokenizer, batch_size=64), model, prompts,
                                 [tokenize_prompt(tokenizer, e.prompt) for e in prompts], RewardSet(sources, torch.device("cpu")),
                                 EVAL_SAMPLING, split_field="held_out")
    return metrics


def rm_gold_report(model_path: str, n_pairs: int = 500) -> dict[str, float]:
    """How a reward model agrees with the hidden gold judge on the held-out pairs.

    gold_accuracy: the RM prefers the truly better response (by gold score), whatever the noisy file label says.
    label_accuracy: agreement with the file's (10% flipped) labels. pearson / spearman: correlation between RM
    scores and gold scores over every response.
    """
    import json

    import torch

    from ..rewards import RewardModelScorer
    from .assets import demo_world
    world = demo_world()
    pairs = load_examples(str(world.prefs_eval), "preference")[:n_pairs]
    gold = [json.loads(line) for line in world.prefs_eval_gold.read_text().splitlines()][:n_pairs]
    scorer = RewardModelScorer(ModelConfig(name_or_path=model_path, device="cpu"))
    chosen = scorer.score([p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = scorer.score([p.prompt for p in pairs], [p.rejected for p in pairs])
    truly_first = torch.tensor([g["chosen_gold"] > g["rejected_gold"] for g in gold])
    gold_scores = torch.tensor([g["chosen_gold"] for g in gold] + [g["rejected_gold"] for g in gold])
    rm_scores = torch.cat([chosen, rejected])
    return {"gold_accuracy": ((chosen > rejected) == truly_first).float().mean().item(),
            "label_accuracy": (chosen > rejected).float().mean().item(),
            "pearson": torch.corrcoef(torch.stack([rm_scores, gold_scores]))[0, 1].item(),
            "spearman": torch.corrcoef(torch.stack([_ranks(rm_scores), _ranks(gold_scores)]))[0, 1].item()}


def _ranks(values):
    """Average ranks (ties share their mean rank), for Spearman's correlation."""
    import torch

    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=values.dtype)
    for value in values.unique():
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks
