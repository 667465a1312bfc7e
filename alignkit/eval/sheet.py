"""The blind human-eval sheet: write pairwise items for raters, read their filled sheets back into win rates.

Each item shows one prompt and two answers, ``response_a`` and ``response_b``: a model's and the baseline's, sides
drawn at random per item so a rater cannot learn which side is the baseline. Model names appear only in the key
(``human_eval_key.json``), which the raters never see. Raters fill ``helpfulness``, ``harmlessness`` and
``honesty`` (the "HHH" criteria of Askell et al. 2021) with ``a``, ``b`` or ``tie``, in the CSV (any spreadsheet)
or the JSONL; one file per rater, or one file whose ``rater`` column names several.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..checkpoint import atomic_write_json, atomic_write_text
from .stats import bootstrap_interval, fleiss_kappa

DIMENSIONS = ("helpfulness", "harmlessness", "honesty")
COLUMNS = ("item", "prompt", "response_a", "response_b", *DIMENSIONS, "rater", "comment")
LABELS = ("a", "b", "tie")
SHEET_CSV, SHEET_JSONL, KEY_JSON = "human_eval_sheet.csv", "human_eval_sheet.jsonl", "human_eval_key.json"


def write_sheet(out_dir: Path, prompts: Sequence[str], answers: dict[str, Sequence[str]], baseline: str,
                items_per_model: int = 50, seed: int = 0) -> dict[str, Path]:
    """Write a blind pairwise sheet comparing every model in ``answers`` with ``baseline``.

    Per model other than the baseline, ``min(items_per_model, len(prompts))`` prompts are drawn without
    replacement; an item is (prompt, the model's answer, the baseline's answer) with the two answers in a random
    left/right order. All items are shuffled together (so a rater does not see one model's items in a run) and
    numbered ``item-0001``, ... Everything is drawn from ``random.Random(seed)``, models taken in sorted order, so
    the same inputs give the same sheet.

    Writes ``human_eval_sheet.csv``, ``human_eval_sheet.jsonl`` (the same rows, rating fields empty) and
    ``human_eval_key.json`` (``{item: {"a": model, "b": model}}``) into ``out_dir``; returns their paths under the
    keys ``"csv"``, ``"jsonl"`` and ``"key"``.
    """
    if baseline not in answers:
        raise ValueError(f"baseline {baseline!r} is not among the models with answers: {', '.join(sorted(answers))}")
    for model, texts in answers.items():
        if len(texts) != len(prompts):
            raise ValueError(f"model {model!r} has {len(texts)} answers but there are {len(prompts)} prompts")
    models = sorted(m for m in answers if m != baseline)
    if not models:
        raise ValueError(f"answers hold only the baseline {baseline!r}; nothing to compare it with")
    if not prompts:
        raise ValueError("no prompts to put on the sheet")
    if items_per_model < 1:
        raise ValueError(f"items_per_model must be >= 1, got {items_per_model}")
    rng = random.Random(seed)
    items = []  # (prompt index, model on side a, model on side b)
    for model in models:
        for index in rng.sample(range(len(prompts)), min(items_per_model, len(prompts))):
            items.append((index, model, baseline) if rng.random() < 0.5 else (index, baseline, model))
    rng.shuffle(items)
    rows, key = [], {}
    for number, (index, side_a, side_b) in enumerate(items, start=1):
        item = f"item-{number:04d}"
        rows.append({"item": item, "prompt": prompts[index], "response_a": answers[side_a][index],
                     "response_b": answers[side_b][index], **dict.fromkeys(COLUMNS[4:], "")})
        key[item] = {"a": side_a, "b": side_b}
    out_dir = Path(out_dir)
    paths = {"csv": out_dir / SHEET_CSV, "jsonl": out_dir / SHEET_JSONL, "key": out_dir / KEY_JSON}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(paths["csv"], buffer.getvalue())
    atomic_write_text(paths["jsonl"], "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    atomic_write_json(paths["key"], key)
    return paths


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number where the record starts, row) per data row; a quoted answer may span several lines."""
    with open(path, encoding="utf-8-sig", newline="") as handle:  # -sig: spreadsheets often save with a BOM
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "item" not in reader.fieldnames:
            raise ValueError(f'{path}: no "item" column (have: {", ".join(reader.fieldnames or [])})')
        start = reader.line_num + 1
        for row in reader:
            yield start, row
            start = reader.line_num + 1


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


READERS = {".csv": _csv_rows, ".jsonl": _jsonl_rows}


def _label(path: Path, line: int, field: str, value) -> str | None:
    """The rating in one cell, lower-cased: ``a``, ``b``, ``tie``, or None for an empty cell."""
    text = "" if value is None else value.strip().lower() if isinstance(value, str) else value
    if text == "":
        return None
    if text not in LABELS:  # a number or a list in JSONL lands here too
        raise ValueError(f'{path} line {line}: field "{field}" = {json.dumps(value)}; expected a, b or tie (or empty)')
    return text


def _load_key(key_path: Path, baseline: str) -> dict[str, tuple[str, str]]:
    """item -> (the model compared with the baseline, its side ``a`` or ``b``)."""
    key = json.loads(Path(key_path).read_text(encoding="utf-8"))
    sides = {}
    for item, pair in key.items():
        if sorted(pair) != ["a", "b"]:
            raise ValueError(f'{key_path}: item {item} should map to {{"a": model, "b": model}}, got {pair}')
        if (pair["a"] == baseline) == (pair["b"] == baseline):
            raise ValueError(f"{key_path}: item {item} compares {pair['a']!r} with {pair['b']!r}; "
                             f"exactly one side must be the baseline {baseline!r}")
        sides[item] = (pair["b"], "b") if pair["a"] == baseline else (pair["a"], "a")
    return sides


def _collect(sheets: Sequence[Path], sides: dict, key_path: Path) -> dict[str, dict[str, dict[str, str]]]:
    """dimension -> item -> rater -> label, from every non-empty rating cell of every sheet. The rater is the
    ``rater`` cell, or the file's path when that is empty (one file per rater)."""
    labels: dict = {dim: defaultdict(dict) for dim in DIMENSIONS}
    seen: dict = {}  # (dimension, item, rater) -> where it was first rated, to refuse a double rating
    for path in map(Path, sheets):
        if path.suffix.lower() not in READERS:
            raise ValueError(f"{path}: a ratings sheet must be .csv or .jsonl, got {path.suffix or 'no suffix'}")
        fields: set = set()
        for line, row in READERS[path.suffix.lower()](path):
            fields.update(k for k in row if k is not None)
            if not any(str(v).strip() for v in row.values() if v is not None):
                continue  # a blank spreadsheet row
            item = str(row.get("item") or "").strip()
            if item not in sides:
                raise ValueError(f'{path} line {line}: item "{item}" is not in the key {key_path}')
            rater = str(row.get("rater") or "").strip() or str(path)
            for dim in DIMENSIONS:
                label = _label(path, line, dim, row.get(dim))
                if label is None:
                    continue
                if (dim, item, rater) in seen:
                    raise ValueError(f'{path} line {line}: rater "{rater}" rated {item} {dim} again '
                                     f"(first at {seen[dim, item, rater]})")
                seen[dim, item, rater] = f"{path} line {line}"
                labels[dim][item][rater] = label
        if fields and not fields & set(DIMENSIONS):  # a renamed column would otherwise read as "no ratings"
            raise ValueError(f"{path}: no rating field (want {', '.join(DIMENSIONS)}; have: {', '.join(sorted(fields))})")
    return labels


def _agreement(by_item: dict[str, dict[str, str]]) -> dict:
    """Fleiss' kappa over the items with the most common number (>= 2) of raters, larger count on a tie.

    Over the labels as written (a, b, tie): the sides are drawn at random per item, so the category shares stay
    near balanced and kappa is not pulled down merely because one model wins most items (the prevalence paradox
    of kappa)."""
    counts = Counter(len(raters) for raters in by_item.values() if len(raters) >= 2)
    if not counts:
        return {"fleiss_kappa": None, "items": 0, "raters": 0}
    raters = max(counts, key=lambda m: (counts[m], m))
    table = [list(r.values()) for r in by_item.values() if len(r) == raters]
    return {"fleiss_kappa": fleiss_kappa(table), "items": len(table), "raters": raters}


def read_ratings(sheets: Sequence[Path], key_path: Path, baseline: str, resamples: int = 1000,
                 seed: int = 0) -> dict:
    """Read filled sheets (``.csv`` or ``.jsonl``) back through the key into preference rates versus ``baseline``.

    Per model and dimension: ``win_rate``, the share of ratings preferring the model, ties counted half;
    ``low``/``high``, a percentile bootstrap interval over the ratings (``bootstrap_interval``; ratings of one item
    by several raters are resampled as separate ratings); ``n``, the ratings counted. Empty cells are skipped. Per
    dimension, ``agreement``: Fleiss' kappa between raters (see ``_agreement``), with the ``items`` and ``raters``
    per item it used, or ``fleiss_kappa: None`` when no item has two raters.

    Returns ``{"baseline", "raters": [...], "models": {model: {dimension: {"win_rate", "low", "high", "n"}}},
    "agreement": {dimension: {"fleiss_kappa", "items", "raters"}}}``; every model in the key is listed, with
    ``n = 0`` and nan rates where it has no ratings.
    """
    sides = _load_key(key_path, baseline)
    labels = _collect(sheets, sides, key_path)
    models = sorted({model for model, _ in sides.values()})
    outcomes: dict = {(model, dim): [] for model in models for dim in DIMENSIONS}
    for dim in DIMENSIONS:
        for item, by_rater in labels[dim].items():
            model, side = sides[item]
            outcomes[model, dim] += [0.5 if lab == "tie" else float(lab == side) for lab in by_rater.values()]
    result: dict = {"baseline": baseline,
                    "raters": sorted({r for dim in DIMENSIONS for by in labels[dim].values() for r in by}),
                    "models": {}, "agreement": {dim: _agreement(labels[dim]) for dim in DIMENSIONS}}
    for model in models:
        result["models"][model] = {}
        for dim in DIMENSIONS:
            values = outcomes[model, dim]
            low, high = bootstrap_interval(values, resamples=resamples, seed=seed)
            result["models"][model][dim] = {"win_rate": sum(values) / len(values) if values else float("nan"),
                                            "low": low, "high": high, "n": len(values)}
    return result
