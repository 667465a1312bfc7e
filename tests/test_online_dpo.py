"""Online / iterative DPO: judged pairs, the gold score rises, the moving reference (trust-region DPO, iterations)
follows the policy exactly and resumes, and the policy can judge itself (self-rewarding)."""

import json
import shutil

import pytest
import torch
from multiproc import final_weights

from alignkit.config import ModelConfig, OnlineDPOConfig, RewardSource, validate
from alignkit.demo.assets import demo_data, demo_model, demo_resolved
from alignkit.models import Reference, load_causal_lm, load_tokenizer, move_reference
from alignkit.recipes.online_dpo import judged_pairs, train
from alignkit.rewards import RewardError, RewardSet


def online_config(tmp_path, steps, **sections):
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("\n".join(demo_data("prompts_eval").read_text().splitlines()[:64]) + "\n")
    cfg = {"model": {"name_or_path": "demo:sft", "device": "cpu"},
           "data": {"train": "demo:prompts", "eval": str(eval_file)},
           "train": {"batch_size": 8, "max_steps": steps, "lr": 2e-4},
           "sampling": {"max_new_tokens": 24},
           "online": {"samples_per_prompt": 4},
           "rewards": [{"builtin": "demo_gold"}],
           "run": {"output_dir": str(tmp_path / "run"), "log_every": 1, "eval_every": 0, "save_every": 0,
                   "threads": 2, "progress": False}}
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    return demo_resolved(validate(OnlineDPOConfig, cfg, source="test"))


def test_pairs_are_each_groups_best_against_its_worst_and_ties_give_none():
    score = torch.tensor([0.0, 1.5, -1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, 2.0, 1.0, 0.0])
    texts = tuple("abcdefghijkl")
    assert judged_pairs(score, texts, 4) == ([1, 8], [2, 11])  # the middle group ties: no pair
    same = ("x", "y", "x", "x")  # best and worst are one text: no preference
    assert judged_pairs(torch.tensor([1.0, 0.5, 0.0, 0.2]), same, 4) == ([], [])


@pytest.mark.slow
def test_online_dpo_with_the_gold_judge_raises_gold(tmp_path):
    summary = train(online_config(tmp_path, 15))
    before, after = summary["initial"]["reward_eval/demo_gold"], summary["final"]["reward_eval/demo_gold"]
    assert after > before + 0.05, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "run" / "training_metrics.jsonl").read_text().splitlines()]
    assert all(r["pairs/judge_margin"] > 0 for r in rows if "pairs/judge_margin" in r)


def _two_models():
    cfg = ModelConfig(name_or_path=str(demo_model("sft")), device="cpu")
    tokenizer = load_tokenizer(cfg)
    policy, ref = (load_causal_lm(cfg, tokenizer, trainable=False) for _ in range(2))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1)
    return policy, Reference(model=ref), tokenizer


def test_the_reference_follows_the_policy_softly_every_step_and_hard_every_tau_steps():
    policy, reference, _ = _two_models()
    start = [p.clone() for p in reference.model.parameters()]
    assert move_reference(reference, policy, "soft", 0.25, 64, step=1)
    for before, now, p in zip(start, reference.model.parameters(), policy.parameters()):
        torch.testing.assert_close(now, 0.25 * p + 0.75 * before)
    assert not move_reference(reference, policy, "hard", 1.0, 3, step=2)  # not a multiple of tau: stays
    assert move_reference(reference, policy, "hard", 1.0, 3, step=3)
    for now, p in zip(reference.model.parameters(), policy.parameters()):
        torch.testing.assert_close(now, p)
    assert not move_reference(reference, policy, "none", 1.0, 1, step=3)


@pytest.mark.slow
def test_a_run_with_a_moving_reference_resumes_exactly(tmp_path):
    cfg = online_config(tmp_path, 4, train={"batch_size": 4}, sampling={"max_new_tokens": 8},
                        online={"samples_per_prompt": 2}, dpo={"reference_update": "soft", "reference_alpha": 0.5},
                        run={"save_every": 2})
    train(cfg)
    copy = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run", copy)
    shutil.rmtree(copy / "checkpoints" / "step-4")
    shutil.rmtree(copy / "final")
    train(cfg.model_copy(update={"run": cfg.run.model_copy(update={"output_dir": str(copy)})}), resume=True)
    for key, value in final_weights(tmp_path / "run").items():
        torch.testing.assert_close(final_weights(copy)[key], value, msg=key)


def test_judge_self_is_the_live_policy_and_is_refused_where_there_is_none():
    policy, _, tokenizer = _two_models()
    rewards = RewardSet([RewardSource(judge="self", args={"max_new_tokens": 2})], policy=(policy, tokenizer))
    judge = rewards.entries[0][1]
    assert judge.model is policy and judge.tokenizer is tokenizer
    from alignkit.data.formats import Message

    total, parts = rewards([(Message("user", "What is 2 + 3?"),)], ["2 + 3 = 5."], {})
    assert total.shape == (1,) and torch.isfinite(total).all()
    with pytest.raises(RewardError, match="judge: self"):
        RewardSet([RewardSource(judge="self")])
    with pytest.raises(ValueError, match="revision does not apply"):
        RewardSource(judge="self", revision="main")


def test_schedules_that_cannot_work_are_refused(tmp_path):
    with pytest.raises(ValueError, match="choose one schedule"):
        validate(OnlineDPOConfig, {"online": {"iterations": 2}, "dpo": {"reference_update": "soft"},
                                   "train": {"max_steps": 10}}, source="t")
    with pytest.raises(ValueError, match="reference_alpha"):
        validate(OnlineDPOConfig, {"dpo": {"reference_alpha": 0.3}}, source="t")
    with pytest.raises(ValueError, match="dpo.reference = "):
        validate(OnlineDPOConfig, {"dpo": {"reference": "on_the_fly"}}, source="t")
    from alignkit.config import DPOConfig

    with pytest.raises(ValueError, match="cannot be cached"):
        validate(DPOConfig, {"dpo": {"reference_update": "hard"}}, source="t")
