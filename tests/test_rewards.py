"""Reward sources: loading functions by reference, validating what they return, built-ins, weighted sums."""

import pytest
import torch

from alignkit.config import ConfigError, GRPOConfig, RewardSource, load_config
from alignkit.data.formats import Message
from alignkit.rewards import BUILTINS, RewardSet, call_reward, load_function


def test_load_function_from_module_and_file(tmp_path):
    assert load_function("alignkit.demo.world:gold_reward")(["What is 2 + 3?"], ["2 + 3 = 5."]) == [1.0]
    path = tmp_path / "mine.py"
    path.write_text("def reward(prompts, completions, **fields):\n    return [float(len(c)) for c in completions]\n")
    assert load_function(f"{path}:reward")(["p"], ["abc"]) == [3.0]


@pytest.mark.parametrize("reference,message", [
    ("no_colon", "expected module:name"),
    ("missing/file.py:f", "file missing/file.py not found"),
    ("alignkit.nonexistent:f", "cannot import alignkit.nonexistent"),
    ("alignkit.demo.world:nope", "has no reward function named nope"),
])
def test_bad_function_reference_names_it(reference, message):
    with pytest.raises(ValueError, match=message):
        load_function(reference)


@pytest.mark.parametrize("returned,message", [
    ([1.0], "must return a list of 2 floats, got list of length 1"),
    ([1.0, float("nan")], "returned nan for completion 1"),
    ([1.0, "x"], "returned 'x' for completion 1"),
    (3.0, "must return a list of 2 floats, got float"),
])
def test_bad_return_values_name_the_function(returned, message):
    with pytest.raises(ValueError, match=f"reward function mine {message}"):
        call_reward("mine", lambda p, c, **f: returned, ["a", "b"], ["x", "y"], {})


def test_builtins_by_hand():
    assert BUILTINS["regex"]([""] * 2, ["The answer is 4.", "no"], pattern=r"answer is \d+") == [1.0, 0.0]
    assert BUILTINS["length"]([""] * 2, ["abcd", "abcdefgh"], target=4) == [0.0, -1.0]
    # "a b c a b c": 4 trigrams, 3 distinct -> -(1 - 3/4)
    assert BUILTINS["repetition"]([""], ["a b c a b c"], n=3) == [-0.25]
    assert "demo_format" not in BUILTINS  # the resolver makes it a demo.world function source (test_pipeline)


def test_reward_set_sums_weighted_sources_and_reports_each(tmp_path):
    sources = [RewardSource(builtin="demo_gold", weight=2.0),
               RewardSource(fn="examples/rewards/arithmetic.py:correct", name="correct", weight=-1.0)]
    from alignkit.demo.assets import demo_resolved

    rewards = RewardSet([demo_resolved(s) for s in sources], device="cpu")
    prompts = [(Message("user", "What is 2 + 3?"),), (Message("user", "What is 4 - 1?"),)]
    total, parts = rewards(prompts, ["Sure! 2 + 3 = 5. Happy to help!", "4 - 1 = 2."], {"answer": [5, 3]})
    assert parts["demo_gold"].tolist() == [1.5, 0.0] and parts["correct"].tolist() == [1.0, 0.0]
    assert torch.equal(total, torch.tensor([2 * 1.5 - 1.0, 0.0]))


def test_reward_source_needs_exactly_one_kind_and_distinct_names():
    with pytest.raises(ConfigError, match="exactly one of fn, builtin, reward_model, judge"):
        load_config(GRPOConfig, None, ["rewards=[{weight: 1.0}]"])
    with pytest.raises(ValueError, match="distinct names"):
        RewardSet([RewardSource(builtin="regex"), RewardSource(builtin="regex")])


def test_llm_judge_parses_first_number():
    from alignkit.rewards import LLMJudge

    judge = LLMJudge.__new__(LLMJudge)
    judge.scale, judge.default = 10.0, -1.0
    assert judge.parse("I'd say 7 out of 10") == 0.7 and judge.parse("no idea") == -1.0
