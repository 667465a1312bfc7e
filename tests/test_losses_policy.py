"""PPO / GSPO policy losses, the value loss and KL estimators against hand-computed values."""

import math

import pytest
import torch
from torch.testing import assert_close

from alignkit.losses import (
    POLICY_LOSSES,
    aggregate,
    gspo_policy_loss,
    ppo_policy_loss,
    step_denominator,
    value_loss,
)
from alignkit.ops import kl_estimate


def test_ppo_policy_loss_each_clip_case_by_hand():
    # ratios 1.5, 0.5, 0.5, 1.5 with advantages +1, +1, -1, -1 and eps 0.2:
    #   +1, 1.5 -> min(1.5, 1.2) = 1.2 (clipped high)    +1, 0.5 -> min(0.5, 0.8) = 0.5 (not clipped)
    #   -1, 0.5 -> min(-0.5, -0.8) = -0.8 (clipped low)  -1, 1.5 -> min(-1.5, -1.2) = -1.5 (not clipped)
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = ppo_policy_loss(logps, old, adv, mask)
    assert_close(loss, torch.tensor([[-1.2, -0.5, 0.8, 1.5]]))
    assert stats["clip_high"].tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert stats["clip_low"].tolist() == [[0.0, 0.0, 1.0, 0.0]]
    # approx KL (k3 of old || new): r - 1 - log r
    assert_close(stats["approx_kl"][0, 0], torch.tensor(0.5 - math.log(1.5)))
    # dual clip caps the negative-advantage loss at 1.4 * |A|
    dual, _ = ppo_policy_loss(logps, old, adv, mask, dual_clip=1.4)
    assert_close(dual, torch.tensor([[-1.2, -0.5, 0.8, 1.4]]))
    # decoupled clip (DAPO clip-higher): clip_high 0.6 lets ratio 1.5 through
    higher, _ = ppo_policy_loss(logps, old, adv, mask, clip_low=0.2, clip_high=0.6)
    assert_close(higher[0, 0], torch.tensor(-1.5))


def test_ppo_gradient_pushes_up_positive_advantage_tokens():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = ppo_policy_loss(logps, logps.detach(), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    loss.sum().backward()
    assert logps.grad.tolist() == [[-1.0, 1.0]]  # descent raises the first, lowers the second


def test_gspo_sequence_ratio_by_hand():
    # token log-ratios 0.1 and -0.3: s = exp(mean) = exp(-0.1); A = +1; clip 0.05 each side
    old = torch.tensor([[0.0, 0.0, 0.0]])
    logps = torch.tensor([[0.1, -0.3, 5.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.ones(1, 3)
    loss, stats = gspo_policy_loss(logps, old, adv, mask, clip_low=0.05, clip_high=0.05)
    s = math.exp(-0.1)  # 0.905 < 0.95 but A > 0, so min() keeps the unclipped s
    assert_close(loss, torch.tensor([[-s, -s, 0.0]]))
    # aggregated per sequence (token mean), the gradient of each token is -s / |y|, as GSPO's eq. 10
    aggregate(loss, mask, step_denominator([mask], "seq_mean_token_mean"), "seq_mean_token_mean").backward()
    assert_close(logps.grad, torch.tensor([[-s / 2, -s / 2, 0.0]]))
    assert stats["clip_low"].sum() == 0


def test_value_loss_clipped_by_hand():
    values, old, returns, mask = torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1)
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    # plain (1 - 2)^2 = 1; clipped value 0.5 + 0.2 = 0.7 -> (0.7 - 2)^2 = 1.69; max -> 0.5 * 1.69
    assert_close(loss, torch.tensor([[0.845]]))
    assert stats["value_clipfrac"].item() == 1.0
    plain, _ = value_loss(values, old, returns, mask, clip=None)
    assert_close(plain, torch.tensor([[0.5]]))


def test_kl_estimators_by_hand():
    logps, ref = torch.tensor([0.5]), torch.tensor([0.0])
    assert_close(kl_estimate(logps, ref, "k1"), torch.tensor([0.5]))
    assert_close(kl_estimate(logps, ref, "k2"), torch.tensor([0.125]))
    assert_close(kl_estimate(logps, ref, "k3"), torch.tensor([math.exp(-0.5) - 1 + 0.5]))
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(logps, ref, "k4")


def test_policy_losses_registry_and_split_invariance():
    torch.manual_seed(0)
    logps, old = torch.randn(8, 5) * 0.1, torch.randn(8, 5) * 0.1
    adv = torch.randn(8, 1).expand(8, 5)
    mask = (torch.rand(8, 5) > 0.2).float()
    for name, fn in POLICY_LOSSES.items():
        for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
            per_token, _ = fn(logps, old, adv, mask)
            whole = aggregate(per_token, mask, step_denominator([mask], mode, 5), mode)
            parts = [(per_token[i : i + 2], mask[i : i + 2]) for i in range(0, 8, 2)]
            den = step_denominator([m for _, m in parts], mode, 5)
            split = sum(aggregate(v, m, den, mode) for v, m in parts)
            assert_close(split, whole, msg=lambda message, name=name, mode=mode: f"{name} {mode}: {message}")
