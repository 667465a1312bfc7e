"""Evaluation statistics by hand, and the blind human-eval sheet written, filled and read back."""

import csv
import json
import math
import random
import re
from math import comb

import pytest

from alignkit.eval.sheet import read_ratings, write_sheet
from alignkit.eval.stats import (
    bootstrap_interval,
    cohen_kappa,
    distinct_n,
    fleiss_kappa,
    pass_at_k,
    pass_at_k_mean,
    repetition_rate,
    win_outcomes,
    win_rate,
)

# ---------------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_items():
    rng = random.Random(0)
    few = [rng.gauss(0.0, 1.0) for _ in range(20)]
    many = [rng.gauss(0.0, 1.0) for _ in range(400)]
    for values in (few, many):
        low, high = bootstrap_interval(values)
        assert low < sum(values) / len(values) < high
    (low_few, high_few), (low_many, high_many) = bootstrap_interval(few), bootstrap_interval(many)
    assert high_many - low_many < (high_few - low_few) / 2  # width ~ 1/sqrt(n): 20 -> 400 items is ~4.5x narrower


def test_bootstrap_interval_is_deterministic_per_seed():
    values = [float(v) for v in range(10)]
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, seed=3) != bootstrap_interval(values, seed=4)


def test_bootstrap_interval_edge_cases():
    assert bootstrap_interval([0.25] * 7) == (0.25, 0.25)  # every resample has the same mean: a point
    assert bootstrap_interval([3.0]) == (3.0, 3.0)
    low, high = bootstrap_interval([])
    assert math.isnan(low) and math.isnan(high)
    # [0, 1]: resampled means are 0, 0.5, 1 with chance 1/4, 1/2, 1/4, so the 2.5% and 97.5% quantiles of 1000
    # resamples are the extremes
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval([1.0, 2.0], resamples=0)


# ---------------------------------------------------------------------------------------------------- win rate


def test_win_outcomes_hand_computed():
    assert win_outcomes([3.0, 1.0, 2.0], [1.0, 1.0, 5.0]) == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="3 values but baseline has 2"):
        win_outcomes([1.0, 2.0, 3.0], [1.0, 2.0])


def test_win_rate_counts_ties_half():
    result = win_rate([2.0, 2.0, 2.0, 1.0], [1.0, 1.0, 2.0, 2.0])  # win, win, tie, loss
    assert result["win_rate"] == pytest.approx(2.5 / 4)
    assert (result["wins"], result["ties"], result["losses"], result["n"]) == (2, 1, 1, 4)
    assert result["low"] <= result["win_rate"] <= result["high"]
    assert win_rate([1.0] * 5, [0.0] * 5) == {"win_rate": 1.0, "low": 1.0, "high": 1.0, "wins": 5, "ties": 0,
                                                   "losses": 0, "n": 5}


# ---------------------------------------------------------------------------------------------------- pass@k


def test_pass_at_k_hand_computed():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c / n
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0  # only one wrong sample: any 2 drawn include a correct one
    assert pass_at_k(5, 5, 5) == 1.0


def test_pass_at_k_product_form_matches_binomials():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k)), (n, c, k)
    assert pass_at_k(5000, 10, 100) == pytest.approx(1 - comb(4990, 100) / comb(5000, 100))  # floats would overflow


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match="k=6 with n=5"):
        pass_at_k(5, 2, 6)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(5, 6, 1)


def test_pass_at_k_mean_over_prompts():
    correct = [[True, False, False, False, True], [True, True]]  # n=5 c=2, n=2 c=2
    assert pass_at_k_mean(correct, 1) == pytest.approx((0.4 + 1.0) / 2)
    assert pass_at_k_mean(correct, 2) == pytest.approx((0.7 + 1.0) / 2)
    with pytest.raises(ValueError, match="prompt 1 has 2 samples, fewer than k=3"):
        pass_at_k_mean(correct, 3)


# ---------------------------------------------------------------------------------------------------- diversity


def test_distinct_n_hand_computed():
    texts = ["the cat sat", "the cat ran"]
    # bigrams: (the cat) (cat sat) (the cat) (cat ran): 3 unique of 4; unigrams: 4 unique of 6
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(["hi", ""], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def test_repetition_rate_hand_computed():
    # "the cat the cat": bigrams (the cat) (cat the) (the cat), 2 unique of 3 -> 1/3; "a b c" -> 0; "hi" has none -> 0
    assert repetition_rate(["the cat the cat", "a b c", "hi"]) == pytest.approx((1 / 3 + 0 + 0) / 3)
    assert repetition_rate(["go go go go"], n=1) == pytest.approx(1 - 1 / 4)
    assert repetition_rate([]) == 0.0


# ---------------------------------------------------------------------------------------------------- agreement


def _labels_from_counts(rows: list[list[int]]) -> list[list[str]]:
    return [[category for category, count in zip("ABCDE", row) for _ in range(count)] for row in rows]


def test_fleiss_kappa_wikipedia_worked_example():
    # en.wikipedia.org/wiki/Fleiss%27_kappa: 10 items, 14 raters, 5 categories
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    # sum_ij n_ij^2 = 828, so P_bar = (828 - 140) / (10 * 14 * 13) = 172/455; column totals 20 28 39 21 32 give
    # P_e = (20^2 + 28^2 + 39^2 + 21^2 + 32^2) / 140^2 = 417/1960; kappa = (172/455 - 417/1960) / (1 - 417/1960)
    kappa = fleiss_kappa(_labels_from_counts(counts))
    assert kappa == pytest.approx(4211 / 20059)
    assert round(kappa, 3) == 0.210


def test_fleiss_kappa_perfect_and_degenerate_agreement():
    assert fleiss_kappa([["a", "a", "a"], ["b", "b", "b"], ["tie", "tie", "tie"]]) == 1.0
    assert fleiss_kappa([["a", "a"], ["a", "a"]]) == 1.0  # P_e = 1: one category throughout, documented as 1
    with pytest.raises(ValueError, match="item 1 has 3 ratings but item 0 has 2"):
        fleiss_kappa([["a", "b"], ["a", "b", "a"]])
    with pytest.raises(ValueError, match="at least 2 raters"):
        fleiss_kappa([["a"], ["b"]])


def test_cohen_kappa_hand_computed():
    # 50 items: both yes 20, a yes / b no 5, a no / b yes 10, both no 15. p_o = 35/50 = 0.7;
    # a says yes 25/50, b 30/50: p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["x", "y"], ["x", "y"]) == 1.0
    assert cohen_kappa(["x", "x"], ["x", "x"]) == 1.0
    with pytest.raises(ValueError, match="2 labels but rater b has 1"):
        cohen_kappa(["x", "y"], ["x"])


# ---------------------------------------------------------------------------------------------------- the sheet

BASE, GOOD, MIXED = "basewise", "zorblax", "quuxly"  # names that cannot occur by chance in the sheet's text
PROMPTS = [f"question number {i}?" for i in range(8)]
ANSWERS = {BASE: [f"plain reply {i}" for i in range(8)], GOOD: [f"bright reply {i}" for i in range(8)],
           MIXED: [f"odd reply {i}" for i in range(8)]}
WHO = {"plain": BASE, "bright": GOOD, "odd": MIXED}


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _side(row, model):
    """The side ('a' or 'b') where ``model``'s answer sits, read from the answer's text."""
    return "a" if WHO[row["response_a"].split()[0]] == model else "b"


def _compared(row):
    """The non-baseline model of an item, read from the answers' text."""
    return next(WHO[row[f"response_{s}"].split()[0]] for s in "ab" if WHO[row[f"response_{s}"].split()[0]] != BASE)


def test_write_sheet_is_blind_complete_and_seeded(tmp_path):
    paths = write_sheet(tmp_path / "he", PROMPTS, ANSWERS, BASE, items_per_model=8, seed=0)
    assert set(paths) == {"csv", "jsonl", "key"} and all(p.exists() for p in paths.values())
    for name in ("csv", "jsonl"):
        text = paths[name].read_text()
        assert not any(model in text for model in ANSWERS), f"a model name leaks into the {name} sheet"
    rows = _read_csv(paths["csv"])
    assert rows == [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    assert list(rows[0]) == ["item", "prompt", "response_a", "response_b", "helpfulness", "harmlessness",
                             "honesty", "rater", "comment"]
    assert [r["item"] for r in rows] == [f"item-{i:04d}" for i in range(1, 17)]
    assert all(r[f] == "" for r in rows for f in ("helpfulness", "harmlessness", "honesty", "rater", "comment"))
    key = json.loads(paths["key"].read_text())
    sides = set()
    for row in rows:
        index = PROMPTS.index(row["prompt"])
        pair = key[row["item"]]
        assert row["response_a"] == ANSWERS[pair["a"]][index] and row["response_b"] == ANSWERS[pair["b"]][index]
        assert BASE in pair.values()
        sides.add(_side(row, BASE))
    assert sides == {"a", "b"}  # both left/right orders occur
    per_model = {m: sorted(PROMPTS.index(r["prompt"]) for r in rows if _compared(r) == m) for m in (GOOD, MIXED)}
    assert per_model == {GOOD: list(range(8)), MIXED: list(range(8))}  # every prompt once per model
    again = write_sheet(tmp_path / "again", PROMPTS, ANSWERS, BASE, items_per_model=8, seed=0)
    assert again["csv"].read_text() == paths["csv"].read_text()
    assert write_sheet(tmp_path / "other", PROMPTS, ANSWERS, BASE, 8, seed=1)["csv"].read_text() != \
        paths["csv"].read_text()
    few = _read_csv(write_sheet(tmp_path / "few", PROMPTS, ANSWERS, BASE, items_per_model=3)["csv"])
    assert sorted(_compared(r) for r in few) == [MIXED] * 3 + [GOOD] * 3


def test_write_sheet_refuses_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=f"baseline 'nobody' is not among .*{BASE}, {MIXED}, {GOOD}"):
        write_sheet(tmp_path, PROMPTS, ANSWERS, "nobody")
    with pytest.raises(ValueError, match=f"model '{GOOD}' has 7 answers but there are 8 prompts"):
        write_sheet(tmp_path, PROMPTS, {**ANSWERS, GOOD: ANSWERS[GOOD][:7]}, BASE)


def test_read_ratings_two_raters_win_rates_and_ties(tmp_path):
    paths = write_sheet(tmp_path, PROMPTS, ANSWERS, BASE, items_per_model=8)
    rows = _read_csv(paths["csv"])
    one, two = [dict(r) for r in rows], [dict(r) for r in rows]
    mixed_seen = 0
    for r1, r2 in zip(one, two):
        model = _compared(r1)
        # helpfulness: both raters always prefer the model's answer (written in mixed case / with spaces once)
        r1["helpfulness"] = _side(r1, model).upper()
        r2["helpfulness"] = f" {_side(r2, model)} "
        if model == MIXED:
            # honesty: rater one says tie on all 8 MIXED items; rater two prefers MIXED on 6 and the baseline on 2
            r1["honesty"] = "Tie"
            r2["honesty"] = _side(r2, MIXED if mixed_seen < 6 else BASE)
            mixed_seen += 1
    result = read_ratings([_write_csv(tmp_path / "one.csv", one), _write_jsonl(tmp_path / "two.jsonl", two)],
                          paths["key"], BASE)
    assert result["raters"] == sorted([str(tmp_path / "one.csv"), str(tmp_path / "two.jsonl")])
    for model in (GOOD, MIXED):
        assert result["models"][model]["helpfulness"] == {"win_rate": 1.0, "low": 1.0, "high": 1.0, "n": 16}
    honesty = result["models"][MIXED]["honesty"]
    assert honesty["n"] == 16 and honesty["win_rate"] == pytest.approx((8 * 0.5 + 6 * 1.0 + 2 * 0.0) / 16)
    assert honesty["low"] < honesty["win_rate"] < honesty["high"]
    assert result["models"][GOOD]["honesty"]["n"] == 0 and math.isnan(result["models"][GOOD]["honesty"]["win_rate"])
    assert result["models"][GOOD]["harmlessness"]["n"] == 0  # empty cells are skipped, not counted
    helpfulness = result["agreement"]["helpfulness"]
    assert helpfulness["items"] == 16 and helpfulness["raters"] == 2  # the same label on every item, both sides used
    assert helpfulness["fleiss_kappa"] == pytest.approx(1.0)
    assert result["agreement"]["harmlessness"] == {"fleiss_kappa": None, "items": 0, "raters": 0}


def test_read_ratings_fleiss_kappa_from_a_rater_column(tmp_path):
    paths = write_sheet(tmp_path, PROMPTS, ANSWERS, BASE, items_per_model=8)
    labels = {"item-0001": "aaa", "item-0002": "aab", "item-0003": "bbt", "item-0004": "tba", "item-0005": "ab",
              "item-0006": "a"}  # raters ann, bob, cy in order; item 5 has two raters, item 6 one
    rows = [{"item": item, "helpfulness": {"t": "tie"}.get(label, label), "harmlessness": "a" if rater == "ann" else "",
             "rater": rater} for item, given in labels.items() for rater, label in zip(("ann", "bob", "cy"), given)]
    result = read_ratings([_write_csv(tmp_path / "all.csv", rows)], paths["key"], BASE)
    assert result["raters"] == ["ann", "bob", "cy"]
    # the four 3-rater items (the most common count): P_i = 1, 1/3, 1/3, 0, so P_bar = 5/12; labels a 6, b 4,
    # tie 2 of 12, so P_e = (36 + 16 + 4) / 144 = 7/18; kappa = (5/12 - 7/18) / (11/18) = 1/22
    assert result["agreement"]["helpfulness"] == {"fleiss_kappa": pytest.approx(1 / 22), "items": 4, "raters": 3}
    assert result["agreement"]["harmlessness"]["fleiss_kappa"] is None  # only ann rated it
    assert sum(result["models"][m]["helpfulness"]["n"] for m in (GOOD, MIXED)) == 3 + 3 + 3 + 3 + 2 + 1


def test_read_ratings_bad_cell_names_file_line_and_field(tmp_path):
    paths = write_sheet(tmp_path, PROMPTS, ANSWERS, BASE, items_per_model=8)
    rows = _read_csv(paths["csv"])
    rows[5]["helpfulness"] = "maybe"  # data row 6 is line 7 after the header
    bad = _write_csv(tmp_path / "ratings.csv", rows)
    with pytest.raises(ValueError, match=re.escape(
            f'{bad} line 7: field "helpfulness" = "maybe"; expected a, b or tie (or empty)')):
        read_ratings([bad], paths["key"], BASE)
    jsonl = [{"item": "item-0001", "honesty": "b"}, {"item": "item-0002", "honesty": 1}]
    bad = _write_jsonl(tmp_path / "ratings.jsonl", jsonl)
    with pytest.raises(ValueError, match=re.escape(f'{bad} line 2: field "honesty" = 1; expected a, b or tie')):
        read_ratings([bad], paths["key"], BASE)


def test_read_ratings_csv_line_numbers_count_multiline_answers(tmp_path):
    answers = {model: [f"{text}\nsecond line" for text in texts] for model, texts in ANSWERS.items()}
    paths = write_sheet(tmp_path, PROMPTS, answers, BASE, items_per_model=8)
    rows = _read_csv(paths["csv"])
    rows[2]["honesty"] = "both"  # each record spans 3 lines: the third starts at line 2 + 3 * 2 = 8
    bad = _write_csv(tmp_path / "ratings.csv", rows)
    with pytest.raises(ValueError, match=re.escape(f'{bad} line 8: field "honesty" = "both"')):
        read_ratings([bad], paths["key"], BASE)


def test_read_ratings_unknown_item_and_double_rating(tmp_path):
    paths = write_sheet(tmp_path, PROMPTS, ANSWERS, BASE, items_per_model=8)
    bad = _write_jsonl(tmp_path / "r.jsonl", [{"item": "item-0001", "honesty": "a"}, {"item": "item-9999"}])
    with pytest.raises(ValueError, match=re.escape(f'{bad} line 2: item "item-9999" is not in the key')):
        read_ratings([bad], paths["key"], BASE)
    twice = _write_jsonl(tmp_path / "t.jsonl", [{"item": "item-0001", "honesty": "a"},
                                                 {"item": "item-0001", "honesty": "b"}])
    with pytest.raises(ValueError, match=re.escape(f"{twice} line 2: rater \"{twice}\" rated item-0001 honesty again")):
        read_ratings([twice], paths["key"], BASE)


def test_read_ratings_refuses_a_sheet_without_rating_fields(tmp_path):
    paths = write_sheet(tmp_path, PROMPTS, ANSWERS, BASE, items_per_model=8)
    renamed = _write_csv(tmp_path / "r.csv", [{"item": "item-0001", "Helpfulness": "a"}])
    with pytest.raises(ValueError, match=re.escape(f"{renamed}: no rating field (want helpfulness, harmlessness, "
                                                   "honesty; have: Helpfulness, item)")):
        read_ratings([renamed], paths["key"], BASE)
