"""Tools for multi-turn rollouts: schemas from typed functions, loading by reference, tool call parsing in each
format, and running calls into the messages the model reads (every model mistake an error message, not a raise)."""

import json
import time
from types import SimpleNamespace

import pytest

from alignkit.rollout.tools import (
    TOOL_CALL_FORMATS,
    ToolCall,
    ToolError,
    detect_tool_format,
    is_error,
    load_tools,
    make_tool,
    parse_tool_calls,
    run_tool_call,
    run_tool_calls,
    tool_counts,
    tools_by_name,
)

TOOL_SOURCE = '''
def add(a: int, b: float = 1.0) -> float:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def shout(text: str) -> str:
    """Upper-case some text.

    Args:
        text: What to shout.
    """
    return text.upper()
'''


def add(a: int, b: float = 1.0) -> float:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def pair(x: int, flag: bool) -> dict:
    """Return both arguments as an object.

    Args:
        x: A number.
        flag: A switch.
    """
    return {"x": x, "flag": flag}


def fail(reason: str) -> str:
    """Always raise.

    Args:
        reason: The message to raise with.
    """
    raise ValueError(reason)


def nap(seconds: float) -> str:
    """Sleep, then answer.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "awake"


def opaque() -> object:
    """Return something JSON cannot encode."""
    return _Opaque()


class _Opaque:
    def __str__(self) -> str:
        return "<opaque>"


TOOLS = tools_by_name([make_tool(f) for f in (add, pair, fail, nap, opaque)])


# ---------------------------------------------------------------------------------------------------- tools
def test_schema_from_type_hints_and_docstring():
    tool = make_tool(add)
    assert tool.name == "add" and tool.fn is add
    assert tool.schema["type"] == "function"
    function = tool.schema["function"]
    assert function["name"] == "add"
    assert function["description"] == "Add two numbers."
    assert function["parameters"] == {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "description": "The first number."},
            "b": {"type": "number", "description": "The second number."},
        },
        "required": ["a"],
    }


def test_function_without_args_section_is_refused_by_name():
    def undocumented(a: int) -> int:
        """Does something."""
        return a

    with pytest.raises(ToolError, match="tool undocumented: cannot build its schema .* Args: line in the docstring"):
        make_tool(undocumented)


def test_function_without_type_hint_is_refused_by_name():
    def untyped(a):
        """Does something.

        Args:
            a: A thing.
        """
        return a

    with pytest.raises(ToolError, match="tool untyped: .*every argument needs a type hint"):
        make_tool(untyped)


def test_load_tools_from_module_and_file(tmp_path, monkeypatch):
    (tmp_path / "my_tools_mod.py").write_text(TOOL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    (shout,) = load_tools(["my_tools_mod:shout"])
    assert shout.name == "shout" and shout.fn("hi") == "HI"

    path = tmp_path / "file_tools.py"
    path.write_text(TOOL_SOURCE)
    tools = load_tools([f"{path}:add", f"{path}:shout"])
    assert [t.name for t in tools] == ["add", "shout"]
    assert tools[0].fn(2, 3) == 5


def test_load_tools_refuses_duplicates_and_bad_references(tmp_path):
    path = tmp_path / "file_tools.py"
    path.write_text(TOOL_SOURCE)
    with pytest.raises(ToolError, match="two tools are named add"):
        load_tools([f"{path}:add", f"{path}:add"])
    with pytest.raises(ToolError, match="has no tool named nope"):
        load_tools([f"{path}:nope"])


# -------------------------------------------------------------------------------------------------- parsing
def test_hermes_single_and_double_calls():
    text = 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    assert parse_tool_calls(text, "hermes") == [ToolCall("add", {"a": 2, "b": 3})]
    two = ('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call> and '
           '<tool_call>{"name": "nap", "arguments": {"seconds": 0}}</tool_call>')
    assert parse_tool_calls(two, "hermes") == [ToolCall("add", {"a": 1}), ToolCall("nap", {"seconds": 0})]


def test_hermes_arguments_as_json_string_are_decoded():
    text = '<tool_call>{"name": "add", "arguments": "{\\"a\\": 4}"}</tool_call>'
    assert parse_tool_calls(text, "hermes") == [ToolCall("add", {"a": 4})]


def test_hermes_no_call_is_empty():
    assert parse_tool_calls("The answer is 5.", "hermes") == []


@pytest.mark.parametrize("text,reason", [
    ('<tool_call>{"name": "add", "arguments": {"a": 2}</tool_call>', "invalid JSON"),
    ('<tool_call>{"name": "add", "arguments": {"a": 2}}', "<tool_call> is never closed"),
    ('<tool_call>{"arguments": {"a": 2}}</tool_call>', 'no "name" string'),
    ('<tool_call>{"name": "add", "arguments": [2]}</tool_call>', '"arguments" must be an object, got list'),
    ('<tool_call>{"name": "add", "arguments": "{a: 2}"}</tool_call>', "arguments string is not valid JSON"),
])
def test_hermes_malformed_calls_carry_the_reason(text, reason):
    (call,) = parse_tool_calls(text, "hermes")
    assert call.error is not None and reason in call.error
    assert run_tool_call(call, TOOLS, 1.0).startswith("error: malformed tool call (")


def test_mistral_good_and_malformed():
    text = '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1}}, {"name": "pair", "arguments": {"x": 2, "flag": true}}]</s>'
    assert parse_tool_calls(text, "mistral") == [ToolCall("add", {"a": 1}), ToolCall("pair", {"x": 2, "flag": True})]
    assert parse_tool_calls("No tools needed: 5.", "mistral") == []
    (bad,) = parse_tool_calls('[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1}', "mistral")
    assert bad.error.startswith("invalid JSON after [TOOL_CALLS]")


def test_llama3_json_good_plain_and_malformed():
    assert parse_tool_calls('{"name": "add", "parameters": {"a": 1, "b": 2}}', "llama3_json") == [
        ToolCall("add", {"a": 1, "b": 2})]
    assert parse_tool_calls('<|python_tag|>{"name": "add", "arguments": {"a": 1}}', "llama3_json") == [
        ToolCall("add", {"a": 1})]
    assert parse_tool_calls("The answer is 5.", "llama3_json") == []
    assert parse_tool_calls('{"answer": 5}', "llama3_json") == []
    (bad,) = parse_tool_calls('{"name": "add", "parameters": {"a": 1}', "llama3_json")
    assert bad.error.startswith("invalid JSON")


def test_unknown_format_names_the_known_ones():
    with pytest.raises(ToolError) as err:
        parse_tool_calls("", "xml")
    assert str(err.value) == "unknown tool call format 'xml' (have: pythonic, hermes, mistral, llama3_json)"
    assert set(TOOL_CALL_FORMATS) == {"pythonic", "hermes", "mistral", "llama3_json"}


@pytest.mark.parametrize("template,fmt", [
    ("{% for m in messages %}<tool_call>\n{{ m }}\n</tool_call>{% endfor %}", "hermes"),
    ("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}", "mistral"),
    ("{{- '<|python_tag|>' + tool_call.name }}", "llama3_json"),
    ('{{ "ipython" }} {"name": function name, "parameters": dictionary}', "llama3_json"),
    ("{% for m in messages %}{{ m.content }}{% endfor %}", "hermes"),
    (None, "hermes"),
    ({"default": "{{ m }}", "tool_use": "[TOOL_CALLS]"}, "mistral"),
])
def test_detect_tool_format_from_template(template, fmt):
    assert detect_tool_format(SimpleNamespace(chat_template=template)) == fmt


# -------------------------------------------------------------------------------------------------- running
def test_good_calls_and_json_results():
    assert run_tool_call(ToolCall("add", {"a": 2, "b": 3}), TOOLS, 1.0) == "5"
    assert run_tool_call(ToolCall("pair", {"x": 1, "flag": False}), TOOLS, 1.0) == json.dumps({"x": 1, "flag": False})
    assert run_tool_call(ToolCall("nap", {"seconds": 0}), TOOLS, 1.0) == "awake"  # a str as is, not JSON-quoted
    assert run_tool_call(ToolCall("opaque", {}), TOOLS, 1.0) == "<opaque>"


@pytest.mark.parametrize("call,message", [
    (ToolCall("mul", {"a": 1}), "error: unknown tool 'mul' (available: add, fail, nap, opaque, pair)"),
    (ToolCall("add", {}), "error: bad arguments for add: missing a required argument: 'a'"),
    (ToolCall("add", {"a": 1, "c": 2}), "error: bad arguments for add: got an unexpected keyword argument 'c'"),
    (ToolCall("add", {"a": "2"}), 'error: bad arguments for add: a must be integer, got str "2"'),
    (ToolCall("add", {"a": True}), "error: bad arguments for add: a must be integer, got bool true"),
    (ToolCall("pair", {"x": 1, "flag": 1}), "error: bad arguments for pair: flag must be boolean, got int 1"),
    (ToolCall("fail", {"reason": "no such city"}), "error: fail raised ValueError: no such city"),
    (ToolCall("", {}, "invalid JSON: oops"), "error: malformed tool call (invalid JSON: oops)"),
])
def test_model_mistakes_become_error_messages(call, message):
    assert run_tool_call(call, TOOLS, 1.0) == message


def test_int_is_a_number():
    assert run_tool_call(ToolCall("add", {"a": 1, "b": 2}), TOOLS, 1.0) == "3"


def test_timeout_returns_promptly_and_the_next_call_is_not_blocked():
    start = time.perf_counter()
    assert run_tool_call(ToolCall("nap", {"seconds": 2}), TOOLS, 0.2) == "error: nap timed out after 0.2 s"
    assert run_tool_call(ToolCall("add", {"a": 1}), TOOLS, 0.2) == "2.0"
    assert time.perf_counter() - start < 1.0


def test_run_tool_calls_in_order_and_counts():
    calls = [ToolCall("add", {"a": 1}), ToolCall("mul", {}), ToolCall("fail", {"reason": "x"})]
    results = run_tool_calls(calls, TOOLS, 1.0)
    assert results == ["2.0", "error: unknown tool 'mul' (available: add, fail, nap, opaque, pair)",
                       "error: fail raised ValueError: x"]
    assert [is_error(r) for r in results] == [False, True, True]
    assert tool_counts(results) == {"calls": 3, "errors": 2}


@pytest.mark.parametrize("text,expected", [
    ('[calculator(expression="47 * 8")]', [ToolCall("calculator", {"expression": "47 * 8"})]),
    ('[f(a=1, b=true, c=null, d=[1, 2]), g()]', [ToolCall("f", {"a": 1, "b": True, "c": None, "d": [1, 2]}),
                                                ToolCall("g", {})]),
    ("The answer is 376.", []),
    ("[1, 2, 3] are numbers", []),
    ('[calculator(expression="47 * 8"', [ToolCall("", {}, "not a list of calls: '(' was never closed")]),
    ('[calculator("47 * 8")]', [ToolCall("", {}, "each call must be name(argument=value, ...) with keyword arguments")]),
    ('[calculator(expression=x)]', [ToolCall("calculator", {}, "argument values must be literals")]),
])
def test_pythonic_calls(text, expected):
    assert parse_tool_calls(text, "pythonic") == expected

