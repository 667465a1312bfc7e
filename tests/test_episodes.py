"""Multi-turn episodes: the one-turn case is the single-turn rollout; a hand-built two-tool-call episode has
exactly the tokens and the policy mask it should; limits truncate; GAE steps over the environment's tokens;
environment rewards land where they should."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from alignkit.advantages import gae
from alignkit.data.formats import Message, PromptExample
from alignkit.data.templates import render, tokenize_prompt
from alignkit.demo.tools_world import calculator
from alignkit.rollout.core import collect
from alignkit.rollout.engines import HFEngine
from alignkit.rollout.env import Environment, Play, ToolEnvironment
from alignkit.rollout.episodes import run_episodes
from alignkit.sampling import Generation, SamplingParams


class Scripted:
    """An engine that answers turn k of every episode with ``turns[k]`` (ids of the text, then EOS, unless the
    text is None: a turn cut at max_new_tokens without EOS)."""

    name = "scripted"

    def __init__(self, tokenizer, turns: list[str | None]) -> None:
        self.tokenizer, self.turns, self.calls = tokenizer, turns, 0

    def generate(self, model, prompt_ids, params, seeds=None):
        text = self.turns[self.calls]
        self.calls += 1
        out = []
        for p in prompt_ids:
            ids = self.tokenizer(text or "never ends", add_special_tokens=False)["input_ids"]
            ids = ids + [self.tokenizer.eos_token_id] if text is not None else ids
            out.append(Generation(tuple(p), tuple(ids), self.tokenizer.decode(ids, skip_special_tokens=True),
                                  text is not None, tuple(-0.5 for _ in ids)))
        return out


def call(expression: str) -> str:
    return "<tool_call>" + json.dumps({"name": "calculator", "arguments": {"expression": expression}}) + "</tool_call>"


PROMPT = (Message("user", "What is 6 times 7, plus 1?"),)
PARAMS = SamplingParams(max_new_tokens=64, temperature=1.0)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_two_tool_call_episode_has_exact_tokens_and_policy_mask(demo_tokenizer):
    tok = demo_tokenizer
    play = Play(ToolEnvironment([calculator]), max_turns=4)
    prompt_ids = tokenize_prompt(tok, PROMPT, play.tools)
    turns = [call("6 * 7"), call("42 + 1"), "The answer is 43."]
    [episode] = run_episodes(Scripted(tok, turns), None, play, [PromptExample(PROMPT, "x")], [prompt_ids], PARAMS, [7])

    eos = [tok.eos_token_id]
    reply = "\n<|user|>\n<tool_response>\n{}\n</tool_response><|end|>\n<|assistant|>\n"  # glue + result + next turn
    pieces = [(ids(tok, turns[0]) + eos, 1), (ids(tok, reply.format(42)), 0), (ids(tok, turns[1]) + eos, 1),
              (ids(tok, reply.format(43)), 0), (ids(tok, turns[2]) + eos, 1)]
    g = episode.generation
    assert list(g.response_ids) == [t for piece, _ in pieces for t in piece]
    assert list(g.mask) == [m for piece, m in pieces for _ in piece]
    assert g.finished and episode.turns == 3 and episode.text == "The answer is 43."
    assert episode.state["tool_calls"] == 2 and episode.state["tool_errors"] == 0
    ends = [sum(len(p) for p, _ in pieces[: 2 * k + 1]) - 1 for k in range(3)]
    assert list(episode.turn_ends) == ends
    # the engine's log-probs on the policy's tokens, 0 on the environment's
    assert list(g.logps) == [-0.5 if m else 0.0 for m in g.mask]
    # the whole sequence is the chat template's rendering of the conversation (tools, calls and results)
    conversation = [*PROMPT, Message("assistant", turns[0]), Message("tool", "42"), Message("assistant", turns[1]),
                    Message("tool", "43"), Message("assistant", turns[2])]
    assert tok.decode(prompt_ids + list(g.response_ids)) + "\n" == render(tok, conversation, tools=play.tools)


def test_one_turn_episodes_are_the_single_turn_rollouts(demo_sft, demo_tokenizer):
    from alignkit.config import ModelConfig
    from alignkit.models import load_causal_lm

    model = load_causal_lm(ModelConfig(name_or_path=str(demo_sft)), demo_tokenizer, trainable=False)
    examples = [PromptExample((Message("user", f"What is {a} + 3?"),), "x") for a in range(6)]
    prompt_ids = [tokenize_prompt(demo_tokenizer, e.prompt) for e in examples]
    engine = HFEngine(None, demo_tokenizer)
    seeds = list(range(100, 106))
    for params in (PARAMS, SamplingParams(max_new_tokens=6, temperature=1.0), SamplingParams(max_new_tokens=16, temperature=0)):
        single = engine.generate(model, prompt_ids, params, seeds if params.temperature else None)
        episodes = run_episodes(engine, model, Play(), examples, prompt_ids, params, seeds if params.temperature else None)
        assert [e.generation for e in episodes] == single
    assert any(not g.finished for g in engine.generate(model, prompt_ids, SamplingParams(6, 1.0), seeds))


@pytest.mark.parametrize("turns,max_turns,max_tokens,expect_turns,why", [
    ([call("6 * 7"), None], 4, None, 2, "the second turn is cut at max_new_tokens"),
    ([call("6 * 7"), call("42 + 1")], 2, None, 2, "the turn limit leaves the second call unanswered"),
    ([call("6 * 7")], 4, 60, 1, "the token budget leaves no room after the first result"),
])
def test_limits_end_an_episode_unfinished(demo_tokenizer, turns, max_turns, max_tokens, expect_turns, why):
    play = Play(ToolEnvironment([calculator]), max_turns=max_turns, max_tokens=max_tokens)
    prompt_ids = tokenize_prompt(demo_tokenizer, PROMPT, play.tools)
    [episode] = run_episodes(Scripted(demo_tokenizer, turns), None, play, [PromptExample(PROMPT, "x")], [prompt_ids],
                             PARAMS, [1])
    assert not episode.generation.finished, why
    assert episode.turns == expect_turns, why
    assert (episode.generation.mask or (1,))[-1] == 1, "an episode never ends on environment tokens"
    if max_tokens:
        assert len(episode.generation.response_ids) <= max_tokens


def test_bad_tool_calls_come_back_as_messages_the_model_reads(demo_tokenizer):
    play = Play(ToolEnvironment([calculator]), max_turns=3, max_tokens=400)  # error messages are long in bytes
    turns = ['<tool_call>{"name": "abacus", "arguments": {}}</tool_call>', call("6 * x"), "Sorry."]
    prompt_ids = tokenize_prompt(demo_tokenizer, PROMPT, play.tools)
    [episode] = run_episodes(Scripted(demo_tokenizer, turns), None, play, [PromptExample(PROMPT, "x")], [prompt_ids],
                             PARAMS, [1])
    results = [m["content"] for m in episode.messages if m["role"] == "tool"]
    assert results == ["error: unknown tool 'abacus' (available: calculator)",
                       "error: calculator raised ValueError: not arithmetic: '6 * x'"]
    assert episode.state == {"fields": {}, "tool_calls": 2, "tool_errors": 2} and episode.generation.finished


def test_gae_steps_over_environment_tokens():
    values = torch.tensor([[0.5, 9.0, 9.0, 0.2, 9.0, 0.3]])
    rewards = torch.tensor([[0.1, 7.0, 7.0, 0.0, 7.0, 1.0]])  # rewards on environment tokens are ignored
    mask = torch.tensor([[1, 0, 0, 1, 0, 1]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # by hand over the policy's tokens t0, t3, t5 (values 0.5, 0.2, 0.3; rewards 0.1, 0, 1):
    a5 = 1.0 - 0.3  # 0.7
    a3 = (0.0 + 0.9 * 0.3 - 0.2) + 0.9 * 0.5 * a5  # 0.07 + 0.315 = 0.385
    a0 = (0.1 + 0.9 * 0.2 - 0.5) + 0.9 * 0.5 * a3  # -0.22 + 0.17325 = -0.04675
    torch.testing.assert_close(advantages, torch.tensor([[a0, 0, 0, a3, 0, a5]]))
    torch.testing.assert_close(returns, torch.tensor([[a0 + 0.5, 0, 0, a3 + 0.2, 0, a5 + 0.3]]))


class Counting(Environment):
    """Two turns; a per-turn reward of 0.25 and an end reward of 2.0."""

    def respond(self, messages, state):
        state["answered"] = state.get("answered", 0) + 1
        return None if state["answered"] == 2 else [{"role": "user", "content": "again"}]

    def turn_reward(self, messages, state):
        return 0.25

    def reward(self, messages, state):
        return 2.0


def test_environment_rewards_land_on_the_rollout(demo_tokenizer):
    from alignkit.config import RewardSource
    from alignkit.rewards import RewardSet

    acc = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))
    prompt_ids = tokenize_prompt(demo_tokenizer, PROMPT)
    engine = Scripted(demo_tokenizer, ["One.", "Two."])
    sources = RewardSet([RewardSource(builtin="regex", args={"pattern": "Two"})])  # scores the last turn: 1.0
    r = collect(acc, engine, None, [PromptExample(PROMPT, "x")], [prompt_ids], [3], PARAMS, sources,
                play=Play(Counting(), max_turns=3))
    assert r.rewards == {"regex": torch.tensor([1.0]), "environment": torch.tensor([2.0])}
    assert r.end_score.tolist() == [3.0] and r.score.tolist() == [3.5]  # + 0.25 per turn
    ends = [i for i, v in enumerate(r.turn_rewards[0].tolist()) if v]
    assert r.turn_rewards[0, ends].tolist() == [0.25, 0.25]
    assert r.batch.response_mask[0, ends].tolist() == [1, 1]  # each on its turn's last (policy) token
    assert r.episodes["turns"].tolist() == [2.0] and r.transcripts[0].endswith("Two.<|end|>")


def test_sft_on_a_tool_transcript_trains_the_assistant_turns_only(demo_tokenizer):
    """The built-in template writes the calls in its documented (pythonic) format, which the parser reads back;
    the loss mask covers the assistant's call and answer, never the tool schemas, the result or the prompt."""
    from alignkit.data.formats import FORMATS
    from alignkit.data.templates import tokenize_conversation
    from alignkit.demo.tools_world import tool_schema
    from alignkit.rollout.tools import detect_tool_format, parse_tool_calls

    record = {"messages": [{"role": "user", "content": "What is 47 times 8?"},
                           {"role": "assistant", "content": "", "tool_calls": [
                               {"type": "function", "function": {"name": "calculator",
                                                                 "arguments": '{"expression": "47 * 8"}'}}]},
                           {"role": "tool", "name": "calculator", "content": "376"},
                           {"role": "assistant", "content": "The answer is 376."}],
              "tools": [tool_schema()]}
    example = FORMATS["sft"]["messages"](record, "t.jsonl line 1")
    row = tokenize_conversation(demo_tokenizer, example.messages, tools=example.tools)
    trained = demo_tokenizer.decode([t for t, m in zip(row.input_ids, row.loss_mask) if m])
    assert trained == '[calculator(expression="47 * 8")]<|end|>\nThe answer is 376.<|end|>\n'
    context = demo_tokenizer.decode([t for t, m in zip(row.input_ids, row.loss_mask) if not m])
    assert context == ("<|system|>\nTools:\ncalculator(expression: string): Do arithmetic.\n<|end|>\n"
                       "<|user|>\nWhat is 47 times 8?<|end|>\n<|assistant|>\n"
                       "<|user|>\n<tool_response>\n376\n</tool_response><|end|>\n<|assistant|>\n")
    assert detect_tool_format(demo_tokenizer) == "pythonic"
    assert parse_tool_calls('[calculator(expression="47 * 8")]', "pythonic")[0].arguments == {"expression": "47 * 8"}
