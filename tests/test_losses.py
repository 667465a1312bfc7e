"""Losses and reductions against hand-computed values, fast paths against plain ones, split invariance."""

import math

import torch
from torch.testing import assert_close

from alignkit.losses import aggregate, sft_loss, step_denominator
from alignkit.ops import entropy_from_logits, masked_mean, masked_whiten, token_logps


def test_sft_loss_hand_computed():
    logps = torch.tensor([[-0.5, -1.0, -2.0], [-0.25, -3.0, -4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    per_token, stats = sft_loss(logps, mask)
    assert_close(per_token, torch.tensor([[0.5, 1.0, 0.0], [0.25, 0.0, 0.0]]))
    denominator = step_denominator([mask])
    assert denominator.item() == 3
    # (0.5 + 1.0 + 0.25) / 3 tokens
    assert_close(aggregate(per_token, mask, denominator), torch.tensor(1.75 / 3))
    assert stats["tokens"].item() == 3


def test_aggregate_modes_hand_computed():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # token mean: (1+2+3+4)/4; sequence mean of token means: (2 + 4)/2; Dr.GRPO: (6 + 4) / (2 seqs * 5)
    assert_close(aggregate(values, mask, step_denominator([mask], "token_mean"), "token_mean"), torch.tensor(2.5))
    assert_close(aggregate(values, mask, step_denominator([mask], "seq_mean_token_mean"), "seq_mean_token_mean"),
                 torch.tensor(3.0))
    denominator = step_denominator([mask], "seq_mean_token_sum", constant_length=5)
    assert_close(aggregate(values, mask, denominator, "seq_mean_token_sum"), torch.tensor(1.0))


def test_aggregate_is_split_invariant_for_every_mode():
    torch.manual_seed(0)
    values = torch.randn(8, 6)
    mask = (torch.rand(8, 6) > 0.3).long()
    mask[:, 0] = 1
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        whole = aggregate(values, mask, step_denominator([mask], mode, 6), mode)
        parts = list(zip(values.split(1), mask.split(1)))
        denominator = step_denominator([m for _, m in parts], mode, 6)
        split = sum(aggregate(v, m, denominator, mode) for v, m in parts)
        assert_close(split, whole)


def test_token_logps_equals_plain_log_softmax_gather():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 11)
    labels = torch.randint(0, 11, (5, 7))
    plain = torch.log_softmax(logits / 0.7, -1).gather(-1, labels[..., None]).squeeze(-1)
    assert_close(token_logps(logits, labels, temperature=0.7, chunk=2), plain)


def test_entropy_hand_computed():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    assert_close(entropy_from_logits(logits), torch.tensor([[-(0.5 * math.log(0.5) + 0.5 * math.log(0.25))]]))


def test_masked_mean_and_whiten():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    assert_close(masked_mean(values, mask), torch.tensor(2.0))
    white = masked_whiten(values, mask)
    assert_close(white, torch.tensor([-1.0, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    assert_close(masked_mean(torch.zeros(2), torch.zeros(2)), torch.tensor(0.0))


def test_sequence_denominators_skip_rows_with_no_valid_token():
    # a dropped group (mask all zero) is not a sequence of the step: 2 sequences, not 3
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert step_denominator([mask], "seq_mean_token_mean").item() == 2
    assert step_denominator([mask], "seq_mean_token_sum", constant_length=4).item() == 8
    assert step_denominator([torch.tensor([5, 0, 7])], "seq_mean_token_mean").item() == 3  # 1-D: one row each
