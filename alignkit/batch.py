"""Frozen batch dataclasses, one per recipe input; every field has its shape.

B batch rows, L padded sequence length. Masks are 1 where a token counts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass(frozen=True)
class SFTBatch:
    input_ids: Tensor  # (B, L) token ids, right-padded (or packed rows)
    attention_mask: Tensor | None  # (B, L) 1 on real tokens; None for packed rows (positions delimit examples)
    position_ids: Tensor  # (B, L) 0.. per example; restarts at each packed example
    loss_mask: Tensor  # (B, L) 1 where the token at that position is a trained target

    def to(self, device: torch.device | str) -> SFTBatch:
        return type(self)(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})


def _move(value, device):
    return value.to(device) if isinstance(value, Tensor) else value


@dataclass(frozen=True)
class SequenceBatch:
    """Whole sequences scored by their summed response log-probs (DPO: chosen rows then rejected rows; KTO)."""

    input_ids: Tensor  # (R, L) prompt + response ids: one sequence per row (R = N), right-padded, or packed
    attention_mask: Tensor | None  # (R, L) 1 on real tokens; None when packed (positions delimit sequences)
    position_ids: Tensor  # (R, L) restarting at each sequence
    loss_mask: Tensor  # (R, L) 1 on response tokens
    index: Tensor  # (B,) dataset row of each example (keys the cached reference log-probs)
    segments: Tensor | None = None  # (R, L) which sequence (0..N-1) each token belongs to, -1 on padding; None = row i is sequence i

    def to(self, device: torch.device | str) -> SequenceBatch:
        return type(self)(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})


@dataclass(frozen=True)
class RankingBatch:
    """Ranked lists flattened to one row per response, so each response is scored once (pairs are K = 2 lists)."""

    input_ids: Tensor  # (R, L) prompt + response, right-padded (R = N, the responses over the B lists) or packed
    attention_mask: Tensor | None  # (R, L); None when packed
    position_ids: Tensor  # (R, L)
    list_index: Tensor  # (N,) which list (0..B-1) the response belongs to
    rank: Tensor  # (N,) position in its list, 0 = best
    margin: Tensor  # (B,) the record's preference margin (pairs), NaN where absent
    index: Tensor  # (B,) dataset row of each list
    segments: Tensor | None = None  # (R, L) which response (0..N-1) each token belongs to, -1 on padding; None = one per row

    def to(self, device: torch.device | str) -> RankingBatch:
        return type(self)(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})

    def scatter(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """(N,) per-response scores -> (B, K) best-first matrix and its (B, K) validity mask."""
        lists, width = self.index.shape[0], int(self.rank.max().item()) + 1
        out = scores.new_zeros(lists, width)
        valid = torch.zeros(lists, width, dtype=torch.bool, device=scores.device)
        out = out.index_put((self.list_index, self.rank), scores)
        valid[self.list_index, self.rank] = True
        return out, valid


@dataclass(frozen=True)
class RolloutBatch:
    """Sampled responses laid out as [left-padded prompt | right-padded response], ready for scoring passes.

    P = prompt width (longest prompt), R = response width (longest response). Response token t of row i is
    input_ids[i, P + t], predicted from the logits at position P + t - 1.
    """

    input_ids: Tensor  # (B, P + R)
    attention_mask: Tensor  # (B, P + R) 1 on real prompt and response tokens
    position_ids: Tensor  # (B, P + R) 0.. from each row's first real token (left padding aware)
    response_mask: Tensor  # (B, R) 1 on the policy's response tokens, the EOS included; 0 on padding and on an
    #                         environment's tokens between the turns of a multi-turn episode (context, not trained)
    finished: Tensor  # (B,) bool, the response ended with EOS (False: cut at the length limit)
    prompt_width: int  # P

    @property
    def response_ids(self) -> Tensor:  # (B, R)
        return self.input_ids[:, self.prompt_width :]

    def to(self, device: torch.device | str) -> RolloutBatch:
        return type(self)(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})

    def select(self, rows: Tensor | list[int]) -> RolloutBatch:
        """A mini-batch of rows (same P and R, so per-token tensors of the whole batch index the same way)."""
        rows = torch.as_tensor(rows, device=self.input_ids.device)
        return type(self)(self.input_ids[rows], self.attention_mask[rows], self.position_ids[rows],
                          self.response_mask[rows], self.finished[rows], self.prompt_width)


@dataclass(frozen=True)
class StepBatch:
    """Solutions scored step by step (a process reward model): the head is read at each step's last token.

    S = the batch's steps, every solution's in order (solution 0's steps first); ``values[step_mask.bool()]`` lists
    them in that order, padded or packed alike, since rows keep their examples in order.
    """

    input_ids: Tensor  # (R, L) prompt + steps, each step ending with the separator; right-padded (R = B) or packed
    attention_mask: Tensor | None  # (R, L) 1 on real tokens; None when packed (positions delimit solutions)
    position_ids: Tensor  # (R, L) restarting at each solution
    step_mask: Tensor  # (R, L) 1 at each step's last token (its separator), where the head is read; 0 elsewhere
    labels: Tensor  # (S,) 1.0 where the step is correct, 0.0 where it is wrong
    solution: Tensor  # (S,) which solution (0..B-1) each step belongs to
    index: Tensor  # (B,) dataset row of each solution

    def to(self, device: torch.device | str) -> StepBatch:
        return type(self)(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})
