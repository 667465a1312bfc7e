"""One policy evaluator: answers to held-out prompts from an engine, scored by reward sources. The RL recipes'
periodic eval, ``alignkit eval`` (several policies side by side) and the tests all read their figures from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean
from typing import Any

import torch

from ..rewards import RewardSet, fields_of
from ..sampling import SamplingParams


@torch.no_grad()
def evaluate_policy(engine, model, examples: Sequence, prompt_ids: Sequence[Sequence[int]], rewards: RewardSet,
                    params: SamplingParams, extra: RewardSet | None = None, split_field: str | None = None,
                    seeds: Sequence[int] | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Generate once per prompt and score; returns (metrics, one row per prompt).

    metrics: ``total`` (the weighted sum of ``rewards``), each source's mean by its label (``extra``'s sources
    too, never in the total: e.g. a held-out judge), ``eos_rate`` (responses that ended with a stop token),
    ``response_tokens`` (mean length), and with ``split_field`` (a boolean field such as ``held_out``) each
    source's mean on either side of it: ``<label>[<field>=true|false]``.
    """
    if not examples:
        return {}, []
    gens, total, parts = answer(engine, model, examples, prompt_ids, rewards, params, extra, seeds)
    prompts, texts = [e.prompt for e in examples], [g.text for g in gens]
    metrics = {"total": total.mean().item(), **{k: v.mean().item() for k, v in parts.items()},
               "eos_rate": fmean(float(g.finished) for g in gens),
               "response_tokens": fmean(len(g.response_ids) for g in gens)}
    if split_field:
        sides = torch.tensor([bool(e.fields.get(split_field)) for e in examples])
        for label, values in parts.items():
            for flag in (True, False):
                if (sides == flag).any():
                    metrics[f"{label}[{split_field}={str(flag).lower()}]"] = values[sides == flag].mean().item()
    rows = [{"prompt": p[-1].content, "response": t, "total": total[i].item(), **{k: v[i].item() for k, v in parts.items()}}
            for i, (p, t) in enumerate(zip(prompts, texts))]
    return metrics, rows


@torch.no_grad()
def answer(engine, model, examples: Sequence, prompt_ids: Sequence[Sequence[int]], rewards: RewardSet,
           params: SamplingParams, extra: RewardSet | None = None, seeds: Sequence[int] | None = None
           ) -> tuple[list, torch.Tensor, dict[str, torch.Tensor]]:
    """One answer per prompt from the engine, scored: (generations, (N,) weighted total of ``rewards``, source
    label -> (N,) scores, ``extra``'s sources included but never in the total)."""
    gens = engine.generate(model, prompt_ids, params, seeds)
    prompts, texts, fields = [e.prompt for e in examples], [g.text for g in gens], fields_of(examples)
    total, parts = rewards(prompts, texts, fields)
    if extra is not None:
        parts.update(extra(prompts, texts, fields)[1])
    return gens, total, parts


EVAL_SEED_STEP = 10**9  # eval answers draw from their own seed stream, the same at every eval of a run


def eval_metrics(engine, model, examples: Sequence, prompt_ids: Sequence[Sequence[int]], rewards: RewardSet,
                 max_new_tokens: int, extra: RewardSet | None = None, temperature: float = 0.0, samples: int = 1,
                 seed: int = 0) -> dict[str, float]:
    """The RL recipes' periodic eval, as logged: ``reward_eval/<total | label>``, ``length/eval``,
    ``eos_rate/eval``. Greedy answers by default; with ``temperature`` > 0, ``samples`` seeded answers per prompt
    (the same seeds at every eval, so two evals differ by the model only) and their mean figures. Every process
    computes the same figures (the eval set is small next to training)."""
    from ..rollout.core import rollout_seeds

    runs = []
    for k in range(samples if temperature > 0 else 1):
        seeds = rollout_seeds(seed, EVAL_SEED_STEP + k, 0, len(examples)) if temperature > 0 else None
        metrics, _ = evaluate_policy(engine, model, examples, prompt_ids, rewards,
                                     SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature), extra,
                                     seeds=seeds)
        runs.append(metrics)
    if not runs[0]:
        return {}
    metrics = {key: fmean(m[key] for m in runs) for key in runs[0]}
    length, eos = metrics.pop("response_tokens"), metrics.pop("eos_rate")
    return {**{f"reward_eval/{k}": v for k, v in metrics.items()}, "length/eval": length, "eos_rate/eval": eos}
