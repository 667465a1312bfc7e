"""The demo world and its tiny model: deterministic, leak-free, judged as documented, loadable as a HF folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignkit.demo.tiny import build_base_model, build_tiny_model, world_chats
from alignkit.demo.world import (
    WorldPaths,
    WorldSizes,
    build_world,
    format_reward,
    gold_reward,
    gold_score,
    held_out_combos,
    is_well_formed,
    parse_answer,
    parse_prompt,
    solve,
)

LABEL_NOISE = 0.1


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> WorldPaths:
    return build_world(tmp_path_factory.mktemp("world"), seed=0, label_noise=LABEL_NOISE)


@pytest.fixture(scope="module")
def base(tmp_path_factory, world) -> Path:
    return build_base_model(tmp_path_factory.mktemp("base"), world, seed=0)


# ---------------------------------------------------------------------------------------------- the world


def test_same_seed_gives_identical_files(world, tmp_path):
    again = build_world(tmp_path / "again", seed=0, label_noise=LABEL_NOISE)
    other = build_world(tmp_path / "other", seed=1, label_noise=LABEL_NOISE)
    files = [f for f in vars(world) if f != "root"]
    for name in files:
        assert getattr(world, name).read_bytes() == getattr(again, name).read_bytes(), name
    assert world.sft.read_bytes() != other.sft.read_bytes()
    assert held_out_combos(0) != held_out_combos(1)


def test_held_out_combos_never_train_and_are_marked_in_eval(world):
    held = held_out_combos(0)
    assert len(held) == 30  # 15% of 2 ops x 10 x 10
    assert {tuple(c) for c in json.loads(world.meta.read_text())["held_out"]} == held
    training = [world.sft, world.prefs, world.ranked, world.kto, world.prompts_train]
    for path in training:
        combos = {parse_prompt(r["prompt"]) for r in read(path)}
        assert not combos & held, path.name
    evals = read(world.prompts_eval)
    assert len(evals) == WorldSizes().eval_prompts
    assert {parse_prompt(r["prompt"]) for r in evals if r["held_out"]} == held
    for r in evals + read(world.prompts_train):
        combo = parse_prompt(r["prompt"])
        assert r["held_out"] == (combo in held) and r["answer"] == solve(combo)


@pytest.mark.parametrize(
    "prompt, completion, score",
    [
        ("What is 3 + 5?", "Sure! 3 + 5 = 8. Happy to help!", 1.5),  # correct, polite
        ("What is 3 + 5?", "3 + 5 = 8.", 1.0),  # correct, neutral
        ("What is 3 + 5?", "Ugh. 3 + 5 = 8. Figure it out yourself.", 0.5),  # correct, rude
        ("What is 3 + 5?", "Sure! 3 + 5 = 9. Happy to help!", 0.5),  # wrong, polite
        ("Compute 7 - 2.", "The answer is 4.", 0.0),  # wrong, neutral
        ("Please tell me 4 plus 4.", "Obviously 9. Stop asking me.", -0.5),  # wrong, rude
        ("Can you work out 2 minus 9?", "Obviously -7. Stop asking me.", 0.5),  # negative answer
        ("What is 3 + 5?", "Of course. 3 + 5 = 8. Stop asking me.", 1.0),  # polite and rude: both apply
        ("What is 3 + 5?", "3 + 5 = 8. Enough said.", 1.0),  # "ugh" inside a word is not rude
        ("What is 3 + 5?", "Eight, I think.", -1.0),  # unparseable
        ("What is 3 + 5?", "Sure! Happy to help!", -1.0),  # unparseable: tone does not lift it
        ("<|user|>\nWhat is 3 + 5?<|end|>\n<|assistant|>\n", "3 + 5 = 8.", 1.0),  # rendered prompt
    ],
)
def test_gold_score_hand_examples(prompt, completion, score):
    assert gold_score(prompt, completion) == score


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("3 + 5 = 8.", 8),
        ("3 - 5 = -2.", -2),
        ("The answer is 3 + 5 = 8", 8),  # the expression after "answer is" is skipped
        ("x = 18 + 1 = 19", 19),  # no backtracking into "1" of "18"
        ("ANSWER IS: 12", 12),
        ("Obviously, 4.", 4),
        ("= 8.5", None),
        ("8", None),
        ("", None),
    ],
)
def test_parse_answer_rule(completion, answer):
    assert parse_answer(completion) == answer
    assert is_well_formed(completion) == (answer is not None)


def test_reward_function_forms():
    prompts = ["What is 3 + 5?", "What is 3 + 5?"]
    completions = ["Sure! 3 + 5 = 8. Happy to help!", "no idea"]
    assert gold_reward(prompts, completions, answer=[8, 8]) == [1.5, -1.0]
    assert format_reward(prompts, completions, answer=[8, 8]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="not a demo-world prompt"):
        gold_score("Tell me a joke.", "= 3")


def test_sft_is_mixed_quality_and_short(world):
    records = read(world.sft)
    scores = [gold_score(r["prompt"], r["response"]) for r in records]
    assert all(is_well_formed(r["response"]) for r in records)
    assert 0.58 < sum(scores) / len(scores) < 0.72
    assert {1.5, 1.0, 0.5, 0.0, -0.5} == set(scores)
    texts = [r["response"] for r in records] + [x for r in read(world.ranked) for x in r["responses"]]
    assert max(map(len, texts)) < 60


@pytest.mark.parametrize("pairs, gold", [("prefs", "prefs_gold"), ("prefs_eval", "prefs_eval_gold")])
def test_preference_gold_and_label_noise(world, pairs, gold):
    records, truth = read(getattr(world, pairs)), read(getattr(world, gold))
    assert len(records) == len(truth)
    for r, t in zip(records, truth):
        assert r["chosen"] != r["rejected"]
        assert t["chosen_gold"] == gold_score(r["prompt"], r["chosen"])
        assert t["rejected_gold"] == gold_score(r["prompt"], r["rejected"])
        # before noise the chosen one is strictly better (ties are skipped); a flip reverses exactly that
        assert (t["chosen_gold"] > t["rejected_gold"]) == t["gold_chosen_is_first"]
    flipped = sum(not t["gold_chosen_is_first"] for t in truth) / len(truth)
    assert abs(flipped - LABEL_NOISE) < 0.01


def test_kto_label_noise_and_ranked_order(world):
    records = read(world.kto)
    wrong = sum(r["label"] != (gold_score(r["prompt"], r["completion"]) >= 1.5) for r in records) / len(records)
    assert abs(wrong - LABEL_NOISE) < 0.01
    assert 0.3 < sum(r["label"] for r in records) / len(records) < 0.6
    for r in read(world.ranked):
        scores = [gold_score(r["prompt"], x) for x in r["responses"]]
        assert len(scores) == 4 and scores == sorted(set(scores), reverse=True)


def test_no_label_noise_and_validation(tmp_path):
    small = WorldSizes(sft=10, prefs=200, prefs_eval=10, ranked=10, kto=200, rl_prompts=10, eval_prompts=10)
    clean = build_world(tmp_path, seed=3, sizes=small, label_noise=0.0)
    assert all(t["gold_chosen_is_first"] for t in read(clean.prefs_gold))
    assert all(r["label"] == (gold_score(r["prompt"], r["completion"]) >= 1.5) for r in read(clean.kto))
    assert abs(sum(r["label"] for r in read(clean.kto)) / 200 - 0.5) < 0.01
    assert sum(r["held_out"] for r in read(clean.prompts_eval)) == 10  # fewer eval slots than held-out combos
    with pytest.raises(ValueError, match="WorldSizes.sft"):
        WorldSizes(sft=0)
    with pytest.raises(ValueError, match="label_noise"):
        build_world(tmp_path, label_noise=0.5)


# ---------------------------------------------------------------------------------------------- tiny model


def test_tokenizer_round_trips_world_text(world, base):
    tok = AutoTokenizer.from_pretrained(base)
    assert 256 < len(tok) <= 400
    assert (tok.pad_token, tok.eos_token, tok.padding_side) == ("<|pad|>", "<|end|>", "right")
    plain = [r["prompt"] for r in read(world.prompts_eval)] + [r["response"] for r in read(world.sft)[:500]]
    plain += [x for r in read(world.ranked)[:100] for x in r["responses"]] + ["3 - 9 = -6. Ünïcode ✓\t ok"]
    for text in plain:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids, skip_special_tokens=False) == text
        assert tok.decode(ids, skip_special_tokens=True) == text
    sft = read(world.sft)[0]
    messages = [{"role": "user", "content": sft["prompt"]}, {"role": "assistant", "content": sft["response"]}]
    chat = tok.apply_chat_template(messages, tokenize=False)
    assert chat == next(world_chats(world))  # the tokenizer was trained on exactly the template's rendering
    assert tok.decode(tok.encode(chat, add_special_tokens=False)) == chat
    digits = tok.convert_ids_to_tokens(tok.encode("12 + 345", add_special_tokens=False))
    assert [t for t in digits if t.strip("Ġ").isdigit()] == ["1", "2", "3", "4", "5"]  # one token per digit


def test_base_model_reloads_identically(base):
    tok = AutoTokenizer.from_pretrained(base)
    loaded = AutoModelForCausalLM.from_pretrained(base).eval()
    fresh = build_tiny_model(tok, seed=0).eval()
    n_params = sum(p.numel() for p in loaded.parameters())
    assert n_params == sum(p.numel() for p in fresh.parameters())
    assert 500_000 < n_params < 1_500_000
    cfg = loaded.config
    assert (cfg.pad_token_id, cfg.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert loaded.generation_config.eos_token_id == tok.eos_token_id
    ids = torch.tensor([tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is 3 + 5?"}],
                                                           tokenize=False, add_generation_prompt=True))])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, fresh(ids).logits)
        assert not torch.equal(build_tiny_model(tok, seed=1).eval()(ids).logits, fresh(ids).logits)
