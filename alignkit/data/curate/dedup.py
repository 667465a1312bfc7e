"""``alignkit data dedup FILE -o OUT [--near --threshold 0.85 --num-perm 128 --ngram 5]``: drop repeated records.

Exact duplicates: records whose texts (prompt side and response side, in order) are equal once case and runs of
whitespace are folded. Other fields (a KTO label, a margin) are not compared: the same text twice weighs double
whatever its label says.

Near duplicates (``--near``): records whose sets of word n-grams (``--ngram`` words, lower-cased, punctuation
dropped) have a Jaccard similarity of at least ``--threshold``. Candidates come from MinHash LSH (datasketch,
``--num-perm`` permutations; Broder 1997, Leskovec et al. "Mining of Massive Datasets" ch. 3); each candidate's
Jaccard is then computed exactly on the n-gram sets, so no pair under the threshold is ever dropped. LSH can miss a
pair just above the threshold (its banding is a probabilistic filter); more permutations make that rarer.

The first record of each cluster is kept, in file order; a later one is compared against the records kept so far,
and the report names the line it duplicates.
"""

from __future__ import annotations

from ..formats import DataError
from .output import Drop
from .records import Item, normalise
from .similarity import jaccard, minhash, shingles


def exact_key(item: Item) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What makes two records the same for exact deduplication (see the module docstring)."""
    return tuple(normalise(t) for t in item.prompt), tuple(normalise(t) for t in item.response)


def dedup(items: list[Item], near: bool = False, threshold: float = 0.85, num_perm: int = 128,
          ngram: int = 5) -> tuple[list[Item], list[Drop]]:
    """(kept items in file order, dropped ones with the record each duplicates)."""
    if not 0 < threshold <= 1:
        raise DataError(f"--threshold {threshold}: a Jaccard similarity in (0, 1] is expected")
    lsh = None
    if near:
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    seen: dict[tuple, Item] = {}
    sets: dict[str, tuple[Item, set[str]]] = {}  # LSH key -> kept item and its n-gram set
    kept: list[Item] = []
    drops: list[Drop] = []
    for item in items:
        key = exact_key(item)
        if key in seen:
            drops.append(Drop(item.where, "exact duplicate", f"of {seen[key].where}"))
            continue
        if lsh is not None:
            grams = shingles(item.text, ngram)
            sketch = minhash(grams, num_perm)
            match = _closest(lsh.query(sketch) if grams else [], grams, sets, threshold)
            if match is not None:
                other, similarity = match
                drops.append(Drop(item.where, "near duplicate", f"of {other.where} (Jaccard {similarity:.2f})"))
                continue
            if grams:
                name = str(len(sets))
                lsh.insert(name, sketch)
                sets[name] = (item, grams)
        seen[key] = item
        kept.append(item)
    return kept, drops


def _closest(candidates, grams: set[str], sets: dict[str, tuple[Item, set[str]]],
             threshold: float) -> tuple[Item, float] | None:
    """The most similar kept record among LSH's candidates whose exact Jaccard reaches the threshold (earliest on
    ties), or None. LSH proposes; the exact sets decide."""
    best = None
    for name in sorted(candidates, key=int):
        other, other_grams = sets[name]
        similarity = jaccard(grams, other_grams)
        if best is None or similarity > best[1]:
            best = (other, similarity)
    return best if best is not None and best[1] >= threshold else None
