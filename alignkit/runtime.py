"""What every recipe needs around its loop: the run folder, seeding, accelerate, optimizer and schedule, the data
order, and the closing artifacts. The loop itself stays in each recipe.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write_text, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, RunConfig, Section, TrainConfig, dump_config
from .doctor import HEALTH_FILE, Doctor
from .long_context import advice_for
from .report import CURVES, REPORT, plot_curves, write_report
from .tracking import METRICS_CSV, METRICS_JSONL, SAMPLES, SUMMARY, RunLog
from .watch import after_log, eval_table, findings_of, reward_gap, run_facts


@dataclass
class Run:
    """One training run: its folder, accelerator, log and clock."""

    recipe: str
    dir: Path
    accelerator: Any
    log: RunLog
    resume_from: Path | None
    on_nonfinite: str = "stop"
    started: float = field(default_factory=time.time)
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient (train.on_nonfinite: skip)
    prepared: int = 0  # trained models wrapped by accelerate so far
    fixed_threads: bool = False  # run.threads was given (else a resumed run takes the thread count it started with)
    doctor: Doctor | None = None  # health rules over the logged rows (main process)
    live_every_s: float = 30.0  # refresh the live report.html / training_curves.png at most this often (the first
    _live_at: float = field(default_factory=time.time)  # 30 s in: a short run only draws its final report)
    flush_every_s: float = 2.0  # rewrite the metrics files after a logged row at most this often (each rewrite is the
    _flushed_at: float = 0.0  # whole file: every row of a long run would cost quadratic I/O); always at checkpoints

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def step_is_finite(self, step: int, quantities: dict[str, Any]) -> bool:
        """Whether the optimizer may step: every quantity (the step's loss, its gradient norm) is finite.

        Otherwise, with ``train.on_nonfinite: stop`` (default) the run stops naming the step and the quantity, the
        last checkpoint intact; with ``skip`` the step is skipped (the caller drops its gradients) and counted.
        Every rank sees the same global loss and gradient norm, so they all decide alike.
        """
        bad = {k: float(v) for k, v in quantities.items() if v is not None and not math.isfinite(float(v))}
        if not bad:
            return True
        what = ", ".join(f"{k} = {v}" for k, v in bad.items())
        if self.on_nonfinite == "stop":
            raise FloatingPointError(
                f"step {step}: {what} (not finite). The run stops here; the last good checkpoint is intact "
                "(resume with --resume, or set train.on_nonfinite: skip). Usual causes: learning rate too high, "
                "fp16 overflow (try bf16), or bad data.")
        self.skipped_steps += 1
        self.print(f"[yellow]step {step}: {what} (not finite); optimizer step skipped "
                   f"({self.skipped_steps} so far)[/yellow]")
        return False

    def checkpoint(self, step: int, state: dict[str, Any], keep: int) -> None:
        """Flush the logs, then save everything needed to resume at ``step`` (atomic, every rank)."""
        self.log.flush()
        save_checkpoint(self.accelerator, self.dir, step, {**state, "skipped_steps": self.skipped_steps,
                                                           "log_rows": len(self.log.rows),
                                                           "log_samples": len(self.log.samples),
                                                           "threads": torch.get_num_threads()}, keep)

    def restore(self) -> dict[str, Any]:
        """Load the checkpoint being resumed (models and optimizers already prepared): its trainer state, with the
        logs reloaded up to its step. A fresh run returns {"step": 0}."""
        if self.resume_from is None:
            return {"step": 0}
        state = load_checkpoint(self.accelerator, self.resume_from)
        self.log.resume(state["log_rows"], state["log_samples"])
        if self.doctor is not None:
            self.doctor.restore(self.dir / HEALTH_FILE)
        self.skipped_steps = state.get("skipped_steps", 0)
        if not self.fixed_threads and state.get("threads") and state["threads"] != torch.get_num_threads():
            # CPU results depend on the thread count: resume with the one the run started with
            torch.set_num_threads(state["threads"])
            self.print(f"threads: {state['threads']} (as when the run started)")
        self.print(f"resumed from {self.resume_from} at step {state['step']}")
        return state

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


def open_run_dir(cfg: Section, recipe: str) -> Path:
    """The folder of a run that trains nothing (eval, generate): created, with its resolved config written."""
    run_dir = resolve_run_dir(cfg.run, recipe, None)  # type: ignore[attr-defined]
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    return run_dir


def start_run(cfg: Section, recipe: str, resume: str | bool | None = None) -> Run:
    """Create (or reopen) the run folder, seed, build the accelerator, write the resolved config."""
    from accelerate import Accelerator

    run_cfg: RunConfig = cfg.run  # type: ignore[attr-defined]
    train_cfg: TrainConfig = cfg.train  # type: ignore[attr-defined]
    quiet_libraries()
    from accelerate.utils import broadcast_object_list

    # step_scheduler_with_optimizer=False: our step counts are global optimizer steps, so each process advances the
    # schedule once per step (accelerate's default would advance it num_processes times). Built first: it sets up
    # the process group (gloo for CPU processes) that everything below relies on.
    accelerator = Accelerator(mixed_precision=_mixed_precision(train_cfg.mixed_precision), cpu=_cpu_only(cfg),
                              step_scheduler_with_optimizer=False)
    world = accelerator.num_processes
    # one thread count for every process of the run, chosen by the main one (CPU reductions depend on it)
    chosen = choose_threads(run_cfg.threads) if accelerator.is_main_process else None
    threads, why = broadcast_object_list([chosen])[0] if world > 1 else chosen
    torch.set_num_threads(threads)
    require_divisible(world, {"train.batch_size": train_cfg.batch_size})
    run_dir = resolve_run_dir(run_cfg, recipe, resume)
    if world > 1:  # {time} must name one folder on every process
        run_dir = Path(broadcast_object_list([str(run_dir)])[0])
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(run_dir)
        if resume_from is None and not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"--resume: {run_dir} is not a run folder (no config.yaml, no checkpoints)")
    seed_everything(train_cfg.seed)
    log = RunLog(run_dir, run_cfg.report_to, cfg.model_dump(mode="json"), enabled=accelerator.is_main_process)
    run = Run(recipe, run_dir, accelerator, log, resume_from, on_nonfinite=train_cfg.on_nonfinite,
              fixed_threads=bool(run_cfg.threads))
    run.print(f"threads: {threads} ({why})")
    if advice := advice_for(cfg, accelerator.device.type):  # long examples: memory-saving settings not yet on
        run.print(f"[yellow]{advice}[/yellow]")
    if resume and resume_from is None:  # killed before its first checkpoint: nothing to resume, start over
        run.print(f"--resume: {run_dir} has no complete checkpoint yet; starting from step 0")
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
        run.doctor = Doctor(run_facts(cfg, recipe), run_dir / HEALTH_FILE)
        log.watchers.append(lambda rows: after_log(run, rows))
    return run


def choose_threads(requested: int = 0) -> tuple[int, str]:
    """torch's CPU thread count for this run, and why: ``run.threads`` when given, else the cores that are actually
    free now (idle time over a 0.1 s sample of /proc/stat, among the cores this process may run on), shared among
    the processes of this machine. torch's own default counts cores, busy or not, and a 2-thread run on 2 cores of
    which another process holds one ran many times slower than 1 thread in our measurements."""
    import os

    if requested:
        return requested, "run.threads"
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    free = free_cores(allowed)
    if free is None:  # no /proc/stat (not Linux): torch's default
        return torch.get_num_threads(), "torch's default"
    shared = f", shared by {local} processes" if local > 1 else ""
    return (max(1, min(len(allowed), round(free)) // local),
            f"{free:.1f} of {len(allowed)} cores free{shared}; run.threads overrides")


def free_cores(cpus: Sequence[int], sample_s: float = 0.1) -> float | None:
    """Idle cores among ``cpus`` over ``sample_s`` seconds (sum of their idle fractions), from /proc/stat."""
    def read() -> dict[int, tuple[int, int]]:
        out = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                ticks = [int(v) for v in values]
                out[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks[:8]))  # idle + iowait, total (guest excluded)
        return out

    try:
        before = read()
        time.sleep(sample_s)
        after = read()
    except (OSError, ValueError, IndexError):
        return None
    free = 0.0
    for cpu in cpus:
        if cpu in before and cpu in after:
            total = after[cpu][1] - before[cpu][1]
            free += (after[cpu][0] - before[cpu][0]) / total if total > 0 else 1.0
    return free


def require_divisible(world: int, sizes: dict[str, int]) -> None:
    """Batch sizes count over all processes; each must split evenly across them. The error names the field."""
    for key, size in sizes.items():
        if size % world:
            raise ConfigError(f"{key} = {size} does not divide over {world} processes: batch sizes count over all "
                              f"processes (each takes {key} / {world}); use a multiple of {world}")


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
    if train.batch_size > n_rows:
        raise ConfigError(f"train.batch_size = {train.batch_size} is more than the {n_rows} training rows (after "
                          "the eval split and the over-length policy); lower it or add data")
    if train.max_steps:
        return train.max_steps
    return max(1, math.floor(train.epochs * max(1, n_rows // rows_per_step)))


def step_indices(n_rows: int, step: int, batch_size: int, grad_accum: int, seed: int, rank: int = 0,
                 world: int = 1) -> list[list[int]]:
    """Row indices of each micro-batch of optimizer step ``step`` (1-based) on process ``rank`` of ``world``.

    ``batch_size`` counts rows over all processes. The order is a pure function of (seed, step): each epoch is a
    fresh seeded permutation, cut into micro-batches of ``batch_size`` rows (a partial tail is left for the next
    epoch's permutation); rank r takes the r-th of ``world`` equal slices of each. So the data position at any
    step is known without state, a resumed run sees exactly the batches an uninterrupted run would, and the
    union over ranks is the same whatever the number of processes.
    """
    if batch_size % world or batch_size > n_rows:
        raise ValueError(f"a batch of {batch_size} rows cannot be cut from {n_rows} rows into {world} equal slices")
    per_rank, per_epoch = batch_size // world, n_rows // batch_size
    out = []
    for j in range(grad_accum):
        k = (step - 1) * grad_accum + j
        epoch, slot = divmod(k, per_epoch)
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        chunk = order[slot * batch_size : (slot + 1) * batch_size]
        out.append(chunk[rank * per_rank : (rank + 1) * per_rank])
    return out


def step_holds(data, train: TrainConfig, unit: str) -> str:
    """What one optimizer step holds, for the run header: ``64 pairs per step, packed into rows of 512 tokens``."""
    packed = f", packed into rows of {data.row_length} tokens" if data.row_length else ""
    return f"{train.batch_size * train.grad_accum} {unit} per step{packed}"


def prepare_model(run: Run, model, train: TrainConfig, total: int, lr: float | None = None):
    """AdamW and the schedule over ``total`` optimizer steps for one trained model, wrapped by accelerate.

    Each trained model is prepared on its own (PPO's actor and critic too): DeepSpeed and FSDP wrap one model per
    call. Returns (model, optimizer, scheduler).
    """
    if run.accelerator.distributed_type.name == "DEEPSPEED" and run.prepared:
        raise ConfigError("this recipe trains two models; under DeepSpeed each needs its own engine, which alignkit "
                          "does not set up yet: launch it with FSDP or DDP (the accelerate config), or one model")
    optimizer = make_optimizer(model.parameters(), train, lr)
    scheduler = make_scheduler(optimizer, train, total)
    run.prepared += 1
    return run.accelerator.prepare(model, optimizer, scheduler)


def prepare_training(run: Run, model, train: TrainConfig, n_rows: int):
    """Optimizer, schedule and accelerate wrapping for ``n_rows`` training rows; restores the checkpoint when
    resuming. Returns (model, optimizer, scheduler, total steps, step to start after)."""
    steps = total_steps(train, n_rows, train.batch_size * train.grad_accum)
    model, optimizer, scheduler = prepare_model(run, model, train, steps)
    return model, optimizer, scheduler, steps, run.restore()["step"]


def prepare_models(run: Run, train: TrainConfig, models: Sequence[tuple[Any, int, float | None]]
                   ) -> tuple[list[tuple[Any, Any, Any]], dict[str, Any]]:
    """Several trained models (PPO's actor and critic): each ``(model, optimizer steps, lr or None)`` gets its own
    optimizer, schedule and accelerate wrapping, then the checkpoint being resumed restores all of them together.
    Returns ([(model, optimizer, scheduler), ...], the restored trainer state: {"step": 0} for a fresh run)."""
    prepared = [prepare_model(run, model, train, total, lr) for model, total, lr in models]
    return prepared, run.restore()


@contextlib.contextmanager
def micro_step(acc, *models, last: bool):
    """One micro-batch's forward and backward inside an optimizer step. Gradients are synchronised across
    processes only on the ``last`` one: DDP / FSDP skip their all-reduce under ``no_sync``; a DeepSpeed engine,
    which steps inside ``accelerator.backward`` whenever gradients sync, is told not to until the last."""
    with contextlib.ExitStack() as stack:
        if acc.distributed_type.name == "DEEPSPEED":
            acc.gradient_state._set_sync_gradients(last)
            stack.callback(acc.gradient_state._set_sync_gradients, True)
        elif not last:
            for model in models:
                stack.enter_context(acc.no_sync(model))
        yield


def is_sharded(acc) -> bool:
    """FSDP or DeepSpeed ZeRO-3: no process holds whole weights outside a gathering context."""
    if acc.distributed_type.name == "FSDP":
        return True
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


@contextlib.contextmanager
def generation_model(acc, model):
    """The module to call ``generate`` on, its weights whole for the duration.

    DDP or one process: the unwrapped module. FSDP v1: the root unit's parameters are summoned (inner units gather
    their own in forward); FSDP v2 (``fully_shard``): the model itself, whose sharded modules gather in their own
    forward hooks. DeepSpeed ZeRO-3: every parameter is gathered, as TRL does for its ZeRO-3 rollouts.
    """
    if acc.distributed_type.name == "FSDP":
        if hasattr(model, "module"):
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            with FSDP.summon_full_params(model, recurse=False, writeback=False):
                yield model.module
        else:
            yield model
    elif is_sharded(acc):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield acc.unwrap_model(model)
    else:
        yield acc.unwrap_model(model)


def sample_rows(run: Run, model, tokenizer, prompts: list, references: list[str], step: int, run_cfg: RunConfig) -> None:
    """Greedy generations for the first ``run.num_samples`` eval prompts, next to the reference response, into
    samples.jsonl (every process generates: under FSDP / ZeRO-3 gathering the weights is collective)."""
    from .data.templates import tokenize_prompt
    from .sampling import SamplingParams, generate

    prompts, references = prompts[: run_cfg.num_samples], references[: run_cfg.num_samples]
    if not prompts:
        return
    with generation_model(run.accelerator, model) as module:
        # a str prompt is raw text (a text record's opening): continued as it is, no chat template
        gens = generate(module, tokenizer, [tokenizer(p)["input_ids"] if isinstance(p, str) else tokenize_prompt(tokenizer, p)
                                            for p in prompts],
                        SamplingParams(max_new_tokens=run_cfg.sample_max_new_tokens, temperature=0.0))
    run.log.add_samples(step, [{"prompt": p if isinstance(p, str) else p[-1].content, "response": g.text, "reference": ref}
                               for p, g, ref in zip(prompts, gens, references)])


def save_final(run: Run, model, tokenizer, run_cfg: RunConfig) -> None:
    """final/: the model or adapter with its tokenizer. (The recipe checkpoints the last step before its final
    eval, so a run killed after training resumes straight to the final eval and this save.)

    The weights come from ``get_state_dict``, which gathers a full state dict under FSDP / ZeRO-3 (every rank
    must take part), so final/ is a whole model whatever the sharding.
    """
    from .models import save_model

    if run_cfg.merge_adapter and is_sharded(run.accelerator):
        raise ConfigError("run.merge_adapter under FSDP / ZeRO-3 is not supported: merge final/ afterwards")
    weights = run.accelerator.get_state_dict(model)
    if run.is_main:
        unwrapped = run.accelerator.unwrap_model(model)
        if hasattr(unwrapped, "hf"):  # a ValueModel saves the Hugging Face model inside it
            unwrapped, weights = unwrapped.hf, {k.removeprefix("hf."): v for k, v in weights.items()}
        save_model(unwrapped, tokenizer, run.dir / "final", merge_adapter=run_cfg.merge_adapter, state_dict=weights)


def finish_run(run: Run, summary: dict[str, Any], headline: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Write summary.json, training_curves.png and report.html, then print a one-screen summary."""
    wall = time.time() - run.started
    summary = {"recipe": run.recipe, "run_dir": str(run.dir), **summary, "wall_time_s": round(wall, 1),
               "skipped_steps": run.skipped_steps, "num_processes": run.accelerator.num_processes,
               "files": {"summary": SUMMARY, "curves": CURVES, "metrics_csv": METRICS_CSV,
                         "metrics_jsonl": METRICS_JSONL, "samples": SAMPLES, "config": "config.yaml",
                         "report": REPORT, "final_model": "final/", "checkpoints": "checkpoints/"}}
    if run.is_main:
        run.log.flush()
        plot_curves(run.log.rows, run.dir / CURVES, title=f"{run.recipe}: {run.dir.name}")
        if run.doctor is not None:
            run.doctor.check(run.log.rows, final=True)
            summary["health"] = {"findings": [f.rule for f in run.doctor.findings], "file": HEALTH_FILE}
        run.log.write_summary(summary)
        write_report(run.dir, summary, run.log.samples, findings=findings_of(run), eval_tables=eval_table(run, summary))
        _print_summary(run, [*headline, *reward_gap(run, summary)], wall)
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
