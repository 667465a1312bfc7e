"""training_curves.png (one panel per metric family) and report.html (summary, curves, samples) of a run."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_bytes, atomic_write_text

CURVES = "training_curves.png"
REPORT = "report.html"


def families(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Metric family -> metric names, from ``family/name`` keys (a key without a slash is its own family)."""
    out: dict[str, list[str]] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "time/wall_s") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            family = key.split("/", 1)[0]
            if key not in out.setdefault(family, []):
                out[family].append(key)
    return out


def plot_curves(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Write one panel per metric family, each line a metric against the optimizer step."""
    groups = families(rows)
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(groups))
    nrows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, (family, keys) in zip(axes.flat, groups.items()):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            style = "o-" if len(points) < 30 else "-"
            ax.plot(*zip(*points), style, label=key.split("/", 1)[-1], markersize=3, linewidth=1.4)
        values = [r[k] for r in rows for k in keys if isinstance(r.get(k), (int, float))]
        if min(values) > 0 and max(values) > 10 * min(values):
            ax.set_yscale("log")  # losses fall by orders of magnitude; a log axis keeps the late steps readable
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def write_report(run_dir: str | Path, summary: dict[str, Any], samples: list[dict[str, Any]]) -> Path:
    """A self-contained HTML page: the summary, the curves (embedded) and the latest samples."""
    run_dir = Path(run_dir)
    curves = run_dir / CURVES
    image = ""
    if curves.is_file():
        image = f'<img src="data:image/png;base64,{base64.b64encode(curves.read_bytes()).decode()}" style="max-width:100%">'
    flat = {k: v for k, v in _flatten(summary).items()}
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in flat.items())
    last_step = max((s["step"] for s in samples), default=None)
    latest = [s for s in samples if s["step"] == last_step]
    keys = [k for k in (latest[0] if latest else {}) if k != "step"]
    sample_rows = "".join(
        "<tr>" + "".join(f"<td><pre>{html.escape(_fmt(s.get(k)))}</pre></td>" for k in keys) + "</tr>" for s in latest
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>alignkit run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}pre{{margin:0;white-space:pre-wrap}}</style>
</head><body><h1>alignkit run: {html.escape(run_dir.name)}</h1>
<h2>Summary</h2><table>{table}</table><h2>Training curves</h2>{image}
<h2>Samples (step {last_step})</h2><table><tr>{"".join(f"<th>{html.escape(k)}</th>" for k in keys)}</tr>{sample_rows}</table>
</body></html>"""
    atomic_write_text(run_dir / REPORT, page)
    return run_dir / REPORT


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)
