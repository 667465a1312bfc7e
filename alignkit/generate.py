"""``alignkit generate CONFIG.yaml``: the on-policy data step of RLHF. A model answers every prompt of
``data.train`` K times (seeded per response), every reward source scores every answer, and ``generated.jsonl`` is
written in alignkit's own data formats, so it feeds ``alignkit dpo`` / ``alignkit rm`` as it is (in a pipeline:
``data: {train: ${gen.output}}``).

What is written (``generate.output``), one JSON object a line:

- ``raw``: every response, ``{"prompt", "response", "sample", "seed", "scores": {label: score}, "total",
  "response_tokens", "eos", "model"}``, K lines per prompt in prompt order, as they came (blank ones included).
- ``pairs``: per prompt, the best against the worst response by the weighted total, ``{"prompt", "chosen",
  "rejected", ...}``; a prompt whose best and worst tie is skipped (``skipped_ties``), so is one whose margin is
  under ``generate.min_margin`` (``skipped_margin``).
- ``ranked``: per prompt, its responses best first, ``{"prompt", "responses": [best, ..., worst], ...}``; ties
  keep their sample order; a list whose responses all tie holds no preference and is skipped (``skipped_ties``).

Provenance rides in each record beside the fields the loaders read (they ignore other keys, and this module
never writes the two optional keys they do read, ``margin`` and ``system``): every response's ``scores`` (per
source) and ``totals``, its sampling ``seeds`` and ``samples`` (k), and the ``model`` path; for pairs each under
``{"chosen": ..., "rejected": ...}``, for ranked lists as lists in the order of ``responses``.

Where pairs and ranked lists depart from "best vs worst of K" / "all K sorted", so that every record loads and
trains:

1. A blank response is never a candidate (the loaders refuse an empty response; ``blank_responses`` counts them).
2. A text sampled twice is one candidate (two equal responses hold no preference and the loaders refuse them);
   ``dropped_repeats`` counts the ranked lists' losses. A prompt left with fewer than two candidates is skipped
   (``skipped_alike``).
3. A record equal to an earlier one (a repeated prompt drew the same pair) is dropped (``duplicates_dropped``):
   the trainers refuse repeated records unless told ``data.duplicates: keep``, and it would weigh double.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

OUTPUT = "generated.jsonl"


@dataclass(frozen=True)
class Response:
    text: str  # decoded response, special tokens removed
    sample: int  # k: its place among its prompt's K samples
    seed: int  # its sampling stream: rollout_seeds(generate.seed, k, prompt index)
    scores: dict[str, float]  # reward source label -> raw score
    total: float  # the sources' weighted sum: what ranks the responses
    tokens: int  # response tokens (a stop token included)
    eos: bool  # ended with a stop token (False: cut at generate.max_new_tokens)


def run_generate(cfg, resume=None) -> dict:
    """``alignkit generate CONFIG.yaml``: sample, score and write ``generated.jsonl`` (see the module docstring),
    with summary.json and the resolved config.yaml, in the run folder; prints a summary table and the file."""
    from .checkpoint import atomic_write_json, atomic_write_text
    from .config import ConfigError
    from .data.prepare import load_prompts
    from .models import load_causal_lm, load_tokenizer, resolve_device
    from .rewards import RewardSet
    from .rollout.core import tokenize_prompts
    from .runtime import open_run_dir, quiet_libraries

    if resume:
        raise ConfigError("alignkit generate writes its file in one go and keeps no checkpoints: there is nothing to "
                          "resume; run it again (the same generate.seed writes the same file)")
    quiet_libraries()
    if cfg.run.threads:
        import torch

        torch.set_num_threads(cfg.run.threads)
    g = cfg.generate
    engine_kind = choose_engine(g.engine)  # an engine this machine cannot run is refused before anything loads
    run_dir = open_run_dir(cfg, "generate")
    device = resolve_device(cfg.model.device)
    examples = load_prompts(cfg.data, g.max_prompts)
    tokenizer = load_tokenizer(cfg.model, announce=print)
    kept, prompt_ids, report = tokenize_prompts(examples, tokenizer, cfg.data, cfg.data.train)
    print(report.describe(cfg.data.train))
    position = {id(e): i for i, e in enumerate(examples)}  # a prompt's seeds follow its place in the file
    model = load_causal_lm(cfg.model, tokenizer, device, trainable=False)
    rewards = RewardSet(cfg.rewards, device, cfg.data.max_length + g.max_new_tokens)
    engine = make_generator(cfg, engine_kind, tokenizer, model)
    answers = sample_and_score(cfg, engine, model, kept, prompt_ids, [position[id(e)] for e in kept], rewards)

    records, counts = [], Counter({k: 0 for k in COUNTS[g.output]})
    for example, responses in zip(kept, answers):
        written, seen = WRITERS[g.output](prompt_json(example), responses, g)
        records += [{**r, "model": cfg.model.name_or_path} for r in written]
        counts.update(seen)
    if g.output != "raw":
        records, counts["duplicates_dropped"] = drop_repeated_records(records)
    path = run_dir / OUTPUT
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    summary = summarize(cfg, engine_kind, report, answers, records, counts)
    summary.update(file=str(path), run_dir=str(run_dir))
    atomic_write_json(run_dir / "summary.json", summary)
    from .report import write_report

    write_report(run_dir, summary, records)  # every written record, filterable, beside the counts
    print_summary(summary)
    return summary


def choose_engine(requested: str) -> str:
    """The rollout engines' choice (``rollout.engines.engine_name``), its refusal naming this section's key."""
    from .config import ConfigError
    from .rollout.engines import engine_name

    try:
        return engine_name(requested)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("sampling.engine", "generate.engine")) from None


def make_generator(cfg, kind: str, tokenizer, model):
    """The engine that samples: hf on the loaded model (``generate.batch_size`` sequences per call), or the RL
    recipes' colocated vLLM, configured as a ``sampling:`` section would; nothing trains here, so it never sleeps."""
    from .rollout.engines import HFEngine, make_engine

    g = cfg.generate
    if kind == "hf":
        return HFEngine(None, tokenizer, batch_size=g.batch_size)
    from accelerate import Accelerator

    from .config import SamplingSection

    section = SamplingSection(max_new_tokens=g.max_new_tokens, temperature=g.temperature, engine="vllm",
                              vllm_sleep=False)
    return make_engine(section, Accelerator(), tokenizer, model, cfg.data.max_length + g.max_new_tokens)


def sample_and_score(cfg, engine, model, examples: Sequence, prompt_ids: Sequence[Sequence[int]],
                     positions: Sequence[int], rewards) -> list[list[Response]]:
    """K responses per prompt, each scored by every source: [prompt][k]. Response k of the prompt at ``positions[i]``
    in the file is sampled from seed ``rollout_seeds(generate.seed, k, positions[i])``: the tokens depend on neither
    the batch size nor the other prompts (the engines sample each row from its own seed)."""
    from tqdm.auto import tqdm

    from .rollout.core import chunks_of, rollout_seeds
    from .rollout.evaluate import answer
    from .sampling import SamplingParams

    g = cfg.generate
    params = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature)
    rows = [(i, k) for i in range(len(examples)) for k in range(g.samples)]  # a prompt's K samples side by side
    seeds = [rollout_seeds(g.seed, k, positions[i], 1)[0] for i, k in rows]
    out: list[list[Any]] = [[None] * g.samples for _ in examples]
    bar = tqdm(total=len(rows), desc=f"generate x{g.samples}", unit="response", disable=not cfg.run.progress)
    for chunk in chunks_of(range(len(rows)), g.batch_size):
        episodes, total, parts = answer(engine, model, [examples[rows[r][0]] for r in chunk],
                                        [prompt_ids[rows[r][0]] for r in chunk], rewards, params,
                                        seeds=[seeds[r] for r in chunk])
        gens = [e.generation for e in episodes]
        for j, r in enumerate(chunk):
            i, k = rows[r]
            out[i][k] = Response(gens[j].text, k, seeds[r], {label: v[j].item() for label, v in parts.items()},
                                 total[j].item(), len(gens[j].response_ids), bool(gens[j].finished))
        bar.update(len(chunk))
    bar.close()
    return out


# ------------------------------------------------------------------------------------------------- writers
def prompt_json(example) -> str | list[dict[str, str]]:
    """The prompt as alignkit's data records hold it: a lone user turn as its text, else the message list (a
    system turn included, so no "system" key is needed)."""
    turns = example.prompt
    if len(turns) == 1:
        return turns[0].content
    return [{"role": m.role, "content": m.content} for m in turns]


def candidates(responses: Sequence[Response]) -> tuple[list[Response], int]:
    """The responses that can stand in a preference record, best first by total (a stable sort: ties keep their
    sample order): blank ones left out, a text sampled again left out after its first (best-ranked) copy; and how
    many such repeats were left out."""
    ordered = sorted((r for r in responses if r.text.strip()), key=lambda r: -r.total)
    kept: list[Response] = []
    for response in ordered:
        if all(response.text != other.text for other in kept):
            kept.append(response)
    return kept, len(ordered) - len(kept)


def raw_records(prompt, responses: Sequence[Response], g) -> tuple[list[dict], Counter]:
    """Every response as it came, with its scores."""
    return [{"prompt": prompt, "response": r.text, "sample": r.sample, "seed": r.seed, "scores": r.scores,
             "total": r.total, "response_tokens": r.tokens, "eos": r.eos} for r in responses], Counter()


def pair_records(prompt, responses: Sequence[Response], g) -> tuple[list[dict], Counter]:
    """The best against the worst candidate, when the best is strictly better by at least ``g.min_margin``."""
    ranked, _ = candidates(responses)
    if len(ranked) < 2:
        return [], Counter(skipped_alike=1)
    best, worst = ranked[0], ranked[-1]
    margin = best.total - worst.total
    if margin <= 0:
        return [], Counter(skipped_ties=1)
    if margin < g.min_margin:
        return [], Counter(skipped_margin=1)
    sides = {"chosen": best, "rejected": worst}
    return [{"prompt": prompt, "chosen": best.text, "rejected": worst.text,
             "scores": {k: r.scores for k, r in sides.items()}, "totals": {k: r.total for k, r in sides.items()},
             "seeds": {k: r.seed for k, r in sides.items()}, "samples": {k: r.sample for k, r in sides.items()}}], Counter()


def ranked_records(prompt, responses: Sequence[Response], g) -> tuple[list[dict], Counter]:
    """Every candidate, best first; ``tied_neighbours`` counts the neighbours of a written list that tie (the
    ranking losses still read them as ordered)."""
    ranked, repeats = candidates(responses)
    if len(ranked) < 2:
        return [], Counter(skipped_alike=1)
    if ranked[0].total == ranked[-1].total:
        return [], Counter(skipped_ties=1)
    ties = sum(a.total == b.total for a, b in zip(ranked, ranked[1:]))
    return [{"prompt": prompt, "responses": [r.text for r in ranked], "scores": [r.scores for r in ranked],
             "totals": [r.total for r in ranked], "seeds": [r.seed for r in ranked],
             "samples": [r.sample for r in ranked]}], Counter(dropped_repeats=repeats, tied_neighbours=ties)


WRITERS = {"raw": raw_records, "pairs": pair_records, "ranked": ranked_records}
# the counts each output reports (zeros included), beside prompts / responses / records
COUNTS = {"raw": (),
          "pairs": ("skipped_ties", "skipped_margin", "skipped_alike", "duplicates_dropped"),
          "ranked": ("skipped_ties", "skipped_alike", "duplicates_dropped", "dropped_repeats", "tied_neighbours")}
# the fields a trainer reads (generate's pairs and ranked lists, cai's SFT records and pairs): what makes two records equal
TRAINED = ("prompt", "response", "messages", "chosen", "rejected", "responses")


def drop_repeated_records(records: list[dict]) -> tuple[list[dict], int]:
    """Records whose trained fields equal an earlier record's left out; (kept, how many were left out)."""
    seen: set[str] = set()
    kept = []
    for record in records:
        key = json.dumps([record.get(k) for k in TRAINED])
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept, len(records) - len(kept)


# ------------------------------------------------------------------------------------------------- summary
def summarize(cfg, engine: str, report, answers: list[list[Response]], records: list[dict], counts: Counter) -> dict:
    g = cfg.generate
    flat = [r for responses in answers for r in responses]
    labels = [s.label for s in cfg.rewards]
    summary: dict[str, Any] = {
        "recipe": "generate", "model": cfg.model.name_or_path, "data": cfg.data.train, "output": g.output,
        "engine": engine, "sampling": {"samples": g.samples, "temperature": g.temperature,
                                       "max_new_tokens": g.max_new_tokens, "seed": g.seed},
        "prompts": len(answers), "prompts_truncated": report.truncated, "prompts_dropped": report.dropped,
        "responses": len(flat), "blank_responses": sum(not r.text.strip() for r in flat), "records": len(records),
        **{k: counts[k] for k in COUNTS[g.output]},
        "mean_scores": {label: fmean(r.scores[label] for r in flat) if flat else None for label in labels}
                       | {"total": fmean(r.total for r in flat) if flat else None},
        "response_tokens": fmean(r.tokens for r in flat) if flat else None,
        "eos_rate": fmean(float(r.eos) for r in flat) if flat else None,
    }
    if g.output == "pairs":
        margins = [r["totals"]["chosen"] - r["totals"]["rejected"] for r in records]
        summary["mean_margin"] = fmean(margins) if margins else None
    return summary


def print_summary(summary: dict) -> None:
    from .eval.table import print_table

    rows = {k: v for k, v in summary.items() if k not in ("mean_scores", "sampling", "file", "run_dir", "recipe")}
    rows.update({f"mean {label}": v for label, v in summary["mean_scores"].items()})
    print_table(f"alignkit generate: {summary['output']}", rows)
    if not summary["records"]:
        print("no records written: every prompt was skipped (see the counts above)")
    print(f"data: {summary['file']}")
