"""``alignkit data filter FILE -o OUT [rules]``: drop records by length, repetition, emptiness, refusals, or a
predicate of your own. Each dropped record is counted under the first rule it breaks, in this order:

1. ``--drop-empty``: a blank text (empty or whitespace only) on the response side ("empty response") or the
   prompt side ("empty prompt"). Training refuses such records; this drops them instead.
2. ``--min-chars / --max-chars``, ``--min-tokens / --max-tokens`` (tokens of ``--tokenizer``, template markup not
   counted): bounds on the length of the record's texts on ``--length-of`` all (both sides), prompt or response.
   A preference pair's response side holds both responses.
3. ``--max-repetition R``: a response-side text whose share of repeated word n-grams (``--repetition-ngram``,
   default 3) is above R (`repetition_ratio`); degenerate loops score near 1.
4. ``--drop-refusals``: a response-side text containing one of `REFUSAL_PHRASES` (case-insensitive; curly
   apostrophes read as straight ones), or of the phrases in ``--refusal-phrases FILE`` (one a line; they replace
   the built-in list; blank lines and lines starting with # are skipped).
5. ``--predicate file.py:function`` or ``module:function``: called with a copy of the raw record (a dict), returns
   True to keep it.

Response-side rules look at every response of a record: on preference data that includes the rejected one, so a
pair whose rejected response is a refusal is dropped too (wanted for SFT-style cleaning; leave them off for
safety preference data, where refusals are the point).
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..formats import DataError
from .output import Drop
from .records import Item
from .similarity import ngrams, words

# Stock phrasings of a refusal or of an assistant talking about itself instead of answering, as filtered from
# instruction data by the "uncensored" / "unfiltered" dataset cleaners (e.g. WizardLM_alpaca_evol_instruct_70k_
# unfiltered). Lower case; matched as substrings.
REFUSAL_PHRASES = (
    "as an ai language model",
    "as a language model",
    "as an ai assistant, i",
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i apologize, but i cannot",
    "i apologize, but i can't",
    "i cannot fulfill",
    "i can't fulfill",
    "i cannot assist with",
    "i can't assist with",
    "i cannot help with",
    "i can't help with",
    "i cannot provide",
    "i can't provide",
    "i'm unable to",
    "i am unable to",
    "i'm not able to provide",
    "i must decline",
    "against my programming",
    "my guidelines do not allow",
    "it is not appropriate for me to",
)


@dataclass(frozen=True)
class Rules:
    drop_empty: bool = False
    min_chars: int | None = None
    max_chars: int | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    length_of: str = "all"  # all, prompt, response: whose texts the length bounds measure
    max_repetition: float | None = None  # share of repeated n-grams above which a response is dropped
    repetition_ngram: int = 3
    refusals: tuple[str, ...] = ()  # lower-cased phrases; empty = no refusal check
    predicate: Callable[[dict], bool] | None = None
    predicate_name: str = ""


def repetition_ratio(text: str, n: int = 3) -> float:
    """1 - distinct / total word n-grams: 0.0 when no n-gram repeats, near 1.0 for a loop. A text of fewer than
    n + 1 words cannot repeat an n-gram and scores 0.0."""
    tokens = words(text)
    grams = ngrams(tokens, n) if len(tokens) >= n else []
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def _fold(text: str) -> str:
    return text.lower().replace("\u2019", "'").replace("\u2018", "'")


def refusal(text: str, phrases: Sequence[str]) -> str | None:
    """The first of ``phrases`` found in ``text`` (case folded, curly apostrophes straightened), or None."""
    folded = _fold(text)
    return next((phrase for phrase in phrases if phrase in folded), None)


def read_phrases(path: str) -> tuple[str, ...]:
    """--refusal-phrases FILE: one phrase a line; blank lines and # comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"--refusal-phrases {path}: cannot read it ({e.strerror or e})") from None
    phrases = tuple(_fold(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not phrases:
        raise DataError(f"--refusal-phrases {path}: no phrases in it (one a line)")
    return phrases


def _length_texts(item: Item, length_of: str) -> tuple[str, ...]:
    return {"all": (*item.prompt, *item.response), "prompt": item.prompt, "response": item.response}[length_of]


def _bounds(value: int, low: int | None, high: int | None, unit: str) -> tuple[str, str] | None:
    if low is not None and value < low:
        return "too short", f"{value} {unit} < --min-{unit} {low}"
    if high is not None and value > high:
        return "too long", f"{value} {unit} > --max-{unit} {high}"
    return None


def check(item: Item, rules: Rules, tokens: int | None = None) -> tuple[str, str] | None:
    """(reason, detail) of the first rule ``item`` breaks, or None to keep it; ``tokens`` is its length in tokens
    (needed when token bounds are set)."""
    if item.blank:
        return f"empty {item.blank}", f"a blank {item.blank} text"
    texts = _length_texts(item, rules.length_of)
    found = _bounds(sum(len(t) for t in texts), rules.min_chars, rules.max_chars, "chars")
    if found is None and tokens is not None:
        found = _bounds(tokens, rules.min_tokens, rules.max_tokens, "tokens")
    if found is not None:
        return found
    if rules.max_repetition is not None:
        for text in item.response:
            ratio = repetition_ratio(text, rules.repetition_ngram)
            if ratio > rules.max_repetition:
                return "repetitive", (f"{ratio:.2f} of its {rules.repetition_ngram}-grams repeat > "
                                      f"--max-repetition {rules.max_repetition}")
    for text in item.response if rules.refusals else ():
        if (phrase := refusal(text, rules.refusals)) is not None:
            return "refusal", f'contains "{phrase}"'
    if rules.predicate is not None and not _keep(rules, item):
        return "predicate", f"{rules.predicate_name} returned False"
    return None


def _keep(rules: Rules, item: Item) -> bool:
    """The user's predicate on a copy of the record (so it cannot change what is written); a crash or a non-bool
    is one line naming the record and the function."""
    try:
        result = rules.predicate(copy.deepcopy(item.record))
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise DataError(f"{item.where}: --predicate {rules.predicate_name} raised {type(exc).__name__}: {exc} "
                        f"(at {frame.filename} line {frame.lineno})") from None
    if not isinstance(result, bool):
        raise DataError(f"{item.where}: --predicate {rules.predicate_name} returned {type(result).__name__}, "
                        "expected True (keep) or False (drop)")
    return result


def filter_items(items: list[Item], rules: Rules,
                 count_tokens: Callable[[list[str]], list[int]] | None = None) -> tuple[list[Item], list[Drop]]:
    """(kept items, dropped ones with their reason). ``count_tokens`` maps texts to token counts; it is called
    once, on every text the token bounds measure, so a fast tokenizer can batch them."""
    tokens: list[int | None] = [None] * len(items)
    if count_tokens is not None and (rules.min_tokens is not None or rules.max_tokens is not None):
        texts = [_length_texts(item, rules.length_of) for item in items]
        flat = count_tokens([t for group in texts for t in group])
        start = 0
        for i, group in enumerate(texts):
            tokens[i] = sum(flat[start : start + len(group)])
            start += len(group)
    kept, drops = [], []
    for item, n in zip(items, tokens):
        found = check(item, rules, n)
        if found is None:
            kept.append(item)
        else:
            drops.append(Drop(item.where, *found))
    return kept, drops
