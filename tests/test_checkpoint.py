"""Atomic writes and checkpoints: a crash at any point leaves the previous version, and resume is exact."""

import errno
import io
import json
import os
from pathlib import Path

import pytest
import torch

from alignkit import checkpoint
from alignkit.checkpoint import (
    STATE_FILE,
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    promote,
    save_checkpoint,
)


def names(folder: Path) -> list[str]:
    """Everything in ``folder``, hidden entries included: temporary leftovers must show up here."""
    return sorted(p.name for p in folder.iterdir())


class Killed(BaseException):
    """A kill at that instant: like KeyboardInterrupt, not an Exception, so only ``except BaseException`` sees it."""


def kill_at_replace(monkeypatch, when) -> list:
    """Make ``os.replace`` raise Killed on the call where ``when(n, src, dst)`` holds (n counts calls from 1);
    the others rename as usual. Returns the (src, dst) names of every call."""
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if when(len(calls), Path(src), Path(dst)):
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    return calls


# ------------------------------------------------------------------------------------------------ files
def test_atomic_write_bytes_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "state.json"  # the folder is created
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert names(target.parent) == ["state.json"]
    atomic_write_json(target, {"step": 3})
    assert json.loads(target.read_text()) == {"step": 3}


class DiskFullHalfway(io.FileIO):
    """A file whose write stores half the bytes and then fails, as on a full disk."""

    def write(self, data):
        super().write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("crash", ["write", "fsync", "replace"])
def test_atomic_write_bytes_failing_midway_keeps_the_old_content(tmp_path, monkeypatch, crash):
    target = tmp_path / "state.json"
    target.write_bytes(b"old content")
    if crash == "write":
        monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: DiskFullHalfway(fd, "w"))
    else:  # the bytes are all written to the temporary file, then the sync or the rename fails
        def boom(*args):
            raise OSError(errno.EIO, f"{crash} failed")

        monkeypatch.setattr(checkpoint.os, crash, boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new content, much longer than the old one")
    assert target.read_bytes() == b"old content"
    assert names(tmp_path) == ["state.json"]  # the temporary file is gone


def test_atomic_write_bytes_killed_leaves_no_temporary_and_no_target(tmp_path, monkeypatch):
    kill_at_replace(monkeypatch, lambda n, src, dst: n == 1)
    with pytest.raises(Killed):
        atomic_write_bytes(tmp_path / "fresh.bin", b"data")
    assert names(tmp_path) == []


# ---------------------------------------------------------------------------------------------- folders
def make_folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_atomic_dir_on_exception_removes_the_temporary_and_keeps_the_previous(tmp_path):
    target = make_folder(tmp_path / "model", **{"weights.bin": "old"})
    with pytest.raises(RuntimeError, match="crash"), atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        (tmp / "weights.bin").write_text("half")
        raise RuntimeError("crash while writing")
    assert contents(target) == {"weights.bin": "old"}
    assert names(tmp_path) == ["model"]


def test_atomic_dir_on_success_replaces_the_previous(tmp_path):
    target = make_folder(tmp_path / "model", **{"weights.bin": "old", "stale.txt": "x"})
    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_text("new")
    assert contents(target) == {"weights.bin": "new"}  # the old folder's files do not linger
    assert names(tmp_path) == ["model"]


def test_promote_replaces_an_existing_folder(tmp_path):
    target = make_folder(tmp_path / "step-2", **{STATE_FILE: "old", "a.bin": "a"})
    new = make_folder(tmp_path / ".step-2.tmp", **{STATE_FILE: "new"})
    promote(new, target)
    assert contents(target) == {STATE_FILE: "new"}
    assert names(tmp_path) == ["step-2"]  # neither the temporary nor the .old folder is left
    promote(make_folder(tmp_path / ".step-3.tmp", **{STATE_FILE: "3"}), tmp_path / "step-3")  # no previous one
    assert names(tmp_path) == ["step-2", "step-3"]


# ---------------------------------------------------------------------------------------------- listing
def complete(run: Path, name: str, step: int | None = None) -> Path:
    return make_folder(run / "checkpoints" / name, **{STATE_FILE: json.dumps({"step": step})})


def test_checkpoint_dirs_lists_complete_step_folders_in_numeric_order(tmp_path):
    run = tmp_path / "run"
    for step in (10, 9, 1, 100):
        complete(run, f"step-{step}", step)
    make_folder(run / "checkpoints" / "step-11", **{"model.safetensors": "x"})  # no trainer_state.json: partial
    complete(run, ".step-3.tmp", 3)  # a save in progress, even with its state file written
    for name in ("step-x", "step-", "step-5a", "step--4", "step-1.5", "step-\u00b2"):  # "²".isdigit() is True
        complete(run, name)
    (run / "checkpoints" / "step-12").write_text("a file, not a folder")
    assert [p.name for p in checkpoint_dirs(run)] == ["step-1", "step-9", "step-10", "step-100"]
    assert latest_checkpoint(run) == run / "checkpoints" / "step-100"


def test_latest_checkpoint_of_a_run_without_any(tmp_path):
    assert checkpoint_dirs(tmp_path / "missing") == []
    assert latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert latest_checkpoint(tmp_path / "empty") is None
    make_folder(tmp_path / "partial" / "checkpoints" / "step-4")
    complete(tmp_path / "partial", ".step-5.tmp", 5)
    assert latest_checkpoint(tmp_path / "partial") is None


# ------------------------------------------------------------------------------------- save and resume
@pytest.fixture()
def trainer():
    """A real single-process CPU accelerator with a tiny model and AdamW."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate's state is process-wide: start from a clean one (an earlier test may have set up a GPU), and
    # do not hand this CPU-only one to later tests
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    yield accelerator, model, optimizer
    AcceleratorState._reset_state(reset_partial_state=True)


def train_step(model, optimizer) -> None:
    loss = model(torch.randn(4, 3)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def snapshot(model, optimizer) -> tuple[dict, dict]:
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    moments = {(i, k): v.clone() for i, s in optimizer.state_dict()["state"].items() for k, v in s.items()}
    return weights, moments


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_save_and_load_restore_weights_optimizer_rng_and_trainer_state(tmp_path, trainer):
    accelerator, model, optimizer = trainer
    for _ in range(3):
        train_step(model, optimizer)
    saved = snapshot(model, optimizer)
    path = save_checkpoint(accelerator, tmp_path, 3, {"data_position": 12, "kl_coef": 0.05}, keep=2)
    assert path == tmp_path / "checkpoints" / "step-3" == latest_checkpoint(tmp_path)
    assert names(path.parent) == ["step-3"]  # the temporary folder was renamed, not copied
    next_draws = torch.rand(5)  # what the uninterrupted run draws next

    for _ in range(2):  # the run goes on, then dies
        train_step(model, optimizer)
    changed = snapshot(model, optimizer)
    assert not torch.equal(changed[0]["weight"], saved[0]["weight"])

    state = load_checkpoint(accelerator, latest_checkpoint(tmp_path))
    assert state == {"step": 3, "data_position": 12, "kl_coef": 0.05}
    weights, moments = snapshot(model, optimizer)
    assert_same(weights, saved[0])
    assert_same(moments, saved[1])  # AdamW's exp_avg, exp_avg_sq and step count
    assert torch.equal(torch.rand(5), next_draws)  # the RNG is where it was at the save


def test_save_keeps_only_the_newest(tmp_path, trainer):
    accelerator, model, optimizer = trainer
    for step in range(1, 6):
        train_step(model, optimizer)
        save_checkpoint(accelerator, tmp_path, step, {}, keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-4", "step-5"]
    assert names(tmp_path / "checkpoints") == ["step-4", "step-5"]
    save_checkpoint(accelerator, tmp_path, 10, {}, keep=1)  # step-10 sorts after step-5, not before it
    assert names(tmp_path / "checkpoints") == ["step-10"]


def test_save_killed_before_the_rename_leaves_the_previous_checkpoint_latest(tmp_path, trainer, monkeypatch):
    accelerator, model, optimizer = trainer
    train_step(model, optimizer)
    save_checkpoint(accelerator, tmp_path, 1, {"at": 1}, keep=2)
    train_step(model, optimizer)
    # killed as the finished temporary folder (trainer_state.json written) is renamed into place: it must not count
    calls = kill_at_replace(monkeypatch, lambda n, src, dst: src.name == ".step-2.tmp")
    with pytest.raises(Killed):
        save_checkpoint(accelerator, tmp_path, 2, {"at": 2}, keep=2)
    assert calls[-1] == (".step-2.tmp", "step-2")
    assert (tmp_path / "checkpoints" / ".step-2.tmp" / STATE_FILE).is_file()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-1"
    monkeypatch.undo()
    assert load_checkpoint(accelerator, latest_checkpoint(tmp_path)) == {"step": 1, "at": 1}
    # the next save of that step clears the leftover
    save_checkpoint(accelerator, tmp_path, 2, {"at": 2}, keep=2)
    assert names(tmp_path / "checkpoints") == ["step-1", "step-2"]


def test_kill_between_promotes_two_renames_keeps_the_previous_version_findable(tmp_path, monkeypatch):
    """Re-saving an existing step (a finished run resumed saves its last step again): promote moves the old
    folder aside, then the new one in. A kill between the two must not hide the only complete checkpoint."""
    run = tmp_path / "run"
    complete(run, "step-4", 4)
    previous = contents(complete(run, "step-8", 8))
    new = make_folder(run / "checkpoints" / ".step-8.tmp", **{STATE_FILE: json.dumps({"step": 8, "v": 2})})
    calls = kill_at_replace(monkeypatch, lambda n, src, dst: n == 2)
    with pytest.raises(Killed):
        promote(new, run / "checkpoints" / "step-8")
    assert calls == [("step-8", ".step-8.old"), (".step-8.tmp", "step-8")]
    monkeypatch.undo()
    latest = latest_checkpoint(run)
    assert latest is not None and contents(latest) == previous  # step 8, the old complete version
    assert [json.loads((p / STATE_FILE).read_text())["step"] for p in checkpoint_dirs(run)] == [4, 8]
    # the retried save puts the new version in place and removes the old one
    promote(new, run / "checkpoints" / "step-8")
    assert latest_checkpoint(run) == run / "checkpoints" / "step-8"
    assert json.loads((run / "checkpoints" / "step-8" / STATE_FILE).read_text()) == {"step": 8, "v": 2}
    assert names(run / "checkpoints") == ["step-4", "step-8"]
