"""training_curves.png (one panel per metric family) and report.html of a run or of a pipeline.

report.html is one self-contained file a person opens in a browser, offline: CSS and JS inline, the curves embedded
as base64 PNG. Its sections keep stable ids (#summary #curves #eval #doctor #samples) so links and tests can point
at them. The markup itself lives in report_html.py; this module decides what goes on the page."""

from __future__ import annotations

import math
import os
import urllib.parse
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_bytes, atomic_write_text
from .report_html import (
    Raw,
    badge,
    esc,
    eval_tables_html,
    findings_table,
    fmt,
    image,
    is_number,
    link,
    note,
    page,
    section,
    table,
)
from .tracking import METRICS_CSV, METRICS_JSONL, SAMPLES, SUMMARY

CURVES = "training_curves.png"
REPORT = "report.html"
# Only these families may get a log axis: they are positive by nature and fall by orders of magnitude. Rewards,
# advantages, KL, margins, explained variance can be zero or negative, and a log axis silently drops those points.
LOG_FAMILIES = frozenset({"loss", "ppl", "grad_norm", "lr"})
HEADLINE_SKIP = frozenset({"recipe", "run_dir", "files", "data", "parameters", "wall_time_s", "num_processes",
                           "skipped_steps"})  # bookkeeping, not results: the stage table shows wall time itself


def families(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Metric family -> metric names, from ``family/name`` keys (a key without a slash is its own family)."""
    out: dict[str, list[str]] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "time/wall_s") or not is_number(value):
                continue
            family = key.split("/", 1)[0]
            if key not in out.setdefault(family, []):
                out[family].append(key)
    return out


def axis_scales(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Family -> ``"log"`` or ``"linear"``: log only for a family in LOG_FAMILIES whose every finite value is > 0
    and whose values span more than 10x (then the late steps of a falling loss stay readable)."""
    scales = {}
    for family, keys in families(rows).items():
        values = [float(r[k]) for r in rows for k in keys if is_number(r.get(k)) and math.isfinite(r[k])]
        positive = bool(values) and min(values) > 0
        scales[family] = "log" if family in LOG_FAMILIES and positive and max(values) > 10 * min(values) else "linear"
    return scales


def curves_figure(rows: list[dict[str, Any]], title: str = "") -> Any:
    """The matplotlib figure of ``plot_curves`` (None without metrics); separate so tests can read its axes."""
    groups = families(rows)
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = axis_scales(rows)
    cols = min(3, len(groups))
    nrows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, (family, keys) in zip(axes.flat, groups.items()):
        for key in keys:
            points = _points(rows, key)
            style = "o-" if len(points) < 30 else "-"
            ax.plot(*zip(*points), style, label=key.split("/", 1)[-1], markersize=3, linewidth=1.4)
        ax.set_yscale(scales[family])
        values = [v for k in keys for _, v in _points(rows, k) if math.isfinite(v)]
        if scales[family] == "linear" and values and min(values) < 0 < max(values):
            ax.axhline(0, color="#888", linewidth=0.8, zorder=0)  # where a reward or margin changes sign
        ax.set_title(family, fontsize=11)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if title else 1))  # keep the title clear of the top row
    return fig


def plot_curves(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Write one panel per metric family, each line a metric against the optimizer step."""
    import io

    fig = curves_figure(rows, title)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def write_report(run_dir: str | Path, summary: dict[str, Any], samples: list[dict[str, Any]],
                 findings: list[dict[str, Any]] | None = None, eval_tables: list[dict[str, Any]] | None = None,
                 live: bool = False) -> Path:
    """Write ``run_dir/report.html``: summary, curves, eval tables, doctor findings and every sample, browsable.

    ``findings=None`` means the doctor did not run (an empty list means it ran and found nothing); ``live=True``
    is the page written during training: it reloads itself every 30 s and says so."""
    run_dir = Path(run_dir)
    files = [(SUMMARY, "the numbers"), (CURVES, "one panel per metric family"), (METRICS_CSV, "every logged row")]
    order = " &rarr; ".join(f"{link(name, name)} <small>({what})</small>" for name, what in files)
    also = ", ".join(link(name, name) for name in (SAMPLES, METRICS_JSONL, "config.yaml"))
    header = f"<p>Read in this order: {order}.</p><p>Also in this folder: {also}.</p>"
    if findings is None:
        doctor = note("the doctor did not run on this run")
    else:
        doctor = findings_table(findings) if findings else note("no findings")
    sections = [
        section("summary", "Summary", table(["key", "value"], [[k, v] for k, v in _flatten(summary).items()])),
        section("curves", "Training curves", _curves(run_dir, CURVES)),
        section("eval", "Evaluation", eval_tables_html(eval_tables)),
        section("doctor", "Doctor", doctor),
        section("samples", f"Samples ({len(samples)})", _samples(samples)),
    ]
    nav = [("summary", "summary"), ("curves", "curves"), ("eval", "eval"), ("doctor", "doctor"), ("samples", "samples")]
    name = f"alignkit run: {run_dir.name}"
    atomic_write_text(run_dir / REPORT, page(name, name, header, nav, sections, live=live))
    return run_dir / REPORT


def write_pipeline_report(pipeline_dir: str | Path, stages: list[dict[str, Any]],
                          eval_tables: list[dict[str, Any]] | None,
                          findings: dict[str, list[dict[str, Any]]]) -> Path:
    """Write ``pipeline_dir/report.html``: one row per stage (linking to its own report.html), the eval tables, the
    doctor's findings grouped by stage and each stage's curves.

    A stage is ``{"name", "recipe", "status", "run_dir", "seconds", "summary"}``; a stage missing from
    ``findings`` is one the doctor did not run on."""
    pipeline_dir = Path(pipeline_dir)
    rows = [_stage_row(stage, pipeline_dir) for stage in stages]
    known = [str(s.get("name")) for s in stages]
    grouped = []
    for name in known + [n for n in findings if n not in known]:  # findings of a stage not listed still show
        found = findings.get(name)
        body = (note("the doctor did not run on this stage") if found is None
                else findings_table(found) if found else note("no findings"))
        grouped.append(f"<h3>{esc(name)}</h3>{body}")
    curves = "".join(f"<h3>{esc(s.get('name'))}</h3>"
                     + (_curves(Path(s["run_dir"]), CURVES) if s.get("run_dir") else note("no run folder"))
                     for s in stages)
    sections = [
        section("stages", "Stages", table(["stage", "recipe", "status", "wall time (s)", "report", "headline"], rows)
                if rows else note("no stages")),
        section("eval", "Evaluation", eval_tables_html(eval_tables)),
        section("doctor", "Doctor", "".join(grouped) or note("no stages")),
        section("curves", "Training curves", curves or note("no stages")),
    ]
    header = "<p>Each stage's own report.html (linked in the table) has its summary, curves and every sample.</p>"
    nav = [("stages", "stages"), ("eval", "eval"), ("doctor", "doctor"), ("curves", "curves")]
    name = f"alignkit pipeline: {pipeline_dir.name}"
    atomic_write_text(pipeline_dir / REPORT, page(name, name, header, nav, sections))
    return pipeline_dir / REPORT


def headline_numbers(summary: dict[str, Any], limit: int = 6) -> dict[str, Any]:
    """A few flat numbers of a stage's summary: final and best metrics first, bookkeeping left out."""
    flat = {k: v for k, v in _flatten(summary).items() if is_number(v) and k.split(".", 1)[0] not in HEADLINE_SKIP}
    ranked = sorted(flat, key=lambda k: 0 if k.startswith(("final.", "best.")) else 1)
    return {k: flat[k] for k in ranked[:limit]}


def _stage_row(stage: dict[str, Any], pipeline_dir: Path) -> list[Any]:
    """name, recipe, status, seconds, a relative link to the stage's report.html (when written), headline."""
    report = Path(stage["run_dir"]) / REPORT if stage.get("run_dir") else None
    href = ""
    if report is not None and report.is_file():
        rel = Path(os.path.relpath(report, pipeline_dir)).as_posix()
        href = link(urllib.parse.quote(rel), rel)
    headline = Raw("<br>".join(f"<code>{esc(k)}</code> {esc(v)}"
                               for k, v in headline_numbers(stage.get("summary") or {}).items()))
    status = stage.get("status", "")
    return [stage.get("name"), stage.get("recipe"), badge(status, status, "status"), stage.get("seconds"), href,
            headline]


def _curves(run_dir: Path, name: str) -> str:
    path = run_dir / name
    if not path.is_file():
        return note(f"no {name} in {run_dir.name} yet (it is written at the end of the run)")
    return image(path.read_bytes(), f"training curves of {run_dir.name}")


def _samples(samples: list[dict[str, Any]]) -> str:
    """Every sample, one row each; columns are the union of their keys, step first. A filter box and a step
    selector narrow the rows in the browser; numeric columns (reward, score, ...) sort on a header click."""
    if not samples:
        return note("no samples in this run")
    columns = list(dict.fromkeys(k for s in samples for k in s))
    if "step" in columns:
        columns.insert(0, columns.pop(columns.index("step")))
    steps = sorted({s["step"] for s in samples if is_number(s.get("step"))})
    options = '<option value="">all steps</option>' + "".join(
        f'<option value="{esc(step)}">step {esc(step)}</option>' for step in steps)
    controls = (f'<div class="controls"><input id="sample-filter" type="search" placeholder="filter samples (any text)"'
                f' aria-label="filter samples"><select id="sample-step" aria-label="step">{options}</select>'
                f'<span id="sample-count">{len(samples)} samples</span></div>')
    rows = [[s.get(c) for c in columns] for s in samples]
    attrs = [{"data-step": fmt(s.get("step"))} for s in samples]  # the same text as the option values
    return controls + table(columns, rows, table_id="sample-table", row_attrs=attrs)


def _points(rows: list[dict[str, Any]], key: str) -> list[tuple[Any, float]]:
    return [(r["step"], r[key]) for r in rows if is_number(r.get(key))]


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
