"""Reward model: where the score is read, save/load, normalisation stats, eval figures, and that it learns."""

import json
import math

import pytest
import torch
from torch.testing import assert_close

from alignkit.config import ModelConfig
from alignkit.data.collate import pad_batch, pad_rankings
from alignkit.data.loading import load_examples
from alignkit.data.prepare import tokenize_rankings
from alignkit.demo.assets import demo_data
from alignkit.eval import pair_margins, preference_metrics
from alignkit.models import load_reward_model, load_reward_stats, save_model, save_reward_stats, token_values
from alignkit.ops import gather_last, last_token_index


@pytest.fixture(scope="module")
def rm(demo_sft, demo_tokenizer):
    torch.manual_seed(0)
    return load_reward_model(ModelConfig(name_or_path=str(demo_sft), device="cpu"), demo_tokenizer)


@pytest.fixture(scope="module")
def rows(demo_tokenizer):
    from alignkit.config import RMConfig

    examples = load_examples(str(demo_data("ranked")), "ranked")[:4]
    return tokenize_rankings(examples, demo_tokenizer, RMConfig().data, "t")[0]


def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]


def test_reward_is_the_same_under_left_and_right_padding(rm, rows, demo_tokenizer):
    seqs = [r.responses[0] for r in rows]
    pad = demo_tokenizer.pad_token_id
    right = pad_batch(seqs, pad)
    width = right.input_ids.shape[1]
    left_ids = torch.full_like(right.input_ids, pad)
    left_mask = torch.zeros_like(right.attention_mask)
    for i, s in enumerate(seqs):
        left_ids[i, width - len(s.input_ids):] = torch.tensor(s.input_ids)
        left_mask[i, width - len(s.input_ids):] = 1
    left_pos = (left_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = gather_last(token_values(rm, right.input_ids, right.attention_mask, right.position_ids), right.attention_mask)
        b = gather_last(token_values(rm, left_ids, left_mask, left_pos), left_mask)
        alone = [gather_last(token_values(rm, torch.tensor([s.input_ids]), torch.ones(1, len(s.input_ids), dtype=torch.long)),
                             torch.ones(1, len(s.input_ids), dtype=torch.long)) for s in seqs]
    assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert_close(a, torch.cat(alone), rtol=1e-4, atol=1e-5)
    assert len({len(s.input_ids) for s in seqs}) > 1  # the batch really is padded


def test_each_response_is_scored_once_and_scattered_best_first(rows, demo_tokenizer):
    batch = pad_rankings(rows, range(len(rows)), demo_tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == sum(len(r.responses) for r in rows)
    scores = torch.arange(batch.input_ids.shape[0], dtype=torch.float)
    matrix, valid = batch.scatter(scores)
    assert matrix.shape == (len(rows), 4) and bool(valid.all())
    assert matrix[1].tolist() == [4.0, 5.0, 6.0, 7.0]


def test_save_load_round_trip_gives_identical_scores_and_stats(rm, demo_tokenizer, tmp_path):
    from alignkit.data.formats import Message
    from alignkit.data.templates import tokenize_conversation
    from alignkit.rewards import RewardModelScorer

    prompts = [(Message("user", "What is 2 + 3?"),)] * 2
    responses = [(Message("assistant", "Sure! 2 + 3 = 5. Happy to help!"),), (Message("assistant", "2 + 3 = 4."),)]
    save_model(rm, demo_tokenizer, tmp_path / "rm")
    save_reward_stats(tmp_path / "rm", mean=0.25, std=2.0, count=10)
    assert load_reward_stats(tmp_path / "rm") == {"mean": 0.25, "std": 2.0, "count": 10}
    scorer = RewardModelScorer(ModelConfig(name_or_path=str(tmp_path / "rm"), device="cpu"))
    rows = [pad_batch([tokenize_conversation(demo_tokenizer, p + r, first_trained=1)], demo_tokenizer.pad_token_id)
            for p, r in zip(prompts, responses)]
    with torch.no_grad():
        direct = torch.cat([gather_last(token_values(rm, b.input_ids, b.attention_mask), b.attention_mask) for b in rows])
    reloaded = scorer.score(prompts, responses)
    assert_close(reloaded, direct)
    assert_close(scorer.normalise(reloaded), (direct - 0.25) / 2.0)


def test_preference_metrics_hand_computed():
    margins = torch.tensor([1.0, -0.5, 2.5, 0.2])
    out = preference_metrics(margins, bins=2)
    assert out["accuracy"] == 0.75 and out["margin_mean"] == pytest.approx(0.8)
    assert out["accuracy_by_margin[0-0.5)"] == 1.0  # only 0.2 falls there
    assert out["accuracy_by_margin[0.5-1)"] == 0.0  # -0.5
    # confidences sigmoid(|m|): 0.7311, 0.6225, 0.9241, 0.5498; bins [0.5, 0.75) and [0.75, 1]
    low = [0.7310586, 0.6224593, 0.5498340]  # correct: yes, no, yes
    expected = 3 / 4 * abs(2 / 3 - sum(low) / 3) + 1 / 4 * abs(1.0 - 0.9241418)
    assert out["calibration_error"] == pytest.approx(expected, rel=1e-6)


def test_preference_metrics_count_a_zero_margin_half():
    out = preference_metrics(torch.tensor([1.0, 0.0, -1.0, 0.0]), bins=2)
    # correct: 1, 0.5, 0, 0.5
    assert out["accuracy"] == 0.5 and out["margin_mean"] == 0.0
    assert out["accuracy_by_margin[0-0.5)"] == 0.5  # the two ties
    assert out["accuracy_by_margin[1-2)"] == 0.5  # +1 right, -1 wrong
    # confidences sigmoid(|m|) = 0.7311, 0.5, 0.7311, 0.5, all in bin [0.5, 0.75): |0.5 - their mean|
    expected = abs(0.5 - (2 / (1 + math.exp(-1)) + 2 * 0.5) / 4)
    assert out["calibration_error"] == pytest.approx(expected, rel=1e-6)
    # all ties: chance accuracy, perfectly calibrated (confidence 0.5, accuracy 0.5)
    flat = preference_metrics(torch.zeros(6))
    assert flat["accuracy"] == 0.5 and flat["calibration_error"] == 0.0


def test_pair_margins_over_valid_pairs_only():
    rewards = torch.tensor([[3.0, 1.0, 0.0], [2.0, 5.0, 9.0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert pair_margins(rewards, valid).tolist() == [2.0, 3.0, 1.0, -3.0]


def test_eval_mode_flags_an_untrained_reward_model(demo_sft, tmp_path, capsys):
    from alignkit.cli import main

    data = tmp_path / "pairs.jsonl"
    records = load_examples(str(demo_data("prefs_eval")), "preference")[:40]
    data.write_text("".join(json.dumps({"prompt": r.prompt[-1].content, "chosen": r.chosen[-1].content,
                                        "rejected": r.rejected[-1].content}) + "\n" for r in records))
    torch.manual_seed(0)  # the untrained head is drawn from the global generator
    assert main(["eval", f"model.name_or_path={demo_sft}", f"data.train={data}", f"run.output_dir={tmp_path / 'e'}"]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["records"] == 40 and math.isfinite(summary["calibration_error"])
    scored = [json.loads(line)["rewards"] for line in (tmp_path / "e" / "scores.jsonl").read_text().splitlines()]
    assert len(scored) == 40 and all(len(rewards) == 2 for rewards in scored)
    # the summary's accuracy is that of the per-record scores: chosen first, a tie counting half
    by_hand = sum(1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0 for chosen, rejected in scored)
    assert summary["accuracy"] == pytest.approx(by_hand / 40)
    # a random head ranks at about chance (0.5 at seed 0; 0.35 to 0.63 over seeds 0-7): under 0.7, so flagged
    assert summary["accuracy"] < 0.7
    assert summary["verdict"].startswith("NOT ready") and f"{summary['accuracy']:.3f} < 0.7" in summary["verdict"]


@pytest.mark.slow
def test_reward_model_beats_70_percent_against_gold(tmp_path):
    from alignkit.demo.run import DEMO_STAGES, rm_gold_report, stage_config

    summary = DEMO_STAGES["rm"].train(stage_config("rm", tmp_path / "rm", fast=True))
    report = rm_gold_report(str(tmp_path / "rm" / "final"))
    assert report["gold_accuracy"] > 0.7, report
    assert report["pearson"] > 0.5, report
    stats = load_reward_stats(tmp_path / "rm" / "final")
    assert stats["std"] > 0 and stats["count"] == 1000  # 500 eval pairs, two responses each
    assert summary["verdict"] == "ready for PPO"


def test_rank_row_from_pairs_keeps_the_margin(demo_tokenizer):
    from alignkit.config import RMConfig
    from alignkit.data.formats import Message, PreferenceExample

    example = PreferenceExample((Message("user", "q"),), (Message("assistant", "a"),), (Message("assistant", "b"),),
                                "x", margin=2.0)
    (row,), _ = tokenize_rankings([example], demo_tokenizer, RMConfig().data, "t")
    assert row.margin == 2.0 and len(row.responses) == 2
    # best first: the chosen response, then the rejected one, each trained on its reply only
    trained = [demo_tokenizer.decode([i for i, m in zip(r.input_ids, r.loss_mask) if m]) for r in row.responses]
    assert trained == ["a<|end|>\n", "b<|end|>\n"]


def test_lora_reward_model_trains_adapter_and_head(demo_sft, demo_tokenizer):
    cfg = ModelConfig(name_or_path=str(demo_sft), device="cpu", adapter="lora", lora_r=4)
    model = load_reward_model(cfg, demo_tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("score" in n for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)
    ids = torch.tensor([demo_tokenizer("<|user|>\nhi<|end|>\n", add_special_tokens=False)["input_ids"]])
    reward = gather_last(token_values(model, ids, torch.ones_like(ids)), torch.ones_like(ids))
    reward.sum().backward()
    head = [p for n, p in model.named_parameters() if "score" in n and p.requires_grad]
    assert head and head[0].grad is not None and head[0].grad.abs().sum() > 0


def test_lora_reward_model_folder_loads_back_with_identical_scores(demo_sft, demo_tokenizer, tmp_path):
    from alignkit.data.formats import Message
    from alignkit.rewards import RewardModelScorer

    cfg = ModelConfig(name_or_path=str(demo_sft), device="cpu", adapter="lora", lora_r=4)
    model = load_reward_model(cfg, demo_tokenizer)
    with torch.no_grad():  # a "trained" adapter and head
        for name, p in model.named_parameters():
            if "lora_B" in name or ("score" in name and p.requires_grad):
                p.normal_(0, 0.1)
    save_model(model, demo_tokenizer, tmp_path / "rm")
    assert (tmp_path / "rm" / "adapter_config.json").is_file()
    prompts = [(Message("user", "What is 2 + 3?"),)] * 2
    responses = [(Message("assistant", "2 + 3 = 5."),), (Message("assistant", "Ugh. 2 + 3 = 4."),)]
    rows = pad_batch([tokenize_rankings_row(demo_tokenizer, p + r) for p, r in zip(prompts, responses)],
                     demo_tokenizer.pad_token_id)
    with torch.no_grad():
        expected = gather_last(token_values(model, rows.input_ids, rows.attention_mask, rows.position_ids),
                               rows.attention_mask)
    assert_close(RewardModelScorer(ModelConfig(name_or_path=str(tmp_path / "rm"), device="cpu")).score(prompts, responses), expected,
                 rtol=1e-4, atol=1e-5)


def tokenize_rankings_row(tokenizer, conversation):
    from alignkit.data.templates import tokenize_conversation

    return tokenize_conversation(tokenizer, conversation, first_trained=1)
