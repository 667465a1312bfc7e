"""Step-level data for process reward models: a solution's steps after the prompt, with each step's end located.

A solution is laid out as the assistant's response: the prompt through the chat template with its generation prompt
(exactly what a policy continues from), then every step followed by the step separator. The pieces are tokenized
separately and concatenated, so each step's last token is its separator's, never a token shared with the next step:
that is where a process reward model reads its head. Nothing after the last separator (the template's end of turn)
is added: with causal attention it could not change what the head reads at any step end.

A completion sampled at RL time is split into steps at the same separator (``split_steps``, blank pieces left out)
and laid out the same way; ``token_at`` finds the policy's token that holds a step's end, where PPO places the step's
reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..batch import StepBatch
from ..config import DataConfig
from .collate import pack, pad_batch
from .formats import Conversation, DataError
from .prepare import TokenizeReport, _keep_fitting
from .templates import Tokenized, tokenize_prompt


@dataclass(frozen=True)
class StepRow:
    sequence: Tokenized  # prompt + steps; loss_mask is 1 at each step's last token (its separator), 0 elsewhere
    labels: tuple[bool, ...]  # the labels of the steps whose end survived truncation, in order


def step_sequence(tokenizer, prompt: Conversation, steps: Sequence[str], separator: str,
                  max_length: int | None = None) -> Tokenized:
    """Token ids of the prompt (with the generation prompt) and the steps, each followed by ``separator``;
    ``loss_mask`` marks each step's last token. Cut to ``max_length``: a step whose end is cut away loses its mark."""
    ids = list(tokenize_prompt(tokenizer, prompt))
    mask = [0] * len(ids)
    for step in steps:
        piece = tokenizer(step + separator, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        mask.extend([0] * (len(piece) - 1) + [1])
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    return Tokenized(tuple(ids), tuple(mask), truncated)


def tokenize_steps(examples: Sequence, tokenizer, data: DataConfig, name: str, separator: str = "\n"
                   ) -> tuple[list[StepRow], TokenizeReport]:
    """Steps records -> rows under the one over-length policy (a solution with no step end left is dropped and
    counted). A step that contains the separator is an error: scoring would split it into two steps."""
    def candidates():
        for example in examples:
            for i, step in enumerate(example.steps):
                if separator in step:
                    raise DataError(f'{example.where}: field "steps[{i}]" contains the step separator '
                                    f"{separator!r} (prm.separator), so a completion written like it would be "
                                    "scored as two steps; split the step, or choose another separator")
            row = step_sequence(tokenizer, example.prompt, example.steps, separator, data.max_length)
            yield [row], StepRow(row, example.labels[: sum(row.loss_mask)]), example.where

    return _keep_fitting(candidates(), data, name)


def pad_steps(rows: Sequence[StepRow], index: Sequence[int], pad_id: int, pack_length: int | None = None) -> StepBatch:
    """Right-padded (or packed into rows of ``pack_length`` tokens) solutions with their step labels, flattened in
    solution order: the order in which ``values[step_mask.bool()]`` lists the step ends either way."""
    labels = torch.tensor([float(label) for row in rows for label in row.labels])
    solution = torch.tensor([i for i, row in enumerate(rows) for _ in row.labels], dtype=torch.long)
    index = torch.tensor(list(index), dtype=torch.long)
    sequences = [row.sequence for row in rows]
    if pack_length:
        packed = pack(sequences, pack_length, pad_id)
        return StepBatch(packed.input_ids, None, packed.position_ids, packed.loss_mask, labels, solution, index)
    plain = pad_batch(sequences, pad_id)
    return StepBatch(plain.input_ids, plain.attention_mask, plain.position_ids, plain.loss_mask, labels, solution,
                     index)


def split_steps(text: str, separator: str) -> list[tuple[str, int]]:
    """A completion's steps: (step text, offset just past its separator, or the text's end for the last step).
    Blank pieces (two separators in a row, trailing whitespace) are not steps."""
    steps: list[tuple[str, int]] = []
    start = 0
    while start < len(text):
        cut = text.find(separator, start)
        stop, end = (len(text), len(text)) if cut < 0 else (cut, cut + len(separator))
        if text[start:stop].strip():
            steps.append((text[start:stop], end))
        start = end
    return steps


def token_at(tokenizer, ids: Sequence[int], offset: int) -> int:
    """The index of the token of ``ids`` whose text holds character ``offset - 1`` of their decoding (special
    tokens skipped, as a generation's text is): the first k with len(decode(ids[:k + 1])) >= offset. A binary
    search: a few decodes per step, not one per token."""
    low, high = 0, len(ids) - 1
    while low < high:
        mid = (low + high) // 2
        if len(tokenizer.decode(list(ids[: mid + 1]), skip_special_tokens=True)) >= offset:
            high = mid
        else:
            low = mid + 1
    return low
