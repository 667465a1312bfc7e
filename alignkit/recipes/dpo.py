"""Direct preference optimisation and its family (DPO, cDPO, robust DPO, IPO, SLiC hinge, SimPO, ORPO; + RPO's NLL).

Loop per optimizer step: the step's pairs -> one concatenated forward of chosen and rejected -> summed response
log-probs -> reference log-probs (from the cache) -> PREFERENCE_LOSSES[cfg.dpo.loss] (+ nll_weight x NLL on chosen)
-> ``aggregate`` over the step's pair count -> backward -> clip, step, schedule -> log, eval, checkpoint.

Departures from the papers:
1. Reference log-probs are computed once before training and cached with the run (``reference_logps.pt``), which
   is exact because the reference is frozen; ``dpo.reference: on_the_fly`` recomputes them every step instead.
2. With LoRA the reference is the base model with the adapter disabled: no second copy of the weights.
3. Chosen and rejected go through the model in one concatenated forward (tested equal to two forwards).
4. The loss is the mean over all pairs of the optimizer step, whatever the micro-batching.
5. IPO uses summed log-probs as in the paper's equation (TRL averages per token; say ``loss: ipo`` with a larger
   beta for long responses).
6. A mixture-of-experts policy with the router loss on (``model.router_aux_loss_coef``) adds coef x the router's
   load-balancing loss of the policy's forward (Switch Transformer eq. 4), averaged over the step's micro-batches.
7. Trust-region DPO (``dpo.reference_update``) moves the reference after each optimizer step (soft) or every
   ``reference_every`` steps (hard), on the policy's weights after that step; the moving reference is saved with
   each checkpoint, so a resumed run continues from it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..batch import SequenceBatch
from ..config import DPOConfig, DPOSection
from ..data.cache import cached
from ..data.collate import pad_sequences
from ..data.prepare import PairRow, load_split, tokenize_pairs
from ..losses import PREFERENCE_LOSSES, REFERENCE_FREE, aggregate, nll_term, step_denominator
from ..models import (
    Reference,
    count_parameters,
    load_causal_lm,
    load_reference,
    load_tokenizer,
    move_reference,
    reference_cache,
)
from ..moe import router_aux_coef
from ..ops import sequence_logps, sequence_logps_aux
from ..replay import load_replay
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


def pair_batch(rows: list[PairRow], indices: list[int], pad_id: int, row_length: int | None = None) -> SequenceBatch:
    """Sequences 0..B-1 are the chosen responses, B..2B-1 the rejected ones: one forward scores both (in padded
    rows, or packed into rows of ``row_length`` tokens)."""
    chosen = [rows[i].chosen for i in indices]
    rejected = [rows[i].rejected for i in indices]
    return pad_sequences(chosen + rejected, indices, pad_id, row_length)


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = values.shape[0] // 2
    return values[:half], values[half:]


def pair_loss(cfg: DPOConfig, model, batch: SequenceBatch, ref: tuple[torch.Tensor, torch.Tensor] | None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair loss (B,) and per-pair stats for one micro-batch."""
    logps, lengths = sequence_logps(model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.loss_mask,
                                    batch.segments)
    return preference_loss(cfg.dpo, split_pairs(logps), split_pairs(lengths), ref)


def moe_pair_loss(cfg: DPOConfig, model, batch: SequenceBatch, ref: tuple[torch.Tensor, torch.Tensor] | None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """``pair_loss`` for a mixture-of-experts policy: also the router load-balancing loss of the same forward
    (a scalar, over chosen and rejected together), which the loop weighs into the step's objective."""
    logps, lengths, aux = sequence_logps_aux(model, batch.input_ids, batch.attention_mask, batch.position_ids,
                                             batch.loss_mask, batch.segments)
    return (*preference_loss(cfg.dpo, split_pairs(logps), split_pairs(lengths), ref), aux)


def preference_loss(dpo: DPOSection, logps: tuple[torch.Tensor, torch.Tensor], lengths: tuple[torch.Tensor, torch.Tensor],
                    ref: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The section's preference loss (+ its NLL term) per pair (B,) from summed response log-probs of the chosen and
    rejected responses (B,) each, their lengths and the reference's: what offline and online DPO share."""
    (chosen, rejected), (chosen_len, rejected_len) = logps, lengths
    ref_chosen, ref_rejected = ref if ref is not None else (None, None)
    loss, stats = PREFERENCE_LOSSES[dpo.loss](
        chosen, rejected, ref_chosen, ref_rejected, beta=dpo.beta, label_smoothing=dpo.label_smoothing,
        chosen_lengths=chosen_len, rejected_lengths=rejected_len, simpo_gamma=dpo.simpo_gamma)
    nll = nll_term(chosen, chosen_len)
    if dpo.nll_weight_value:
        loss = loss + dpo.nll_weight_value * nll
    stats = {**stats, "nll": nll.detach(), "logps_chosen": (chosen / chosen_len.clamp(min=1)).detach(),
             "logps_rejected": (rejected / rejected_len.clamp(min=1)).detach()}
    if ref is not None:  # sequence-level log-ratio on the data: a cheap estimate of KL to the reference
        stats["kl"] = 0.5 * ((chosen - ref_chosen) + (rejected - ref_rejected)).detach()
    return loss, stats


# stat key -> (curve panel, line name); eval lines get an "_eval" suffix (or are named "eval")
METRICS = {"loss": ("loss", "train"), "accuracy": ("accuracy", "train"), "margin": ("margin", "train"),
           "rewards_chosen": ("rewards", "chosen"), "rewards_rejected": ("rewards", "rejected"),
           "logps_chosen": ("logps", "chosen"), "logps_rejected": ("logps", "rejected"),
           "nll": ("nll_chosen", "train"), "kl": ("kl", "train"), "log_odds_ratio": ("log_odds_ratio", "train")}


def metric_name(key: str, split: str = "train") -> str:
    family, name = METRICS.get(key, (key, "train"))
    if split == "train":
        return f"{family}/{name}"
    return f"{family}/eval" if name == "train" else f"{family}/{name}_eval"


def reference_for(cache: dict[str, torch.Tensor] | None, name: str, reference: Reference | None,
                  batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
    if cache is not None:
        index = batch.index.cpu()
        device = batch.input_ids.device
        return cache[f"{name}_chosen"][index].to(device), cache[f"{name}_rejected"][index].to(device)
    if reference is not None:
        return split_pairs(reference.sequence_logps(batch)[0])
    return None


@torch.no_grad()
def evaluate(cfg: DPOConfig, model, rows: list[PairRow], cache, reference, pad_id: int,
             device: torch.device) -> dict[str, float]:
    """Mean loss and pair metrics over the eval pairs."""
    if not rows:
        return {}
    model.eval()
    sums: dict[str, float] = {}
    for start in range(0, len(rows), cfg.train.batch_size):
        batch = pair_batch(rows, list(range(start, min(start + cfg.train.batch_size, len(rows)))), pad_id,
                           cfg.data.row_length).to(device)
        loss, stats = pair_loss(cfg, model, batch, reference_for(cache, "eval", reference, batch))
        for key, value in {"loss": loss, **stats}.items():
            sums[key] = sums.get(key, 0.0) + value.float().sum().item()
    model.train()
    return {metric_name(k, "eval"): v / len(rows) for k, v in sums.items()}


def train(cfg: DPOConfig, resume: str | bool | None = None) -> dict:
    """Run DPO (or a variant) as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "dpo", resume)
    acc = run.accelerator
    tokenizer = load_tokenizer(cfg.model, announce=run.print)
    model = load_causal_lm(cfg.model, tokenizer, acc.device, router_aux=True)
    model.train()
    aux_coef = router_aux_coef(model)  # > 0 only for a mixture-of-experts policy with the router loss on
    pad_id = tokenizer.pad_token_id

    train_examples, eval_examples = load_split(cfg.data, "preference", cfg.train.seed)
    train_rows, train_report = cached(tokenize_pairs, train_examples, tokenizer, cfg.data, "train")
    eval_rows, eval_report = cached(tokenize_pairs, eval_examples, tokenizer, cfg.data, "eval")
    run.print(train_report.describe("train pairs"))
    run.print(eval_report.describe("eval pairs"))
    sample_prompts = ([e.prompt for e in eval_examples], [e.chosen[-1].content for e in eval_examples])

    # The reference: none for reference-free losses; cached once (default) or kept for on-the-fly use.
    reference, cache = None, None
    if cfg.dpo.loss not in REFERENCE_FREE:
        reference = load_reference(cfg.model, cfg.dpo.reference_model, model, tokenizer, acc.device, acc.autocast)
        if cfg.dpo.reference == "cached":
            sequences = {f"{split}_{side}": [getattr(r, side) for r in rows] for split, rows in
                         (("train", train_rows), ("eval", eval_rows)) for side in ("chosen", "rejected")}
            cache = reference_cache(run.dir / REFERENCE_CACHE, reference, sequences, pad_id, cfg.train.batch_size * 2,
                                    acc.device, write=run.is_main, reuse=bool(run.resume_from))
            reference = None  # frees a separate reference model; the cache is all we need
    if cfg.dpo.reference_update != "none":  # a moving reference is saved with each checkpoint and resumed from it
        reference.check_follows(model)
        acc.register_for_checkpointing(reference.model)

    replay = load_replay(cfg.replay, cfg.data, tokenizer, cfg.train.batch_size * cfg.train.grad_accum,
                         acc.num_processes, cfg.train.seed, run.print)
    model, optimizer, scheduler, steps, start = prepare_training(run, model, cfg.train, len(train_rows))
    if reference is not None and reference.policy is not None:
        reference.policy = model
    trainable, total = count_parameters(model)
    run.print(f"dpo ({cfg.dpo.loss}, beta {cfg.dpo.beta}, nll weight {cfg.dpo.nll_weight_value}): "
              f"{len(train_rows)} pairs, {steps} steps of {step_holds(cfg.data, cfg.train, 'pairs')}, {trainable:,} of {total:,} parameters trainable")
    if start == 0:
        run.log.log(0, evaluate(cfg, model, eval_rows, cache, reference, pad_id, acc.device))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc=f"dpo/{cfg.dpo.loss}", disable=not (cfg.run.progress and run.is_main))
    clock, pairs_seen = time.time(), 0
    for step in range(start + 1, steps + 1):
        # 1. this step's micro-batches of pairs; the denominator is the step's pair count
        micro = [pair_batch(train_rows, idx, pad_id, cfg.data.row_length).to(acc.device) for idx in
                 step_indices(len(train_rows), step, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.seed,
                              acc.process_index, acc.num_processes)]
        denominator = acc.reduce(step_denominator([torch.ones(len(b.index)) for b in micro], "seq_mean_token_mean")
                                 .to(acc.device), "sum")  # pairs in the step, over every process
        # 2. forward chosen+rejected together, loss per pair, backward
        sums: dict[str, torch.Tensor] = {}
        aux_sum = torch.zeros((), device=acc.device)
        for i, batch in enumerate(micro):
            with micro_step(acc, model, last=i == len(micro) - 1 and replay is None):
                ref = reference_for(cache, "train", reference, batch)
                if aux_coef:
                    loss, stats, aux = moe_pair_loss(cfg, model, batch, ref)
                    aux_sum += aux.detach()
                else:
                    loss, stats = pair_loss(cfg, model, batch, ref)
                objective = aggregate(loss, torch.ones_like(loss), denominator, "seq_mean_token_mean")
                if aux_coef:  # + the router's balancing loss, a mean over the step's micro-batches on all ranks
                    objective = objective + aux_coef / (len(micro) * acc.num_processes) * aux
                acc.backward(objective * acc.num_processes)
            for key, value in {"loss": loss.detach(), **stats}.items():
                sums[key] = sums.get(key, 0) + value.float().sum()
        extra = {"moe/aux_loss": (acc.reduce(aux_sum, "sum") / (len(micro) * acc.num_processes)).item()} if aux_coef else {}
        if replay is not None:  # + coef * NLL of earlier data, in the step's last (synchronising) micro-step
            with micro_step(acc, model, last=True):
                replay_loss, replay_nll = replay.loss(acc, model, step)
                acc.backward(replay_loss * acc.num_processes)
            extra["replay/nll"] = replay_nll.item()
        # 3. clip, step, schedule
        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
        means = {k: (acc.reduce(v, "sum") / denominator).item() for k, v in sums.items()}
        if run.step_is_finite(step, {f"{cfg.dpo.loss} loss": means["loss"], "grad_norm": grad_norm, **extra}):
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        move_reference(reference, model, cfg.dpo.reference_update, cfg.dpo.reference_alpha, cfg.dpo.reference_every, step)
        pairs_seen += int(denominator.item())
        # 4. log, eval, checkpoint
        if step % cfg.run.log_every == 0 or step == steps:
            elapsed = max(time.time() - clock, 1e-9)
            run.log.log(step, {**{metric_name(k): v for k, v in means.items()},
                               "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                               "speed/pairs_per_s": pairs_seen / elapsed, **extra})
            bar.set_postfix(loss=f"{run.log.last('loss/train'):.3f}", acc=f"{run.log.last('accuracy/train'):.2f}")
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, evaluate(cfg, model, eval_rows, cache, reference, pad_id, acc.device))
        if cfg.run.sample_every and step % cfg.run.sample_every == 0 and step != steps:
            sample_rows(run, model, tokenizer, *sample_prompts, step, cfg.run)
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.checkpoint(step, {}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    run.checkpoint(steps, {}, cfg.run.keep_checkpoints)
    final_eval = evaluate(cfg, model, eval_rows, cache, reference, pad_id, acc.device)
    run.log.log(steps, final_eval)
    sample_rows(run, model, tokenizer, *sample_prompts, steps, cfg.run)
    save_final(run, model, tokenizer, cfg.run)
    summary = {
        "steps": steps, "loss": cfg.dpo.loss, "beta": cfg.dpo.beta, "nll_weight": cfg.dpo.nll_weight_value,
        "final": {"loss/train": run.log.last("loss/train"), **final_eval},
        "pairs_per_s": pairs_seen / max(time.time() - clock, 1e-9),
        "data": {"train": train_report.__dict__, "eval": eval_report.__dict__},
        "parameters": {"trainable": trainable, "total": total},
    }
    headline = [("steps", steps), ("loss", f"{cfg.dpo.loss} (beta {cfg.dpo.beta})"),
                ("eval accuracy", final_eval.get("accuracy/eval", math.nan)),
                ("eval margin", final_eval.get("margin/eval", math.nan)),
                ("eval chosen logps/token", final_eval.get("logps/chosen_eval", math.nan)),
                ("final model", str(Path(run.dir) / "final"))]
    return finish_run(run, summary, headline)
