"""Tensor helpers shared by every recipe: masked reductions, token log-probs, entropy. Imports only torch.

Shapes: B batch, T tokens, V vocabulary. ``mask`` is 1 (or True) where a token counts, everywhere, always.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``values`` where ``mask`` is 1 (over ``dim``, or everything)."""
    masked = values * mask
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1; an all-zero mask gives 0, not NaN."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_var(values: Tensor, mask: Tensor) -> Tensor:
    """Unbiased variance over the masked entries (Bessel-corrected, as torch.var)."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    return masked_sum((values - mean) ** 2, mask) / (count - 1).clamp(min=1)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise the masked entries to unit variance (and zero mean unless ``shift_mean`` is False)."""
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def token_logps(logits: Tensor, labels: Tensor, temperature: float = 1.0, chunk: int = 8) -> Tensor:
    """log softmax(logits / temperature)[label] for every position: (B, T, V), (B, T) -> (B, T).

    The plain form is ``torch.log_softmax(logits, -1).gather(-1, labels[..., None])``, which materialises a second
    (B, T, V) tensor. This fast path gathers the label logit and subtracts a logsumexp, ``chunk`` rows at a time,
    so the peak extra memory is one chunk's worth (tested against the plain form).
    """
    if temperature != 1.0:
        logits = logits / temperature
    out = []
    for rows, row_labels in zip(logits.split(chunk), labels.split(chunk)):
        rows = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
        picked = rows.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(rows, dim=-1))
    return torch.cat(out)


def entropy_from_logits(logits: Tensor, chunk: int = 8) -> Tensor:
    """Entropy of softmax(logits) per position: (B, T, V) -> (B, T), chunked like token_logps."""
    out = []
    for rows in logits.split(chunk):
        logp = torch.log_softmax(rows.float(), dim=-1)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out)


def forward_token_logps(model, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None,
                        temperature: float = 1.0) -> Tensor:
    """Log-prob of each next token under ``model``: (B, L) ids -> (B, L-1), entry t scores token t+1.

    ``use_cache=False`` matters beyond memory: with no cache and no attention mask, transformers reads packed
    examples' boundaries from the restarting ``position_ids``.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits
    return token_logps(logits[:, :-1], input_ids[:, 1:], temperature)


def forward_token_logps_aux(model, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None,
                            temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """``forward_token_logps`` (B, L-1) of a mixture-of-experts model, and the router load-balancing loss of the
    same forward (``aux_loss``, a scalar: Switch Transformer, Fedus et al. 2022 eq. 4, num_experts * sum_e f_e * P_e
    over the batch's real tokens, f_e the fraction of top-k choices that go to expert e, P_e the mean router
    probability; summed over MoE layers). The router logits are asked for here, per call, rather than in the model
    config: generation with a cache cannot compute this loss (transformers fails on it). The coefficient is the
    caller's to apply."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                output_router_logits=True)
    return token_logps(out.logits[:, :-1], input_ids[:, 1:], temperature), out.aux_loss


def sequence_logps_aux(model, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor,
                       loss_mask: Tensor, segments: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``sequence_logps`` (N,), (N,) of a mixture-of-experts model and the router load-balancing loss of the same
    forward (a scalar; see ``forward_token_logps_aux``)."""
    logps, aux = forward_token_logps_aux(model, input_ids, attention_mask, position_ids)
    return *sequence_sums(logps, loss_mask, segments), aux


def sequence_logps(model, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor,
                   loss_mask: Tensor, segments: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Summed log-prob of each sequence's response tokens and the number of those tokens: (R, L) -> (N,), (N,).

    Unpacked (``segments`` None) each row is a sequence (N = R). Packed rows hold several sequences, ``segments``
    (R, L) naming each token's sequence: a target token's log-prob goes to its own sequence (a response token is
    never a sequence's first, so the position predicting it lies in the same sequence)."""
    return sequence_sums(forward_token_logps(model, input_ids, attention_mask, position_ids), loss_mask, segments)


def sequence_sums(logps: Tensor, loss_mask: Tensor, segments: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Next-token log-probs (R, L-1) summed over each sequence's response tokens, and their count: (N,), (N,)."""
    mask = loss_mask[:, 1:]
    if segments is None:
        return masked_sum(logps, mask, dim=-1), mask.sum(-1)
    return segment_sum(logps * mask, segments[:, 1:]), segment_sum(mask.to(logps.dtype), segments[:, 1:])


def segment_sum(values: Tensor, segments: Tensor) -> Tensor:
    """Sum of ``values`` per segment: (R, L), (R, L) with ids 0..N-1 (-1 = none) -> (N,)."""
    n = int(segments.max().item()) + 1
    keep = segments >= 0
    return values.new_zeros(n).index_add(0, segments[keep], values[keep])


def segment_last(values: Tensor, segments: Tensor) -> Tensor:
    """values at each segment's last token: (R, L), (R, L) -> (N,). Where a packed reward model's score is read."""
    flat_values, flat_segments = values.reshape(-1), segments.reshape(-1)
    n = int(flat_segments.max().item()) + 1
    where = torch.arange(flat_segments.numel(), device=values.device)
    keep = flat_segments >= 0
    last = torch.full((n,), -1, dtype=torch.long, device=values.device).scatter_reduce(
        0, flat_segments[keep], where[keep], reduce="amax")
    return flat_values[last]


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of each row's last real token, under right or left padding: (N, L) -> (N,)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask * positions).argmax(-1)


def gather_last(values: Tensor, attention_mask: Tensor) -> Tensor:
    """values[i, last real token of row i]: (N, L) -> (N,). Where a reward model's score is read."""
    return values.gather(-1, last_token_index(attention_mask).unsqueeze(-1)).squeeze(-1)


def kl_estimate(logps: Tensor, ref_logps: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL Divergence", 2020).

    log_ratio = logps - ref_logps. k1 = log_ratio (unbiased, can be negative), k2 = log_ratio^2 / 2,
    k3 = exp(-log_ratio) - 1 + log_ratio (unbiased, always >= 0; what GRPO uses as a loss). (B, T) -> (B, T).
    """
    log_ratio = logps - ref_logps
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected k1, k2 or k3")


def response_logps(model, batch, temperature: float = 1.0, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probs (B, R) of a RolloutBatch's response tokens under ``model``, with logits divided by the sampling
    temperature (the distribution the tokens were actually drawn from); optionally the entropy (B, R).

    Only the R positions that predict response tokens go through the output layer (``logits_to_keep = R + 1``,
    the last position dropped): the prompt and its padding never reach the (hidden x vocabulary) head. The plain
    form, ``model(...).logits[:, P - 1 : -1]``, is what a model without ``logits_to_keep`` gets; the test suite
    holds the two equal."""
    width = batch.response_mask.shape[1]
    kwargs = {"logits_to_keep": width + 1} if accepts_logits_to_keep(model) else {}
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                   use_cache=False, **kwargs).logits
    logits = logits[:, -(width + 1) : -1]
    if temperature != 1.0:
        logits = logits / temperature
    logps = token_logps(logits, batch.response_ids)
    return logps, (entropy_from_logits(logits) if with_entropy else None)


def accepts_logits_to_keep(model) -> bool:
    """Whether the causal LM under the wrappers (DDP / accelerate, peft) takes ``logits_to_keep`` (transformers'
    causal LMs do; a custom model may not)."""
    import inspect

    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return "logits_to_keep" in inspect.signature(type(inner).forward).parameters


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(returns - values) / Var(returns) over masked tokens: 1 perfect critic, 0 no better than a constant,
    negative worse than one."""
    var_returns = masked_var(returns, mask)
    return 1 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)
