"""``alignkit data <command>``: the argument parsers and what each command runs (read, work, write, report).

The package lives under ``data/`` but its commands are the command line's floor: they import upward (``demo:``
names, a ``--predicate`` through `alignkit.rewards.load_function`, a tokenizer or a model for synth) lazily, inside
the command that needs it, never at module level. Importing this module costs nothing beyond argparse, so
``alignkit --help`` stays fast.
"""

from __future__ import annotations

import argparse

DESCRIPTION = """alignkit data: look at, clean and build data files, in every format alignkit trains on (see
alignkit/data/formats.py) and every file type it reads (.jsonl .json .parquet .csv .txt). Each command prints what
it kept and dropped, and why; writes atomically to -o (the input's file type; never the input itself; an existing
file only with --force); and writes every record it keeps unchanged."""


def _input(p: argparse.ArgumentParser, name: str = "file") -> None:
    p.add_argument(name, help="data file (.jsonl .json .parquet .csv .txt), hub dataset, or demo:<set> (e.g. demo:sft)")
    p.add_argument("--format", default="auto", help="record format; auto (default) detects it from the first record")


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, help="output file (written atomically; its extension names its type)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (never an input)")


def add_parser(subparsers) -> None:
    """Add ``data`` and its commands to alignkit's subcommands."""
    data = subparsers.add_parser("data", help="data tools: stats, dedup, filter, decontaminate, mix, convert, synth",
                                 description=DESCRIPTION)
    commands = data.add_subparsers(dest="data_command", metavar="command", required=True)

    p = commands.add_parser("stats", help="records, format, field coverage, lengths, duplicates, turns")
    _input(p)
    p.add_argument("--tokenizer", metavar="MODEL", help="count lengths in this tokenizer's tokens (default: characters)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = commands.add_parser("dedup", help="drop exact (and with --near, near) duplicate records")
    _input(p)
    _output(p)
    p.add_argument("--near", action="store_true", help="also drop near duplicates (MinHash LSH over word n-grams)")
    p.add_argument("--threshold", type=float, help="--near: Jaccard similarity of n-gram sets to drop at [default: 0.85]")
    p.add_argument("--num-perm", type=int, help="--near: MinHash permutations [default: 128]")
    p.add_argument("--ngram", type=int, help="--near: words per n-gram [default: 5]")

    p = commands.add_parser("filter", help="drop records by length, repetition, emptiness, refusals or a predicate")
    _input(p)
    _output(p)
    for bound in ("min", "max"):
        p.add_argument(f"--{bound}-chars", type=int, help=f"{bound}imum characters (of --length-of)")
        p.add_argument(f"--{bound}-tokens", type=int, help=f"{bound}imum tokens of --tokenizer (of --length-of)")
    p.add_argument("--tokenizer", metavar="MODEL", help="the tokenizer --min-tokens / --max-tokens count in")
    p.add_argument("--length-of", choices=("all", "prompt", "response"),
                   help="which texts the length bounds measure [default: all]")
    p.add_argument("--max-repetition", type=float, metavar="R",
                   help="drop a record with a response whose share of repeated word n-grams is above R (0-1)")
    p.add_argument("--repetition-ngram", type=int, help="--max-repetition: words per n-gram [default: 3]")
    p.add_argument("--drop-empty", action="store_true", help="drop records with a blank response (or prompt)")
    p.add_argument("--drop-refusals", action="store_true", help="drop records with a refusal-like response")
    p.add_argument("--refusal-phrases", metavar="FILE", help="--drop-refusals: phrases to look for, one a line "
                   "(replaces the built-in list, alignkit.data.curate.filters.REFUSAL_PHRASES)")
    p.add_argument("--predicate", metavar="FILE.py:FUNCTION", help="keep a record when FUNCTION(record) is True "
                   "(also module:function)")

    p = commands.add_parser("decontaminate", help="drop records sharing a word n-gram with an eval set")
    _input(p)
    _output(p)
    p.add_argument("--against", nargs="+", required=True, metavar="EVAL", help="eval files (any format)")
    p.add_argument("--ngram", type=int, default=13, help="words per n-gram [default: 13]")

    p = commands.add_parser("mix", help="sample several sources of one kind into one file")
    p.add_argument("sources", nargs="+", metavar="SRC:SHARE", help="a source and its count (500) or ratio (0.7)")
    _output(p)
    p.add_argument("--total", type=int, help="records in the mix; every share is then a ratio")
    p.add_argument("--seed", type=int, default=0, help="sampling seed [default: 0]")
    p.add_argument("--allow-repeats", action="store_true", help="repeat records of a source asked for more than it has")

    p = commands.add_parser("convert", help="rewrite records in another format")
    _input(p)
    _output(p)
    p.add_argument("--to", required=True, metavar="FORMAT",
                   help="messages, prompt_response, alpaca, pairwise, unpaired or prompt")
    p.add_argument("--pairs", choices=("best", "adjacent"),
                   help="ranked -> pairwise: best vs each other, or each vs the next [default: best]")

    p = commands.add_parser("synth", help="new instruction records from seed instructions (self-instruct)")
    _input(p, "seeds")
    _output(p)
    p.add_argument("--model", required=True, help="model folder, hub id or demo:<model> that writes and answers")
    p.add_argument("--num", type=int, default=10, help="instructions to keep [default: 10]")
    p.add_argument("--novelty", choices=("rouge", "minhash"), default="rouge",
                   help="similarity to the pool: ROUGE-L F or MinHash Jaccard of word bigrams [default: rouge]")
    p.add_argument("--max-similarity", type=float, default=0.7, help="keep an instruction only below this [default: 0.7]")
    p.add_argument("--seed", type=int, default=0, help="sampling seed [default: 0]")
    p.add_argument("--shots", type=int, default=3, help="example instructions shown per prompt [default: 3]")
    p.add_argument("--max-candidates", type=int, help="stop after this many candidates [default: 5 x --num]")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated at once [default: 8]")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per generation [default: 64]")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy [default: 0.7]")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto", help="[default: auto]")
    p.add_argument("--output-format", choices=("alpaca", "prompt_response"), default="alpaca",
                   help="records to write [default: alpaca]")


def run(args: argparse.Namespace) -> int:
    """Run ``alignkit data <command>``; bad input raises DataError / ConfigError (one line, printed by the CLI)."""
    from . import commands

    # (synth resolves --model itself, after checking -o: a demo model may be trained on first use)
    for name, kind in (("file", "data"), ("seeds", "data"), ("tokenizer", "model")):
        if getattr(args, name, None):
            setattr(args, name, resolve_name(kind, getattr(args, name)))
    for name in ("against", "sources"):
        if getattr(args, name, None):
            setattr(args, name, [_resolve_share(value, name == "sources") for value in getattr(args, name)])
    return commands.COMMANDS[args.data_command](args)


def resolve_name(kind: str, value: str) -> str:
    """A ``demo:`` data set or model name -> its path (built on first use); anything else unchanged."""
    if not value.startswith("demo:"):
        return value
    from ...pipeline import resolve_name as lookup  # the one resolver of demo: names

    try:
        return lookup(kind, value)
    except ValueError as e:
        from ..formats import DataError

        raise DataError(str(e)) from None


def _resolve_share(value: str, has_share: bool) -> str:
    """``demo:sft:0.5`` -> ``<path>:0.5`` for mix sources; eval files are plain names."""
    if not has_share or not value.startswith("demo:"):
        return resolve_name("data", value)
    name, sep, share = value.rpartition(":")
    return f"{resolve_name('data', name)}{sep}{share}" if name.startswith("demo:") else value
