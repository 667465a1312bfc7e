"""From a ``data`` config section to tokenized train/eval rows, with the over-length policy applied and counted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import DataConfig
from .formats import DataError, SFTExample
from .loading import load_examples, train_eval_split
from .templates import Tokenized, tokenize_conversation


def resolve_data_source(source: str) -> str:
    """``demo:<set>`` -> the demo world's file for that set (built on first use); anything else unchanged."""
    if source.startswith("demo:"):
        from ..demo.assets import demo_data

        return str(demo_data(source.removeprefix("demo:")))
    return source


def load_split(data: DataConfig, kind: str, seed: int) -> tuple[list, list]:
    """Examples of ``kind`` for train and eval: a separate eval source, or a seeded fraction of train."""
    train = load_examples(resolve_data_source(data.train), kind, data.format, split=data.split, subset=data.subset)
    if data.eval:
        return train, load_examples(resolve_data_source(data.eval), kind, data.format, split=data.split,
                                    subset=data.subset)
    return train_eval_split(train, data.eval_fraction, seed)


@dataclass(frozen=True)
class TokenizeReport:
    kept: int  # examples kept
    truncated: int  # cut to max_length and kept
    dropped_overlong: int  # longer than max_length with overlong = drop
    dropped_no_target: int  # nothing left to train on after truncation (the response was cut away)

    def describe(self, name: str) -> str:
        return (f"{name}: {self.kept} examples kept, {self.truncated} truncated, "
                f"{self.dropped_overlong} dropped as over-length, {self.dropped_no_target} dropped with no response left")


def tokenize_sft(examples: Sequence[SFTExample], tokenizer, data: DataConfig, name: str) -> tuple[list[Tokenized], TokenizeReport]:
    """Tokenize with response-only masks; apply the over-length policy (truncate or drop) and count what happened."""
    rows: list[Tokenized] = []
    truncated = dropped_long = dropped_empty = 0
    for example in examples:
        row = tokenize_conversation(tokenizer, example.messages, loss_on=data.loss_on, max_length=data.max_length)
        if row.truncated and data.overlong == "drop":
            dropped_long += 1
            continue
        if sum(row.loss_mask[1:]) == 0:  # position 0 is never predicted
            dropped_empty += 1
            continue
        truncated += row.truncated
        rows.append(row)
    report = TokenizeReport(len(rows), truncated, dropped_long, dropped_empty)
    if examples and not rows:
        raise DataError(f"{name}: every example was filtered out ({report.describe(name)}); raise data.max_length?")
    return rows, report
