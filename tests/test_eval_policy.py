"""The multi-model policy evaluator: KL and perplexity on hand-made models, and the whole comparison on the demo."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from alignkit.eval.policies import _per_prompt, _solved, sequence_kl
from alignkit.sampling import Generation

V = 8  # vocabulary of the hand-made models


class FixedNextToken(torch.nn.Module):
    """A 'causal LM' whose next-token distribution is the same everywhere: softmax(logits)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float32), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **_):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, V))


def test_sequence_kl_is_the_summed_log_ratio_of_the_answer_tokens():
    p = torch.tensor([0.5, 0.25, 0.125, 0.125, 0, 0, 0, 0]) + 1e-12
    model, uniform = FixedNextToken(p.log()), FixedNextToken(torch.zeros(V))
    gens = [Generation((1, 2), (0, 1, 2), "a", True), Generation((3,), (0,), "b", True)]
    tok = SimpleNamespace(pad_token_id=7)
    got = sequence_kl(model, uniform, gens, tok, batch_size=1)
    # log p(y) - log(1/8) per token: token 0: log .5 + log 8 = log 4; token 1: log 2; token 2: log 1
    assert got == pytest.approx([math.log(4) + math.log(2) + 0.0, math.log(4)], abs=1e-6)
    assert sequence_kl(model, model, gens, tok, batch_size=2) == pytest.approx([0.0, 0.0], abs=1e-6)


def test_per_prompt_means_and_solved_lists_follow_the_samples():
    rows = [{"gold": v} for v in (1.0, 0.0, 0.5, 0.5, -1.0, 1.0)]  # 3 prompts x 2 samples
    assert _per_prompt(rows, "gold", 2) == [0.5, 0.5, 0.0]
    assert _solved(rows, "gold", 1.0, 2) == [[True, False], [False, False], [False, True]]


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tmp_path):
    """exp(mean NLL) over response tokens: a model that spreads its mass evenly over V tokens has perplexity V."""
    from alignkit.data.templates import Tokenized
    from alignkit.recipes.sft import evaluate_loss

    rows = [Tokenized(input_ids=[1, 2, 3, 4, 5], loss_mask=[0, 0, 1, 1, 1]),
            Tokenized(input_ids=[6, 1, 2], loss_mask=[0, 1, 1])]
    ppl = evaluate_loss(FixedNextToken(torch.zeros(V)), rows, pad_id=0, batch_size=2, device=torch.device("cpu"))
    assert ppl["ppl/eval"] == pytest.approx(V)


@pytest.mark.slow
def test_the_comparison_on_the_demo(tmp_path, demo_sft, demo_base):
    """SFT against the untrained model on 12 prompts: SFT wins every prompt by gold, its KL to itself is 0, the
    table, the samples and the blind sheet are written, and a filled sheet reads back."""
    from alignkit.cli import main

    args = ["eval", f"run.output_dir={tmp_path / 'ev'}", "run.threads=2", "eval.mode=policy",
            "models={untrained: demo:base, sft: demo:sft}", "data.train=demo:prompts_eval", "eval.max_prompts=12",
            "eval.max_new_tokens=24", "eval.baseline=untrained", "eval.reference=demo:sft", "eval.bootstrap=200",
            "eval.human_sheet=4", "rewards=[{builtin: demo_gold, name: gold}]"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    sft = summary["models"]["sft"]
    assert sft["kl_to_reference"] == pytest.approx(0.0, abs=1e-5)
    assert sft["win_rate"]["win_rate"] == 1.0 and sft["win_rate"]["low"] == 1.0  # untrained answers score -1
    assert summary["models"]["untrained"]["gold"]["mean"] == -1.0
    assert sft["gold"]["low"] <= sft["gold"]["mean"] <= sft["gold"]["high"]
    samples = [json.loads(line) for line in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 24 and {s["model"] for s in samples} == {"untrained", "sft"}
    from alignkit.demo.world import gold_reward

    sft_rows = [s for s in samples if s["model"] == "sft"]
    prompts = [s["prompt"] for s in sft_rows]
    assert [s["gold"] for s in sft_rows] == gold_reward(prompts, [s["response"] for s in sft_rows])
    sheet = (tmp_path / "ev" / "human_eval_sheet.csv").read_text()
    assert "sft" not in sheet and "untrained" not in sheet  # blind: names only in the key
    key = json.loads((tmp_path / "ev" / "human_eval_key.json").read_text())
    filled = tmp_path / "rated.jsonl"  # one rater always prefers the SFT answer for helpfulness
    filled.write_text("".join(json.dumps({"item": item, "helpfulness": "a" if sides["a"] == "sft" else "b",
                                          "rater": "ann"}) + "\n" for item, sides in key.items()))
    assert main([*args[:1], f"run.output_dir={tmp_path / 'ev2'}", *args[2:-2], "eval.human_sheet=0",
                 f"eval.ratings=[{filled}]", f"eval.ratings_key={tmp_path / 'ev' / 'human_eval_key.json'}",
                 args[-1]]) == 0
    ratings = json.loads((tmp_path / "ev2" / "summary.json").read_text())["human_ratings"]
    assert ratings["models"]["sft"]["helpfulness"]["win_rate"] == 1.0
    assert "ratings vs untrained" in (tmp_path / "ev2" / "report.html").read_text()
