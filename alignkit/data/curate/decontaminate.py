"""``alignkit data decontaminate FILE -o OUT --against EVAL [EVAL ...] [--ngram 13]``: drop training records that
share a word n-gram with any eval record.

The rule is GPT-3's (Brown et al. 2020, appendix C): lower-cased words, punctuation dropped, n = 13 by default.
Both sides of every record count (an eval answer inside a training response is contamination too). A record
shorter than n words uses its whole text as its one gram: a short eval record contaminates every training record
that contains its words in order, and a short training record is contaminated when its words occur, in order,
inside an eval record.

Eval files may be in any format alignkit reads; one whose format is not recognised (a benchmark's own
``{"question", "answer"}`` schema, say) contributes every string in its records. A contaminated record is counted
under the first eval file (in the order given) that it overlaps, with one overlapping gram as the example.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..formats import FORMATS, DataError
from ..loading import read_records
from .output import Drop
from .records import Item, identify, parse
from .similarity import ngrams, words

Hit = tuple[int, str, tuple[str, ...]]  # (eval file index, eval record's where, the shared gram)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def eval_texts(source: str) -> tuple[list[tuple[str, str]], bool]:
    """((where, text) per record of an eval file, whether its format was recognised)."""
    records = read_records(source)
    try:
        kind, name = identify(records[0][1], records[0][0])
    except DataError:
        return [(where, "\n".join(_strings(record))) for where, record in records], False
    convert = FORMATS[kind][name]
    return [(where, parse(record, where, convert).text) for where, record in records], True


class Index:
    """Every eval gram, mapped to the first eval record holding it. Grams shorter than n (the whole text of a
    short record) are kept apart, by length, and the m-grams of every eval record are built on first need (for a
    training record of m < n words)."""

    def __init__(self, evals: Sequence[list[tuple[str, str]]], n: int) -> None:
        self.n = n
        self.records = [(i, where, tokens) for i, texts in enumerate(evals) for where, text in texts
                        if (tokens := words(text))]  # a record without words shares nothing
        self.grams: dict[tuple[str, ...], tuple[int, str]] = {}
        self.short: dict[int, dict[tuple[str, ...], tuple[int, str]]] = {}  # length m < n -> whole short texts
        for i, where, tokens in self.records:
            table = self.grams if len(tokens) >= n else self.short.setdefault(len(tokens), {})
            for gram in ngrams(tokens, n):
                table.setdefault(gram, (i, where))
        self._of_length: dict[int, dict[tuple[str, ...], tuple[int, str]]] = {}

    def _m_grams(self, m: int) -> dict[tuple[str, ...], tuple[int, str]]:
        if m not in self._of_length:
            table: dict[tuple[str, ...], tuple[int, str]] = {}
            for i, where, tokens in self.records:
                for gram in ngrams(tokens, m) if len(tokens) >= m else ():
                    table.setdefault(gram, (i, where))
            self._of_length[m] = table
        return self._of_length[m]

    def find(self, text: str) -> Hit | None:
        """The overlap of ``text`` with the earliest eval file it overlaps (see the module docstring), or None."""
        tokens = words(text)
        best: Hit | None = None
        tables = [(self.n, self.grams), *self.short.items()]
        if 0 < len(tokens) < self.n:
            tables.append((len(tokens), self._m_grams(len(tokens))))
        for m, table in tables:
            for gram in ngrams(tokens, m) if len(tokens) >= m else ():
                found = table.get(gram)
                if found is not None and (best is None or found[0] < best[0]):
                    best = (*found, gram)
                    if found[0] == 0:  # the first eval file: nothing can come earlier
                        return best
        return best


def decontaminate(items: list[Item], evals: Sequence[str], index: Index) -> tuple[list[Item], list[Drop]]:
    """(kept items, dropped ones, each counted under "overlaps EVAL" with the gram and the eval record)."""
    kept, drops = [], []
    for item in items:
        hit = index.find(item.text)
        if hit is None:
            kept.append(item)
            continue
        i, where, gram = hit
        drops.append(Drop(item.where, f"overlaps {evals[i]}", f'shares "{" ".join(gram)}" with {where}'))
    return kept, drops
