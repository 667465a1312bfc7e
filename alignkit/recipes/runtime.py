"""What every recipe needs around its loop: the run folder, seeding, accelerate, optimizer and schedule, the data
order, and the closing artifacts. The loop itself stays in each recipe.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write_text, latest_checkpoint
from ..config import RunConfig, Section, TrainConfig, dump_config
from ..report import CURVES, REPORT, plot_curves, write_report
from ..tracking import METRICS_CSV, METRICS_JSONL, SAMPLES, SUMMARY, RunLog


@dataclass
class Run:
    """One training run: its folder, accelerator, log and clock."""

    recipe: str
    dir: Path
    accelerator: Any
    log: RunLog
    resume_from: Path | None
    started: float = field(default_factory=time.time)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def print(self, *args: Any) -> None:
        if self.is_main:
            from rich.console import Console

            Console(highlight=False).print(*args)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def resolve_run_dir(run: RunConfig, recipe: str, resume: str | bool | None) -> Path:
    """The run folder: an explicit --resume folder, or output_dir with {recipe} and {time} filled in."""
    if isinstance(resume, str) and resume:
        return Path(resume)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(run.output_dir.format(recipe=recipe, time=stamp))
    if resume and "{time}" in run.output_dir:
        raise ValueError("--resume needs a run folder: pass --resume RUN_DIR, or set run.output_dir without {time}")
    return path


def start_run(cfg: Section, recipe: str, resume: str | bool | None = None) -> Run:
    """Create (or reopen) the run folder, seed, build the accelerator, write the resolved config."""
    from accelerate import Accelerator

    run_cfg: RunConfig = cfg.run  # type: ignore[attr-defined]
    train_cfg: TrainConfig = cfg.train  # type: ignore[attr-defined]
    quiet_libraries()
    if run_cfg.threads:
        torch.set_num_threads(run_cfg.threads)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    run_dir = resolve_run_dir(run_cfg, recipe, resume)
    if PartialState().num_processes > 1:  # {time} must name one folder on every process
        run_dir = Path(broadcast_object_list([str(run_dir)])[0])
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(run_dir)
        if resume_from is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {run_dir}/checkpoints")
    seed_everything(train_cfg.seed)
    # step_scheduler_with_optimizer=False: our step counts are global optimizer steps, so each process advances the
    # schedule once per step (accelerate's default would advance it num_processes times).
    accelerator = Accelerator(mixed_precision=_mixed_precision(train_cfg.mixed_precision), cpu=_cpu_only(cfg),
                              step_scheduler_with_optimizer=False)
    log = RunLog(run_dir, run_cfg.report_to, cfg.model_dump(mode="json"), enabled=accelerator.is_main_process)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    return Run(recipe, run_dir, accelerator, log, resume_from)


def _cpu_only(cfg: Section) -> bool:
    model = getattr(cfg, "model", None)
    return getattr(model, "device", "auto") == "cpu"


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_optimizer(params, train: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=lr or train.lr, betas=tuple(train.adam_betas), weight_decay=train.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int):
    """Linear warm-up, then cosine / linear decay to 0, or constant."""
    from transformers import get_scheduler

    warmup = train.warmup_steps or math.ceil(train.warmup_ratio * total_steps)
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[train.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def total_steps(train: TrainConfig, n_rows: int, rows_per_step: int) -> int:
    """Optimizer steps: max_steps, or epochs over the data (at least one step)."""
    if train.max_steps:
        return train.max_steps
    return max(1, math.floor(train.epochs * max(1, n_rows // rows_per_step)))


def step_indices(n_rows: int, step: int, batch_size: int, grad_accum: int, seed: int, rank: int = 0,
                 world: int = 1) -> list[list[int]]:
    """Row indices of each micro-batch of optimizer step ``step`` (1-based) on process ``rank``.

    The order is a pure function of (seed, step): each epoch is a fresh seeded permutation, cut into full
    micro-batches of ``batch_size * world`` rows; each rank takes its slice. So the data position at any step is
    known without state, and a resumed run sees exactly the batches an uninterrupted run would.
    """
    global_batch = batch_size * world
    per_epoch = max(1, n_rows // global_batch)
    out = []
    for j in range(grad_accum):
        k = (step - 1) * grad_accum + j
        epoch, slot = divmod(k, per_epoch)
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        chunk = order[slot * global_batch : (slot + 1) * global_batch]
        out.append(chunk[rank * batch_size : (rank + 1) * batch_size] or chunk[:batch_size])
    return out


def prepare_training(run: Run, model, train: TrainConfig, n_rows: int):
    """Optimizer, schedule and accelerate wrapping for ``n_rows`` training rows; restores the checkpoint when
    resuming. Returns (model, optimizer, scheduler, total steps, step to start after)."""
    from ..checkpoint import load_checkpoint

    acc = run.accelerator
    steps = total_steps(train, n_rows, train.batch_size * train.grad_accum * acc.num_processes)
    optimizer = make_optimizer(model.parameters(), train)
    scheduler = make_scheduler(optimizer, train, steps)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    start = 0
    if run.resume_from:
        start = load_checkpoint(acc, run.resume_from)["step"]
        run.log.resume(start)
        run.print(f"resumed from {run.resume_from} at step {start}")
    return model, optimizer, scheduler, steps, start


def save_final(run: Run, model, tokenizer, step: int, run_cfg: RunConfig, state: dict | None = None) -> None:
    """The last checkpoint (resumable) and final/ (the model or adapter with its tokenizer)."""
    from ..checkpoint import save_checkpoint
    from ..models import save_model

    save_checkpoint(run.accelerator, run.dir, step, state or {}, run_cfg.keep_checkpoints)
    if run.is_main:
        unwrapped = run.accelerator.unwrap_model(model)
        unwrapped = getattr(unwrapped, "hf", unwrapped)  # a ValueModel saves the Hugging Face model inside it
        save_model(unwrapped, tokenizer, run.dir / "final", merge_adapter=run_cfg.merge_adapter)


def finish_run(run: Run, summary: dict[str, Any], headline: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Write summary.json, training_curves.png and report.html, then print a one-screen summary."""
    wall = time.time() - run.started
    summary = {"recipe": run.recipe, "run_dir": str(run.dir), **summary, "wall_time_s": round(wall, 1),
               "files": {"summary": SUMMARY, "curves": CURVES, "metrics_csv": METRICS_CSV,
                         "metrics_jsonl": METRICS_JSONL, "samples": SAMPLES, "config": "config.yaml",
                         "report": REPORT, "final_model": "final/", "checkpoints": "checkpoints/"}}
    if run.is_main:
        run.log.flush()
        plot_curves(run.log.rows, run.dir / CURVES, title=f"{run.recipe}: {run.dir.name}")
        run.log.write_summary(summary)
        write_report(run.dir, summary, run.log.samples)
        _print_summary(run, headline, wall)
    return summary


def _print_summary(run: Run, headline: Sequence[tuple[str, Any]], wall: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"alignkit {run.recipe}: done in {wall:.0f}s", show_header=False, title_justify="left")
    for key, value in headline:
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("run folder", str(run.dir))
    table.add_row("read first", f"{SUMMARY}, {CURVES}, {REPORT}")
    Console().print(table)


def quiet_libraries() -> None:
    """Silence per-file progress bars and routine warnings of transformers/accelerate; our own bar and summary say
    what matters. Real errors still surface as exceptions."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
