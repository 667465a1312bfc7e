"""KTO (Ethayarajh et al. 2024): preference optimisation from unpaired desirable / undesirable examples.

Loop per optimizer step: the step's examples -> reference point z0 from mismatched (prompt, completion) pairs of
the whole step -> forward, summed completion log-probs -> ``kto_loss`` against cached reference log-probs ->
``aggregate`` over the step's example count -> backward -> clip, step, schedule -> log, eval, checkpoint.

Departures from the paper:
1. The mismatched pairs that estimate z0 are fixed: example i's prompt with example (i+1)'s completion (mod N),
   so their reference log-probs can be cached like the matched ones; z0 is computed over the whole optimizer step
   (all micro-batches, all ranks), so micro-batching does not change it.
2. Reference log-probs are computed once before training and cached with the run (``kto.reference: cached``).
3. With LoRA the reference is the base model with the adapter disabled.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..batch import SequenceBatch
from ..config import KTOConfig
from ..data.cache import cached
from ..data.collate import pad_sequences
from ..data.prepare import UnpairedRow, load_split, tokenize_unpaired
from ..data.templates import Tokenized
from ..losses import aggregate, kto_loss, kto_reference_point, step_denominator
from ..models import (
    Reference,
    count_parameters,
    load_causal_lm,
    load_reference,
    load_tokenizer,
    reference_cache,
)
from ..ops import sequence_logps
from ..runtime import (
    finish_run,
    micro_step,
    prepare_training,
    sample_rows,
    save_final,
    start_run,
    step_holds,
    step_indices,
)

REFERENCE_CACHE = "reference_logps.pt"


def mismatched(rows: list[UnpairedRow], max_length: int) -> list[Tokenized]:
    """Row i's prompt followed by row (i+1)'s completion: the pairs KTO uses to estimate KL(pi || pi_ref)."""
    out = []
    for i, row in enumerate(rows):
        other = rows[(i + 1) % len(rows)].sequence
        prompt_len = row.sequence.loss_mask.index(1)
        completion_start = other.loss_mask.index(1)
        ids = (row.sequence.input_ids[:prompt_len] + other.input_ids[completion_start:])[:max_length]
        mask = ((0,) * prompt_len + other.loss_mask[completion_start:])[:max_length]
        out.append(Tokenized(ids, mask, truncated=len(ids) == max_length))
    return out


class Scorer:
    """Summed completion log-probs of matched and mismatched sequences, under the policy and the reference."""

    def __init__(self, rows: dict[str, list[UnpairedRow]], kl_rows: dict[str, list[Tokenized]], pad_id: int,
                 reference: Reference | None, cache: dict[str, torch.Tensor] | None, row_length: int | None) -> None:
        self.rows, self.kl_rows, self.pad_id, self.reference, self.cache = rows, kl_rows, pad_id, reference, cache
        self.row_length = row_length  # packed rows of this many tokens (data.packing), or None: padded

    def batch(self, split: str, indices: list[int], kl: bool = False) -> SequenceBatch:
        source = self.kl_rows[split] if kl else [r.sequence for r in self.rows[split]]
        return pad_sequences([source[i] for i in indices], indices, self.pad_id, self.row_length)

    def reference_logps(self, split: str, batch: SequenceBatch, kl: bool = False) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[f"{split}_kl" if kl else split][batch.index.cpu()].to(batch.input_ids.device)
        return self.reference.sequence_logps(batch)[0]

    def desirable(self, split: str, batch: SequenceBatch) -> torch.Tensor:
        return torch.tensor([self.rows[split][i].desirable for i in batch.index.tolist()], device=batch.input_ids.device)


def policy_logps(model, batch: SequenceBatch) -> torch.Tensor:
    return sequence_logps(model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.loss_mask,
                          batch.segments)[0]


@torch.no_grad()
def step_reference_point(acc, model, scorer: Scorer, split: str, micro_indices: list[list[int]]) -> torch.Tensor:
    """z0 over every mismatched pair of the step, on every rank (gathered before the mean)."""
    gaps = []
    for indices in micro_indices:
        batch = scorer.batch(split, indices, kl=True).to(acc.device)
        gaps.append(policy_logps(model, batch) - scorer.reference_logps(split, batch, kl=True))
    gaps = acc.gather(torch.cat(gaps))
    return kto_reference_point(gaps, torch.zeros_like(gaps))


def batch_stats(loss: torch.Tensor, logps: torch.Tensor, stats: dict[str, torch.Tensor],
                desirable: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums (over the micro-batch) of what gets logged; divided by counts at log time."""
    d = desirable.float()
    return {"loss": loss.detach().sum(), "n_desirable": d.sum(), "n_undesirable": (1 - d).sum(),
            "rewards_desirable": (stats["rewards"] * d).sum(), "rewards_undesirable": (stats["rewards"] * (1 - d)).sum(),
            "logps_desirable": (logps.detach() * d).sum(), "logps_undesirable": (logps.detach() * (1 - d)).sum()}


def summarise(sums: dict[str, float], n: float, kl_ref: float, split: str) -> dict[str, float]:
    """Logged means; eval lines carry an "_eval" suffix so they share a panel with their training twin."""
    nd, nu = max(sums["n_desirable"], 1.0), max(sums["n_undesirable"], 1.0)
    rd, ru = sums["rewards_desirable"] / nd, sums["rewards_undesirable"] / nu
    tail = "_eval" if split == "eval" else ""
    return {f"loss/{split}": sums["loss"] / n, f"margin/{split}": rd - ru,
            f"rewards/desirable{tail}": rd, f"rewards/undesirable{tail}": ru,
            f"logps/desirable{tail}": sums["logps_desirable"] / nd,
            f"logps/undesirable{tail}": sums["logps_undesirable"] / nu, f"kl/reference_point{tail}": kl_ref}


@torch.no_grad()
def evaluate(cfg: KTOConfig, acc, model, scorer: Scorer) -> dict[str, float]:
    n = len(scorer.rows["eval"])
    if not n:
        return {}
    model.eval()
    chunks = [list(range(s, min(s + cfg.train.batch_size, n))) for s in range(0, n, cfg.train.batch_size)]
    kl_ref = step_reference_point(acc, model, scorer, "eval", chunks)
    sums: dict[str, float] = {}
    for indices in chunks:
        batch = scorer.batch("eval", indices).to(acc.device)
        logps = policy_logps(model, batch)
        desirable = scorer.desirable("eval", batch)
        loss, stats = kto_loss(logps, scorer.reference_logps("eval", batch), desirable, kl_ref, beta=cfg.kto.beta,
                               desirable_weight=cfg.kto.desirable_weight, undesirable_weight=cfg.kto.undesirable_weight)
        for key, value in batch_stats(loss, logps / batch.loss_mask[:, 1:].sum(-1), stats, desirable).items():
            sums[key] = sums.get(key, 0.0) + value.item()
    model.train()
    return summarise(sums, n, kl_ref.item(), "eval")


def train(cfg: KTOConfig, resume: str | bool | None = None) -> dict:
    """Run KTO as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "kto", resume)
    acc = run.accelerator
    tokenizer = load_tokenizer(cfg.model, announce=run.print)
    model = load_causal_lm(cfg.model, tokenizer, acc.device)
    model.train()
    pad_id = tokenizer.pad_token_id

    train_examples, eval_examples = load_split(cfg.data, "unpaired", cfg.train.seed)
    train_rows, train_report = cached(tokenize_unpaired, train_examples, tokenizer, cfg.data, "train")
    eval_rows, eval_report = cached(tokenize_unpaired, eval_examples, tokenizer, cfg.data, "eval")
    run.print(train_report.describe("train"))
    run.print(eval_report.describe("eval"))
    sample_prompts = ([e.prompt for e in eval_examples], [e.completion[-1].content for e in eval_examples])
    rows = {"train": train_rows, "eval": eval_rows}
    kl_rows = {name: mismatched(r, cfg.data.max_length) if r else [] for name, r in rows.items()}

    reference = load_reference(cfg.model, cfg.kto.reference_model, model, tokenizer, acc.device, acc.autocast)
    cache = None
    if cfg.kto.reference == "cached":
        sequences = {name: [r.sequence for r in rs] for name, rs in rows.items()}
        sequences.update({f"{name}_kl": seqs for name, seqs in kl_rows.items()})
        cache = reference_cache(run.dir / REFERENCE_CACHE, reference, sequences, pad_id, cfg.train.batch_size * 2,
                                acc.device, write=run.is_main, reuse=bool(run.resume_from))
        reference = None
    model, optimizer, scheduler, steps, start = prepare_training(run, model, cfg.train, len(train_rows))
    if reference is not None and reference.policy is not None:
        reference.policy = model
    scorer = Scorer(rows, kl_rows, pad_id, reference, cache, cfg.data.row_length)
    trainable, total = count_parameters(model)
    n_good = sum(r.desirable for r in train_rows)
    run.print(f"kto (beta {cfg.kto.beta}): {len(train_rows)} examples ({n_good} desirable, "
              f"{len(train_rows) - n_good} undesirable), {steps} steps of {step_holds(cfg.data, cfg.train, 'examples')}, {trainable:,} of {total:,} trainable")
    if start == 0:
        run.log.log(0, evaluate(cfg, acc, model, scorer))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc="kto", disable=not (cfg.run.progress and run.is_main))
    clock, seen = time.time(), 0
    for step in range(start + 1, steps + 1):
        # 1. the step's examples, its reference point z0 and its example count
        micro_indices = step_indices(len(train_rows), step, cfg.train.batch_size, cfg.train.grad_accum,
                                     cfg.train.seed, acc.process_index, acc.num_processes)
        kl_ref = step_reference_point(acc, model, scorer, "train", micro_indices)
        micro = [scorer.batch("train", idx).to(acc.device) for idx in micro_indices]
        denominator = acc.reduce(step_denominator([torch.ones(len(b.index)) for b in micro], "seq_mean_token_mean")
                                 .to(acc.device), "sum")  # examples in the step, over every process
        # 2. forward, KTO loss per example, backward
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro):
            with micro_step(acc, model, last=i == len(micro) - 1):
                logps = policy_logps(model, batch)
                desirable = scorer.desirable("train", batch)
                loss, stats = kto_loss(logps, scorer.reference_logps("train", batch), desirable, kl_ref,
                                       beta=cfg.kto.beta, desirable_weight=cfg.kto.desirable_weight,
                                       undesirable_weight=cfg.kto.undesirable_weight)
                acc.backward(aggregate(loss, torch.ones_like(loss), denominator, "seq_mean_token_mean")
                             * acc.num_processes)
            per_token = logps.detach() / batch.loss_mask[:, 1:].sum(-1).clamp(min=1)
            for key, value in batch_stats(loss, per_token, stats, desirable).items():
                sums[key] = sums.get(key, 0) + value
        # 3. clip, step, schedule
        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
        totals = {k: acc.reduce(v, "sum").item() for k, v in sums.items()}
        if run.step_is_finite(step, {"KTO loss": totals["loss"], "grad_norm": grad_norm}):
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += int(denominator.item())
        # 4. log, eval, checkpoint
        if step % cfg.run.log_every == 0 or step == steps:
            run.log.log(step, {**summarise(totals, denominator.item(), kl_ref.item(), "train"),
                               "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                               "speed/examples_per_s": seen / max(time.time() - clock, 1e-9)})
            bar.set_postfix(loss=f"{run.log.last('loss/train'):.3f}")
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, evaluate(cfg, acc, model, scorer))
        if cfg.run.sample_every and step % cfg.run.sample_every == 0 and step != steps:
            sample_rows(run, model, tokenizer, *sample_prompts, step, cfg.run)
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.checkpoint(step, {}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    run.checkpoint(steps, {}, cfg.run.keep_checkpoints)
    final_eval = evaluate(cfg, acc, model, scorer)
    run.log.log(steps, final_eval)
    sample_rows(run, model, tokenizer, *sample_prompts, steps, cfg.run)
    save_final(run, model, tokenizer, cfg.run)
    summary = {"steps": steps, "beta": cfg.kto.beta, "final": {"loss/train": run.log.last("loss/train"), **final_eval},
               "examples_per_s": seen / max(time.time() - clock, 1e-9),
               "data": {"train": train_report.__dict__, "eval": eval_report.__dict__, "desirable": n_good},
               "parameters": {"trainable": trainable, "total": total}}
    headline = [("steps", steps), ("eval margin (desirable - undesirable reward)", final_eval.get("margin/eval", math.nan)),
                ("eval KL reference point", final_eval.get("kl/reference_point_eval", math.nan)),
                ("final model", str(Path(run.dir) / "final"))]
    return finish_run(run, summary, headline)
