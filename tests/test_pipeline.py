"""The pipeline file and the one resolver: references, demo names, skip / resume / re-run of changed stages."""

import ast
import json
from pathlib import Path

import pytest
import yaml

from alignkit.config import ConfigError, SFTConfig, load_config
from alignkit.pipeline import load_pipeline, plan, resolve, run_pipeline, stage_config

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, stages: dict, **top) -> Path:
    path.write_text(yaml.safe_dump({"output_dir": str(path.parent / "out"), **top, "stages": stages}, sort_keys=False))
    return path


TINY_SFT = {"model": {"name_or_path": "demo:base", "device": "cpu"}, "data": {"train": "demo:sft", "max_length": 64},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3},
            "run": {"save_every": 1, "eval_every": 0, "sample_every": 0, "progress": False, "threads": 2}}
TINY_EVAL = {"recipe": "eval", "models": {"base": "demo:base", "tuned": "${sft.output}"}, "model": {"device": "cpu"},
             "data": {"train": "demo:prompts_eval"}, "rewards": [{"builtin": "demo_gold", "name": "gold"}],
             "eval": {"mode": "policy", "max_prompts": 4, "max_new_tokens": 6, "baseline": "base", "bootstrap": 100},
             "run": {"threads": 2}}


def test_references_resolve_to_the_earlier_stage_output(tmp_path, demo_base):
    pipe = load_pipeline(write(tmp_path / "p.yaml", {"sft": TINY_SFT, "check": TINY_EVAL}))
    cfg = stage_config(pipe, pipe.stages[1])
    assert cfg.models["tuned"] == str(tmp_path / "out" / "sft" / "final")
    assert cfg.models["base"] == str(demo_base)  # demo: names become real paths in the same walk
    assert cfg.rewards[0].fn == "alignkit.demo.world:gold_reward" and cfg.rewards[0].label == "gold"
    assert cfg.run.output_dir == str(tmp_path / "out" / "check")


@pytest.mark.parametrize("stages, message", [
    ({"sft": {**TINY_SFT, "model": {"name_or_path": "${sfft.output}"}}},
     'stage sft: model.name_or_path = "${sfft.output}": no stage "sfft" runs before sft (stages before it: none)'),
    ({"sft": TINY_SFT, "check": {**TINY_EVAL, "models": {"a": "${ppo.output}"}}},
     'stage check: models.a = "${ppo.output}": no stage "ppo" runs before check (stages before it: sft)'),
    ({"sft": TINY_SFT, "check": {**TINY_EVAL, "models": {"a": "${sft.final}"}}},
     'stage check: models.a = "${sft.final}": a reference looks like ${stage.output}'),
    ({"sft": {**TINY_SFT, "recipe": "sftt"}}, 'recipe "sftt" is unknown'),
    ({"sft": {**TINY_SFT, "run": {"output_dir": "x"}}}, "stages.sft.run.output_dir: a stage's run folder is"),
])
def test_a_bad_pipeline_names_the_stage_and_the_key(tmp_path, stages, message):
    with pytest.raises(ConfigError) as err:
        load_pipeline(write(tmp_path / "p.yaml", stages))
    assert message in str(err.value)


def test_a_reference_outside_a_path_field_is_refused(tmp_path, demo_base):
    two = {**TINY_SFT, "recipe": "sft", "data": {**TINY_SFT["data"], "split": "${sft.output}"}}
    pipe = load_pipeline(write(tmp_path / "p.yaml", {"sft": TINY_SFT, "two": two}))
    with pytest.raises(ConfigError, match=r"stage two: split: .*references are resolved in path fields only"):
        stage_config(pipe, pipe.stages[1])


def test_the_cli_resolves_demo_names_before_anything_loads(demo_base):
    cfg = resolve(load_config(SFTConfig, None, ["data.train=demo:sft"]))
    assert cfg.model.name_or_path == str(demo_base) and not cfg.data.train.startswith("demo:")
    assert cfg.data.duplicates == "keep"  # the demo world's repeats are by design


def test_loaders_refuse_an_unresolved_demo_name():
    from alignkit.models import ModelError, load_tokenizer

    with pytest.raises(ModelError, match="alignkit.pipeline.resolve"):
        load_tokenizer(SFTConfig().model)


def test_only_the_top_imports_the_demo_package():
    """models, data, rewards and every lower module never import alignkit.demo; pipeline (the resolver) may."""
    allowed = {"pipeline.py", "cli.py"}
    offenders = []
    for path in (ROOT / "alignkit").rglob("*.py"):
        rel = path.relative_to(ROOT / "alignkit")
        if rel.parts[0] == "demo" or rel.name in allowed and len(rel.parts) == 1:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "demo" in node.module.split("."):
                offenders.append(f"{rel}: from {'.' * node.level}{node.module}")
    assert offenders == []


def _plan(tmp_path, state, **kw):
    pipe = load_pipeline(write(tmp_path / "p.yaml", {"sft": TINY_SFT, "rm": {**TINY_SFT, "recipe": "sft"},
                                                     "check": TINY_EVAL}))
    configs = {s.name: stage_config(pipe, s) for s in pipe.stages}
    from alignkit.pipeline import fingerprint

    prints = {s.name: fingerprint(s.recipe, configs[s.name]) for s in pipe.stages}
    for name, saved in state.items():
        saved.setdefault("fingerprint", prints[name])
        if saved.get("status") == "done":
            (tmp_path / "out" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "out" / name / "summary.json").write_text("{}")
    return plan(pipe, configs, state, **kw)


def test_plan_skips_finished_stages_and_reruns_everything_after_a_changed_one(tmp_path, demo_base):
    done = lambda t: {"status": "done", "finished": t}  # noqa: E731
    assert _plan(tmp_path, {"sft": done(1), "rm": done(2), "check": done(3)}) == {
        "sft": "skip", "rm": "skip", "check": "skip"}
    assert _plan(tmp_path, {"sft": done(1), "rm": {**done(2), "fingerprint": "old"}, "check": done(3)}) == {
        "sft": "skip", "rm": "rerun: its config changed since it last ran",
        "check": "rerun: the earlier stage rm runs again"}
    assert _plan(tmp_path, {"sft": done(1), "rm": {"status": "running"}}) == {
        "sft": "skip", "rm": "resume", "check": "run"}
    # a stage re-run alone (--only) leaves the later ones stale: the next plain run re-runs them
    assert _plan(tmp_path, {"sft": done(1), "rm": done(5), "check": done(3)}) == {
        "sft": "skip", "rm": "skip", "check": "rerun: the earlier stage rm finished after it"}
    assert _plan(tmp_path, {"sft": done(1), "rm": done(2), "check": done(3)}, only="rm") == {
        "sft": "skip", "rm": "rerun: asked for with --only", "check": "skip"}
    assert _plan(tmp_path, {"sft": done(1), "rm": done(2), "check": done(3)}, start="rm") == {
        "sft": "skip", "rm": "rerun: asked for with --from", "check": "rerun: the earlier stage rm runs again"}
    with pytest.raises(ConfigError, match="stage sft has not finished"):
        _plan(tmp_path, {}, only="check")


@pytest.mark.slow
def test_a_pipeline_runs_skips_resumes_and_reruns(tmp_path, demo_base):
    """Run sft -> eval; a re-run skips both; a changed sft re-runs both; an interrupted stage resumes from its
    checkpoint and ends with the uninterrupted run's weights."""
    import torch
    from safetensors.torch import load_file

    path = write(tmp_path / "p.yaml", {"sft": TINY_SFT, "check": TINY_EVAL})
    said: list[str] = []
    first = run_pipeline(path, announce=said.append)
    out = tmp_path / "out"
    assert first["check"]["models"]["tuned"]["gold"]["mean"] == pytest.approx(
        json.loads((out / "check" / "summary.json").read_text())["models"]["tuned"]["gold"]["mean"])
    assert (out / "report.html").is_file() and (out / "pipeline.resolved.yaml").is_file()
    weights = load_file(out / "sft" / "final" / "model.safetensors")
    said.clear()
    run_pipeline(path, announce=said.append)
    assert [s.split() for s in said[:2]] == [["sft", "skip"], ["check", "skip"]]
    assert said[-1].startswith("pipeline: 2 stages in") and said[-1].endswith(str(out / "report.html"))
    # interrupted after its first checkpoint: state says running, no summary, a checkpoint at step 1
    state = json.loads((out / "pipeline_state.json").read_text())
    state["sft"]["status"] = "running"
    (out / "pipeline_state.json").write_text(json.dumps(state))
    (out / "sft" / "summary.json").unlink()
    import shutil

    ckpts = sorted((out / "sft" / "checkpoints").iterdir())
    for extra in ckpts[1:]:
        shutil.rmtree(extra)
    said.clear()
    run_pipeline(path, announce=said.append)
    assert said[:2] == ["  sft            resume", "  check          rerun: the earlier stage sft runs again"]
    resumed = load_file(out / "sft" / "final" / "model.safetensors")
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    # a changed stage config re-runs it and what follows
    write(path, {"sft": {**TINY_SFT, "train": {**TINY_SFT["train"], "lr": 2e-3}}, "check": TINY_EVAL})
    said.clear()
    run_pipeline(path, announce=said.append)
    assert said[:2] == ["  sft            rerun: its config changed since it last ran",
                        "  check          rerun: the earlier stage sft runs again"]


def test_the_demo_pipeline_matches_the_demo_settings(demo_base, tmp_path):
    """The demo:sft / demo:rm models that configs default to are trained with the pipeline file's settings."""
    from alignkit.demo.run import DEMO_STAGES

    pipe = load_pipeline(ROOT / "examples" / "demo_pipeline.yaml", out=tmp_path)
    stages = {s.name: s for s in pipe.stages}
    for name in ("sft", "teacher", "rm", "dpo", "kto", "ppo", "grpo", "tools-sft", "tools-grpo"):
        raw = stages[name].raw
        for section, values in DEMO_STAGES[name.replace("-", "_")].settings.items():
            if isinstance(values, dict):
                given = {k: v for k, v in raw.get(section, {}).items() if k != "name_or_path"}
                expect = {k: v for k, v in values.items() if k != "name_or_path"}
                assert given == expect, (name, section)
    for stage in pipe.stages:
        if stage.name != "eval":
            stage_config(pipe, stage)  # every stage validates and resolves (references, demo names)


@pytest.mark.parametrize("name", ["cai_pipeline.yaml"])
def test_example_pipelines_validate_and_resolve(name, demo_base, tmp_path):
    pipe = load_pipeline(ROOT / "examples" / name, out=tmp_path)
    for stage in pipe.stages:
        stage_config(pipe, stage)
