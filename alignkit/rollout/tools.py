"""Tools for multi-turn rollouts: Python functions the policy may call, the calls parsed out of its text, and
the calls run into the tool messages it reads next.

A tool is a plain typed function with a Google-style docstring (an ``Args:`` line per argument); its JSON schema,
the one chat templates render (``apply_chat_template(tools=[...])``), is read from those by transformers.

Running a call never raises for the model's mistakes: a malformed call, an unknown tool, bad arguments, a tool
that raises or hangs all become an ``"error: ..."`` tool message, because in RL they are the policy's to learn
from, not the run's to die of. Only the user's own mistakes (a tool that cannot be described) raise ``ToolError``.

Isolation: none beyond the timeout. A tool runs in a daemon thread of this process; one that overruns its
timeout is abandoned, not killed: it keeps running in the background (holding what it holds) until it returns
or the process exits. Tools that may hang on purpose, or touch what they should not, belong in a subprocess or
sandbox of their own, wrapped as a function here.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers.utils import get_json_schema

from ..data.templates import BUILTIN_TOOL_MARK
from ..rewards import load_function


class ToolError(ValueError):
    """A tool that cannot be loaded or described (the user's to fix, unlike the model's bad calls)."""


@dataclass(frozen=True)
class Tool:
    name: str  # the function's name, the one the model calls it by
    fn: Callable[..., Any]
    schema: dict  # {"type": "function", "function": {"name", "description", "parameters"}}, as templates expect


@dataclass(frozen=True)
class ToolCall:
    name: str  # "" when the call text named no tool
    arguments: dict  # keyword arguments, decoded from JSON
    error: str | None = None  # why the call text was malformed (bad JSON, no name, arguments not an object)


# ---------------------------------------------------------------------------------------------------- tools
def make_tool(fn: Callable[..., Any]) -> Tool:
    """``fn`` -> a ``Tool`` with its schema read from its type hints and docstring (transformers'
    ``get_json_schema``), so the description the model sees is the one written next to the code."""
    name = getattr(fn, "__name__", repr(fn))
    try:
        schema = get_json_schema(fn)
    except Exception as exc:  # transformers raises plain Exception subclasses for each missing piece
        raise ToolError(f"tool {name}: cannot build its schema ({exc}); every argument needs a type hint and an "
                        f"Args: line in the docstring") from None
    return Tool(name=schema["function"]["name"], fn=fn, schema=schema)


def tools_by_name(tools: Sequence[Tool]) -> dict[str, Tool]:
    """name -> tool, refusing two tools of one name (the model could not tell which it called)."""
    out: dict[str, Tool] = {}
    for tool in tools:
        if tool.name in out:
            raise ToolError(f"two tools are named {tool.name}; tool names must be unique")
        out[tool.name] = tool
    return out


def load_tools(references: Sequence[str]) -> tuple[Tool, ...]:
    """``package.module:function`` or ``path/to/file.py:function`` references -> tools, names unique."""
    tools = tuple(make_tool(load_function(ref, what="tool", error=ToolError)) for ref in references)
    tools_by_name(tools)
    return tools


# -------------------------------------------------------------------------------------------------- parsing
def _call_from_json(obj: Any, argument_keys: tuple[str, ...] = ("arguments",)) -> ToolCall:
    """A decoded ``{"name": ..., "arguments": {...}}`` -> a ``ToolCall``; anything else -> a malformed one.
    Arguments given as a JSON string holding an object are decoded (some models double-encode them); missing
    arguments mean none (a tool without parameters)."""
    if not isinstance(obj, dict):
        return ToolCall("", {}, f"expected a JSON object, got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall("", {}, 'no "name" string')
    key = next((k for k in argument_keys if k in obj), None)
    arguments = obj[key] if key else {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            return ToolCall(name, {}, f"{key} string is not valid JSON: {exc}")
    if not isinstance(arguments, dict):
        return ToolCall(name, {}, f'"{key}" must be an object, got {type(arguments).__name__}')
    return ToolCall(name, arguments)


def _call_from_text(text: str, argument_keys: tuple[str, ...] = ("arguments",)) -> ToolCall:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return ToolCall("", {}, f"invalid JSON: {exc}")
    return _call_from_json(obj, argument_keys)


def parse_hermes(text: str) -> list[ToolCall]:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks anywhere in the text (Hermes, Qwen2.5,
    Qwen3, and alignkit's built-in format). An opened tag that is never closed is a malformed call."""
    calls, position = [], 0
    while (opened := text.find("<tool_call>", position)) >= 0:
        start = opened + len("<tool_call>")
        end = text.find("</tool_call>", start)
        if end < 0:
            calls.append(ToolCall("", {}, "<tool_call> is never closed by </tool_call>"))
            break
        calls.append(_call_from_text(text[start:end].strip()))
        position = end + len("</tool_call>")
    return calls


def parse_mistral(text: str) -> list[ToolCall]:
    """``[TOOL_CALLS]`` then a JSON list of ``{"name", "arguments"}`` objects (Mistral's v3 tokenizer format);
    text after the list (an end-of-sequence token) is ignored."""
    marker = text.find("[TOOL_CALLS]")
    if marker < 0:
        return []
    rest = text[marker + len("[TOOL_CALLS]"):].lstrip()
    try:
        obj, _ = json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError as exc:
        return [ToolCall("", {}, f"invalid JSON after [TOOL_CALLS]: {exc}")]
    items = obj if isinstance(obj, list) else [obj]
    return [_call_from_json(item) for item in items]


def parse_llama3_json(text: str) -> list[ToolCall]:
    """Llama 3.1 JSON tool calling: the whole message is one ``{"name": ..., "parameters": {...}}`` object
    ("arguments" accepted too). Any other text is a plain answer, not an error, except text that starts like a
    call (``{"name"``) and does not parse: that is a malformed call."""
    body = text.strip().removeprefix("<|python_tag|>").strip()
    looks_like_call = re.match(r'\{\s*"name"', body) is not None
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return [ToolCall("", {}, f"invalid JSON: {exc}")] if looks_like_call else []
    if not (isinstance(obj, dict) and "name" in obj and ("parameters" in obj or "arguments" in obj)):
        return []
    return [_call_from_json(obj, ("parameters", "arguments"))]


_LITERAL_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def _literal(node: ast.AST) -> Any:
    """A Python literal, also accepting JSON's true / false / null (templates write values with tojson)."""
    if isinstance(node, ast.Name) and node.id in _LITERAL_NAMES:
        return _LITERAL_NAMES[node.id]
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    return ast.literal_eval(node)


def parse_pythonic(text: str) -> list[ToolCall]:
    """Llama 3.2's "pythonic" tool calls, and alignkit's built-in format: the whole message is a list of calls
    with keyword arguments, ``[calculator(expression="347 * 28"), other(n=2)]`` (a third of the tokens of Hermes
    JSON, which small models feel). Other text is a plain answer; text that starts like a call list
    (``[name(``) and does not parse is a malformed call."""
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not re.match(r"\[\s*[A-Za-z_][\w.]*\s*\(", body):
        return []
    try:
        tree = ast.parse(body, mode="eval").body
    except SyntaxError as exc:
        return [ToolCall("", {}, f"not a list of calls: {exc.msg}")]
    if not isinstance(tree, ast.List):
        return [ToolCall("", {}, "not a list of calls")]
    calls = []
    for node in tree.elts:
        if not (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)) and not node.args):
            calls.append(ToolCall("", {}, "each call must be name(argument=value, ...) with keyword arguments"))
            continue
        try:
            arguments = {k.arg: _literal(k.value) for k in node.keywords if k.arg is not None}
        except (ValueError, TypeError, SyntaxError):
            calls.append(ToolCall(ast.unparse(node.func), {}, "argument values must be literals"))
            continue
        calls.append(ToolCall(ast.unparse(node.func), arguments))
    return calls


TOOL_CALL_FORMATS: dict[str, Callable[[str], list[ToolCall]]] = {
    "pythonic": parse_pythonic,
    "hermes": parse_hermes,
    "mistral": parse_mistral,
    "llama3_json": parse_llama3_json,
}


def parse_tool_calls(text: str, fmt: str) -> list[ToolCall]:
    """The tool calls in one assistant turn's text, in order; ``[]`` when it is a plain answer."""
    if fmt not in TOOL_CALL_FORMATS:
        raise ToolError(f"unknown tool call format {fmt!r} (have: {', '.join(TOOL_CALL_FORMATS)})")
    return TOOL_CALL_FORMATS[fmt](text)


def detect_tool_format(tokenizer: Any) -> str:
    """The tool call format a tokenizer's chat template teaches, read from the template text: ``"pythonic"`` for
    alignkit's built-in template (and templates that show ``[name(...)]`` calls); ``"hermes"`` when the template
    shows none (the most common format)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates ({"default": ..., "tool_use": ...}): read them all
        template = "\n".join(str(t) for t in template.values())
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or ('"parameters"' in template and "ipython" in template):
        return "llama3_json"
    if "[func_name1(" in template or BUILTIN_TOOL_MARK in template:
        return "pythonic"
    return "hermes"


# -------------------------------------------------------------------------------------------------- running
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _type_error(name: str, value: Any, spec: dict) -> str | None:
    """Why ``value`` does not fit the argument's schema's primitive type, or None (unknown types pass: the
    check is a courtesy message for the model, not validation the tool may rely on)."""
    types = spec.get("type")
    if types is None:
        return None
    types = [types] if isinstance(types, str) else list(types)
    if spec.get("nullable"):
        types.append("null")
    if any(_JSON_TYPES.get(t, lambda v: True)(value) for t in types):
        return None
    return f"{name} must be {' or '.join(types)}, got {type(value).__name__} {json.dumps(value, default=str)}"


def check_arguments(tool: Tool, arguments: dict) -> str | None:
    """Why ``arguments`` cannot be passed to ``tool`` (missing, unexpected, wrong JSON type), or None."""
    try:
        inspect.signature(tool.fn).bind(**arguments)
    except TypeError as exc:
        return str(exc)
    properties = tool.schema["function"].get("parameters", {}).get("properties", {})
    for name, value in arguments.items():
        reason = _type_error(name, value, properties.get(name, {}))
        if reason:
            return reason
    return None


def _to_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result)
    except (TypeError, ValueError):
        return str(result)


def _call_with_timeout(fn: Callable[..., Any], arguments: dict, timeout: float) -> tuple[str, Any]:
    """``("ok", result)``, ``("raised", exception)`` or ``("timeout", None)``. A daemon thread per call, not a
    ThreadPoolExecutor: its workers are joined at interpreter exit, so one hung tool would hang the run's end,
    and a shared pool would queue the next call behind it."""
    outcome: list[tuple[str, Any]] = []

    def target() -> None:
        try:
            outcome.append(("ok", fn(**arguments)))
        except BaseException as exc:  # SystemExit too: the thread would end silently and look like a hang
            outcome.append(("raised", exc))

    thread = threading.Thread(target=target, name=f"alignkit-tool-{getattr(fn, '__name__', 'fn')}", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else ("timeout", None)


def run_tool_call(call: ToolCall, tools: Mapping[str, Tool], timeout: float) -> str:
    """One call -> the tool message content the model reads next; every failure is an ``"error: ..."`` message,
    never an exception (see the module docstring)."""
    if call.error is not None:
        return f"error: malformed tool call ({call.error})"
    tool = tools.get(call.name)
    if tool is None:
        return f"error: unknown tool {call.name!r} (available: {', '.join(sorted(tools)) or 'none'})"
    reason = check_arguments(tool, call.arguments)
    if reason:
        return f"error: bad arguments for {call.name}: {reason}"
    status, value = _call_with_timeout(tool.fn, call.arguments, timeout)
    if status == "timeout":
        return f"error: {call.name} timed out after {timeout:g} s"
    if status == "raised":
        return f"error: {call.name} raised {type(value).__name__}: {value}"
    return _to_text(value)


def run_tool_calls(calls: Sequence[ToolCall], tools: Mapping[str, Tool], timeout: float) -> list[str]:
    """Several calls, one after another in order (a later call may depend on an earlier one's side effects)."""
    return [run_tool_call(call, tools, timeout) for call in calls]


# ------------------------------------------------------------------------------------------------ statistics
def is_error(result: str) -> bool:
    """Whether a tool message reports a failure (every failure message starts with ``error:``)."""
    return result.startswith("error:")


def tool_counts(results: Sequence[str]) -> dict[str, int]:
    """``{"calls": n, "errors": k}`` over the tool messages of one episode, for logging."""
    return {"calls": len(results), "errors": sum(is_error(r) for r in results)}
