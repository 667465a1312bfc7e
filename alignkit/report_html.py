"""The HTML pieces of the run and pipeline reports: value formatting, escaped tables, sections and the page shell with
its inline CSS and JS. Pure string building, no files and no network: the page works opened from disk, offline.

Every value that reaches the page goes through ``esc`` (html.escape); only ``Raw`` strings, built here from escaped
parts, pass through as markup."""

from __future__ import annotations

import html
import json
import math
import numbers
from typing import Any

LIVE_REFRESH_S = 30
SEVERITIES = ("error", "warning", "info")  # styled; any other severity is shown plainly


class Raw(str):
    """Markup already built from escaped parts: a table cell that ``esc`` must not escape again."""


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def fmt(value: Any) -> str:
    """A value as a person reads it: floats to 4 significant digits (lists of numbers too), None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool) or isinstance(value, numbers.Integral):
        return str(value)
    if is_number(value):
        return f"{float(value):.4g}"
    if isinstance(value, (list, tuple)) and value and all(is_number(v) for v in value):
        return "[" + ", ".join(fmt(v) for v in value) + "]"  # an interval reads [0.41, 0.47], not 17 digits each
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def esc(value: Any) -> str:
    return value if isinstance(value, Raw) else html.escape(fmt(value), quote=True)


def slug(text: Any) -> str:
    return "".join(c if c.isalnum() else "-" for c in str(text).lower())


def table(columns: list[str], rows: list[list[Any]], *, table_id: str = "",
          row_attrs: list[dict[str, str]] | None = None) -> str:
    """An escaped table. A column whose every non-empty value is a number is right-aligned and sortable by a click on
    its header (the JS reads the exact value from ``data-v``, not the rounded text)."""
    numeric = [any(is_number(r[i]) for r in rows if i < len(r))
               and all(is_number(r[i]) or r[i] is None for r in rows if i < len(r)) for i in range(len(columns))]
    head = "".join(f'<th class="num" tabindex="0" title="click to sort">{esc(c)}</th>' if numeric[i]
                   else f"<th>{esc(c)}</th>" for i, c in enumerate(columns))
    body = []
    for n, row in enumerate(rows):
        attrs = "".join(f' {k}="{html.escape(v, quote=True)}"' for k, v in (row_attrs[n] if row_attrs else {}).items())
        cells = []
        for i in range(len(columns)):
            value = row[i] if i < len(row) else None
            if numeric[i]:
                exact = "" if value is None or math.isnan(value) else repr(float(value))
                cells.append(f'<td class="num" data-v="{exact}">{esc(value)}</td>')
            else:
                cells.append(f'<td><div class="cell">{esc(value)}</div></td>')
        body.append(f"<tr{attrs}>{''.join(cells)}</tr>")
    ident = f' id="{html.escape(table_id, quote=True)}"' if table_id else ""
    return (f'<table class="sortable"{ident}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def section(ident: str, title: str, body: str) -> str:
    return f'<section id="{esc(ident)}"><h2>{esc(title)}</h2>{body}</section>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def image(png: bytes, alt: str) -> str:
    import base64

    return f'<img class="curves" alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def link(href: str, text: str) -> Raw:
    return Raw(f'<a href="{html.escape(href, quote=True)}">{esc(text)}</a>')


def badge(text: Any, kind: str, family: str) -> Raw:
    """A coloured label: ``family`` is ``sev`` (doctor severity) or ``status`` (pipeline stage status)."""
    return Raw(f'<span class="badge {family} {family}-{slug(kind)}">{esc(text)}</span>')


def findings_table(findings: list[dict[str, Any]]) -> str:
    """The doctor's findings, most severe first; severity coloured."""
    order = {s: i for i, s in enumerate(SEVERITIES)}
    ranked = sorted(findings, key=lambda f: order.get(str(f.get("severity", "")).lower(), len(order)))
    rows = [[badge(f.get("severity", ""), str(f.get("severity", "")).lower(), "sev"), f.get("rule"), f.get("step"),
             f.get("message"), f.get("advice")] for f in ranked]
    return table(["severity", "rule", "step", "message", "advice"], rows)


def eval_tables_html(eval_tables: list[dict[str, Any]] | None) -> str:
    if not eval_tables:
        return note("no eval in this run")
    return "".join(f"<h3>{esc(t.get('title', 'eval'))}</h3>" + table(list(t["columns"]), [list(r) for r in t["rows"]])
                   for t in eval_tables)


def page(title: str, heading: str, header_extra: str, nav: list[tuple[str, str]], sections: list[str],
         live: bool = False) -> str:
    """The whole self-contained page. ``live`` adds the meta refresh and a visible badge saying so."""
    refresh = f'<meta http-equiv="refresh" content="{LIVE_REFRESH_S}">' if live else ""
    live_badge = (f'<span class="badge live" id="live-badge">live: refreshes every {LIVE_REFRESH_S} s</span>'
                  if live else "")
    links = " ".join(f'<a href="#{esc(ident)}">{esc(text)}</a>' for ident, text in nav)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
{refresh}<title>{esc(title)}</title><style>{CSS}</style></head>
<body data-live="{'1' if live else ''}"><header><h1>{esc(heading)} {live_badge}</h1>{header_extra}
<nav>{links}</nav></header>
{''.join(sections)}
<script>{JS}</script></body></html>
"""


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;padding:1em 2em 3em;
 max-width:1400px;color:#1f2328;background:#fff}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.2em;border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.02em;margin:1.2em 0 .3em}header p{margin:.3em 0}nav a{margin-right:1em}a{color:#0969da}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;position:sticky;top:0}th.num{cursor:pointer;user-select:none;white-space:nowrap}
th.num::after{content:" \\2195";color:#8c959f}th[aria-sort=ascending]::after{content:" \\25B2";color:#1f2328}
th[aria-sort=descending]::after{content:" \\25BC";color:#1f2328}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.cell{white-space:pre-wrap;word-break:break-word;max-width:60em;max-height:16em;overflow:auto}
tbody tr:nth-child(even){background:#fafbfc}
img.curves{max-width:100%;border:1px solid #d0d7de}.note{color:#57606a;font-style:italic}
.controls{display:flex;gap:1em;align-items:center;margin:.5em 0;flex-wrap:wrap}
.controls input{min-width:22em;padding:4px 6px}.controls select{padding:3px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
 background:#eaeef2;color:#1f2328;vertical-align:middle}
.live{background:#dafbe1;color:#116329;border:1px solid #4ac26b}
.sev-error,.status-failed,.status-error{background:#ffebe9;color:#a40e26;border:1px solid #ff8182}
.sev-warning,.status-running{background:#fff8c5;color:#7d4e00;border:1px solid #d4a72c}
.sev-info,.status-skipped,.status-cached{background:#ddf4ff;color:#0550ae;border:1px solid #54aeff}
.status-done,.status-ok,.status-finished{background:#dafbe1;color:#116329;border:1px solid #4ac26b}
"""

# Sorting works on every table.sortable; filtering only where the samples table exists. Each lookup is guarded, so a
# page with no samples or no findings runs the script without errors. On a live page the filter and step survive the
# 30 s refresh (sessionStorage; a browser that refuses storage just forgets them).
JS = """
(function () {
  "use strict";
  function exact(td) {
    var v = td ? td.getAttribute("data-v") : null;
    return v === null || v === "" ? NaN : parseFloat(v);
  }
  function sortBy(th) {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var asc = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th[aria-sort]").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = exact(a.cells[col]), y = exact(b.cells[col]);
      if (isNaN(x)) { return isNaN(y) ? 0 : 1; }  /* empty cells last, either direction */
      if (isNaN(y)) { return -1; }
      return asc ? x - y : y - x;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable th.num").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(th); }
    });
  });

  var table = document.getElementById("sample-table");
  if (!table) { return; }
  var box = document.getElementById("sample-filter"), step = document.getElementById("sample-step");
  var count = document.getElementById("sample-count"), live = document.body.getAttribute("data-live") === "1";
  var memo = "alignkit-samples:" + location.pathname;
  function apply() {
    var needle = box ? box.value.trim().toLowerCase() : "", want = step ? step.value : "";
    var rows = table.tBodies[0].rows, shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var ok = (!want || rows[i].getAttribute("data-step") === want) &&
               (!needle || rows[i].textContent.toLowerCase().indexOf(needle) !== -1);
      rows[i].hidden = !ok;
      if (ok) { shown++; }
    }
    if (count) { count.textContent = shown + " of " + rows.length + " samples shown"; }
    if (live) {
      try { sessionStorage.setItem(memo, JSON.stringify({f: box ? box.value : "", s: want})); } catch (e) { /* off */ }
    }
  }
  if (live) {
    try {
      var saved = JSON.parse(sessionStorage.getItem(memo) || "null");
      if (saved && box) { box.value = saved.f || ""; }
      if (saved && step && step.querySelector('option[value="' + String(saved.s).replace(/"/g, "") + '"]')) {
        step.value = saved.s;
      }
    } catch (e) { /* storage refused: start unfiltered */ }
  }
  if (box) { box.addEventListener("input", apply); }
  if (step) { step.addEventListener("change", apply); }
  apply();
})();
"""
