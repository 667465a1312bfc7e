"""Run artifacts: metrics to JSONL and CSV, samples, summary.json; optional TensorBoard / W&B.

Metric names are ``family/name`` (``loss/train``, ``loss/eval``, ``speed/tokens_per_s``): the family decides the
panel of training_curves.png. Every logged row has ``step`` and ``time/wall_s`` (seconds since this process
started the run: curves against wall time, and the per-step times benchmarks read).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_json, atomic_write_text

METRICS_JSONL = "training_metrics.jsonl"
METRICS_CSV = "training_metrics.csv"
SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"


class RunLog:
    """Collects metric rows and samples of one run and writes them atomically.

    On resume it reloads the rows up to the checkpoint's step and drops later ones, so the files of a resumed run
    equal those of an uninterrupted one.
    """

    def __init__(self, run_dir: str | Path, report_to: list[str] | tuple[str, ...] = (), config: dict | None = None,
                 enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled  # False on non-main processes: only rank 0 writes
        self.rows: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self._trackers = _open_trackers(report_to, self.run_dir, config) if enabled else []
        self.started = time.time()
        self.watchers: list = []  # callables (rows) run after every logged row: the doctor, the live files

    def resume(self, rows: int, samples: int) -> None:
        """Reload the metric rows and samples a checkpoint saw (their counts are stored in it): what was written
        after the checkpoint is dropped, so the resumed run's files equal those of an uninterrupted one."""
        self.rows = _read_jsonl(self.run_dir / METRICS_JSONL)[:rows]
        self.samples = _read_jsonl(self.run_dir / SAMPLES)[:samples]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}, "time/wall_s": round(time.time() - self.started, 4)}
        self.rows.append(row)
        for tracker in self._trackers:
            tracker(step, metrics)
        for watch in self.watchers:
            watch(self.rows)

    def add_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        self.samples.extend({"step": step, **s} for s in samples)

    def flush(self) -> None:
        """Rewrite the metrics and samples files (atomic: a reader never sees half a file)."""
        if not self.enabled:
            return
        atomic_write_text(self.run_dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in self.rows))
        atomic_write_text(self.run_dir / METRICS_CSV, rows_to_csv(self.rows))
        atomic_write_text(self.run_dir / SAMPLES, "".join(json.dumps(s) + "\n" for s in self.samples))

    def last(self, key: str) -> float | None:
        """Most recent logged value of a metric."""
        for row in reversed(self.rows):
            if key in row:
                return row[key]
        return None

    def best(self, key: str, mode: str = "min") -> tuple[float, int] | None:
        """(best value, its step) of a metric."""
        values = [(row[key], row["step"]) for row in self.rows if key in row]
        if not values:
            return None
        return (min if mode == "min" else max)(values)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_json(self.run_dir / SUMMARY, summary)


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """One row per logged step; columns are the union of every metric, in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), restval="")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _open_trackers(report_to, run_dir: Path, config: dict | None) -> list:
    """Callables (step, metrics) for each requested tracker; a missing package is a clear error, asked for only."""
    trackers = []
    for name in report_to:
        if name == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("run.report_to has tensorboard, but it is not installed: pip install tensorboard") from None
            writer = SummaryWriter(str(run_dir / "tensorboard"))
            trackers.append(lambda step, m, w=writer: [w.add_scalar(k, v, step) for k, v in m.items()] and w.flush())
        elif name == "wandb":
            try:
                import wandb
            except ImportError:
                raise RuntimeError("run.report_to has wandb, but it is not installed: pip install wandb") from None
            wandb_run = wandb.init(dir=str(run_dir), config=config or {}, name=run_dir.name)
            trackers.append(lambda step, m, r=wandb_run: r.log(dict(m), step=step))
    return trackers
