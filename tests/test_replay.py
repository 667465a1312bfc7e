"""Replay against forgetting: SFT's mix, the replay / PPO-ptx term of DPO, PPO and GRPO, and that it bounds the rise
of held-out perplexity."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from multiproc import small_data

from alignkit.data.templates import Tokenized
from alignkit.replay import Replay, mix


def test_mix_adds_ratio_times_n_replay_examples_seeded():
    train, replay = [f"t{i}" for i in range(10)], [f"r{i}" for i in range(3)]
    mixed = mix(train, replay, 0.5, seed=1)
    drawn = [x for x in mixed if x.startswith("r")]
    assert len(mixed) == 15 and sorted(x for x in mixed if x.startswith("t")) == sorted(train)
    # 5 from 3: one whole pass over the replay set, then 2 distinct more (never one record three times)
    assert len(drawn) == 5 and {drawn.count(r) for r in replay} == {1, 2} and set(drawn) == set(replay)
    assert mix(train, replay, 0.5, seed=1) == mixed != mix(train, replay, 0.5, seed=2)


class OneProcess:
    """What Replay.loss needs of an Accelerator, for one process."""

    process_index, num_processes, device = 0, 1, torch.device("cpu")

    @staticmethod
    def reduce(value, op):
        return value


class Uniform(torch.nn.Module):
    """A causal LM whose next-token distribution is fixed: log p(token v) = logp[v], whatever the context."""

    def __init__(self, logp: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logp.clone())

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return type("Out", (), {"logits": self.logits.expand(*input_ids.shape, -1)})()


def test_replay_term_is_coef_times_the_token_mean_nll():
    logp = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    rows = [Tokenized((0, 1, 2), (0, 1, 1)), Tokenized((2, 0), (1, 1))]  # targets: 1, 2 | 0
    loss, nll = Replay(rows, size=2, coef=0.5, seed=0, pad_id=0).loss(OneProcess(), Uniform(logp), step=1)
    expected = (math.log(4) + math.log(4) + math.log(2)) / 3  # the first token of a row is never a target
    assert torch.isclose(nll, torch.tensor(expected))
    assert torch.isclose(loss, torch.tensor(0.5 * expected))


def held_out_ppl(folder: Path, data: str) -> float:
    from alignkit.config import DataConfig, ModelConfig
    from alignkit.data.loading import load_examples
    from alignkit.data.prepare import tokenize_sft
    from alignkit.models import load_causal_lm, load_tokenizer
    from alignkit.recipes.sft import evaluate_loss

    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(folder)))
    model = load_causal_lm(ModelConfig(name_or_path=str(folder), device="cpu"), tokenizer)
    rows, _ = tokenize_sft(load_examples(data, "sft"), tokenizer, DataConfig(), "held out")
    return evaluate_loss(model, rows, tokenizer.pad_token_id, 16, torch.device("cpu"))["ppl/eval"]


def test_replay_bounds_the_rise_of_held_out_perplexity_in_dpo(tmp_path, demo_sft):
    """DPO at a high learning rate forgets the SFT data (its held-out perplexity rises); the same run with the SFT
    data replayed (ratio 1, coef 1) keeps the rise to a fraction, and still learns the preferences."""
    from alignkit.demo.run import stage_config
    from alignkit.recipes.dpo import train

    sft = small_data("sft", tmp_path / "sft", n_train=64, n_eval=32)
    prefs = small_data("dpo", tmp_path / "prefs", n_train=64, n_eval=8)
    before = held_out_ppl(demo_sft, sft["eval"])
    after = {}
    for name, replay in (("plain", {}), ("replay", {"replay": {"data": sft["train"], "ratio": 1.0, "coef": 1.0}})):
        cfg = stage_config("dpo", tmp_path / name, fast=True, data=prefs, **replay,
                           train={"max_steps": 20, "batch_size": 8, "lr": 1e-3},
                           run={"threads": 1, "eval_every": 0, "num_samples": 0})
        summary = train(cfg)
        assert summary["final"]["accuracy/eval"] >= 0.625
        after[name] = held_out_ppl(tmp_path / name / "final", sft["eval"])
    assert after["plain"] - before > 0.2  # measured: 1.287 -> 1.643
    assert after["replay"] - before < 0.3 * (after["plain"] - before)  # measured: 1.359
