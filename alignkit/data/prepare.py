"""From a ``data`` config section to tokenized train/eval rows, with the over-length policy applied and counted."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..config import DataConfig
from .formats import FORMATS, DataError, SFTExample, TextExample
from .loading import load_examples, reject_duplicates, train_eval_split
from .templates import Tokenized, tokenize_conversation

T = TypeVar("T")


def resolve_data_source(source: str) -> str:
    """The source to read; a ``demo:`` name here is a config that skipped the resolver (``pipeline.resolve``)."""
    if source.startswith("demo:"):
        raise DataError(f"{source}: a demo: name reached the data loader unresolved; pass the config through "
                        "alignkit.pipeline.resolve(cfg) first (the alignkit commands do)")
    return source


def _load(source: str, kind: str, data: DataConfig) -> list:
    formats = FORMATS.get(kind, {})
    if data.format != "auto" and data.format not in formats:
        raise DataError(f'data.format = "{data.format}" is not a format of {kind} data; expected one of auto, '
                        f'{", ".join(formats)}')
    examples = load_examples(resolve_data_source(source), kind, data.format, split=data.split, subset=data.subset)
    # A repeated record is an error naming both lines, unless data.duplicates says keep (the resolver says so for
    # the demo world's sets, sampled with replacement by design).
    if data.duplicates == "error":
        reject_duplicates(examples)
    return examples


def load_prompts(data: DataConfig, limit: int = 0) -> list:
    """The prompt records of ``data.train`` (the first ``limit`` of them; 0 = all), for runs that answer prompts
    without training (eval, generate): nothing is held out, repeats are answered again."""
    examples = load_examples(resolve_data_source(data.train), "prompt", data.format, split=data.split,
                             subset=data.subset)
    return examples[:limit] if limit else examples


def load_split(data: DataConfig, kind: str, seed: int) -> tuple[list, list]:
    """Examples of ``kind`` for train and eval: a separate eval source, or a seeded fraction of train."""
    train = _load(data.train, kind, data)
    if data.eval:
        return train, _load(data.eval, kind, data)
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


def _keep_fitting(candidates: Iterable[tuple[list[Tokenized], T, str]], data: DataConfig, name: str
                  ) -> tuple[list[T], TokenizeReport]:
    """The one over-length policy: keep each candidate row unless one of its sequences is over-length under
    ``overlong: drop`` or has no response token left after truncation; count what happened.

    Candidates are (sequences, row, where). Dropping some records is reported; dropping all of them is an error
    naming the first one, since a run on nothing would only fail later and less clearly.
    """
    rows: list[T] = []
    truncated = long = empty = 0
    first: tuple[str, str] | None = None  # (where, verdict) of the first record dropped
    for sequences, row, where in candidates:
        verdicts = {_fits(seq, data) for seq in sequences}
        verdict = "long" if "long" in verdicts else "empty" if "empty" in verdicts else "ok"
        long += verdict == "long"
        empty += verdict == "empty"
        if verdict == "ok":
            truncated += any(seq.truncated for seq in sequences)
            rows.append(row)
        elif first is None:
            first = (where, verdict)
    report = TokenizeReport(len(rows), truncated, long, empty)
    if first is not None and not rows:
        where, verdict = first
        problem = {"long": f"longer than data.max_length = {data.max_length} tokens (data.overlong = drop)",
                   "empty": f"the prompt fills data.max_length = {data.max_length} tokens, leaving no response token"}
        raise DataError(f"{where}: {problem[verdict]}; every {name} record was dropped ({long} over-length, "
                        f"{empty} with no response left): raise data.max_length")
    return rows, report


def tokenize_text(tokenizer, text: str, max_length: int) -> list[Tokenized]:
    """A plain document -> chunks of at most ``max_length`` tokens, every token trained.

    The tokenizer adds what it adds to a plain string (Llama's BOS, nothing for Qwen) and its EOS closes the
    document, so packed documents stay apart. A long document is split, not cut: continued pretraining should
    see all of it. (A chunk's first token is never predicted, as in any row.)"""
    ids = list(tokenizer(text)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return [Tokenized(tuple(ids[i : i + max_length]), (1,) * len(ids[i : i + max_length]))
            for i in range(0, len(ids), max_length)]


def tokenize_sft(examples: Sequence[SFTExample | TextExample], tokenizer, data: DataConfig, name: str
                 ) -> tuple[list[Tokenized], TokenizeReport]:
    """Tokenize with response-only masks (text records: every token, in max_length chunks); apply the over-length
    policy (truncate or drop) and count what happened."""
    if data.overlong == "drop" and examples and isinstance(examples[0], TextExample):
        raise DataError(f"{examples[0].where}: data.overlong = drop has no effect on text records (a long "
                        "document is split into data.max_length chunks, never cut or dropped); remove it")

    def candidates():
        for example in examples:
            if isinstance(example, TextExample):
                for chunk in tokenize_text(tokenizer, example.text, data.max_length):
                    yield [chunk], chunk, example.where
                continue
            row = tokenize_conversation(tokenizer, example.messages, loss_on=data.loss_on, max_length=data.max_length,
                                        tools=example.tools)
            yield [row], row, example.where

    return _keep_fitting(candidates(), data, name)


def sample_prompts(examples: Sequence[SFTExample | TextExample], n: int) -> tuple[list, list[str]]:
    """The first ``n`` eval examples as (prompts, references) for sample generations: a conversation's turns before
    its last and that last reply; a text record's opening words (raw text, no template) and the rest."""
    prompts, references = [], []
    for example in examples[:n]:
        if isinstance(example, TextExample):
            words = example.text.split(" ")
            cut = max(1, min(len(words) // 2, 32))
            prompts.append(" ".join(words[:cut]))
            references.append(" " + " ".join(words[cut:]))
        else:
            prompts.append(example.messages[:-1])
            references.append(example.messages[-1].content)
    return prompts, references


@dataclass(frozen=True)
class PairRow:
    chosen: Tokenized  # prompt + chosen response; mask on the response
    rejected: Tokenized  # prompt + rejected response
    margin: float | None = None


def _fits(row: Tokenized, data: DataConfig) -> str:
    """"ok", "long" (drop: over max_length under overlong=drop) or "empty" (no response token left)."""
    if data.overlong == "drop" and row.truncated:
        return "long"
    return "ok" if sum(row.loss_mask[1:]) else "empty"  # position 0 is never predicted


def tokenize_pairs(examples: Sequence, tokenizer, data: DataConfig, name: str) -> tuple[list[PairRow], TokenizeReport]:
    """Tokenize (prompt, chosen, rejected) into two sequences; a pair is dropped when either side cannot be used
    (a pair is a best-first list of two, so the ranking tokenizer does the work)."""
    rows, report = tokenize_rankings(examples, tokenizer, data, name)
    return [PairRow(row.responses[0], row.responses[1], row.margin) for row in rows], report


@dataclass(frozen=True)
class UnpairedRow:
    sequence: Tokenized  # prompt + completion; mask on the completion
    desirable: bool


def tokenize_unpaired(examples: Sequence, tokenizer, data: DataConfig, name: str) -> tuple[list[UnpairedRow], TokenizeReport]:
    """Tokenize KTO's (prompt, completion, label) records with the same over-length policy."""
    def candidates():
        for example in examples:
            row = tokenize_conversation(tokenizer, example.prompt + example.completion,
                                        first_trained=len(example.prompt), max_length=data.max_length)
            yield [row], UnpairedRow(row, example.label), example.where

    return _keep_fitting(candidates(), data, name)


@dataclass(frozen=True)
class RankRow:
    responses: tuple[Tokenized, ...]  # prompt + response for each response, best first (a pair is K = 2)
    margin: float | None = None


def tokenize_rankings(examples: Sequence, tokenizer, data: DataConfig, name: str) -> tuple[list[RankRow], TokenizeReport]:
    """Pairs or ranked lists -> best-first lists of tokenized sequences; a list is dropped if any response is."""
    def candidates():
        for example in examples:
            responses = (example.chosen, example.rejected) if hasattr(example, "chosen") else example.responses
            seqs = [tokenize_conversation(tokenizer, example.prompt + r, first_trained=len(example.prompt),
                                          max_length=data.max_length) for r in responses]
            yield seqs, RankRow(tuple(seqs), getattr(example, "margin", None)), example.where

    return _keep_fitting(candidates(), data, name)


def preference_kind(data: DataConfig) -> str:
    """"ranked" for ``{"prompt", "responses"}`` records, else "preference" (pairs); read off the first record."""
    if data.format in ("ranked", "pairwise", "hh"):
        return "ranked" if data.format == "ranked" else "preference"
    from .loading import read_records

    records = read_records(resolve_data_source(data.train), split=data.split, subset=data.subset)
    return "ranked" if records and "responses" in records[0][1] else "preference"
