"""Collators: right-padded batches, and packing of a batch's examples into rows without padding between them.

Packing concatenates a batch's examples into rows of up to ``data.pack_length`` tokens and restarts
``position_ids`` at each example; ``segments`` says which example each token belongs to, so per-sequence figures
(DPO's summed log-probs, a reward read at the last token) are taken per example, not per row. The batch holds the
same examples as the padded one (``train.batch_size`` counts examples either way), only laid out tighter. With ``attention_mask=None``, transformers derives a block-diagonal causal mask from the restarting
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
class Packed:
    input_ids: torch.Tensor  # (R, L) the examples back to back, rows right-padded
    position_ids: torch.Tensor  # (R, L) 0.. restarting at each example; the padding tail is its own block
    loss_mask: torch.Tensor  # (R, L)
    segments: torch.Tensor  # (R, L) index (0..N-1, input order) of the example each token belongs to; -1 on padding


def pack(examples: Sequence[Tokenized], pack_length: int, pad_id: int) -> Packed:
    """Greedily concatenate examples, in order, into rows of at most ``pack_length`` tokens (an example longer
    than that gets a row of its own)."""
    rows: list[list[int]] = []  # example indices per row
    used = pack_length
    for i, example in enumerate(examples):
        n = len(example.input_ids)
        if used + n > pack_length:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    length = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), length), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), length), dtype=torch.long)
    segments = torch.full((len(rows), length), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = len(examples[i].input_ids)
            ids[r, at : at + n] = torch.tensor(examples[i].input_ids)
            loss_mask[r, at : at + n] = torch.tensor(examples[i].loss_mask)
            pos[r, at : at + n] = torch.arange(n)
            segments[r, at : at + n] = i
            at += n
        pos[r, at:] = torch.arange(length - at)  # padding restarts at 0: a separate block nobody attends to
    return Packed(ids, pos, loss_mask, segments)


def pack_batch(examples: Sequence[Tokenized], pack_length: int, pad_id: int) -> SFTBatch:
    """Packed SFT rows: attention_mask None (the restarting positions delimit examples)."""
    packed = pack(examples, pack_length, pad_id)
    return SFTBatch(packed.input_ids, None, packed.position_ids, packed.loss_mask)


def pad_sequences(rows: Sequence[Tokenized], index: Sequence[int], pad_id: int,
                  pack_length: int | None = None) -> SequenceBatch:
    """Sequences scored as wholes (right-padded, or packed into rows of ``pack_length`` tokens); ``index`` keys
    each example's cached reference log-probs."""
    index = torch.tensor(list(index), dtype=torch.long)
    if pack_length:
        packed = pack(rows, pack_length, pad_id)
        return SequenceBatch(packed.input_ids, None, packed.position_ids, packed.loss_mask, index, packed.segments)
    plain = pad_batch(rows, pad_id)
    return SequenceBatch(plain.input_ids, plain.attention_mask, plain.position_ids, plain.loss_mask, index)


def pad_rankings(rows: Sequence, index: Sequence[int], pad_id: int, pack_length: int | None = None) -> RankingBatch:
    """Flatten best-first lists into one sequence per response (each scored once) with list / rank indices;
    right-padded, or packed into rows of ``pack_length`` tokens."""
    flat, list_index, rank = [], [], []
    for i, row in enumerate(rows):
        for r, seq in enumerate(row.responses):
            flat.append(seq)
            list_index.append(i)
            rank.append(r)
    margin = torch.tensor([float("nan") if row.margin is None else row.margin for row in rows])
    extra = (torch.tensor(list_index), torch.tensor(rank), margin, torch.tensor(list(index), dtype=torch.long))
    if pack_length:
        packed = pack(flat, pack_length, pad_id)
        return RankingBatch(packed.input_ids, None, packed.position_ids, *extra, segments=packed.segments)
    plain = pad_batch(flat, pad_id)
    return RankingBatch(plain.input_ids, plain.attention_mask, plain.position_ids, *extra)
