"""Crash safety, by SIGKILL: every recipe is killed at five points (three of them inside a checkpoint write, one
at a random moment), resumed after each kill, and must end exactly where an uninterrupted run ends: the same
metrics at every step and the same final weights. A kill during a write must leave the previous checkpoint loadable.

This covers what a resume has to restore: weights, optimizer and schedule, RNG, the data position (a function of
the step), PPO's adaptive KL coefficient and running reward moments, the DPO / KTO reference-log-prob cache, and
the metric log itself (cut back to what the checkpoint saw).
"""

import random

import pytest
import torch
from multiproc import final_weights, metric_rows, run_child, small_data

from alignkit.checkpoint import STATE_FILE, latest_checkpoint

SETTINGS = {
    "sft": {"train": {"max_steps": 6, "batch_size": 8, "lr": 1e-3}},
    "rm": {"train": {"max_steps": 6, "batch_size": 8}},
    "dpo": {"train": {"max_steps": 6, "batch_size": 8}},  # reference: cached (the cache must survive the kills)
    "kto": {"train": {"max_steps": 6, "batch_size": 8}},
    "grpo": {"train": {"max_steps": 6, "batch_size": 2}, "sampling": {"max_new_tokens": 12},
             "grpo": {"group_size": 4, "micro_batch_size": 8}},
    "ppo": {"train": {"max_steps": 6, "batch_size": 4}, "sampling": {"max_new_tokens": 12},
            "ppo": {"mini_batch_size": 2, "micro_batch_size": 2, "ppo_epochs": 1, "adaptive_kl": True,
                    "kl_target": 0.05, "kl_horizon": 50, "reward_norm": "running"}},
}
# (where, step): inside step 2's checkpoint write before its completion mark; between the renames of step 3's;
# inside the first metrics rewrite holding step 4's row (the metrics are rewritten at every logging step);
# right after step 5's checkpoint; at a random moment of what is left (step 6, the final eval and save), which may
# also come after the run's end.
KILLS = [("state", 2), ("promote", 3), ("metrics", 4), ("after", 5), ("random", 0)]


def config(recipe, run_dir):
    from alignkit.demo.run import stage_config

    sections = {k: dict(v) for k, v in SETTINGS[recipe].items()}
    sections["run"] = {"log_every": 1, "eval_every": 3, "save_every": 1, "keep_checkpoints": 2}
    sections["data"] = {**sections.get("data", {}), **small_data(recipe, run_dir.parent / "data")}
    return stage_config(recipe, run_dir, fast=True, **sections).model_dump(mode="json")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(SETTINGS))
def test_sigkill_at_five_points_then_resume_equals_the_uninterrupted_run(recipe, tmp_path, demo_sft, demo_rm):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert run_child(recipe, config(recipe, clean)) == 0
    rng = random.Random(recipe)
    resume = None
    for where, step in KILLS:
        if where == "random":
            code = run_child(recipe, config(recipe, killed), resume, kill_after_s=rng.uniform(2.0, 8.0))
        else:
            code = run_child(recipe, config(recipe, killed), resume, kill_at=(where, step))
        assert code == -9 or (where == "random" and code == 0), (where, code)  # a late random kill may miss
        latest = latest_checkpoint(killed)
        expected_latest = {"state": "step-1", "promote": "step-2", "metrics": "step-3", "after": "step-5"}
        if where in expected_latest:  # each kill leaves exactly the checkpoint before it as the latest
            assert latest is not None and latest.name == expected_latest[where], (where, latest)
        if where == "state":
            assert (killed / "checkpoints" / ".step-2.tmp").is_dir()  # half a checkpoint, ignored
        if latest is not None:  # whatever is latest loads: its state file parses and its weights are there
            assert (latest / STATE_FILE).is_file() and list(latest.glob("*.safetensors"))
        resume = str(killed)
    assert run_child(recipe, config(recipe, killed), resume) == 0

    a, b = metric_rows(clean), metric_rows(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        keys = {k for k in ra if not k.startswith(("time/", "speed/"))}
        assert keys == {k for k in rb if not k.startswith(("time/", "speed/"))}, ra["step"]
        for key in keys:
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-9), (ra["step"], key)
    wa, wb = final_weights(clean), final_weights(killed)
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=0, msg=key)
