"""``alignkit generate``: K seeded responses per prompt from the demo SFT model, scored by the demo's gold judge,
written raw, as judged pairs or as ranked lists that alignkit's own loaders and trainers take as they are."""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from field_reads import recording_reads

from alignkit.cli import build_parser, main
from alignkit.config import ConfigError, GenerateConfig, describe_fields, load_config
from alignkit.data.loading import load_examples
from alignkit.demo.world import gold_reward
from alignkit.generate import Response, pair_records, ranked_records
from alignkit.rollout.core import rollout_seeds

K, PROMPTS = 4, 8
QUICK = ["data.train=demo:prompts_eval", f"generate.max_prompts={PROMPTS}", f"generate.samples={K}",
         "generate.max_new_tokens=12", "run.progress=false", "run.threads=1"]


def generate(out: Path, *overrides: str) -> tuple[list[dict], dict]:
    """Run ``alignkit generate`` into ``out``: (the records written, the summary)."""
    assert main(["generate", *QUICK, *overrides, f"run.output_dir={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["file"] == str(out / "generated.jsonl")
    return [json.loads(line) for line in (out / "generated.jsonl").read_text().splitlines()], summary


def gold(prompt: str, response: str) -> float:
    return gold_reward([prompt], [response])[0]


@pytest.fixture(scope="module")
def raw(tmp_path_factory, demo_sft):
    return generate(tmp_path_factory.mktemp("raw"), "generate.output=raw")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, demo_sft):
    """The pairs run, recording every config field it reads (the honesty test below checks them)."""
    with recording_reads() as reads:
        out = tmp_path_factory.mktemp("pairs")
        records, summary = generate(out, "generate.output=pairs")
    return records, summary, out / "generated.jsonl", reads


def by_prompt(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["prompt"], []).append(r)
    return out


def test_raw_holds_k_responses_per_prompt_with_their_scores_and_seeds(raw, demo_sft):
    records, summary = raw
    assert len(records) == PROMPTS * K == summary["responses"] == summary["records"]
    assert summary["prompts"] == PROMPTS and summary["output"] == "raw"
    for n, r in enumerate(records):
        i, k = divmod(n, K)  # prompt order, a prompt's K samples together
        assert r["sample"] == k and r["seed"] == rollout_seeds(0, k, i, 1)[0]
        assert r["scores"] == {"demo_gold": gold(r["prompt"], r["response"])}  # the written text's own score
        assert r["total"] == r["scores"]["demo_gold"] and r["model"] == str(demo_sft)
    assert len({r["response"] for r in records}) > PROMPTS  # sampled, not K copies of one answer
    assert summary["mean_scores"]["demo_gold"] == pytest.approx(sum(r["total"] for r in records) / len(records))


def test_pairs_are_the_best_and_worst_responses_and_every_skip_is_counted(pairs, raw):
    records, summary, path, _ = pairs
    skipped = summary["skipped_ties"] + summary["skipped_margin"] + summary["skipped_alike"]
    assert records and summary["records"] == len(records)
    assert len(records) + skipped + summary["duplicates_dropped"] == summary["prompts"] == PROMPTS
    assert summary["skipped_margin"] == 0  # min_margin 0: only ties are skipped
    samples = by_prompt(raw[0])  # the same seed draws the same K responses
    tied = 0
    for prompt, responses in samples.items():
        golds = [gold(prompt, r["response"]) for r in responses if r["response"].strip()]
        tied += max(golds) == min(golds)
        written = [r for r in records if r["prompt"] == prompt]
        if max(golds) == min(golds):
            assert not written
            continue
        (pair,) = written
        assert pair["scores"]["chosen"]["demo_gold"] == gold(prompt, pair["chosen"]) == max(golds)
        assert pair["scores"]["rejected"]["demo_gold"] == gold(prompt, pair["rejected"]) == min(golds)
        for side in ("chosen", "rejected"):
            k = pair["samples"][side]
            assert responses[k]["response"] == pair[side] and responses[k]["seed"] == pair["seeds"][side]
    assert tied == summary["skipped_ties"] + summary["skipped_alike"]
    assert all(r["totals"]["chosen"] > r["totals"]["rejected"] for r in records)
    assert "margin" not in records[0] and "system" not in records[0]  # the two extra keys the loader would read
    examples = load_examples(str(path), "preference")
    assert [(e.chosen[0].content, e.rejected[0].content) for e in examples] == [(r["chosen"], r["rejected"]) for r in records]


def test_min_margin_and_ties_skip_pairs_end_to_end(pairs, tmp_path):
    loose = {r["prompt"]: r for r in pairs[0]}
    records, summary = generate(tmp_path / "strict", "generate.min_margin=1.5")
    assert all(r["totals"]["chosen"] - r["totals"]["rejected"] >= 1.5 for r in records)
    assert [r for r in loose.values() if r["totals"]["chosen"] - r["totals"]["rejected"] >= 1.5] == records
    assert summary["skipped_margin"] == len(loose) - len(records) > 0
    # a judge that finds every answer alike (the SFT model's answers are all well-formed): every prompt a tie
    records, summary = generate(tmp_path / "flat", "rewards=[{builtin: demo_format}]")
    assert records == [] and summary["skipped_ties"] == PROMPTS and summary["mean_scores"]["demo_format"] == 1.0


def test_the_pairs_train_a_dpo_run(pairs, tmp_path):
    _, _, path, _ = pairs
    out = tmp_path / "dpo"
    assert main(["dpo", f"data.train={path}", "train.max_steps=2", "train.batch_size=2", "run.progress=false",
                 "run.num_samples=0", "run.threads=1", f"run.output_dir={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    n = len(load_examples(str(path), "preference"))
    assert summary["steps"] == 2 and summary["data"]["train"]["kept"] + summary["data"]["eval"]["kept"] == n
    assert (out / "final" / "config.json").is_file()


def test_ranked_lists_are_sorted_by_total_and_load_as_rankings(tmp_path, raw):
    from alignkit.config import DataConfig
    from alignkit.data.prepare import preference_kind

    records, summary = generate(tmp_path / "ranked", "generate.output=ranked")
    assert records and len(records) + summary["skipped_ties"] + summary["skipped_alike"] + \
        summary["duplicates_dropped"] == PROMPTS
    samples = by_prompt(raw[0])
    for r in records:
        assert r["totals"] == sorted(r["totals"], reverse=True)
        assert r["totals"] == [gold(r["prompt"], text) for text in r["responses"]]
        for a, b, ka, kb in zip(r["totals"], r["totals"][1:], r["samples"], r["samples"][1:]):
            assert a > b or ka < kb  # ties keep their sample order
        distinct = {x["response"] for x in samples[r["prompt"]] if x["response"].strip()}
        assert set(r["responses"]) == distinct  # every distinct response, each once
    path = tmp_path / "ranked" / "generated.jsonl"
    assert len(load_examples(str(path), "ranked")) == len(records)
    assert preference_kind(DataConfig(train=str(path))) == "ranked"  # what alignkit rm reads it as


def test_the_same_seed_writes_the_same_file_and_another_seed_another(tmp_path, raw):
    first = tmp_path / "a"
    generate(first, "generate.output=raw")
    again = json.dumps(raw[0])
    assert json.dumps([json.loads(x) for x in (first / "generated.jsonl").read_text().splitlines()]) == again
    other, _ = generate(tmp_path / "b", "generate.output=raw", "generate.seed=1", "generate.batch_size=5")
    assert [r["response"] for r in other] != [r["response"] for r in raw[0]]


def test_batch_size_does_not_change_the_samples(tmp_path, raw):
    records, _ = generate(tmp_path / "bs", "generate.output=raw", "generate.batch_size=3")
    assert [r["response"] for r in records] == [r["response"] for r in raw[0]]


def response(text: str, total: float, k: int) -> Response:
    return Response(text, k, 100 + k, {"judge": total}, total, 3, True)


class Knobs:
    min_margin = 0.0


def test_writers_skip_ties_blanks_repeats_and_thin_margins():
    tied = [response("a", 1.0, 0), response("b", 1.0, 1)]
    assert pair_records("p", tied, Knobs) == ([], {"skipped_ties": 1})
    assert ranked_records("p", tied, Knobs) == ([], {"skipped_ties": 1})
    alike = [response("a", 1.0, 0), response("a", 1.0, 1), response(" ", -5.0, 2)]
    assert pair_records("p", alike, Knobs) == ([], {"skipped_alike": 1})
    mixed = [response("low", 0.0, 0), response("top", 2.0, 1), response("mid", 1.0, 2), response("", -9.0, 3),
             response("top", 2.0, 4), response("mid2", 1.0, 5)]
    (pair,), _ = pair_records("p", mixed, Knobs)
    assert (pair["chosen"], pair["rejected"], pair["samples"], pair["seeds"]) == \
        ("top", "low", {"chosen": 1, "rejected": 0}, {"chosen": 101, "rejected": 100})
    (ranked,), counts = ranked_records("p", mixed, Knobs)
    assert ranked["responses"] == ["top", "mid", "mid2", "low"] and ranked["samples"] == [1, 2, 5, 0]
    assert counts == {"dropped_repeats": 1, "tied_neighbours": 1}

    class Strict:
        min_margin = 2.5

    assert pair_records("p", mixed, Strict) == ([], {"skipped_margin": 1})
    Strict.min_margin = 2.0
    assert pair_records("p", mixed, Strict)[0]  # a margin equal to min_margin is kept


def test_every_field_is_read_or_refused(pairs):
    *_, reads = pairs
    cfg = load_config(GenerateConfig)
    sections = {name: getattr(cfg, name) for name in ("model", "data", "run", "generate")}
    fields = {(type(s).__name__, f) for s in sections.values() for f in type(s).model_fields}
    refused = {(type(sections[key.split(".")[0]]).__name__, key.split(".")[1]) for key in GenerateConfig.REFUSED}
    assert not sorted(fields - reads - refused)


@pytest.mark.parametrize("overrides, message", [
    (["generate.output=raw", "generate.min_margin=0.5"], "generate.min_margin = 0.5 has no effect here: it filters pairs"),
    (["generate.samples=1"], "generate.samples = 1: generate.output = pairs compares responses"),
    (["data.eval=demo:prompts"], "data.eval = 'demo:prompts' is not used by this recipe"),
    (["run.save_every=5"], "run.save_every = 5 is not used by this recipe"),
    (["model.adapter=lora"], "model.adapter = 'lora' is not used by this recipe"),
    (["rewards=[]"], "at least one reward source"),
])
def test_knobs_that_would_do_nothing_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(GenerateConfig, None, overrides)
    assert load_config(GenerateConfig, None, ["generate.min_margin=0.5"]).generate.min_margin == 0.5  # pairs: acts


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None and torch.cuda.is_available(), reason="vLLM runs here")
def test_vllm_without_vllm_is_refused_before_anything_loads(tmp_path, capsys):
    assert main(["generate", "generate.engine=vllm", "model.name_or_path=/nowhere", f"run.output_dir={tmp_path}"]) == 2
    assert "generate.engine = vllm needs vLLM and a CUDA GPU" in capsys.readouterr().err


def test_resume_is_refused(tmp_path, capsys):
    assert main(["generate", "model.name_or_path=/nowhere", f"run.output_dir={tmp_path}", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for key, default, _ in describe_fields(GenerateConfig):
        assert key in out and f"[default: {default}]" in out, key


def test_a_pipeline_stage_reads_the_generated_file(tmp_path, demo_sft):
    from alignkit.pipeline import load_pipeline, stage_config

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "stages": {
        "gen": {"recipe": "generate", "config": str(Path(__file__).parent.parent / "examples" / "generate.yaml")},
        "dpo": {"data": {"train": "${gen.output}"}}}}, sort_keys=False))
    pipe = load_pipeline(path)
    assert stage_config(pipe, pipe.stages[1]).data.train == str(tmp_path / "out" / "gen" / "generated.jsonl")
    example = stage_config(pipe, pipe.stages[0])
    assert example.generate.output == "pairs" and example.rewards[0].label == "demo_gold"
