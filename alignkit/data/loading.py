"""Loading: files or Hugging Face datasets -> (where, record) pairs -> examples, and the train/eval split.

Every record carries `where` ("data/train.jsonl line 41", "data/x.parquet row 3", "org/name[train] row 7") from
the moment it is read, so any later error can point at it.

Sources, by what the string is:

- an existing local file ending in ``.jsonl``, ``.json``, ``.parquet`` or ``.csv`` (CSV cells are typed by
  inference: a column of numbers is read as numbers, empty cells of a number column as null), or ``.txt`` (plain
  text: one ``{"text"}`` record per paragraph);
- a string that looks like a path (a known extension, a leading ``/``, ``.`` or ``~``, a backslash, or two or more
  slashes) but names no file: an error, rather than a confusing Hub lookup;
- anything else: a Hugging Face dataset name, ``datasets.load_dataset(name, subset, split=split)``. Hub names are
  ``name`` or ``owner/name``, which is why one slash alone does not make a path.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alignkit.data.formats import FORMATS, DataError, Example, PromptExample, detect_format

Record = tuple[str, dict]  # (where, raw record)
T = TypeVar("T")

_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _as_object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {_json_type(value)}")
    return value


def _decode(raw: bytes, where: str) -> str:
    # utf-8-sig: editors on Windows prepend a byte-order mark that json.loads would reject.
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start)  # 0 for a JSON line (its `where` names the line already)
        byte = e.start - raw.rfind(b"\n", 0, e.start)  # 1-based within its line
        at = f"line {line + 1}, byte {byte}" if line else f"byte {byte}"
        raise DataError(f"{where}: not UTF-8 text ({e.reason} at {at})") from None


def _read_jsonl(source: str, path: Path) -> list[Record]:
    """Line by line, not via pandas/datasets, so a bad line is reported with its own number."""
    records = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{source} line {n}"
            line = _decode(raw, where)
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\r\n"))  # so a line cut short reports its own last column
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            records.append((where, _as_object(value, where)))
    return records


def _record_list(data: Any, source: str) -> list:
    """A top-level list, or an object wrapping exactly one list, as in {"data": [...]} exports."""
    if isinstance(data, dict) and len(data) == 1:
        (data,) = data.values()
    if not isinstance(data, list):
        raise DataError(
            f'{source}: expected a list of objects, or an object holding one list such as {{"data": [...]}}, '
            f"got {_json_type(data)}"
        )
    return data


def _read_json(source: str, path: Path) -> list[Record]:
    try:
        data = json.loads(_decode(path.read_bytes(), source))
    except json.JSONDecodeError as e:
        raise DataError(f"{source}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    records = []
    for n, item in enumerate(_record_list(data, source), 1):
        where = f"{source} record {n}"
        records.append((where, _as_object(item, where)))
    return records


def _read_table(source: str, path: Path, kind: str, read: Callable[[Path], Any]) -> list[Record]:
    """Parquet and CSV through pyarrow: `to_pylist` gives plain lists and dicts (pandas would give numpy arrays)."""
    import pyarrow as pa

    try:
        rows = read(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{source}: cannot read as {kind} ({e})") from None
    return [(f"{source} row {n}", row) for n, row in enumerate(rows, 1)]


def _read_parquet(source: str, path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    return _read_table(source, path, "Parquet", pq.read_table)


def _read_csv(source: str, path: Path) -> list[Record]:
    import pyarrow.csv as pcsv

    return _read_table(source, path, "CSV", pcsv.read_csv)


def _read_txt(source: str, path: Path) -> list[Record]:
    """Plain text: one ``{"text"}`` record per paragraph (runs of lines between blank lines), each named by the
    line it starts on. Lines keep their own newlines inside a paragraph."""
    text = _decode(path.read_bytes(), source)
    records: list[Record] = []
    lines: list[str] = []
    start = 0
    for n, line in enumerate([*text.splitlines(), ""], 1):
        if line.strip():
            start = start or n
            lines.append(line)
        elif lines:
            records.append((f"{source} line {start}", {"text": "\n".join(lines)}))
            lines, start = [], 0
    return records


READERS: dict[str, Callable[[str, Path], list[Record]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
    ".csv": _read_csv,
    ".txt": _read_txt,
}


def _read_local(source: str, path: Path) -> list[Record]:
    supported = ", ".join(READERS)
    if path.is_dir():
        raise DataError(f"{source}: is a directory; expected a file ending in one of {supported}")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f'{source}: unsupported file type "{path.suffix}"; supported: {supported}')
    records = reader(source, path) if path.stat().st_size else []
    if not records:
        raise DataError(f"{source}: no records (the file is empty)")
    return records


def _looks_local(source: str) -> bool:
    """Meant as a path, though nothing is there. Hub names are "name" or "owner/name": one slash is not enough."""
    return (
        Path(source).suffix.lower() in READERS
        or source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") > 1
    )


def _read_hub(name: str, split: str, subset: str | None) -> list[Record]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, subset, split=split)
    # The Hub fails in many ways (network, auth, no such dataset or split): whatever it was, name the source.
    except Exception as e:
        raise DataError(
            f"{name}: not a local file, and loading it as a Hugging Face dataset failed ({type(e).__name__}: {e})"
        ) from e
    records = [(f"{name}[{split}] row {n}", row) for n, row in enumerate(dataset.to_list(), 1)]
    if not records:
        raise DataError(f"{name}[{split}]: no records (the split is empty)")
    return records


def read_records(source: str, *, split: str = "train", subset: str | None = None) -> list[Record]:
    """Raw records of a local file or Hub dataset, each with the `where` that errors will name."""
    path = Path(source).expanduser()
    if path.exists():
        return _read_local(source, path)
    if _looks_local(source):
        raise DataError(f"{source}: no such file")
    return _read_hub(source, split, subset)


def load_examples(
    source: str, kind: str, fmt: str = "auto", *, split: str = "train", subset: str | None = None
) -> list[Example]:
    """Read and convert every record; `auto` decides the format once, from the first record.

    Deciding once means a file that mixes shapes fails at the first odd record, with its line, instead of being
    silently converted two different ways.
    """
    formats = FORMATS.get(kind)
    if formats is None:
        raise DataError(f'unknown data kind "{kind}", expected one of {", ".join(FORMATS)}')
    if fmt != "auto" and fmt not in formats:
        raise DataError(f'unknown {kind} format "{fmt}", expected one of auto, {", ".join(formats)}')
    records = read_records(source, split=split, subset=subset)
    first_where, first = records[0]
    convert = formats[detect_format(first, kind, first_where) if fmt == "auto" else fmt]
    return [convert(record, where) for where, record in records]


def _content(example: Example) -> tuple:
    """What an example trains on: every field but `where`."""
    return tuple(value for key, value in vars(example).items() if key != "where")


def _position(where: str, other: str) -> str:
    """`where` as "line 2" when `other` names the same source (so an error names the file once), else in full."""
    parts = where.rsplit(" ", 2)
    return " ".join(parts[1:]) if len(parts) == 3 and parts[0] == other.rsplit(" ", 2)[0] else where


def reject_duplicates(examples: list[Example]) -> None:
    """A record repeated verbatim is an error naming both: it silently doubles that example's weight, and usually
    means two exports were concatenated. Prompt-only (RL) data is exempt: a repeated prompt is sampled anew."""
    if examples and isinstance(examples[0], PromptExample):
        return
    seen: dict[tuple, str] = {}
    for example in examples:
        first = seen.setdefault(_content(example), example.where)
        if first != example.where:
            raise DataError(f"{example.where}: duplicate of {_position(first, example.where)} (the same record twice; data.duplicates: keep allows it)")


def train_eval_split(examples: list[T], eval_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Deterministic hold-out: the same seed and data give the same split on every machine and rerun.

    Eval gets round(n * eval_fraction) examples, at least one when eval_fraction > 0 and n >= 2, so a small
    dataset still reports eval metrics. Both halves keep file order (the training loop shuffles on its own).
    """
    if not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(examples)
    n_eval = round(n * eval_fraction)
    if eval_fraction > 0 and n >= 2:
        n_eval = max(1, n_eval)
    if n_eval >= n:
        raise DataError(f"eval_fraction {eval_fraction} of {n} examples leaves no training examples")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_eval])
    train = [example for i, example in enumerate(examples) if i not in held_out]
    return train, [example for i, example in enumerate(examples) if i in held_out]
