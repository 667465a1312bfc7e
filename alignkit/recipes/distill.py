"""Knowledge distillation: a trained student matches a frozen teacher's next-token distributions.

Loop per optimizer step: the step's rows -> either the dataset's responses (offline KD) or the student's own samples
of the same prompts (on-policy, a seeded share ``on_policy_fraction`` of steps, GKD's lambda) -> student and teacher
logits at every target position -> DISTILL_LOSSES[cfg.distill.loss] per token (+ the hard-label NLL on dataset
steps, by ``hard_weight``) -> ``aggregate`` over the step's target tokens -> backward -> clip, step, schedule ->
log, eval, checkpoint.

Departures from the papers:
1. GKD draws on-policy vs dataset per batch at random; here the draw is seeded by (train.seed, step), so a resumed
   run and a run on two processes make the same choices.
2. On-policy prompts are each record's conversation up to its last trained (assistant) turn; the student samples
   that turn and the teacher scores every sampled token (Agarwal et al. 2024; Lu & Thinking Machines 2025).
3. The hard-label term applies to dataset steps only: a student's own sample has no label to imitate.
4. With ``teacher_topk`` the teacher's distribution is its top-k tokens renormalised (cached once before training):
   an approximation of the forward KL that lets the teacher leave memory; the eval's KL then uses it as well.
5. When the teacher's and the student's logit widths differ (embedding tables padded past the tokenizer), both are
   cut to the shared tokenizer's size: tokens past it are never produced.
"""

from __future__ import annotations

import io
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..batch import SFTBatch
from ..config import ConfigError, DistillConfig, ModelConfig
from ..data.cache import cached
from ..data.collate import pad_batch
from ..data.formats import DataError, TextExample
from ..data.prepare import load_split, sample_prompts, tokenize_sft
from ..distill_losses import DISTILL_LOSSES, forward_kl, hard_label_nll, reverse_kl, topk_forward_kl
from ..losses import aggregate, step_denominator
from ..models import count_parameters, disable_dropout, load_causal_lm, load_tokenizer
from ..rollout.core import rollout_seeds, sampling_params
from ..rollout.engines import engine_name, make_engine
from ..rollout.evaluate import EVAL_SEED_STEP
from ..runtime import (
    finish_run,
    micro_step,
    prepare_training,
    sample_rows,
    save_final,
    start_run,
    step_indices,
)
from ..sampling import SamplingParams, rollout_batch

TOPK_CACHE = "teacher_topk.pt"


@dataclass
class Teacher:
    """The frozen teacher, run under the trained model's autocast so both compute in one precision."""

    model: Any
    autocast: Any
    width: int  # the shared vocabulary: logits are cut to it

    @torch.no_grad()
    def logits(self, batch: SFTBatch) -> torch.Tensor:
        with self.autocast():
            return logits_of(self.model, batch, self.width)


def load_teacher(cfg: DistillConfig, tokenizer, student, device, autocast) -> Teacher:
    """The frozen teacher, after checking that it speaks the student's vocabulary (token for token)."""
    teacher_cfg = ModelConfig(name_or_path=cfg.distill.teacher, dtype=cfg.model.dtype, device=cfg.model.device,
                              trust_remote_code=cfg.model.trust_remote_code)
    teacher_tokenizer = load_tokenizer(teacher_cfg)
    ours, theirs = tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if ours != theirs:
        differ = sorted(set(ours.items()) ^ set(theirs.items()))[:3]
        raise ConfigError(f"distill.teacher = {cfg.distill.teacher}: its tokenizer's vocabulary differs from the "
                          f"student's ({len(theirs)} vs {len(ours)} tokens; e.g. {differ}): distillation compares "
                          "distributions token by token, so both must share one vocabulary")
    model = load_causal_lm(teacher_cfg, teacher_tokenizer, device, trainable=False).eval()
    width = min(len(tokenizer), *(m.get_output_embeddings().weight.shape[0] for m in (student, model)))
    return Teacher(model, autocast, width)


def logits_of(model, batch: SFTBatch, width: int) -> torch.Tensor:
    """(B, L-1, width) next-token logits: entry t predicts token t+1 (cut to the shared vocabulary ``width``)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                use_cache=False).logits
    return out[:, :-1, :width]


def last_turn_prompt(row) -> list[int]:
    """The tokens before the row's last trained block: its conversation up to the turn the student will sample."""
    mask = row.loss_mask
    end = len(mask) - 1
    while end > 0 and not mask[end]:
        end -= 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return list(row.input_ids[:start])


def student_samples(engine, model, prompts: list[list[int]], params: SamplingParams, seeds: list[int],
                    pad_id: int) -> SFTBatch:
    """The student's own responses laid out as a padded batch whose loss mask covers the sampled tokens."""
    r = rollout_batch(engine.generate(model, prompts, params, seeds), pad_id)
    loss_mask = torch.cat([torch.zeros(r.input_ids.shape[0], r.prompt_width, dtype=torch.long), r.response_mask], 1)
    return SFTBatch(r.input_ids, r.attention_mask, r.position_ids, loss_mask)


def on_policy_step(cfg: DistillConfig, step: int) -> bool:
    """Whether ``step`` trains on the student's own samples: a draw seeded by (train.seed, step)."""
    return random.Random(cfg.train.seed * 1_000_003 + step).random() < cfg.distill.on_policy_fraction


@torch.no_grad()
def teacher_topk(teacher: Teacher, rows: list, pad_id: int, k: int, batch_size: int, device) -> list:
    """Per row: the teacher's top-k logits (n_targets, k) and their ids at the row's target positions."""
    out = []
    for start in range(0, len(rows), batch_size):
        batch = pad_batch(rows[start : start + batch_size], pad_id).to(device)
        values, ids = teacher.logits(batch).float().topk(k, dim=-1)
        mask = batch.loss_mask[:, 1:].bool()
        out += [(values[i][mask[i]].cpu(), ids[i][mask[i]].int().cpu()) for i in range(len(values))]
    return out


def scatter_topk(cache: list, indices: list[int], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached top-k of rows ``indices`` laid out on the batch's (B, T) target mask: (B, T, k) logits and ids."""
    k = cache[indices[0]][0].shape[-1]
    values = torch.zeros(*mask.shape, k, device=mask.device)
    ids = torch.zeros(*mask.shape, k, dtype=torch.long, device=mask.device)
    for row, i in enumerate(indices):
        where = mask[row].bool()
        values[row, where] = cache[i][0].to(mask.device).float()
        ids[row, where] = cache[i][1].to(mask.device).long()
    return values, ids


def soft_loss(cfg: DistillConfig, student_logits, batch: SFTBatch, teacher: Teacher | None, topk, indices):
    """Per-token soft loss (B, T) and stats: against the live teacher, or its cached top-k."""
    mask = batch.loss_mask[:, 1:].to(student_logits.dtype)
    if topk is not None:
        values, ids = scatter_topk(topk, indices, mask)
        return topk_forward_kl(student_logits, values, ids, mask, temperature=cfg.distill.temperature)
    teacher_logits = teacher.logits(batch)
    knobs = {"temperature": cfg.distill.temperature, **({"beta": cfg.distill.jsd_beta} if cfg.distill.loss == "jsd" else {})}
    return DISTILL_LOSSES[cfg.distill.loss](student_logits, teacher_logits, mask, **knobs)


@torch.no_grad()
def evaluate(cfg: DistillConfig, model, teacher: Teacher | None, topk_eval, rows: list, prompts: list, engine,
             pad_id: int, width: int, device) -> dict[str, float]:
    """On held-out rows: the student's NLL and its forward KL to the teacher on the dataset's responses; on the
    student's own answers to the held-out prompts (with a live teacher): the exact per-token reverse KL
    KL(student || teacher), the figure on-policy distillation lowers."""
    if not rows:
        return {}
    model.eval()
    sums = {"nll": 0.0, "kl_data": 0.0, "tokens": 0.0}
    for start in range(0, len(rows), cfg.train.batch_size):
        index = list(range(start, min(start + cfg.train.batch_size, len(rows))))
        batch = pad_batch([rows[i] for i in index], pad_id).to(device)
        logits, mask = logits_of(model, batch, width), batch.loss_mask[:, 1:].float()
        if topk_eval is not None:
            kl = topk_forward_kl(logits, *scatter_topk(topk_eval, index, mask), mask)[0]
        else:
            kl = forward_kl(logits, teacher.logits(batch), mask)[0]
        sums["nll"] += hard_label_nll(logits, batch.input_ids[:, 1:], mask)[0].sum().item()
        sums["kl_data"] += kl.sum().item()
        sums["tokens"] += mask.sum().item()
    tokens = max(sums["tokens"], 1.0)
    out = {"loss/eval": sums["nll"] / tokens, "ppl/eval": math.exp(min(sums["nll"] / tokens, 50)),
           "kl/teacher_data_eval": sums["kl_data"] / tokens}
    if teacher is not None:
        s, size = cfg.sampling, cfg.train.batch_size
        params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.eval_temperature)
        kl_sum, kl_tokens = 0.0, 0.0
        for k in range(s.eval_samples if s.eval_temperature > 0 else 1):  # the same seeds at every eval
            seeds = rollout_seeds(cfg.train.seed, EVAL_SEED_STEP + k, 0, len(prompts))
            for start in range(0, len(prompts), size):
                batch = student_samples(engine, model, prompts[start : start + size], params,
                                        seeds[start : start + size], pad_id).to(device)
                mask = batch.loss_mask[:, 1:].float()
                kl = reverse_kl(logits_of(model, batch, width), teacher.logits(batch), mask)[0]
                kl_sum, kl_tokens = kl_sum + kl.sum().item(), kl_tokens + mask.sum().item()
        out["kl/student_samples_eval"] = kl_sum / max(kl_tokens, 1.0)
    model.train()
    return out


def train(cfg: DistillConfig, resume: str | bool | None = None) -> dict:
    """Distil the teacher into the student as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "distill", resume)
    acc, d = run.accelerator, cfg.distill
    if d.on_policy_fraction > 0:
        engine_name(cfg.sampling.engine)  # an engine this machine cannot run is refused before anything loads
    tokenizer = load_tokenizer(cfg.model, announce=run.print)
    model = load_causal_lm(cfg.model, tokenizer, acc.device)
    disable_dropout(model)  # the student's samples and its scored logits must come from one function
    model.train()
    teacher = load_teacher(cfg, tokenizer, model, acc.device, acc.autocast)
    width = teacher.width
    pad_id = tokenizer.pad_token_id

    train_examples, eval_examples = load_split(cfg.data, "sft", cfg.train.seed)
    train_rows, train_report = cached(tokenize_sft, train_examples, tokenizer, cfg.data, "train")
    eval_rows, eval_report = cached(tokenize_sft, eval_examples, tokenizer, cfg.data, "eval")
    run.print(train_report.describe("train"))
    run.print(eval_report.describe("eval"))
    if cfg.distill.on_policy_fraction > 0 and isinstance(train_examples[0], TextExample):
        raise DataError(f"{train_examples[0].where}: text records have no prompt for the student to answer "
                        "(distill.on_policy_fraction > 0): use prompt / response or messages records")
    prompts = [last_turn_prompt(r) for r in train_rows]
    eval_prompts = [last_turn_prompt(r) for r in eval_rows]
    topk = topk_eval = None
    if d.teacher_topk:  # run the teacher once, keep its top-k, let it go
        path = run.dir / TOPK_CACHE
        if run.resume_from and path.is_file():
            topk, topk_eval = torch.load(path)
        else:
            k = min(d.teacher_topk, width)
            topk, topk_eval = (teacher_topk(teacher, rows, pad_id, k, cfg.train.batch_size, acc.device)
                               for rows in (train_rows, eval_rows))
            if run.is_main:
                from ..checkpoint import atomic_write_bytes

                buffer = io.BytesIO()
                torch.save((topk, topk_eval), buffer)
                atomic_write_bytes(path, buffer.getvalue())
        teacher = None

    model, optimizer, scheduler, steps, start = prepare_training(run, model, cfg.train, len(train_rows))
    engine = make_engine(cfg.sampling, acc, tokenizer, model, cfg.data.max_length + cfg.sampling.max_new_tokens)
    params = sampling_params(cfg.sampling)
    trainable, total = count_parameters(model)
    run.print(f"distill ({d.loss}, tau {d.temperature}, on-policy share {d.on_policy_fraction}, hard weight "
              f"{d.hard_weight}{f', teacher top-{d.teacher_topk} cached' if d.teacher_topk else ''}): teacher "
              f"{d.teacher}, {len(train_rows)} examples, {steps} steps, {trainable:,} of {total:,} parameters trainable")
    if start == 0:
        run.log.log(0, evaluate(cfg, model, teacher, topk_eval, eval_rows, eval_prompts, engine, pad_id, width, acc.device))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc=f"distill/{d.loss}", disable=not (cfg.run.progress and run.is_main))
    clock, tokens_seen, on_policy_steps = time.time(), 0, 0
    for step in range(start + 1, steps + 1):
        # 1. this step's rows: the dataset's responses, or (an on-policy step) the student's samples of their prompts
        indices = step_indices(len(train_rows), step, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.seed,
                               acc.process_index, acc.num_processes)
        on_policy = on_policy_step(cfg, step)
        if on_policy:
            per_step = cfg.train.batch_size * cfg.train.grad_accum // acc.num_processes
            first = acc.process_index * per_step
            micro = [student_samples(engine, model, [prompts[i] for i in idx], params,
                                     rollout_seeds(cfg.train.seed, step, first + j * len(idx), len(idx)), pad_id)
                     for j, idx in enumerate(indices)]
        else:
            micro = [pad_batch([train_rows[i] for i in idx], pad_id) for idx in indices]
        micro = [b.to(acc.device) for b in micro]
        denominator = acc.reduce(step_denominator([b.loss_mask[:, 1:] for b in micro]).to(acc.device), "sum")
        # 2. student and teacher logits at every target position; the soft loss (+ the hard one on dataset steps)
        sums: dict[str, torch.Tensor] = {}
        for i, (batch, idx) in enumerate(zip(micro, indices)):
            with micro_step(acc, model, last=i == len(micro) - 1):
                student_logits = logits_of(model, batch, width)
                per_token, stats = soft_loss(cfg, student_logits, batch, teacher, topk, idx)
                if d.hard_weight and not on_policy:
                    nll = hard_label_nll(student_logits, batch.input_ids[:, 1:], batch.loss_mask[:, 1:])[0]
                    per_token, stats = (1 - d.hard_weight) * per_token + d.hard_weight * nll, {**stats, "nll": nll.detach()}
                loss = aggregate(per_token, batch.loss_mask[:, 1:], denominator)
                acc.backward(loss * acc.num_processes)  # DDP averages gradients over ranks; undo that
            for key, value in {"loss": loss.detach() * denominator, **{k: v.sum() for k, v in stats.items()}}.items():
                sums[key] = sums.get(key, 0.0) + value.float()
        # 3. clip, step, schedule; the engine gets the new weights
        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
        means = {k: (acc.reduce(v, "sum") / denominator).item() for k, v in sums.items()}
        if run.step_is_finite(step, {f"{d.loss} loss": means["loss"], "grad_norm": grad_norm}):
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        engine.sync(model)
        tokens_seen += int(denominator.item())
        on_policy_steps += on_policy
        # 4. log, eval, sample, checkpoint
        if step % cfg.run.log_every == 0 or step == steps:
            run.log.log(step, {"loss/train": means["loss"], "kl/train": means.get("kl", math.nan),
                               **({"nll/train": means["nll"]} if "nll" in means else {}),
                               "on_policy/frac": on_policy_steps / max(step - start, 1), "lr": scheduler.get_last_lr()[0],
                               "grad_norm": float(grad_norm),
                               "speed/tokens_per_s": tokens_seen / max(time.time() - clock, 1e-9)})
            bar.set_postfix(loss=f"{means['loss']:.3f}")
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, evaluate(cfg, model, teacher, topk_eval, eval_rows, eval_prompts, engine, pad_id, width, acc.device))
        if cfg.run.sample_every and step % cfg.run.sample_every == 0 and step != steps:
            sample_rows(run, model, tokenizer, *sample_prompts(eval_examples, cfg.run.num_samples), step, cfg.run)
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.checkpoint(step, {}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    run.checkpoint(steps, {}, cfg.run.keep_checkpoints)
    final_eval = evaluate(cfg, model, teacher, topk_eval, eval_rows, eval_prompts, engine, pad_id, width, acc.device)
    run.log.log(steps, final_eval)
    sample_rows(run, model, tokenizer, *sample_prompts(eval_examples, cfg.run.num_samples), steps, cfg.run)
    save_final(run, model, tokenizer, cfg.run)
    first = run.log.rows[0] if run.log.rows else {}
    summary = {"steps": steps, "loss": d.loss, "temperature": d.temperature, "on_policy_fraction": d.on_policy_fraction,
               "teacher": d.teacher, "final": final_eval,
               "initial": {k: v for k, v in first.items() if k.endswith("_eval") or k.endswith("/eval")},
               "data": {"train": train_report.__dict__, "eval": eval_report.__dict__},
               "parameters": {"trainable": trainable, "total": total}}
    headline = [("steps", steps), ("loss", d.loss),
                *((name, f"{first.get(key, math.nan):.4f} -> {final_eval.get(key, math.nan):.4f}")
                  for name, key in (("eval KL to teacher (data)", "kl/teacher_data_eval"),
                                    ("eval KL to teacher (own samples)", "kl/student_samples_eval")) if key in final_eval),
                ("final model", str(run.dir / "final"))]
    return finish_run(run, summary, headline)
