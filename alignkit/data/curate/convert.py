"""``alignkit data convert FILE -o OUT --to FORMAT [--pairs best|adjacent]``: rewrite records in another format.

Each record is parsed by the converters of `alignkit.data.formats` (which validate it) and written back as a dict
of the target format. Conversions, by target:

- ``messages``: any SFT record (prompt_response, alpaca, messages); a ``system`` field becomes the first turn.
- ``prompt_response`` / ``alpaca``: single-turn SFT records only (an optional system turn, one user turn, one
  assistant turn without tool calls); anything longer is a one-line error naming the record. Alpaca's ``input``
  is already merged into the instruction (after a blank line) and is not split out again.
- ``pairwise``: hh (the shared transcript becomes the prompt, as a message list when it has several turns), and
  ranked: ``--pairs best`` (default) pairs the best response with each other one (K - 1 pairs, every pair
  anchored on the response the ranking is surest of), ``--pairs adjacent`` each response with the next one
  (K - 1 pairs of neighbours, finer but noisier distinctions).
- ``unpaired`` (KTO): each pairwise / hh record becomes two, the chosen response labelled true and the rejected
  one false (a ``margin`` is not kept: KTO has no use for it).
- ``prompt`` (RL prompts): any record's prompt (every kind but SFT has one); for an SFT dialogue, the turns
  before its last assistant turn.

Strings stay strings where they can: a lone user turn is written as a string prompt (with a ``system`` field
beside it when a system turn leads), a lone assistant turn as a string response; anything else as a message list.
Fields of the record that its format does not read (an ``id``, a ``source``) are carried over, unless the target
format would read them. Converting to the file's own format writes every record unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from ..formats import (
    DataError,
    Example,
    Message,
    PreferenceExample,
    RankedExample,
    SFTExample,
)
from .records import Item

# The fields each format reads: every other field of a record is carried over by a conversion.
OWN_KEYS: dict[str, frozenset[str]] = {
    "prompt_response": frozenset({"prompt", "response", "system"}),
    "alpaca": frozenset({"instruction", "input", "output", "system"}),
    "messages": frozenset({"messages", "conversations", "system", "tools"}),
    "text": frozenset({"text"}),
    "pairwise": frozenset({"prompt", "chosen", "rejected", "margin", "system"}),
    "hh": frozenset({"chosen", "rejected", "margin"}),
    "ranked": frozenset({"prompt", "responses", "system"}),
    "prompt": frozenset({"prompt", "system"}),
    "unpaired": frozenset({"prompt", "completion", "label", "system"}),
    "steps": frozenset({"prompt", "steps", "labels", "system"}),
}
PAIRS = ("best", "adjacent")


def _plain(message: Message, role: str) -> bool:
    return message.role == role and not message.tool_calls and not message.name


def _turns(conversation: tuple[Message, ...], role: str) -> str | list[dict]:
    """A lone plain turn of ``role`` as its text, else the message list."""
    if len(conversation) == 1 and _plain(conversation[0], role):
        return conversation[0].content
    return [message.as_dict() for message in conversation]


def _prompt(prompt: tuple[Message, ...]) -> dict:
    if len(prompt) == 2 and _plain(prompt[0], "system") and _plain(prompt[1], "user"):
        return {"system": prompt[0].content, "prompt": prompt[1].content}
    return {"prompt": _turns(prompt, "user")}


def _single_turn(example: SFTExample, target: str) -> tuple[str | None, str, str]:
    """(system or None, user text, assistant text) of a single-turn record, else a one-line error."""
    turns = example.messages
    system = turns[0].content if turns and _plain(turns[0], "system") else None
    rest = turns[1:] if system is not None else turns
    if example.tools or len(rest) != 2 or not _plain(rest[0], "user") or not _plain(rest[1], "assistant"):
        roles = ", ".join(m.role + (" (tool calls)" if m.tool_calls else "") for m in turns)
        raise DataError(f"{example.where}: cannot write as {target}: it has the turns {roles}"
                        f"{' and tool schemas' if example.tools else ''}; {target} holds one user turn and one "
                        "assistant turn (after an optional system turn): keep this record as messages")
    return system, rest[0].content, rest[1].content


def to_messages(example: SFTExample, pairs: str) -> list[dict]:
    out: dict = {"messages": [message.as_dict() for message in example.messages]}
    if example.tools:
        import json

        out["tools"] = json.loads(example.tools)
    return [out]


def to_prompt_response(example: SFTExample, pairs: str) -> list[dict]:
    system, prompt, response = _single_turn(example, "prompt_response")
    return [{**({"system": system} if system is not None else {}), "prompt": prompt, "response": response}]


def to_alpaca(example: SFTExample, pairs: str) -> list[dict]:
    system, prompt, response = _single_turn(example, "alpaca")
    return [{**({"system": system} if system is not None else {}), "instruction": prompt, "output": response}]


def _pair(prompt: dict, chosen, rejected, margin: float | None = None) -> dict:
    out = {**prompt, "chosen": _turns(chosen, "assistant"), "rejected": _turns(rejected, "assistant")}
    return out if margin is None else {**out, "margin": margin}


def to_pairwise(example: PreferenceExample | RankedExample, pairs: str) -> list[dict]:
    prompt = _prompt(example.prompt)
    if isinstance(example, PreferenceExample):
        return [_pair(prompt, example.chosen, example.rejected, example.margin)]
    responses = example.responses
    order = [(0, j) for j in range(1, len(responses))] if pairs == "best" else \
        [(j, j + 1) for j in range(len(responses) - 1)]
    return [_pair(prompt, responses[a], responses[b]) for a, b in order]


def to_unpaired(example: PreferenceExample, pairs: str) -> list[dict]:
    prompt = _prompt(example.prompt)
    return [{**prompt, "completion": _turns(example.chosen, "assistant"), "label": True},
            {**prompt, "completion": _turns(example.rejected, "assistant"), "label": False}]


def to_prompt(example: Example, pairs: str) -> list[dict]:
    if not isinstance(example, SFTExample):
        return [_prompt(example.prompt)]
    turns = example.messages
    last = max(i for i, message in enumerate(turns) if message.role == "assistant")
    while last > 0 and turns[last - 1].role == "assistant":  # a reply split over several assistant turns
        last -= 1
    if example.tools:
        raise DataError(f"{example.where}: cannot write as prompt: the dialogue has tool schemas, which a prompt "
                        "record cannot carry")
    if last == 0 or turns[last - 1].role != "user":
        before = f"a {turns[last - 1].role} turn" if last else "nothing"
        raise DataError(f"{example.where}: cannot write as prompt: its last reply follows {before}, and a prompt "
                        "ends with a user turn")
    return [_prompt(turns[:last])]


def _is(*types: type) -> Callable[[Example], bool]:
    return lambda example: isinstance(example, types)


# target format -> (which examples it is written from, the writer). Any example with a prompt (every kind but
# SFT, including kinds added later) gives an RL prompt.
TARGETS: dict[str, tuple[Callable[[Example], bool], Callable[[Example, str], list[dict]]]] = {
    "messages": (_is(SFTExample), to_messages),
    "prompt_response": (_is(SFTExample), to_prompt_response),
    "alpaca": (_is(SFTExample), to_alpaca),
    "pairwise": (_is(PreferenceExample, RankedExample), to_pairwise),
    "unpaired": (_is(PreferenceExample), to_unpaired),
    "prompt": (lambda example: isinstance(example, SFTExample) or isinstance(getattr(example, "prompt", None), tuple),
               to_prompt),
}


def targets_for(example: Example) -> list[str]:
    return [name for name, (accepts, _) in TARGETS.items() if accepts(example)]


def convert_item(item: Item, source_format: str, target: str, pairs: str = "best") -> list[dict]:
    """The record(s) ``item`` becomes in ``target`` (several for ranked -> pairwise and pairwise -> unpaired)."""
    if target == source_format:
        return [item.record]
    if target not in TARGETS:
        raise DataError(f"--to {target}: cannot convert to it; targets: {', '.join(TARGETS)}")
    accepts, write = TARGETS[target]
    if not accepts(item.example):
        possible = ", ".join(targets_for(item.example)) or "none"
        raise DataError(f"{item.where}: cannot convert {source_format} to {target}; {source_format} converts to: "
                        f"{possible}")
    own, readable = OWN_KEYS.get(source_format), OWN_KEYS.get(target, frozenset())
    # an unknown source format's own fields are not known, so nothing is carried rather than a stale copy of them
    extras = {k: v for k, v in item.record.items() if k not in own and k not in readable} if own else {}
    return [{**extras, **record} for record in write(item.example, pairs)]
