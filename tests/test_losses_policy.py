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


# ------------------------------------------------------------------ CISPO, SAPO, GMPO (same dict, same tensors)
def test_cispo_weight_is_clipped_and_detached_by_hand():
    # ratios 1.5 and 0.5, A = +1 and -1, clip_low 1.0 (no lower bound), clip_high 0.2:
    #   weight min(1.5, 1.2) = 1.2, loss = -1.2 * 1 * logp;  weight 0.5 (no lower clip), loss = -0.5 * -1 * logp
    old = torch.zeros(1, 2)
    logps = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0]])
    loss, stats = POLICY_LOSSES["cispo"](logps, old, adv, torch.ones(1, 2), clip_low=1.0, clip_high=0.2)
    assert_close(loss, torch.tensor([[-1.2 * math.log(1.5), 0.5 * math.log(0.5)]]))
    loss.sum().backward()
    # the gradient flows through log pi only, with the weight as a constant: -w * A
    assert_close(logps.grad, torch.tensor([[-1.2, 0.5]]))
    assert stats["clip_high"].tolist() == [[1.0, 0.0]] and stats["clip_low"].tolist() == [[0.0, 0.0]]


def test_sapo_soft_gate_by_hand():
    # on-policy (ratio 1) the gate's gradient is the plain policy gradient: d/dlogp = -A
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0]])
    loss, _ = POLICY_LOSSES["sapo"](logps, logps.detach(), adv, torch.ones(1, 2), tau_pos=1.0, tau_neg=2.0)
    # value: -(4 / tau) * sigmoid(0) * A = -(4 / tau) / 2 * A
    assert_close(loss, torch.tensor([[-2.0, 1.0]]))
    loss.sum().backward()
    assert_close(logps.grad, torch.tensor([[-1.0, 1.0]]))
    # off-policy, ratio 2 with tau 1 and A = 1: s = sigmoid(1); gradient -A * 4 s (1 - s) * ratio
    logps = torch.tensor([[math.log(2.0)]], requires_grad=True)
    loss, stats = POLICY_LOSSES["sapo"](logps, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), tau_pos=1.0,
                                        tau_neg=1.0)
    s = 1 / (1 + math.exp(-1.0))
    assert_close(loss, torch.tensor([[-4 * s]]))
    loss.sum().backward()
    assert_close(logps.grad, torch.tensor([[-4 * s * (1 - s) * 2.0]]))
    assert stats["clipfrac"].item() == 0.0  # weight 4 s (1 - s) = 0.79: damped, not under 1/2


def test_gmpo_geometric_mean_of_clipped_ratios_by_hand():
    # one sequence, A = +1, token log-ratios 0.6, -0.2 (third token masked), clip 0.4 in log space:
    #   A > 0: min(log r, clip(log r)) = min(0.6, 0.4) = 0.4 and min(-0.2, -0.2) = -0.2 -> s = exp(0.1)
    old = torch.zeros(1, 3)
    logps = torch.tensor([[0.6, -0.2, 3.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = POLICY_LOSSES["gmpo"](logps, old, torch.ones(1, 3), mask, clip_low=0.4, clip_high=0.4)
    s = math.exp(0.1)
    assert_close(loss, torch.tensor([[-s, -s, 0.0]]))
    aggregate(loss, mask, step_denominator([mask], "seq_mean_token_mean"), "seq_mean_token_mean").backward()
    # the clipped token gets no gradient; the other d/dlogp = -s / |y|
    assert_close(logps.grad, torch.tensor([[0.0, -s / 2, 0.0]]))
    assert stats["clip_high"].tolist() == [[1.0, 0.0, 0.0]]
    # A < 0 makes the lower side pessimistic: sgn * min(sgn * -0.6, sgn * -0.4) = -min(0.6, 0.4) = -0.4, so
    # s = exp(-0.4) * A and the loss -s = exp(-0.4)
    neg, _ = POLICY_LOSSES["gmpo"](torch.tensor([[-0.6]]), torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1),
                                   clip_low=0.4, clip_high=0.4)
    assert_close(neg, torch.tensor([[math.exp(-0.4)]]))


# ------------------------------------------------------------------------- engine-mismatch correction
def test_engine_correction_truncates_and_masks_by_hand():
    from alignkit.losses import engine_correction

    # trainer vs engine log-ratios per token: log 3, log 0.25, log 1.5; the last row position is padding
    old = torch.log(torch.tensor([[3.0, 0.25, 1.5, 1.0]]))
    sample = torch.zeros(1, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w, stats = engine_correction(old, sample, mask, "tis", "token", cap=2.0)
    assert_close(w, torch.tensor([[2.0, 0.25, 1.5, 0.0]]))  # min(rho, 2); padding 0
    assert stats["corrected"].tolist() == [[1.0, 0.0, 0.0, 0.0]]
    w, stats = engine_correction(old, sample, mask, "mis", "token", cap=2.0)
    assert_close(w, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))  # 3 > 2 and 0.25 < 1/2 are dropped
    assert stats["corrected"].tolist() == [[1.0, 1.0, 0.0, 0.0]]
    # sequence: rho = 3 * 0.25 * 1.5 = 1.125 for every token; geometric: 1.125 ** (1/3)
    w, _ = engine_correction(old, sample, mask, "tis", "sequence", cap=2.0)
    assert_close(w, torch.tensor([[1.125, 1.125, 1.125, 0.0]]))
    w, _ = engine_correction(old, sample, mask, "tis", "geometric", cap=2.0)
    g = 1.125 ** (1 / 3)
    assert_close(w, torch.tensor([[g, g, g, 0.0]]))
    # the mismatch KL (k3 of rollout || train) on the first token: rho - 1 - log rho
    assert_close(stats["mismatch_kl"][0, 0], torch.tensor(3.0 - 1 - math.log(3.0)))
    with pytest.raises(ValueError):
        engine_correction(old, sample, mask, "clip", "token")
