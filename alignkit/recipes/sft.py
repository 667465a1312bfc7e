"""Supervised fine-tuning: maximise the likelihood of the response tokens (the first stage of InstructGPT).

Loop per optimizer step: take the step's micro-batches -> count the step's target tokens -> forward, per-token NLL,
``aggregate`` over the whole step's count, backward each micro-batch -> clip, step, schedule -> log, eval, sample,
checkpoint.

Departures from the plain recipe:
1. The loss is the mean over every target token of the optimizer step (not a mean of per-micro-batch means), so
   batch 8 x accumulation 1 and batch 1 x accumulation 8 train identically.
2. Only assistant turns are targets (``data.loss_on``); the prompt and template markup never are.
3. The data order is a pure function of (seed, step), which is what makes ``--resume`` exact.
"""

from __future__ import annotations

import math
import time

import torch

from ..batch import SFTBatch
from ..config import SFTConfig
from ..data.cache import cached
from ..data.collate import pack_batch, pad_batch
from ..data.prepare import load_split, tokenize_sft
from ..losses import aggregate, sft_loss, step_denominator
from ..models import count_parameters, load_causal_lm, load_tokenizer
from ..ops import forward_token_logps
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


def sft_step_loss(model, batch: SFTBatch, denominator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This micro-batch's share of the step loss, and its summed NLL (for logging)."""
    logps = forward_token_logps(model, batch.input_ids, batch.attention_mask, batch.position_ids)
    per_token, stats = sft_loss(logps, batch.loss_mask[:, 1:])
    return aggregate(per_token, batch.loss_mask[:, 1:], denominator), stats["nll_sum"]


def make_batches(rows: list, indices: list[int], pad_id: int, row_length: int | None) -> SFTBatch:
    """One micro-batch: the examples right-padded, or packed into rows of ``row_length`` tokens."""
    chosen = [rows[i] for i in indices]
    return pack_batch(chosen, row_length, pad_id) if row_length else pad_batch(chosen, pad_id)


@torch.no_grad()
def evaluate_loss(model, rows: list, pad_id: int, batch_size: int, device: torch.device) -> dict[str, float]:
    """Token-mean NLL and perplexity over the eval rows."""
    if not rows:
        return {}
    model.eval()
    nll, tokens = 0.0, 0.0
    for start in range(0, len(rows), batch_size):
        batch = pad_batch(rows[start : start + batch_size], pad_id).to(device)
        logps = forward_token_logps(model, batch.input_ids, batch.attention_mask, batch.position_ids)
        per_token, stats = sft_loss(logps, batch.loss_mask[:, 1:])
        nll += stats["nll_sum"].item()
        tokens += stats["tokens"].item()
    model.train()
    loss = nll / max(tokens, 1)
    return {"loss/eval": loss, "ppl/eval": math.exp(min(loss, 50))}


def train(cfg: SFTConfig, resume: str | bool | None = None) -> dict:
    """Run SFT as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "sft", resume)
    acc = run.accelerator
    tokenizer = load_tokenizer(cfg.model, announce=run.print)
    model = load_causal_lm(cfg.model, tokenizer, acc.device)
    model.train()

    train_examples, eval_examples = load_split(cfg.data, "sft", cfg.train.seed)
    train_rows, train_report = cached(tokenize_sft, train_examples, tokenizer, cfg.data, "train")
    eval_rows, eval_report = cached(tokenize_sft, eval_examples, tokenizer, cfg.data, "eval")
    run.print(train_report.describe("train"))
    run.print(eval_report.describe("eval"))
    sample_prompts = [e.messages[:-1] for e in eval_examples[: cfg.run.num_samples]]
    sample_refs = [e.messages[-1].content for e in eval_examples[: cfg.run.num_samples]]

    model, optimizer, scheduler, steps, start = prepare_training(run, model, cfg.train, len(train_rows))
    trainable, total = count_parameters(model)
    run.print(f"sft: {len(train_rows)} train examples, {len(eval_rows)} eval, {steps} steps of "
              f"{step_holds(cfg.data, cfg.train, 'examples')}, "
              f"{trainable:,} of {total:,} parameters trainable, device {acc.device}")

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc="sft", disable=not (cfg.run.progress and run.is_main))
    pad_id = tokenizer.pad_token_id
    tokens_seen = 0
    clock = time.time()
    for step in range(start + 1, steps + 1):
        # 1. this step's micro-batches and the step's target-token count (the one denominator)
        micro = [make_batches(train_rows, idx, pad_id, cfg.data.row_length).to(acc.device) for idx in
                 step_indices(len(train_rows), step, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.seed,
                              acc.process_index, acc.num_processes)]
        denominator = acc.reduce(step_denominator([b.loss_mask[:, 1:] for b in micro]).to(acc.device), "sum")
        # 2. forward / backward each micro-batch; gradients sync only on the last one
        nll_sum = torch.zeros((), device=acc.device)
        for i, batch in enumerate(micro):
            with micro_step(acc, model, last=i == len(micro) - 1):
                loss, nll = sft_step_loss(model, batch, denominator)
                acc.backward(loss * acc.num_processes)  # DDP averages gradients over ranks; undo that
            nll_sum += nll
        # 3. clip, step, schedule
        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
        step_loss = acc.reduce(nll_sum, "sum") / denominator
        if run.step_is_finite(step, {"loss": step_loss, "grad_norm": grad_norm}):
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += int(sum(b.input_ids.numel() for b in micro))

        # 4. log, eval, sample, checkpoint
        if step % cfg.run.log_every == 0 or step == steps:
            elapsed = max(time.time() - clock, 1e-9)
            run.log.log(step, {"loss/train": step_loss.item(), "lr": scheduler.get_last_lr()[0],
                               "grad_norm": float(grad_norm), "speed/tokens_per_s": tokens_seen / elapsed,
                               "epoch": step * cfg.train.batch_size * cfg.train.grad_accum / max(1, len(train_rows))})
            bar.set_postfix(loss=f"{step_loss.item():.3f}", tok_s=f"{tokens_seen / elapsed:.0f}")
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, evaluate_loss(model, eval_rows, pad_id, cfg.train.batch_size, acc.device))
        if cfg.run.sample_every and step % cfg.run.sample_every == 0 and step != steps:
            sample_rows(run, model, tokenizer, sample_prompts, sample_refs, step, cfg.run)
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.checkpoint(step, {"tokens_seen": tokens_seen}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    run.checkpoint(steps, {"tokens_seen": tokens_seen}, cfg.run.keep_checkpoints)
    final_eval = evaluate_loss(model, eval_rows, pad_id, cfg.train.batch_size, acc.device)
    if final_eval:
        run.log.log(steps, final_eval)
    sample_rows(run, model, tokenizer, sample_prompts, sample_refs, steps, cfg.run)
    save_final(run, model, tokenizer, cfg.run)
    elapsed = time.time() - clock
    best = run.log.best("loss/eval")
    summary = {
        "steps": steps,
        "final": {"loss/train": run.log.last("loss/train"), **final_eval},
        "best": {"loss/eval": best[0], "step": best[1]} if best else {},
        "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
        "train_time_s": round(elapsed, 2),
        "data": {"train": train_report.__dict__, "eval": eval_report.__dict__, "packed_row_length": cfg.data.row_length},
        "parameters": {"trainable": trainable, "total": total},
    }
    headline = [("steps", steps), ("train loss", run.log.last("loss/train")),
                ("eval loss", final_eval.get("loss/eval", "n/a")), ("eval ppl", final_eval.get("ppl/eval", "n/a")),
                ("tokens/s", summary["tokens_per_s"]), ("final model", str(run.dir / "final"))]
    return finish_run(run, summary, headline)
