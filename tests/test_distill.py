"""Knowledge distillation: on-policy distillation lowers the student's KL to the teacher on held-out prompts, offline
KD lowers it on held-out responses, the top-k cache with k = V is the full loss, and a teacher with another
vocabulary is refused."""

import json

import pytest
import torch

from alignkit.config import ConfigError, DistillConfig, validate
from alignkit.demo.assets import demo_data, demo_model, demo_resolved
from alignkit.recipes.distill import last_turn_prompt, train


def small_sft(folder, n_train=64, n_eval=16):
    folder.mkdir(parents=True, exist_ok=True)
    lines = list(dict.fromkeys(demo_data("sft").read_text().splitlines()))
    (folder / "train.jsonl").write_text("\n".join(lines[:n_train]) + "\n")
    (folder / "eval.jsonl").write_text("\n".join(lines[n_train : n_train + n_eval]) + "\n")
    return {"train": str(folder / "train.jsonl"), "eval": str(folder / "eval.jsonl"), "max_length": 96}


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    """The demo SFT model with noise in every weight: a student near the teacher (the demo SFT model itself), whose
    own samples are sentences the teacher can judge, and whose distributions differ from the teacher's."""
    from alignkit.config import ModelConfig
    from alignkit.models import load_causal_lm, load_tokenizer, save_model

    cfg = ModelConfig(name_or_path=str(demo_model("sft")), device="cpu")
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg, tokenizer, trainable=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(NOISE * p.std() * torch.randn(p.shape, generator=generator))
    path = tmp_path_factory.mktemp("student") / "noisy-sft"
    save_model(model, tokenizer, path)
    return str(path)


NOISE = 1.5  # the student's own samples start ~5 nats per token from the teacher's distribution


def distill_config(tmp_path, student, steps, **distill):
    """A noised copy of the demo SFT model distilled from the demo SFT model, on a slice of the SFT data."""
    sampling = {"max_new_tokens": 16, "eval_temperature": 1.0}
    if distill.get("on_policy_fraction"):
        sampling["temperature"] = 1.0
    if distill.get("teacher_topk"):
        sampling = {}
    return demo_resolved(validate(DistillConfig, {
        "model": {"name_or_path": student, "device": "cpu"},
        "data": small_sft(tmp_path / "data"),
        "train": {"batch_size": 8, "max_steps": steps, "lr": 3e-4, "warmup_ratio": 0.0},
        "sampling": sampling,
        "distill": {"teacher": "demo:sft", **distill},
        "run": {"output_dir": str(tmp_path / "run"), "log_every": 1, "eval_every": 0, "save_every": 0,
                "sample_every": 0, "threads": 2, "progress": False},
    }, source="test"))


@pytest.mark.slow
def test_on_policy_distillation_lowers_the_students_kl_on_held_out_prompts(tmp_path, student):
    summary = train(distill_config(tmp_path, student, 15, loss="reverse_kl", on_policy_fraction=1.0))
    before, after = summary["initial"]["kl/student_samples_eval"], summary["final"]["kl/student_samples_eval"]
    assert after < 0.5 * before, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "run" / "training_metrics.jsonl").read_text().splitlines()]
    assert all(r["on_policy/frac"] == 1.0 for r in rows if "on_policy/frac" in r)


@pytest.mark.slow
def test_offline_kd_lowers_the_kl_on_held_out_responses_and_topk_of_the_whole_vocabulary_is_the_full_loss(
        tmp_path, student):
    full = train(distill_config(tmp_path / "full", student, 6, loss="forward_kl", temperature=2.0, hard_weight=0.2))
    assert full["final"]["kl/teacher_data_eval"] < 0.7 * full["initial"]["kl/teacher_data_eval"]
    cached = train(distill_config(tmp_path / "topk", student, 6, loss="forward_kl", temperature=2.0, hard_weight=0.2,
                                  teacher_topk=10_000))  # k is capped at the vocabulary: the exact distribution
    assert (tmp_path / "topk" / "run" / "teacher_topk.pt").is_file()
    losses = [[json.loads(line)["loss/train"] for line in (tmp_path / p / "run" / "training_metrics.jsonl").read_text()
               .splitlines() if "loss/train" in json.loads(line)] for p in ("full", "topk")]
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]))
    assert cached["final"]["kl/teacher_data_eval"] == pytest.approx(full["final"]["kl/teacher_data_eval"], rel=1e-4)
    assert "kl/student_samples_eval" not in cached["final"]  # no live teacher to score the student's own answers


def test_a_teacher_with_another_vocabulary_is_refused(tmp_path, student):
    from alignkit.demo.tiny import build_tiny_model, build_tokenizer

    other = tmp_path / "other-teacher"
    tokenizer = build_tokenizer(["a completely different corpus of words"] * 20, vocab_size=300)
    tokenizer.save_pretrained(other)
    build_tiny_model(tokenizer).save_pretrained(other)
    cfg = distill_config(tmp_path, student, 1)
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"teacher": str(other)})})
    with pytest.raises(ConfigError, match="vocabulary differs from the student's"):
        train(cfg)


def test_knobs_that_do_nothing_are_refused():
    with pytest.raises(ValueError, match="distill.jsd_beta"):
        validate(DistillConfig, {"distill": {"jsd_beta": 0.3}}, source="t")
    with pytest.raises(ValueError, match="distill.teacher_topk"):
        validate(DistillConfig, {"distill": {"teacher_topk": 8, "on_policy_fraction": 0.5}}, source="t")
    with pytest.raises(ValueError, match="sampling.temperature"):
        validate(DistillConfig, {"sampling": {"temperature": 0.7}}, source="t")
    with pytest.raises(ValueError, match="sampling.max_new_tokens"):
        validate(DistillConfig, {"sampling": {"max_new_tokens": 8}, "distill": {"teacher_topk": 8}}, source="t")
    with pytest.raises(ValueError, match="hard_weight"):
        validate(DistillConfig, {"distill": {"hard_weight": 0.5, "on_policy_fraction": 1.0}}, source="t")


def test_the_on_policy_prompt_is_the_conversation_before_the_last_trained_turn():
    from alignkit.data.templates import Tokenized

    row = Tokenized(input_ids=(5, 6, 7, 8, 9, 10, 11, 12), loss_mask=(0, 0, 1, 1, 0, 0, 1, 1))
    assert last_turn_prompt(row) == [5, 6, 7, 8, 9, 10]
    assert demo_model("base").is_dir()
