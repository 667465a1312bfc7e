"""Evaluation of a policy: generate for held-out prompts, score with reward functions (the demo's gold judge, a
reward model, any Python function), and report means, EOS rate and length.

Reward functions have the signature ``fn(prompts: list[str], completions: list[str], **fields) -> list[float]``,
where ``prompts`` are the last user turns and ``fields`` the dataset's extra columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import fmean
from typing import Any

from .data.formats import PromptExample
from .data.templates import tokenize_prompt
from .sampling import SamplingParams, generate

RewardFn = Callable[..., list[float]]


def call_reward(name: str, fn: RewardFn, prompts: list[str], completions: list[str],
                fields: dict[str, list[Any]]) -> list[float]:
    """Call a reward function and check what it returns (length, type, finiteness), naming it on error."""
    import math

    scores = fn(prompts, completions, **fields)
    if not isinstance(scores, (list, tuple)) or len(scores) != len(completions):
        got = f"{type(scores).__name__} of length {len(scores)}" if hasattr(scores, "__len__") else type(scores).__name__
        raise ValueError(f"reward function {name} must return a list of {len(completions)} floats, got {got}")
    out = []
    for i, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"reward function {name} returned {score!r} for completion {i}; expected a finite float")
        out.append(float(score))
    return out


def evaluate_policy(model, tokenizer, examples: Sequence[PromptExample], scorers: dict[str, RewardFn],
                    params: SamplingParams, batch_size: int = 64, split_field: str | None = None
                    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Generate once per prompt and score; returns (metrics, one row per prompt).

    metrics: ``<scorer>`` means, ``eos_rate`` (responses that ended with EOS), ``response_tokens`` (mean length),
    and with ``split_field`` (a boolean field such as ``held_out``) each scorer's mean on either side of it.
    """
    gens = generate(model, tokenizer, [tokenize_prompt(tokenizer, e.prompt) for e in examples], params, batch_size)
    prompts = [e.prompt[-1].content for e in examples]
    completions = [g.text for g in gens]
    keys = sorted({k for e in examples for k in e.fields})
    fields = {k: [e.fields.get(k) for e in examples] for k in keys}
    scores = {name: call_reward(name, fn, prompts, completions, fields) for name, fn in scorers.items()}
    metrics = {name: fmean(values) for name, values in scores.items()}
    metrics["eos_rate"] = fmean(float(g.finished) for g in gens)
    metrics["response_tokens"] = fmean(len(g.response_ids) for g in gens)
    if split_field:
        for name, values in scores.items():
            for flag in (True, False):
                part = [v for v, e in zip(values, examples) if bool(e.fields.get(split_field)) is flag]
                if part:
                    metrics[f"{name}[{split_field}={str(flag).lower()}]"] = fmean(part)
    rows = [{"prompt": p, "response": c, **{n: s[i] for n, s in scores.items()}}
            for i, (p, c) in enumerate(zip(prompts, completions))]
    return metrics, rows
