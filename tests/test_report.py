"""report.py: axis scales of the curves, the run and pipeline report pages, and those pages in a real headless
Chromium (rendered, no console errors, sections visible, filter and sort working). Synthetic data, no training."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from alignkit.report import (
    CURVES,
    axis_scales,
    curves_figure,
    headline_numbers,
    plot_curves,
    write_pipeline_report,
    write_report,
)

SECTIONS = ("summary", "curves", "eval", "doctor", "samples")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
XSS = "<script>alert(1)</script>"

ROWS = [
    {"step": s, "loss/train": 3.0 / s ** 2, "loss/eval": 3.2 / s ** 2, "reward/score": r, "reward/with_kl": r - 0.1,
     "kl/per_token": k, "lr": 1e-5}
    for s, r, k in [(1, -1.5, 0.001), (2, -0.4, 0.01), (3, 0.0, 0.05), (4, 0.6, 0.08), (5, 1.2, 0.1)]
]
SAMPLES = [
    {"step": 1, "prompt": "Name a red fruit.", "response": "An apple.", "score": 0.9},
    {"step": 1, "prompt": "Name a yellow fruit.", "response": "A banana.", "score": -0.25},
    {"step": 2, "prompt": "What is 2+2?", "response": XSS, "score": 0.0},
    {"step": 2, "prompt": "Name a green fruit.", "response": "A green apple,\ncrisp.", "score": 0.5,
     "reference": "a lime"},
    {"step": 3, "prompt": "Say hi.", "response": "hi"},  # no score: sorts last, the cell stays empty
]
FINDINGS = [
    {"rule": "kl_runaway", "step": 4, "severity": "warning", "message": "KL grew 100x in 3 steps",
     "advice": "raise kl_coef or lower the learning rate"},
    {"rule": "reward_hacking", "step": 5, "severity": "error", "message": f"reward up, gold down {XSS}",
     "advice": "check the reward model on held-out pairs"},
]
EVAL = [{"title": "gold score on 64 held-out prompts", "columns": ["model", "gold mean", "95% interval", "win rate"],
         "rows": [["sft", 0.41234567, [0.38123, 0.44567], None], ["dpo", 0.5678912, [0.53, 0.6], 0.6666666]]}]
SUMMARY = {"recipe": "grpo", "steps": 5, "final": {"loss/train": 0.12, "reward/score": 1.2},
           "best": {}, "files": {"summary": "summary.json"}, "wall_time_s": 12.3, "note": f"a {XSS} b"}


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Path:
    """The curves of ROWS, drawn once (matplotlib takes most of a second): each run folder gets a copy."""
    return plot_curves(ROWS, tmp_path_factory.mktemp("curves") / CURVES, title="grpo: synthetic")


def make_run(run_dir: Path, png: Path, *, samples=SAMPLES, findings=FINDINGS, eval_tables=EVAL, live=False) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(png, run_dir / CURVES)
    return write_report(run_dir, SUMMARY, samples, findings=findings, eval_tables=eval_tables, live=live)


def make_pipeline(root: Path, png: Path) -> Path:
    stages = []
    for name, recipe, status, seconds in [("sft", "sft", "done", 31.4), ("grpo", "grpo", "done", 95.0),
                                          ("dpo", "dpo", "failed", 2.5)]:
        if status == "done":
            make_run(root / name, png)
        stages.append({"name": name, "recipe": recipe, "status": status, "run_dir": str(root / name),
                       "seconds": seconds, "summary": SUMMARY if status == "done" else {}})
    return write_pipeline_report(root, stages, EVAL, {"sft": [], "grpo": FINDINGS})


# ---------------------------------------------------------------- curves


def test_axis_scales_log_only_for_positive_losses_spanning_10x():
    rows = [{"step": 1, "loss/a": 10.0, "ppl/eval": 3.0, "grad_norm/actor": 50.0, "lr": 1e-3, "kl/x": 1e-4,
             "reward/r": 5.0, "loss_zero/x": 1.0, "margin/m": 100.0},
            {"step": 2, "loss/a": 0.05, "ppl/eval": 2.0, "grad_norm/actor": 0.2, "lr": 1e-6, "kl/x": 1.0,
             "reward/r": 500.0, "loss_zero/x": 0.0, "margin/m": 0.01}]
    assert axis_scales(rows) == {"loss": "log", "ppl": "linear", "grad_norm": "log", "lr": "log", "kl": "linear",
                                 "reward": "linear", "loss_zero": "linear", "margin": "linear"}
    # a loss that touches zero or goes negative (PPO's policy loss does) stays linear
    assert axis_scales([{"step": 1, "loss/p": 2.0}, {"step": 2, "loss/p": 0.0}]) == {"loss": "linear"}
    assert axis_scales([{"step": 1, "loss/p": 2.0}, {"step": 2, "loss/p": -0.01}]) == {"loss": "linear"}


def test_reward_with_negative_and_zero_values_is_linear_and_every_point_drawn():
    fig = curves_figure(ROWS)
    try:
        axes = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
        assert axes["reward"].get_yscale() == "linear" and axes["loss"].get_yscale() == "log"
        drawn = {line.get_label(): list(line.get_ydata()) for line in axes["reward"].get_lines()
                 if not line.get_label().startswith("_")}
        assert drawn == {"score": [r["reward/score"] for r in ROWS], "with_kl": [r["reward/with_kl"] for r in ROWS]}
        assert axes["reward"].get_ylim()[0] < -1.5  # the most negative reward is inside the axis, not clipped
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_plot_curves_writes_a_png_and_nothing_without_metrics(tmp_path):
    assert plot_curves(ROWS, tmp_path / CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_curves([{"step": 1}], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


# ---------------------------------------------------------------- the page as text


def test_every_section_has_its_id_and_the_page_is_self_contained(tmp_path, png):
    text = make_run(tmp_path / "run", png).read_text()
    for ident in SECTIONS:
        assert f'<section id="{ident}">' in text
    assert 'src="data:image/png;base64,' in text
    assert "http://" not in text and "https://" not in text  # no CDN, no fonts, nothing fetched
    for name in ("summary.json", "training_curves.png", "training_metrics.csv"):  # the documented reading order
        assert f'href="{name}"' in text
    assert text.index('href="summary.json"') < text.index('href="training_curves.png"') < text.index(
        'href="training_metrics.csv"')
    assert '<div class="cell">final.loss/train</div>' in text  # the nested summary, flattened
    assert ">0.4123</td>" in text and ">0.6667</td>" in text and ">[0.3812, 0.4457]</div>" in text  # 4 digits shown
    assert 'class="badge sev sev-error"' in text and 'class="badge sev sev-warning"' in text


def test_defaults_keep_the_old_three_argument_call(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    text = write_report(run, SUMMARY, []).read_text()  # runtime.finish_run's call
    for ident in SECTIONS:
        assert f'<section id="{ident}">' in text
    assert "the doctor did not run" in text and "no eval in this run" in text and "no samples in this run" in text
    assert f"no {CURVES}" in text
    assert "no findings" in write_report(run, SUMMARY, [], findings=[]).read_text()


def test_every_string_is_escaped(tmp_path, png):
    text = make_run(tmp_path / "run", png).read_text()
    assert XSS not in text
    assert text.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 3  # the sample, the finding, the summary
    assert text.count("<script>") == 1  # the page's own inline script only


def test_live_badge_and_refresh_only_when_live(tmp_path, png):
    live = make_run(tmp_path / "live", png, live=True).read_text()
    final = make_run(tmp_path / "final", png).read_text()
    assert '<meta http-equiv="refresh" content="30">' in live and "live: refreshes every 30 s" in live
    assert "http-equiv" not in final and "live: refreshes" not in final


def test_samples_table_has_every_sample_and_the_union_of_keys(tmp_path, png):
    text = make_run(tmp_path / "run", png).read_text()
    head = text[text.index('id="sample-table"'):]
    head = head[:head.index("</thead>")]
    assert [c for c in ("step", "prompt", "response", "score", "reference") if f">{c}</th>" in head] == [
        "step", "prompt", "response", "score", "reference"]
    assert text.count('<tr data-step="') == len(SAMPLES)
    assert '<option value="2">step 2</option>' in text


def test_pipeline_report_links_stages_and_groups_findings(tmp_path, png):
    text = make_pipeline(tmp_path / "pipe", png).read_text()
    for ident in ("stages", "eval", "doctor", "curves"):
        assert f'<section id="{ident}">' in text
    assert 'href="sft/report.html"' in text and 'href="grpo/report.html"' in text
    assert 'href="dpo/report.html"' not in text  # the failed stage wrote no report: no dead link
    assert text.count('src="data:image/png;base64,') == 2 and "no training_curves.png in dpo" in text
    assert "the doctor did not run on this stage" in text and "no findings" in text and "kl_runaway" in text
    assert 'class="badge status status-failed"' in text and "final.loss/train" in text
    assert XSS not in text


def test_headline_numbers_prefer_final_and_best_and_skip_bookkeeping():
    summary = {"recipe": "dpo", "steps": 40, "wall_time_s": 9.0, "final": {"loss/eval": 0.3}, "best": {"step": 31},
               "data": {"train": {"rows": 100}}, "files": {"summary": "summary.json"}}
    assert list(headline_numbers(summary)) == ["final.loss/eval", "best.step", "steps"]


# ---------------------------------------------------------------- in a real browser


def find_chromium() -> str | None:
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium (looked for /usr/bin/chromium, chromium, chromium-browser, google-chrome on PATH): "
                    "install it with `apt-get install chromium` to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root in a container; --disable-dev-shm-usage: a container's /dev/shm is tiny
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


class Tab:
    """A page that records console errors, page errors, dialogs (an alert means escaping failed) and requests."""

    def __init__(self, browser, path: Path):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(5000)
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.goto(path.as_uri())

    def check_clean(self) -> None:
        assert self.errors == []
        assert all(u.startswith(("file:", "data:")) for u in self.urls), self.urls  # nothing from the network

    def visible_rows(self) -> int:
        return self.page.locator("#sample-table tbody tr:visible").count()

    def column(self, name: str) -> list[str]:
        return self.page.eval_on_selector("#sample-table", """(t, name) => {
            const i = [...t.tHead.rows[0].cells].findIndex(c => c.textContent === name);
            return [...t.tBodies[0].rows].map(r => r.cells[i].getAttribute("data-v") ?? r.cells[i].textContent);
        }""", name)


def test_run_report_in_chromium(browser, tmp_path, png):
    tab = Tab(browser, make_run(tmp_path / "demo-run", png))
    page = tab.page
    assert page.title() == "alignkit run: demo-run"
    for ident in SECTIONS:
        assert page.locator(f"#{ident}").is_visible(), ident
    assert page.locator("#curves img").evaluate("img => img.complete && img.naturalWidth > 0")
    assert page.locator("#live-badge").count() == 0
    assert page.locator("#sample-table tbody tr", has_text=XSS).count() == 1  # shown as text, never run

    assert tab.visible_rows() == len(SAMPLES)
    page.locator("#sample-filter").press_sequentially("APPLE")  # case-insensitive, any column
    assert tab.visible_rows() == 2 and page.locator("#sample-count").inner_text() == "2 of 5 samples shown"
    page.locator("#sample-filter").fill("")
    page.locator("#sample-step").select_option("2")
    assert tab.visible_rows() == 2
    page.locator("#sample-step").select_option("")
    assert tab.visible_rows() == len(SAMPLES)

    page.locator("#sample-table th", has_text="score").click()
    assert tab.column("score") == ["-0.25", "0.0", "0.5", "0.9", ""]  # exact values, the empty cell last
    page.locator("#sample-table th", has_text="score").click()
    assert tab.column("score") == ["0.9", "0.5", "0.0", "-0.25", ""]
    assert page.locator("#sample-table th", has_text="prompt").get_attribute("class") is None  # text: not sortable

    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # sticky table headers would sit mid-table in a scrolled full-page shot
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    tab.check_clean()


def test_empty_and_live_report_in_chromium(browser, tmp_path):
    """Zero samples, zero findings, no eval, no curves: the script still runs without an error."""
    run = tmp_path / "empty-run"
    run.mkdir()
    tab = Tab(browser, write_report(run, {"steps": 0}, [], findings=[], live=True))
    for ident in SECTIONS:
        assert tab.page.locator(f"#{ident}").is_visible(), ident
    assert tab.page.locator("#live-badge").inner_text() == "live: refreshes every 30 s"
    assert tab.page.locator("#doctor").inner_text().endswith("no findings")
    tab.check_clean()


def test_pipeline_report_in_chromium(browser, tmp_path, png):
    tab = Tab(browser, make_pipeline(tmp_path / "pipe", png))
    page = tab.page
    assert page.title() == "alignkit pipeline: pipe"
    for ident in ("stages", "eval", "doctor", "curves"):
        assert page.locator(f"#{ident}").is_visible(), ident
    page.locator("#stages a", has_text="grpo/report.html").click()
    page.wait_for_load_state()
    assert page.url.endswith("/pipe/grpo/report.html") and page.title() == "alignkit run: grpo"
    page.go_back()
    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # sticky table headers would sit mid-table in a scrolled full-page shot
    page.screenshot(path=str(ARTIFACTS / "pipeline_report.png"), full_page=True)
    tab.check_clean()
