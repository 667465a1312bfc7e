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
from .env import Play
from .episodes import run_episodes


@torch.no_grad()
def evaluate_policy(engine, model, examples: Sequence, prompt_ids: Sequence[Sequence[int]], rewards: RewardSet,
                    params: SamplingParams, extra: RewardSet | None = None, split_field: str | None = None,
                    seeds: Sequence[int] | None = None, play: Play | None = None
                    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Play one episode per prompt (``play``; default single-turn: one answer) and score; returns (metrics, one
    row per prompt). Multi-turn episodes add ``tools/call_rate``, ``tools/error_rate`` and ``episode/turns``, and
    each row its ``transcript``.

    metrics: ``total`` (the weighted sum of ``rewards``), each source's mean by its label (``extra``'s sources
    too, never in the total: e.g. a held-out judge), ``eos_rate`` (responses that ended with a stop token),
    ``response_tokens`` (mean length), and with ``split_field`` (a boolean field such as ``held_out``) each
    source's mean on either side of it: ``<label>[<field>=true|false]``.
    """
    if not examples:
        return {}, []
    episodes, total, parts = answer(engine, model, examples, prompt_ids, rewards, params, extra, seeds, play)
    gens = [e.generation for e in episodes]
    prompts, texts = [e.prompt for e in examples], [e.text for e in episodes]
    metrics = {"total": total.mean().item(), **{k: v.mean().item() for k, v in parts.items()},
               "eos_rate": fmean(float(g.finished) for g in gens),
               "response_tokens": fmean(sum(g.mask) if g.mask else len(g.response_ids) for g in gens)}
    if play is not None and play.multi_turn:
        calls = [e.state.get("tool_calls", 0) for e in episodes]
        metrics.update({"episode/turns": fmean(e.turns for e in episodes),
                        "tools/call_rate": fmean(float(c > 0) for c in calls),
                        "tools/error_rate": sum(e.state.get("tool_errors", 0) for e in episodes) / max(sum(calls), 1)})
    if split_field:
        sides = torch.tensor([bool(e.fields.get(split_field)) for e in examples])
        for label, values in parts.items():
            for flag in (True, False):
                if (sides == flag).any():
                    metrics[f"{label}[{split_field}={str(flag).lower()}]"] = values[sides == flag].mean().item()
    rows = [{"prompt": p[-1].content, "response": t, "total": total[i].item(), **{k: v[i].item() for k, v in parts.items()}}
            for i, (p, t) in enumerate(zip(prompts, texts))]
    if play is not None and play.multi_turn:
        for row, g in zip(rows, gens):
            row["transcript"] = engine.tokenizer.decode(g.response_ids)
    return metrics, rows


@torch.no_grad()
def answer(engine, model, examples: Sequence, prompt_ids: Sequence[Sequence[int]], rewards: RewardSet,
           params: SamplingParams, extra: RewardSet | None = None, seeds: Sequence[int] | None = None,
           play: Play | None = None) -> tuple[list, torch.Tensor, dict[str, torch.Tensor]]:
    """One episode per prompt (one answer, single-turn), scored: (episodes, (N,) weighted total of ``rewards``
    and the environment's reward, source label -> (N,) scores, ``extra``'s sources included but never in the
    total)."""
    from .core import score_episodes

    play = play or Play()
    episodes = run_episodes(engine, model, play, examples, prompt_ids, params, seeds)
    scored = score_episodes(rewards, play.env, examples, episodes)
    total, parts = scored.total, scored.parts
    if extra is not None:
        parts.update(extra([e.prompt for e in examples], [e.text for e in episodes], fields_of(examples))[1])
    return episodes, total, parts


EVAL_SEED_STEP = 10**9  # eval answers draw from their own seed stream, the same at every eval of a run


def eval_metrics(engine, model, examples: Sequence, prompt_ids: Sequence[Sequence[int]], rewards: RewardSet,
                 max_new_tokens: int, extra: RewardSet | None = None, temperature: float = 0.0, samples: int = 1,
                 seed: int = 0, play: Play | None = None) -> dict[str, float]:
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
                                     seeds=seeds, play=play)
        runs.append(metrics)
    if not runs[0]:
        return {}
    metrics = {key: fmean(m[key] for m in runs) for key in runs[0]}
    length, eos = metrics.pop("response_tokens"), metrics.pop("eos_rate")
    episodes = {k.replace("/", "_eval/", 1): metrics.pop(k)  # tools_eval/call_rate, episode_eval/turns
                for k in [k for k in metrics if k.startswith(("tools/", "episode/"))]}
    return {**{f"reward_eval/{k}": v for k, v in metrics.items()}, "length/eval": length, "eos_rate/eval": eos,
            **episodes}
