"""The verifiers adapter (alignkit.rollout.verifiers_env) on small verifiers-0.4 environments written here: a
single-turn taskset with weighted rewards and a metric (async: verifiers 0.4 gathers them, a sync one fails
scoring there as here), a number-guessing game (an ``Env`` whose ``run()`` answers
each guess), a tool taskset (a ``Toolset`` with state, a ``@vf.stop``). No model: hand-written assistant turns go
through setup / respond / reward, and the replies, the end of each episode and the rewards are exact."""

from __future__ import annotations

import asyncio
import gc
import itertools
import sys
import time
import types

import pytest

vf = pytest.importorskip("verifiers.v1", reason="verifiers >= 0.4 missing: pip install 'alignkit[verifiers]'")

from alignkit.config import ConfigError  # noqa: E402
from alignkit.data.formats import to_prompt  # noqa: E402
from alignkit.rollout.verifiers_env import VerifiersEnvironment  # noqa: E402


# ------------------------------------------------------------------------------------- environments under test
class ArithData(vf.TaskData):
    answer: str


class ArithTask(vf.Task[ArithData, vf.State, vf.TaskConfig]):
    @vf.reward
    async def correct(self, task, trace) -> float:
        return float(trace.last_reply == task.answer)

    @vf.reward(weight=0.5)
    async def short(self, trace) -> float:
        return float(len(trace.last_reply) <= 2)

    @vf.metric
    async def chars(self, trace) -> float:
        return float(len(trace.last_reply))


class ArithConfig(vf.TasksetConfig):
    split: str = "train"


class ArithTaskset(vf.Taskset[ArithTask, ArithConfig]):
    def load(self):
        pairs = {"train": [(2, 2), (3, 4), (5, 5)], "test": [(6, 7)]}[self.config.split]
        for a, b in pairs:
            data = ArithData(prompt=f"{a}+{b}=?", system_prompt="Reply with the number only.", answer=str(a + b))
            yield ArithTask(data, self.config.task)


class GuessData(vf.TaskData):
    secret: int


class GuessTask(vf.Task[GuessData, vf.State, vf.TaskConfig]):
    @vf.reward(weight=2.0)
    async def solved(self, trace) -> float:
        return float(trace.info.get("solved", False))

    @vf.reward
    async def quick(self, trace) -> float:
        return 1.0 / trace.num_turns


class GuessTaskset(vf.Taskset[GuessTask, vf.TasksetConfig]):
    def load(self):
        yield GuessTask(GuessData(prompt="Guess my number from 1 to 9.", secret=3), self.config.task)


class GuessEnvConfig(vf.EnvConfig):
    player: vf.AgentConfig = vf.AgentConfig(max_turns=3)


class GuessEnv(vf.Env[GuessEnvConfig]):
    async def run(self, task, agents):
        async with agents.player.interaction(task) as chat:
            segment = await chat.turn()
            while not segment.terminated:
                guess = int(segment.last_reply)  # a reply that is no number fails the episode
                if guess == task.data.secret:
                    chat.trace.info["solved"] = True
                    break
                segment = await chat.turn("higher" if guess < task.data.secret else "lower")


class Counter(vf.State):
    calls: int = 0


class Calculator(vf.Toolset[vf.ToolsetConfig, Counter]):
    @vf.tool
    def add(self, a: int, b: int) -> int:
        """Add two integers."""
        self.state.calls += 1
        return a + b

    @vf.tool
    async def fail(self) -> str:
        """Always raises."""
        raise RuntimeError("boom")

    @vf.tool
    def slow(self) -> str:
        """Takes half a second."""
        time.sleep(0.5)
        return "done"


class ToolTask(vf.Task[ArithData, Counter, vf.TaskConfig]):
    @classmethod
    def toolsets(cls, config):
        return [Calculator(vf.ToolsetConfig())]

    @vf.stop
    def gave_up(self, trace: vf.Trace) -> bool:
        return "GIVE UP" in trace.last_reply

    @vf.reward
    async def correct(self, task, trace) -> float:
        return float(trace.last_reply == task.answer)

    @vf.reward(weight=0.1)
    async def used_tool(self, trace) -> float:
        return float(trace.state.calls)


class Clock(vf.Toolset[vf.SharedToolsetConfig, vf.State]):
    TOOL_PREFIX = None  # its tools go bare, without "clock_"

    @vf.tool
    async def now(self) -> str:
        """The time of day."""
        return "noon"


class ToolTaskset(vf.Taskset[ToolTask, vf.TasksetConfig]):
    @classmethod
    def toolsets(cls, config):  # shared by every task of the taskset
        return [Clock(vf.SharedToolsetConfig())]

    def load(self):
        yield ToolTask(ArithData(prompt="What is 20+22? Use the tool.", answer="42"), self.config.task)


class PairConfig(vf.EnvConfig):
    solver: vf.AgentConfig = vf.AgentConfig()
    critic: vf.AgentConfig = vf.AgentConfig()


class PairEnv(vf.Env[PairConfig]):
    async def run(self, task, agents):
        await agents.solver.run(task)


class EndlessTaskset(vf.Taskset[ArithTask, vf.TasksetConfig]):
    INFINITE = True

    def load(self):
        for n in itertools.count():
            yield ArithTask(ArithData(prompt=f"{n}+0=?", answer=str(n)), self.config.task)


class TwiceEnv(vf.Env[vf.SingleAgentEnvConfig]):
    async def run(self, task, agents):  # best-of-2: two conversations in one episode
        await agents.agent.run(task)
        await agents.agent.run(task)


PLUGINS = {"akvf_arith": [ArithTaskset], "akvf_guess": [GuessTaskset, GuessEnv], "akvf_tools": [ToolTaskset],
           "akvf_pair": [ArithTaskset, PairEnv], "akvf_twice": [ArithTaskset, TwiceEnv],
           "akvf_endless": [EndlessTaskset]}


@pytest.fixture(scope="module", autouse=True)
def plugins():
    """Each environment as the installed package verifiers imports by id (a module exporting it via __all__)."""
    for name, classes in PLUGINS.items():
        module = types.ModuleType(name)
        for cls in classes:
            setattr(module, cls.__name__, cls)
        module.__all__ = [cls.__name__ for cls in classes]
        sys.modules[name] = module
    yield
    for name in PLUGINS:
        sys.modules.pop(name, None)


def example(record: dict):
    return to_prompt(record, "test record")


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def play(env, record, turns):
    """setup, then each assistant turn through respond: (the replies, the full conversation, the state)."""
    state = env.setup(example(record))
    messages, replies = list(record["prompt"]), []
    for text in turns:
        messages.append(assistant(text))
        reply = env.respond(messages, state)
        replies.append(reply)
        messages += reply or []
    return replies, messages, state


@pytest.fixture(scope="module")
def arith():
    return VerifiersEnvironment("akvf_arith", {"eval": {"taskset": {"split": "test"}}}, tokenizer=None)


# ------------------------------------------------------------------------------------------------------ tests
def test_records_carry_the_null_harness_opening_and_the_task_fields(arith):
    records = arith.records("train")
    assert [r["prompt"] for r in records][:2] == [
        [{"role": "system", "content": "Reply with the number only."}, {"role": "user", "content": "2+2=?"}],
        [{"role": "system", "content": "Reply with the number only."}, {"role": "user", "content": "3+4=?"}],
    ]
    assert [(r["answer"], r["idx"]) for r in records] == [("4", 0), ("7", 1), ("10", 2)]
    assert [r["prompt"][-1]["content"] for r in arith.records("eval")] == ["6+7=?"]
    assert VerifiersEnvironment("akvf_arith", {}, None).records("eval") is None
    limited = VerifiersEnvironment("akvf_arith", {"select": {"limit": 2, "skip": 1}}, None).records("train")
    assert [r["answer"] for r in limited] == ["7", "10"]
    assert arith.tools == ()
    with pytest.raises(ConfigError, match=r"infinite; bound it with environment.args.select.limit"):
        VerifiersEnvironment("akvf_endless", {}, None).records("train")
    endless = VerifiersEnvironment("akvf_endless", {"select": {"limit": 2}}, None)
    assert [r["answer"] for r in endless.records("train")] == ["0", "1"]


def test_a_prompt_with_a_worked_tool_call_converts_to_alignkits_messages():
    from alignkit.rollout.verifiers_bridge import to_dict

    prompt = [vf.UserMessage(content="2+3?"),
              vf.AssistantMessage(tool_calls=[vf.ToolCall(id="c1", name="add", arguments='{"a": 2, "b": 3}')]),
              vf.ToolMessage(tool_call_id="c1", name="add", content="5"), vf.AssistantMessage(content="5"),
              vf.UserMessage(content="4+4?")]
    converted = example({"prompt": [to_dict(m) for m in prompt]}).prompt
    assert [m.as_dict() for m in converted][1:3] == [
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
        {"role": "tool", "content": "5", "name": "add"}]


def test_single_turn_episode_ends_after_the_reply_and_scores_the_weighted_rewards(arith):
    records = arith.records("train")
    replies, messages, state = play(arith, records[0], ["4"])
    assert replies == [None]
    assert arith.reward(messages, state) == 1.0 + 0.5
    assert state["rewards"] == {"correct": 1.0, "short": 1.0} and state["metrics"] == {"chars": 1.0}
    assert state["stop_condition"] == "agent_completed" and state["errors"] == []
    replies, messages, state = play(arith, records[1], ["It is 8"])
    assert replies == [None] and arith.reward(messages, state) == 0.0


def test_guessing_game_answers_each_guess_and_ends_when_solved():
    env = VerifiersEnvironment("akvf_guess", {}, None)
    (record,) = env.records("train")
    assert record["prompt"] == [{"role": "user", "content": "Guess my number from 1 to 9."}]
    replies, messages, state = play(env, record, ["5", "2", "3"])
    assert replies == [[{"role": "user", "content": "lower"}], [{"role": "user", "content": "higher"}], None]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert env.reward(messages, state) == pytest.approx(2.0 + 1 / 3)
    assert state["stop_condition"] == "user_closed"


def test_guessing_game_stops_at_the_seats_max_turns_and_at_alignkits_end():
    env = VerifiersEnvironment("akvf_guess", {}, None)
    (record,) = env.records("train")
    replies, messages, state = play(env, record, ["5", "4", "1"])
    assert replies == [[{"role": "user", "content": "lower"}], [{"role": "user", "content": "lower"}], None]
    assert env.reward(messages, state) == pytest.approx(1 / 3) and state["stop_condition"] == "max_turns"
    # alignkit ends the episode after its first turn without calling respond: the turn is still delivered
    state = env.setup(example(record))
    messages = [*record["prompt"], assistant("9")]
    assert env.reward(messages, state) == 1.0 and state["stop_condition"] == "alignkit_ended"


def test_a_run_that_raises_fails_the_episode_without_rewards():
    env = VerifiersEnvironment("akvf_guess", {}, None)
    (record,) = env.records("train")
    replies, messages, state = play(env, record, ["five"])
    assert replies == [None]
    assert env.reward(messages, state) == 0.0
    assert state["rewards"] == {} and any("ValueError" in e for e in state["errors"])


def test_tool_calls_run_against_the_toolset_with_the_episode_state():
    from alignkit.config import EnvironmentSection
    from alignkit.rollout.env import load_environment, tool_schemas

    section = EnvironmentSection(name="verifiers:akvf_tools", tool_format="hermes")
    env = load_environment(section, tokenizer=None)
    assert isinstance(env, VerifiersEnvironment) and env.tool_timeout == section.tool_timeout
    assert [t.name for t in env.tools] == ["now", "calculator_add", "calculator_fail", "calculator_slow"]
    assert tool_schemas(env) == [t.schema for t in env.tools]
    add = env.tools[1].schema["function"]
    assert add["description"] == "Add two integers." and set(add["parameters"]["properties"]) == {"a", "b"}
    (record,) = env.records("train")
    call = '<tool_call>{"name": "calculator_add", "arguments": {"a": 20, "b": 22}}</tool_call>'
    turns = [call + '<tool_call>{"name": "now", "arguments": {}}</tool_call>',
             '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
             '<tool_call>{"name": "calculator_fail", "arguments": {}}</tool_call>', "42"]
    replies, messages, state = play(env, record, turns)
    assert replies[0] == [{"role": "tool", "name": "calculator_add", "content": "42"},
                          {"role": "tool", "name": "now", "content": "noon"}]
    assert replies[1] == [{"role": "tool", "name": "nope", "content": "error: unknown tool 'nope'"}]
    assert replies[2] == [{"role": "tool", "name": "calculator_fail",
                           "content": "Error executing tool fail: boom"}]
    assert replies[3] is None
    assert env.reward(messages, state) == pytest.approx(1.0 + 0.1 * 1)
    trace = state["verifiers"].episode.trace
    assert trace.assistant_messages[0].tool_calls[0].name == "calculator_add"
    assert len(trace.tool_messages) == 4 and trace.num_turns == 4
    assert (state["tool_calls"], state["tool_errors"]) == (4, 2)


def test_a_stop_on_the_trace_ends_the_episode_before_the_next_model_call():
    env = VerifiersEnvironment("akvf_tools", {}, None, tool_timeout=0.05)
    (record,) = env.records("train")
    bad = '<tool_call>{"name": "calculator_add", "arguments": {"a": "x"}}</tool_call>'
    slow = '<tool_call>{"name": "calculator_slow", "arguments": {}}</tool_call>'
    replies, messages, state = play(env, record, [bad, slow + "<tool_call>{oops</tool_call>", "GIVE UP " + bad])
    assert replies[0][0]["content"].startswith("Error executing tool add:")  # MCP's argument validation
    assert replies[1][0] == {"role": "tool", "name": "calculator_slow",
                             "content": "error: calculator_slow timed out after 0.05 s"}
    assert replies[1][1]["content"].startswith("error: malformed tool call (invalid JSON")
    assert replies[2] is None
    assert env.reward(messages, state) == 0.0 and state["stop_condition"] == "gave_up"


def test_episodes_run_from_inside_a_running_event_loop(arith):
    record = arith.records("train")[2]

    async def main():
        replies, messages, state = play(arith, record, ["10"])
        return replies, arith.reward(messages, state)

    assert asyncio.run(main()) == ([None], 1.5)


def test_an_episode_dropped_unscored_is_cancelled():
    env = VerifiersEnvironment("akvf_guess", {}, None)
    state = env.setup(example(env.records("train")[0]))
    runner = state["verifiers"].episode.runner
    del state
    gc.collect()
    for _ in range(100):
        if runner.done():
            break
        time.sleep(0.01)
    assert runner.cancelled()


def test_what_alignkit_cannot_play_is_refused_with_a_config_error(monkeypatch):
    env = VerifiersEnvironment("akvf_twice", {}, None)
    state = env.setup(example(env.records("train")[0]))
    with pytest.raises(ConfigError, match="second conversation"):
        env.respond([*env.records("train")[0]["prompt"], assistant("4")], state)
    with pytest.raises(ConfigError, match="2 seats"):
        VerifiersEnvironment("akvf_pair", {}, None)
    VerifiersEnvironment("akvf_arith", {"agent": {"harness": {"id": "null"}}}, None)  # the harness alignkit plays
    with pytest.raises(ConfigError, match="harness 'bash'"):
        VerifiersEnvironment("akvf_arith", {"agent": {"harness": {"id": "bash"}}}, None)
    with pytest.raises(ConfigError, match="max_output_tokens"):
        VerifiersEnvironment("akvf_arith", {"agent": {"max_output_tokens": 10}}, None)
    with pytest.raises(ConfigError, match="not found"):
        VerifiersEnvironment("akvf_missing", {}, None)
    with pytest.raises(ConfigError, match=r'^environment.name = "verifiers:akvf_arith": environment.args.eval must'):
        VerifiersEnvironment("akvf_arith", {"eval": {"split": "test"}}, None)
    monkeypatch.setitem(sys.modules, "verifiers", None)
    with pytest.raises(ConfigError, match=r"pip install 'alignkit\[verifiers\]'"):
        VerifiersEnvironment("akvf_arith", {}, None)
