"""RRHF: the loss by hand, the step's loss whatever the micro-batching, and both sources on the demo (the data
source raises the gold score over the SFT start; the online source samples, scores and trains)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from alignkit.config import ModelConfig, RRHFConfig, validate
from alignkit.losses import rrhf_loss


def test_rrhf_loss_by_hand():
    # row 0: p = logps / lengths = [-2, -1, -3]; scores [2, 1, 1] (a tie: responses 1 and 2 make no pair)
    #   pairs (worse, better): (1, 0) max(0, -1 - -2) = 1, ordered wrong; (2, 0) max(0, -3 - -2) = 0, right
    # row 1: a list of two padded to three: p = [-1.5, -1.5] tied, scores [0, 2]: one pair, hinge 0, accuracy 0.5;
    #   the padding (logps 99 over 0 tokens, score 5) is no item of any pair
    # row 2: p = [-3, -2, -1] in exactly the wrong order of scores [3, 2, 1]: hinges 1 + 2 + 1, summed (not averaged)
    logps = torch.tensor([[-4.0, -3.0, -3.0], [-1.5, -3.0, 99.0], [-3.0, -2.0, -1.0]], requires_grad=True)
    lengths = torch.tensor([[2, 3, 1], [1, 2, 0], [1, 1, 1]])
    scores = torch.tensor([[2.0, 1.0, 1.0], [0.0, 2.0, 5.0], [3.0, 2.0, 1.0]])
    valid = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    loss, stats = rrhf_loss(logps, lengths, scores, valid)
    assert_close(loss, torch.tensor([1.0, 0.0, 4.0]))
    assert_close(stats["accuracy"], torch.tensor([0.5, 0.5, 0.0]))
    assert_close(stats["pairs"], torch.tensor([2.0, 1.0, 3.0]))
    loss.sum().backward()
    # row 0: d/dp1 = +1, d/dp0 = -1, through p = logps / lengths; row 2: p0 in 2 pairs as the better, p2 in 2 as the worse
    assert_close(logps.grad, torch.tensor([[-0.5, 1 / 3, 0.0], [0.0, 0.0, 0.0], [-2.0, 0.0, 2.0]]))
    # without a mask, every item counts: row 1's padding would become the best response of the list
    assert rrhf_loss(logps, lengths, scores)[1]["pairs"][1].item() == 3


@pytest.fixture(scope="module")
def ranked_rows(demo_tokenizer):
    from alignkit.data.loading import load_examples
    from alignkit.data.prepare import RankRow, tokenize_rankings
    from alignkit.demo.assets import demo_data

    rows, _ = tokenize_rankings(load_examples(str(demo_data("ranked")), "ranked")[:4], demo_tokenizer,
                                RRHFConfig().data, "test")
    return [rows[0], RankRow(rows[1].responses[:2]), rows[2], RankRow(rows[3].responses[:3])]  # lists of 4, 2, 4, 3


def test_one_step_is_the_same_whatever_the_micro_batching(demo_sft, demo_tokenizer, ranked_rows):
    """One optimizer step as 4 lists x 1 micro-batch and as 1 list x 4: the same loss, accuracy and update."""
    from accelerate import Accelerator

    from alignkit.models import load_causal_lm
    from alignkit.recipes.rrhf import ranked_lists, update

    cfg = RRHFConfig(train={"max_grad_norm": 0.0})
    run = SimpleNamespace(accelerator=Accelerator(cpu=True), step_is_finite=lambda step, quantities: True)
    pad, results = demo_tokenizer.pad_token_id, []
    for split in ([[0, 1, 2, 3]], [[0], [1], [2], [3]]):
        torch.manual_seed(0)
        model = load_causal_lm(ModelConfig(name_or_path=str(demo_sft), device="cpu"), demo_tokenizer)
        model.eval()  # dropout off: the two forwards must see the same function
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        means, _ = update(run, 1, cfg, model, optimizer, [ranked_lists(ranked_rows, idx, pad) for idx in split])
        results.append((means, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (one, weights_one), (four, weights_four) = results
    assert one["pairs_per_list"] == four["pairs_per_list"] == (6 + 1 + 6 + 3) / 4
    for key in ("loss", "loss_rank", "nll_best", "accuracy"):
        assert one[key] == pytest.approx(four[key], rel=1e-5), key
    assert_close(weights_one, weights_four, rtol=1e-5, atol=1e-6)


def rrhf_config(run_dir, **sections):
    from alignkit.demo.assets import demo_resolved

    cfg = {"model": {"name_or_path": "demo:sft", "device": "cpu"}, "data": {"train": "demo:ranked", "max_length": 96},
           "run": {"output_dir": str(run_dir), "threads": 2, "progress": False, "log_every": 1, "num_samples": 2}}
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    return demo_resolved(validate(RRHFConfig, cfg))


@pytest.mark.slow
def test_rrhf_on_ranked_lists_raises_gold_over_sft(tmp_path, demo_sft):
    """12 steps of 16 demo lists: gold 0.50 (SFT) -> 0.745 (0.65-0.77 over training seeds 0-9; a sign-flipped
    rank term falls to 0.13); the assertion keeps under half that rise."""
    from alignkit.demo.run import score_model
    from alignkit.recipes.rrhf import train

    summary = train(rrhf_config(tmp_path / "run", data={"eval_fraction": 0.02},
                                train={"batch_size": 16, "max_steps": 12, "lr": 2e-4, "warmup_ratio": 0.1}))
    before = score_model(str(demo_sft), n_prompts=100)
    after = score_model(str(tmp_path / "run" / "final"), n_prompts=100)
    assert after["format"] >= 0.9
    assert after["gold"] >= before["gold"] + 0.1, (before, after, summary["final"])
    assert summary["final"]["accuracy/eval"] > 0.6  # the policy's p_k rank the held-out lists mostly right


@pytest.mark.slow
def test_rrhf_online_samples_scores_and_trains(tmp_path, demo_sft):
    from multiproc import small_data

    from alignkit.recipes.rrhf import train

    summary = train(rrhf_config(tmp_path / "run", data=small_data("grpo", tmp_path / "data", n_train=16, n_eval=8),
                                rrhf={"source": "online", "samples_per_prompt": 4}, sampling={"max_new_tokens": 24},
                                train={"batch_size": 4, "max_steps": 3, "lr": 1e-4}))
    rows = [json.loads(line) for line in (tmp_path / "run" / "training_metrics.jsonl").read_text().splitlines()]
    trained = [row for row in rows if "loss/train" in row]
    assert [row["step"] for row in trained] == [1, 2, 3]
    for row in trained:
        for key in ("loss/train", "loss_rank/train", "nll_best/train", "accuracy/train", "reward/score", "grad_norm"):
            assert math.isfinite(row[key]), (key, row)
        assert row["pairs_per_list/train"] > 0  # K = 4 samples of a sampled policy are rarely all tied
    assert math.isfinite(summary["final"]["reward_eval/demo_gold"]) and "reward_eval/demo_gold" in summary["initial"]
