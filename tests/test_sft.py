"""The SFT recipe: packing, split invariance, resume exactness, and that it actually teaches the demo task."""

import json

import pytest
import torch
from torch.testing import assert_close

from alignkit.config import ModelConfig
from alignkit.data.collate import pack_batch, pad_batch
from alignkit.data.loading import load_examples
from alignkit.data.templates import tokenize_conversation
from alignkit.demo.assets import demo_data
from alignkit.losses import step_denominator
from alignkit.models import load_causal_lm
from alignkit.recipes import sft as sft_recipe


@pytest.fixture(scope="module")
def rows(demo_tokenizer):
    examples = load_examples(str(demo_data("sft")), "sft")[:8]
    return [tokenize_conversation(demo_tokenizer, e.messages) for e in examples]


@pytest.fixture()
def model(demo_base, demo_tokenizer):
    torch.manual_seed(0)
    return load_causal_lm(ModelConfig(name_or_path=str(demo_base), device="cpu"), demo_tokenizer)


def test_packed_batch_gives_the_same_loss_as_unpacked(model, rows, demo_tokenizer):
    pad = demo_tokenizer.pad_token_id
    plain = pad_batch(rows, pad)
    packed = pack_batch(rows, 64, pad)
    assert packed.input_ids.shape[0] < len(rows)  # something was actually packed
    denominator = step_denominator([plain.loss_mask[:, 1:]])
    assert denominator == step_denominator([packed.loss_mask[:, 1:]])
    with torch.no_grad():
        loss_plain, _ = sft_recipe.sft_step_loss(model, plain, denominator)
        loss_packed, _ = sft_recipe.sft_step_loss(model, packed, denominator)
    assert_close(loss_packed, loss_plain)


def test_cross_attention_would_change_the_loss(model, rows, demo_tokenizer):
    """The packing test can fail: with plain positions the packed examples see each other and the loss moves."""
    packed = pack_batch(rows, 64, demo_tokenizer.pad_token_id)
    leaky = sft_recipe.SFTBatch(packed.input_ids, None, torch.arange(packed.input_ids.shape[1]).expand_as(packed.input_ids),
                                packed.loss_mask)
    denominator = step_denominator([packed.loss_mask[:, 1:]])
    with torch.no_grad():
        a, _ = sft_recipe.sft_step_loss(model, packed, denominator)
        b, _ = sft_recipe.sft_step_loss(model, leaky, denominator)
    assert abs(a.item() - b.item()) > 1e-3


def grads_for(model, micro_batches):
    model.zero_grad()
    denominator = step_denominator([b.loss_mask[:, 1:] for b in micro_batches])
    for batch in micro_batches:
        loss, _ = sft_recipe.sft_step_loss(model, batch, denominator)
        loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_batch8_accum1_equals_batch1_accum8(model, rows, demo_tokenizer):
    pad = demo_tokenizer.pad_token_id
    whole = grads_for(model, [pad_batch(rows, pad)])
    split = grads_for(model, [pad_batch([r], pad) for r in rows])
    for a, b in zip(whole, split):
        assert_close(a, b, rtol=1e-4, atol=1e-6)  # float32 sums in a different order


def small_config(tmp_path, name, **train):
    from alignkit.demo.run import stage_config

    return stage_config("sft", tmp_path / name, fast=True, train={"max_steps": 12, "batch_size": 8, "lr": 1e-3, **train},
                           run={"save_every": 6, "eval_every": 6, "sample_every": 6, "log_every": 1, "num_samples": 2})


def metric_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "training_metrics.jsonl").read_text().splitlines()]


def test_run_artifacts_are_complete(tmp_path):
    sft_recipe.train(small_config(tmp_path, "art", max_steps=6))
    run = tmp_path / "art"
    for name in ("summary.json", "training_curves.png", "training_metrics.csv", "training_metrics.jsonl",
                 "config.yaml", "samples.jsonl", "report.html", "final/config.json", "final/tokenizer.json",
                 "checkpoints/step-6/trainer_state.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["final"]["loss/eval"] > 0 and summary["tokens_per_s"] > 0
    header = (run / "training_metrics.csv").read_text().splitlines()[0].split(",")
    assert {"step", "loss/train", "lr", "grad_norm", "loss/eval", "ppl/eval"} <= set(header)
    assert not list(run.rglob("*.tmp")), "temporary files left behind"


@pytest.mark.slow
def test_sft_teaches_the_demo_format(demo_base, demo_sft):
    """Integration: the untrained model answers nothing parseable; after the demo SFT >= 90% are well formed."""
    from alignkit.demo.run import score_model

    before = score_model(str(demo_base), n_prompts=100)
    after = score_model(str(demo_sft), n_prompts=100)
    assert before["format"] <= 0.05
    assert after["format"] >= 0.9
    assert after["gold"] > before["gold"] + 1.0
