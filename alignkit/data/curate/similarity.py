"""Text similarity for the data tools: words, word n-grams, Jaccard over shingle sets (exact and MinHash), ROUGE-L.

Words are lower-cased runs of letters and digits (Unicode ``\\w``) and, each on its own, symbols that carry
meaning (``+ - * / = < > % ^ & | ~ $ # @``). Punctuation and case are dropped, so quoting, sentence breaks and
capitals never make two texts differ (GPT-3's 13-gram decontamination lower-cases and drops punctuation too);
symbols are kept because in maths and code they are the content: "2 + 5" and "2 - 5" are different texts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"\w+|[^\w\s.,;:!?'\"`()\[\]{}\u00ab\u00bb\u2018\u2019\u201c\u201d\u2026]")


def words(text: str) -> list[str]:
    """Lower-cased words and symbols: ``"Don't stop: 2+2!"`` -> ``["don", "t", "stop", "2", "+", "2"]``."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Every run of ``n`` consecutive tokens; a sequence shorter than ``n`` is its own single gram (so a short
    text still has something to compare), and an empty one has none."""
    if len(tokens) < n:
        return [tuple(tokens)] if tokens else []
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def shingles(text: str, n: int) -> set[str]:
    """The set of word n-grams of ``text``, each joined by spaces (MinHash hashes strings)."""
    return {" ".join(gram) for gram in ngrams(words(text), n)}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; two empty sets share nothing (0.0), so an empty text is never anyone's near-duplicate."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def minhash(items: Iterable[str], num_perm: int):
    """A datasketch MinHash of a set of strings. The permutation seed is datasketch's fixed default, so every
    sketch is comparable with every other and a run is reproducible."""
    from datasketch import MinHash

    sketch = MinHash(num_perm=num_perm)
    sketch.update_batch([item.encode("utf-8") for item in items])
    return sketch


class _Words:
    """rouge-score's tokenizer interface over `words`: its default tokenizer keeps only ASCII letters and digits,
    which would make every non-Latin instruction look novel."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


_SCORER = None


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure of two texts (Lin 2004): the longest common subsequence of their words, as an F1 of its
    share of each; symmetric, 1.0 for texts with the same words in the same order, 0.0 when either is empty."""
    global _SCORER
    if _SCORER is None:  # imported on first use: rouge-score brings nltk, a second of import time
        from rouge_score.rouge_scorer import RougeScorer

        _SCORER = RougeScorer(["rougeL"], tokenizer=_Words())
    return _SCORER.score(a, b)["rougeL"].fmeasure
