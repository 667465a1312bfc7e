"""The statistics policy evaluation reports: bootstrap intervals, win rates, pass@k, diversity, rater agreement.

Pure functions of plain Python sequences (no torch, no I/O): the evaluator and the human-eval sheet call them, and
each one's test checks it against a hand-computed example. Every random choice comes from ``random.Random(seed)``,
so a result is the same on every run with the same seed.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence


def _quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted values, linearly interpolated between order statistics (Hyndman & Fan 1996
    type 7, numpy's default), so the interval does not jump by a whole order statistic with ``resamples``."""
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def bootstrap_interval(values: Sequence[float], resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (Efron & Tibshirani 1993, ch. 13).

    The items (prompts, or ratings) are resampled with replacement ``resamples`` times; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means. The unit resampled is the item,
    so for a paired comparison pass per-prompt differences or per-prompt outcomes: the pairing then survives the
    resampling and the interval reflects prompt-to-prompt variation, not the noise of two independent samples.

    One value gives ``(v, v)`` (nothing to resample); no values give ``(nan, nan)``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return values[0], values[0]
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2
    return _quantile(means, tail), _quantile(means, 1.0 - tail)


def win_outcomes(scores: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per prompt, the outcome of a pairwise comparison: 1.0 win, 0.5 tie (scores exactly equal), 0.0 loss.

    Ties count half, the convention of AlpacaEval and Chatbot Arena, so the mean is the preference rate and 0.5
    means "no better than the baseline"."""
    if len(scores) != len(baseline):
        raise ValueError(f"scores has {len(scores)} values but baseline has {len(baseline)}; "
                         "they must be scores of the same prompts, in the same order")
    return [1.0 if s > b else 0.5 if s == b else 0.0 for s, b in zip(scores, baseline)]


def win_rate(scores: Sequence[float], baseline: Sequence[float], resamples: int = 1000, seed: int = 0) -> dict:
    """Win rate of ``scores`` over ``baseline`` on the same prompts, ties counted half (``win_outcomes``), with a
    percentile bootstrap interval over prompts (``bootstrap_interval`` of the per-prompt outcomes).

    Returns ``{"win_rate", "low", "high", "wins", "ties", "losses", "n"}``; ``win_rate`` is nan with no prompts.
    """
    outcomes = win_outcomes(scores, baseline)
    low, high = bootstrap_interval(outcomes, resamples=resamples, seed=seed)
    counts = Counter(outcomes)
    return {"win_rate": sum(outcomes) / len(outcomes) if outcomes else math.nan, "low": low, "high": high,
            "wins": counts[1.0], "ties": counts[0.5], "losses": counts[0.0], "n": len(outcomes)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator of Chen et al. 2021 (Codex paper, eq. 1): ``1 - C(n-c, k) / C(n, k)``.

    ``n`` samples of which ``c`` are correct: the chance that at least one of ``k`` samples drawn without
    replacement is correct. Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` (the paper's numerically stable
    form) instead of the binomials, which overflow floats for large ``n``.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k} with n={n} samples")
    if n - c < k:  # every draw of k samples holds a correct one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_mean(correct: Sequence[Sequence[bool]], k: int) -> float:
    """Mean over prompts of ``pass_at_k`` (Chen et al. 2021), each prompt's ``n`` and ``c`` read from its samples'
    correctness flags. Prompts may have different numbers of samples; each needs at least ``k``. nan with none."""
    values = []
    for index, flags in enumerate(correct):
        if len(flags) < k:
            raise ValueError(f"prompt {index} has {len(flags)} samples, fewer than k={k}")
        values.append(pass_at_k(len(flags), sum(bool(f) for f in flags), k))
    return sum(values) / len(values) if values else math.nan


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.split()
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n of Li et al. 2016 ("A Diversity-Promoting Objective Function for Neural Conversation Models"):
    the number of unique word n-grams over all ``texts`` divided by the total number of word n-grams.

    Words are whitespace-split, case kept. Measured across texts, so it falls when the model gives every prompt the
    same answer. 0.0 when the texts hold no n-gram at all (every text shorter than ``n`` words).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for text in texts for g in _ngrams(text, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: Sequence[str], n: int = 2) -> float:
    """Mean over texts of seq-rep-n (Welleck et al. 2019, "Neural Text Degeneration with Unlikelihood Training"):
    ``1 - |unique n-grams in the text| / |n-grams in the text|``, word n-grams.

    Measured within each text, so it catches a model that loops ("the the the"), which distinct-n over a varied
    prompt set can miss. The paper uses n=4 on long continuations; the default here is n=2 because the demo's
    answers are ~10 words, where a repeated 4-gram is rare even in a degenerate answer. A text with no n-gram
    counts 0 (it repeats nothing); no texts give 0.0.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rates = []
    for text in texts:
        grams = _ngrams(text, n)
        rates.append(1.0 - len(set(grams)) / len(grams) if grams else 0.0)
    return sum(rates) / len(rates) if rates else 0.0


def fleiss_kappa(table: Sequence[Sequence[str]]) -> float:
    """Fleiss' kappa (Fleiss 1971) for categorical labels: ``(P_bar - P_e) / (1 - P_e)``.

    ``table[i]`` holds the labels the raters gave item ``i``; every item needs the same number of raters ``m >= 2``
    (which raters they are may differ per item). ``P_i = (sum_j n_ij^2 - m) / (m (m - 1))`` is the share of agreeing
    rater pairs on item ``i``, ``P_bar`` its mean; ``P_e = sum_j p_j^2`` with ``p_j`` the share of all labels in
    category ``j``. 1 is perfect agreement, 0 the agreement of chance.

    When ``P_e = 1`` (every rater put every item in one category) kappa is 0/0; that is perfect agreement, so 1.0.
    """
    if not table:
        raise ValueError("fleiss_kappa needs at least one item")
    m = len(table[0])
    for index, labels in enumerate(table):
        if len(labels) != m:
            raise ValueError(f"item {index} has {len(labels)} ratings but item 0 has {m}; "
                             "Fleiss' kappa needs the same number of raters on every item")
    if m < 2:
        raise ValueError(f"Fleiss' kappa needs at least 2 raters per item, got {m}")
    totals: Counter = Counter()
    agreement = 0.0
    for labels in table:
        counts = Counter(labels)
        totals.update(counts)
        agreement += (sum(c * c for c in counts.values()) - m) / (m * (m - 1))
    p_bar = agreement / len(table)
    p_e = sum((c / (len(table) * m)) ** 2 for c in totals.values())
    if p_e == 1.0:
        return 1.0
    return (p_bar - p_e) / (1.0 - p_e)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa (Cohen 1960) for two raters' labels of the same items: ``(p_o - p_e) / (1 - p_e)``, with
    ``p_o`` the share of items they label alike and ``p_e = sum_k p_a(k) p_b(k)`` from each rater's own marginals.

    When ``p_e = 1`` (both raters used one and the same category throughout) kappa is 0/0; that is perfect
    agreement, so 1.0.
    """
    if len(a) != len(b):
        raise ValueError(f"rater a has {len(a)} labels but rater b has {len(b)}; they must label the same items")
    if not a:
        raise ValueError("cohen_kappa needs at least one item")
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    count_a, count_b = Counter(a), Counter(b)
    p_e = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    if p_e == 1.0:
        return 1.0
    return (p_o - p_e) / (1.0 - p_e)
