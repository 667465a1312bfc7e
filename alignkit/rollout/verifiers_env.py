"""Prime Intellect's ``verifiers`` environments played inside alignkit's rollouts: alignkit's engine writes the
assistant turns; verifiers' own code (the taskset, the env's ``run()``, stops, tools, rewards) does the rest, in
this process, with no model server, OpenAI client, interception proxy or sandbox.

This module is the adapter, ``VerifiersEnvironment``: loading, the load-time refusals, the records, setup /
respond / reward. What plays an episode under it (the background event loop, the seat standing in for verifiers'
agent, the in-process MCP tools) is in verifiers_bridge.py.

Written against verifiers 0.4.0, whose stack is ``verifiers.v1``. The 0.1-0.3 API (``vf.load_environment(env_id,
**kwargs)``, ``SingleTurnEnv`` / ``MultiTurnEnv`` / ``ToolEnv``, ``Rubric``, ``env_response`` / ``is_completed``)
no longer exists there; an older verifiers is refused with a message. In 0.4.0 an environment is:
  a taskset    a package exporting a ``vf.Taskset`` subclass through ``__all__``; ``load()`` yields ``vf.Task``s whose
               ``data`` (a ``vf.TaskData``) carries ``prompt`` (str or messages), ``system_prompt`` and task fields
               (``answer``, ...); the task scores with ``@vf.reward(weight=...)`` methods (async: ``Task.score(trace,
               runtime)`` gathers them, a sync one fails scoring), recorded in ``trace.rewards``, ``trace.reward``
               their weighted sum;
  an env       a ``vf.Env`` subclass the taskset package may export: ``run(task, agents)`` drives the conversation
               (``async with agents.player.interaction(task) as chat: seg = await chat.turn(); ... await
               chat.turn(feedback)``: the multi-turn environments, e.g. games); else ``SingleAgentEnv`` (one
               ``agents.agent.run(task)``);
  a harness    the program that plays a seat (``bash``, ``null``, ``claude_code``, ...) against a model server.
Loading is verifiers' own: ``vf.load_environment(vf.resolve_env_config({...}))``.

Config: ``environment.name: verifiers:<taskset id>`` (or ``verifiers:<env id>+<taskset id>``, verifiers' spelling
of a paired env); ``environment.args`` is the run's ``[env]`` block (``taskset: {knobs}``, ``<seat>: {max_turns:
n}``, ...) plus two alignkit keys: ``select`` (a ``vf.SelectConfig``: which tasks are the train records; an
infinite taskset needs ``select.limit``) and ``eval`` (``{taskset: {overrides}, select: {...}}``: the eval
records, from the taskset re-configured with the overrides; absent = no eval records).

How an episode maps. alignkit plays the ``null`` harness (verifiers' plain chat loop), in process:
  records   each task -> ``{"prompt": [system_prompt as a system message, prompt...], <task data fields>,
            "vf_task_key": task.key}``, the opening the ``null`` harness sends. A task without a prompt (the env
            opens the talk) or whose prompt does not end with a user turn is refused.
  setup     starts ``env.setup(agents)`` then ``env.run(task, agents)`` on a background event loop, the env's one
            seat played by alignkit; the run pauses at each model call.
  respond   hands the assistant turn to the run and returns what it sends next: tool results (the turn's tool
            calls, parsed from the text in ``tool_format``, run against the task's toolsets) or the env's next user
            turn; None once the run is over. As in verifiers, a segment ends at a reply without tool calls, the
            seat's ``max_turns`` and the task's ``@vf.stop(trace)`` predicates are checked before each model call.
  reward    ``trace.reward`` after the run, ``env.finalize`` and ``Task.score(trace, runtime=None)``. An episode
            alignkit ends first (its own turn or token cap) stops as ``alignkit_ended`` and is scored like one a
            verifiers limit ends. A run that raises fails the episode as in verifiers (logged; no task rewards).
  tools     ``vf.Toolset`` ``@vf.tool`` methods, registered as verifiers registers them on an in-process MCP
            server (same names ``<server>_<tool>``, schemas, argument validation, results and error texts; a
            malformed call or a timeout, ``tool_timeout``, gets alignkit's error text), called with the episode's
            ``trace.state``; ``self.tools`` holds their schemas for the chat template.

Supported (tests/test_verifiers_env.py): plain tasksets (``SingleAgentEnv``); ``Env`` subclasses whose ``run()``
plays one seat through ``run()`` / ``interaction()`` / ``turn()``; per-task and taskset-wide toolsets (sync and
async tools, typed state); weighted rewards; metrics; ``@vf.stop`` on the trace; ``max_turns``.
Refused with a ConfigError at load: several seats (user-sim, agentic judges), a seat pinned to any harness but
``null`` (or a taskset bundling its own; the generic default ``bash`` is replaced by ``null``: no bash tool),
token limits, LLM judges (``task.judges``), ``@vf.intercept`` and request/response stops, container tasks
(``NEEDS_CONTAINER``), toolsets that are colocated, remote (``url``), in a non-subprocess runtime or register their
own MCP handlers. At run time: a second conversation in one episode (best-of-n), a conversation that does not open
with the seed task's prompt, image content. Rewards needing a runtime are skipped (verifiers' ``score`` without
one); ``Task.setup`` / ``finalize`` run with ``runtime=None``; timeouts, retries and the network notice do not
apply; ``env.stop()`` is never called.
"""

from __future__ import annotations

from typing import Any

from ..config import ConfigError
from .env import Environment, Messages
from .tools import Tool
from .verifiers_bridge import EpisodeHandle, EpisodeRun, opening, run_on_loop, serve_toolsets, to_dict

INSTALL = "pip install 'alignkit[verifiers]'"
ALIGNKIT_KEYS = ("select", "eval")


def _import_verifiers():
    try:
        import verifiers
    except ImportError as exc:
        raise ConfigError(f"verifiers environments need the verifiers package ({exc}); {INSTALL}") from None
    try:
        import verifiers.v1 as vf
    except ImportError:
        raise ConfigError(f"verifiers {getattr(verifiers, '__version__', '?')} is installed; alignkit plays the "
                          f"verifiers.v1 stack (verifiers >= 0.4): {INSTALL}") from None
    return vf


# ------------------------------------------------------------------------------------------------- records
def _record(task) -> dict[str, Any]:
    from verifiers.v1 import TaskData

    where = f"task idx {task.data.idx}" + (f" ({task.data.name})" if task.data.name else "")
    if task.data.prompt is None:
        raise ConfigError(f"{where} has no prompt (its env opens the conversation); alignkit needs a prompt")
    prompt = [to_dict(m) for m in opening(task.data)]
    if prompt[-1]["role"] != "user":
        raise ConfigError(f"{where}: its prompt ends with a {prompt[-1]['role']} turn; alignkit prompts end "
                          "with a user turn")
    # the task's own fields (answer, info, ...) and its identity; TaskData's runtime fields (image, network, ...) stay
    fields = {k: v for k, v in task.data.model_dump(mode="json").items()
              if k not in TaskData.model_fields or (k in ("idx", "id", "name") and v is not None)}
    return {"prompt": prompt, **fields, "vf_task_key": task.key}


# ------------------------------------------------------------------------------------------------- the adapter
def _run_by_env(**_):
    raise RuntimeError("verifiers tools are run by VerifiersEnvironment.respond, not called directly")


class VerifiersEnvironment(Environment):
    """A verifiers (v1) environment as an alignkit ``Environment``; see the module docstring. ``tokenizer`` is
    taken for the loader's signature and not used (the chat template renders ``self.tools``)."""

    def __init__(self, env_id: str, args: dict, tokenizer, tool_format: str = "hermes",
                 tool_timeout: float = 5.0) -> None:
        vf = _import_verifiers()
        self.where = f'environment.name = "verifiers:{env_id}"'
        self.tool_format, self.tool_timeout = tool_format, tool_timeout
        args = dict(args or {})
        paired, _, taskset_id = env_id.rpartition("+")
        block = {key: value for key, value in args.items() if key not in ALIGNKIT_KEYS}
        block["taskset"] = {**(block.get("taskset") or {}), "id": taskset_id}
        if paired:
            block["id"] = paired
        try:  # pydantic's ValidationError is a ValueError; an unknown id is a ModuleNotFoundError
            self.venv = vf.load_environment(vf.resolve_env_config(block))
            self.tasksets = {"train": self._select(vf, self.venv.taskset, args.get("select"))}
            if args.get("eval") is not None:
                self.tasksets["eval"] = self._eval_taskset(vf, taskset_id, args["eval"])
        except ConfigError:
            raise
        except (ImportError, ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{self.where}: {type(exc).__name__}: {exc}") from None
        self.seat_config = self._check()
        self.shared_toolsets = type(self.venv.taskset).toolsets(self.venv.taskset.config)
        self.tools = run_on_loop(self._start())
        self._tasks: dict[str, Any] = {}

    @staticmethod
    def _select(vf, taskset, raw):
        return taskset.select(vf.SelectConfig.model_validate(raw)) if raw else taskset

    def _eval_taskset(self, vf, taskset_id: str, raw):
        if not isinstance(raw, dict) or set(raw) - {"taskset", "select"}:
            raise ConfigError(f"{self.where}: environment.args.eval must be a mapping with keys taskset (overrides "
                              f"of the taskset's knobs) and select, got {raw!r}")
        overrides = {**(raw.get("taskset") or {}), "id": taskset_id}
        config = vf.taskset_config_type(taskset_id).model_validate(
            vf.merge_defaults(self.venv.config.taskset, overrides))
        return self._select(vf, vf.load_taskset(config), raw.get("select"))

    def _check(self):
        """Refuse, at load, what alignkit cannot play in process (see the module docstring); the seat's config."""
        from verifiers.v1 import TaskData, Trace
        from verifiers.v1.configs.agent import agent_config_fields
        from verifiers.v1.mcp import Toolset
        from verifiers.v1.runtimes import SubprocessConfig
        from verifiers.v1.session import hook_boundary
        from verifiers.v1.utils.decorators import discover_decorated

        venv, where = self.venv, self.where
        seats = agent_config_fields(venv.config)
        if len(seats) != 1:
            raise ConfigError(f"{where}: {type(venv).__name__} has {len(seats)} seats ({', '.join(seats)}); "
                              "alignkit plays environments with one seat")
        (name, seat), = seats.items()
        harness = venv.config.agent_harnesses()[name].id
        if harness != "null" and (seat.harness is not None or harness != "bash"):
            raise ConfigError(f"{where}: seat {name} plays harness {harness!r}; alignkit plays the null harness "
                              "(the plain chat loop) only")
        tokens = [k for k in ("max_input_tokens", "max_output_tokens", "max_total_tokens") if getattr(seat, k)]
        if tokens:
            raise ConfigError(f"{where}: {name}.{tokens[0]} is not enforced by alignkit; use environment.max_tokens")
        task_cls = type(venv.taskset).task_type()
        if task_cls.NEEDS_CONTAINER:
            raise ConfigError(f"{where}: {task_cls.__name__} needs a container runtime (a sandbox)")
        probe = task_cls(TaskData.model_construct(), venv.taskset.config.task)
        if probe.config.judges:
            raise ConfigError(f"{where}: the task's LLM judges need a model client, which alignkit does not run")
        hooks = [f"@vf.intercept {fn.__name__}" for fn in discover_decorated(probe, "intercept")]
        hooks += [f"@vf.stop {fn.__name__}" for fn in probe.hooks("stop")
                  if hook_boundary(fn, allow_trace=True) is not Trace]
        if hooks:
            raise ConfigError(f"{where}: {', '.join(hooks)} read model requests/responses, which alignkit does not "
                              "route through verifiers; only @vf.stop(trace) is supported")
        for toolset in [*type(venv.taskset).toolsets(venv.taskset.config), *task_cls.toolsets(probe.config)]:
            config = getattr(toolset, "config", None)
            if (not isinstance(toolset, Toolset) or type(toolset).register is not Toolset.register
                    or getattr(config, "colocated", False) or getattr(config, "url", None)
                    or not isinstance(getattr(config, "runtime", SubprocessConfig()), SubprocessConfig)):
                raise ConfigError(f"{where}: toolset {type(toolset).__name__} is colocated, remote, in a sandbox or "
                                  "registers its own MCP handlers; alignkit runs plain @vf.tool toolsets in process")
        return seat

    async def _start(self) -> tuple[Tool, ...]:
        from verifiers.v1 import State

        await self.venv.start()
        for toolset in self.shared_toolsets:
            await toolset.setup()
        task_cls, config = type(self.venv.taskset).task_type(), self.venv.taskset.config.task
        _, schemas = await serve_toolsets([*self.shared_toolsets, *task_cls.toolsets(config)], State())
        return tuple(Tool(name=s["function"]["name"], fn=_run_by_env, schema=s) for s in schemas)

    def records(self, split: str) -> list[dict[str, Any]] | None:
        taskset = self.tasksets.get(split)
        if taskset is None:
            return None
        if not taskset.bounded:
            key = "select" if split == "train" else "eval.select"
            raise ConfigError(f"{self.where}: the taskset is infinite; bound it with environment.args.{key}.limit")
        out = []
        for task in taskset:
            self._tasks[task.key] = task
            out.append(_record(task))
        return out

    def _task(self, fields: dict):
        key = fields.get("vf_task_key")
        if key is None:
            raise ConfigError(f"{self.where}: a verifiers environment plays its own records (data.train: "
                              "environment); this prompt record has no vf_task_key")
        if key not in self._tasks:
            for split in self.tasksets:
                self.records(split)
        if key not in self._tasks:
            raise ConfigError(f"{self.where}: no task has vf_task_key {key}")
        return self._tasks[key]

    def setup(self, example) -> dict[str, Any]:
        episode = EpisodeRun(self, self._task(example.fields))
        if run_on_loop(episode.exchange(None)):
            raise ConfigError(f"{self.where}: the run sent messages before the model's first turn")
        return {"fields": dict(example.fields), "verifiers": EpisodeHandle(episode)}

    def respond(self, messages: Messages, state: dict[str, Any]) -> Messages | None:
        episode = state["verifiers"].episode
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"respond() expects the assistant's turn last, got a {messages[-1]['role']} message")
        episode.seen = len(messages)
        out = run_on_loop(episode.exchange(messages[-1]))
        episode.seen += len(out or ())
        state.update(tool_calls=episode.tool_calls, tool_errors=episode.tool_errors)
        return out

    def reward(self, messages: Messages, state: dict[str, Any]) -> float | None:
        """``trace.reward`` (the weighted task rewards plus what the env recorded). A run still in play is ended
        (``alignkit_ended``) after it is handed the last assistant turn if respond never saw it (a turn cut at
        alignkit's token limit), so the trace the rewards read ends where alignkit's conversation does."""
        episode = state["verifiers"].episode
        if not episode.runner.done():
            fresh = len(messages) > episode.seen and messages[-1]["role"] == "assistant"
            episode.seen = len(messages)
            run_on_loop(episode.exchange(messages[-1] if fresh else None, last=True))
        if not episode.runner.cancelled() and isinstance(episode.runner.exception(), ConfigError):
            raise episode.runner.exception()
        trace = episode.trace
        state.update(rewards={k: r.score for k, r in trace.rewards.items() if r is not None} if trace else {},
                     metrics=dict(trace.metrics) if trace else {},
                     stop_condition=trace.stop_condition if trace else None,
                     errors=list(dict.fromkeys(f"{e.type}: {e.message}" for e in (
                         *(trace.errors if trace else ()), *episode.record.errors))))
        return trace.reward if trace is not None else 0.0
