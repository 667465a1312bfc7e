"""Every loss is a pure function of tensors returning per-token (B, T) or per-sequence (B,) values plus a dict of
detached statistics. Only ``aggregate`` reduces, with a denominator counted over the whole optimizer step, so
gradient accumulation and data-parallel splits do not change the result.

Shapes: B batch, T response tokens. ``mask`` is 1 where a token counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Stats = dict[str, Tensor]


# --------------------------------------------------------------------------------------------- reduction
def aggregate(values: Tensor, mask: Tensor, denominator: float | Tensor, mode: str = "token_mean") -> Tensor:
    """The one reducer: this micro-batch's share of the optimizer step's loss.

    values, mask: (B, T) per-token, or (B,) per-sequence with mask (B,) of ones.
    denominator: ``step_denominator(...)`` computed over every micro-batch (and rank) of the optimizer step.
    Summing ``aggregate`` over the micro-batches of a step gives the step's mean loss exactly. A step with nothing
    to count (every row dropped) has a zero numerator: the denominator is clamped to 1 here, after the counts of
    every rank are summed, never per rank (which would shrink the loss when one rank has nothing).
    """
    denominator = denominator.clamp(min=1) if isinstance(denominator, Tensor) else max(denominator, 1)
    return AGGREGATIONS[mode](values, mask) / denominator


def _token_sum(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum()


def _seq_mean_token_mean(values: Tensor, mask: Tensor) -> Tensor:
    if values.dim() == 1:
        return (values * mask).sum()
    return ((values * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum()


# Each entry: the numerator summed over a micro-batch. The matching denominator is counted by step_denominator.
AGGREGATIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "token_mean": _token_sum,  # / valid tokens in the step
    "seq_mean_token_mean": _seq_mean_token_mean,  # / sequences in the step
    "seq_mean_token_sum": _token_sum,  # / (sequences in the step * a constant length), Dr.GRPO
}


def step_denominator(masks: list[Tensor], mode: str = "token_mean", constant_length: int = 1) -> Tensor:
    """The denominator for ``aggregate`` over the micro-batch masks of one optimizer step (on one rank).

    Data-parallel callers sum it across ranks (accelerate's ``reduce``) and scale the loss by the world size,
    because DDP averages gradients over ranks.
    """
    if mode == "token_mean":
        return torch.as_tensor(sum(m.sum() for m in masks)).float()
    # a row with no valid token (dropped by dynamic sampling, a masked truncation) is not a sequence of the step
    sequences = torch.tensor(float(sum(int((m.sum(-1) > 0).sum()) if m.dim() == 2 else m.shape[0] for m in masks)))
    return sequences * constant_length if mode == "seq_mean_token_sum" else sequences


# ---------------------------------------------------------------------------------------------------- SFT
def sft_loss(logps: Tensor, mask: Tensor) -> tuple[Tensor, Stats]:
    """Negative log-likelihood of the target tokens (maximum likelihood; the SFT objective).

    logps: (B, T) log pi_theta(y_t | x, y_<t) of the target tokens. mask: (B, T), 1 on response tokens.
    Returns per-token loss (B, T) = -logps (zero where mask is 0) and stats.
    """
    loss = -logps * mask
    return loss, {"nll_sum": loss.detach().sum(), "tokens": mask.detach().sum()}


# ----------------------------------------------------------------------------------- preference (DPO family)
def _ordered(higher: Tensor, lower: Tensor) -> Tensor:
    """1.0 where ``higher > lower``, 0.5 on a tie, 0.0 otherwise: a tie is a coin flip, not a mistake. At DPO's step
    0 the policy is the reference, every margin is exactly 0, and the accuracy must read 0.5, not 0."""
    return (higher > lower).float() + 0.5 * (higher == lower).float()


# B pairs. *_logps: (B,) log pi(y | x) SUMMED over the response tokens; *_lengths: (B,) response token counts.
# Every PREFERENCE_LOSSES entry takes the same arguments and ignores, through **_, what it does not use, so a
# recipe calls PREFERENCE_LOSSES[cfg.loss](chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
# beta=, label_smoothing=, chosen_lengths=, rejected_lengths=, simpo_gamma=). Each returns the per-pair loss
# (B,) and detached (B,) stats: rewards_chosen, rewards_rejected (the implicit rewards), margin (their
# difference) and accuracy (1.0 where the chosen reward is higher, 0.5 on a tie, 0.0 where it is lower).
def _pair_stats(rewards_chosen: Tensor, rewards_rejected: Tensor, **extra: Tensor) -> Stats:
    rewards_chosen, rewards_rejected = rewards_chosen.detach(), rewards_rejected.detach()
    return {"rewards_chosen": rewards_chosen, "rewards_rejected": rewards_rejected,
            "margin": rewards_chosen - rewards_rejected,
            "accuracy": _ordered(rewards_chosen, rewards_rejected),
            **{name: value.detach() for name, value in extra.items()}}


def _length_normalised(logps: Tensor, lengths: Tensor | None, loss: str) -> Tensor:
    if lengths is None:
        raise ValueError(f"the {loss} loss needs chosen_lengths and rejected_lengths (response token counts)")
    return logps / lengths.clamp(min=1)


def dpo_sigmoid(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
                ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0,
                **_) -> tuple[Tensor, Stats]:
    """DPO (Rafailov et al. 2023, eq. 7) with conservative-DPO label smoothing eps (cDPO, Mitchell 2023).

    h = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps), all (B,) summed log-probs.
    loss (B,) = -(1 - eps) logsigmoid(beta h) - eps logsigmoid(-beta h), eps the assumed probability that a
    pair's label is flipped; eps = 0 is plain DPO, bit for bit. Rewards: beta (logps - ref_logps).
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5] (a flip probability), got {label_smoothing}")
    rewards_chosen = beta * (chosen_logps - ref_chosen_logps)
    rewards_rejected = beta * (rejected_logps - ref_rejected_logps)
    logits = rewards_chosen - rewards_rejected  # beta h
    loss = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return loss, _pair_stats(rewards_chosen, rewards_rejected)


def dpo_robust(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
               ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0,
               **_) -> tuple[Tensor, Stats]:
    """Robust DPO, rDPO (Chowdhury et al. 2024, "Provably Robust DPO", the de-biased loss of section 3).

    Shapes and h as ``dpo_sigmoid``; eps = label_smoothing is the known flip rate, in [0, 0.5).
    loss (B,) = (-(1 - eps) logsigmoid(beta h) + eps logsigmoid(-beta h)) / (1 - 2 eps): an unbiased
    estimate of the clean DPO loss under random flips (cDPO instead smooths the target). eps = 0 is plain DPO.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError("label_smoothing must be in [0, 0.5) for robust DPO (it divides by 1 - 2 eps), "
                         f"got {label_smoothing}")
    rewards_chosen = beta * (chosen_logps - ref_chosen_logps)
    rewards_rejected = beta * (rejected_logps - ref_rejected_logps)
    logits = rewards_chosen - rewards_rejected
    loss = (-(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)) / (
        1 - 2 * label_smoothing)
    return loss, _pair_stats(rewards_chosen, rewards_rejected)


def ipo(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
        *, beta: float = 0.1, **_) -> tuple[Tensor, Stats]:
    """IPO (Azar et al. 2023, eq. 17): loss (B,) = (h - 1 / (2 beta))^2, beta the paper's tau.

    h as ``dpo_sigmoid`` (no beta inside), from SUMMED log-probs as in the paper's equation. TRL averages the
    log-probs over tokens for IPO instead, which changes the scale of h and so the meaning of beta.
    Rewards: beta (logps - ref_logps), for logging only.
    """
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    loss = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return loss, _pair_stats(beta * chosen_ratio, beta * rejected_ratio)


def slic_hinge(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
               ref_rejected_logps: Tensor, *, beta: float = 0.1, **_) -> tuple[Tensor, Stats]:
    """SLiC-HF's hinge (Zhao et al. 2023, the rank calibration loss) on reference log-ratios, as DPO compares.

    h as ``dpo_sigmoid``. loss (B,) = relu(1 - beta h) = beta relu(1/beta - h): SLiC's margin delta is 1/beta.
    SLiC itself uses no reference model; this reference-ratio form is the one the DPO literature uses.
    """
    rewards_chosen = beta * (chosen_logps - ref_chosen_logps)
    rewards_rejected = beta * (rejected_logps - ref_rejected_logps)
    loss = torch.relu(1 - (rewards_chosen - rewards_rejected))
    return loss, _pair_stats(rewards_chosen, rewards_rejected)


def simpo(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor | None = None,
          ref_rejected_logps: Tensor | None = None, *, beta: float = 0.1,
          chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None,
          simpo_gamma: float = 0.5, **_) -> tuple[Tensor, Stats]:
    """SimPO (Meng et al. 2024, eq. 6), reference-free: ref_* are ignored and may be None.

    avg = logps / lengths (B,), the length-normalised log-prob.
    loss (B,) = -logsigmoid(beta (avg_c - avg_r) - gamma), gamma = simpo_gamma the target reward margin (the
    paper's gamma itself, not TRL's gamma/beta ratio). The paper tunes beta near 2-2.5; the shared default 0.1
    suits the DPO family, so set beta in the config. Rewards: beta avg.
    """
    rewards_chosen = beta * _length_normalised(chosen_logps, chosen_lengths, "simpo")
    rewards_rejected = beta * _length_normalised(rejected_logps, rejected_lengths, "simpo")
    loss = -F.logsigmoid(rewards_chosen - rewards_rejected - simpo_gamma)
    return loss, _pair_stats(rewards_chosen, rewards_rejected)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012): log(-expm1(x)) near 0, else
    log1p(-exp(x)). x is clamped to <= -1e-6 first: a response the model is sure of (average log-prob 0) would
    give log(0). Both branches are finite, so torch.where passes no NaN gradient."""
    x = x.clamp(max=-1e-6)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor | None = None,
         ref_rejected_logps: Tensor | None = None, *, beta: float = 0.1,
         chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None,
         **_) -> tuple[Tensor, Stats]:
    """ORPO's odds-ratio term (Hong et al. 2024, eq. 6-7), reference-free: ref_* are ignored and may be None.

    avg = logps / lengths (B,); log odds = avg - log(1 - exp(avg)).
    loss (B,) = -beta logsigmoid(log_odds_c - log_odds_r), beta the paper's lambda (0.1 there). ORPO's SFT
    term is NOT inside: the recipe adds ``nll_term`` with nll_weight = 1, which with this term is eq. 6.
    Rewards: beta avg. Stats also hold log_odds_ratio (B,).
    """
    avg_chosen = _length_normalised(chosen_logps, chosen_lengths, "orpo")
    avg_rejected = _length_normalised(rejected_logps, rejected_lengths, "orpo")
    log_odds_ratio = (avg_chosen - _log1mexp(avg_chosen)) - (avg_rejected - _log1mexp(avg_rejected))
    loss = -beta * F.logsigmoid(log_odds_ratio)
    return loss, _pair_stats(beta * avg_chosen, beta * avg_rejected, log_odds_ratio=log_odds_ratio)


def nll_term(chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """Length-normalised NLL of the chosen response, (B,) = -chosen_logps / chosen_lengths.

    The RPO term (Pang et al. 2024) that a recipe adds to any preference loss with a weight; ORPO's SFT term
    at weight 1.
    """
    return -chosen_logps / chosen_lengths.clamp(min=1)


PREFERENCE_LOSSES: dict[str, Callable[..., tuple[Tensor, Stats]]] = {
    "sigmoid": dpo_sigmoid,
    "robust": dpo_robust,
    "ipo": ipo,
    "hinge": slic_hinge,
    "simpo": simpo,
    "orpo": orpo,
}
REFERENCE_FREE = {"simpo", "orpo"}  # these need no reference model: their ref_* arguments may be None


# ---------------------------------------------------------------------------------------------------- KTO
def kto_loss(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, kl_ref: Tensor, *,
             beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[Tensor, Stats]:
    """KTO (Ethayarajh et al. 2024, eq. 8), one value per completion.

    policy_logps, ref_logps: (B,) summed log-probs of each completion. desirable: (B,) bool, True for a good
    one. kl_ref: scalar z0 from ``kto_reference_point`` (detached, >= 0). r = policy_logps - ref_logps.
    loss (B,) = w_d (1 - sigmoid(beta (r - z0))) where desirable, else w_u (1 - sigmoid(beta (z0 - r))),
    computed as sigmoid(-x) rather than 1 - sigmoid(x) for accuracy. Nothing is averaged per side, so a batch
    of only desirable (or only undesirable) completions works. Stats: rewards (B,) = beta r, desirable,
    kl_ref.
    """
    log_ratio = policy_logps - ref_logps
    logits = beta * (log_ratio - kl_ref)
    loss = torch.where(desirable, desirable_weight * torch.sigmoid(-logits),
                       undesirable_weight * torch.sigmoid(logits))
    return loss, {"rewards": (beta * log_ratio).detach(), "desirable": desirable.detach().float(),
                  "kl_ref": kl_ref.detach()}


def kto_reference_point(mismatched_policy_logps: Tensor, mismatched_ref_logps: Tensor) -> Tensor:
    """KTO's reference point z0 = clamp(mean(policy - ref), min=0), detached; a scalar.

    Inputs (B,): summed log-probs of completions paired with the WRONG prompt (e.g. the batch shifted by one),
    the paper's biased but cheap estimate of KL(pi || pi_ref). Data-parallel callers gather the inputs across
    ranks first, so every rank uses the same z0. An empty batch gives 0, not NaN.
    """
    if mismatched_policy_logps.numel() == 0:
        return mismatched_policy_logps.new_zeros(())
    return (mismatched_policy_logps - mismatched_ref_logps).mean().clamp(min=0).detach()


# ------------------------------------------------------------------------------------- reward model losses
# A reward model scores whole sequences: rewards are (B,) for pairs, (B, K) for lists of K ranked best to
# worst. valid (B, K) bool is True on real items (lists shorter than K are padded), or None for all valid.
def bt_pairwise(chosen_rewards: Tensor, rejected_rewards: Tensor,
                margin: Tensor | None = None) -> tuple[Tensor, Stats]:
    """Bradley-Terry pairwise loss (Ouyang et al. 2022, eq. 1 with K = 2), with Llama 2's optional margin.

    chosen_rewards, rejected_rewards, margin: (B,). loss (B,) = -logsigmoid(r_c - r_r - margin).
    Stats: accuracy (1.0 where r_c > r_r, 0.5 on a tie), margin (r_c - r_r, not the input margin),
    rewards_chosen/rejected.
    """
    difference = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(difference if margin is None else difference - margin)
    return loss, _pair_stats(chosen_rewards, rejected_rewards)


def _valid_pairs(rewards: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """Zero the padded rewards, so garbage there reaches neither the loss nor its gradient, and build the
    (B, K, K) mask of the pairs i < j with both items valid (i is ranked above j)."""
    k = rewards.shape[-1]
    pairs = torch.ones(k, k, dtype=torch.bool, device=rewards.device).triu(1).expand(rewards.shape[0], k, k)
    if valid is None:
        return rewards, pairs
    valid = valid.bool()
    pairs = pairs & valid[:, :, None] & valid[:, None, :]
    return torch.where(valid, rewards, torch.zeros_like(rewards)), pairs


def _pair_accuracy(rewards: Tensor, pairs: Tensor) -> Tensor:
    """Fraction of a row's valid pairs that the rewards order correctly, (B,), a tied pair counting 0.5;
    0 for a row with no pairs."""
    correct = torch.where(pairs, _ordered(rewards[:, :, None], rewards[:, None, :]), 0.0)
    return (correct.sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)).float().detach()


def ranking_all_pairs(rewards: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Stats]:
    """InstructGPT's ranking loss (Ouyang et al. 2022, eq. 1), one ranked list per row.

    rewards: (B, K) ordered best to worst. loss (B,) = mean over the row's valid pairs i < j of
    -logsigmoid(r_i - r_j): the paper's 1 / C(K, 2), taken per row. A row with fewer than two valid items
    gives 0. K = 2 is ``bt_pairwise``. Stats: accuracy (B,), the fraction of pairs ordered correctly (a tie 0.5).
    """
    rewards, pairs = _valid_pairs(rewards, valid)
    pair_losses = -F.logsigmoid(rewards[:, :, None] - rewards[:, None, :])  # [b, i, j]: i above j
    pair_sum = torch.where(pairs, pair_losses, torch.zeros_like(pair_losses)).sum((1, 2))
    return pair_sum / pairs.sum((1, 2)).clamp(min=1), {"accuracy": _pair_accuracy(rewards, pairs)}


def ranking_plackett_luce(rewards: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Stats]:
    """Listwise Plackett-Luce NLL of the observed order (Plackett 1975; the DPO paper's Appendix A.3).

    rewards: (B, K) ordered best to worst. P(order) = prod_k exp(r_k) / sum_{j >= k} exp(r_j) over the valid
    items, so NLL = sum_k -(r_k - logsumexp(r_k..r_n)). A list of n items has n - 1 informative terms (the
    last is 0); loss (B,) is the NLL divided by n - 1, per comparison, on the scale of the pairwise loss.
    K = 2 is ``bt_pairwise``. Padding may sit anywhere: the order is that of the valid items in the row.
    A row with fewer than two valid items gives 0. Stats: accuracy (B,) as in ``ranking_all_pairs``.
    """
    rewards, pairs = _valid_pairs(rewards, valid)
    k = rewards.shape[-1]
    is_valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.bool()
    # later[b, i, j]: item j is still in the running at position i. A finite fill rather than -inf keeps the
    # logsumexp and its gradient finite at padded positions, whose terms are dropped below anyway.
    later = torch.ones(k, k, dtype=torch.bool, device=rewards.device).triu() & is_valid[:, None, :]
    fill = torch.full((), torch.finfo(rewards.dtype).min, dtype=rewards.dtype, device=rewards.device)
    competitors = torch.where(later, rewards[:, None, :].expand(-1, k, -1), fill)
    terms = torch.logsumexp(competitors, dim=-1) - rewards  # (B, K)
    nll = torch.where(is_valid, terms, torch.zeros_like(terms)).sum(-1)
    return nll / (is_valid.sum(-1) - 1).clamp(min=1), {"accuracy": _pair_accuracy(rewards, pairs)}


RANKING_LOSSES: dict[str, Callable[..., tuple[Tensor, Stats]]] = {
    "all_pairs": ranking_all_pairs,
    "plackett_luce": ranking_plackett_luce,
}


def reward_centering(rewards: Tensor, valid: Tensor | None = None) -> Tensor:
    """Auxiliary loss pulling each prompt's rewards toward zero mean (Eisenstein et al. 2023), (B,) per row.

    rewards: (B, K), e.g. torch.stack([chosen, rejected], -1); value = (mean of the row's valid rewards)^2.
    The paper and TRL's center_rewards_coefficient use (r_c + r_r)^2, 4 times this at K = 2: their coefficient
    0.01 is 0.04 here. The caller multiplies by its coefficient.
    """
    if valid is None:
        return rewards.mean(-1) ** 2
    valid = valid.bool()
    total = torch.where(valid, rewards, torch.zeros_like(rewards)).sum(-1)
    return (total / valid.sum(-1).clamp(min=1)) ** 2


# ------------------------------------------------------------------------------------- process reward model
def step_bce(logits: Tensor, labels: Tensor) -> tuple[Tensor, Stats]:
    """A process reward model's loss: binary cross-entropy of each step's correctness (Math-Shepherd, Wang et al.
    2024, L_PRM of section 3.1; Lightman et al. 2023 train the same per-step classifier on PRM800K's labels).

    logits: (S,) the head's value at each step's last token, the log-odds that the step is correct; labels: (S,)
    1.0 for a correct step, 0.0 for a wrong one (any shape works, elementwise). loss (S,) = -(y log sigmoid(z) +
    (1 - y) log sigmoid(-z)); every step counts alike (``aggregate`` over the step count gives the step mean).
    Stats: accuracy (S,), 1.0 where the prediction sigmoid(z) >= 0.5 ("correct") agrees with the label.
    """
    loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    predicted = (logits.detach() >= 0).to(labels.dtype)
    return loss, {"accuracy": (predicted == labels).float()}


# --------------------------------------------------------------------------------------------------- RRHF
def rrhf_loss(logps: Tensor, lengths: Tensor, scores: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Stats]:
    """RRHF's ranking loss (Yuan et al. 2023, eq. 2), one prompt's K responses per row.

    logps: (B, K) log pi(y_k | x) SUMMED over each response's tokens; lengths: (B, K) response token counts;
    scores: (B, K) the responses' rewards, higher is better (a ranked list best first can pass K-1 .. 0);
    valid: (B, K) bool, True on real responses (lists shorter than K are padded), or None for all valid.
    p_k = logps_k / lengths_k, the paper's length-normalised conditional log-prob.
    loss (B,) = sum over the row's valid pairs (i, j) with scores_i < scores_j of max(0, p_i - p_j): a SUM over
    pairs as in the paper, not a mean. Tied scores make no pair; a row without a pair gives 0. RRHF's SFT term on
    the best response (eq. 3) is NOT inside: the recipe adds ``nll_term`` on it with its weight.
    Stats (B,): accuracy, the fraction of the row's pairs whose p is ordered like their scores (a tie in p 0.5,
    0 for a row without a pair), and pairs, their count (weigh the rows' accuracies by it).
    """
    p = logps / lengths.clamp(min=1)
    pairs = scores[:, :, None] < scores[:, None, :]  # [b, i, j]: j is scored above i
    if valid is not None:
        valid = valid.bool()
        pairs = pairs & valid[:, :, None] & valid[:, None, :]
        p = torch.where(valid, p, torch.zeros_like(p))  # padding's garbage reaches neither the loss nor its gradient
    hinge = torch.relu(p[:, :, None] - p[:, None, :])  # [b, i, j]: how far the worse i sits above the better j
    loss = torch.where(pairs, hinge, torch.zeros_like(hinge)).sum((1, 2))
    count = pairs.sum((1, 2))
    correct = torch.where(pairs, _ordered(p[:, None, :], p[:, :, None]), 0.0).sum((1, 2))
    return loss, {"accuracy": (correct / count.clamp(min=1)).detach(), "pairs": count.float()}


# ------------------------------------------------------------------------------------ policy-gradient losses
# Shapes: logps, old_logps: (B, T) log-probs of the sampled response tokens under the current policy and the
# policy that sampled them; advantages (B, T) (per-sequence advantages broadcast over tokens); mask (B, T).
def _clip_stats(ratio: Tensor, advantages: Tensor, mask: Tensor, clip_low: float, clip_high: float,
                log_ratio: Tensor) -> Stats:
    """Per-token diagnostics (detached): where clipping bit, on which side, and how far the policy moved."""
    with torch.no_grad():
        low = ((ratio < 1 - clip_low) & (advantages < 0)).float() * mask
        high = ((ratio > 1 + clip_high) & (advantages > 0)).float() * mask
        return {"clip_low": low, "clip_high": high, "clipfrac": low + high,
                "approx_kl": (torch.exp(log_ratio) - 1 - log_ratio) * mask,  # k3 of KL(old || new)
                "ratio": ratio.detach() * mask}


def ppo_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_low: float = 0.2,
                    clip_high: float = 0.2, dual_clip: float | None = None) -> tuple[Tensor, Stats]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), per token, with decoupled clip range (DAPO's
    clip-higher: clip_high > clip_low) and optional dual clip (Ye et al. 2020: for A < 0 the loss is capped at
    -dual_clip * A, so one very off-policy token cannot dominate).

    loss_t = -min(ratio_t A_t, clip(ratio_t, 1 - clip_low, 1 + clip_high) A_t), ratio = exp(logps - old_logps).
    Returns (B, T) per-token loss (0 where mask is 0) and per-token stats.
    """
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    loss = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages)
    if dual_clip is not None:
        if dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        loss = torch.where(advantages < 0, torch.min(loss, -dual_clip * advantages), loss)
    return loss * mask, _clip_stats(ratio, advantages, mask, clip_low, clip_high, log_ratio)


def gspo_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_low: float = 3e-4,
                     clip_high: float = 4e-4, dual_clip: float | None = None) -> tuple[Tensor, Stats]:
    """GSPO (Zheng et al. 2025, eq. 5-7): a sequence-level, length-normalised importance ratio
    s_i = exp(mean_t (logps - old_logps)), clipped to [1 - clip_low, 1 + clip_high] (tiny ranges: it is a
    per-token geometric mean), applied to the sequence's advantage. Written in the "GSPO-token" form
    s_i,t = sg[s_i] * exp(logps_t - sg[logps_t]), which has the same value and gradient as GSPO when the advantage
    is per sequence and the per-token values (B, T) are aggregated with ``seq_mean_token_mean`` (each token of
    sequence i weighted 1/|y_i|, as in GSPO eq. 10); ``token_mean`` would weight long sequences more.
    """
    if dual_clip is not None:
        raise ValueError("dual_clip is defined for token-level ratios; GSPO clips the sequence ratio only")
    log_ratio = logps - old_logps
    seq_log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    ratio = torch.exp(seq_log_ratio.detach() + logps - logps.detach())
    loss = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages)
    return loss * mask, _clip_stats(ratio, advantages, mask, clip_low, clip_high, log_ratio)


def cispo_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_low: float = 1.0,
                      clip_high: float = 0.28) -> tuple[Tensor, Stats]:
    """CISPO (MiniMax-M1, MiniMax 2025, eq. 4-5): a REINFORCE objective weighted by the clipped, detached importance
    ratio, loss_t = -sg(clip(ratio_t, 1 - clip_low, 1 + clip_high)) * A_t * logps_t.

    Unlike the PPO clip, no token's gradient is ever dropped: a token whose ratio left the range keeps a gradient
    through log pi with a bounded weight. MiniMax-M1 uses no lower bound (clip_low = 1: the weight only floors at
    0). logps, old_logps, advantages, mask: (B, T); returns (B, T) per-token loss and stats (the clip fractions
    count the tokens whose weight was truncated).
    """
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio, 1 - clip_low, 1 + clip_high).detach()
    loss = -weight * advantages * logps
    with torch.no_grad():  # the weight is truncated whatever the advantage's sign (unlike the PPO clip)
        low, high = (ratio < 1 - clip_low).float() * mask, (ratio > 1 + clip_high).float() * mask
        stats = {"clip_low": low, "clip_high": high, "clipfrac": low + high,
                 "approx_kl": (ratio - 1 - log_ratio) * mask, "ratio": ratio.detach() * mask}
    return loss * mask, stats


def sapo_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, tau_pos: float = 1.0,
                     tau_neg: float = 1.05) -> tuple[Tensor, Stats]:
    """SAPO (Gao et al. 2025, "Soft Adaptive Policy Optimization", eq. 6-8): the hard clip replaced by a smooth
    gate, loss_t = -(4 / tau) * sigmoid(tau * (ratio_t - 1)) * A_t, tau = tau_pos where A_t > 0 else tau_neg.

    Its gradient is A_t * w_t * ratio_t * grad logps_t with w_t = 4 s (1 - s), s = sigmoid(tau (ratio_t - 1)):
    w = 1 on-policy (the plain policy gradient) and decays smoothly as the ratio drifts, faster for a larger tau
    (the paper damps negative advantages a little harder, tau_neg > tau_pos). Shapes as ``ppo_policy_loss``; the
    clip stats count tokens whose gate weight fell under 1/2 (below / above ratio 1).
    """
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    tau = torch.where(advantages > 0, torch.full_like(advantages, tau_pos), torch.full_like(advantages, tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1))
    loss = -(4 / tau) * gate * advantages
    with torch.no_grad():
        damped = (4 * gate * (1 - gate) < 0.5).float() * mask
        low, high = damped * (ratio < 1), damped * (ratio > 1)
        stats = {"clip_low": low, "clip_high": high, "clipfrac": low + high,
                 "approx_kl": (torch.exp(log_ratio) - 1 - log_ratio) * mask, "ratio": ratio.detach() * mask}
    return loss * mask, stats


def gmpo_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_low: float = 0.4,
                     clip_high: float = 0.4) -> tuple[Tensor, Stats]:
    """GMPO (Zhao et al. 2025, "Geometric-Mean Policy Optimization", eq. 4): the geometric mean of the token ratios
    of a sequence, each clipped in log space to [-clip_low, clip_high] on the side its advantage's sign makes
    pessimistic, times the sequence's advantage: s_i = exp(mean_t min(sgn(A) log r_t, sgn(A) clip(log r_t))) * A.

    The geometric mean is far less swayed by one outlier token than GRPO's arithmetic mean. Each response token
    carries -s_i (B, T), so aggregating with ``seq_mean_token_mean`` gives exactly -s_i per sequence and GMPO's
    gradient (the default aggregation for this loss). advantages: (B, T), constant along a sequence.
    """
    log_ratio = logps - old_logps
    sign = torch.sign(advantages)
    clipped = torch.clamp(log_ratio, -clip_low, clip_high)
    pessimistic = sign * torch.min(sign * log_ratio, sign * clipped)
    lengths = mask.sum(-1, keepdim=True).clamp(min=1)
    seq_value = torch.exp((pessimistic * mask).sum(-1, keepdim=True) / lengths) * advantages
    ratio = torch.exp(log_ratio)
    with torch.no_grad():
        low = ((log_ratio < -clip_low) & (advantages < 0)).float() * mask
        high = ((log_ratio > clip_high) & (advantages > 0)).float() * mask
        stats = {"clip_low": low, "clip_high": high, "clipfrac": low + high,
                 "approx_kl": (ratio - 1 - log_ratio) * mask, "ratio": ratio.detach() * mask}
    return -seq_value * mask, stats


# name -> loss; the tensors are the shared signature, the knobs (clip range or gate temperatures) come from
# GRPOSection.loss_knobs, which knows which knobs each loss takes
POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, Stats]]] = {
    "token": ppo_policy_loss, "sequence": gspo_policy_loss, "cispo": cispo_policy_loss, "sapo": sapo_policy_loss,
    "gmpo": gmpo_policy_loss}


def engine_correction(old_logps: Tensor, sample_logps: Tensor, mask: Tensor, mode: str = "tis",
                      level: str = "token", cap: float = 2.0) -> tuple[Tensor, Stats]:
    """Importance weights that correct for a rollout engine whose log-probs differ from the trainer's (another
    kernel, bf16 weights): the tokens were drawn from pi_rollout, the loss assumes pi_train (Yao et al. 2025,
    "Your efficient RL framework secretly brings you off-policy RL training"; Liu et al. 2025, "When speed kills
    stability", for the masked and sequence-level forms).

    rho = pi_train / pi_rollout, per token (level = token), per sequence as the product over its tokens
    (sequence) or their geometric mean (geometric). mode = tis: weight min(rho, cap) (truncated IS); mis: weight
    1 where rho lies in [1 / cap, cap], else 0 (masked IS: the token or sequence drops out of the loss, the loss
    denominators unchanged). old_logps (trainer, at rollout time), sample_logps (engine), mask: (B, T). Returns
    (B, T) detached weights to multiply the per-token loss with, and per-token stats: the rollout-vs-trainer KL
    (k3 of KL(rollout || train) on the rollout's own tokens) and the fraction truncated or masked.
    """
    if mode not in ("tis", "mis") or level not in ("token", "sequence", "geometric"):
        raise ValueError(f"engine correction: mode {mode!r} (tis | mis), level {level!r} (token | sequence | geometric)")
    with torch.no_grad():
        log_rho = (old_logps - sample_logps) * mask
        if level == "sequence":
            log_rho = log_rho.sum(-1, keepdim=True).expand_as(mask)
        elif level == "geometric":
            log_rho = (log_rho.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)).expand_as(mask)
        rho = torch.exp(log_rho.clamp(max=80.0))  # exp(80) is finite in float32 and far above any cap
        if mode == "tis":
            weight, hit = rho.clamp(max=cap), rho > cap
        else:
            inside = (rho >= 1 / cap) & (rho <= cap)
            weight, hit = inside.to(rho.dtype), ~inside
        token_log_rho = (old_logps - sample_logps) * mask
        return weight * mask, {"mismatch_kl": (torch.exp(token_log_rho) - 1 - token_log_rho) * mask,
                               "corrected": hit.to(rho.dtype) * mask}


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip: float | None = 0.2) -> tuple[Tensor, Stats]:
    """Clipped value loss (PPO2 baselines / InstructGPT), per token:
    0.5 * max((V - R)^2, (old_V + clip(V - old_V, -clip, clip) - R)^2). ``clip=None`` is the plain squared error.
    values, old_values (critic at rollout time), returns: (B, T). Returns (B, T) and stats (clipped fraction)."""
    plain = (values - returns) ** 2
    if clip is None:
        return 0.5 * plain * mask, {"value_clipfrac": torch.zeros_like(plain)}
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.max(plain, clipped) * mask, {"value_clipfrac": ((clipped > plain).float() * mask).detach()}
