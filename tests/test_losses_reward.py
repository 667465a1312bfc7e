"""Reward-model losses (Bradley-Terry, all-pairs ranking, Plackett-Luce, centering) against hand-computed values."""

import math

import torch
from torch.testing import assert_close

from alignkit.losses import (
    RANKING_LOSSES,
    bt_pairwise,
    ranking_all_pairs,
    ranking_plackett_luce,
    reward_centering,
)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), written out so expected values do not come from torch."""
    return math.log(1 + math.exp(x))


def logsumexp(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_bt_pairwise_hand_computed():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 2.0])
    loss, stats = bt_pairwise(chosen, rejected)
    # -logsigmoid(r_c - r_r) = log(1 + e^-(r_c - r_r)): differences 0.5 and -2
    assert_close(loss, torch.tensor([softplus(-0.5), softplus(2.0)]))
    assert_close(stats["accuracy"], torch.tensor([1.0, 0.0]))
    assert_close(stats["margin"], torch.tensor([0.5, -2.0]))
    # Llama 2 margin 0.25 on the first pair: -logsigmoid(0.5 - 0.25)
    with_margin, _ = bt_pairwise(chosen, rejected, margin=torch.tensor([0.25, 0.0]))
    assert_close(with_margin, torch.tensor([softplus(-0.25), softplus(2.0)]))


def test_bt_pairwise_tie_counts_half():
    # margins +1, 0, -1, 0 -> 1, 0.5, 0, 0.5: mean 0.5
    _, stats = bt_pairwise(torch.tensor([1.0, 0.0, -1.0, 2.0]), torch.tensor([0.0, 0.0, 0.0, 2.0]))
    assert_close(stats["accuracy"], torch.tensor([1.0, 0.5, 0.0, 0.5]))
    assert_close(stats["accuracy"].mean(), torch.tensor(0.5))


def test_ranking_accuracy_counts_a_tied_pair_half():
    rewards = torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 1.0], [3.0, 3.0, 0.0], [0.0, -1.0, 5.0]])
    valid = torch.tensor([[True] * 3, [True] * 3, [True] * 3, [True, True, False]])
    # row 0: (0,1) 1, (0,2) 1, (1,2) tie 0.5 -> 2.5 / 3; row 1: three ties -> 0.5;
    # row 2: (0,1) tie 0.5, (0,2) 1, (1,2) 1 -> 2.5 / 3;
    # row 3: only (0,1) is a pair, ordered -> 1 (the padded item, zeroed, would tie item 0 if it counted)
    for ranking in RANKING_LOSSES.values():
        _, stats = ranking(rewards, valid)
        assert_close(stats["accuracy"], torch.tensor([2.5 / 3, 0.5, 2.5 / 3, 1.0]))


def test_all_pairs_hand_computed():
    rewards = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0]])
    loss, stats = ranking_all_pairs(rewards)
    # row 1: pairs (0,1) (0,2) (1,2) have r_i - r_j = 1, 2, 1; row 2: -1, 1, 2. Mean of log(1 + e^-(r_i - r_j)).
    expected = [(2 * softplus(-1.0) + softplus(-2.0)) / 3, (softplus(1.0) + softplus(-1.0) + softplus(-2.0)) / 3]
    assert_close(loss, torch.tensor(expected))
    assert_close(stats["accuracy"], torch.tensor([1.0, 2 / 3]))


def test_plackett_luce_hand_computed():
    rewards = torch.tensor([[2.0, 1.0, 0.0]])
    loss, stats = ranking_plackett_luce(rewards)
    # position 1: lse(2, 1, 0) - 2; position 2: lse(1, 0) - 1; position 3: 0. Divided by n - 1 = 2.
    expected = ((logsumexp(2.0, 1.0, 0.0) - 2.0) + (logsumexp(1.0, 0.0) - 1.0)) / 2
    assert_close(loss, torch.tensor([expected]))
    assert_close(stats["accuracy"], torch.tensor([1.0]))


def test_k2_all_pairs_and_plackett_luce_equal_bt_pairwise():
    rewards = torch.tensor([[0.3, -1.2], [2.0, 2.5], [-4.0, 3.0]])
    pairwise, _ = bt_pairwise(rewards[:, 0], rewards[:, 1])
    # and by hand: log(1 + e^-(r_0 - r_1)) per row
    assert_close(pairwise, torch.tensor([softplus(-1.5), softplus(0.5), softplus(7.0)]))
    for ranking in RANKING_LOSSES.values():
        assert_close(ranking(rewards)[0], pairwise)


def test_padded_positions_are_ignored():
    pair = torch.tensor([[0.3, -1.2], [2.0, 2.5]])
    # a third item that is padding, holding garbage
    padded = torch.tensor([[0.3, -1.2, float("nan")], [2.0, 2.5, 50.0]], requires_grad=True)
    valid = torch.tensor([[True, True, False], [True, True, False]])
    for ranking in RANKING_LOSSES.values():
        loss, stats = ranking(padded, valid)
        assert_close(loss, ranking(pair)[0])
        assert_close(stats["accuracy"], torch.tensor([1.0, 0.0]))
        (grad,) = torch.autograd.grad(loss.sum(), padded)
        assert torch.isfinite(grad).all() and (grad[:, 2] == 0).all()
    # padding in the middle: the order is that of the valid items
    middle = torch.tensor([[0.3, 9.0, -1.2]])
    valid_middle = torch.tensor([[True, False, True]])
    for ranking in RANKING_LOSSES.values():
        assert_close(ranking(middle, valid_middle)[0], ranking(pair[:1])[0])


def test_rows_are_independent_and_short_rows_give_zero():
    rewards = torch.tensor([[1.0, 0.5, -0.5, 0.2], [3.0, 0.0, 0.0, 0.0], [0.1, 0.4, -2.0, 0.0]])
    valid = torch.tensor([[True] * 4, [True, False, False, False], [True, True, True, False]])
    for ranking in RANKING_LOSSES.values():
        loss, _ = ranking(rewards, valid)
        assert loss[1] == 0  # one item: nothing to compare
        assert_close(loss[2:], ranking(rewards[2:, :3])[0])
        assert_close(loss[:1], ranking(rewards[:1])[0])


def test_reward_centering_hand_computed():
    # means 2 and 0, squared
    assert_close(reward_centering(torch.tensor([[1.0, 3.0], [-1.0, 1.0]])), torch.tensor([4.0, 0.0]))
    # the padded 100 does not count: mean of 1 and 3
    valid = torch.tensor([[True, True, False]])
    assert_close(reward_centering(torch.tensor([[1.0, 3.0, 100.0]]), valid), torch.tensor([4.0]))
