"""Records out: the output file (checked before any work, written atomically in the type its extension names) and
the report every command prints: what it kept, what it dropped, and why, counted per reason.

Nothing here overwrites an input: an output path that is one of the inputs is refused even with ``--force``
(which only allows replacing an earlier output).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...checkpoint import atomic_write_bytes
from ..formats import DataError
from .records import short

SHOW = 10  # dropped records listed per reason; the counts are always complete


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def _json(records: list[dict]) -> bytes:
    # a plain list: a {"data": [...]} wrapper around the input's records is not kept (the loader reads both)
    return (json.dumps(records, ensure_ascii=False, indent=2) + "\n").encode()


def _table(records: list[dict], kind: str):
    import pyarrow as pa

    try:
        return pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # e.g. a field that is text in one record, a list in another
        raise DataError(f"cannot write the records as {kind}: {e}; write .jsonl instead") from None


def _parquet(records: list[dict]) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(_table(records, "Parquet"), buffer)
    return buffer.getvalue()


def _csv(records: list[dict]) -> bytes:
    import pyarrow.csv as pcsv

    for n, record in enumerate(records, 1):
        for key, value in record.items():
            if isinstance(value, (list, dict)):
                raise DataError(f'cannot write record {n} as CSV: field "{key}" is a {type(value).__name__} '
                                "(CSV cells hold text and numbers); write .jsonl or .parquet instead")
    buffer = io.BytesIO()
    pcsv.write_csv(_table(records, "CSV"), buffer)
    return buffer.getvalue()


def _txt(records: list[dict]) -> bytes:
    """A .txt file is read back one {"text"} record per paragraph, so only such records, without blank lines
    inside (they would split into two), can be written as one."""
    texts = []
    for n, record in enumerate(records, 1):
        text = record.get("text")
        if set(record) != {"text"} or not isinstance(text, str):
            raise DataError(f'cannot write record {n} as .txt: a .txt file holds only {{"text"}} records '
                            f"(have: {', '.join(record)}); write .jsonl instead")
        if any(not line.strip() for line in text.strip("\n").split("\n")):
            raise DataError(f"cannot write record {n} as .txt: its text has a blank line, which would split it "
                            "in two when read back; write .jsonl instead")
        texts.append(text.strip("\n"))
    return ("\n\n".join(texts) + "\n").encode()


WRITERS: dict[str, Callable[[list[dict]], bytes]] = {
    ".jsonl": _jsonl, ".json": _json, ".parquet": _parquet, ".csv": _csv, ".txt": _txt,
}


def check_output(out: str, inputs: Sequence[str], force: bool, same_type_as: str | None = None) -> Path:
    """The output path, refused before any work is done: one of the inputs (never, whatever --force says), an
    existing file (unless --force), an unknown extension, or (``same_type_as``: the input) another file type."""
    path = Path(out).expanduser()
    for source in inputs:
        given = Path(source).expanduser()
        if given.exists() and path.exists() and path.resolve() == given.resolve():
            raise DataError(f"-o {out}: is an input file; the data tools never overwrite their input, name a new file")
    if path.suffix.lower() not in WRITERS:
        raise DataError(f'-o {out}: unsupported file type "{path.suffix}"; supported: {", ".join(WRITERS)}')
    if same_type_as is not None:
        want = Path(same_type_as).suffix.lower()
        if want in WRITERS and path.suffix.lower() != want:
            raise DataError(f"-o {out}: the output keeps the input's file type ({want}); name it ...{want} "
                            "(alignkit data convert can change file types)")
    if path.is_dir():
        raise DataError(f"-o {out}: is a directory; name a file")
    if path.exists() and not force:
        raise DataError(f"-o {out}: exists; pass --force to replace it")
    return path


def write_records(path: Path, records: list[dict]) -> None:
    """All records at once, to a temporary file renamed into place: an interrupted write leaves no half file."""
    if not records:
        raise DataError(f"{path}: nothing to write (every record was dropped); the file was not written")
    atomic_write_bytes(path, WRITERS[path.suffix.lower()](records))


@dataclass(frozen=True)
class Drop:
    where: str  # the dropped record
    reason: str  # what is counted: "exact duplicate", "too long", ...
    detail: str = ""  # why this one: "of line 1", "1204 chars > --max-chars 1000"


def report(title: str, source: str, total: int, drops: Sequence[Drop]) -> str:
    """``title: kept K of N records, dropped D`` and per reason its count and its first `SHOW` records."""
    lines = [f"{title}: kept {total - len(drops)} of {total} records, dropped {len(drops)}"]
    by_reason: dict[str, list[Drop]] = {}
    for drop in drops:
        by_reason.setdefault(drop.reason, []).append(drop)
    width = max((len(reason) for reason in by_reason), default=0)
    for reason, group in by_reason.items():
        lines.append(f"  {reason:<{width}}  {len(group)}")
        for drop in group[:SHOW]:
            # the file is named once, in the title: "line 9: of line 2", not "line 9: of data/train.jsonl line 2"
            detail = drop.detail.replace(f"{source} ", "")
            lines.append(f"      {short(drop.where, source)}" + (f": {detail}" if detail else ""))
        if len(group) > SHOW:
            lines.append(f"      ... and {len(group) - SHOW} more")
    return "\n".join(lines)
