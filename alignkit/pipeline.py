"""``alignkit pipeline PIPELINE.yaml``: named stages run in order, each a recipe config that may refer to earlier
stages' outputs (``model.name_or_path: ${sft.output}``); and the ONE resolver of ``demo:`` names and
``${stage.output}`` references, so that models, data and rewards only ever see real paths.

A pipeline file::

    output_dir: runs/my-pipeline        # the pipeline folder: one run folder per stage, the state, the report
    stages:
      sft:                              # a stage named like a recipe runs that recipe ...
        config: sft.yaml                # optional: a recipe YAML (relative to this file), or LLaMA-Factory's ...
        train: {max_steps: 500}         # ... with these sections laid over it (or the whole config inline)
      rm:
        model: {name_or_path: ${sft.output}}
      ppo-rm:
        recipe: ppo                     # ... any other name says its recipe
        model: {name_or_path: ${sft.output}}
        rewards: [{reward_model: "${rm.output}"}]    # (quote a reference inside [...] or {...})

A stage's output is its ``final`` model folder (an eval stage's: its run folder). Re-running the file skips
finished stages whose config is unchanged, resumes an interrupted one from its last checkpoint, and re-runs a
changed stage and every stage after it, saying so before it starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import (
    CAIConfig,
    ConfigError,
    DistillConfig,
    DPOConfig,
    EvalConfig,
    GenerateConfig,
    GRPOConfig,
    KTOConfig,
    OnlineDPOConfig,
    PPOConfig,
    PRMConfig,
    RMConfig,
    RRHFConfig,
    SFTConfig,
    deep_merge,
    dump_config,
    read_yaml,
    resolve_paths,
    validate,
)
from .config.llamafactory import converted_sections, is_llamafactory
from .doctor import HEALTH_FILE, read_health


# ----------------------------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Recipe:
    config: type
    train: Callable  # (cfg, resume) -> summary
    summary: str
    output: str = "final"  # the stage's output inside its run folder ("" = the run folder itself)


def _lazy(module: str) -> Callable:
    """The recipe's train function, imported on use (keeps `alignkit --help` fast)."""

    def run(cfg, resume):
        from importlib import import_module

        return import_module(f"alignkit.recipes.{module}").train(cfg, resume=resume)

    return run


def _run_eval(cfg, resume):
    from .eval import run_eval

    return run_eval(cfg)


def _run_generate(cfg, resume):
    from .generate import run_generate

    return run_generate(cfg, resume)


def _run_cai(cfg, resume):
    from .cai import run_cai

    return run_cai(cfg, resume)


RECIPES: dict[str, Recipe] = {
    "sft": Recipe(SFTConfig, _lazy("sft"), "supervised fine-tuning on prompt/response or chat data"),
    "rm": Recipe(RMConfig, _lazy("rm"), "reward model (Bradley-Terry on pairs, all-pairs / Plackett-Luce on rankings)"),
    "prm": Recipe(PRMConfig, _lazy("prm"), "process reward model: a per-step correctness classifier on step-labelled "
                  "solutions (step accuracy, first-error detection); a reward source for PPO / GRPO and a reranker"),
    "eval": Recipe(EvalConfig, _run_eval, "evaluate models on held-out data: reward models (accuracy, margins, "
                   "calibration) or several policies side by side (rewards, win rates with intervals, KL, perplexity, "
                   "diversity, a blind human-eval sheet)", output=""),
    "ppo": Recipe(PPOConfig, _lazy("ppo"), "PPO with a critic (RLHF): actor, critic, frozen reference and reward"),
    "grpo": Recipe(GRPOConfig, _lazy("grpo"), "GRPO / GSPO / Dr.GRPO / RLOO / REINFORCE++ with pluggable rewards"),
    "dpo": Recipe(DPOConfig, _lazy("dpo"), "DPO and its family (cDPO, robust, IPO, hinge, SimPO, ORPO) on preference pairs"),
    "kto": Recipe(KTOConfig, _lazy("kto"), "KTO on unpaired desirable / undesirable examples"),
    "online_dpo": Recipe(OnlineDPOConfig, _lazy("online_dpo"), "online / iterative DPO: pairs sampled from the current "
                         "policy each step and ranked by a judge (reward model, function, LLM judge, or the policy "
                         "itself: self-rewarding); trust-region reference updates"),
    "distill": Recipe(DistillConfig, _lazy("distill"), "knowledge distillation from a frozen teacher: offline KD "
                      "(forward KL at a temperature, + hard labels) or on-policy (reverse KL / GKD's JSD on the "
                      "student's own samples)"),
    "rrhf": Recipe(RRHFConfig, _lazy("rrhf"), "RRHF: rank K responses per prompt (ranked data, or samples scored by rewards) by length-normalised log-prob, + NLL on the best"),
    "generate": Recipe(GenerateConfig, _run_generate,
                       "on-policy preference data: sample K responses per prompt, score them with reward sources, write "
                       "them raw, as judged pairs (dpo / rm data) or as ranked lists (rm data)", output="generated.jsonl"),
    "cai": Recipe(CAIConfig, _run_cai, "Constitutional AI data: answers critiqued and revised against a constitution "
                  "(sft data), or pairs of answers judged under its principles (dpo / rm data)", output="cai.jsonl"),
}


# ---------------------------------------------------------------------------------------------- resolver
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_-]+)\.output\}")


def resolve(cfg, outputs: Mapping[str, str] | None = None):
    """``cfg`` with ``${stage.output}`` references (from ``outputs``: stage name -> path) and ``demo:`` names
    (built on first use) replaced by real paths in every path field. The commands call this once, before
    anything is loaded; a reference to an unknown stage has been refused by then (``check_references``)."""
    from .demo.assets import demo_resolved

    outputs = outputs or {}

    def references(kind: str, value: str) -> str:
        return REFERENCE.sub(lambda m: outputs.get(m.group(1), m.group(0)), value)

    return demo_resolved(resolve_paths(cfg, references))


def resolve_name(kind: str, value: str) -> str:
    """One ``demo:`` name (kind "data" or "model") -> its path, built on first use; anything else unchanged: the
    resolver of the command-line tools that take paths rather than configs (``alignkit data``)."""
    if not value.startswith("demo:"):
        return value
    from .demo.assets import demo_lookup

    return str(demo_lookup(kind, value))


def check_references(raw: Any, stage: str, earlier: list[str], key: str = "") -> None:
    """Every ``${name.output}`` in a stage's raw config names a stage that runs before it; else one line naming
    the stage, the key and what is known."""
    if isinstance(raw, dict):
        for k, v in raw.items():
            check_references(v, stage, earlier, f"{key}.{k}" if key else str(k))
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            check_references(v, stage, earlier, f"{key}[{i}]")
    elif isinstance(raw, str) and "${" in raw:
        names = REFERENCE.findall(raw)
        if not names or REFERENCE.sub("", raw).count("${"):
            raise ConfigError(f'stage {stage}: {key} = "{raw}": a reference looks like ${{stage.output}}')
        for name in names:
            if name not in earlier:
                known = ", ".join(earlier) or "none"
                raise ConfigError(f'stage {stage}: {key} = "{raw}": no stage "{name}" runs before {stage} '
                                  f"(stages before it: {known})")


# ---------------------------------------------------------------------------------------------- pipeline
@dataclass(frozen=True)
class Stage:
    name: str
    recipe: str
    raw: dict[str, Any]  # the stage's sections: its config file's, with the inline ones laid over them
    node: yaml.Node | None  # the stage's YAML node (line numbers in errors)


@dataclass(frozen=True)
class Pipeline:
    file: Path
    dir: Path
    stages: tuple[Stage, ...]

    def run_dir(self, stage: Stage) -> Path:
        return self.dir / stage.name

    def output(self, stage: Stage) -> Path:
        sub = RECIPES[stage.recipe].output
        return self.run_dir(stage) / sub if sub else self.run_dir(stage)


def load_pipeline(path: str | Path, out: str | Path | None = None) -> Pipeline:
    """Read and check a pipeline file: its stages, their recipes, their references (all before anything runs)."""
    path = Path(path)
    data, node = read_yaml(path)
    unknown = set(data) - {"output_dir", "stages"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))} (expected output_dir, stages)")
    stages_raw = data.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise ConfigError(f"{path}: stages: expected a mapping of stage name -> stage config, got {stages_raw!r}")
    nodes = _child(node, "stages")
    stages: list[Stage] = []
    for name, raw in stages_raw.items():
        where = f"{path} stages.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping (recipe:, config:, sections), got {raw!r}")
        raw = dict(raw)
        recipe = raw.pop("recipe", name)
        if recipe not in RECIPES:
            raise ConfigError(f"{where}: recipe \"{recipe}\" is unknown; expected one of {', '.join(RECIPES)} "
                              "(name the recipe with recipe: when the stage's name is not one)")
        if "run" in raw and "output_dir" in (raw["run"] or {}):
            raise ConfigError(f"{where}.run.output_dir: a stage's run folder is <pipeline output_dir>/{name}")
        config = raw.pop("config", None)
        if config is not None:
            config_path = (path.parent / config) if not Path(config).is_absolute() else Path(config)
            base, _ = read_yaml(config_path)
            if is_llamafactory(base):  # a LLaMA-Factory YAML: converted (its report on stderr), the stage's sections on top
                base = converted_sections(recipe, base, str(config_path), raw)
            raw = deep_merge(base, raw)
        check_references(raw, name, [s.name for s in stages])
        stages.append(Stage(name, recipe, raw, _child(nodes, name)))
    folder = Path(out) if out is not None else Path(data.get("output_dir") or f"runs/{path.stem}")
    return Pipeline(path, folder, tuple(stages))


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    return None


def stage_config(pipeline: Pipeline, stage: Stage):
    """The stage's validated config: its sections, its run folder, references and demo names resolved."""
    raw = deep_merge(stage.raw, {"run": {"output_dir": str(pipeline.run_dir(stage))}})
    cfg = validate(RECIPES[stage.recipe].config, raw, source=f"{pipeline.file} stages.{stage.name}", node=stage.node)
    outputs = {s.name: str(pipeline.output(s)) for s in pipeline.stages}
    cfg = resolve(cfg, outputs)
    leftover = [line.strip() for line in dump_config(cfg).splitlines() if "${" in line]
    if leftover:
        raise ConfigError(f"stage {stage.name}: {leftover[0]}: references are resolved in path fields only "
                          "(model and data paths, reward models, judges, eval models)")
    return cfg


def fingerprint(recipe: str, cfg) -> str:
    """What decides whether a finished stage is still current: its recipe and resolved config, less the
    fields that change nothing in the result (the progress bar)."""
    text = dump_config(cfg).replace("progress: false", "progress: true")
    return hashlib.sha256(f"{recipe}\n{text}".encode()).hexdigest()[:16]


STATE = "pipeline_state.json"


def plan(pipeline: Pipeline, configs: dict[str, Any], state: dict[str, dict], only: str | None = None,
         start: str | None = None) -> dict[str, str]:
    """Stage name -> what happens to it: "skip" (finished, unchanged), "resume" (interrupted), "run" (new), or
    "rerun: <why>" (its config changed, an earlier stage was re-run, or --only / --from asked)."""
    names = [s.name for s in pipeline.stages]
    for flag, value in (("--only", only), ("--from", start)):
        if value is not None and value not in names:
            raise ConfigError(f"{flag} {value}: no such stage in {pipeline.file} (stages: {', '.join(names)})")
    out: dict[str, str] = {}
    upstream = None  # the first selected stage that trains again: every later stage's result is stale
    newest: tuple[float, str] = (0.0, "")  # the latest finish time of the stages so far, and whose
    for stage in pipeline.stages:
        name, saved = stage.name, state.get(stage.name, {})
        selected = (only is None or name == only) and (start is None or names.index(name) >= names.index(start))
        done = saved.get("status") == "done" and (pipeline.run_dir(stage) / "summary.json").is_file()
        if not selected:
            if not done:
                raise ConfigError(f"stage {name} has not finished, and the stages asked for may need it: "
                                  "run the pipeline without --only / --from first")
            out[name] = "skip"
        elif name in (only, start):
            out[name] = f"rerun: asked for with {'--only' if name == only else '--from'}" if saved else "run"
        elif upstream and saved:
            out[name] = f"rerun: the earlier stage {upstream} runs again"
        elif saved and saved.get("fingerprint") != fingerprint(stage.recipe, configs[name]):
            out[name] = "rerun: its config changed since it last ran"
        elif done and saved.get("finished", 0) < newest[0]:
            out[name] = f"rerun: the earlier stage {newest[1]} finished after it"
        elif done:
            out[name] = "skip"
        else:
            out[name] = "resume" if saved else "run"
        if out[name].startswith("rerun") or out[name] == "resume":
            upstream = upstream or name
        if done and saved.get("finished", 0) > newest[0]:
            newest = (saved["finished"], name)
    return out


def run_pipeline(path: str | Path, only: str | None = None, start: str | None = None,
                 out: str | Path | None = None, announce: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a pipeline file (see the module docstring); returns {stage: summary}. Writes, in the pipeline
    folder: each stage's run folder, ``pipeline.resolved.yaml`` (every stage's resolved config),
    ``pipeline_state.json`` and ``report.html``."""
    from .checkpoint import atomic_write_json, atomic_write_text, latest_checkpoint

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("alignkit pipeline runs its stages in one process; launch multi-GPU stages one by one "
                          "with alignkit <recipe> --accelerate-config (a multi-process pipeline is not built yet)")
    pipeline = load_pipeline(path, out)
    configs = {s.name: stage_config(pipeline, s) for s in pipeline.stages}  # every error before anything runs
    pipeline.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(pipeline.dir / "pipeline.resolved.yaml", yaml.safe_dump(
        {s.name: {"recipe": s.recipe, **configs[s.name].model_dump(mode="json")} for s in pipeline.stages},
        sort_keys=False))
    state_file = pipeline.dir / STATE
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    actions = plan(pipeline, configs, state, only, start)
    for name, action in actions.items():
        announce(f"  {name:<14} {action}")
    summaries: dict[str, Any] = {}
    for stage in pipeline.stages:
        action, run_dir = actions[stage.name], pipeline.run_dir(stage)
        if action == "skip":
            summaries[stage.name] = json.loads((run_dir / "summary.json").read_text())
            continue
        resume = action == "resume" and latest_checkpoint(run_dir) is not None
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        state[stage.name] = {"recipe": stage.recipe, "status": "running",
                             "fingerprint": fingerprint(stage.recipe, configs[stage.name])}
        atomic_write_json(state_file, state)
        announce(f"--- {stage.name}: alignkit {stage.recipe}{' (resuming)' if resume else ''} -> {run_dir}")
        started = time.time()
        summaries[stage.name] = RECIPES[stage.recipe].train(configs[stage.name], True if resume else None)
        state[stage.name].update(status="done", seconds=round(time.time() - started, 1), finished=time.time())
        atomic_write_json(state_file, state)
    report = write_pipeline_outputs(pipeline, state, summaries)
    from .eval.policies import eval_tables, print_comparison

    for stage in pipeline.stages:  # an eval that ran printed its table; one skipped prints it again here
        if stage.recipe == "eval" and actions[stage.name] == "skip":
            for table in eval_tables(summaries[stage.name]):
                print_comparison(table)
    findings = sum(len(read_health(pipeline.run_dir(s) / HEALTH_FILE)) for s in pipeline.stages)
    announce(f"pipeline: {len(pipeline.stages)} stages in {pipeline.dir}; the doctor's findings: {findings}; "
             f"report: {report}")
    return summaries


def write_pipeline_outputs(pipeline: Pipeline, state: dict[str, dict], summaries: dict[str, Any]) -> Path:
    """The pipeline's report.html: every stage's status, curves and doctor findings, and the eval tables."""
    from .eval.policies import eval_tables
    from .report import write_pipeline_report

    stages, findings, tables = [], {}, []
    for stage in pipeline.stages:
        run_dir = pipeline.run_dir(stage)
        summary = summaries.get(stage.name) or {}
        stages.append({"name": stage.name, "recipe": stage.recipe, "run_dir": str(run_dir),
                       "status": state.get(stage.name, {}).get("status", "not run"),
                       "seconds": state.get(stage.name, {}).get("seconds"), "summary": summary})
        findings[stage.name] = [f.__dict__ for f in read_health(run_dir / HEALTH_FILE)]
        if stage.recipe == "eval":
            tables.extend(eval_tables(summary))
    return write_pipeline_report(pipeline.dir, stages, tables, findings)
