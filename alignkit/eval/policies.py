"""Policy evaluation: several models answer one prompt set with the same sampling settings and seeds; every answer is
scored by every reward source, and the models are compared with intervals.

Per model: each source's mean and std over answers, with a 95% percentile-bootstrap interval over prompts (a
prompt's score is the mean over its ``eval.samples`` answers); the win rate against ``eval.baseline`` judged by
``eval.judge`` (per prompt: 1 win, 0.5 tie, 0 loss; bootstrap interval over prompts); pass@1 / pass@k with
``eval.pass_threshold``; best-of-N with ``eval.rerank_by`` (the judge's score of the answer a reranker, such as a
process reward model, picks from each prompt's samples, next to a single sample's); KL(model || reference) on the model's own answers; perplexity on held-out text; response
length, EOS rate, distinct-1/2 and the repetition rate. The same bootstrap seed is used for every model, so the
intervals are paired over prompts. A blind side-by-side sheet for people (``eval.human_sheet``) and filled sheets
read back (``eval.ratings``) complete the picture.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean, pstdev
from typing import Any

import torch

from .process import best_of_n
from .stats import bootstrap_interval, distinct_n, pass_at_k_mean, repetition_rate, win_rate
from .table import print_table


def eval_policy(cfg) -> dict:
    """``alignkit eval`` with ``eval.mode: policy``: answer ``data.train``'s prompts with every model of
    ``models`` and compare them; writes summary.json, samples.jsonl (every answer with its scores), the sheet,
    report.html; prints the comparison table."""
    from ..checkpoint import atomic_write_json, atomic_write_text
    from ..data.prepare import load_prompts
    from ..models import load_causal_lm, load_tokenizer, resolve_device
    from ..report import write_report
    from ..rewards import RewardSet
    from ..runtime import open_run_dir

    e = cfg.eval
    run_dir = open_run_dir(cfg, "eval")
    device = resolve_device(cfg.model.device)
    examples = load_prompts(cfg.data, e.max_prompts)
    rewards = RewardSet(cfg.rewards, device, cfg.data.max_length + e.max_new_tokens)
    reference = None
    if e.reference is not None:
        ref_cfg = cfg.model.model_copy(update={"name_or_path": e.reference})
        reference = load_causal_lm(ref_cfg, load_tokenizer(ref_cfg), device, trainable=False)
    judge = e.judge or cfg.rewards[0].label
    results: dict[str, dict[str, Any]] = {}
    answers: dict[str, list[dict]] = {}
    for name, path in cfg.policies.items():
        model_cfg = cfg.model.model_copy(update={"name_or_path": path})
        tokenizer = load_tokenizer(model_cfg)
        model = load_causal_lm(model_cfg, tokenizer, device, trainable=False)
        results[name], answers[name] = evaluate_model(cfg, model, tokenizer, examples, rewards, reference, judge)
        del model
    baseline = e.baseline or next(iter(results))
    for name in results:
        if name != baseline:
            results[name]["win_rate"] = win_rate(_per_prompt(answers[name], judge, e.samples),
                                                 _per_prompt(answers[baseline], judge, e.samples),
                                                 resamples=e.bootstrap, seed=e.seed)
    summary: dict[str, Any] = {"mode": "policy", "data": cfg.data.train, "prompts": len(examples), "judge": judge,
                               "baseline": baseline, "samples_per_prompt": e.samples, "rerank_by": e.rerank_by,
                               "sampling": {"max_new_tokens": e.max_new_tokens, "temperature": e.temperature},
                               "interval": f"95% percentile bootstrap over prompts ({e.bootstrap} resamples)",
                               "models": results}
    prompts = [x.prompt[-1].content for x in examples]
    if e.human_sheet:
        from .sheet import write_sheet

        firsts = {name: [rows[i * e.samples]["response"] for i in range(len(examples))] for name, rows in answers.items()}
        paths = write_sheet(run_dir, prompts, firsts, baseline, items_per_model=e.human_sheet, seed=e.seed)
        summary["human_sheet"] = {k: str(v) for k, v in paths.items()}
    if e.ratings:
        from .sheet import read_ratings

        summary["human_ratings"] = read_ratings([Path(p) for p in e.ratings], Path(e.ratings_key), baseline,
                                                resamples=e.bootstrap, seed=e.seed)
    summary["run_dir"] = str(run_dir)
    rows = [{"model": name, **row} for name, model_rows in answers.items() for row in model_rows]
    atomic_write_text(run_dir / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(run_dir / "summary.json", summary)
    tables = eval_tables(summary)
    write_report(run_dir, {k: v for k, v in summary.items() if k != "models"}, rows, eval_tables=tables)
    for table in tables:
        print_comparison(table)
    print(f"report: {run_dir / 'report.html'}")
    return summary


@torch.no_grad()
def evaluate_model(cfg, model, tokenizer, examples, rewards, reference, judge: str) -> tuple[dict, list[dict]]:
    """One model's figures (see the module docstring) and its answers, ``eval.samples`` per prompt in prompt
    order, each with every source's score."""
    from ..rollout.core import rollout_seeds, tokenize_prompts
    from ..rollout.engines import HFEngine
    from ..rollout.env import play_of
    from ..rollout.evaluate import answer
    from ..sampling import SamplingParams

    e = cfg.eval
    play = play_of(cfg.environment, tokenizer)  # per model: the tools render through its own chat template
    kept, prompt_ids, _ = tokenize_prompts(examples, tokenizer, cfg.data, cfg.data.train, play.tools)
    if len(kept) != len(examples):
        raise ValueError(f"{cfg.data.train}: {len(examples) - len(kept)} prompts are longer than data.max_length = "
                         f"{cfg.data.max_length} for this model's tokenizer; every model must answer the same prompts")
    params = SamplingParams(max_new_tokens=e.max_new_tokens, temperature=e.temperature)
    engine = HFEngine(None, tokenizer, batch_size=e.batch_size)
    rows, gens_all = [], []
    for k in range(e.samples):  # sample k of every prompt is seeded alike for every model
        seeds = rollout_seeds(e.seed, k, 0, len(examples)) if e.temperature > 0 else None
        episodes, total, parts = answer(engine, model, examples, prompt_ids, rewards, params, seeds=seeds, play=play)
        gens = [x.generation for x in episodes]
        gens_all.append(gens)
        for i, (g, x) in enumerate(zip(gens, episodes)):
            rows.append((i, k, {"prompt": examples[i].prompt[-1].content, "sample": k, "response": x.text,
                                "response_tokens": sum(g.mask) if g.mask else len(g.response_ids), "eos": bool(g.finished),
                                "total": total[i].item(), **{label: v[i].item() for label, v in parts.items()},
                                **({e.group_by: examples[i].fields.get(e.group_by)} if e.group_by else {}),
                                **({"transcript": tokenizer.decode(g.response_ids), "turns": x.turns,
                                    "tool_calls": x.state.get("tool_calls", 0),
                                    "tool_errors": x.state.get("tool_errors", 0)} if play.multi_turn else {})}))
    rows = [r for _, _, r in sorted(rows, key=lambda t: (t[0], t[1]))]
    texts = [r["response"] for r in rows]
    out: dict[str, Any] = {}
    for label in ["total", *(s.label for s in cfg.rewards)]:
        values = [r[label] for r in rows]
        low, high = bootstrap_interval(_per_prompt(rows, label, e.samples), resamples=e.bootstrap, seed=e.seed)
        out[label] = {"mean": fmean(values), "std": pstdev(values), "low": low, "high": high}
        if e.group_by:
            for flag in (True, False):
                side = [r[label] for r in rows if bool(r[e.group_by]) == flag]
                if side:
                    out[label][f"mean[{e.group_by}={str(flag).lower()}]"] = fmean(side)
    if e.pass_threshold is not None:
        solved = _solved(rows, judge, e.pass_threshold, e.samples)
        out["pass@1"] = pass_at_k_mean(solved, 1)
        if e.samples > 1:
            out[f"pass@{e.samples}"] = pass_at_k_mean(solved, e.samples)
            out[f"mean@{e.samples}"] = out[judge]["mean"]
    if e.rerank_by is not None:  # best-of-N: the judge's score of the answer the reranker picks per prompt
        out[f"best_of_{e.samples}"] = best_of_n_figures(rows, e.rerank_by, judge, e.samples, e.bootstrap, e.seed)
    if play.multi_turn:  # episodes in an environment: how the model used its tools
        out["tool_call_rate"] = fmean(float(r["tool_calls"] > 0) for r in rows)
        out["tool_error_rate"] = sum(r["tool_errors"] for r in rows) / max(sum(r["tool_calls"] for r in rows), 1)
        out["turns"] = fmean(r["turns"] for r in rows)
    out["response_tokens"] = fmean(r["response_tokens"] for r in rows)
    out["eos_rate"] = fmean(float(r["eos"]) for r in rows)
    out["distinct1"], out["distinct2"] = distinct_n(texts, 1), distinct_n(texts, 2)
    out["repetition"] = repetition_rate(texts)
    if reference is not None:
        out["kl_to_reference"] = fmean(v for gens in gens_all for v in sequence_kl(model, reference, gens, tokenizer,
                                                                                    e.batch_size))
    if e.perplexity_data is not None:
        out["perplexity"] = held_out_perplexity(cfg, model, tokenizer)
    return out, rows


def best_of_n_figures(rows: list[dict], rerank_by: str, judge: str, samples: int, resamples: int, seed: int) -> dict:
    """Best-of-N over the answers (prompt order, a prompt's samples together): the judge's mean score of each
    prompt's answer that ``rerank_by`` scores highest, with its bootstrap interval over prompts, next to a single
    sample's (the mean over every answer). Marks the picked rows (``picked``) for samples.jsonl."""
    picks, picked = best_of_n([r[rerank_by] for r in rows], [r[judge] for r in rows], samples)
    for i, pick in enumerate(picks):
        for k in range(samples):
            rows[i * samples + k]["picked"] = k == pick
    low, high = bootstrap_interval(picked, resamples=resamples, seed=seed)
    single = fmean(r[judge] for r in rows)
    return {"mean": fmean(picked), "low": low, "high": high, "single_sample": single, "gain": fmean(picked) - single,
            "rerank_by": rerank_by, "judge": judge}


def _per_prompt(rows: list[dict], label: str, samples: int) -> list[float]:
    """Each prompt's mean score over its ``samples`` answers (rows are in prompt order, a prompt's samples together)."""
    return [fmean(r[label] for r in rows[i : i + samples]) for i in range(0, len(rows), samples)]


def _solved(rows: list[dict], judge: str, threshold: float, samples: int) -> list[list[bool]]:
    return [[r[judge] >= threshold for r in rows[i : i + samples]] for i in range(0, len(rows), samples)]


def sequence_kl(model, reference, gens, tokenizer, batch_size: int) -> list[float]:
    """Per answer: sum over its tokens of log pi(y_t) - log ref(y_t), both at temperature 1: a single-sample
    estimate of KL(pi || ref) when the answers were sampled from pi at temperature 1 (with greedy or tempered
    answers it is the log-ratio on those answers, not the KL of the sampling distribution)."""
    from ..ops import masked_sum, response_logps
    from ..sampling import rollout_batch

    out: list[float] = []
    device = next(model.parameters()).device
    for start in range(0, len(gens), batch_size):
        batch = rollout_batch(gens[start : start + batch_size], tokenizer.pad_token_id).to(device)
        logps, _ = response_logps(model, batch)
        ref_logps, _ = response_logps(reference, batch)
        out.extend(masked_sum(logps - ref_logps, batch.response_mask.float(), -1).tolist())
    return out


def held_out_perplexity(cfg, model, tokenizer) -> float:
    """exp(token-mean NLL) of the model on ``eval.perplexity_data``'s response tokens (the SFT loss tokens)."""
    from ..data.loading import load_examples
    from ..data.prepare import resolve_data_source, tokenize_sft
    from ..recipes.sft import evaluate_loss

    data = cfg.data.model_copy(update={"train": cfg.eval.perplexity_data})
    examples = load_examples(resolve_data_source(data.train), "sft", "auto")
    rows, _ = tokenize_sft(examples, tokenizer, data, data.train)
    return evaluate_loss(model, rows, tokenizer.pad_token_id, cfg.eval.batch_size, next(model.parameters()).device)["ppl/eval"]


def eval_tables(summary: dict) -> list[dict]:
    """The comparison as report tables (title, columns, rows): one row per model."""
    models = summary.get("models") or {}
    if not models:
        return []
    judge, baseline = summary["judge"], summary["baseline"]
    first = next(iter(models.values()))
    labels = [k for k, v in first.items() if isinstance(v, dict) and "mean" in v and k != "total"]
    extras = [k for k in ("pass@1", *(k for k in first if k.startswith(("pass@", "mean@")) and k != "pass@1"),
                          "tool_call_rate", "tool_error_rate", "turns",
                          "kl_to_reference", "perplexity", "response_tokens", "eos_rate", "distinct2", "repetition")
              if k in first]
    columns = ["model", *(f"{label} (95% CI)" for label in labels), f"win rate vs {baseline} by {judge} (95% CI)", *extras]
    rows = []
    for name, m in models.items():
        cells: list[Any] = [name]
        cells += [f"{m[label]['mean']:.3f} [{m[label]['low']:.3f}, {m[label]['high']:.3f}]" for label in labels]
        w = m.get("win_rate")
        cells.append(f"{w['win_rate']:.3f} [{w['low']:.3f}, {w['high']:.3f}]" if w else "(baseline)")
        cells += [m.get(k) for k in extras]
        rows.append(cells)
    title = (f"{summary['prompts']} prompts x {summary['samples_per_prompt']} answer(s), "
             f"temperature {summary['sampling']['temperature']}; intervals: {summary['interval']}")
    return [{"title": title, "columns": columns, "rows": rows}, *ratings_tables(summary.get("human_ratings"))]


def ratings_tables(ratings: dict | None) -> list[dict]:
    """The filled human-eval sheets as a table: each model's preference rate over the baseline per dimension
    (ties half, 95% bootstrap interval over ratings), and the raters' agreement."""
    if not ratings:
        return []
    dims = list(next(iter(ratings["models"].values()), {}))
    rows = [[name, *(f"{d['win_rate']:.3f} [{d['low']:.3f}, {d['high']:.3f}] (n={d['n']})" if d["n"] else "no ratings"
                     for d in (per[dim] for dim in dims))] for name, per in ratings["models"].items()]
    agreement = ", ".join(f"{dim} {a['fleiss_kappa']:.2f} over {a['items']} items" if a["fleiss_kappa"] is not None
                          else f"{dim}: one rater per item" for dim, a in ratings["agreement"].items())
    return [{"title": f"people's ratings vs {ratings['baseline']} ({len(ratings['raters'])} raters; Fleiss' kappa: "
                      f"{agreement})", "columns": ["model", *dims], "rows": rows}]


def print_comparison(table: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title=f"alignkit eval: {table['title']}", title_justify="left")
    for column in table["columns"]:
        out.add_column(column, justify="left" if column == "model" else "right")
    for row in table["rows"]:
        out.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    Console(width=max(120, 24 * len(table["columns"]))).print(out)


__all__ = ["eval_policy", "eval_tables", "print_table"]
