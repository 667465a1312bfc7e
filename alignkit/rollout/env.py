"""Environments: what answers the policy between its turns in a multi-turn episode.

An episode starts from a prompt record. The policy writes an assistant turn; the environment either answers it
with new messages (a tool's result, a user's reply) and the policy writes again, or ends the episode. Rewards come
at the end from the run's reward sources (which read the last assistant turn) and, optionally, from the
environment itself: ``reward`` at the end, ``turn_reward`` after each assistant turn.

A single-turn prompt is the one-turn case of the same path: ``SingleTurn`` ends every episode after the first
assistant turn, so PPO and GRPO without an ``environment:`` section sample exactly what they sampled before
environments existed (tests/test_episodes.py checks token for token).

Writing an environment: subclass ``Environment`` (or write any class with the same methods) and name it in the
config as ``environment.name: package.module:Class`` or ``path/to/file.py:Class``; ``environment.args`` are its
keyword arguments. Messages are plain dicts ``{"role": "assistant" | "tool" | "user", "content": str}`` (a tool
message may carry ``"name"``), the shape Hugging Face chat templates read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Messages = list[dict[str, Any]]


class Environment:
    """The interface (duck-typed: any class with these methods works). Override what your environment needs.

    ``tools``: Python functions offered to the model; their schemas (from type hints and docstrings) are given to
    the chat template, and ``ToolEnvironment`` runs the calls. ``records``: a dataset the environment carries
    itself (``data.train: environment``), as prompt records ``{"prompt": str | messages, **fields}``.
    """

    tools: Sequence[Callable] = ()

    def setup(self, example) -> dict[str, Any]:
        """The episode's state, a dict the environment owns (it starts from the prompt record's fields)."""
        return {"fields": dict(example.fields)}

    def respond(self, messages: Messages, state: dict[str, Any]) -> Messages | None:
        """The reply to the last assistant turn (``messages[-1]``): new messages, or None to end the episode."""
        return None

    def turn_reward(self, messages: Messages, state: dict[str, Any]) -> float:
        """A reward for the assistant turn just written (summed into the episode's score; PPO places it on that
        turn's last token). 0 by default."""
        return 0.0

    def reward(self, messages: Messages, state: dict[str, Any]) -> float | None:
        """The environment's own score of the finished episode (None: only the run's reward sources score)."""
        return None

    def records(self, split: str) -> list[dict[str, Any]] | None:
        """Prompt records of ``split`` ("train" or "eval") for ``data.train: environment``; None: none carried."""
        return None


class SingleTurn(Environment):
    """One prompt -> one response: every episode ends after the first assistant turn."""


class ToolEnvironment(Environment):
    """The built-in tool-use environment: the assistant's tool calls (in ``fmt``, the chat template's format) are
    run, each result coming back as a ``tool`` message; an assistant turn without a call ends the episode (it is
    the final answer). Counts ``tool_calls`` and ``tool_errors`` in the episode's state."""

    def __init__(self, tools: Sequence, fmt: str = "hermes", timeout: float = 5.0) -> None:
        from .tools import make_tool

        self.tools = tuple(tools)
        self.by_name = {t.name: t for t in (make_tool(fn) if callable(fn) else fn for fn in self.tools)}
        self.fmt, self.timeout = fmt, timeout

    def respond(self, messages: Messages, state: dict[str, Any]) -> Messages | None:
        from .tools import is_error, parse_tool_calls, run_tool_call

        calls = parse_tool_calls(messages[-1]["content"], self.fmt)
        if not calls:
            return None
        replies = []
        for call in calls:
            result = run_tool_call(call, self.by_name, self.timeout)
            state["tool_calls"] = state.get("tool_calls", 0) + 1
            state["tool_errors"] = state.get("tool_errors", 0) + int(is_error(result))
            replies.append({"role": "tool", "name": call.name or "unknown", "content": result})
        return replies


@dataclass(frozen=True)
class Play:
    """How episodes are played: the environment and the limits of one episode."""

    env: Environment = field(default_factory=SingleTurn)
    max_turns: int = 1  # assistant turns at most
    max_tokens: int | None = None  # tokens after the prompt, policy's and environment's; None = max_turns x max_new_tokens

    @property
    def multi_turn(self) -> bool:
        return self.max_turns > 1

    @property
    def tools(self) -> list[dict] | None:
        return tool_schemas(self.env)

    def token_budget(self, max_new_tokens: int) -> int:
        """The most tokens an episode can hold after its prompt: one turn's budget, or the episode's."""
        return self.max_tokens or self.max_turns * max_new_tokens


def play_of(section, tokenizer) -> Play:
    """The ``Play`` of a recipe's ``environment:`` section (single-turn when it names nothing)."""
    if not section.multi_turn:
        return Play()
    play = Play(load_environment(section, tokenizer), section.max_turns, section.max_tokens)
    if play.tools:
        check_renders_tools(tokenizer, play.tools)
    return play


def check_renders_tools(tokenizer, tools: list[dict]) -> None:
    """A chat template that ignores ``tools=`` would hide the tools from the model: refuse it, naming the fix."""
    from ..config import ConfigError
    from ..data.templates import render

    ask = [{"role": "user", "content": "hi"}]
    if render(tokenizer, ask, True, tools) == render(tokenizer, ask, True):
        raise ConfigError("environment.tools: this tokenizer's chat template does not render tools (it ignores "
                          "apply_chat_template(tools=...)); use a model whose template supports tools, or remove "
                          "chat_template from its tokenizer_config.json to get alignkit's built-in template, whose "
                          "tool format the README documents")


def load_environment(section, tokenizer) -> Environment:
    """The environment an ``environment:`` config section names: ``name`` (a class, built with ``args``; or
    ``verifiers:<env id>`` for a verifiers environment, to which ``tools`` are added), else the built-in
    ``ToolEnvironment`` over ``tools``, else ``SingleTurn``."""
    from ..config import ConfigError
    from ..rewards import load_function
    from .tools import detect_tool_format, load_tools

    tools = load_tools(section.tools) if section.tools else ()
    fmt = detect_tool_format(tokenizer) if section.tool_format == "auto" else section.tool_format
    if section.name is None:
        return ToolEnvironment(tools, fmt, section.tool_timeout) if tools else SingleTurn()
    if section.name.startswith("verifiers:"):
        from .verifiers_env import VerifiersEnvironment

        return VerifiersEnvironment(section.name.removeprefix("verifiers:"), section.args, tokenizer,
                                    tool_format=fmt, tool_timeout=section.tool_timeout)
    cls = load_function(section.name, "class", ConfigError, label=f'environment.name = "{section.name}"')
    try:
        env = cls(**section.args)
    except TypeError as exc:
        raise ConfigError(f'environment.name = "{section.name}": {exc} (check environment.args)') from None
    missing = [m for m in ("setup", "respond") if not callable(getattr(env, m, None))]
    if missing:
        raise ConfigError(f'environment.name = "{section.name}": {type(env).__name__} has no method '
                          f"{', '.join(missing)} (see alignkit.rollout.env.Environment)")
    return env


def tool_schemas(env: Environment) -> list[dict] | None:
    """The chat template's ``tools=`` argument for ``env`` (None without tools)."""
    from .tools import make_tool

    tools = getattr(env, "tools", ())
    return [(t if not callable(t) else make_tool(t)).schema for t in tools] or None
