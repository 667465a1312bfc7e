"""Episodes: the policy's turns and the environment's replies, laid out as one token sequence with a mask.

An episode's tokens after its prompt alternate: the policy's sampled turn (mask 1, with the engine's log-probs),
then the environment's reply (mask 0: context the policy reads, never trains on), then the policy again... The
policy's tokens are kept exactly as sampled (never re-tokenized from text, which would change what the log-probs
are of); the environment's tokens are the chat template's rendering of its messages, from the end of the
policy's end-of-turn token to the next generation prompt:

    [prompt + generation prompt][turn 1 ... <eot>][template glue + tool result + generation prompt][turn 2 ... <eot>]

Every turn of every live episode is sampled in one engine call (the batch shrinks as episodes end). Turn 0 uses
each row's rollout seed itself, so a one-turn episode is token for token the single-turn rollout; turn k > 0 a
seed derived from it. An episode is ``finished`` when the environment ended it after a completed turn; a turn cut
at ``max_new_tokens``, the turn limit or the token budget leave it unfinished (truncated), like a response without
EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..data.formats import DataError
from ..data.templates import render
from ..sampling import Generation, SamplingParams
from .env import Play


@dataclass(frozen=True)
class Episode:
    """One finished episode. ``generation`` holds the whole token sequence after the prompt (R tokens) with its
    policy mask; the rest is what rewards, logs and PPO's per-turn rewards read."""

    generation: Generation  # response_ids (R,) every token after the prompt; mask (R,) 1 on the policy's own
    messages: tuple[dict, ...]  # the turns after the prompt: assistant, then the environment's, ...
    turn_ends: tuple[int, ...]  # index in response_ids of each assistant turn's last token
    turn_rewards: tuple[float, ...]  # the environment's reward for each assistant turn (0 without one)
    state: dict[str, Any]  # the environment's state at the end (tool_calls, tool_errors, its own keys)

    @property
    def text(self) -> str:
        """The last assistant turn: what the run's reward sources score."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")

    @property
    def turns(self) -> int:
        return len(self.turn_ends)


def turn_seed(seed: int, turn: int) -> int:
    """Turn 0 samples with the row's own seed (the single-turn rollout); later turns with seeds derived from it."""
    return seed if turn == 0 else (seed * 1_000_003 + turn * 7_919) % 2**62


def reply_ids(tokenizer, before: list[dict], turn: dict, reply: list[dict], last_token: int,
              tools: list[dict] | None) -> list[int]:
    """The environment's tokens after an assistant turn that ended with ``last_token``: what the chat template
    writes after that token (its glue, such as a newline), the reply messages, and the next generation prompt."""
    start = render(tokenizer, before, add_generation_prompt=True, tools=tools)
    closed = render(tokenizer, [*before, turn], tools=tools)
    following = render(tokenizer, [*before, turn, *reply], add_generation_prompt=True, tools=tools)
    if not (closed.startswith(start) and following.startswith(closed)):
        raise DataError("the chat template does not render conversations incrementally, so an environment's reply "
                        "cannot be appended to the sampled turn; use a template without history rewriting")
    piece = closed[len(start):]  # the assistant turn as the template writes it: content, end-of-turn, glue
    end_text = tokenizer.decode([last_token])
    cut = piece.rfind(end_text) if end_text else -1
    glue = piece[cut + len(end_text):] if cut >= 0 else ""
    return tokenizer(glue + following[len(closed):], add_special_tokens=False)["input_ids"]


def run_episodes(engine, model, play: Play, examples: Sequence, prompt_ids: Sequence[Sequence[int]],
                 params: SamplingParams, seeds: Sequence[int] | None) -> list[Episode]:
    """Play one episode per prompt row: sample every live episode's turn in one engine call, let the environment
    answer each, append its reply's tokens, until it ends, a turn is cut, or a limit of ``play`` is reached
    (max_turns; max_tokens after the prompt, the policy's and the environment's together)."""
    tokenizer, env, max_turns = engine.tokenizer, play.env, play.max_turns
    turn_reward = getattr(env, "turn_reward", None)  # optional on a duck-typed environment
    tools = play.tools
    budget = play.token_budget(params.max_new_tokens)
    n = len(prompt_ids)
    states = [env.setup(e) for e in examples]
    history: list[list[dict]] = [[m.as_dict() for m in e.prompt] for e in examples]
    ids: list[list[int]] = [[] for _ in range(n)]
    mask: list[list[int]] = [[] for _ in range(n)]
    logps: list[list[float]] = [[] for _ in range(n)]
    after: list[list[dict]] = [[] for _ in range(n)]
    ends: list[list[int]] = [[] for _ in range(n)]
    turn_rewards: list[list[float]] = [[] for _ in range(n)]
    finished = [False] * n
    live = list(range(n))
    for turn in range(max_turns):
        if not live:
            break
        room = {i: budget - len(ids[i]) for i in live}
        live = [i for i in live if room[i] > 0]
        turn_params = replace(params, max_new_tokens=min(params.max_new_tokens, max(room.values(), default=1)))
        gens = engine.generate(model, [list(prompt_ids[i]) + ids[i] for i in live], turn_params,
                               None if seeds is None else [turn_seed(seeds[i], turn) for i in live])
        still = []
        for i, g in zip(live, gens):
            response = list(g.response_ids[: room[i]])
            cut = len(response) < len(g.response_ids) or not g.finished
            ids[i] += response
            mask[i] += [1] * len(response)
            logps[i] += list(g.logps[: len(response)]) if g.logps else [0.0] * len(response)
            ends[i].append(len(ids[i]) - 1)
            message = {"role": "assistant", "content": g.text if not cut else tokenizer.decode(response, skip_special_tokens=True)}
            before = history[i] + after[i]
            after[i].append(message)
            turn_rewards[i].append(float(turn_reward(before + [message], states[i])) if turn_reward else 0.0)
            if cut:
                continue  # truncated: the environment never sees a turn the policy did not finish
            reply = env.respond(before + [message], states[i])
            if not reply:
                finished[i] = True
                continue
            if turn == max_turns - 1:
                continue  # the turn limit: the policy may not answer this reply (truncated)
            more = reply_ids(tokenizer, before, message, reply, response[-1], tools)
            if len(ids[i]) + len(more) >= budget:
                continue  # no room left for another turn (truncated)
            ids[i] += more
            mask[i] += [0] * len(more)
            logps[i] += [0.0] * len(more)
            after[i].extend(reply)
            still.append(i)
        live = still
    out = []
    for i in range(n):
        text = after[i][-1]["content"] if after[i] else ""
        generation = Generation(tuple(prompt_ids[i]), tuple(ids[i]), text, finished[i],
                                tuple(logps[i]) if params.temperature > 0 else (), tuple(mask[i]) if 0 in mask[i] else ())
        out.append(Episode(generation, tuple(after[i]), tuple(ends[i]), tuple(turn_rewards[i]), states[i]))
    return out
