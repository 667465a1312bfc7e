"""Supervised fine-tuning: maximise the likelihood of the response tokens (the first stage of InstructGPT).

Loop per optimizer step: take the step's micro-batches -> count the step's target tokens -> forward, per-token NLL,
``aggregate`` over the whole step's count, backward each micro-batch -> clip, step, schedule -> log, eval, sample,
checkpoint.

Departures from the plain recipe:
1. The loss is the mean over every target token of the optimizer step (not a mean of per-micro-batch means), so
   batch 8 x accumulation 1 and batch 1 x accumulation 8 train identically.
2. Only assistant turns are targets (``data.loss_on``); the prompt and template markup are not, unless
   ``data.loss_on: all`` (continued pretraining on dialogues). Text records (``{"text"}``, ``.txt``) train every
   token, split into ``data.max_length`` chunks (pack them with ``data.packing``).
3. The data order is a pure function of (seed, step), which is what makes ``--resume`` exact.
4. A mixture-of-experts model with the router loss on (``model.router_aux_loss_coef``) adds coef x the router's
   load-balancing loss (Switch Transformer eq. 4), averaged over the step's micro-batches. That loss is a batch
   statistic, so unlike the token loss it depends on the micro-batch size (as in transformers and Megatron);
   packed rows (no attention mask) count their padding tail in it.
"""

from __future__ import annotations

import math
import time

import torch

from ..batch import SFTBatch
from ..config import SFTConfig
from ..data.cache import cached
from ..data.collate import pack_batch, pad_batch
from ..data.prepare import load_split, sample_prompts, tokenize_sft
from ..losses import aggregate, sft_loss, step_denominator
from ..models import count_parameters, load_causal_lm, load_tokenizer
from ..moe import router_aux_coef
from ..ops import forward_token_logps, forward_token_logps_aux
from ..replay import load_replay_examples, mix
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


def moe_step_loss(model, batch: SFTBatch, denominator: torch.Tensor, aux_weight: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sft_step_loss`` for a mixture-of-experts model: this micro-batch's share of the token loss plus
    ``aux_weight`` x the router load-balancing loss of the same forward (``aux_weight``: the coefficient over the
    step's micro-batches on all processes); its summed NLL; and that balancing loss, detached (moe/aux_loss)."""
    logps, aux = forward_token_logps_aux(model, batch.input_ids, batch.attention_mask, batch.position_ids)
    per_token, stats = sft_loss(logps, batch.loss_mask[:, 1:])
    return aggregate(per_token, batch.loss_mask[:, 1:], denominator) + aux_weight * aux, stats["nll_sum"], aux.detach()


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
    model = load_causal_lm(cfg.model, tokenizer, acc.device, router_aux=True)
    model.train()
    aux_coef = router_aux_coef(model)  # > 0 only for a mixture-of-experts model with the router loss on

    train_examples, eval_examples = load_split(cfg.data, "sft", cfg.train.seed)
    if cfg.replay.data is not None:  # forgetting: earlier data mixed in, each token weighing the same
        n = len(train_examples)
        train_examples = mix(train_examples, load_replay_examples(cfg.replay, cfg.data), cfg.replay.ratio, cfg.train.seed)
        run.print(f"replay: {len(train_examples) - n} examples of {cfg.replay.data} mixed into {n} training examples")
    train_rows, train_report = cached(tokenize_sft, train_examples, tokenizer, cfg.data, "train")
    eval_rows, eval_report = cached(tokenize_sft, eval_examples, tokenizer, cfg.data, "eval")
    run.print(train_report.describe("train"))
    run.print(eval_report.describe("eval"))
    prompts, references = sample_prompts(eval_examples, cfg.run.num_samples)

    model, optimizer, scheduler, steps, start = prepare_training(run, model, cfg.train, len(train_rows))
    trainable, total = count_parameters(model)
    run.print(f"sft: {len(train_rows)} train examples, {len(eval_rows)} eval, {steps} steps of "
              f"{step_holds(cfg.data, cfg.train, 'examples')}, "
              f"{trainable:,} of {total:,} parameters trainable, device {acc.device}")
    if aux_coef:
        run.print(f"moe: + {aux_coef} x the router load-balancing loss (moe/aux_loss)")

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
        nll_sum, aux_sum = torch.zeros((), device=acc.device), torch.zeros((), device=acc.device)
        for i, batch in enumerate(micro):
            with micro_step(acc, model, last=i == len(micro) - 1):
                if aux_coef:  # + the router's balancing loss, a mean over the step's micro-batches on all ranks
                    loss, nll, aux = moe_step_loss(model, batch, denominator, aux_coef / (len(micro) * acc.num_processes))
                    aux_sum += aux
                else:
                    loss, nll = sft_step_loss(model, batch, denominator)
                acc.backward(loss * acc.num_processes)  # DDP averages gradients over ranks; undo that
            nll_sum += nll
        moe = {"moe/aux_loss": (acc.reduce(aux_sum, "sum") / (len(micro) * acc.num_processes)).item()} if aux_coef else {}
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
                               "epoch": step * cfg.train.batch_size * cfg.train.grad_accum / max(1, len(train_rows)),
                               **moe})
            bar.set_postfix(loss=f"{step_loss.item():.3f}", tok_s=f"{tokens_seen / elapsed:.0f}")
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, evaluate_loss(model, eval_rows, pad_id, cfg.train.batch_size, acc.device))
        if cfg.run.sample_every and step % cfg.run.sample_every == 0 and step != steps:
            sample_rows(run, model, tokenizer, prompts, references, step, cfg.run)
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.checkpoint(step, {"tokens_seen": tokens_seen}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    run.checkpoint(steps, {"tokens_seen": tokens_seen}, cfg.run.keep_checkpoints)
    final_eval = evaluate_loss(model, eval_rows, pad_id, cfg.train.batch_size, acc.device)
    if final_eval:
        run.log.log(steps, final_eval)
    sample_rows(run, model, tokenizer, prompts, references, steps, cfg.run)
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
