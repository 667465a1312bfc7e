"""Distillation losses against hand-computed values, their temperature scaling, masking and gradients."""

import math
from functools import partial

import pytest
import torch
from torch.testing import assert_close

from alignkit.distill_losses import (
    DISTILL_LOSSES,
    forward_kl,
    generalized_jsd,
    hard_label_nll,
    reverse_kl,
    topk_forward_kl,
)

# One token (B = 1, T = 1), V = 3. The teacher's logits are the log of its probabilities [0.5, 0.25, 0.25]; the
# student's are zeros, so it is uniform (1/3 each) at every temperature.
TEACHER = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
STUDENT = torch.zeros(1, 1, 3)
ONE = torch.ones(1, 1)

# sum p_T log(p_T / (1/3)) = 0.5 log(1.5) + 2 * 0.25 log(0.75)
FORWARD = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)
# at tau = 2 the teacher's logits halve: p_T ~ sqrt([0.5, 0.25, 0.25]) ~ [sqrt 2, 1, 1], over 2 + sqrt 2
SOFT = [math.sqrt(2) / (2 + math.sqrt(2)), 1 / (2 + math.sqrt(2)), 1 / (2 + math.sqrt(2))]
FORWARD_TAU2 = sum(p * math.log(3 * p) for p in SOFT)


def test_forward_kl_hand_computed():
    loss, stats = forward_kl(STUDENT, TEACHER, ONE)
    assert_close(loss, torch.tensor([[FORWARD]]))
    assert_close(stats["kl"], torch.tensor([[FORWARD]]))


def test_forward_kl_temperature_softens_and_tau_squared_scales():
    loss, stats = forward_kl(STUDENT, TEACHER, ONE, temperature=2.0)
    assert_close(stats["kl"], torch.tensor([[FORWARD_TAU2]]))
    assert_close(loss, torch.tensor([[4 * FORWARD_TAU2]]))  # tau^2 = 4
    assert FORWARD_TAU2 < FORWARD  # a softer teacher is closer to the uniform student
    # doubled teacher logits at tau = 2 give back p_T = [0.5, 0.25, 0.25]: the same KL, times tau^2 = 4
    loss, stats = forward_kl(STUDENT, 2 * TEACHER, ONE, temperature=2.0)
    assert_close(stats["kl"], torch.tensor([[FORWARD]]))
    assert_close(loss, torch.tensor([[4 * FORWARD]]))


def test_forward_kl_student_gradient_is_tau_times_probability_gap():
    # d/dz_S of tau^2 KL(p_T^tau || p_S^tau) = tau^2 * (p_S^tau - p_T^tau) / tau = tau (p_S^tau - p_T^tau)
    student = STUDENT.clone().requires_grad_()
    loss, _ = forward_kl(student, TEACHER, ONE, temperature=2.0)
    loss.sum().backward()
    assert_close(student.grad, torch.tensor([[[2 * (1 / 3 - p) for p in SOFT]]]))


def test_reverse_kl_hand_computed():
    loss, stats = reverse_kl(STUDENT, TEACHER, ONE)
    # sum (1/3) log((1/3) / p_T) = (1/3) log(2/3) + (2/3) log(4/3)
    expected = math.log(2 / 3) / 3 + 2 * math.log(4 / 3) / 3
    assert_close(loss, torch.tensor([[expected]]))
    assert_close(stats["kl"], torch.tensor([[expected]]))
    # tau = 2: sum (1/3) log((1/3) / p_T^tau), times 4
    soft = sum(math.log(1 / (3 * p)) / 3 for p in SOFT)
    assert_close(reverse_kl(STUDENT, TEACHER, ONE, temperature=2.0)[0], torch.tensor([[4 * soft]]))


def test_jsd_at_half_is_the_symmetric_jensen_shannon_divergence():
    loss, stats = generalized_jsd(STUDENT, TEACHER, ONE, beta=0.5)
    # M = (p_T + p_S) / 2 = [5/12, 7/24, 7/24]
    # 0.5 KL(p_T || M) = 0.5 (0.5 log(0.5 / (5/12)) + 0.5 log(0.25 / (7/24))) = 0.5 (0.5 log 6/5 + 0.5 log 6/7)
    # 0.5 KL(p_S || M) = 0.5 ((1/3) log((1/3) / (5/12)) + (2/3) log((1/3) / (7/24))) = 0.5 ((1/3) log 4/5 + ...)
    expected = 0.5 * (0.5 * math.log(6 / 5) + 0.5 * math.log(6 / 7)) + 0.5 * (
        math.log(4 / 5) / 3 + 2 * math.log(8 / 7) / 3)
    assert_close(loss, torch.tensor([[expected]]))
    assert_close(stats["kl"], torch.tensor([[expected]]))
    assert_close(generalized_jsd(TEACHER, STUDENT, ONE, beta=0.5)[0], loss)  # symmetric at beta = 0.5


def test_jsd_beta_weights_the_teacher_side():
    loss, _ = generalized_jsd(STUDENT, TEACHER, ONE, beta=0.25)
    # M = 0.25 p_T + 0.75 p_S = [0.375, 0.3125, 0.3125]
    # KL(p_T || M) = 0.5 log(0.5 / 0.375) + 0.5 log(0.25 / 0.3125) = 0.5 log 4/3 + 0.5 log 4/5
    # KL(p_S || M) = (1/3) log((1/3) / 0.375) + (2/3) log((1/3) / 0.3125) = (1/3) log 8/9 + (2/3) log 16/15
    teacher_side = 0.5 * math.log(4 / 3) + 0.5 * math.log(4 / 5)
    student_side = math.log(8 / 9) / 3 + 2 * math.log(16 / 15) / 3
    assert_close(loss, torch.tensor([[0.25 * teacher_side + 0.75 * student_side]]))


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.1, 1.5])
def test_jsd_refuses_beta_at_or_past_its_limits(beta):
    with pytest.raises(ValueError, match="forward_kl .* reverse_kl"):
        generalized_jsd(STUDENT, TEACHER, ONE, beta=beta)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(STUDENT, TEACHER, ONE, temperature=0.0)


def test_topk_forward_kl_hand_computed():
    # student over V = 4: [0.4, 0.3, 0.2, 0.1]; the teacher kept ids [2, 0] (not sorted) with probs [0.75, 0.25]
    student = torch.log(torch.tensor([[[0.4, 0.3, 0.2, 0.1]]]))
    loss, stats = topk_forward_kl(student, torch.log(torch.tensor([[[3.0, 1.0]]])), torch.tensor([[[2, 0]]]), ONE)
    # the student's FULL-vocabulary probabilities at those ids: 0.2 and 0.4
    expected = 0.75 * math.log(0.75 / 0.2) + 0.25 * math.log(0.25 / 0.4)
    assert_close(loss, torch.tensor([[expected]]))
    assert_close(stats["kl"], torch.tensor([[expected]]))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_forward_kl_with_every_token_is_forward_kl(temperature):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 5, generator=generator)
    teacher = torch.randn(2, 3, 5, generator=generator)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    values, ids = teacher.topk(5, dim=-1)
    loss, stats = topk_forward_kl(student, values, ids, mask, temperature=temperature)
    full_loss, full_stats = forward_kl(student, teacher, mask, temperature=temperature)
    assert_close(loss, full_loss)
    assert_close(stats["kl"], full_stats["kl"])


def test_hard_label_nll_hand_computed():
    student = torch.log(torch.tensor([[[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]]))
    loss, stats = hard_label_nll(student, torch.tensor([[2, 3]]), torch.ones(1, 2))
    assert_close(loss, torch.tensor([[-math.log(0.2), math.log(4)]]))
    assert_close(stats["nll"], loss)


@pytest.mark.parametrize("name", sorted(DISTILL_LOSSES))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_zero_where_the_student_is_the_teacher(name, temperature):
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))
    knobs = {"temperature": temperature, **({"beta": 0.3} if name == "jsd" else {})}
    loss, stats = DISTILL_LOSSES[name](logits, logits.clone(), torch.ones(2, 3), **knobs)
    assert_close(loss, torch.zeros(2, 3))
    assert_close(stats["kl"], torch.zeros(2, 3))


# Every loss as a call on (student logits, teacher logits, mask); top-k keeps the teacher's 2 largest logits and
# the hard label is the teacher's argmax.
CALLS = {
    **{name: partial(fn, temperature=2.0) for name, fn in DISTILL_LOSSES.items()},
    "topk_forward_kl": lambda s, t, m: topk_forward_kl(s, *t.topk(2, dim=-1), m, temperature=2.0),
    "hard_label_nll": lambda s, t, m: hard_label_nll(s, t.argmax(-1), m),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_mask_zeroes_tokens_and_leaves_the_others_alone(name):
    # token 0 counts; token 1 is padding with extreme logits, which must not leak into the loss or the stats
    student = torch.stack([STUDENT[0, 0], torch.tensor([80.0, -80.0, 0.0])])[None]
    teacher = torch.stack([TEACHER[0, 0], torch.tensor([-80.0, 80.0, 0.0])])[None]
    loss, stats = CALLS[name](student, teacher, torch.tensor([[1.0, 0.0]]))
    alone, alone_stats = CALLS[name](student[:, :1], teacher[:, :1], ONE)
    assert loss[0, 1] == 0 and all(value[0, 1] == 0 for value in stats.values())
    assert_close(loss[:, :1], alone)
    assert loss[0, 0] > 0
    assert all(not value.requires_grad and value.shape == (1, 2) for value in stats.values())
    assert alone_stats.keys() == stats.keys()


@pytest.mark.parametrize("name", sorted(CALLS))
def test_half_precision_logits_are_computed_in_float32(name):
    student = STUDENT.to(torch.bfloat16).requires_grad_()
    loss, _ = CALLS[name](student, TEACHER.to(torch.bfloat16), ONE)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
