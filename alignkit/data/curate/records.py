"""Records in: one file of any supported format, each record kept exactly as read (what the commands write back)
beside its parsed example and its texts, split into a prompt side and a response side.

The format is decided once, from the first record (as training does), and every record is parsed by the
converters of `alignkit.data.formats`: a bad record is the same one-line error naming the file, the line and the
field that training would give.

Which text is on which side is read off the parsed example, not off the record's keys, so it holds for every
format, present and future: a field named ``prompt`` is prompt side; in any other conversation (a dialogue,
chosen / rejected, each ranked response, a completion) assistant turns are response side and every other turn
(system, user, tool results) prompt side; any other text field (a ``text`` document) is response side.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..formats import FORMATS, DataError, Example, Message, detect_format
from ..loading import read_records

# Kinds tried, in order, when the format is auto: "prompt" matches any record with a prompt, so it goes last.
KINDS = (*(kind for kind in FORMATS if kind != "prompt"), "prompt")
_NOT_TEXT = ("where", "tools")  # string fields of examples that are no text: a location, tool schemas as JSON
_BLANK = "\x00blank{}\x00"  # stands in for a blank string while a record is parsed to see on which side it was


@dataclass(frozen=True)
class Item:
    where: str  # "file line N": names the record in reports and errors
    record: dict  # as read; what the commands write back
    example: Example | None  # parsed (None only for a blank record, see `blank`)
    prompt: tuple[str, ...] = ()  # prompt-side texts, in order
    response: tuple[str, ...] = ()  # response-side texts, in order
    blank: str = ""  # "response" / "prompt": a text on that side was blank (read with allow_blank only)

    @property
    def text(self) -> str:
        """All of the record's text, prompt side first: what duplicates and overlaps are judged on."""
        return "\n".join((*self.prompt, *self.response))


@dataclass(frozen=True)
class Dataset:
    source: str  # the path (or hub name) as given
    kind: str  # sft, preference, ranked, prompt, unpaired
    format: str  # prompt_response, alpaca, messages, text, pairwise, hh, ranked, prompt, unpaired
    items: list[Item]


def identify(record: dict, where: str, fmt: str = "auto") -> tuple[str, str]:
    """(kind, format) of a record: the named format's kind, or for ``auto`` the first kind whose detector
    recognises the record's keys."""
    if fmt != "auto":
        for kind, formats in FORMATS.items():
            if fmt in formats:
                return kind, fmt
        known = ", ".join(name for formats in FORMATS.values() for name in formats)
        raise DataError(f'--format {fmt}: unknown format, expected auto or one of {known}')
    for kind in KINDS:
        try:
            return kind, detect_format(record, kind, where)
        except DataError:
            continue
    have = ", ".join(str(key) for key, value in record.items() if value is not None) or "nothing"
    known = ", ".join(name for kind in KINDS for name in FORMATS[kind])
    raise DataError(f"{where}: cannot tell the record's format from its keys (have: {have}); known formats: "
                    f"{known} (see alignkit/data/formats.py), or name one with --format")


def sides(example: Example) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(prompt-side texts, response-side texts) of any example (the rule is in the module docstring). Empty texts
    (an assistant turn that only calls tools) are left out."""
    prompt: list[str] = []
    response: list[str] = []

    def collect(value: Any, in_prompt: bool) -> None:
        if isinstance(value, Message):
            side = prompt if in_prompt or value.role != "assistant" else response
            if value.content:
                side.append(value.content)
        elif isinstance(value, str):
            if value:
                (prompt if in_prompt else response).append(value)
        elif isinstance(value, (tuple, list)):
            for part in value:
                collect(part, in_prompt)
        # numbers (a margin), bools (a label) and extra columns (a prompt's "fields") carry no text to judge

    for f in fields(example):
        if f.name not in _NOT_TEXT:
            collect(getattr(example, f.name), f.name == "prompt")
    return tuple(prompt), tuple(response)


def parse(record: dict, where: str, convert, allow_blank: bool = False) -> Item:
    """One record -> an Item. With ``allow_blank``, a record refused only for a blank text is kept as a blank Item
    (``blank`` naming the side) instead of raising: ``filter --drop-empty`` drops those."""
    try:
        example = convert(record, where)
    except DataError:
        if not allow_blank:
            raise
        blank = _blank_side(record, where, convert)
        if not blank:
            raise
        return Item(where, record, None, blank=blank)
    prompt, response = sides(example)
    return Item(where, record, example, prompt, response)


def _blank_side(record: dict, where: str, convert) -> str:
    """Which side a refused record's blank text is on: every blank string is replaced by a marker and the record
    parsed again; "" when that does not parse either (the record is broken in another way). The converters decide
    what each field means, so this needs no table of field names."""
    markers: list[str] = []

    def fill(value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            markers.append(_BLANK.format(len(markers)))
            return markers[-1]
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value

    filled = fill(record)
    if not markers:
        return ""
    try:
        prompt, response = sides(convert(filled, where))
    except DataError:
        return ""
    return "response" if any(marker in text for text in response for marker in markers) else "prompt"


def read_dataset(source: str, fmt: str = "auto", allow_blank: bool = False) -> Dataset:
    """Every record of ``source`` parsed with the format of its first record (or ``fmt``)."""
    records = read_records(source)
    first_where, first = records[0]
    kind, name = identify(first, first_where, fmt)
    convert = FORMATS[kind][name]
    return Dataset(source, kind, name, [parse(record, where, convert, allow_blank) for where, record in records])


def normalise(text: str) -> str:
    """Case and runs of whitespace folded: what "the same text" means for exact duplicates."""
    return " ".join(text.lower().split())


def short(where: str, source: str) -> str:
    """``where`` without its file name when it is ``source`` ("line 4"), since reports name the file once."""
    return where[len(source) + 1 :] if where.startswith(source + " ") else where
