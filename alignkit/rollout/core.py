"""From prompts to a sampled, scored ``Rollout`` of the whole global batch: what PPO and GRPO share.

Multi-process rule of both recipes: ``train.batch_size`` prompts per step over all processes; each process samples
and scores its slice (sampling and reward models are the expensive part), then the slices are gathered, so every
process holds the whole batch and every statistic over it (advantage baselines, whitening, reward normalisation,
the KL controller, logged metrics) is computed identically everywhere; each process then trains its own rows.
Rollouts are seeded per global row, so the tokens do not depend on the number of processes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..batch import RolloutBatch
from ..config import DataConfig
from ..data.steps import token_at
from ..data.templates import tokenize_prompt
from ..ops import response_logps
from ..rewards import RewardSet, Scored, StepScores, fields_of
from ..sampling import SamplingParams, rollout_batch
from .env import Environment, Play
from .episodes import Episode, run_episodes


@dataclass(frozen=True)
class Rollout:
    """One step's sampled and scored responses, every process's rows in rank order (B = the global batch).

    Token tensors live in ``batch`` (P prompt width, R response width):
      batch.input_ids (B, P + R) [left-padded prompt | right-padded response]; batch.attention_mask (B, P + R);
      batch.position_ids (B, P + R); batch.response_mask (B, R) 1 on the policy's tokens, EOS included;
      batch.finished (B,) the response ended with a stop token (False: cut at max_new_tokens).
    A multi-turn episode's "response" is every token after the prompt: the policy's turns (mask 1) and the
    environment's replies between them (mask 0), see episodes.py.
    """

    batch: RolloutBatch
    sample_logps: Tensor  # (B, R) the engine's log-prob of each sampled token, log softmax(logits / T); 0 past the end
    rewards: dict[str, Tensor]  # source label -> (B,) raw score of that reward source
    total: Tensor  # (B,) the reward sources' weighted sum
    penalty: Tensor  # (B,) subtracted from total: missing_eos_penalty where the response has no stop token
    texts: tuple[str, ...]  # (B,) decoded responses (an episode's last assistant turn)
    examples: tuple  # (B,) the prompt records
    local: slice  # this process's rows
    seconds: dict[str, float]  # wall time of this process's "generate" and "score" phases
    turn_rewards: Tensor | None = None  # (B, R) an environment's per-turn rewards at each turn's last token
    episodes: dict[str, Tensor] | None = None  # (B,) per episode: turns, tool_calls, tool_errors
    transcripts: tuple[str, ...] = ()  # (B,) every turn after the prompt, decoded (multi-turn episodes)
    step_rewards: Tensor | None = None  # (B, R) process reward models' weighted step scores, each on its step's end
    step_ends: Tensor | None = None  # (B, R) bool, True on the tokens where a scored step ends
    process_part: Tensor | None = None  # (B,) the process reward models' weighted step_aggregate scores (in total)

    @property
    def end_score(self) -> Tensor:  # (B,) the reward at the episode's end: total - penalty
        return self.total - self.penalty

    @property
    def outcome_score(self) -> Tensor:  # (B,) end_score less the process reward models' part: what is left of the
        #                                 score where their step scores are rewarded on the steps' tokens instead
        return self.end_score if self.process_part is None else self.end_score - self.process_part

    @property
    def score(self) -> Tensor:  # (B,) what the policy is trained to raise: the end score plus any per-turn rewards
        return self.end_score if self.turn_rewards is None else self.end_score + self.turn_rewards.sum(-1)

    @property
    def lengths(self) -> Tensor:  # (B,) response tokens
        return self.batch.response_mask.sum(-1)


@dataclass(frozen=True)
class PromptReport:
    kept: int  # prompts kept
    truncated: int  # longer than data.max_length, cut to their last max_length tokens
    dropped: int  # longer than data.max_length with data.overlong = drop

    def describe(self, name: str) -> str:
        return f"{name}: {self.kept} prompts kept, {self.truncated} truncated (from the left), {self.dropped} dropped as over-length"


def tokenize_prompts(examples: Sequence, tokenizer, data: DataConfig, name: str, tools: list[dict] | None = None
                     ) -> tuple[list, list[list[int]], PromptReport]:
    """Prompt token ids under ``data.overlong``: truncate keeps the LAST max_length tokens (the question a prompt
    ends with, and the generation prompt, matter most), drop leaves the prompt out. ``tools``: the environment's
    tool schemas, rendered by the chat template. Returns (kept examples, ids, report); an empty result is an
    error."""
    from ..data.formats import DataError

    kept, ids, truncated, dropped = [], [], 0, 0
    drop = data.overlong == "drop"
    for example in examples:
        tokens = tokenize_prompt(tokenizer, example.prompt, tools)
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


def sampling_params(section) -> SamplingParams:
    """The sampling knobs of a recipe's ``sampling:`` section."""
    return SamplingParams(max_new_tokens=section.max_new_tokens, temperature=section.temperature,
                          top_p=section.top_p, top_k=section.top_k)


def rollout_seeds(seed: int, step: int, first_row: int, n_rows: int) -> list[int]:
    """One sampling seed per rollout row, a function of (train.seed, step, the row's place in the global batch)."""
    base = (seed * 1_000_003 + step) * 1_000_033
    return [(base + row) % 2**62 for row in range(first_row, first_row + n_rows)]


def gather_rows(acc, values: Tensor) -> Tensor:
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


def collect(acc, engine, model, examples: Sequence, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int],
            params: SamplingParams, rewards: RewardSet, missing_eos_penalty: float = 0.0, play: Play | None = None
            ) -> Rollout:
    """Play this process's prompts as episodes (``play``: an environment and its limits, one seed per row;
    default single-turn, one response per prompt), score them with every reward source and the environment's own
    reward, and gather the whole batch: prompts -> ``Rollout`` on every process. ``examples`` / ``prompt_ids``:
    this process's rows (a GRPO group's G copies contiguous)."""
    play = play or Play()
    clock = time.time()
    episodes = run_episodes(engine, model, play, examples, prompt_ids, params, seeds)
    gens = [e.generation for e in episodes]
    seconds = {"generate": time.time() - clock}
    scored = score_episodes(rewards, play.env, examples, episodes)
    total, parts = scored.total, scored.parts
    seconds["score"] = time.time() - clock - seconds["generate"]
    everyone = gather_list(acc, gens)
    batch = rollout_batch(everyone, engine.tokenizer.pad_token_id).to(acc.device)
    sample_logps = torch.zeros(batch.response_mask.shape, dtype=torch.float32)
    for row, g in enumerate(everyone):
        if g.logps:
            sample_logps[row, : len(g.logps)] = torch.tensor(g.logps)
    total = gather_rows(acc, total.to(acc.device).float())
    first = acc.process_index * len(gens)
    turn_rewards, stats, transcripts = None, None, ()
    if play.multi_turn:  # per-turn rewards, episode counts and transcripts only where turns can be more than one
        placed = gather_list(acc, [(e.turn_ends, e.turn_rewards) for e in episodes])
        turn_rewards = torch.zeros(batch.response_mask.shape)
        for row, (ends, values) in enumerate(placed):
            for end, value in zip(ends, values):
                turn_rewards[row, end] += value
        turn_rewards = turn_rewards.to(acc.device)
        counts = torch.tensor([[e.turns, e.state.get("tool_calls", 0), e.state.get("tool_errors", 0)] for e in episodes],
                              dtype=torch.float32)
        counts = gather_rows(acc, counts.to(acc.device))
        stats = {"turns": counts[:, 0], "tool_calls": counts[:, 1], "tool_errors": counts[:, 2]}
        transcripts = tuple(gather_list(acc, [engine.tokenizer.decode(g.response_ids) for g in gens]))
    gathered = {k: gather_rows(acc, v.to(acc.device).float()) for k, v in parts.items()}
    step_rewards, step_ends, process_part = None, None, None
    if scored.steps:  # process reward models: each step's score on the token where the step ends
        placed = gather_list(acc, place_steps(engine.tokenizer, gens, scored.steps))
        step_rewards = torch.zeros(batch.response_mask.shape)
        step_ends = torch.zeros(batch.response_mask.shape, dtype=torch.bool)
        for row, items in enumerate(placed):
            for index, value in items:
                step_rewards[row, index] += value
                step_ends[row, index] = True
        step_rewards, step_ends = step_rewards.to(acc.device), step_ends.to(acc.device)
        process_part = sum(weight * gathered[label] for label, (weight, _) in scored.steps.items())
    return Rollout(batch=batch, sample_logps=sample_logps.to(acc.device), rewards=gathered, total=total,
                   penalty=missing_eos_penalty * (~batch.finished).float(), texts=tuple(g.text for g in everyone),
                   examples=tuple(gather_list(acc, list(examples))), local=slice(first, first + len(gens)),
                   seconds=seconds, turn_rewards=turn_rewards, episodes=stats, transcripts=transcripts,
                   step_rewards=step_rewards, step_ends=step_ends, process_part=process_part)


def place_steps(tokenizer, gens: Sequence, steps: dict[str, tuple[float, list[StepScores]]]
                ) -> list[list[tuple[int, float]]]:
    """Per response: (token index, weighted score) of every step of every process reward model. A step's score
    lands on the response token that holds its end (its separator's last character); the last step's on the
    response's last token, where an outcome score lands, so every token of the response lies before a step end."""
    out = []
    for row, g in enumerate(gens):
        last, items = len(g.response_ids) - 1, []
        for weight, per_response in steps.values():
            ends, scores = per_response[row].ends, per_response[row].scores
            for k, (end, score) in enumerate(zip(ends, scores)):
                index = last if k == len(ends) - 1 else min(token_at(tokenizer, g.response_ids, end), last)
                items.append((index, weight * score))
        out.append(items)
    return out


def score_episodes(rewards: RewardSet, env: Environment, examples: Sequence, episodes: Sequence[Episode]) -> Scored:
    """Every reward source on each episode's last assistant turn, plus the environment's own end reward (the
    source "environment", when it gives one): the (N,) weighted total, label -> (N,) scores, and the process
    reward models' step scores."""
    scored = rewards.score([e.prompt for e in examples], [e.text for e in episodes], fields_of(examples))
    total, parts = scored.total, scored.parts
    own = [env_reward(env, e, x) for e, x in zip(episodes, examples)]
    if any(v is not None for v in own):
        parts["environment"] = torch.tensor([v or 0.0 for v in own])
        total = total + parts["environment"]
    return Scored(total, parts, scored.steps)


def env_reward(env: Environment, episode: Episode, example) -> float | None:
    """The environment's own score of a finished episode (None when it gives none), checked to be a finite
    number, naming the environment when not."""
    import math

    score = getattr(env, "reward", None)  # optional on a duck-typed environment
    value = score([*(m.as_dict() for m in example.prompt), *episode.messages], episode.state) if score else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"environment {type(env).__name__}.reward returned {value!r}; expected a finite float or None")
    return float(value)


def episode_metrics(r: Rollout) -> dict[str, float]:
    """The step's multi-turn figures: turns per episode, the share of episodes calling a tool, tool calls and the
    share of them that failed (an error message back to the model)."""
    if r.episodes is None:
        return {}
    calls = r.episodes["tool_calls"]
    return {"episode/turns": r.episodes["turns"].mean().item(), "episode/finished": r.batch.finished.float().mean().item(),
            "tools/call_rate": (calls > 0).float().mean().item(), "tools/calls": calls.mean().item(),
            "tools/error_rate": (r.episodes["tool_errors"].sum() / calls.sum().clamp(min=1)).item()}


def diversity(texts: Sequence[str]) -> dict[str, float]:
    """The step's responses: corpus distinct-2 and mean within-response repetition (seq-rep-2), logged so the
    doctor can see diversity collapse or a few high-reward words repeated while the reward rises."""
    from ..eval.stats import distinct_n, repetition_rate

    return {"diversity/distinct2": distinct_n(texts, 2), "diversity/repetition": repetition_rate(texts, 2)}


@torch.no_grad()
def rows_logps(acc, logps_of, batch: RolloutBatch, chunks: list[list[int]]) -> Tensor:
    """(B, R) response log-probs of the whole batch, without gradients: this process computes its ``chunks`` of
    rows with ``logps_of(sub_batch)``, then the rows are gathered (so every process can index any row)."""
    return gather_rows(acc, torch.cat([logps_of(batch.select(c)).float() for c in chunks]))


def policy_logps(model, temperature: float):
    """``logps_of`` for ``rows_logps``: the model's own response log-probs at the sampling temperature."""
    return lambda sub: response_logps(model, sub, temperature)[0]
