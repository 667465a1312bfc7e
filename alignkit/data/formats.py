"""Record formats: every supported input schema, converted into a few frozen example types.

A conversation is a tuple of `Message`s. Prompts are conversations that end with a user turn; responses are
conversations of assistant turns (usually one). Converters take one raw record (a dict) and `where`, a string such
as ``"data/train.jsonl line 41"`` used to name the record in errors.

Schemas (the ``format`` config field picks one, ``auto`` detects it from the keys):

SFT
  prompt_response  ``{"prompt": str, "response": str, "system"?: str}``
  alpaca           ``{"instruction": str, "input"?: str, "output": str, "system"?: str}``
                   (input, when non-empty, is appended to the instruction after a blank line)
  messages         ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...], "tools"?: [...]}``
                   (also accepted under the key ``conversations``); must contain an assistant turn. Tool-use
                   transcripts: an assistant turn may carry ``"tool_calls"`` (OpenAI style, ``[{"type": "function",
                   "function": {"name", "arguments"}}]``, or ``[{"name", "arguments"}]``; its content may then be
                   empty), a ``"tool"`` turn holds a result (``"name"`` optional), and ``"tools"`` lists the tool
                   schemas the chat template renders (JSON schema, as ``transformers.utils.get_json_schema``)
  text             ``{"text": str}``, and ``.txt`` files (one record per paragraph: blank lines separate them):
                   plain text for continued pretraining and completion-style SFT. No chat template: the text is
                   tokenized as it is (the tokenizer's BOS if it adds one, its EOS appended), every token is
                   trained, and a document longer than ``data.max_length`` is split into chunks of that length
                   (nothing is cut away)
Preference
  pairwise         ``{"prompt": str | messages, "chosen": str | messages, "rejected": str | messages, "margin"?: float}``
                   (with message lists and no prompt, the shared leading turns become the prompt)
  hh               ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}`` (raw Anthropic HH)
  ranked           ``{"prompt": str | messages, "responses": [str | messages, ...]}`` best to worst, K >= 2
Prompt-only (RL)   ``{"prompt": str | messages, ...}``; every other field is kept in ``fields`` for reward functions
Unpaired (KTO)     ``{"prompt": str | messages, "completion": str | messages, "label": bool | 0 | 1}``
Steps (PRM)        ``{"prompt": str | messages, "steps": [str, ...], "labels": [bool | 0 | 1, ...]}`` one solution
                   in steps, one label per step (true: the step is correct); steps are non-empty strings

Conversion rules, shared by every format:

- A string is one message: prompts become a user turn, responses / completions / chosen / rejected an assistant
  turn. An optional ``"system"`` string adds a leading system turn (not for ``hh``); null, NaN and "" mean absent.
- A message list holds ``{"role", "content"}`` items, or ShareGPT ``{"from", "value"}`` items with from in
  human / gpt / system. Contents must be non-empty strings, roles one of ``ROLES``.
- A prompt must end with a user turn; a continuation (chosen, rejected, each ranked response, completion) must be
  non-empty and start with an assistant turn.
- ``pairwise`` with message lists that do not start with an assistant turn are whole dialogues: their longest
  shared leading run of turns is the prompt. A ``"prompt"`` given alongside must equal the end of that run.
- ``hh``: the text before the last ``"\\n\\nAssistant:"`` is the prompt and must be the same in chosen and
  rejected; contents are stripped of surrounding whitespace.
- KTO labels and step labels: bool, 0 / 1, or "true" / "false" (any case).
- ``chosen`` and ``rejected`` must differ, and so must the responses of a ranked list (equal ones hold no
  preference).

Every problem raises `DataError` with one line: where, the field, what was expected.
``FORMATS[kind][name]`` is the converter; `detect_format` picks ``name`` for ``format: auto``.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

ROLES = ("system", "user", "assistant", "tool")


class DataError(ValueError):
    """A record or file that cannot be used; the message names the file, the line or record, and the field."""


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str
    tool_calls: str = ""  # assistant turns: JSON list of {"type": "function", "function": {"name", "arguments"}}
    name: str = ""  # tool turns: the tool that answered (optional)

    def as_dict(self) -> dict:
        """The message as chat templates read it."""
        out: dict = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = json.loads(self.tool_calls)
        if self.name:
            out["name"] = self.name
        return out


Conversation = tuple[Message, ...]


@dataclass(frozen=True)
class SFTExample:
    messages: Conversation  # whole dialogue; assistant turns are the trainable ones
    where: str  # "file line N", for errors and reports
    tools: str = ""  # JSON list of the tool schemas the chat template renders ("" = none)


@dataclass(frozen=True)
class TextExample:
    text: str  # a plain document: tokenized as is, every token trained
    where: str


@dataclass(frozen=True)
class PreferenceExample:
    prompt: Conversation  # shared context, ends with a user turn
    chosen: Conversation  # preferred continuation (assistant turn(s))
    rejected: Conversation  # dispreferred continuation
    where: str
    margin: float | None = None  # optional strength of preference (from the record's "margin" field)


@dataclass(frozen=True)
class RankedExample:
    prompt: Conversation
    responses: tuple[Conversation, ...]  # K >= 2 continuations, best first
    where: str


@dataclass(frozen=True)
class PromptExample:
    prompt: Conversation
    where: str
    fields: dict[str, Any] = field(default_factory=dict)  # extra columns (e.g. "answer") for reward functions


@dataclass(frozen=True)
class UnpairedExample:
    prompt: Conversation
    completion: Conversation
    label: bool  # True: desirable
    where: str


@dataclass(frozen=True)
class StepsExample:
    prompt: Conversation
    steps: tuple[str, ...]  # (K,) one solution's steps, in order, K >= 1
    labels: tuple[bool, ...]  # (K,) True where the step is correct
    where: str


# ----------------------------------------------------------------------------------------------------------------
# Converters: one per format, each `(record, where) -> example`, chosen by dict lookup (FORMATS[kind][name]).

Example = SFTExample | TextExample | PreferenceExample | RankedExample | PromptExample | UnpairedExample | StepsExample
Converter = Callable[[dict, str], Example]

SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
# A message is {"role", "content"} or ShareGPT's {"from", "value"}: (speaker key, text key, speaker -> role).
_MESSAGE_KEYS = (("role", "content", {role: role for role in ROLES}), ("from", "value", SHAREGPT_ROLES))
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_LABEL_STRINGS = {"true": True, "false": False}


def _fail(where: str, field: str, problem: str) -> NoReturn:
    """Every record error has one shape, so a user can find the line and the field at a glance."""
    raise DataError(f'{where}: field "{field}" {problem}')


def _show(value: Any) -> str:
    """Quote a bad value as it looked in the file (JSON), cut short so one huge field cannot flood the error."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(value: Any) -> str:
    """Name what was found instead of the expected value; empty cells from CSV/Parquet deserve their own words."""
    if value is None:
        return "null"
    if isinstance(value, float) and math.isnan(value):
        return "NaN (an empty cell?)"
    if isinstance(value, str) and not value.strip():
        return "an empty string"
    if isinstance(value, (list, dict)) and not value:
        return f"an empty {type(value).__name__}"
    return type(value).__name__


def _absent(value: Any) -> bool:
    """Optional fields count as absent when null, NaN or "": tabular files cannot leave a cell out."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _keys(record: dict) -> str:
    """The fields a record does have, for "is missing" errors (nulls left out, as they count as missing)."""
    return ", ".join(str(key) for key, value in record.items() if value is not None) or "nothing"


def _require(record: dict, key: str, where: str, prefix: str = "") -> Any:
    """A null counts as missing: `datasets` fills columns a row lacks with None."""
    if record.get(key) is None:
        raise DataError(f'{where}: field "{prefix}{key}" is missing (have: {_keys(record)}{_misspelt(record, key)})')
    return record[key]


def _misspelt(record: dict, key: str) -> str:
    """A present field that looks like a misspelling of the missing one ("respone"), named so it can be renamed."""
    present = [k for k, value in record.items() if isinstance(k, str) and k != key and value is not None]
    close = difflib.get_close_matches(key, present, n=1, cutoff=0.8)
    return f'; rename "{close[0]}" to "{key}"?' if close else ""


def _text(value: Any, field: str, where: str) -> str:
    """Required text: a blank string is an error, not something to train on."""
    if not (isinstance(value, str) and value.strip()):
        _fail(where, field, f"must be a non-empty string, got {_describe(value)}")
    return value


def _string(record: dict, key: str, where: str) -> str:
    return _text(_require(record, key, where), key, where)


def _message(item: Any, field: str, where: str) -> Message:
    if not isinstance(item, dict):
        _fail(where, field, f'must be an object with "role" and "content", got {_describe(item)}')
    sharegpt = item.get("role") is None and item.get("from") is not None
    speaker_key, text_key, roles = _MESSAGE_KEYS[sharegpt]
    speaker = _require(item, speaker_key, where, f"{field}.")
    if not isinstance(speaker, str) or speaker not in roles:
        _fail(where, f"{field}.{speaker_key}", f"is {_show(speaker)}, expected one of {', '.join(roles)}")
    calls = _tool_calls(item.get("tool_calls"), f"{field}.tool_calls", where) if roles[speaker] == "assistant" else ""
    if calls and _absent(item.get(text_key)):
        return Message("assistant", "", calls)  # a turn that only calls tools
    text = _require(item, text_key, where, f"{field}.")
    name = item.get("name") if roles[speaker] == "tool" and isinstance(item.get("name"), str) else ""
    return Message(roles[speaker], _text(text, f"{field}.{text_key}", where), calls, name)


def _tool_calls(value: Any, field: str, where: str) -> str:
    """OpenAI-style tool calls (or bare {"name", "arguments"} items) -> one normalised JSON list; arguments given
    as a JSON string are decoded, so every template sees an object."""
    if _absent(value) or value == []:
        return ""
    if not isinstance(value, list):
        _fail(where, field, f"must be a list of tool calls, got {_describe(value)}")
    calls = []
    for i, item in enumerate(value):
        call = item.get("function", item) if isinstance(item, dict) else None
        if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"]):
            _fail(where, f"{field}[{i}]", 'must be {"type": "function", "function": {"name": str, "arguments": {...}}}')
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                _fail(where, f"{field}[{i}].arguments", f"is not valid JSON: {_show(arguments)}")
        if not isinstance(arguments, dict):
            _fail(where, f"{field}[{i}].arguments", f"must be an object, got {_describe(arguments)}")
        calls.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return json.dumps(calls, ensure_ascii=False)


def _tools(record: dict, where: str) -> str:
    """A record's tool schemas (a list, or a JSON string of one, as some hub datasets store them)."""
    value = record.get("tools")
    if _absent(value) or value == []:
        return ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            _fail(where, "tools", f"is not valid JSON: {_show(value)}")
    if not (isinstance(value, list) and all(isinstance(t, dict) for t in value)):
        _fail(where, "tools", f"must be a list of tool schemas, got {_describe(value)}")
    return json.dumps(value, ensure_ascii=False)


def _message_list(value: Any, field: str, where: str) -> Conversation:
    if not (isinstance(value, list) and value):
        _fail(where, field, f"must be a non-empty list of messages, got {_describe(value)}")
    return tuple(_message(item, f"{field}[{i}]", where) for i, item in enumerate(value))


def _conversation(value: Any, field: str, where: str, role: str) -> Conversation:
    """A string is shorthand for one message in `role`; a list is a full message list."""
    if isinstance(value, str):
        return (Message(role, _text(value, field, where)),)
    if isinstance(value, list):
        return _message_list(value, field, where)
    _fail(where, field, f"must be a non-empty string or a list of messages, got {_describe(value)}")


def _with_system(record: dict, conversation: Conversation, where: str) -> Conversation:
    """The optional "system" field becomes a leading system turn; two system prompts would be ambiguous."""
    system = record.get("system")
    if _absent(system):
        return conversation
    text = _text(system, "system", where)
    if conversation[0].role == "system":
        _fail(where, "system", "is given but the conversation already starts with a system turn")
    return (Message("system", text), *conversation)


def _finish_prompt(record: dict, prompt: Conversation, field: str, where: str) -> Conversation:
    """Prompts end with a user turn: the chat template appends the assistant header for generation after it."""
    prompt = _with_system(record, prompt, where)
    if prompt[-1].role != "user":
        _fail(where, field, f'must end with a user turn, got a final "{prompt[-1].role}" turn')
    return prompt


def _prompt(record: dict, where: str) -> Conversation:
    prompt = _conversation(_require(record, "prompt", where), "prompt", where, "user")
    return _finish_prompt(record, prompt, "prompt", where)


def _continuation(conversation: Conversation, field: str, where: str) -> Conversation:
    """What the model is scored on must be the model's own turn, right after the prompt."""
    if not conversation:
        _fail(where, field, "is empty (no turns after the prompt)")
    if conversation[0].role != "assistant":
        _fail(where, field, f'must start with an assistant turn, got "{conversation[0].role}"')
    return conversation


def _response(record: dict, key: str, where: str) -> Conversation:
    return _continuation(_conversation(_require(record, key, where), key, where, "assistant"), key, where)


def _margin(record: dict, where: str) -> float | None:
    value = record.get("margin")
    if _absent(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(where, "margin", f"must be a number, got {_describe(value)}")
    return float(value)


def _label(value: Any, where: str, field: str = "label") -> bool:
    """KTO labels arrive as bools, 0/1 (CSV, pandas) or "true"/"false" strings; guessing beyond that hides bugs."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_STRINGS:
        return _LABEL_STRINGS[value.strip().lower()]
    _fail(where, field, f'is {_show(value)}, expected true/false, 0/1 or "true"/"false"')


def to_prompt_response(record: dict, where: str) -> SFTExample:
    """{"prompt", "response", "system"?} -> [system?, user, assistant]; strings only (dialogues use messages)."""
    prompt = _with_system(record, (Message("user", _string(record, "prompt", where)),), where)
    return SFTExample((*prompt, Message("assistant", _string(record, "response", where))), where)


def to_alpaca(record: dict, where: str) -> SFTExample:
    """Alpaca keeps the optional "input" apart from the instruction; the model sees them as one user turn."""
    instruction = _string(record, "instruction", where)
    if not _absent(record.get("input")):
        instruction = f"{instruction}\n\n{_string(record, 'input', where)}"
    prompt = _with_system(record, (Message("user", instruction),), where)
    return SFTExample((*prompt, Message("assistant", _string(record, "output", where))), where)


def to_text(record: dict, where: str) -> TextExample:
    """{"text"}: a plain document (continued pretraining, completion-style SFT)."""
    return TextExample(_string(record, "text", where), where)


def to_messages(record: dict, where: str) -> SFTExample:
    """A whole dialogue under "messages" (or ShareGPT's "conversations"); it must hold a turn to train on."""
    key = next((key for key in ("messages", "conversations") if record.get(key) is not None), "messages")
    messages = _with_system(record, _message_list(_require(record, key, where), key, where), where)
    if not any(message.role == "assistant" for message in messages):
        _fail(where, key, "has no assistant turn (nothing to train on)")
    return SFTExample(messages, where, _tools(record, where))


def _shared_prefix(chosen: Conversation, rejected: Conversation) -> int:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return n


def _split_dialogues(
    record: dict, chosen: Conversation, rejected: Conversation, where: str
) -> tuple[Conversation, Conversation, Conversation]:
    """Whole dialogues for chosen and rejected: the turns both begin with are the prompt.

    A "prompt" field next to whole dialogues (as in HuggingFaceH4/ultrafeedback_binarized) must be the end of
    those shared turns; it is checked, not used, so the two can never silently disagree.
    """
    n = _shared_prefix(chosen, rejected)
    shared = chosen[:n]
    if record.get("prompt") is not None:
        given = _conversation(record["prompt"], "prompt", where, "user")
        if n < len(given) or shared[n - len(given) :] != given:
            _fail(where, "prompt", f'does not match the {n} leading turns "chosen" and "rejected" share')
    if not shared:
        _fail(where, "chosen", 'and "rejected" share no leading turns and no "prompt" is given')
    chosen_rest = _continuation(chosen[n:], f"chosen[{n}:]", where)
    rejected_rest = _continuation(rejected[n:], f"rejected[{n}:]", where)
    return _finish_prompt(record, shared, f"chosen[:{n}]", where), chosen_rest, rejected_rest


def _same_response(where: str, field: str, earlier: str) -> NoReturn:
    """Two equal responses carry no preference: a pair (or a ranking) of them teaches noise, never a signal."""
    _fail(where, field, f'equals "{earlier}"; a preference needs two different responses')


def to_pairwise(record: dict, where: str) -> PreferenceExample:
    """Prompt + chosen + rejected; with whole dialogues (no leading assistant turn) the prompt is inferred."""
    chosen = _conversation(_require(record, "chosen", where), "chosen", where, "assistant")
    rejected = _conversation(_require(record, "rejected", where), "rejected", where, "assistant")
    if chosen[0].role == "assistant" and rejected[0].role == "assistant":
        if chosen == rejected:  # (equal whole dialogues fail in the split: no turns left after the prompt)
            _same_response(where, "rejected", "chosen")
        prompt = _prompt(record, where)
    else:
        prompt, chosen, rejected = _split_dialogues(record, chosen, rejected, where)
    return PreferenceExample(prompt, chosen, rejected, where, _margin(record, where))


def _hh_dialogue(value: Any, field: str, where: str) -> tuple[Conversation, Message]:
    """Split a raw HH transcript into (prompt turns, final assistant turn)."""
    parts = _HH_TURN.split("\n\n" + _text(value, field, where).lstrip())
    if len(parts) < 3 or parts[0].strip():
        _fail(where, field, 'must be an HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...")')
    turns = list(zip(parts[1::2], parts[2::2]))
    for i, (speaker, text) in enumerate(turns):
        if not text.strip():
            _fail(where, field, f'has an empty "{speaker}:" turn (turn {i + 1} of {len(turns)})')
    messages = tuple(Message(_HH_ROLES[speaker], text.strip()) for speaker, text in turns)
    if messages[-1].role != "assistant":
        _fail(where, field, 'must end with an "Assistant:" turn, got a final "Human:" turn')
    if len(messages) < 2 or messages[-2].role != "user":
        _fail(where, field, 'must have a "Human:" turn right before its last "Assistant:" turn')
    return messages[:-1], messages[-1]


def to_hh(record: dict, where: str) -> PreferenceExample:
    """Anthropic HH: two full transcripts; everything before the last "Assistant:" is the shared prompt."""
    prompt, chosen = _hh_dialogue(_require(record, "chosen", where), "chosen", where)
    rejected_prompt, rejected = _hh_dialogue(_require(record, "rejected", where), "rejected", where)
    if rejected_prompt != prompt:
        _fail(
            where,
            "rejected",
            'differs from "chosen" before its last "Assistant:" (the prompt must be shared)',
        )
    if rejected == chosen:
        _same_response(where, "rejected", "chosen")
    return PreferenceExample(prompt, (chosen,), (rejected,), where, _margin(record, where))


def to_ranked(record: dict, where: str) -> RankedExample:
    """K >= 2 responses, best first: one prompt, so the reward model compares like with like."""
    responses = _require(record, "responses", where)
    if not isinstance(responses, list) or len(responses) < 2:
        got = f"a list of {len(responses)}" if isinstance(responses, list) else _describe(responses)
        _fail(where, "responses", f"must be a list of at least 2 responses (best first), got {got}")
    prompt = _prompt(record, where)
    continuations = tuple(
        _continuation(_conversation(item, f"responses[{i}]", where, "assistant"), f"responses[{i}]", where)
        for i, item in enumerate(responses)
    )
    for i, response in enumerate(continuations):
        if (first := continuations.index(response)) < i:
            _same_response(where, f"responses[{i}]", f"responses[{first}]")
    return RankedExample(prompt, continuations, where)


def to_prompt(record: dict, where: str) -> PromptExample:
    """RL prompts: the rest of the record (e.g. "answer") travels along for reward functions."""
    fields = {key: value for key, value in record.items() if key not in ("prompt", "system")}
    return PromptExample(_prompt(record, where), where, fields)


def to_unpaired(record: dict, where: str) -> UnpairedExample:
    """KTO: one completion and whether it is desirable."""
    prompt = _prompt(record, where)
    completion = _response(record, "completion", where)
    return UnpairedExample(prompt, completion, _label(_require(record, "label", where), where), where)


def to_steps(record: dict, where: str) -> StepsExample:
    """A process reward model's record: one solution as a list of steps and one correctness label per step."""
    prompt = _prompt(record, where)
    steps, labels = _require(record, "steps", where), _require(record, "labels", where)
    if not (isinstance(steps, list) and steps):
        _fail(where, "steps", f"must be a non-empty list of step strings, got {_describe(steps)}")
    if not isinstance(labels, list):
        _fail(where, "labels", f"must be a list of one label per step, got {_describe(labels)}")
    if len(labels) != len(steps):
        _fail(where, "labels", f"has {len(labels)} labels for {len(steps)} steps (one label per step)")
    texts = tuple(_text(step, f"steps[{i}]", where) for i, step in enumerate(steps))
    return StepsExample(prompt, texts, tuple(_label(v, where, f"labels[{i}]") for i, v in enumerate(labels)), where)


SFT_FORMATS: dict[str, Converter] = {
    "prompt_response": to_prompt_response,
    "alpaca": to_alpaca,
    "messages": to_messages,
    "text": to_text,
}
PREFERENCE_FORMATS: dict[str, Converter] = {"pairwise": to_pairwise, "hh": to_hh}
RANKED_FORMATS: dict[str, Converter] = {"ranked": to_ranked}
PROMPT_FORMATS: dict[str, Converter] = {"prompt": to_prompt}
UNPAIRED_FORMATS: dict[str, Converter] = {"unpaired": to_unpaired}
STEPS_FORMATS: dict[str, Converter] = {"steps": to_steps}
FORMATS: dict[str, dict[str, Converter]] = {
    "sft": SFT_FORMATS,
    "preference": PREFERENCE_FORMATS,
    "ranked": RANKED_FORMATS,
    "prompt": PROMPT_FORMATS,
    "unpaired": UNPAIRED_FORMATS,
    "steps": STEPS_FORMATS,
}


def _has(record: dict, *keys: str) -> bool:
    return all(record.get(key) is not None for key in keys)


def _is_hh(record: dict) -> bool:
    chosen = record.get("chosen")
    return record.get("prompt") is None and isinstance(chosen, str) and "\n\nAssistant:" in chosen


# Per kind, in the order tried: (format, the keys it needs, in words, test). First match wins, so the more
# specific shape comes first (hh before pairwise: both have chosen and rejected).
_DETECTORS: dict[str, tuple[tuple[str, str, Callable[[dict], bool]], ...]] = {
    "sft": (
        ("messages", "messages or conversations", lambda r: _has(r, "messages") or _has(r, "conversations")),
        ("alpaca", "instruction, output, input?", lambda r: _has(r, "instruction", "output")),
        ("prompt_response", "prompt, response", lambda r: _has(r, "prompt", "response")),
        ("text", "text", lambda r: _has(r, "text")),
    ),
    "preference": (
        ("hh", 'chosen, rejected as "\\n\\nHuman: ...\\n\\nAssistant: ..." text', _is_hh),
        ("pairwise", "prompt?, chosen, rejected", lambda r: _has(r, "chosen", "rejected")),
    ),
    "ranked": (("ranked", "prompt, responses", lambda r: _has(r, "prompt", "responses")),),
    "prompt": (("prompt", "prompt", lambda r: _has(r, "prompt")),),
    "unpaired": (
        ("unpaired", "prompt, completion, label", lambda r: _has(r, "prompt", "completion", "label")),
    ),
    "steps": (("steps", "prompt, steps, labels", lambda r: _has(r, "prompt", "steps", "labels")),),
}


def detect_format(record: dict, kind: str, where: str) -> str:
    """For `format: auto`: name the format of `record` from its keys (the caller does this once, on the first)."""
    if kind not in _DETECTORS:
        raise DataError(f'unknown data kind "{kind}", expected one of {", ".join(_DETECTORS)}')
    for name, _, matches in _DETECTORS[kind]:
        if matches(record):
            return name
    known = "; ".join(f"{name} ({needs})" for name, needs, _ in _DETECTORS[kind])
    raise DataError(
        f"{where}: cannot detect the {kind} format from the keys (have: {_keys(record)}); known: {known}"
    )
