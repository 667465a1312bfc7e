"""DPO-family and KTO losses against hand-computed values, their identities, and gradient signs."""

import math

import pytest
import torch
from torch.testing import assert_close

from alignkit.losses import (
    PREFERENCE_LOSSES,
    REFERENCE_FREE,
    dpo_robust,
    dpo_sigmoid,
    ipo,
    kto_loss,
    kto_reference_point,
    nll_term,
    orpo,
    simpo,
    slic_hinge,
)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), written out so expected values do not come from torch."""
    return math.log(1 + math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# Two pairs, beta 0.1.
# Pair 1: logps chosen -1.0, rejected -2.0; ref -1.5, -1.5. Log-ratios +0.5, -0.5, so h = 1.0, beta h = 0.1.
# Pair 2: logps chosen -3.0, rejected -1.0; ref -2.0, -2.0. Log-ratios -1.0, +1.0, so h = -2.0, beta h = -0.2.
CHOSEN = torch.tensor([-1.0, -3.0])
REJECTED = torch.tensor([-2.0, -1.0])
REF_CHOSEN = torch.tensor([-1.5, -2.0])
REF_REJECTED = torch.tensor([-1.5, -2.0])
PAIRS = (CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED)


def test_dpo_sigmoid_hand_computed():
    loss, stats = dpo_sigmoid(*PAIRS, beta=0.1)
    # -logsigmoid(beta h) = log(1 + e^(-beta h)): log(1 + e^-0.1), log(1 + e^0.2)
    assert_close(loss, torch.tensor([softplus(-0.1), softplus(0.2)]))
    # rewards beta * log-ratio: chosen 0.1 * 0.5, 0.1 * -1.0; rejected 0.1 * -0.5, 0.1 * 1.0
    assert_close(stats["rewards_chosen"], torch.tensor([0.05, -0.1]))
    assert_close(stats["rewards_rejected"], torch.tensor([-0.05, 0.1]))
    assert_close(stats["margin"], torch.tensor([0.1, -0.2]))
    assert_close(stats["accuracy"], torch.tensor([1.0, 0.0]))


def test_a_tied_pair_counts_half_in_accuracy():
    # margins (beta 1): +1, 0, -1, 0 -> correct 1, 0.5, 0, 0.5; mean 0.5
    chosen = torch.tensor([-1.0, -2.0, -3.0, -1.0])
    rejected = torch.tensor([-2.0, -2.0, -2.0, -1.0])
    zeros = torch.zeros(4)
    _, stats = dpo_sigmoid(chosen, rejected, zeros, zeros, beta=1.0)
    assert_close(stats["margin"], torch.tensor([1.0, 0.0, -1.0, 0.0]))
    assert_close(stats["accuracy"], torch.tensor([1.0, 0.5, 0.0, 0.5]))
    assert_close(stats["accuracy"].mean(), torch.tensor(0.5))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_dpo_at_step_zero_reads_chance_accuracy_and_log_2(label_smoothing):
    """Policy == reference (DPO's step 0): every margin is exactly 0, so accuracy is 0.5 and the loss log 2
    (-(1 - eps) logsigmoid(0) - eps logsigmoid(0) = log 2 for any eps)."""
    logps = torch.tensor([-3.0, -0.5, -7.25])
    other = torch.tensor([-1.0, -4.0, -2.5])
    loss, stats = dpo_sigmoid(logps, other, logps.clone(), other.clone(), beta=0.1, label_smoothing=label_smoothing)
    assert_close(loss, torch.full((3,), math.log(2)))
    assert torch.equal(stats["accuracy"], torch.full((3,), 0.5))
    assert torch.equal(stats["margin"], torch.zeros(3))


@pytest.mark.parametrize("name", sorted(set(PREFERENCE_LOSSES) - REFERENCE_FREE))
def test_every_reference_loss_reads_chance_accuracy_when_policy_is_reference(name):
    logps, other = torch.tensor([-3.0, -0.5]), torch.tensor([-1.0, -4.0])
    _, stats = PREFERENCE_LOSSES[name](logps, other, logps.clone(), other.clone(), beta=0.1)
    assert torch.equal(stats["accuracy"], torch.full((2,), 0.5))


def test_cdpo_label_smoothing_hand_computed_and_eps_zero_is_dpo():
    loss, _ = dpo_sigmoid(*PAIRS, beta=0.1, label_smoothing=0.1)
    # 0.9 * -logsigmoid(beta h) + 0.1 * -logsigmoid(-beta h)
    expected = [0.9 * softplus(-0.1) + 0.1 * softplus(0.1), 0.9 * softplus(0.2) + 0.1 * softplus(-0.2)]
    assert_close(loss, torch.tensor(expected))
    plain_dpo = -torch.nn.functional.logsigmoid(torch.tensor([0.1, -0.2]))
    assert torch.equal(dpo_sigmoid(*PAIRS, beta=0.1, label_smoothing=0.0)[0], plain_dpo)


def test_robust_dpo_hand_computed_and_eps_zero_is_dpo():
    loss, _ = dpo_robust(*PAIRS, beta=0.1, label_smoothing=0.1)
    # (0.9 * -logsigmoid(beta h) - 0.1 * -logsigmoid(-beta h)) / (1 - 0.2)
    expected = [(0.9 * softplus(-0.1) - 0.1 * softplus(0.1)) / 0.8,
                (0.9 * softplus(0.2) - 0.1 * softplus(-0.2)) / 0.8]
    assert_close(loss, torch.tensor(expected))
    assert torch.equal(dpo_robust(*PAIRS, beta=0.1)[0], dpo_sigmoid(*PAIRS, beta=0.1)[0])


def test_label_smoothing_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_robust(*PAIRS, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_sigmoid(*PAIRS, label_smoothing=0.7)


def test_ipo_hand_computed():
    loss, stats = ipo(*PAIRS, beta=0.1)
    # (h - 1 / (2 * 0.1))^2 = (h - 5)^2 with h = 1.0 and -2.0: 16, 49
    assert_close(loss, torch.tensor([16.0, 49.0]))
    assert_close(stats["rewards_chosen"], torch.tensor([0.05, -0.1]))


def test_slic_hinge_hand_computed():
    loss, _ = slic_hinge(*PAIRS, beta=0.1)
    # relu(1 - beta h): 1 - 0.1, 1 + 0.2
    assert_close(loss, torch.tensor([0.9, 1.2]))
    # beta 2: relu(1 - 2), relu(1 + 4): a pair past the margin costs nothing
    assert_close(slic_hinge(*PAIRS, beta=2.0)[0], torch.tensor([0.0, 5.0]))


def test_simpo_hand_computed_and_length_normalisation():
    chosen, rejected = torch.tensor([-4.0]), torch.tensor([-9.0])
    lengths = {"chosen_lengths": torch.tensor([2.0]), "rejected_lengths": torch.tensor([3.0])}
    loss, stats = simpo(chosen, rejected, None, None, beta=2.0, simpo_gamma=0.5, **lengths)
    # averages -4/2 = -2, -9/3 = -3; -logsigmoid(2 * (-2 - -3) - 0.5) = log(1 + e^-1.5)
    assert_close(loss, torch.tensor([softplus(-1.5)]))
    assert_close(stats["rewards_chosen"], torch.tensor([-4.0]))
    assert_close(stats["rewards_rejected"], torch.tensor([-6.0]))
    doubled = simpo(2 * chosen, 2 * rejected, None, None, beta=2.0, simpo_gamma=0.5,
                    chosen_lengths=torch.tensor([4.0]), rejected_lengths=torch.tensor([6.0]))[0]
    assert_close(doubled, loss)
    # chosen now over 4 tokens: average -1, so -logsigmoid(2 * 2 - 0.5)
    longer = simpo(chosen, rejected, None, None, beta=2.0, simpo_gamma=0.5,
                   chosen_lengths=torch.tensor([4.0]), rejected_lengths=torch.tensor([3.0]))[0]
    assert_close(longer, torch.tensor([softplus(-3.5)]))


def test_length_normalised_losses_need_lengths():
    with pytest.raises(ValueError, match="chosen_lengths"):
        simpo(CHOSEN, REJECTED)
    with pytest.raises(ValueError, match="chosen_lengths"):
        orpo(CHOSEN, REJECTED)


def test_orpo_hand_computed():
    chosen, rejected = torch.tensor([-1.0]), torch.tensor([-3.0])
    lengths = {"chosen_lengths": torch.tensor([2.0]), "rejected_lengths": torch.tensor([2.0])}
    loss, stats = orpo(chosen, rejected, None, None, beta=0.1, **lengths)
    # averages -0.5 and -1.5; log odds = avg - log(1 - e^avg); loss = 0.1 * log(1 + e^-(odds_c - odds_r))
    log_odds_chosen = -0.5 - math.log(1 - math.exp(-0.5))
    log_odds_rejected = -1.5 - math.log(1 - math.exp(-1.5))
    assert_close(loss, torch.tensor([0.1 * softplus(-(log_odds_chosen - log_odds_rejected))]))
    assert_close(stats["log_odds_ratio"], torch.tensor([log_odds_chosen - log_odds_rejected]))
    assert_close(stats["rewards_chosen"], torch.tensor([-0.05]))


def test_orpo_is_finite_for_a_certain_response():
    # average log-prob 0 (probability 1) would be log(0) without the clamp
    chosen = torch.tensor([0.0, -1e-9], requires_grad=True)
    loss, _ = orpo(chosen, torch.tensor([-3.0, -3.0]), beta=0.1,
                   chosen_lengths=torch.ones(2), rejected_lengths=torch.ones(2))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(chosen.grad).all()


def test_nll_term_hand_computed():
    # -(-4) / 2 tokens, -(-3) / 3 tokens
    assert_close(nll_term(torch.tensor([-4.0, -3.0]), torch.tensor([2.0, 3.0])), torch.tensor([2.0, 1.0]))


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_every_preference_loss_takes_the_shared_arguments(name):
    reference = (None, None) if name in REFERENCE_FREE else (REF_CHOSEN, REF_REJECTED)
    chosen = CHOSEN.clone().requires_grad_()
    loss, stats = PREFERENCE_LOSSES[name](chosen, REJECTED, *reference, beta=0.1, label_smoothing=0.0,
                                          chosen_lengths=torch.tensor([2.0, 2.0]),
                                          rejected_lengths=torch.tensor([3.0, 3.0]), simpo_gamma=0.5)
    assert loss.shape == (2,)
    assert {"rewards_chosen", "rewards_rejected"} <= stats.keys()
    assert all(not value.requires_grad for value in stats.values())


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_raising_chosen_logps_lowers_the_loss(name):
    # pair 1 of PAIRS: inside every loss's active region (hinge 0.9 > 0, IPO h = 1 < 5)
    chosen = torch.tensor([-1.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    loss, _ = PREFERENCE_LOSSES[name](chosen, rejected, torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.1,
                                      chosen_lengths=torch.tensor([2.0]), rejected_lengths=torch.tensor([2.0]))
    loss.sum().backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()


# KTO, beta 0.1, z0 0.2. Log-ratios r = policy - ref = 0.5, -0.5, -1.0.
POLICY = torch.tensor([-1.0, -2.0, -3.0])
REF = torch.tensor([-1.5, -1.5, -2.0])


def test_kto_hand_computed():
    desirable = torch.tensor([True, False, True])
    loss, stats = kto_loss(POLICY, REF, desirable, torch.tensor(0.2), beta=0.1, desirable_weight=1.0,
                           undesirable_weight=1.5)
    # desirable: 1 - sigmoid(0.1 (r - 0.2)); undesirable: 1.5 (1 - sigmoid(0.1 (0.2 - r)))
    expected = [1 - sigmoid(0.1 * 0.3), 1.5 * (1 - sigmoid(0.1 * 0.7)), 1 - sigmoid(0.1 * -1.2)]
    assert_close(loss, torch.tensor(expected))
    assert_close(stats["rewards"], torch.tensor([0.05, -0.05, -0.1]))
    assert_close(stats["desirable"], torch.tensor([1.0, 0.0, 1.0]))


@pytest.mark.parametrize("side", [True, False])
def test_kto_one_sided_batch_is_finite(side):
    desirable = torch.full((3,), side)
    loss, _ = kto_loss(POLICY, REF, desirable, torch.tensor(0.0), beta=0.1)
    if side:  # 1 - sigmoid(0.1 r)
        expected = [1 - sigmoid(0.05), 1 - sigmoid(-0.05), 1 - sigmoid(-0.1)]
    else:  # 1 - sigmoid(-0.1 r)
        expected = [1 - sigmoid(-0.05), 1 - sigmoid(0.05), 1 - sigmoid(0.1)]
    assert_close(loss, torch.tensor(expected))


def test_kto_reference_point_hand_computed():
    policy = torch.tensor([-1.0, -2.0], requires_grad=True)
    # log-ratios 0.5, 0.5: mean 0.5
    z0 = kto_reference_point(policy, torch.tensor([-1.5, -2.5]))
    assert_close(z0, torch.tensor(0.5))
    assert not z0.requires_grad
    # log-ratios 0.5, -1.0: mean -0.25, clamped to 0
    assert_close(kto_reference_point(policy, torch.tensor([-1.5, -1.0])), torch.tensor(0.0))
    assert_close(kto_reference_point(torch.zeros(0), torch.zeros(0)), torch.tensor(0.0))
