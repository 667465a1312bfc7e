"""Collators: right-padded batches, and packing of short examples into full rows.

Packing concatenates examples into rows of up to ``max_length`` tokens and restarts ``position_ids`` at each
example. With ``attention_mask=None``, transformers derives a block-diagonal causal mask from the restarting
positions (``masking_utils.find_packed_sequence_indices``), so packed examples never attend to each other: a packed
batch gives the same loss as the unpacked one (tested). Models whose attention ignores position-derived masks
(custom ``trust_remote_code`` architectures, some older ones) would attend across examples; turn packing off there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..batch import RankingBatch, SequenceBatch, SFTBatch
from .templates import Tokenized


def pad_batch(examples: Sequence[Tokenized], pad_id: int) -> SFTBatch:
    """Right-pad to the longest example; padding has attention 0 and loss 0."""
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), length), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        attention[row, :n] = 1
        loss_mask[row, :n] = torch.tensor(example.loss_mask)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return SFTBatch(input_ids=ids, attention_mask=attention, position_ids=positions, loss_mask=loss_mask)


@dataclass(frozen=True)
class PackedRow:
    input_ids: tuple[int, ...]  # (L,) several examples back to back
    loss_mask: tuple[int, ...]  # (L,)
    position_ids: tuple[int, ...]  # (L,) 0.. restarting at each example


def pack(examples: Sequence[Tokenized], max_length: int) -> list[PackedRow]:
    """Greedily concatenate examples, in order, into rows of at most max_length tokens (order kept: exact resume)."""
    rows: list[PackedRow] = []
    ids: list[int] = []
    mask: list[int] = []
    pos: list[int] = []
    for example in examples:
        if ids and len(ids) + len(example.input_ids) > max_length:
            rows.append(PackedRow(tuple(ids), tuple(mask), tuple(pos)))
            ids, mask, pos = [], [], []
        ids.extend(example.input_ids)
        mask.extend(example.loss_mask)
        pos.extend(range(len(example.input_ids)))
    if ids:
        rows.append(PackedRow(tuple(ids), tuple(mask), tuple(pos)))
    return rows


def pad_packed(rows: Sequence[PackedRow], pad_id: int) -> SFTBatch:
    """Batch packed rows: attention_mask None (positions delimit examples); tail padding is its own block."""
    length = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), length), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        ids[i, :n] = torch.tensor(row.input_ids)
        loss_mask[i, :n] = torch.tensor(row.loss_mask)
        pos[i, :n] = torch.tensor(row.position_ids)
        pos[i, n:] = torch.arange(length - n)  # padding restarts at 0: a separate block nobody attends to
    return SFTBatch(input_ids=ids, attention_mask=None, position_ids=pos, loss_mask=loss_mask)


def pad_sequences(rows: Sequence[Tokenized], index: Sequence[int], pad_id: int) -> SequenceBatch:
    """Right-padded sequences scored as wholes; ``index`` keys each example's cached reference log-probs."""
    plain = pad_batch(rows, pad_id)
    return SequenceBatch(plain.input_ids, plain.attention_mask, plain.position_ids, plain.loss_mask,
                         torch.tensor(list(index), dtype=torch.long))


def pad_rankings(rows: Sequence, index: Sequence[int], pad_id: int) -> RankingBatch:
    """Flatten best-first lists into one row per response (each scored once) with list / rank indices."""
    flat, list_index, rank = [], [], []
    for i, row in enumerate(rows):
        for r, seq in enumerate(row.responses):
            flat.append(seq)
            list_index.append(i)
            rank.append(r)
    plain = pad_batch(flat, pad_id)
    margin = torch.tensor([float("nan") if row.margin is None else row.margin for row in rows])
    return RankingBatch(plain.input_ids, plain.attention_mask, plain.position_ids, torch.tensor(list_index),
                        torch.tensor(rank), margin, torch.tensor(list(index), dtype=torch.long))
