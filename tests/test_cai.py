"""``alignkit cai``: Constitutional AI's two data stages on the demo world. A scripted critic that knows the demo's
gold judge stands in for a capable model (the demo model cannot critique), so the tests can assert what the stages
are for: revisions score higher on the gold judge than the first answers (stage 1), and the judged pairs prefer
the better answer (stage 2); the demo model as a real LLM critic checks the mechanics (its verdicts mostly do
not parse, and are counted)."""

import json
import re
from pathlib import Path

import pytest
import yaml
from field_reads import recording_reads

from alignkit.cai import principle_draws
from alignkit.cli import build_parser, main
from alignkit.config import CAIConfig, ConfigError, describe_fields, load_config
from alignkit.constitution import (
    DEFAULT_TEMPLATES,
    ConstitutionError,
    check_template,
    load_constitution,
    parse_verdict,
)
from alignkit.data.loading import load_examples
from alignkit.demo.world import gold_score

SCRIPTED = "cai.scripted=alignkit.demo.critic:ScriptedCritic"
QUICK = ["cai.max_new_tokens=12", "run.progress=false", "run.threads=1"]
PROMPTS = 12
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def cai(out: Path, *overrides: str) -> tuple[list[dict], dict]:
    """Run ``alignkit cai`` into ``out``: (the records written, the summary)."""
    assert main(["cai", *QUICK, *overrides, f"run.output_dir={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["file"] == str(out / "cai.jsonl") and (out / "report.html").is_file()
    return [json.loads(line) for line in (out / "cai.jsonl").read_text().splitlines()], summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_sft):
    """Every end-to-end run of this file, recording the config fields they read (the honesty test checks them)."""
    out = tmp_path_factory.mktemp("cai")
    with recording_reads() as reads:
        done = {
            "critique": cai(out / "critique", SCRIPTED, f"cai.max_prompts={PROMPTS}", "cai.revisions=2"),
            "feedback": cai(out / "feedback", SCRIPTED, f"cai.max_prompts={PROMPTS}", "cai.stage=feedback"),
            # the demo model as a real critic and judge: mechanics only
            "self": cai(out / "self", "cai.max_prompts=3", "cai.critic_max_new_tokens=4"),
            "judge": cai(out / "judge", "cai.stage=feedback", "cai.critic=demo:sft", "cai.max_prompts=4",
                         "cai.critic_max_new_tokens=4", "cai.batch_size=3"),
        }
    return done, out, reads


def test_stage_1_revisions_beat_the_first_answers_on_the_gold_judge(runs):
    (records, summary), out = runs[0]["critique"], runs[1]
    assert summary["prompts"] == PROMPTS and summary["kept"] == len(records) > 0
    assert len(records) + summary["skipped_no_revision"] + summary["duplicates_dropped"] == PROMPTS
    for r in records:
        assert len(r["critiques"]) == len(r["revisions"]) == len(r["principles"]) == 2
        assert len(set(r["principles"])) == 2  # a fresh principle each round while they last
        assert r["response"] == r["revisions"][-1] and r["critic"] == "scripted:alignkit.demo.critic:ScriptedCritic"
        assert r["model"] and "margin" not in r and "system" not in r
    initial = sum(gold_score(r["prompt"], r["initial"]) for r in records) / len(records)
    revised = sum(gold_score(r["prompt"], r["response"]) for r in records) / len(records)
    assert revised == 1.5 > initial  # every revision is correct and polite; the first answers were not
    assert sum(summary["principles"].values()) == 2 * PROMPTS
    sft = load_examples(str(out / "critique" / "cai.jsonl"), "sft")  # the sft loader takes it as it is
    assert [e.messages[-1].content for e in sft] == [r["response"] for r in records]


def test_stage_1_is_deterministic_from_its_seed(runs, tmp_path):
    again, _ = cai(tmp_path / "again", SCRIPTED, f"cai.max_prompts={PROMPTS}", "cai.revisions=2", "cai.batch_size=5")
    assert again == runs[0]["critique"][0]  # the same seed, another batch size: the same file


def test_stage_2_pairs_prefer_the_better_answer_and_load_as_preferences(runs):
    (records, summary), out = runs[0]["feedback"], runs[1]
    skipped = sum(summary[k] for k in ("skipped_blank", "skipped_identical", "skipped_tie", "skipped_unparseable"))
    assert records and len(records) + skipped + summary["duplicates_dropped"] == PROMPTS
    assert summary["skipped_unparseable"] == 0 and summary["asked"] == sum(summary["principles"].values())
    for r in records:
        assert gold_score(r["prompt"], r["chosen"]) > gold_score(r["prompt"], r["rejected"])
        assert r["verdict"] in ("A", "B") and r["shown_first"] == ("chosen" if r["verdict"] == "A" else "rejected")
        assert r["principle"] in summary["principles"] and r["judge"].startswith("scripted:")
        assert sorted(r["samples"].values()) == [0, 1] and "margin" not in r and "system" not in r
    assert {r["shown_first"] for r in records} == {"chosen", "rejected"}  # the order is drawn, not fixed
    pairs = load_examples(str(out / "feedback" / "cai.jsonl"), "preference")
    assert [(e.chosen[0].content, e.rejected[0].content) for e in pairs] == [(r["chosen"], r["rejected"]) for r in records]


def test_an_llm_critic_runs_end_to_end_and_unparseable_verdicts_are_counted(runs):
    records, summary = runs[0]["judge"]
    assert summary["critic"] == summary["model"]  # demo:sft, resolved, loaded as a second model
    assert summary["asked"] > 0 and summary["skipped_unparseable"] > 0  # the tiny model does not answer "(A)"
    assert len(records) + summary["skipped_unparseable"] + summary["skipped_tie"] + summary["skipped_identical"] + \
        summary["skipped_blank"] + summary["duplicates_dropped"] == 4
    records, summary = runs[0]["self"]  # stage 1, the model critiquing and revising itself
    assert summary["critic"] == summary["model"] and summary["revision_rounds"] == 1
    assert 0 <= summary["revisions_cut"] <= 3 and runs[0]["critique"][1]["revisions_cut"] == 0  # scripted: none
    assert len(records) + summary["skipped_no_revision"] + summary["duplicates_dropped"] == 3
    assert all(len(r["critiques"]) == 1 and r["response"] == r["revisions"][0] for r in records)


def test_a_pipeline_stage_feeds_its_pairs_to_a_dpo_run(tmp_path, demo_sft):
    from alignkit.pipeline import run_pipeline

    quick = {"progress": False, "threads": 1}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "stages": {
        "rl-cai": {"recipe": "cai", "config": str(EXAMPLES / "cai_feedback.yaml"), "run": quick,
                   "cai": {"max_prompts": PROMPTS, "max_new_tokens": 12}},
        "dpo": {"data": {"train": "${rl-cai.output}"}, "train": {"max_steps": 2, "batch_size": 2},
                "run": {**quick, "num_samples": 0}}}}, sort_keys=False))
    summaries = run_pipeline(path, announce=lambda line: None)
    assert summaries["rl-cai"]["file"] == str(tmp_path / "out" / "rl-cai" / "cai.jsonl")
    assert summaries["rl-cai"]["kept"] > 2 and summaries["dpo"]["steps"] == 2  # the judged pairs train


def test_dialogue_prompts_are_written_as_messages_the_sft_loader_reads(tmp_path, demo_sft):
    data = tmp_path / "prompts.jsonl"
    dialogue = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."},
                {"role": "user", "content": "And 3 + 5?"}]
    data.write_text(json.dumps({"prompt": "What is 1 + 1?"}) + "\n" + json.dumps({"prompt": dialogue}) + "\n")
    records, _ = cai(tmp_path / "run", SCRIPTED, f"data.train={data}")
    assert records[1]["prompt"] == dialogue and records[1]["messages"][:3] == dialogue
    assert gold_score("3 + 5", records[1]["response"]) == 1.5  # the critic saw the dialogue's last question
    sft = load_examples(str(tmp_path / "run" / "cai.jsonl"), "sft")
    assert [len(e.messages) for e in sft] == [2, 4]


@pytest.mark.parametrize("text, verdict", [
    ("A", "A"), ("B", "B"), ("(A)", "A"), ("(b) is kinder", "B"), ("Response A", "A"), ("Option (B).", "B"),
    ("The answer is (B).", "B"), ("**A**", "A"), ("Answer: B", "B"), ("A is better", "A"), ("B.\nIt is polite.", "B"),
    ("Tie", "tie"), ("A response that is polite", None), ("Both are fine", None), ("", None), ("I think A", None),
    ("3 + 5 = 8.", None),
])
def test_verdicts_parse_only_when_the_answer_opens_with_its_choice(text, verdict):
    assert parse_verdict(text) == verdict


def test_principles_are_distinct_while_they_last_and_seeded():
    draws = principle_draws(0, 7, 4, 6, "critique")
    assert sorted(draws[:4]) == [0, 1, 2, 3] and draws == principle_draws(0, 7, 4, 6, "critique")
    assert {tuple(principle_draws(s, 7, 4, 4, "critique")) for s in range(8)} != {tuple(draws[:4])}


PRINCIPLE = {"name": "polite", "critique": "Is it rude?", "revision": "Make it polite.", "compare": "Which is kinder?"}


@pytest.mark.parametrize("content, message", [
    ({"principles": []}, r"principles must be a non-empty list"),
    ({"principles": [PRINCIPLE, {**PRINCIPLE, "name": "x", "compare": None}]},
     r'line 6: principle 2 \("x"\): field "compare" must be a non-empty string, got nothing'),
    ({"principles": [{k: v for k, v in PRINCIPLE.items() if k != "revision"}]},
     r'line 2: principle 1 \("polite"\): field "revision" is missing; expected a non-empty string \(have: name, '),
    ({"principles": [{**PRINCIPLE, "critque": "?"}]}, r'principle 1 \("polite"\): unknown field "critque" .*did you mean "critique"'),
    ({"principles": [PRINCIPLE, {**PRINCIPLE}]}, r'line 6: principle 2: name "polite" is also principle 1\'s'),
    ({"principles": ["be nice"]}, r"principle 1: expected a mapping with name, critique, revision, compare, got \"be nice\""),
    ({"principals": [PRINCIPLE]}, r'unknown key "principals" .*did you mean "principles"'),
    ({"principles": [PRINCIPLE], "templates": {"compare": "{prompt} {first} {second}"}},
     r"templates.compare: needs \{first\} \+ \{prompt\} \+ \{request\} \+ \{second\}"),
    ({"principles": [PRINCIPLE], "templates": {"critique": "{request} {conversation} {answer}"}},
     r"templates.critique: placeholder \{answer\} is not one of"),
    ({"principles": [PRINCIPLE], "templates": {"revise": "x"}}, r'unknown template "revise"'),
])
def test_a_bad_constitution_is_one_line_naming_the_file_principle_and_field(tmp_path, content, message):
    path = tmp_path / "constitution.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


def test_templates_are_checked_and_the_demo_constitution_loads(tmp_path):
    for name, template in DEFAULT_TEMPLATES.items():
        check_template(name, template, name)  # the defaults obey their own rules
    demo = load_constitution(Path(__file__).resolve().parent.parent / "alignkit" / "demo" / "constitution.yaml")
    assert 3 <= len(demo.principles) <= 4 and demo.templates == DEFAULT_TEMPLATES
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"principles": [PRINCIPLE], "templates": {
        "revision": "{{literal}} {prompt} / {response} / {critique} / {request}"}}))
    (principle,) = (c := load_constitution(path)).principles
    from alignkit.data.formats import Message

    ask = c.revision_ask(principle, (Message("user", "Hi {there}"),), "Ugh.", "rude")
    assert ask == "{literal} Hi {there} / Ugh. / rude / Make it polite." and c.templates["compare"] == DEFAULT_TEMPLATES["compare"]
    path.write_text("principles: [\n")
    with pytest.raises(ConstitutionError, match=r"c.yaml line \d+: not valid YAML"):
        load_constitution(path)


def test_every_field_is_read_or_refused(runs):
    *_, reads = runs
    cfg = load_config(CAIConfig)
    sections = {name: getattr(cfg, name) for name in ("model", "data", "run", "cai")}
    fields = {(type(s).__name__, f) for s in sections.values() for f in type(s).model_fields}
    refused = {(type(sections[key.split(".")[0]]).__name__, key.split(".")[1]) for key in CAIConfig.REFUSED}
    assert not sorted(fields - reads - refused)


@pytest.mark.parametrize("overrides, message", [
    (["cai.critic=demo:sft", SCRIPTED], "cai.critic and cai.scripted both name the critic"),
    (["cai.stage=feedback", "cai.temperature=0"], "cai.temperature = 0: cai.stage = feedback compares two sampled"),
    (["cai.stage=feedback", "cai.revisions=3"], "cai.revisions = 3 has no effect here: it counts critique rounds"),
    ([SCRIPTED, "cai.critic_max_new_tokens=9"], "cai.critic_max_new_tokens = 9 has no effect here"),
    (["cai.scripted=critic.py"], "expected module:Class or path/to/file.py:Class"),
    (["data.eval=demo:prompts"], "data.eval = 'demo:prompts' is not used by this recipe"),
    (["model.adapter=lora"], "model.adapter = 'lora' is not used by this recipe"),
])
def test_knobs_that_would_do_nothing_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(CAIConfig, None, overrides)


def test_a_scripted_critic_that_breaks_its_interface_is_named(tmp_path, capsys, demo_sft):
    critic = tmp_path / "critic.py"
    critic.write_text("class Judge:\n    def compare(self, prompt, first, second, principle):\n        return 3\n")
    base = ["cai", *QUICK, "cai.max_prompts=2", f"run.output_dir={tmp_path / 'run'}"]
    assert main([*base, f"cai.scripted={critic}:Judge"]) == 2  # stage 1 needs critique and revise
    assert "Judge has no method critique, revise (cai.stage = critique calls critique, revise)" in capsys.readouterr().err
    assert main([*base, f"cai.scripted={critic}:Nobody"]) == 2
    assert f'cai.scripted = "{critic}:Nobody"' in capsys.readouterr().err
    assert main([*base, f"cai.scripted={critic}:Judge", "cai.stage=feedback"]) == 2
    assert "compare() returned int; expected a str" in capsys.readouterr().err
    assert main([*base, "cai.constitution=/nowhere.yaml", SCRIPTED]) == 2
    assert "cai.constitution = '/nowhere.yaml': no such file" in capsys.readouterr().err


def test_resume_is_refused(tmp_path, capsys):
    assert main(["cai", "model.name_or_path=/nowhere", f"run.output_dir={tmp_path}", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cai", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for key, default, _ in describe_fields(CAIConfig):
        assert key in out and f"[default: {default}]" in out, key


def test_a_pipeline_chains_each_stage_into_its_trainer(tmp_path, demo_sft):
    from alignkit.pipeline import load_pipeline, stage_config

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "stages": {
        "sl-cai": {"recipe": "cai", "config": str(EXAMPLES / "cai_critique.yaml")},
        "sft": {"model": {"name_or_path": "demo:sft"}, "data": {"train": "${sl-cai.output}"}},
        "rl-cai": {"recipe": "cai", "config": str(EXAMPLES / "cai_feedback.yaml"),
                   "model": {"name_or_path": "${sft.output}"}},
        "dpo": {"model": {"name_or_path": "${sft.output}"}, "data": {"train": "${rl-cai.output}"}}}}, sort_keys=False))
    pipe = load_pipeline(path)
    assert stage_config(pipe, pipe.stages[1]).data.train == str(tmp_path / "out" / "sl-cai" / "cai.jsonl")
    assert stage_config(pipe, pipe.stages[3]).data.train == str(tmp_path / "out" / "rl-cai" / "cai.jsonl")
    feedback = stage_config(pipe, pipe.stages[2])
    assert feedback.cai.stage == "feedback" and feedback.model.name_or_path == str(tmp_path / "out" / "sft" / "final")
    assert Path(feedback.cai.constitution).is_file()  # demo:constitution, resolved to the packaged file
