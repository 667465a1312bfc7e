"""What PPO and GRPO share around their loops: prompt tokenization with the over-length policy, per-row rollout
seeds, the rollout gathered across processes, no-grad scoring passes, and the greedy evaluation.

Multi-process rule of both recipes: ``train.batch_size`` prompts per step over all processes; each process samples
and scores its slice, then the slices are gathered so that every statistic over the batch (advantage baselines,
whitening, reward normalisation, the KL controller, logged metrics) is computed over the whole batch, identically
on every process. Rollouts are seeded per global row, so the tokens do not depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean

import torch

from ..config import DataConfig
from ..data.templates import tokenize_prompt
from ..ops import response_logps
from ..rewards import RewardSet, fields_of
from ..sampling import Generation, SamplingParams, generate
from .runtime import generation_model


def sampling_params(cfg) -> SamplingParams:
    s = cfg.sampling
    return SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)


@dataclass(frozen=True)
class PromptReport:
    kept: int  # prompts kept
    truncated: int  # longer than data.max_length, cut to their last max_length tokens
    dropped: int  # longer than data.max_length with data.overlong = drop

    def describe(self, name: str) -> str:
        return f"{name}: {self.kept} prompts kept, {self.truncated} truncated (from the left), {self.dropped} dropped as over-length"


def tokenize_prompts(examples: Sequence, tokenizer, data: DataConfig, name: str) -> tuple[list, list[list[int]], PromptReport]:
    """Prompt token ids under ``data.overlong``: truncate keeps the LAST max_length tokens (the question a prompt
    ends with, and the generation prompt, matter most), drop leaves the prompt out. Returns (kept examples, ids,
    report); an empty result is an error."""
    from ..data.formats import DataError

    kept, ids, truncated, dropped = [], [], 0, 0
    drop = data.overlong == "drop"
    for example in examples:
        tokens = tokenize_prompt(tokenizer, example.prompt)
        if len(tokens) > data.max_length:
            if drop:
                dropped += 1
                continue
            truncated += 1
            tokens = tokens[-data.max_length :]
        kept.append(example)
        ids.append(tokens)
    report = PromptReport(len(kept), truncated, dropped)
    if examples and not kept:
        raise DataError(f"{name}: every prompt is longer than data.max_length = {data.max_length} and "
                        "data.overlong = drop; raise data.max_length")
    return kept, ids, report


def rollout_seeds(seed: int, step: int, first_row: int, n_rows: int) -> list[int]:
    """One sampling seed per rollout row, a function of (train.seed, step, the row's place in the global batch)."""
    base = (seed * 1_000_003 + step) * 1_000_033
    return [(base + row) % 2**62 for row in range(first_row, first_row + n_rows)]


def gather_rows(acc, values: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's (b, ...) rows in rank order (the global batch); identity on one process."""
    return acc.gather(values) if acc.num_processes > 1 else values


def gather_list(acc, items: list) -> list:
    """Concatenate every process's list of Python objects in rank order."""
    if acc.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def chunks_of(rows: Sequence[int], size: int) -> list[list[int]]:
    rows = list(rows)
    return [rows[s : s + size] for s in range(0, len(rows), size)]


@torch.no_grad()
def no_grad_logps(model, batch, rows: list[list[int]], temperature: float) -> torch.Tensor:
    """(len(rows), R) response log-probs of the listed rows, micro-batch by micro-batch, without gradients."""
    return torch.cat([response_logps(model, batch.select(chunk), temperature)[0].float() for chunk in rows])


def sample(acc, model, tokenizer, prompt_ids: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[Generation]:
    """This process's rollouts (weights gathered first under FSDP / ZeRO-3)."""
    with generation_model(acc, model) as module:
        return generate(module, tokenizer, prompt_ids, params, batch_size=len(prompt_ids), seeds=seeds)


@torch.no_grad()
def evaluate(acc, cfg, model, tokenizer, examples, prompt_ids, rewards: RewardSet,
             eval_only: RewardSet | None = None) -> dict[str, float]:
    """Greedy answers to the eval prompts, scored by every reward source (and the eval-only ones). Every process
    computes the same figures (the eval set is small next to training; sharding it is left to the evaluator)."""
    if not examples:
        return {}
    with generation_model(acc, model) as module:
        gens = generate(module, tokenizer, prompt_ids,
                        SamplingParams(max_new_tokens=cfg.sampling.max_new_tokens, temperature=0.0))
    fields = fields_of(examples)
    prompts, texts = [e.prompt for e in examples], [g.text for g in gens]
    total, parts = rewards(prompts, texts, fields)
    if eval_only is not None:
        parts.update(eval_only(prompts, texts, fields)[1])
    return {"reward_eval/total": total.mean().item(), **{f"reward_eval/{k}": v.mean().item() for k, v in parts.items()},
            "length/eval": fmean(len(g.response_ids) for g in gens)}
