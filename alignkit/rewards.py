"""Reward sources: Python functions (yours, or built-in), a trained reward model, a process reward model (per-step
scores), an LLM judge; combined with weights into one reward per completion, each source reported separately.

Every source is called like a reward function: ``fn(prompts, completions, **fields) -> list[float]`` where
``prompts`` are the last user turns, ``completions`` the generated texts and ``fields`` the dataset's extra columns
(lists aligned with the prompts). A bad reference or a bad return value is an error that names the function.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig, RewardSource
from .data.collate import pad_batch
from .data.formats import Conversation, Message
from .data.steps import split_steps, step_sequence
from .data.templates import tokenize_conversation
from .models import (
    load_prm_info,
    load_reward_model,
    load_reward_stats,
    load_tokenizer,
    resolve_device,
    token_values,
)
from .ops import gather_last

RewardFn = Callable[..., list[float]]


class RewardError(ValueError):
    """A reward source that cannot be used or misbehaved: the message names it and says what went wrong."""


# ------------------------------------------------------------------------------------------ Python functions
def load_function(reference: str, what: str = "reward function", error: type[Exception] = RewardError,
                  label: str | None = None) -> Any:
    """``package.module:name`` or ``path/to/file.py:name`` -> the callable (a reward function; an environment
    class or a tool elsewhere: ``what`` names the kind in errors, ``label`` the config key, ``error`` is raised)."""
    label = label or f'{what} "{reference}"'
    if ":" not in reference:
        raise error(f'{label}: expected module:name or path/to/file.py:name')
    target, name = reference.rsplit(":", 1)
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise error(f'{label}: file {path} not found')
            spec = importlib.util.spec_from_file_location(f"alignkit_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(target)
    except ImportError as exc:
        raise error(f'{label}: cannot import {target} ({exc})') from None
    obj = getattr(module, name, None)
    if not callable(obj):
        raise error(f'{label}: {target} has no {what} named {name}')
    return obj


def call_reward(name: str, fn: RewardFn, prompts: list[str], completions: list[str],
                fields: dict[str, list[Any]]) -> list[float]:
    """Call a reward function and check what it returns (length, type, finiteness), naming it on error.

    An exception inside it becomes one line naming the function, where it raised and why: a bug in a reward
    function is the user's to fix, and a torch traceback around it would only hide the line that matters.
    """
    try:
        scores = fn(prompts, completions, **fields)
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise RewardError(f"reward function {name} raised {type(exc).__name__}: {exc} "
                         f"(at {frame.filename} line {frame.lineno})") from None
    if isinstance(scores, torch.Tensor):
        scores = scores.tolist()
    if not isinstance(scores, (list, tuple)) or len(scores) != len(completions):
        got = f"{type(scores).__name__} of length {len(scores)}" if hasattr(scores, "__len__") else type(scores).__name__
        raise RewardError(f"reward function {name} must return a list of {len(completions)} floats, got {got}")
    out = []
    for i, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise RewardError(f"reward function {name} returned {score!r} for completion {i}; expected a finite float")
        out.append(float(score))
    return out


# ----------------------------------------------------------------------------------------------- built-ins
def regex_reward(prompts, completions, pattern: str = r".", full: bool = False, **_) -> list[float]:
    """1.0 where the completion matches ``pattern`` (re.search, or re.fullmatch with full), else 0.0."""
    match = re.compile(pattern, re.DOTALL)
    test = match.fullmatch if full else match.search
    return [float(test(c) is not None) for c in completions]


def length_reward(prompts, completions, target: int = 200, unit: str = "chars", **_) -> list[float]:
    """-|length - target| / target: 0 at the target length, more negative further from it (a length penalty)."""
    size = (lambda c: len(c.split())) if unit == "words" else len
    return [-abs(size(c) - target) / max(target, 1) for c in completions]


def repetition_reward(prompts, completions, n: int = 3, **_) -> list[float]:
    """-(fraction of repeated word n-grams): 0 for no repetition, towards -1 for a loop."""
    out = []
    for c in completions:
        words = c.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        out.append(-(1 - len(set(grams)) / len(grams)) if grams else 0.0)
    return out


BUILTINS: dict[str, RewardFn] = {
    "regex": regex_reward, "length": length_reward, "repetition": repetition_reward,
}


# ----------------------------------------------------------------------------------------- reward models
class RewardModelScorer:
    """A frozen reward model: ``score(prompts, responses)`` -> (N,) raw rewards; ``normalise`` applies the stored
    mean / std (0 / 1 when the folder has none).

    ``device`` is this process's device (``cuda:1`` on the second GPU): frozen models are placed per rank, never
    wrapped; ``autocast`` is the run's (accelerate's), so scores are computed in the trained models' precision.
    """

    def __init__(self, cfg: ModelConfig, device: torch.device | None = None, max_length: int = 1024,
                 autocast=contextlib.nullcontext) -> None:
        self.device = device or resolve_device(cfg.device)
        self.tokenizer = load_tokenizer(cfg)
        self.model = load_reward_model(cfg, self.tokenizer, self.device, trainable=False)
        self.stats = load_reward_stats(cfg.name_or_path) or {"mean": 0.0, "std": 1.0}
        self.max_length, self.autocast = max_length, autocast

    @torch.no_grad()
    def score(self, prompts: Sequence[Conversation], responses: Sequence[Conversation], batch_size: int = 32) -> torch.Tensor:
        out = []
        for start in range(0, len(prompts), batch_size):
            rows = [tokenize_conversation(self.tokenizer, p + r, first_trained=len(p), max_length=self.max_length)
                    for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])]
            batch = pad_batch(rows, self.tokenizer.pad_token_id).to(self.device)
            with self.autocast():
                values = token_values(self.model, batch.input_ids, batch.attention_mask, batch.position_ids)
            out.append(gather_last(values, batch.attention_mask).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def normalise(self, rewards: torch.Tensor) -> torch.Tensor:
        return (rewards - self.stats["mean"]) / max(self.stats["std"], 1e-6)


# ------------------------------------------------------------------------------------ process reward models
@dataclass(frozen=True)
class StepScores:
    """One completion's steps as a process reward model scored them (K steps; K = 0 for an empty completion)."""

    ends: tuple[int, ...]  # (K,) character offset just past each step: past its separator, or the text's end
    scores: tuple[float, ...]  # (K,) the probability that each step is correct, sigmoid of the head


STEP_AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "min": min,  # Math-Shepherd: a solution is as good as its worst step
    "product": math.prod,  # Lightman et al.: the probability that every step is correct
    "last": lambda scores: scores[-1],
}


def aggregate_steps(scores: Sequence[float], how: str) -> float:
    """A completion's one score from its step scores (``STEP_AGGREGATES[how]``); 0.0 when it has no step."""
    return float(STEP_AGGREGATES[how](scores)) if scores else 0.0


class ProcessRewardScorer:
    """A frozen process reward model: ``score(prompts, responses)`` -> one ``StepScores`` per response text.

    Each response is split into steps at the separator the model was trained with (its ``prm.json``), laid out as
    in training (``data.steps.step_sequence``: prompt, generation prompt, each step and the separator) and the head
    read at every step's end. Steps past ``max_length`` tokens get no score. ``aggregate`` names the completion's
    one score (``STEP_AGGREGATES``).
    """

    def __init__(self, cfg: ModelConfig, device: torch.device | None = None, max_length: int = 1024,
                 autocast=contextlib.nullcontext, aggregate: str = "min") -> None:
        self.device = device or resolve_device(cfg.device)
        self.separator = load_prm_info(cfg.name_or_path)["separator"]
        self.tokenizer = load_tokenizer(cfg)
        self.model = load_reward_model(cfg, self.tokenizer, self.device, trainable=False)
        self.max_length, self.autocast, self.aggregate = max_length, autocast, aggregate

    @torch.no_grad()
    def score(self, prompts: Sequence[Conversation], responses: Sequence[str], batch_size: int = 32) -> list[StepScores]:
        out = []
        for start in range(0, len(prompts), batch_size):
            split = [split_steps(r, self.separator) for r in responses[start : start + batch_size]]
            rows = [step_sequence(self.tokenizer, p, [text for text, _ in steps], self.separator, self.max_length)
                    for p, steps in zip(prompts[start : start + batch_size], split)]
            batch = pad_batch(rows, self.tokenizer.pad_token_id).to(self.device)
            with self.autocast():
                values = token_values(self.model, batch.input_ids, batch.attention_mask, batch.position_ids)
            probs, ends = values.float().sigmoid().cpu(), batch.loss_mask.bool().cpu()  # loss_mask: the step ends
            for row, steps in enumerate(split):
                found = probs[row][ends[row]].tolist()
                out.append(StepScores(tuple(end for _, end in steps[: len(found)]), tuple(found)))
        return out


# ----------------------------------------------------------------------------------------------- LLM judge
DEFAULT_JUDGE_TEMPLATE = ("Rate the assistant's answer from 0 to 10 for helpfulness, correctness and politeness.\n"
                          "Question: {prompt}\nAnswer: {response}\nReply with the number only.")


class LLMJudge:
    """RLAIF: a local causal LM asked ``template`` (with {prompt} and {response}); the first number in its greedy
    answer, divided by ``scale``, is the reward; ``default`` where it gives none."""

    def __init__(self, cfg: ModelConfig | None, device: torch.device | None = None, template: str = DEFAULT_JUDGE_TEMPLATE,
                 scale: float = 10.0, default: float = 0.0, max_new_tokens: int = 8, model=None, tokenizer=None) -> None:
        from .models import load_causal_lm

        if model is None:  # a judge of its own; else (self-rewarding) the live policy judges its own answers
            tokenizer = load_tokenizer(cfg)
            model = load_causal_lm(cfg, tokenizer, device, trainable=False).eval()
        self.model, self.tokenizer = model, tokenizer
        self.template, self.scale, self.default, self.max_new_tokens = template, scale, default, max_new_tokens

    def __call__(self, prompts, completions, **_) -> list[float]:
        from .data.templates import tokenize_prompt
        from .sampling import SamplingParams, generate

        asks = [(Message("user", self.template.format(prompt=p, response=c)),) for p, c in zip(prompts, completions)]
        model = getattr(self.model, "module", self.model)  # the policy under a DDP wrapper
        was_training = model.training
        model.eval()
        try:
            answers = generate(model, self.tokenizer, [tokenize_prompt(self.tokenizer, a) for a in asks],
                               SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0))
        finally:
            model.train(was_training)
        return [self.parse(a.text) for a in answers]

    def parse(self, text: str) -> float:
        found = re.search(r"-?\d+(?:\.\d+)?", text)
        return float(found.group()) / self.scale if found else self.default


# --------------------------------------------------------------------------------------------- combination
def fields_of(examples: Sequence) -> dict[str, list[Any]]:
    """The extra dataset columns of prompt examples as aligned lists (what reward functions get as **fields);
    a column missing from some records is None there."""
    keys = sorted({k for e in examples for k in e.fields})
    return {k: [e.fields.get(k) for e in examples] for k in keys}



def source_model(source: RewardSource) -> ModelConfig:
    """The ModelConfig of a reward_model / process_reward_model / judge source, carrying its revision, dtype and
    trust_remote_code."""
    return ModelConfig(name_or_path=source.reward_model or source.process_reward_model or source.judge,
                       revision=source.revision, dtype=source.dtype, trust_remote_code=source.trust_remote_code)


@dataclass(frozen=True)
class Scored:
    """Every source's scores of N responses."""

    total: torch.Tensor  # (N,) the weighted sum of the sources' scores
    parts: dict[str, torch.Tensor]  # source label -> (N,) its score (a process reward model's: its step_aggregate)
    steps: dict[str, tuple[float, list[StepScores]]] = field(default_factory=dict)  # process reward model label ->
    #                                          (its weight, each response's step scores): where PPO / GRPO place them


SELF_JUDGE = "self"  # judge: self, the policy asked to judge its own answers (self-rewarding, Yuan et al. 2024)


class RewardSet:
    """Weighted sum of reward sources; ``__call__`` returns (total (N,), {label: raw scores (N,)}), ``score`` the
    same with the process reward models' step scores besides (``Scored``).

    Python functions and built-ins are imported only here, for the sources the config names. ``policy``: the
    trained (model, tokenizer), for ``judge: self`` sources; a recipe that trains no policy passes none.
    ``scored_elsewhere``: an environment gives its own reward, so an empty list of sources is allowed.
    """

    def __init__(self, sources: Sequence[RewardSource], device: torch.device | None = None, max_length: int = 1024,
                 autocast=contextlib.nullcontext, policy: tuple[Any, Any] | None = None,
                 scored_elsewhere: bool = False) -> None:
        if not sources and not scored_elsewhere:
            raise RewardError("no reward sources configured: add at least one entry under rewards: (or name an "
                              "environment, environment.name, that gives its own reward)")
        self.entries: list[tuple[RewardSource, Any]] = []
        labels = [s.label for s in sources]
        if len(set(labels)) != len(labels):
            raise RewardError(f"reward sources need distinct names (got {labels}); set name: on each")
        for source in sources:
            how = source.step_aggregate  # a process reward model's; validation keeps it at its default elsewhere
            if source.process_reward_model:
                scorer: Any = ProcessRewardScorer(source_model(source), device, max_length, autocast, how)
            elif source.fn:
                scorer = load_function(source.fn)
            elif source.builtin in BUILTINS:
                scorer = BUILTINS[source.builtin]
            elif source.builtin:  # demo_gold / demo_format: the resolver turns them into demo.world functions
                raise RewardError(f"builtin {source.builtin} is a demo reward that reached the reward loader "
                                  "unresolved; pass the config through alignkit.pipeline.resolve(cfg) first")
            elif source.reward_model:
                scorer = RewardModelScorer(source_model(source), device, max_length, autocast)
            elif source.judge == SELF_JUDGE:
                if policy is None:
                    raise RewardError(f"reward source {source.label}: judge: self asks the trained policy to judge its "
                                      "own answers; only the recipes that train a policy from rewards (online_dpo, "
                                      "grpo, ppo) have one")
                scorer = LLMJudge(None, model=policy[0], tokenizer=policy[1], **source.args)
            else:
                scorer = LLMJudge(source_model(source), device, **source.args)
            self.entries.append((source, scorer))

    def __call__(self, prompts: Sequence[Conversation], responses: Sequence[str],
                 fields: dict[str, list[Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scored = self.score(prompts, responses, fields)
        return scored.total, scored.parts

    def score(self, prompts: Sequence[Conversation], responses: Sequence[str], fields: dict[str, list[Any]]) -> Scored:
        """Every source's scores of the responses, and each process reward model's step scores."""
        last_turns = [p[-1].content for p in prompts]
        parts: dict[str, torch.Tensor] = {}
        steps: dict[str, tuple[float, list[StepScores]]] = {}
        total = torch.zeros(len(responses))
        for source, scorer in self.entries:
            if isinstance(scorer, ProcessRewardScorer):
                steps[source.label] = (source.weight, scorer.score(prompts, list(responses)))
                scores = torch.tensor([aggregate_steps(s.scores, scorer.aggregate) for s in steps[source.label][1]])
            elif isinstance(scorer, RewardModelScorer):
                raw = scorer.score(prompts, [(Message("assistant", r),) for r in responses])
                scores = scorer.normalise(raw) if source.normalize else raw
            else:
                args = {} if isinstance(scorer, LLMJudge) else source.args  # a judge took its args when built
                fn = (lambda p, c, _s=scorer, _a=args, **f: _s(p, c, **_a, **f)) if args else scorer
                scores = torch.tensor(call_reward(source.label, fn, last_turns, list(responses), fields))
            parts[source.label] = scores
            total = total + source.weight * scores
        return Scored(total, parts, steps)
