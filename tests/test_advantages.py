"""Advantage estimators by hand; GAE against a hand example and a plain Python loop."""

import math

import pytest
import torch
from torch.testing import assert_close

from alignkit.advantages import ADVANTAGES, dr_grpo, gae, grpo, reinforce_pp, rloo, zero_spread_groups


def test_grpo_hand_computed():
    # group 1: [1, 0, 0, 1] mean 0.5, unbiased std sqrt(1/3); group 2: all 2 -> zero advantage
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    s = math.sqrt(1 / 3)
    expected = torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0.0, 0.0, 0.0, 0.0])
    assert_close(grpo(scores, 4, eps=0.0 + 1e-12), expected)


def test_dr_grpo_is_mean_only():
    scores = torch.tensor([3.0, 1.0, 2.0, 10.0])
    assert_close(dr_grpo(scores, 2), torch.tensor([1.0, -1.0, -4.0, 4.0]))


def test_rloo_leave_one_out_hand_computed():
    # r = [1, 2, 6]: baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    assert_close(rloo(torch.tensor([1.0, 2.0, 6.0]), 3), torch.tensor([-3.0, -1.5, 4.5]))
    with pytest.raises(ValueError, match="at least 2"):
        rloo(torch.tensor([1.0]), 1)


def test_reinforce_pp_group_mean_then_batch_std():
    scores = torch.tensor([1.0, 3.0, 0.0, 0.0])
    centred = torch.tensor([-1.0, 1.0, 0.0, 0.0])  # group means 2 and 0
    assert_close(reinforce_pp(scores, 2, eps=0.0), centred / centred.std())


def test_estimators_share_one_signature_and_reject_bad_shapes():
    scores = torch.randn(12)
    for name, fn in ADVANTAGES.items():
        assert fn(scores, 4, 1e-6).shape == (12,), name
    with pytest.raises(ValueError, match="multiple of the group size"):
        grpo(torch.randn(7), 4)


def test_zero_spread_groups():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 5.0, 5.0])
    assert zero_spread_groups(scores, 2).tolist() == [True, False, True]


def test_gae_hand_computed():
    # one sequence of 3 tokens, gamma 0.9, lambda 0.5, reward only at the end
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.2]])
    mask = torch.ones(1, 3)
    # deltas: t2 = 1 + 0 - 0.2 = 0.8; t1 = 0 + 0.9*0.2 - 0.4 = -0.22; t0 = 0 + 0.9*0.4 - 0.5 = -0.14
    # A2 = 0.8; A1 = -0.22 + 0.45*0.8 = 0.14; A0 = -0.14 + 0.45*0.14 = -0.077
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert_close(advantages, torch.tensor([[-0.077, 0.14, 0.8]]))
    assert_close(returns, torch.tensor([[0.423, 0.54, 1.0]]))


def plain_gae(rewards, values, lengths, gamma, lam):
    out = []
    for r, v, n in zip(rewards.tolist(), values.tolist(), lengths):
        adv = [0.0] * len(r)
        running = 0.0
        for t in reversed(range(n)):
            nxt = v[t + 1] if t + 1 < n else 0.0
            running = r[t] + gamma * nxt - v[t] + gamma * lam * running
            adv[t] = running
        out.append(adv)
    return torch.tensor(out)


def test_gae_matches_a_plain_python_loop_on_a_padded_batch():
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 6), torch.randn(4, 6)
    lengths = [6, 3, 1, 4]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths], dtype=torch.float)
    advantages, returns = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    expected = plain_gae(rewards, values, lengths, 0.95, 0.9)
    assert_close(advantages, expected)
    assert_close(returns, (expected + values) * mask)


def test_running_moments_match_the_whole_stream():
    from alignkit.advantages import RunningMoments

    torch.manual_seed(0)
    stream = torch.randn(50) * 3 + 1
    moments = RunningMoments()
    for chunk in stream.split(7):
        moments.update(chunk)
    again = RunningMoments(moments.state())  # what a checkpoint restores
    assert again.mean == pytest.approx(stream.mean().item(), rel=1e-5)
    assert again.std == pytest.approx(stream.std().item(), rel=1e-5)
    assert_close(again.normalise(stream), (stream - stream.mean()) / stream.std(), rtol=1e-4, atol=1e-5)


def test_reinforce_pp_std_is_over_the_kept_rows_only():
    # two groups of 2: [1, 3] and [5, 5]; centred: [-1, 1, 0, 0]. The flat group is dropped (dynamic sampling):
    # its zeros must not shrink the std. Over the kept rows [-1, 1] the unbiased std is sqrt(2).
    scores = torch.tensor([1.0, 3.0, 5.0, 5.0])
    keep = torch.tensor([True, True, False, False])
    s = 2.0**0.5
    assert_close(reinforce_pp(scores, 2, 0.0, keep), torch.tensor([-1 / s, 1 / s, 0.0, 0.0]))
    # with every row kept the std is over all four: sqrt(2/3)
    t = (2.0 / 3.0) ** 0.5
    assert_close(reinforce_pp(scores, 2, 0.0), torch.tensor([-1 / t, 1 / t, 0.0, 0.0]))
