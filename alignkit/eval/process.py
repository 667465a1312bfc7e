"""What a process reward model's step scores say: first-error detection (``alignkit prm``'s eval) and best-of-N
reranking (``alignkit eval`` with ``eval.rerank_by``). Pure functions of scores and labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def first_errors(wrong: Tensor, solution: Tensor, n_solutions: int) -> Tensor:
    """(n_solutions,) the index (within its solution) of each solution's first step marked ``wrong``, -1 where no
    step is. wrong: (S,) bool, the steps of every solution in order; solution: (S,) which solution each belongs to."""
    first = torch.full((n_solutions,), -1, dtype=torch.long)
    seen = torch.zeros(n_solutions, dtype=torch.long)
    for s, i in zip(wrong.tolist(), solution.tolist()):  # a few hundred steps at eval time: a plain loop is clear
        if s and first[i] < 0:
            first[i] = seen[i]
        seen[i] += 1
    return first


def first_error_metrics(predicted_correct: Tensor, labels: Tensor, solution: Tensor) -> dict[str, float]:
    """First-error detection (the step-level task of Lightman et al. 2023 and ProcessBench): on a solution with an
    error, does the first step predicted wrong equal the first step labelled wrong; on a fully correct one, is no
    step flagged. predicted_correct, labels: (S,) bool; solution: (S,) long, the solution of each step.

    Returns first_error/flawed (the share of flawed solutions whose first error is found exactly), first_error/
    correct (the share of fully correct ones left unflagged), first_error/accuracy (over every solution); NaN for
    a side with no solution."""
    n = int(solution.max().item()) + 1 if solution.numel() else 0
    predicted = first_errors(~predicted_correct.bool(), solution, n)
    truth = first_errors(~labels.bool(), solution, n)
    hit = (predicted == truth).float()
    flawed = truth >= 0
    return {"first_error/flawed": hit[flawed].mean().item() if flawed.any() else float("nan"),
            "first_error/correct": hit[~flawed].mean().item() if (~flawed).any() else float("nan"),
            "first_error/accuracy": hit.mean().item() if n else float("nan")}


def best_of_n(rerank: Sequence[float], judge: Sequence[float], samples: int) -> tuple[list[int], list[float]]:
    """Best-of-N: per prompt, the answer the reranker scores highest (the first on a tie) and the judge's score of
    it. rerank, judge: one score per answer, prompts in order with their ``samples`` answers together.
    Returns (the chosen answer's index among its prompt's samples, the judge's score of it), one per prompt."""
    if len(rerank) != len(judge) or len(rerank) % samples:
        raise ValueError(f"best_of_n: {len(rerank)} rerank and {len(judge)} judge scores for groups of {samples}")
    picks, scores = [], []
    for start in range(0, len(rerank), samples):
        group = list(rerank[start : start + samples])
        pick = group.index(max(group))
        picks.append(pick)
        scores.append(judge[start + pick])
    return picks, scores

