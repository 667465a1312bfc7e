"""Watching a run: after every logged row, the doctor's new findings (said once), the metrics files rewritten and
the live report redrawn; at the end, the figures a user compares (each eval reward before -> after, optimised
next to eval-only) for the summary table and the report. ``runtime`` wires these into every recipe's run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .config import Section
from .doctor import RunFacts
from .report import CURVES, plot_curves, write_report


def run_facts(cfg: Section, recipe: str) -> RunFacts:
    """What the doctor knows beside the metrics: the planned steps, the KL target, which rewards are eval-only,
    and the verdict each reward model's own training left beside it."""
    ppo, grpo = getattr(cfg, "ppo", None), getattr(cfg, "grpo", None)
    return RunFacts(sequence_clip=grpo is not None and grpo.ratio == "sequence",
                    recipe=recipe, max_steps=cfg.train.max_steps,  # type: ignore[attr-defined]
                    kl_target=ppo.kl_target if ppo is not None and ppo.adaptive_kl else None,
                    eval_only=tuple(s.label for s in getattr(cfg, "eval_rewards", [])),
                    reward_models=tuple((s.reward_model, reward_verdict(s.reward_model))
                                        for s in getattr(cfg, "rewards", []) if s.reward_model))


REWARD_VERDICT = "reward_verdict.json"  # written by alignkit rm beside the model: the verdict travels with it


def reward_verdict(path: str) -> str:
    file = Path(path) / REWARD_VERDICT
    return json.loads(file.read_text()).get("verdict", "") if file.is_file() else ""


def after_log(run, rows: list[dict[str, Any]]) -> None:
    """After every logged row (main process): the doctor's new findings, said once; the metrics files rewritten
    (a running job can be watched) at most every ``flush_every_s`` seconds; the live report refreshed at most every
    ``live_every_s`` seconds. Checkpoints and the end of the run rewrite the files whatever the clock says."""
    for finding in run.doctor.check(rows) if run.doctor is not None else []:
        run.print(f"doctor [{finding.severity}] {finding.rule} (step {finding.step}): {finding.message} "
                  f"Advice: {finding.advice}")
    if time.time() - run._flushed_at >= run.flush_every_s:
        run._flushed_at = time.time()
        run.log.flush()
    if time.time() - run._live_at >= run.live_every_s:
        run._live_at = time.time()
        plot_curves(rows, run.dir / CURVES, title=f"{run.recipe}: {run.dir.name} (live)")
        write_report(run.dir, {"recipe": run.recipe, "status": "running", "step": rows[-1]["step"]},
                     run.log.samples, findings=findings_of(run), live=True)


def findings_of(run) -> list[dict[str, Any]] | None:
    return None if run.doctor is None else [f.__dict__ for f in run.doctor.findings]


def reward_gap(run, summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Each eval reward before -> after, the optimised ones and the eval-only ones side by side: an eval-only
    score falling while the optimised one rises is how reward hacking shows."""
    initial, final = summary.get("initial") or {}, summary.get("final") or {}
    eval_only = set(run.doctor.facts.eval_only) if run.doctor is not None else set()
    rows = []
    for key, after in final.items():
        if key.startswith("reward_eval/") and key in initial and "[" not in key:
            label = key.removeprefix("reward_eval/")
            kind = "eval only" if label in eval_only else ("optimised total" if label == "total" else "optimised")
            rows.append((f"eval {label} ({kind})", f"{initial[key]:.3f} -> {after:.3f}"))
    return rows


def eval_table(run, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's eval figures for its report: each at the start (when the run evaluated before training) and at
    the end, eval-only rewards marked."""
    initial, final = summary.get("initial") or {}, summary.get("final") or {}
    eval_only = set(run.doctor.facts.eval_only) if run.doctor is not None else set()
    rows = [[key + (" (eval only)" if key.removeprefix("reward_eval/") in eval_only else ""), initial.get(key), value]
            for key, value in final.items() if "eval" in key and isinstance(value, int | float)]
    return [{"title": "held-out eval: before training and at the end", "columns": ["metric", "before", "after"],
             "rows": rows}] if rows else []
