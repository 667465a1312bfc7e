"""The machinery under ``VerifiersEnvironment`` (verifiers_env.py): a verifiers (v1) episode run in this process,
paused at each model call and resumed by alignkit's ``respond``.

  the loop      one event loop, in a daemon thread, that every episode of the process runs on
                (``run_on_loop`` blocks alignkit's thread on a coroutine there);
  an episode    ``EpisodeRun``: ``env.setup`` + ``env.run`` + ``env.finalize`` (``Env.run_episode``) as a task on
                that loop; ``exchange`` (alignkit's side) and ``ask`` (the run's side) hand the turn back and forth
                through two futures. ``EpisodeHandle`` is what alignkit's episode state holds; dropping it cancels
                a paused run;
  the seat      ``_Seat`` stands in for ``vf.Agent`` and ``_Chat`` for verifiers' ``Rollout`` + ``Interaction`` of
                the ``null`` harness, the model call handed to alignkit: turns, segments, ``max_turns`` and
                ``@vf.stop(trace)`` checks, ``Task.setup`` / ``finalize`` / ``score`` with ``runtime=None``;
  tools         ``serve_toolsets``: ``@vf.tool`` methods on in-process MCP servers, named and validated as
                verifiers does, called with the episode's ``trace.state`` (sync tools in threads of their own);
  messages      ``to_dict`` / ``opening``: verifiers messages as alignkit's dicts, the ``null`` harness's opening.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

from ..config import ConfigError
from .env import Messages
from .tools import parse_tool_calls

if TYPE_CHECKING:
    from .verifiers_env import VerifiersEnvironment

logger = logging.getLogger(__name__)

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    """The event loop every verifiers episode of the process runs on, in a daemon thread: an episode is a coroutine
    paused at each model call across alignkit's respond() calls, so its loop must outlive them, and a thread of
    its own leaves a loop the caller may be running untouched."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="alignkit-verifiers", daemon=True).start()
    return _LOOP


def run_on_loop(coro):
    """``coro``'s result, run on the verifiers loop (this thread waits for it)."""
    return asyncio.run_coroutine_threadsafe(coro, _loop()).result()


# ------------------------------------------------------------------------------------------------- messages
def _text(content, where: str) -> str:
    from verifiers.v1.types import ImageUrlContentPart, content_text

    if isinstance(content, list) and any(isinstance(p, ImageUrlContentPart) for p in content):
        raise ConfigError(f"{where}: image content (multi-modal) is not supported by alignkit's verifiers adapter")
    return content_text(content)


def to_dict(message) -> dict[str, Any]:
    """A verifiers message -> alignkit's ``{"role", "content"}``, + OpenAI-style ``tool_calls`` on an assistant
    turn that calls tools (a prompt's worked example), + ``name`` on a tool result."""
    out = {"role": message.role, "content": _text(message.content, f"a {message.role} message")}
    if getattr(message, "tool_calls", None):
        out["tool_calls"] = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in message.tool_calls]
    if message.role == "tool":
        out["name"] = message.name or "unknown"
    return out


def opening(data) -> list:
    """What the ``null`` harness sends first: ``system_prompt`` as a system message, then the prompt."""
    from verifiers.v1 import SystemMessage, UserMessage

    head = [SystemMessage(content=data.system_prompt)] if data.system_prompt else []
    return head + ([UserMessage(content=data.prompt)] if isinstance(data.prompt, str) else list(data.prompt or []))


# ------------------------------------------------------------------------------------------------- tools
def _in_thread(fn, *args, **kwargs) -> asyncio.Future:
    """A sync tool in a daemon thread of its own, so a slow one stalls no other episode and a timeout abandons a
    hung one (asyncio.to_thread's pool workers are joined at exit: one hung tool would hang the run's end)."""
    loop, context = asyncio.get_running_loop(), contextvars.copy_context()
    future = loop.create_future()

    def settle(result, error) -> None:
        if not future.done():  # a timed-out call's future is already cancelled
            future.set_exception(error) if error is not None else future.set_result(result)

    def target() -> None:
        try:
            result, error = context.run(fn, *args, **kwargs), None
        except BaseException as exc:  # delivered to the caller, as a raising tool's error
            result, error = None, exc
        loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=f"alignkit-vf-tool-{fn.__name__}", daemon=True).start()
    return future


def _stateful(fn, state):
    """A ``@vf.tool`` method run with ``Toolset.state`` = the episode's state (verifiers syncs it over the
    rollout's state channel; in process it is the object itself)."""
    from verifiers.v1.mcp.server import _call_state

    @functools.wraps(fn)
    async def call(*args, **kwargs):
        token = _call_state.set(state)
        try:
            return await (fn(*args, **kwargs) if inspect.iscoroutinefunction(fn) else _in_thread(fn, *args, **kwargs))
        finally:
            _call_state.reset(token)

    call.__signature__ = inspect.signature(fn)  # MCP reads the tool's parameters from it
    return call


async def serve_toolsets(toolsets, state) -> tuple[dict, list[dict]]:
    """Toolsets -> (tool name -> (in-process MCP server, its name there), OpenAI tool schemas), registered and
    named as ``Toolset.register`` and the chat program's ``connect_mcp`` do."""
    from mcp.server.mcpserver import MCPServer
    from verifiers.v1 import State
    from verifiers.v1.state import state_cls
    from verifiers.v1.utils.decorators import discover_decorated

    dispatch, schemas = {}, []
    for toolset in toolsets:
        server = MCPServer(toolset.server_name or type(toolset).__name__)
        own = state if state_cls(type(toolset)) is not State else State()
        for fn in discover_decorated(toolset, "tool"):
            server.add_tool(_stateful(fn, own), name=getattr(fn, "tool_name", None) or fn.__name__,
                            description=(fn.__doc__ or "").strip() or None)
        for tool in await server.list_tools():
            name = f"{toolset.server_name}_{tool.name}" if toolset.server_name else tool.name
            if name in dispatch:
                raise ConfigError(f"two verifiers tools are named {name!r}")
            dispatch[name] = (server, tool.name)
            schemas.append({"type": "function", "function": {"name": name, "description": tool.description or "",
                                                             "parameters": tool.input_schema}})
    return dispatch, schemas


# ------------------------------------------------------------------------------------------------- one episode
class _Chat:
    """One conversation of the seat: verifiers' ``Rollout`` + ``Interaction`` for the ``null`` harness, with the
    model call handed to alignkit (``EpisodeRun.ask``)."""

    def __init__(self, episode: EpisodeRun, task, trace) -> None:
        self.episode, self.task, self.trace = episode, task, trace
        self.started = self.over = self.failed = self.closed = False
        self.failure: BaseException | None = None
        self.toolsets, self.dispatch = [], {}

    @property
    def ok(self) -> bool:
        return not self.failed and self.trace.stop_condition is None

    def fail(self, error: BaseException) -> None:
        self.failed, self.failure = True, error
        self.trace.record_error(error)

    def node(self, message, sampled: bool = False) -> None:
        from verifiers.v1 import MessageNode

        parent = len(self.trace.nodes) - 1 if self.trace.nodes else None
        self.trace.nodes.append(MessageNode(parent=parent, message=message, sampled=sampled))

    async def open(self) -> None:
        from verifiers.v1.utils.decorators import invoke

        for message in opening(self.task.data):
            self.node(message)
        try:
            result = invoke(self.task.setup, {"trace": self.trace, "runtime": None})
            if inspect.isawaitable(result):
                await result
            self.toolsets = self.task.toolsets(self.task.config)
            for toolset in self.toolsets:
                await toolset.setup()
                await toolset.setup_task(self.task.data)
            self.dispatch, _ = await serve_toolsets([*self.episode.env.shared_toolsets, *self.toolsets], self.trace.state)
        except ConfigError:
            raise
        except Exception as exc:  # verifiers records a setup failure on the trace
            self.fail(exc)

    async def turn(self, message=None):
        """``Interaction.turn``: a prompted task speaks first (a bare ``turn()``), then each call sends one user
        turn (str or messages) and runs one segment."""
        from verifiers.v1 import UserMessage
        from verifiers.v1.dialects import parse_message

        if self.closed or self.over:
            raise RuntimeError("the exchange is over (the run ended); read interaction.trace")
        prompted = not self.started and self.task.data.prompt is not None
        if (message is None) != prompted:
            raise ValueError("a prompted task speaks first: take its opening reply with a bare turn(), then "
                             "answer it with turn(message)")
        new = None if message is None else (
            [UserMessage(content=message)] if isinstance(message, str)
            else [parse_message(m) if isinstance(m, dict) else m for m in message])
        return await self.segment(new)

    async def segment(self, new):
        """Model turns (tool calls run in between) until a reply without a tool call; terminated when the run
        could not answer (a limit, a stop, alignkit ending the episode)."""
        from verifiers.v1 import Segment, ToolMessage

        self.started = True
        turns, nodes = self.trace.num_turns, len(self.trace.nodes)
        try:
            while self.ok:
                if (stop := await self.refused()) is not None:
                    self.trace.stop(stop)
                    break
                for message in new or []:
                    self.node(message)
                reply = await self.episode.ask(new or [])
                if reply is None:
                    self.trace.stop("alignkit_ended")
                    break
                calls = self.assistant(reply)
                if not calls:
                    break
                new = [ToolMessage(tool_call_id=tc.id, name=tc.name or None, content=await self.run_tool(call))
                       for call, tc in calls]
        except ConfigError:
            raise
        except Exception as exc:  # verifiers' Rollout.step: a failed segment is recorded, not raised
            self.fail(exc)
        if self.trace.num_turns == turns:
            self.over = True
            return Segment(messages=[], terminated=True)
        messages, seen = [], False
        for node in self.trace.nodes[nodes:]:
            if node.sampled or (seen and isinstance(node.message, ToolMessage)):
                seen = True
                messages.append(node.message)
        return Segment(messages=messages)

    async def refused(self) -> str | None:
        """``RolloutSession.refused``: the seat's limits, then the task's ``@vf.stop(trace)`` predicates."""
        from verifiers.v1 import Trace
        from verifiers.v1.session import RolloutLimits, call_hook

        if (limit := RolloutLimits(max_turns=self.episode.seat_config.max_turns).reached(self.trace)) is not None:
            return limit
        for stop in self.task.hooks("stop"):
            result = await call_hook(stop, {Trace: self.trace})
            if not isinstance(result, bool):
                raise TypeError(f"@stop must return bool, got {type(result).__name__}")
            if result:
                return stop.__name__
        return "alignkit_ended" if self.episode.ended else None

    def assistant(self, reply: dict) -> list:
        """Commit alignkit's turn to the trace, its text tool calls as OpenAI-style ``tool_calls``."""
        from verifiers.v1 import AssistantMessage, ToolCall

        calls = parse_tool_calls(reply["content"], self.episode.env.tool_format)
        base = f"call_{self.trace.num_turns}"
        wire = [ToolCall(id=f"{base}_{i}", name=c.name, arguments=json.dumps(c.arguments)) for i, c in enumerate(calls)]
        self.node(AssistantMessage(content=reply["content"], tool_calls=wire or None), sampled=True)
        return list(zip(calls, wire))

    async def run_tool(self, call) -> str:
        """The tool message the chat program would send back; counts ``tool_calls`` / ``tool_errors`` in the
        state, as alignkit's ToolEnvironment does, for its episode statistics."""
        text, ok = await self.call_tool(call)
        self.episode.tool_calls += 1
        self.episode.tool_errors += not ok
        return text

    async def call_tool(self, call) -> tuple[str, bool]:
        """(the chat program's error texts or MCP's result as text, whether the call succeeded)."""
        from verifiers.v1.harnesses.utils.mcp import mcp_content_to_chat_content

        if call.error is not None:
            return f"error: malformed tool call ({call.error}); resend the call", False
        if call.name not in self.dispatch:
            return f"error: unknown tool {call.name!r}", False
        server, name = self.dispatch[call.name]
        timeout = self.episode.env.tool_timeout
        try:
            result = await asyncio.wait_for(server.call_tool(name, call.arguments), timeout)
        except TimeoutError:
            return f"error: {call.name} timed out after {timeout:g} s", False
        except Exception as exc:  # MCP's server answers a raising tool with the error's text
            return str(exc), False
        content = mcp_content_to_chat_content(getattr(result, "content", []))
        if not isinstance(content, str):  # only a result with an image comes back as parts
            raise ConfigError(f"tool {call.name} returned image content (multi-modal), which is not supported")
        return content, not getattr(result, "is_error", False)

    async def close(self):
        """``Rollout.close``: toolsets down, then (unless the run failed) ``Task.finalize`` and scoring."""
        from verifiers.v1.utils.decorators import invoke

        if self.closed:
            return self.trace
        self.closed = True
        for toolset in self.toolsets:  # what a served toolset closes on exit; teardown noise keeps the trace
            with contextlib.suppress(Exception):
                await toolset._exit_stack.aclose()
        if not self.failed:
            try:
                result = invoke(self.task.finalize, {"trace": self.trace, "runtime": None})
                if inspect.isawaitable(result):
                    await result
                await self.task.score(self.trace, None)
            except Exception as exc:
                self.fail(exc)
        self.trace.is_completed, self.trace.ok = True, not self.failed
        self.episode.record.traces.append(self.trace)
        return self.trace


class _Seat:
    """The env's one agent seat, played by alignkit's policy (stands in for ``vf.Agent`` in ``vf.Agents``)."""

    def __init__(self, episode: EpisodeRun, name: str, config) -> None:
        self.episode, self.name, self.config, self.trainable = episode, name, config, True

    async def run(self, task, **_):
        """``Agent.run``: one segment on the task's prompt, then scored."""
        chat = await self.episode.open(task, self)
        if chat.ok:
            await chat.segment(None)
            if chat.ok:
                chat.trace.stop("agent_completed")
        return await chat.close()

    @contextlib.asynccontextmanager
    async def interaction(self, task, **_):
        """``Agent.interaction``: the caller is the user; leaving closes the exchange (``user_closed``)."""
        chat = await self.episode.open(task, self)
        if chat.failed:  # verifiers raises a failed opening before the context is entered
            await chat.close()
            raise chat.failure
        try:
            yield chat
        except BaseException as exc:
            chat.fail(exc)
            raise
        finally:
            if chat.ok:
                chat.trace.stop("user_closed")
            await chat.close()


class EpisodeRun:
    """One episode: the env's run on the background loop, paused at each model call. ``exchange`` (alignkit's
    side) and ``ask`` (the run's side) hand the turn back and forth through two futures."""

    def __init__(self, env: VerifiersEnvironment, task) -> None:
        from verifiers.v1 import EnvInfo, Episode, TraceTask

        self.env, self.task = env, task
        self.seat_config = env.seat_config
        self.prompt = [to_dict(m) for m in opening(task.data)]
        self.record = Episode(env=EnvInfo(id=env.venv.config.env_id), task=TraceTask(
            type=type(task).__name__, data=task.data, key=task.key, hash=task.hash))
        self.chat: _Chat | None = None
        self.runner: asyncio.Task | None = None
        self.asked: asyncio.Future | None = None  # resolved by alignkit: the next assistant turn (None: ended)
        self.answer: asyncio.Future | None = None  # resolved by the run: what alignkit shows next (None: over)
        self.ended = False  # alignkit ended the episode: refuse the next model call
        self.seen = len(self.prompt)  # messages of alignkit's conversation the run has seen
        self.tool_calls = self.tool_errors = 0

    @property
    def trace(self):
        return self.chat.trace if self.chat is not None else None

    async def open(self, task, seat: _Seat) -> _Chat:
        from verifiers.v1 import AgentInfo, Trace, TraceTask
        from verifiers.v1.state import state_cls

        if self.chat is not None:
            raise ConfigError(f"{type(self.env.venv).__name__}.run() starts a second conversation in one episode "
                              "(best-of-n, several seats); alignkit plays one conversation per episode")
        if [to_dict(m) for m in opening(task.data)] != self.prompt:
            raise ConfigError(f"{type(self.env.venv).__name__}.run() plays a task whose opening differs from the "
                              "seed task's prompt alignkit sampled from; not supported")
        trace = Trace(task=TraceTask(type=type(task).__name__, data=task.data, key=task.key, hash=task.hash),
                      state=state_cls(type(task))(), agent=AgentInfo(config=seat.config, name=seat.name,
                                                                     trainable=seat.trainable))
        self.chat = _Chat(self, task, trace)
        await self.chat.open()
        return self.chat

    async def exchange(self, reply: dict | None, last: bool = False) -> Messages | None:
        """alignkit's side: start the run (first call) or hand it ``reply``; return what the run sends next, or
        None once it is over. ``last``: alignkit ends the episode here."""
        loop = asyncio.get_running_loop()
        if self.runner is not None and self.runner.done():
            return None
        self.answer, self.ended = loop.create_future(), last
        if self.runner is None:
            self.runner = loop.create_task(self.play())
            self.runner.add_done_callback(self.finished)
        else:
            self.asked.set_result(reply)
        return await self.answer

    async def ask(self, new: list) -> dict | None:
        """The run's side of a model call: show alignkit ``new`` (what the model reads before its next turn)."""
        self.asked = asyncio.get_running_loop().create_future()
        self.answer.set_result([to_dict(m) for m in new])
        return await self.asked

    def finished(self, runner: asyncio.Task) -> None:
        if self.answer is not None and not self.answer.done():
            error = None if runner.cancelled() else runner.exception()
            self.answer.set_exception(error) if error is not None else self.answer.set_result(None)

    async def play(self) -> None:
        """``Env.run_episode`` with this seat: setup, run, finalize; a failure is the episode's, as there."""
        from verifiers.v1 import Agents, Error

        venv = self.env.venv
        try:
            agents = Agents(venv.config, lambda name, spec: _Seat(self, name, spec))
            await venv.setup(agents)
            await venv.run(self.task, agents)
            if self.chat is None:
                raise ValueError(f"{type(venv).__name__}.run() ran no agent")
            await venv.finalize(self.task, self.record)
            self.record.ok = all(t.ok for t in self.record.traces)
        except ConfigError:
            raise
        except Exception as exc:
            self.record.errors.append(Error(type=type(exc).__name__, message=str(exc)))
            logger.warning("verifiers episode failed (task %s): %s: %s", self.task.data.idx, type(exc).__name__, exc)


class EpisodeHandle:
    """What an episode's state holds. If the state is dropped before ``reward`` ends the episode, the paused run
    is cancelled (the run references the episode, never the handle, so the handle can be collected)."""

    def __init__(self, episode: EpisodeRun) -> None:
        self.episode = episode
        weakref.finalize(self, _cancel, episode).atexit = False


def _cancel(episode: EpisodeRun) -> None:
    if episode.runner is not None and not episode.runner.done():
        _loop().call_soon_threadsafe(episode.runner.cancel)

