"""What the config promises changes nothing, changes nothing: train.grad_accum in the per-sequence recipes (DPO,
KTO, RM: batch 8 x accumulation 1 == batch 4 x accumulation 2, the same rows per step) and micro_batch_size in GRPO
and PPO (a memory knob). Whole runs in-process: every logged metric and the final weights agree."""

import pytest
import torch
from multiproc import final_weights, metric_rows, small_data

CASES = {
    "dpo": ({"train": {"batch_size": 8, "grad_accum": 1}}, {"train": {"batch_size": 4, "grad_accum": 2}}),
    "kto": ({"train": {"batch_size": 8, "grad_accum": 1}}, {"train": {"batch_size": 4, "grad_accum": 2}}),
    "rm": ({"train": {"batch_size": 8, "grad_accum": 1}}, {"train": {"batch_size": 2, "grad_accum": 4}}),
    "grpo": ({"grpo": {"micro_batch_size": 16}}, {"grpo": {"micro_batch_size": 3}}),
    "ppo": ({"ppo": {"micro_batch_size": 4}}, {"ppo": {"micro_batch_size": 1}}),
}
BASE = {"grpo": {"train": {"batch_size": 4}, "sampling": {"max_new_tokens": 12},
                 "grpo": {"group_size": 4, "num_iterations": 2, "beta": 0.05}},
        "ppo": {"train": {"batch_size": 8}, "sampling": {"max_new_tokens": 12},
                "ppo": {"mini_batch_size": 4, "ppo_epochs": 2}}}


def run(recipe, tmp_path, name, sections):
    from alignkit.demo.run import stage_config
    from alignkit.recipes import dpo, grpo, kto, ppo, rm

    merged = {k: dict(v) for k, v in BASE.get(recipe, {}).items()}
    for key, values in sections.items():
        merged[key] = {**merged.get(key, {}), **values}
    merged["train"] = {"max_steps": 3, "lr": 1e-4, **merged.get("train", {})}
    merged["data"] = small_data(recipe, tmp_path / "data")
    merged["run"] = {"log_every": 1, "eval_every": 0, "save_every": 0, "progress": False}
    cfg = stage_config(recipe, tmp_path / name, fast=True, **merged)
    {"dpo": dpo, "kto": kto, "rm": rm, "grpo": grpo, "ppo": ppo}[recipe].train(cfg)
    return tmp_path / name


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(CASES))
def test_splitting_the_step_changes_nothing(recipe, tmp_path, demo_sft, demo_rm):
    whole, split = (run(recipe, tmp_path, name, sections) for name, sections in zip(("whole", "split"), CASES[recipe]))
    a, b = metric_rows(whole), metric_rows(split)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ra:
            if not key.startswith(("time/", "speed/")):
                assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["step"], key)
    wa, wb = final_weights(whole), final_weights(split)
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-6, msg=key)
