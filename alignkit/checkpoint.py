"""Atomic writes and exact resume.

Nothing is written in place: a file goes to a temporary name in the same folder and is renamed over the target;
a folder is built under a temporary name and renamed into place. A crash mid-write leaves the previous version
(or nothing) at the target, never half a file, so the last good checkpoint always survives.

A checkpoint ``checkpoints/step-N/`` holds accelerate's state (model, optimizers, schedulers, RNG of every
process) plus ``trainer_state.json`` (step, data position, recipe-specific state such as a KL controller).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (the old one is removed after)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    promote(tmp, path)


def promote(tmp: Path, path: Path) -> None:
    """Move a finished temporary folder into place, deleting any previous version only once the new one is there.

    A folder cannot replace a folder in one rename: the previous version is first moved aside to ``.NAME.old``.
    A kill between the two renames leaves it there (``checkpoint_dirs`` still finds it) until a later promote of
    the same name succeeds.
    """
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete step checkpoints of a run, oldest first (temporary or partial folders are ignored).

    A step whose save was killed inside ``promote`` is listed by its previous version, ``.step-N.old``.
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = {}
    for pattern, number in ((".step-*.old", lambda name: name[6:-4]), ("step-*", lambda name: name[5:])):
        for p in root.glob(pattern):  # step-N, second, wins over a leftover .step-N.old
            if number(p.name).isdecimal() and (p / STATE_FILE).is_file():  # not isdigit: int("²") fails
                found[int(number(p.name))] = p
    return [found[step] for step in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(accelerator, run_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save everything needed to resume at ``step``, atomically; keep only the newest ``keep`` checkpoints.

    Every process writes its part (accelerate: weights and optimizers from the main process, RNG from each) into
    one temporary folder with a fixed name; only when all are done does the main process add trainer_state.json
    (the mark of a complete checkpoint) and rename the folder into place.
    """
    target = Path(run_dir) / "checkpoints" / f"step-{step}"
    tmp = target.with_name(f".{target.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, {"step": step, **state})
        promote(tmp, target)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def load_checkpoint(accelerator, checkpoint: str | Path) -> dict[str, Any]:
    """Restore accelerate's state from ``checkpoint`` and return its trainer state."""
    checkpoint = Path(checkpoint)
    accelerator.load_state(str(checkpoint))
    return json.loads((checkpoint / STATE_FILE).read_text())
