"""Two processes reproduce one: every recipe, the same config (batch sizes count over all processes), run on one
CPU process and on two (gloo), logs the same losses and metrics step by step and ends with the same weights.

What would break it: a rank-local statistic (a loss denominator, GRPO's group baselines or REINFORCE++'s batch
std, PPO's whitening or reward normalisation, the KL controller, a logged mean), a data order or a sampling
stream that depends on the number of processes, or gradients averaged where they should be summed.
"""

import pytest
import torch
from multiproc import final_weights, metric_rows, run_child, run_processes, small_data

SMALL = {
    "sft": {"train": {"max_steps": 4, "batch_size": 8, "grad_accum": 2, "lr": 1e-3}},
    "rm": {"train": {"max_steps": 3, "batch_size": 8, "grad_accum": 2}, "rm": {"center_coef": 0.01}},
    "dpo": {"train": {"max_steps": 3, "batch_size": 8, "grad_accum": 2}},
    "kto": {"train": {"max_steps": 3, "batch_size": 8, "grad_accum": 2}},
    # REINFORCE++ with dynamic sampling: its batch std is taken over the kept rows of both processes
    "grpo": {"train": {"max_steps": 3, "batch_size": 4}, "sampling": {"max_new_tokens": 16},
             "grpo": {"group_size": 4, "micro_batch_size": 4, "advantage": "reinforce_pp", "dynamic_sampling": True,
                      "num_iterations": 2, "beta": 0.05}},
    # whitening, batch reward normalisation and the adaptive KL controller all see the whole batch
    "ppo": {"train": {"max_steps": 3, "batch_size": 8}, "sampling": {"max_new_tokens": 16},
            "ppo": {"mini_batch_size": 4, "micro_batch_size": 2, "ppo_epochs": 2, "reward_norm": "batch",
                    "adaptive_kl": True, "kl_target": 0.1, "kl_horizon": 100}},
}
RUN = {"log_every": 1, "eval_every": 2, "save_every": 2}


def config(recipe: str, run_dir) -> dict:
    from alignkit.demo.run import stage_config

    sections = {k: dict(v) for k, v in SMALL[recipe].items()}
    sections["run"] = {**RUN, **sections.get("run", {})}
    sections["data"] = {**sections.get("data", {}), **small_data(recipe, run_dir.parent / "data")}
    return stage_config(recipe, run_dir, fast=True, **sections).model_dump(mode="json")


def assert_same_run(one, two, rel=1e-4, abs_=1e-6):
    a, b = metric_rows(one), metric_rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    compared = 0
    for ra, rb in zip(a, b):
        keys = {k for k in ra if not k.startswith(("time/", "speed/"))}
        assert keys == {k for k in rb if not k.startswith(("time/", "speed/"))}, ra["step"]
        for key in keys:
            assert rb[key] == pytest.approx(ra[key], rel=rel, abs=abs_), (ra["step"], key)
            compared += 1
    assert compared > 20
    wa, wb = final_weights(one), final_weights(two)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(SMALL))
def test_two_processes_reproduce_one(recipe, tmp_path, demo_sft, demo_rm):
    assert run_child(recipe, config(recipe, tmp_path / "one")) == 0
    assert run_processes(recipe, config(recipe, tmp_path / "two"), world=2) == [0, 0]
    summary = (tmp_path / "two" / "summary.json").read_text()
    assert '"num_processes": 2' in summary
    assert_same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, demo_sft):
    from alignkit.demo.run import stage_config

    cfg = stage_config("sft", tmp_path / "run", fast=True, train={"batch_size": 7}).model_dump(mode="json")
    assert run_processes("sft", cfg, world=2, errors=tmp_path) == [1, 1]  # both stop before any work
    expected = ("ConfigError: train.batch_size = 7 does not divide over 2 processes: batch sizes count over all "
                "processes (each takes train.batch_size / 2); use a multiple of 2")
    assert [(tmp_path / f"rank-{r}.txt").read_text() for r in (0, 1)] == [expected, expected]
    assert not (tmp_path / "run" / "checkpoints").exists()
