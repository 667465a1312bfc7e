"""Process reward models: the step format, the per-step loss and process advantages by hand, the recipe learning the
demo's step world, first-error detection, the PRM as a reward source placing step scores on tokens, best-of-N."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from alignkit.advantages import process_advantages
from alignkit.data.formats import DataError
from alignkit.data.loading import load_examples
from alignkit.eval.process import best_of_n, first_error_metrics
from alignkit.losses import aggregate, step_bce

# ------------------------------------------------------------------------------------------------ the format


@pytest.mark.parametrize("record, message", [
    ({"prompt": "q", "steps": ["a", "b"], "labels": [True]}, 'field "labels" has 1 labels for 2 steps'),
    ({"prompt": "q", "steps": ["a", " "], "labels": [1, 0]}, 'field "steps[1]" must be a non-empty string, got an empty string'),
    ({"prompt": "q", "steps": ["a", "b"], "labels": [True, "maybe"]}, 'field "labels[1]" is "maybe", expected true/false'),
    ({"prompt": "q", "steps": ["a", "b"], "labels": [1, 2]}, 'field "labels[1]" is 2, expected'),
    ({"prompt": "q", "steps": [], "labels": []}, 'field "steps" must be a non-empty list of step strings, got an empty list'),
    ({"prompt": "q", "steps": "a", "labels": [1]}, 'field "steps" must be a non-empty list of step strings, got str'),
    ({"prompt": "q", "steps": ["a"], "labels": True}, 'field "labels" must be a list of one label per step, got bool'),
])
def test_a_bad_steps_record_is_one_line_naming_file_line_and_field(tmp_path, record, message):
    path = tmp_path / "steps.jsonl"
    good = {"prompt": "What is 1 + 2 * 3?", "steps": ["2 * 3 = 6", "1 + 6 = 7"], "labels": [True, True]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as err:
        load_examples(str(path), "steps")  # format auto: detected from the first record's keys
    assert str(err.value).startswith(f"{path} line 2: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_steps_records_convert_and_labels_take_the_kto_spellings(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text(json.dumps({"prompt": "q", "steps": ["a", "b", "c"], "labels": [1, "false", True]}) + "\n")
    (example,) = load_examples(str(path), "steps", "steps")
    assert example.steps == ("a", "b", "c") and example.labels == (True, False, True)
    assert example.prompt[-1].role == "user" and example.where == f"{path} line 1"


def test_a_step_holding_the_separator_is_refused_naming_it(tmp_path, demo_tokenizer):
    from alignkit.config import DataConfig
    from alignkit.data.steps import tokenize_steps

    path = tmp_path / "steps.jsonl"
    path.write_text(json.dumps({"prompt": "q", "steps": ["a\nb", "c"], "labels": [1, 0]}) + "\n")
    examples = load_examples(str(path), "steps")
    with pytest.raises(DataError, match=r'line 1: field "steps\[0\]" contains the step separator'):
        tokenize_steps(examples, demo_tokenizer, DataConfig(train=str(path)), "train", separator="\n")


# ---------------------------------------------------------------------------------------- the math, by hand


def test_step_bce_by_hand():
    logits, labels = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 0.0])
    loss, stats = step_bce(logits, labels)
    # -log sigmoid(0) = log 2; label 0 at z = 2: log(1 + e^2); label 0 at z = -1: log(1 + e^-1)
    torch.testing.assert_close(loss, torch.tensor([0.6931472, 2.1269280, 0.3132617]))
    torch.testing.assert_close(stats["accuracy"], torch.tensor([1.0, 0.0, 1.0]))
    # the step mean, split over two micro-batches with the step's count as the denominator
    whole = aggregate(loss, torch.ones(3), 3.0)
    split = aggregate(loss[:1], torch.ones(1), 3.0) + aggregate(loss[1:], torch.ones(2), 3.0)
    torch.testing.assert_close(whole, torch.tensor(1.0444456))
    torch.testing.assert_close(split, whole)


def test_process_advantages_by_hand():
    # one group of G = 2 responses over T = 4 tokens: row 0's steps end at t = 1 (0.2) and t = 3 (0.8), row 1's one
    # step at t = 2 (0.2). Group steps {0.2, 0.8, 0.2}: mean 0.4, unbiased std sqrt((0.04 + 0.16 + 0.04) / 2)
    # = 0.34641; normalised -0.57735, 1.1547, -0.57735. A token's advantage sums the steps ending at or after it.
    rewards = torch.tensor([[0.0, 0.2, 0.0, 0.8], [0.0, 0.0, 0.2, 0.0]])
    ends = torch.tensor([[False, True, False, True], [False, False, True, False]])
    out = process_advantages(rewards, ends, group_size=2, eps=0.0)
    a, b = 1.1547005, -0.5773503
    torch.testing.assert_close(out, torch.tensor([[a + b, a + b, a, a], [b, b, b, 0.0]]))
    # groups are normalised apart: a second group shifted by +10 gets the same advantages
    both = process_advantages(torch.cat([rewards, (rewards + 10) * ends]), torch.cat([ends, ends]), 2, eps=0.0)
    torch.testing.assert_close(both[2:], out)
    # a group with a single step: r - mean = 0, advantage 0 (no NaN from the missing std)
    single = process_advantages(torch.tensor([[0.0, 0.7], [0.0, 0.0]]), torch.tensor([[False, True], [False, False]]), 2)
    assert torch.equal(single, torch.zeros(2, 2))


def test_first_error_detection_on_hand_made_predictions():
    #            solution 0        1           2            3           4
    labels = [[1, 0, 0], [1, 1], [0, 0], [1, 1], [1, 0]]
    predicted = [[1, 0, 1], [1, 1], [1, 0], [0, 1], [1, 0]]
    # first error labelled / predicted: 1 / 1 hit; none / none hit; 0 / 1 miss; none / 0 miss (flagged); 1 / 1 hit
    solution = torch.tensor([i for i, steps in enumerate(labels) for _ in steps])
    out = first_error_metrics(torch.tensor(sum(predicted, [])).bool(), torch.tensor(sum(labels, [])).bool(), solution)
    assert out == pytest.approx({"first_error/flawed": 2 / 3, "first_error/correct": 1 / 2, "first_error/accuracy": 3 / 5})


def test_best_of_n_picks_the_highest_reranked_answer_first_on_a_tie():
    rerank = [0.1, 0.9, 0.5, 0.7, 0.7, 0.2]  # prompt 0: sample 1 is best; prompt 1: samples 0 and 1 tie
    judge = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert best_of_n(rerank, judge, 3) == ([1, 0], [1.0, 1.0])
    with pytest.raises(ValueError, match="groups of 4"):
        best_of_n(rerank, judge, 4)


# ---------------------------------------------------------------------------------- the recipe on the demo world


@pytest.fixture(scope="module")
def prm_run(demo_base, tmp_path_factory):
    """A short PRM run from the untrained tiny model on a slice of the step world (a few seconds)."""
    from alignkit.config import PRMConfig, validate
    from alignkit.demo.assets import demo_data
    from alignkit.pipeline import resolve
    from alignkit.recipes.prm import train

    folder = tmp_path_factory.mktemp("prm")
    for name, n in (("prm_steps", 1024), ("prm_eval", 96), ("prm_prompts", 8)):
        (folder / f"{name}.jsonl").write_text("\n".join(demo_data(name).read_text().splitlines()[:n]) + "\n")
    cfg = resolve(validate(PRMConfig, {
        "model": {"name_or_path": str(demo_base), "device": "cpu"},
        "data": {"train": str(folder / "prm_steps.jsonl"), "eval": str(folder / "prm_eval.jsonl"), "max_length": 64,
                 "duplicates": "keep"},
        "train": {"max_steps": 60, "batch_size": 16, "lr": 2e-3, "schedule": "constant", "warmup_ratio": 0.0},
        "run": {"output_dir": str(folder / "run"), "threads": 2, "progress": False}}))
    return train(cfg), folder / "run"


def test_the_prm_learns_the_step_world_above_the_majority_label(prm_run):
    summary, run_dir = prm_run
    first = json.loads((run_dir / "training_metrics.jsonl").read_text().splitlines()[0])
    final = summary["final"]
    assert final["accuracy/eval"] > final["accuracy/majority_eval"] + 0.08, final
    assert final["loss/eval"] < first["loss/eval"] - 0.1, (first["loss/eval"], final["loss/eval"])
    assert final["score/correct_eval"] > final["score/wrong_eval"] + 0.1  # correct steps score higher
    for key in ("first_error/flawed_eval", "first_error/correct_eval", "first_error/accuracy_eval"):
        assert 0.0 <= final[key] <= 1.0
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["final"]["first_error/accuracy_eval"] == final["first_error/accuracy_eval"]
    assert json.loads((run_dir / "final" / "prm.json").read_text()) == {"separator": "\n"}


def test_padded_and_packed_step_batches_read_the_same_step_ends(prm_run, demo_tokenizer):
    from alignkit.config import DataConfig, ModelConfig
    from alignkit.data.steps import pad_steps, tokenize_steps
    from alignkit.demo.assets import demo_data
    from alignkit.models import ValueModel, load_reward_model
    from alignkit.recipes.prm import step_logits

    examples = load_examples(str(demo_data("prm_eval")), "steps")[:5]
    rows, _ = tokenize_steps(examples, demo_tokenizer, DataConfig(train="x", max_length=64), "eval")
    model = ValueModel(load_reward_model(ModelConfig(name_or_path=str(prm_run[1] / "final"), device="cpu"),
                                         demo_tokenizer, trainable=False))
    padded, packed = pad_steps(rows, range(5), 0), pad_steps(rows, range(5), 0, pack_length=128)
    assert packed.input_ids.shape[0] < 5 and torch.equal(padded.labels, packed.labels)
    with torch.no_grad():
        torch.testing.assert_close(step_logits(model, packed), step_logits(model, padded), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------ the PRM as a reward source


def test_split_steps_and_the_token_that_holds_each_step_end(demo_tokenizer):
    from alignkit.data.steps import split_steps, token_at

    text = "4 * 5 = 20\n\n3 + 20 = 23\n"
    assert split_steps(text, "\n") == [("4 * 5 = 20", 11), ("3 + 20 = 23", 24)]  # the blank piece is no step
    ids = demo_tokenizer(text, add_special_tokens=False)["input_ids"]
    index = token_at(demo_tokenizer, ids, 11)
    assert demo_tokenizer.decode(ids[: index + 1]).startswith("4 * 5 = 20\n")
    assert not demo_tokenizer.decode(ids[:index]).startswith("4 * 5 = 20\n")  # the first token to hold the end


def test_the_prm_source_scores_each_step_at_its_separator_and_ppo_places_it_on_its_end_token(prm_run, demo_tokenizer):
    from alignkit.config import ModelConfig, RewardSource
    from alignkit.data.formats import Message
    from alignkit.data.templates import tokenize_prompt
    from alignkit.models import load_reward_model, token_values
    from alignkit.rewards import ProcessRewardScorer, RewardSet
    from alignkit.rollout.core import place_steps
    from alignkit.sampling import Generation

    folder = str(prm_run[1] / "final")
    prompt = (Message("user", "What is 3 + 4 * 5?"),)
    text = "4 * 5 = 20\n3 + 20 = 23"
    # by hand: the head on [prompt, generation prompt, "4 * 5 = 20\n", "3 + 20 = 23\n"] at each piece's last token
    head = [tokenize_prompt(demo_tokenizer, prompt)]
    for piece in ("4 * 5 = 20\n", "3 + 20 = 23\n"):
        head.append(demo_tokenizer(piece, add_special_tokens=False)["input_ids"])
    ids = [t for part in head for t in part]
    ends = [len(head[0]) + len(head[1]) - 1, len(ids) - 1]
    model = load_reward_model(ModelConfig(name_or_path=folder, device="cpu"), demo_tokenizer, trainable=False)
    with torch.no_grad():
        values = token_values(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
    expected = values[ends].sigmoid()

    (scored,) = ProcessRewardScorer(ModelConfig(name_or_path=folder, device="cpu")).score([prompt], [text])
    assert scored.ends == (11, len(text))
    torch.testing.assert_close(torch.tensor(scored.scores), expected, atol=1e-5, rtol=1e-4)

    # the reward set: the source's score is its step aggregate, the step scores come along with their weight
    for how, value in (("min", min(scored.scores)), ("product", math.prod(scored.scores)), ("last", scored.scores[-1])):
        source = RewardSource(process_reward_model=folder, step_aggregate=how, weight=2.0)
        result = RewardSet([source]).score([prompt], [text], {})
        assert result.parts["prm"].item() == pytest.approx(value, rel=1e-5)
        assert result.total.item() == pytest.approx(2 * value, rel=1e-5) and result.steps["prm"][0] == 2.0

    # PPO's placement: step 1 on the policy's token that holds its "\n", the last step on the last token (EOS)
    response = demo_tokenizer(text, add_special_tokens=False)["input_ids"] + [demo_tokenizer.eos_token_id]
    gen = Generation((), tuple(response), text, True)
    (placed,) = place_steps(demo_tokenizer, [gen], {"prm": (2.0, [scored])})
    first = placed[0][0]
    assert demo_tokenizer.decode(response[: first + 1]).startswith("4 * 5 = 20\n")
    assert not demo_tokenizer.decode(response[:first]).startswith("4 * 5 = 20\n")
    assert placed[1][0] == len(response) - 1
    assert [v for _, v in placed] == pytest.approx([2 * s for s in scored.scores])


class FixedAnswers:
    """An engine stand-in: answers the prompts with ``texts`` (their tokens, then EOS), in order."""

    name = "fixed"

    def __init__(self, tokenizer, texts: list[str]) -> None:
        self.tokenizer, self.texts = tokenizer, texts

    def generate(self, model, prompts, params, seeds=None):
        from alignkit.sampling import Generation

        out = []
        for prompt, text in zip(prompts, self.texts):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            out.append(Generation(tuple(prompt), tuple(ids), text, True))
        return out


def test_a_rollout_carries_the_step_rewards_on_their_end_tokens_and_the_outcome_without_them(prm_run, demo_tokenizer):
    from types import SimpleNamespace

    from alignkit.config import ModelConfig, RewardSource
    from alignkit.data.templates import tokenize_prompt
    from alignkit.rewards import ProcessRewardScorer, RewardSet
    from alignkit.rollout.core import collect, place_steps
    from alignkit.sampling import SamplingParams

    folder = str(prm_run[1] / "final")
    examples = load_examples(str(Path(prm_run[1]).parent / "prm_prompts.jsonl"), "prompt")[:2]
    texts = ["4 * 5 = 20\n3 + 20 = 23", "23"]
    engine = FixedAnswers(demo_tokenizer, texts)
    rewards = RewardSet([RewardSource(process_reward_model=folder, weight=2.0),
                         RewardSource(fn="test_prm:stub_judge", name="judge")])
    acc = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))
    r = collect(acc, engine, None, examples, [tokenize_prompt(demo_tokenizer, e.prompt) for e in examples], [0, 1],
                SamplingParams(max_new_tokens=64), rewards)
    scored = ProcessRewardScorer(ModelConfig(name_or_path=folder, device="cpu")).score(
        [e.prompt for e in examples], texts)
    gens = engine.generate(None, [[], []], None)
    placed = place_steps(demo_tokenizer, gens, {"prm": (2.0, scored)})
    for row in range(2):
        assert r.step_ends[row].nonzero().flatten().tolist() == [index for index, _ in placed[row]]
        torch.testing.assert_close(r.step_rewards[row][r.step_ends[row]], 2 * torch.tensor(scored[row].scores))
        assert r.step_rewards[row][~r.step_ends[row]].abs().sum() == 0
    assert r.step_ends.sum(-1).tolist() == [2, 1] and bool(r.step_ends[1, len(gens[1].response_ids) - 1])
    torch.testing.assert_close(r.process_part, 2 * r.rewards["prm"])
    torch.testing.assert_close(r.outcome_score, r.rewards["judge"])  # the judge's score alone: no penalty here


def test_grpo_process_advantage_refuses_without_a_prm_and_prm_sources_refuse_multi_turn():
    from alignkit.config import ConfigError, GRPOConfig, PPOConfig, load_config

    with pytest.raises(ConfigError, match="grpo.advantage = process needs a process reward model"):
        load_config(GRPOConfig, None, ["grpo.advantage=process"])
    with pytest.raises(ConfigError, match="cannot score multi-turn episodes"):
        load_config(PPOConfig, None, ['rewards=[{process_reward_model: "x"}]',
                                      'environment={tools: ["alignkit.demo.tools_world:calculator"]}'])
    with pytest.raises(ConfigError, match="step_aggregate does not apply to a reward_model source"):
        load_config(GRPOConfig, None, ['rewards=[{reward_model: "x", step_aggregate: product}]'])
    with pytest.raises(ConfigError, match="grpo.ratio = sequence weighs a whole sequence by one advantage"):
        load_config(GRPOConfig, None, ["grpo.advantage=process", "grpo.ratio=sequence",
                                       'rewards=[{process_reward_model: "x"}]'])
    cfg = load_config(GRPOConfig, None, ["grpo.advantage=process", 'rewards=[{process_reward_model: "x"}]'])
    assert cfg.rewards[0].label == "prm"


def test_a_folder_without_prm_json_is_not_a_process_reward_model(demo_base):
    from alignkit.config import ModelConfig
    from alignkit.models import ModelError
    from alignkit.rewards import ProcessRewardScorer

    with pytest.raises(ModelError, match="not a process reward model \\(no prm.json"):
        ProcessRewardScorer(ModelConfig(name_or_path=str(demo_base), device="cpu"))


def test_grpo_with_process_advantages_runs_a_step(prm_run, demo_base, tmp_path):
    from alignkit.config import GRPOConfig, validate
    from alignkit.pipeline import resolve
    from alignkit.recipes.grpo import train

    prompts = prm_run[1].parent / "prm_prompts.jsonl"
    cfg = resolve(validate(GRPOConfig, {
        "model": {"name_or_path": str(demo_base), "device": "cpu"},
        "data": {"train": str(prompts), "eval": str(prompts)},
        "train": {"max_steps": 1, "batch_size": 2, "lr": 1e-4},
        "sampling": {"max_new_tokens": 12},
        "grpo": {"group_size": 2, "advantage": "process"},
        "rewards": [{"process_reward_model": str(prm_run[1] / "final")}],
        "run": {"output_dir": str(tmp_path / "run"), "threads": 2, "progress": False}}))
    summary = train(cfg)
    assert 0.0 <= summary["final"]["reward_eval/prm"] <= 1.0


def stub_rerank(prompts, completions, **_):
    """A stand-in reranker: longer answers score higher."""
    return [float(len(c)) for c in completions]


def stub_judge(prompts, completions, **_):
    """A stand-in judge: the count of digits."""
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


def test_eval_best_of_n_keeps_the_answer_the_reranker_scores_highest(demo_base, tmp_path):
    from alignkit.config import EvalConfig, load_config
    from alignkit.eval import run_eval
    from alignkit.pipeline import resolve

    cfg = resolve(load_config(EvalConfig, None, [
        f"run.output_dir={tmp_path / 'eval'}", "run.threads=2", "eval.mode=policy", f"model.name_or_path={demo_base}",
        "data.train=demo:prm_prompts_eval", "eval.max_prompts=3", "eval.max_new_tokens=6", "eval.temperature=1.0",
        "eval.samples=3", "eval.bootstrap=100", "eval.judge=judge", "eval.rerank_by=rerank",
        "rewards=[{fn: 'test_prm:stub_judge', name: judge}, {fn: 'test_prm:stub_rerank', name: rerank}]"]))
    summary = run_eval(cfg)
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "samples.jsonl").read_text().splitlines()]
    picked = []
    for i in range(0, len(rows), 3):
        group = rows[i : i + 3]
        best = max(range(3), key=lambda k: (group[k]["rerank"], -k))
        assert [r["picked"] for r in group] == [k == best for k in range(3)]
        picked.append(group[best]["judge"])
    figures = summary["models"]["model"]["best_of_3"]
    assert figures["mean"] == pytest.approx(sum(picked) / len(picked))
    assert figures["single_sample"] == pytest.approx(sum(r["judge"] for r in rows) / len(rows))
