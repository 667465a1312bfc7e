"""``alignkit data mix -o OUT SRC:SHARE [SRC:SHARE ...] [--total N] [--seed S] [--allow-repeats]``: several sources
of the same kind (all SFT, all preference, ...) sampled into one file, reproducibly.

A share is a count (an integer: ``a.jsonl:500``) or a ratio (a number with a decimal point: ``a.jsonl:0.7``);
one mix uses one or the other. With ``--total N`` every share is a ratio (weights, normalised to sum to 1, so
``a:2 b:1`` is two thirds and one third) and the counts are N times them, rounded so they sum to N exactly
(largest remainders). Ratios without ``--total`` take the largest total that needs no repeats.

Each source is sampled without replacement, seeded (``--seed``): the same command gives the same file. A count
above a source's size is an error, unless ``--allow-repeats``: then every record of the source is taken
floor(count / size) times and the rest drawn without replacement (so no record is left out by chance, as a draw
with replacement would), and the report says how many are repeats (train on such a file with
``data.duplicates: keep``). The mixed records are shuffled together.

Sources in different formats are converted to one: SFT to ``messages``, preference to ``pairwise`` (a kind with
one format needs none); sources all in one format are written unchanged. The file type follows OUT's extension.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..formats import DataError
from .convert import convert_item
from .records import Dataset

CANONICAL = {"sft": "messages", "preference": "pairwise"}  # the format that holds every format of its kind


@dataclass(frozen=True)
class Share:
    source: str
    value: float  # a count (is_count) or a ratio / weight
    is_count: bool


def parse_share(text: str) -> Share:
    """``SRC:COUNT`` or ``SRC:RATIO`` (the last colon splits, so Windows drive letters survive)."""
    source, sep, value = text.rpartition(":")
    if not sep or not source:
        raise DataError(f"{text}: expected SRC:COUNT or SRC:RATIO, e.g. data/a.jsonl:500 or data/a.jsonl:0.7")
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{text}: the share {value!r} is not a number (SRC:COUNT or SRC:RATIO)") from None
    is_count = value.strip().lstrip("+").isdecimal()
    if not (math.isfinite(number) and number > 0):
        raise DataError(f"{text}: the share must be above 0")
    return Share(source, number, is_count)


def plan(shares: Sequence[Share], sizes: Sequence[int], total: int | None) -> list[int]:
    """Records to take from each source (see the module docstring). Pure: sizes are the sources' record counts."""
    if total is None and all(share.is_count for share in shares):
        return [int(share.value) for share in shares]
    if total is None and any(share.is_count for share in shares):
        mixed = ", ".join(f"{s.source}:{s.value:g}" for s in shares)
        raise DataError(f"{mixed}: give every share as a count (500) or every share as a ratio (0.7), or pass "
                        "--total N to read them all as ratios")
    weights = [share.value / sum(s.value for s in shares) for share in shares]
    if total is None:  # the largest total each source can fill without a repeat
        total = min(math.floor(size / weight + 1e-9) for size, weight in zip(sizes, weights))
    raw = [weight * total for weight in weights]
    counts = [math.floor(x + 1e-9) for x in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def draw(size: int, count: int, rng: random.Random, allow_repeats: bool, source: str) -> list[int]:
    """Indices of ``count`` records of a source of ``size``: without replacement, or (``allow_repeats``) every
    record count // size times and the rest without replacement."""
    if count <= size:
        return rng.sample(range(size), count)
    if not allow_repeats:
        raise DataError(f"{source}: {count} records asked for, it has {size}; ask for at most {size}, or pass "
                        "--allow-repeats to repeat records")
    return [i for _ in range(count // size) for i in range(size)] + rng.sample(range(size), count % size)


def mix(datasets: Sequence[Dataset], counts: Sequence[int], seed: int,
        allow_repeats: bool) -> tuple[list[dict], list[str]]:
    """(the mixed records, one report line per source)."""
    kinds = {d.kind for d in datasets}
    if len(kinds) > 1:
        listed = ", ".join(f"{d.source} ({d.kind})" for d in datasets)
        raise DataError(f"cannot mix sources of different kinds: {listed}; mix SFT with SFT, preference with "
                        "preference, ...")
    formats = {d.format for d in datasets}
    target = formats.pop() if len(formats) == 1 else CANONICAL.get(datasets[0].kind, datasets[0].format)
    rng = random.Random(seed)
    records: list[dict] = []
    lines = []
    for dataset, count in zip(datasets, counts):
        chosen = draw(len(dataset.items), count, rng, allow_repeats, dataset.source)
        for i in chosen:
            records += convert_item(dataset.items[i], dataset.format, target)
        repeats = max(0, count - len(dataset.items))
        lines.append(f"  {dataset.source}: {count} of {len(dataset.items)} {dataset.format} records"
                     + (f" ({repeats} repeats)" if repeats else "")
                     + (f", converted to {target}" if dataset.format != target else ""))
    rng.shuffle(records)
    return records, lines
