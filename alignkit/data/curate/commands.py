"""What each ``alignkit data`` command runs: check the output path, read, do the work (the command's own module),
write, report. A knob given where it has no effect is refused, as config fields are."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ...config import ConfigError
from .output import check_output, report, write_records
from .records import Dataset, read_dataset

TokenCounter = Callable[[list[str]], list[int]]


def _refuse_unless(args: argparse.Namespace, switch: bool, needs: str, *names: str) -> None:
    """A flag that acts only under another one is an error without it, never silently ignored."""
    for name in names:
        if getattr(args, name) is not None and not switch:
            raise ConfigError(f"--{name.replace('_', '-')} has no effect without {needs}")


def _at_least_1(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: at least 1")


def _or(value, default):
    """A flag's value, or its default when not given (flags that need a switch default to None, see above)."""
    return default if value is None else value


def token_counter(name: str) -> TokenCounter:
    """Token counts of texts (no special tokens, no template) in the tokenizer of a model folder or hub id."""
    from ...config import ModelConfig
    from ...models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name_or_path=name))
    return lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def _finish(command: str, dataset: Dataset, kept: list, drops: list, out, lines: tuple[str, ...] = ()) -> int:
    print(report(f"{command} {dataset.source} ({dataset.format})", dataset.source, len(dataset.items), drops))
    for line in lines:
        print(line)
    write_records(out, [item.record for item in kept])
    print(f"wrote {out} ({len(kept)} records)")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from .stats import render, stats, to_json

    report_ = stats(read_dataset(args.file, args.format), token_counter(args.tokenizer) if args.tokenizer else None)
    print(to_json(report_) if args.json else render(report_))
    return 0


def run_dedup(args: argparse.Namespace) -> int:
    from .dedup import dedup

    _refuse_unless(args, args.near, "--near", "threshold", "num_perm", "ngram")
    _at_least_1(args, "num_perm", "ngram")
    out = check_output(args.out, [args.file], args.force, same_type_as=args.file)
    dataset = read_dataset(args.file, args.format)
    kept, drops = dedup(dataset.items, args.near, _or(args.threshold, 0.85), _or(args.num_perm, 128),
                        _or(args.ngram, 5))
    return _finish("dedup", dataset, kept, drops, out)


def run_filter(args: argparse.Namespace) -> int:
    from .filters import REFUSAL_PHRASES, Rules, filter_items, read_phrases

    bounds = [args.min_chars, args.max_chars, args.min_tokens, args.max_tokens]
    tokens = args.min_tokens is not None or args.max_tokens is not None
    _refuse_unless(args, tokens, "--min-tokens or --max-tokens", "tokenizer")
    if tokens and not args.tokenizer:
        raise ConfigError("--min-tokens / --max-tokens count tokens of a tokenizer: pass --tokenizer MODEL")
    _refuse_unless(args, any(b is not None for b in bounds), "a length bound (--min-chars ... --max-tokens)",
                   "length_of")
    _refuse_unless(args, args.max_repetition is not None, "--max-repetition", "repetition_ngram")
    _at_least_1(args, "repetition_ngram")
    if args.max_repetition is not None and not 0 <= args.max_repetition < 1:
        raise ConfigError(f"--max-repetition {args.max_repetition}: a share in [0, 1) is expected")
    _refuse_unless(args, args.drop_refusals, "--drop-refusals", "refusal_phrases")
    rules_given = any(b is not None for b in bounds) or args.max_repetition is not None or args.drop_empty \
        or args.drop_refusals or args.predicate
    if not rules_given:
        raise ConfigError("filter: no rule given (--min/--max-chars, --min/--max-tokens, --max-repetition, "
                          "--drop-empty, --drop-refusals, --predicate)")
    out = check_output(args.out, [args.file], args.force, same_type_as=args.file)
    predicate = None
    if args.predicate:
        from ...rewards import load_function

        predicate = load_function(args.predicate, "predicate", ConfigError, f"--predicate {args.predicate}")
    refusals = () if not args.drop_refusals else \
        read_phrases(args.refusal_phrases) if args.refusal_phrases else REFUSAL_PHRASES
    rules = Rules(args.drop_empty, args.min_chars, args.max_chars, args.min_tokens, args.max_tokens,
                  _or(args.length_of, "all"), args.max_repetition, _or(args.repetition_ngram, 3), refusals, predicate,
                  args.predicate or "")
    dataset = read_dataset(args.file, args.format, allow_blank=args.drop_empty)
    kept, drops = filter_items(dataset.items, rules, token_counter(args.tokenizer) if tokens else None)
    return _finish("filter", dataset, kept, drops, out)


def run_decontaminate(args: argparse.Namespace) -> int:
    from .decontaminate import Index, decontaminate, eval_texts

    _at_least_1(args, "ngram")
    out = check_output(args.out, [args.file, *args.against], args.force, same_type_as=args.file)
    dataset = read_dataset(args.file, args.format)
    evals, lines = [], []
    for source in args.against:
        texts, known = eval_texts(source)
        evals.append(texts)
        if not known:
            lines.append(f"  {source}: format not recognised; every string of its records was compared")
    kept, drops = decontaminate(dataset.items, args.against, Index(evals, args.ngram))
    removed = {source: sum(d.reason == f"overlaps {source}" for d in drops) for source in args.against}
    lines = [f"  {source}: {n} training records removed ({len(texts)} eval records)"
             for (source, n), texts in zip(removed.items(), evals)] + lines
    return _finish(f"decontaminate ({args.ngram}-grams)", dataset, kept, drops, out, ("per eval file:", *lines))


def run_mix(args: argparse.Namespace) -> int:
    from .mix import mix, parse_share, plan

    shares = [parse_share(text) for text in args.sources]
    out = check_output(args.out, [share.source for share in shares], args.force)
    _at_least_1(args, "total")
    datasets = [read_dataset(share.source) for share in shares]
    counts = plan(shares, [len(d.items) for d in datasets], args.total)
    records, lines = mix(datasets, counts, args.seed, args.allow_repeats)
    print(f"mix (seed {args.seed}): {len(records)} records from {len(datasets)} sources")
    for line in lines:
        print(line)
    if any(count > len(d.items) for count, d in zip(counts, datasets)):
        print("  the mix repeats records: train on it with data.duplicates: keep")
    write_records(out, records)
    print(f"wrote {out} ({len(records)} records)")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from .convert import convert_item

    out = check_output(args.out, [args.file], args.force)
    dataset = read_dataset(args.file, args.format)
    if args.pairs is not None and not (dataset.format == "ranked" and args.to == "pairwise"):
        raise ConfigError(f"--pairs has no effect converting {dataset.format} to {args.to} (only ranked -> pairwise)")
    records = [r for item in dataset.items for r in convert_item(item, dataset.format, args.to, args.pairs or "best")]
    print(f"convert {dataset.source}: {len(dataset.items)} {dataset.format} records -> {len(records)} {args.to} records")
    write_records(out, records)
    print(f"wrote {out} ({len(records)} records)")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from .cli import resolve_name
    from .synth import Novelty, as_records, model_sampler, seed_instruction, self_instruct

    _at_least_1(args, "num", "shots", "batch_size", "max_new_tokens", "max_candidates")
    if not 0 < args.max_similarity <= 1:
        raise ConfigError(f"--max-similarity {args.max_similarity}: a similarity in (0, 1] is expected")
    if args.temperature < 0:
        raise ConfigError(f"--temperature {args.temperature}: 0 (greedy) or more")
    out = check_output(args.out, [args.seeds], args.force)
    seeds = [seed_instruction(item) for item in read_dataset(args.seeds, args.format).items]
    model = resolve_name("model", args.model)
    sample = model_sampler(model, args.device, args.max_new_tokens, args.temperature, args.batch_size)
    pairs, counts = self_instruct(seeds, sample, args.num, Novelty(args.novelty), args.max_similarity, args.seed,
                                  args.shots, args.max_candidates, args.batch_size)
    print(f"synth from {len(seeds)} seed instructions ({args.novelty} novelty < {args.max_similarity}, "
          f"seed {args.seed}): " + ", ".join(f"{key} {n}" for key, n in counts.items()))
    if len(pairs) < args.num:
        print(f"  stopped at {counts['generated']} candidates (--max-candidates) with {len(pairs)} of {args.num} kept")
    write_records(out, as_records(pairs, args.output_format))
    print(f"wrote {out} ({len(pairs)} records)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "stats": run_stats, "dedup": run_dedup, "filter": run_filter, "decontaminate": run_decontaminate,
    "mix": run_mix, "convert": run_convert, "synth": run_synth,
}
