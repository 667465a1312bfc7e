"""The constitution of ``alignkit cai`` (Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback"): the
principles a critic critiques and revises against (stage 1) and the questions a judge answers to compare two
responses (stage 2), with the templates that turn them into what the critic is asked.

The file (YAML)::

    principles:                         # a non-empty list; one is sampled per revision round / per comparison
      - name: polite                    # unique; written into every record as provenance
        critique: "Identify anything rude in the assistant's last response."      # the critique request
        revision: "Rewrite the response to remove anything rude."                 # the revision request
        compare: "Which response is more polite?"                                 # the feedback question
    templates:                          # optional; a template left out keeps its default (DEFAULT_TEMPLATES)
      compare: "{request}\\n(A) {first}\\n(B) {second}\\nQuestion: {prompt}"

Every key is required in a principle and none other is accepted; every value is a non-empty string. The templates'
placeholders (``{{`` and ``}}`` are literal braces):

    critique   {request} (the principle's critique request) and either {conversation} or both {prompt} and
               {response}
    revision   {request} (the principle's revision request), {critique}, and {conversation} or {prompt} + {response}
    compare    {request} (the principle's compare question), {prompt}, {first}, {second}

``{prompt}`` is the prompt's text (a lone user turn as it is; a dialogue as a "Human: / Assistant:" transcript),
``{response}`` the response under critique, ``{conversation}`` both as the paper lays them out
("Human: ...\\n\\nAssistant: ..."), ``{first}`` / ``{second}`` the two responses in the order shown (A, B).
A judge's answer to the compare ask is read by ``parse_verdict``: "A" / "B" when the answer opens with its choice
("A", "(B)", "Response A", "Option (B).", "The answer is (A)", "**B**", "A is better"), "tie" when it opens with
the word tie; anything else is unparseable (None), never guessed at ("A response that ..." is not a verdict).

Every problem raises ``ConstitutionError`` (a ConfigError) in one line naming the file, the line, the principle
(its number, counting from 1, and its name), the field and what was expected.
"""

from __future__ import annotations

import difflib
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError
from .data.formats import Conversation

PRINCIPLE_KEYS = ("name", "critique", "revision", "compare")
DEFAULT_TEMPLATES = {
    "critique": ("Below is a conversation between a human and an AI assistant.\n\n{conversation}\n\n"
                 "Critique request: {request}\n\nWrite a short critique of the assistant's last response; do not "
                 "rewrite it."),
    "revision": ("Below is a conversation between a human and an AI assistant.\n\n{conversation}\n\n"
                 "Critique: {critique}\n\nRevision request: {request}\n\nReply with the revised response only."),
    "compare": ("Consider this question from a human to an AI assistant.\n\nHuman: {prompt}\n\n{request}\n\n"
                "Options:\n(A) {first}\n(B) {second}\n\nAnswer with (A) or (B) only."),
}
# template -> (placeholders it may use, groups of which at least one must be used entirely)
PLACEHOLDERS: dict[str, tuple[frozenset[str], tuple[frozenset[str], ...]]] = {
    "critique": (frozenset({"conversation", "prompt", "response", "request"}),
                 (frozenset({"request", "conversation"}), frozenset({"request", "prompt", "response"}))),
    "revision": (frozenset({"conversation", "prompt", "response", "request", "critique"}),
                 (frozenset({"request", "critique", "conversation"}),
                  frozenset({"request", "critique", "prompt", "response"}))),
    "compare": (frozenset({"prompt", "first", "second", "request"}),
                (frozenset({"prompt", "first", "second", "request"}),)),
}


class ConstitutionError(ConfigError):
    """A constitution file that cannot be used; the message names the file, the principle and the field."""


@dataclass(frozen=True)
class Principle:
    name: str  # unique within its constitution: the provenance written into records
    critique: str  # the critique request
    revision: str  # the revision request
    compare: str  # the feedback question (stage 2)


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]  # at least one
    templates: dict[str, str]  # critique / revision / compare -> template (the defaults where the file has none)
    source: str  # the file it was read from

    def critique_ask(self, principle: Principle, prompt: Conversation, response: str) -> str:
        return self.templates["critique"].format(**_texts(prompt, response), request=principle.critique)

    def revision_ask(self, principle: Principle, prompt: Conversation, response: str, critique: str) -> str:
        return self.templates["revision"].format(**_texts(prompt, response), request=principle.revision,
                                                 critique=critique)

    def compare_ask(self, principle: Principle, prompt: Conversation, first: str, second: str) -> str:
        return self.templates["compare"].format(prompt=prompt_text(prompt), first=first, second=second,
                                                request=principle.compare)


SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System"}


def prompt_text(prompt: Conversation) -> str:
    """A lone user turn as its text; any other prompt as a "Human: ... / Assistant: ..." transcript."""
    if len(prompt) == 1 and prompt[0].role == "user":
        return prompt[0].content
    return "\n\n".join(f"{SPEAKERS[m.role]}: {m.content}" for m in prompt)


def _texts(prompt: Conversation, response: str) -> dict[str, str]:
    lone = len(prompt) == 1 and prompt[0].role == "user"
    opening = f"Human: {prompt[0].content}" if lone else prompt_text(prompt)
    return {"prompt": prompt_text(prompt), "response": response,
            "conversation": f"{opening}\n\nAssistant: {response}"}


# ------------------------------------------------------------------------------------------------- verdicts
# the answer to the compare template: its default asks for "(A) or (B) only"; judges add words around it
_VERDICT = re.compile(r"""[\s*_"'`#>]*                                    # markdown emphasis, quotes, headings
    (?i:(?:the\s+)?(?:final\s+)?(?:answer|verdict|choice)(?:\s+is)?\s*[:\-]?\s*)?   # "The answer is", "Verdict:"
    [\s*_"'`]*
    (?:(?i:response|option|assistant)\s+\(?(?P<named>[ABab])\b      # "Response A", "Option (B)"
     |\((?P<bracketed>[ABab])\)                                      # "(A)"
     |(?P<bare>[AB])(?=\s*$|[.,:;!)\]*'"\n]|\s+is\b))                  # "A", "B.", "A is better"; not "A response"
    """, re.VERBOSE)
_TIE = re.compile(r"""[\s*_"'`(]*tie\b""", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """"A" or "B" when the judge's answer opens with its choice (see ``_VERDICT``), "tie" when it opens with the
    word tie, else None (unparseable: the pair is skipped and counted)."""
    found = _VERDICT.match(text)
    if found:
        return next(g for g in found.groups() if g).upper()
    return "tie" if _TIE.match(text) else None


# ------------------------------------------------------------------------------------------------ loading
def load_constitution(path: str | Path) -> Constitution:
    """Read and validate a constitution file (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConstitutionError(f"cai.constitution = {str(path)!r}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        node, data = yaml.compose(text), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
        raise ConstitutionError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise ConstitutionError(f"{path}: the top level must be a mapping with principles: (and optionally "
                                f"templates:), got {_kind(data)}")
    _known_keys(data, ("principles", "templates"), str(path), "key")
    principles = data.get("principles")
    if not isinstance(principles, list) or not principles:
        raise ConstitutionError(f"{path}: principles must be a non-empty list of {{{', '.join(PRINCIPLE_KEYS)}}} "
                                f"mappings, got {_kind(principles)}")
    lines = _item_lines(node, "principles")
    where = [f"{path}{f' line {lines[i]}' if i < len(lines) else ''}: principle {i + 1}" for i in range(len(principles))]
    parsed = [_principle(item, where[i]) for i, item in enumerate(principles)]
    seen: dict[str, int] = {}
    for i, principle in enumerate(parsed):
        if principle.name in seen:
            raise ConstitutionError(f'{where[i]}: name "{principle.name}" is also principle '
                                    f"{seen[principle.name] + 1}'s; names must be unique")
        seen[principle.name] = i
    return Constitution(tuple(parsed), _templates(data.get("templates"), str(path)), str(path))


def _principle(item: Any, where: str) -> Principle:
    if not isinstance(item, dict):
        raise ConstitutionError(f"{where}: expected a mapping with {', '.join(PRINCIPLE_KEYS)}, got {_kind(item)}")
    name = item.get("name")
    if isinstance(name, str) and name.strip():
        where = f'{where} ("{name}")'
    _known_keys(item, PRINCIPLE_KEYS, where, "field")
    for key in PRINCIPLE_KEYS:
        if key not in item:
            raise ConstitutionError(f'{where}: field "{key}" is missing; expected a non-empty string (have: '
                                    f"{', '.join(item) or 'nothing'})")
        if not (isinstance(item[key], str) and item[key].strip()):
            raise ConstitutionError(f'{where}: field "{key}" must be a non-empty string, got {_kind(item[key])}')
    return Principle(**{key: item[key].strip() for key in PRINCIPLE_KEYS})


def _templates(given: Any, path: str) -> dict[str, str]:
    if given is None:
        return dict(DEFAULT_TEMPLATES)
    if not isinstance(given, dict):
        raise ConstitutionError(f"{path}: templates must be a mapping of {', '.join(DEFAULT_TEMPLATES)} to "
                                f"template strings, got {_kind(given)}")
    _known_keys(given, tuple(DEFAULT_TEMPLATES), f"{path}: templates", "template")
    for name, template in given.items():
        if not (isinstance(template, str) and template.strip()):
            raise ConstitutionError(f"{path}: templates.{name} must be a non-empty string, got {_kind(template)}")
        check_template(name, template, f"{path}: templates.{name}")
    return {**DEFAULT_TEMPLATES, **given}


def check_template(name: str, template: str, where: str) -> None:
    """A template's placeholders: each one known, no format spec, and one of its required groups complete."""
    allowed, required = PLACEHOLDERS[name]
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ConstitutionError(f"{where}: {exc} (write literal braces as {{{{ and }}}})") from None
    expected = ", ".join("{" + p + "}" for p in sorted(allowed))
    for field, spec, conversion in fields:
        if field not in allowed or spec or conversion:
            shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ConstitutionError(f"{where}: placeholder {shown} is not one of {expected} (write literal braces "
                                    "as {{ and }})")
    used = {f for f, _, _ in fields}
    if not any(group <= used for group in required):
        needs = " or ".join(" + ".join("{" + p + "}" for p in sorted(g)) for g in required)
        raise ConstitutionError(f"{where}: needs {needs}; it has {', '.join(sorted(used)) or 'no placeholder'}")


def _known_keys(mapping: dict, known: tuple[str, ...], where: str, what: str) -> None:
    for key in mapping:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise ConstitutionError(f'{where}: unknown {what} "{key}" (expected: {", ".join(known)}){hint}')


def _item_lines(node: yaml.Node | None, key: str) -> list[int]:
    """The line of each item of the top-level list ``key`` (1-based), for errors; 0 where unknown."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key and isinstance(v, yaml.SequenceNode):
                return [item.start_mark.line + 1 for item in v.value]
    return []


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f'"{value}"' if value.strip() else "a blank string"
    return type(value).__name__
