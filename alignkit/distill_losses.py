"""Knowledge-distillation losses: a student's token distributions pulled toward a teacher's.

Kept apart from ``losses.py`` because that module passed 500 lines; the contract is the same. Every loss is a pure
function of tensors returning per-token (B, T) values, zero where ``mask`` is 0, plus a dict of detached (B, T)
statistics, also zero there. Nothing here reduces: only ``losses.aggregate`` does, with the step's denominator.

Shapes: B batch, T response tokens, V vocabulary, k teacher tokens kept per position. Logits are (B, T, V) and
already aligned with the target positions (the caller has shifted them). ``mask`` (B, T) is 1 where a token
counts. Everything is computed in float32 whatever the input dtype. The teacher is the caller's to run under
``torch.no_grad``; tau is the softmax temperature, p^tau = softmax(logits / tau).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Stats = dict[str, Tensor]


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    """log softmax(logits / tau) over the last dimension, in float32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (it divides the logits), got {temperature}")
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) = sum_v p (log p - log q) over the last dimension, from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _masked(kl: Tensor, mask: Tensor, temperature: float) -> tuple[Tensor, Stats]:
    """tau^2 * kl per token, zero where mask is 0, and the unscaled divergence as the ``kl`` stat."""
    kl = kl * mask
    return temperature**2 * kl, {"kl": kl.detach()}


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor,
               temperature: float = 1.0) -> tuple[Tensor, Stats]:
    """Soft-label knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network",
    section 2): loss_t = tau^2 KL(p_T^tau || p_S^tau), the forward (mean-covering) KL.

    student_logits, teacher_logits: (B, T, V); mask: (B, T). Returns the (B, T) loss and stats {"kl"}: the KL
    before the tau^2 factor. The gradient of KL at temperature tau is (p_S^tau - p_T^tau) / tau with respect to
    the student logits, and its size shrinks as 1 / tau^2 for large tau; the tau^2 factor keeps the gradient's
    scale independent of tau, so changing tau does not retune the learning rate or the hard-label weight.
    """
    kl = _kl(_log_probs(teacher_logits, temperature), _log_probs(student_logits, temperature))
    return _masked(kl, mask, temperature)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor,
               temperature: float = 1.0) -> tuple[Tensor, Stats]:
    """Reverse (mode-seeking) KL, loss_t = tau^2 KL(p_S^tau || p_T^tau): the student puts its mass where the
    teacher is confident rather than covering every teacher mode. The divergence of on-policy distillation
    (GKD, Agarwal et al. 2024, with D = reverse KL; MiniLLM, Gu et al. 2024, whose objective is KL(q_theta || p)).

    Shapes and stats as ``forward_kl``.
    """
    kl = _kl(_log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature))
    return _masked(kl, mask, temperature)


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0,
                    beta: float = 0.5) -> tuple[Tensor, Stats]:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024, "On-Policy Distillation of Language
    Models: Learning from Self-Generated Mistakes", its D_JSD(beta) definition), per token:

    loss_t = tau^2 [beta KL(P_T || M) + (1 - beta) KL(P_S || M)], M = beta P_T + (1 - beta) P_S,
    P = p^tau. beta = 0.5 is the symmetric Jensen-Shannon divergence. As beta -> 0 it behaves like beta times the
    forward KL, as beta -> 1 like (1 - beta) times the reverse KL: the value itself vanishes at both ends, so beta
    must lie strictly inside (0, 1). log M is a logsumexp of the two weighted log-probs, never a log of a sum.
    Shapes as ``forward_kl``; stats {"kl"}: the JSD before the tau^2 factor.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must be strictly between 0 and 1, got {beta}; its limits have their own "
                         "entries: forward_kl (beta -> 0) and reverse_kl (beta -> 1)")
    teacher = _log_probs(teacher_logits, temperature)
    student = _log_probs(student_logits, temperature)
    mixture = torch.logsumexp(torch.stack([teacher + math.log(beta), student + math.log(1 - beta)]), dim=0)
    jsd = beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)
    return _masked(jsd, mask, temperature)


# name -> loss, one signature: DISTILL_LOSSES[name](student_logits, teacher_logits, mask, **knobs), the knobs
# {"temperature": tau}, plus {"beta": b} for "jsd" only
DISTILL_LOSSES: dict[str, Callable[..., tuple[Tensor, Stats]]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": generalized_jsd,
}


def topk_forward_kl(student_logits: Tensor, teacher_topk_logits: Tensor, teacher_topk_ids: Tensor, mask: Tensor,
                    temperature: float = 1.0) -> tuple[Tensor, Stats]:
    """``forward_kl`` against a teacher cached as only its k largest logits per position (offline distillation,
    where storing (B, T, V) teacher logits is too costly).

    teacher_topk_logits: (B, T, k) float; teacher_topk_ids: (B, T, k) long, their token ids; student_logits
    (B, T, V); mask (B, T). The teacher's distribution is softmax(topk_logits / tau), renormalised over the k
    kept tokens; the student's log-probs are its FULL-vocabulary log_softmax(student_logits / tau) gathered at
    those ids. loss_t = tau^2 sum_k p_T,k (log p_T,k - log p_S,k). The student's mass outside the k ids counts
    as a miss, so the value is >= 0 and k = V is ``forward_kl`` exactly. Stats {"kl"} before the tau^2 factor.
    """
    teacher = _log_probs(teacher_topk_logits, temperature)
    student = _log_probs(student_logits, temperature).gather(-1, teacher_topk_ids)
    return _masked(_kl(teacher, student), mask, temperature)


def hard_label_nll(student_logits: Tensor, target_ids: Tensor, mask: Tensor) -> tuple[Tensor, Stats]:
    """Hard-label term of knowledge distillation (Hinton et al. 2015, section 2: the cross-entropy with the
    correct labels, at temperature 1), which a recipe mixes with a soft-label loss by a weight.

    student_logits: (B, T, V); target_ids: (B, T) long; mask: (B, T). loss_t = -log softmax(student_logits)[target],
    zero where mask is 0. Stats {"nll"}: the same values, detached (there is no divergence to report).
    """
    logps = torch.log_softmax(student_logits.float(), dim=-1).gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)
    nll = -logps * mask
    return nll, {"nll": nll.detach()}
