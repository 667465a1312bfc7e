"""Advantage estimators, pure functions of tensors.

Notation: B sequences (in the group-relative estimators B = number of prompts x G, grouped contiguously: rows
0..G-1 answer prompt 0, rows G..2G-1 prompt 1, ...), G group size, T response tokens. ``mask`` is 1 on real
response tokens.

Group-relative estimators share one signature, ``fn(scores (B,), group_size, eps, keep) -> advantages (B,)``, one
advantage per sequence that the policy loss broadcasts over its tokens; ``ADVANTAGES[name]`` picks one. ``keep``
(B,) bool marks the rows that will get a gradient (None: all); only batch-level statistics use it (REINFORCE++'s
std), since a dropped row is not part of the batch being normalised. Callers pass the whole batch (every process's
rows, gathered), so batch statistics are global.
GAE (PPO) is per token and takes the critic's values; so is ``process_advantages`` (GRPO with process supervision),
which takes a process reward model's step scores at the tokens where the steps end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _groups(scores: Tensor, group_size: int) -> Tensor:
    if scores.dim() != 1 or scores.shape[0] % group_size:
        raise ValueError(f"scores must be (B,) with B a multiple of the group size {group_size}, got {tuple(scores.shape)}")
    return scores.view(-1, group_size)


def grpo(scores: Tensor, group_size: int, eps: float = 1e-6, keep: Tensor | None = None) -> Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath eq. 3 with outcome supervision): (r - mean_group) / (std_group + eps).

    std is the unbiased sample std (torch.std), as in the reference implementations; a group whose rewards are
    all equal gets advantage 0 everywhere.
    """
    grouped = _groups(scores, group_size)
    mean = grouped.mean(-1, keepdim=True)
    std = grouped.std(-1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return ((grouped - mean) / (std + eps)).flatten()


def dr_grpo(scores: Tensor, group_size: int, eps: float = 1e-6, keep: Tensor | None = None) -> Tensor:
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): r - mean_group, no std division, which
    removes GRPO's bias towards low-variance (too easy / too hard) questions."""
    grouped = _groups(scores, group_size)
    return (grouped - grouped.mean(-1, keepdim=True)).flatten()


def rloo(scores: Tensor, group_size: int, eps: float = 1e-6, keep: Tensor | None = None) -> Tensor:
    """RLOO (Ahmadian et al. 2024, eq. 5): r_i - mean of the other G-1 rewards of the group
    = G / (G-1) * (r_i - mean_group)."""
    if group_size < 2:
        raise ValueError("RLOO needs a group size of at least 2 (a leave-one-out baseline)")
    grouped = _groups(scores, group_size)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).flatten()


def reinforce_pp(scores: Tensor, group_size: int, eps: float = 1e-6, keep: Tensor | None = None) -> Tensor:
    """REINFORCE++-baseline (Hu et al. 2025): subtract the group mean, then divide by the std over the whole batch
    (a global, not per-group, normalisation, which is more stable than GRPO's per-group std). The std is the
    unbiased one over the kept rows (``keep``), the rows that are actually trained on."""
    centred = dr_grpo(scores, group_size)
    kept = centred if keep is None else centred[keep.bool()]
    return centred / (kept.std() + eps) if kept.numel() > 1 else centred


ADVANTAGES: dict[str, Callable[[Tensor, int, float, Tensor | None], Tensor]] = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "reinforce_pp": reinforce_pp,
}


def zero_spread_groups(scores: Tensor, group_size: int, tol: float = 1e-8) -> Tensor:
    """(B / G,) bool: groups whose rewards are all equal; they carry no learning signal (DAPO's dynamic sampling
    drops them)."""
    grouped = _groups(scores, group_size)
    return (grouped.max(-1).values - grouped.min(-1).values) <= tol


def process_advantages(step_rewards: Tensor, step_ends: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GRPO with process supervision (Shao et al. 2024, DeepSeekMath section 4.1.3): per-token advantages (B, T).

    step_rewards: (B, T) each step's reward at the token where the step ends, 0 elsewhere; step_ends: (B, T) bool,
    True at those tokens. Every step reward of a group (all the steps of its G responses) is normalised by the
    group's mean and unbiased std over those steps, r~ = (r - mean) / (std + eps), and a token's advantage is the sum
    of the normalised rewards of the steps ending at or after it: A_t = sum over steps j with end(j) >= t of r~_j.
    Tokens after a response's last step end get 0; a group with fewer than two steps has std 0, so r - mean (= 0
    for one step) over eps. Rows are grouped contiguously (rows 0..G-1 answer prompt 0, ...).
    """
    batch, width = step_rewards.shape
    if batch % group_size:
        raise ValueError(f"step_rewards must have a multiple of the group size {group_size} rows, got {batch}")
    ends = step_ends.to(step_rewards.dtype).reshape(-1, group_size * width)  # one row per group
    rewards = step_rewards.reshape(-1, group_size * width) * ends
    count = ends.sum(-1, keepdim=True)
    mean = rewards.sum(-1, keepdim=True) / count.clamp(min=1)
    var = (((rewards - mean) * ends) ** 2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)
    std = torch.where(count > 1, var.sqrt(), torch.zeros_like(var))
    normalised = ((rewards - mean) / (std + eps) * ends).reshape(batch, width)
    return normalised.flip(-1).cumsum(-1).flip(-1)  # A_t = sum of the normalised rewards at or after t


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over the policy's tokens.

    rewards, values, mask: (B, T). values[t] is V(s_t), the critic's estimate before token t is produced. The value
    after the last real token is 0 (the episode ends there), and positions with mask 0 get advantage 0.
    delta_t = r_t + gamma V(s_{t'}) - V(s_t);  A_t = delta_t + gamma lambda A_{t'};  returns = A + V, where t' is
    the next position with mask 1: in a multi-turn episode the environment's tokens between two turns (mask 0) are
    not actions, so the recursion steps over them (rewards on them are ignored).
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(running)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        counted = mask[:, t] > 0
        running = torch.where(counted, delta + gamma * lam * running, running)
        next_value = torch.where(counted, values[:, t], next_value)
        advantages[:, t] = running * mask[:, t]
    return advantages, (advantages + values) * mask


def kl_shaped_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float | Tensor) -> Tensor:
    """Per-token RLHF reward (Ziegler et al. 2019; InstructGPT eq. 2): -kl_coef * KL_t on every response token,
    plus the sequence score on its last real token. scores (B,), kl (B, T) per-token estimates, mask (B, T) -> (B, T).
    """
    rewards = -kl_coef * kl * mask
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)
    return rewards.index_put((torch.arange(mask.shape[0], device=mask.device), last),
                             rewards[torch.arange(mask.shape[0]), last] + scores * (mask.sum(-1) > 0))


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """The proportional controller of Ziegler et al. 2019 (section 2.2): e = clip(KL / target - 1, -0.2, 0.2),
    coef <- coef * (1 + e * n_steps / horizon). ``kl`` is the observed per-sequence KL, ``n_steps`` the number of
    sequences since the last update (the paper's batch size)."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_steps / horizon)


class RunningMoments:
    """Running mean / std of a stream of scores (Chan et al.'s parallel update), to normalise rewards when no
    stored statistics exist. Its state is a plain dict, saved in checkpoints."""

    def __init__(self, state: dict[str, float] | None = None) -> None:
        state = state or {"count": 0.0, "mean": 0.0, "m2": 0.0}
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]

    def update(self, values: Tensor) -> None:
        n = float(values.numel())
        if n == 0:
            return
        batch_mean = values.float().mean().item()
        batch_m2 = ((values.float() - batch_mean) ** 2).sum().item()
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / (self.count - 1)) ** 0.5 if self.count > 1 else 1.0

    def normalise(self, values: Tensor) -> Tensor:
        return (values - self.mean) / max(self.std, 1e-6)

    def state(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}
