"""Replay against forgetting: earlier data (SFT records or plain text) trained alongside a new objective.

Two forms, both configured by a recipe's ``replay:`` section:

- SFT mixes ``round(ratio * N)`` replay examples into its N training examples (``mix``): one loss, where every
  target token weighs the same.
- DPO, PPO and GRPO add a language-modelling term on replay rows to every optimizer step (``Replay``). This is
  InstructGPT's PPO-ptx (Ouyang et al. 2022, eq. 2: objective + gamma * E_{x ~ D_pretrain}[log pi(x)]) with
  ``replay.coef`` as gamma, and the same term for DPO. Per step:

      loss = loss_recipe + coef * (sum of the replay rows' target-token NLL) / (their target-token count)

  The replay rows of step k are a pure function of (seed, k), like every other batch, so resume stays exact and
  the union over processes does not depend on their number.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .data.collate import pad_batch
from .data.formats import DataError
from .data.loading import load_examples
from .data.prepare import resolve_data_source, tokenize_sft
from .data.templates import Tokenized
from .losses import aggregate, sft_loss
from .ops import forward_token_logps
from .runtime import step_indices

REPLAY_SEED = 7_919  # keeps the replay order apart from the main data's (same seed, different stream)


def load_replay_examples(section, data) -> list:
    """The replay records (any SFT format, or text); the recipe's ``data`` section lends its split / subset."""
    return load_examples(resolve_data_source(section.data), "sft", "auto", split=data.split, subset=data.subset)


def mix(train: list, replay: list, ratio: float, seed: int) -> list:
    """SFT's replay: ``train`` plus ``round(ratio * len(train))`` replay examples drawn without replacement
    (the replay set is cycled through in seeded passes when more are asked than it holds), shuffled in seeded."""
    want = round(ratio * len(train))
    rng = random.Random(seed * 1_000_003 + REPLAY_SEED)
    drawn: list = []
    while len(drawn) < want:
        drawn += rng.sample(replay, min(len(replay), want - len(drawn)))
    mixed = train + drawn
    rng.shuffle(mixed)
    return mixed


@dataclass(frozen=True)
class Replay:
    """The replay term of DPO / PPO / GRPO: ``rows`` tokenized replay examples, ``size`` of them per optimizer
    step over all processes, weighed by ``coef``."""

    rows: list[Tokenized]
    size: int
    coef: float
    seed: int
    pad_id: int

    def loss(self, acc, model, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of step ``step``'s replay term (``coef`` times the token-mean NLL over the step's
        replay rows of every process), and that mean NLL (detached, for the log). Call ``backward`` on the first
        inside the step's last (gradient-synchronising) micro-step."""
        index = step_indices(len(self.rows), step, self.size, 1, self.seed * 1_000_003 + REPLAY_SEED,
                             acc.process_index, acc.num_processes)[0]
        batch = pad_batch([self.rows[i] for i in index], self.pad_id).to(acc.device)
        mask = batch.loss_mask[:, 1:]
        denominator = acc.reduce(mask.sum().float(), "sum")
        logps = forward_token_logps(model, batch.input_ids, batch.attention_mask, batch.position_ids)
        per_token, stats = sft_loss(logps, mask)
        nll = acc.reduce(stats["nll_sum"].detach(), "sum") / denominator
        return self.coef * aggregate(per_token, mask, denominator), nll


def load_replay(section, data, tokenizer, per_step: int, num_processes: int, seed: int, print_fn=print) -> Replay | None:
    """The ``Replay`` of a recipe's ``replay:`` section (None when off): the rows tokenized under the recipe's
    ``data`` limits, ``ratio * per_step`` of them per step (rounded up to a multiple of the process count)."""
    if section.data is None:
        return None
    examples = load_replay_examples(section, data)
    limits = data.model_copy(update={"train": section.data, "loss_on": "assistant", "overlong": "truncate"})
    rows, report = tokenize_sft(examples, tokenizer, limits, "replay")
    print_fn(report.describe("replay"))
    size = max(1, round(section.ratio * per_step))
    size = -(-size // num_processes) * num_processes
    if size > len(rows):
        raise DataError(f"{section.data}: replay.ratio = {section.ratio} asks for {size} replay rows per step, but the "
                        f"replay data holds {len(rows)}: lower replay.ratio or give more data")
    return Replay(rows, size, section.coef, seed, tokenizer.pad_token_id)
