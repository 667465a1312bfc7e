"""``alignkit data stats FILE [--tokenizer MODEL] [--json]``: what a data file holds, before training on it.

Reported: the record count, the detected format and kind; field coverage (the share of records in which each
field is present and non-empty: null, NaN, "", whitespace and empty lists count as empty); the length of each
record's text (both sides, in characters, or in tokens of ``--tokenizer``, template markup not counted) as a
histogram over power-of-two bins; exact duplicates (as ``alignkit data dedup`` judges them); and, for messages
records, the number of turns per record.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from .dedup import exact_key
from .records import Dataset


def _filled(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, dict)):
        return bool(value)
    return True


def coverage(records: Sequence[dict]) -> dict[str, float]:
    """Field -> share of records where it is non-empty, fields in the order they first appear."""
    seen: dict[str, int] = {}
    for record in records:
        for key, value in record.items():
            seen[key] = seen.get(key, 0) + _filled(value)
    return {key: count / len(records) for key, count in seen.items()}


def length_bins(lengths: Sequence[int]) -> list[tuple[int, int, int]]:
    """(low, high, count) over bins [0, 8), [8, 16), [16, 32), ... doubling, from the first non-empty bin to the
    last: lengths spread over orders of magnitude, and doubling bins show both ends."""
    if not lengths:
        return []

    def index(n: int) -> int:
        return 0 if n < 8 else n.bit_length() - 3

    counts = Counter(index(n) for n in lengths)
    bins = []
    for i in range(min(counts), max(counts) + 1):
        low, high = (0, 8) if i == 0 else (2 ** (i + 2), 2 ** (i + 3))
        bins.append((low, high, counts.get(i, 0)))
    return bins


def _percentile(ordered: Sequence[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def stats(dataset: Dataset, count_tokens: Callable[[list[str]], list[int]] | None = None) -> dict:
    """Everything ``stats`` reports, as a JSON-ready dict."""
    items = dataset.items
    if count_tokens is None:
        unit, lengths = "chars", [sum(len(t) for t in (*i.prompt, *i.response)) for i in items]
    else:
        texts = [(*i.prompt, *i.response) for i in items]
        flat = iter(count_tokens([t for group in texts for t in group]))
        unit, lengths = "tokens", [sum(next(flat) for _ in group) for group in texts]
    ordered = sorted(lengths)
    seen: set = set()
    duplicates = 0
    for item in items:
        key = exact_key(item)
        duplicates += key in seen
        seen.add(key)
    out: dict[str, Any] = {
        "file": dataset.source, "records": len(items), "format": dataset.format, "kind": dataset.kind,
        "fields": coverage([item.record for item in items]),
        "length": {"unit": unit, "min": ordered[0], "median": statistics.median(ordered),
                   "mean": statistics.fmean(ordered), "p95": _percentile(ordered, 0.95), "max": ordered[-1],
                   "histogram": [{"from": low, "to": high, "count": n} for low, high, n in length_bins(lengths)]},
        "exact_duplicates": duplicates,
    }
    if dataset.format == "messages":
        turns = Counter(len(item.example.messages) for item in items)
        out["turns"] = {str(n): turns[n] for n in sorted(turns)}
    return out


def render(report: dict, width: int = 40) -> str:
    """The human-readable page of `stats`."""
    lines = [f"{report['file']}: {report['records']} records, format {report['format']} (kind {report['kind']})",
             "fields (share of records where non-empty):"]
    name_width = max(len(key) for key in report["fields"])
    lines += [f"  {key:<{name_width}}  {share:7.1%}" for key, share in report["fields"].items()]
    length = report["length"]
    lines.append(f"length ({length['unit']} of all text per record): min {length['min']}, median "
                 f"{length['median']:g}, mean {length['mean']:.1f}, p95 {length['p95']}, max {length['max']}")
    top = max(row["count"] for row in length["histogram"])
    label_width = len(f"{length['histogram'][-1]['from']}-{length['histogram'][-1]['to'] - 1}")
    for row in length["histogram"]:
        bar = "#" * math.ceil(width * row["count"] / top) if row["count"] else ""
        label = f"{row['from']}-{row['to'] - 1}"
        lines.append(f"  {label:>{label_width}}  {bar:<{width}}  {row['count']}")
    lines.append(f"exact duplicates: {report['exact_duplicates']} (records repeating an earlier one, case and "
                 "whitespace folded; alignkit data dedup drops them)")
    if "turns" in report:
        lines.append("turns per record: " + ", ".join(f"{n}: {count}" for n, count in report["turns"].items()))
    return "\n".join(lines)


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False)
