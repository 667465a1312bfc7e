"""The shared run lifecycle: the data order, batch sizes over processes, the non-finite guard (by injection),
seeded sampling, the built-in template's announcement and a final/ that agrees with itself, frozen models under
the run's autocast."""

import json
import time

import pytest
import torch
from torch.testing import assert_close

from alignkit.config import ConfigError, ModelConfig
from alignkit.runtime import require_divisible, step_indices


# --------------------------------------------------------------------------------------------- data order
def test_step_indices_is_a_pure_function_of_seed_and_step():
    assert step_indices(40, 3, 8, 2, seed=5) == step_indices(40, 3, 8, 2, seed=5)
    assert step_indices(40, 3, 8, 2, seed=5) != step_indices(40, 3, 8, 2, seed=6)


def test_step_indices_ranks_split_the_single_process_batch():
    one = step_indices(40, 2, 8, 2, seed=1)
    for j in range(2):
        halves = [step_indices(40, 2, 8, 2, seed=1, rank=r, world=2)[j] for r in range(2)]
        assert halves[0] + halves[1] == one[j] and len(halves[0]) == 4


def test_step_indices_epoch_is_a_permutation_and_accumulation_cuts_the_same_rows():
    # 40 rows, batch 8: five steps make an epoch; every row once
    rows = [i for step in range(1, 6) for i in step_indices(40, step, 8, 1, seed=0)[0]]
    assert sorted(rows) == list(range(40))
    # batch 4 x accumulation 2 sees exactly the rows of batch 8 x 1, in the same order
    for step in range(1, 4):
        assert sum(step_indices(40, step, 4, 2, seed=0), []) == step_indices(40, step, 8, 1, seed=0)[0]
    # the sixth step starts a fresh permutation (epoch 2)
    assert step_indices(40, 6, 8, 1, seed=0)[0] != step_indices(40, 1, 8, 1, seed=0)[0]


def test_batch_sizes_must_split_over_the_processes_and_the_error_names_the_field():
    require_divisible(2, {"train.batch_size": 8})
    with pytest.raises(ConfigError) as err:
        require_divisible(4, {"ppo.mini_batch_size": 6})
    assert str(err.value) == ("ppo.mini_batch_size = 6 does not divide over 4 processes: batch sizes count over all "
                              "processes (each takes ppo.mini_batch_size / 4); use a multiple of 4")


# ------------------------------------------------------------------------------------- non-finite guard
def sft_settings(tmp_path, name, **train):
    from multiproc import small_data

    from alignkit.demo.run import stage_config

    return stage_config("sft", tmp_path / name, fast=True, data=small_data("sft", tmp_path / "data"),
                        train={"max_steps": 5, "batch_size": 8, "lr": 1e-3, **train},
                        run={"save_every": 1, "eval_every": 0, "log_every": 1, "progress": False})


@pytest.fixture()
def nan_at_step_3(monkeypatch):
    """The SFT loss of the 3rd optimizer step is NaN (injected into the per-token loss)."""
    from alignkit.recipes import sft

    calls = {"n": 0}
    real = sft.sft_loss

    def poisoned(logps, mask):
        calls["n"] += 1
        loss, stats = real(logps, mask)
        return (loss * float("nan"), stats) if calls["n"] == 3 else (loss, stats)

    monkeypatch.setattr(sft, "sft_loss", poisoned)


def test_nan_loss_stops_the_run_naming_step_and_quantity_and_keeps_the_last_checkpoint(tmp_path, nan_at_step_3,
                                                                                        demo_base):
    from alignkit.checkpoint import latest_checkpoint
    from alignkit.recipes import sft

    with pytest.raises(FloatingPointError, match=r"^step 3: grad_norm = nan \(not finite\)") as err:
        sft.train(sft_settings(tmp_path, "stop"))
    assert "the last good checkpoint is intact" in str(err.value)
    assert latest_checkpoint(tmp_path / "stop").name == "step-2"
    assert not (tmp_path / "stop" / "final").exists()


def test_nan_loss_with_on_nonfinite_skip_skips_that_step_and_finishes(tmp_path, nan_at_step_3, demo_base):
    from safetensors.torch import load_file

    from alignkit.recipes import sft

    summary = sft.train(sft_settings(tmp_path, "skip", on_nonfinite="skip"))
    assert summary["skipped_steps"] == 1
    weights = load_file(str(tmp_path / "skip" / "final" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    rows = [json.loads(x) for x in (tmp_path / "skip" / "training_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/train" in r] == [1, 2, 3, 4, 5]


def test_the_cli_reports_a_stop_in_one_line(tmp_path, nan_at_step_3, capsys, demo_base):
    from multiproc import small_data

    from alignkit.cli import main

    data = small_data("sft", tmp_path / "data")
    code = main(["sft", f"model.name_or_path={demo_base}", f"data.train={data['train']}", f"data.eval={data['eval']}",
                 "train.max_steps=4", "train.batch_size=8", f"run.output_dir={tmp_path / 'cli'}", "run.progress=false"])
    assert code == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("alignkit: stopped: step 3: grad_norm = nan (not finite)") and "\n" not in err


# ------------------------------------------------------------------------------------------------ sampling
def test_sampling_probs_apply_temperature_top_k_and_top_p_by_hand():
    from alignkit.sampling import SamplingParams, sampling_probs

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert_close(sampling_probs(logits, SamplingParams(temperature=2.0)), torch.softmax(logits / 2, -1))
    top2 = torch.softmax(torch.tensor([2.0, 1.0]), -1)
    assert_close(sampling_probs(logits, SamplingParams(top_k=2)), torch.cat([top2, torch.zeros(2)]).unsqueeze(0))
    # softmax = [.644, .237, .087, .032]: top_p 0.7 keeps the first two (the second starts below 0.7)
    assert_close(sampling_probs(logits, SamplingParams(top_p=0.7)), torch.cat([top2, torch.zeros(2)]).unsqueeze(0))


def test_row_sampler_draws_from_the_distribution():
    from alignkit.sampling import RowSampler, SamplingParams

    logits = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    n = 20000
    picks = RowSampler(list(range(n)), SamplingParams()).__call__(None, logits.expand(n, 4)).argmax(-1)
    frequencies = torch.bincount(picks, minlength=4).float() / n
    assert_close(frequencies, torch.softmax(logits, -1)[0], atol=0.015, rtol=0)  # 3+ sigma at n = 20000


def test_a_sample_depends_on_its_seed_not_on_its_batch(demo_sft, demo_tokenizer):
    from alignkit.data.formats import Message
    from alignkit.data.templates import tokenize_prompt
    from alignkit.models import load_causal_lm
    from alignkit.sampling import SamplingParams, generate

    model = load_causal_lm(ModelConfig(name_or_path=str(demo_sft), device="cpu"), demo_tokenizer)
    prompts = [tokenize_prompt(demo_tokenizer, (Message("user", q),)) for q in
               ("What is 3 + 5?", "Can you work out 9 minus 3?", "What is 1 + 1?", "What is 7 - 2?")]
    params = SamplingParams(max_new_tokens=12, temperature=1.3)
    together = generate(model, demo_tokenizer, prompts, params, seeds=[11, 12, 13, 14])
    alone = [generate(model, demo_tokenizer, [p], params, seeds=[s])[0] for p, s in zip(prompts, [11, 12, 13, 14])]
    assert [g.response_ids for g in together] == [g.response_ids for g in alone]
    others = generate(model, demo_tokenizer, prompts, params, seeds=[21, 22, 23, 24])
    assert [g.response_ids for g in others] != [g.response_ids for g in together]


# ------------------------------------------------------------------------------------------ chat template
def test_installing_the_builtin_template_is_announced_and_final_agrees_with_itself(tmp_path, demo_base):
    from transformers import AutoConfig

    from alignkit.models import load_causal_lm, load_tokenizer, save_model

    folder = tmp_path / "no-template"
    import shutil

    shutil.copytree(demo_base, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    config["eos_token"] = "<|pad|>"
    config["additional_special_tokens"] = []
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in ("chat_template.jinja", "special_tokens_map.json"):
        (folder / extra).unlink(missing_ok=True)
    said = []
    cfg = ModelConfig(name_or_path=str(folder), device="cpu")
    tokenizer = load_tokenizer(cfg, announce=said.append)
    assert len(said) == 1 and "installed alignkit's built-in one" in said[0]
    assert "EOS '<|pad|>' -> '<|end|>'" in said[0]
    model = load_causal_lm(cfg, tokenizer)
    save_model(model, tokenizer, tmp_path / "final")
    saved = AutoConfig.from_pretrained(tmp_path / "final")
    saved_tokenizer = json.loads((tmp_path / "final" / "tokenizer_config.json").read_text())
    assert saved.eos_token_id == tokenizer.convert_tokens_to_ids(saved_tokenizer["eos_token"]) == tokenizer.eos_token_id
    assert saved.vocab_size >= len(tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


def test_a_tokenizer_with_a_template_is_left_alone(demo_base):
    from alignkit.models import load_tokenizer

    said = []
    load_tokenizer(ModelConfig(name_or_path=str(demo_base)), announce=said.append)
    assert said == []


# ----------------------------------------------------------------------------------------------- autocast
def test_a_frozen_reference_computes_under_the_runs_autocast(demo_sft, demo_tokenizer):
    from alignkit.data.collate import pad_sequences
    from alignkit.data.formats import Message
    from alignkit.data.templates import tokenize_conversation
    from alignkit.models import load_reference

    cfg = ModelConfig(name_or_path=str(demo_sft), device="cpu")
    seen = []

    def bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    reference = load_reference(cfg, str(demo_sft), None, demo_tokenizer, torch.device("cpu"), autocast=bf16)
    reference.model.model.layers[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    row = tokenize_conversation(demo_tokenizer, (Message("user", "What is 2 + 2?"), Message("assistant", "4.")),
                                first_trained=1)
    reference.sequence_logps(pad_sequences([row], [0], demo_tokenizer.pad_token_id))
    assert seen == [torch.bfloat16]  # without the autocast the fp32 weights would compute in fp32


def test_duplicates_keep_lets_a_repeated_record_through():
    from pathlib import Path

    from alignkit.config import DataConfig
    from alignkit.data.formats import DataError
    from alignkit.data.prepare import load_split

    path = str(Path(__file__).parent / "data" / "bad" / "sft_duplicate.jsonl")
    with pytest.raises(DataError, match="duplicate of line 1"):
        load_split(DataConfig(train=path, eval_fraction=0), "sft", 0)
    train, _ = load_split(DataConfig(train=path, eval_fraction=0, duplicates="keep"), "sft", 0)
    assert len(train) == len(Path(path).read_text().splitlines())


def test_after_each_log_the_metrics_the_doctor_and_the_live_report_are_written(tmp_path):
    """A running job can be watched: every logged row rewrites the metrics files, the doctor says a new finding
    once, and the live report (with its refresh) is redrawn at most every live_every_s seconds."""
    import json
    from types import SimpleNamespace

    from alignkit.doctor import Doctor, RunFacts
    from alignkit.tracking import RunLog
    from alignkit.watch import after_log

    said: list[str] = []
    log = RunLog(tmp_path)
    run = SimpleNamespace(dir=tmp_path, recipe="sft", log=log, live_every_s=30.0, _live_at=0.0, print=said.append,
                          flush_every_s=0.0, _flushed_at=0.0, doctor=Doctor(RunFacts("sft", 10), tmp_path / "health.json"))
    log.watchers.append(lambda rows: after_log(run, rows))
    log.log(1, {"loss/train": 2.0})
    assert [json.loads(x)["loss/train"] for x in (tmp_path / "training_metrics.jsonl").read_text().splitlines()] == [2.0]
    page = (tmp_path / "report.html").read_text()
    assert 'http-equiv="refresh"' in page and (tmp_path / "training_curves.png").is_file()
    (tmp_path / "report.html").unlink()
    log.log(2, {"loss/train": float("nan")})
    log.log(3, {"loss/train": float("nan")})
    assert len((tmp_path / "training_metrics.csv").read_text().splitlines()) == 4  # header + 3 rows, before any end
    assert not (tmp_path / "report.html").exists()  # redrawn at most every 30 s
    assert [s.split()[1] for s in said] == ["[error]"] and "nonfinite (step 2)" in said[0]  # said once
    run.flush_every_s, run._flushed_at = 60.0, time.time()  # a fast run: rows within the minute wait for the next
    log.log(4, {"loss/train": 1.0})  # rewrite (a checkpoint's, the end's, or one a minute later)
    assert len((tmp_path / "training_metrics.csv").read_text().splitlines()) == 4
    assert json.loads((tmp_path / "health.json").read_text())["findings"][0]["rule"] == "nonfinite"
