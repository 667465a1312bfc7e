"""Every loss is a pure function of tensors returning per-token (B, T) or per-sequence (B,) values plus a dict of
detached statistics. Only ``aggregate`` reduces, with a denominator counted over the whole optimizer step, so
gradient accumulation and data-parallel splits do not change the result.

Shapes: B batch, T response tokens. ``mask`` is 1 where a token counts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Stats = dict[str, Tensor]


# --------------------------------------------------------------------------------------------- reduction
def aggregate(values: Tensor, mask: Tensor, denominator: float | Tensor, mode: str = "token_mean") -> Tensor:
    """The one reducer: this micro-batch's share of the optimizer step's loss.

    values, mask: (B, T) per-token, or (B,) per-sequence with mask (B,) of ones.
    denominator: ``step_denominator(...)`` computed over every micro-batch (and rank) of the optimizer step.
    Summing ``aggregate`` over the micro-batches of a step gives the step's mean loss exactly.
    """
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
        return sum(m.sum() for m in masks).clamp(min=1).float()
    sequences = torch.tensor(float(sum(m.shape[0] for m in masks)))
    return sequences * constant_length if mode == "seq_mean_token_sum" else sequences


# ---------------------------------------------------------------------------------------------------- SFT
def sft_loss(logps: Tensor, mask: Tensor) -> tuple[Tensor, Stats]:
    """Negative log-likelihood of the target tokens (maximum likelihood; the SFT objective).

    logps: (B, T) log pi_theta(y_t | x, y_<t) of the target tokens. mask: (B, T), 1 on response tokens.
    Returns per-token loss (B, T) = -logps (zero where mask is 0) and stats.
    """
    loss = -logps * mask
    return loss, {"nll_sum": loss.detach().sum(), "tokens": mask.detach().sum()}
