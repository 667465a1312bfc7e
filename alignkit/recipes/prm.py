"""Process reward model (PRM): a scalar head on a causal-LM backbone, read at the end of every step of a solution and
trained to say whether that step is correct (Lightman et al. 2023, "Let's Verify Step by Step"; Math-Shepherd).

Loop per optimizer step: the step's solutions -> one forward each, the head read at every step's end -> per-step
binary cross-entropy (``losses.step_bce``) -> ``aggregate`` over the step's count of steps -> backward -> clip, step,
schedule -> log, eval, checkpoint. The eval reports step accuracy next to the majority-label baseline, and first-error
detection. At the end the separator is stored beside the model (``prm.json``): a reward source splits completions
at the same text.

Departures from the papers:
1. A step is read at its separator's token (the steps joined by ``prm.separator`` as the assistant's response after
   the chat template's generation prompt), not at a step tag; Lightman et al. read the LM head's "positive" token
   there, here a scalar head gives the log-odds that the step is correct. PRM800K's neutral steps have no class:
   label them true or false.
2. The loss is the mean over every step of the optimizer step (a long solution weighs more), not over solutions.
3. Dropout is off in the whole model, as for the reward model: a step must get the same score in train and eval.
"""

from __future__ import annotations

import math
import time

import torch

from ..batch import StepBatch
from ..config import PRMConfig
from ..data.cache import cached
from ..data.prepare import load_split
from ..data.steps import StepRow, pad_steps, tokenize_steps
from ..eval.process import first_error_metrics
from ..losses import aggregate, step_bce, step_denominator
from ..models import (
    ValueModel,
    count_parameters,
    load_reward_model,
    load_tokenizer,
    save_prm_info,
    token_values,
)
from ..runtime import (
    finish_run,
    micro_step,
    prepare_training,
    save_final,
    start_run,
    step_holds,
    step_indices,
)


def step_logits(model, batch: StepBatch) -> torch.Tensor:
    """(S,) the head at every step's end, the steps of every solution in order."""
    values = token_values(model, batch.input_ids, batch.attention_mask, batch.position_ids)
    return values[batch.step_mask.bool()]


@torch.no_grad()
def score_steps(model, rows: list[StepRow], pad_id: int, batch_size: int, device) -> tuple[torch.Tensor, ...]:
    """(logits (S,), labels (S,), solution (S,)) over every row, in order."""
    logits, labels, solution = [], [], []
    for start in range(0, len(rows), batch_size):
        batch = pad_steps(rows[start : start + batch_size], range(start, min(start + batch_size, len(rows))), pad_id)
        logits.append(step_logits(model, batch.to(device)).float().cpu())
        labels.append(batch.labels)
        solution.append(batch.solution + start)
    return torch.cat(logits), torch.cat(labels), torch.cat(solution)


def evaluate(model, rows: list[StepRow], pad_id: int, batch_size: int, device) -> dict[str, float]:
    """Loss and step accuracy (with the majority-label baseline it must beat), first-error detection, and the mean
    score (P(correct)) of correct and of wrong steps, on the eval solutions."""
    if not rows:
        return {}
    model.eval()
    logits, labels, solution = score_steps(model, rows, pad_id, batch_size, device)
    model.train()
    loss, stats = step_bce(logits, labels)
    correct, probs = labels.bool(), logits.sigmoid()
    share = labels.mean().item()
    return {"loss/eval": loss.mean().item(), "accuracy/eval": stats["accuracy"].mean().item(),
            "accuracy/majority_eval": max(share, 1 - share),
            **{f"{k}_eval": v for k, v in first_error_metrics(logits >= 0, correct, solution).items()},
            "score/correct_eval": probs[correct].mean().item() if correct.any() else math.nan,
            "score/wrong_eval": probs[~correct].mean().item() if (~correct).any() else math.nan}


def train(cfg: PRMConfig, resume: str | bool | None = None) -> dict:
    """Train a process reward model as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "prm", resume)
    acc = run.accelerator
    tokenizer = load_tokenizer(cfg.model, announce=run.print)
    model = ValueModel(load_reward_model(cfg.model, tokenizer, acc.device))  # one forward for DDP to wrap
    model.train()
    pad_id, separator, batch_size = tokenizer.pad_token_id, cfg.prm.separator, cfg.train.batch_size

    train_examples, eval_examples = load_split(cfg.data, "steps", cfg.train.seed)
    train_rows, train_report = cached(tokenize_steps, train_examples, tokenizer, cfg.data, "train", separator=separator)
    eval_rows, eval_report = cached(tokenize_steps, eval_examples, tokenizer, cfg.data, "eval", separator=separator)
    run.print(train_report.describe("train solutions"))
    run.print(eval_report.describe("eval solutions"))

    model, optimizer, scheduler, steps, start = prepare_training(run, model, cfg.train, len(train_rows))
    trainable, total = count_parameters(model)
    labels = [label for row in train_rows for label in row.labels]
    run.print(f"prm: {len(train_rows)} solutions, {len(labels)} steps ({sum(labels) / max(len(labels), 1):.0%} "
              f"correct), {steps} steps of {step_holds(cfg.data, cfg.train, 'solutions')}, separator {separator!r}, "
              f"{trainable:,} of {total:,} parameters trainable")
    if start == 0:
        run.log.log(0, evaluate(model, eval_rows, pad_id, batch_size, acc.device))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc="prm", disable=not (cfg.run.progress and run.is_main))
    clock, seen = time.time(), 0
    for step in range(start + 1, steps + 1):
        # 1. the step's solutions; the denominator is the step's count of steps, over every process
        micro = [pad_steps([train_rows[i] for i in idx], idx, pad_id, cfg.data.row_length).to(acc.device) for idx in
                 step_indices(len(train_rows), step, batch_size, cfg.train.grad_accum, cfg.train.seed,
                              acc.process_index, acc.num_processes)]
        denominator = acc.reduce(step_denominator([torch.ones_like(b.labels) for b in micro]).to(acc.device), "sum")
        # 2. the head at every step end, binary cross-entropy per step, backward
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro):
            with micro_step(acc, model, last=i == len(micro) - 1):
                loss, stats = step_bce(step_logits(model, batch), batch.labels)
                acc.backward(aggregate(loss, torch.ones_like(loss), denominator) * acc.num_processes)
            for key, value in {"loss": loss.detach(), "accuracy": stats["accuracy"]}.items():
                sums[key] = sums.get(key, 0) + value.float().sum()
        # 3. clip, step, schedule
        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
        means = {k: (acc.reduce(v, "sum") / denominator.clamp(min=1)).item() for k, v in sums.items()}
        if run.step_is_finite(step, {"loss": means["loss"], "grad_norm": grad_norm}):
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += sum(len(b.index) for b in micro) * acc.num_processes
        # 4. log, eval, checkpoint
        if step % cfg.run.log_every == 0 or step == steps:
            run.log.log(step, {"loss/train": means["loss"], "accuracy/train": means["accuracy"],
                               "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                               "speed/solutions_per_s": seen / max(time.time() - clock, 1e-9)})
            bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.2f}")
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, evaluate(model, eval_rows, pad_id, batch_size, acc.device))
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.checkpoint(step, {}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    run.checkpoint(steps, {}, cfg.run.keep_checkpoints)
    final_eval = evaluate(model, eval_rows, pad_id, batch_size, acc.device)
    run.log.log(steps, final_eval)
    save_final(run, model, tokenizer, cfg.run)
    if run.is_main:  # the layout travels with the model: a reward source splits completions at the same text
        save_prm_info(run.dir / "final", separator)
        if cfg.run.merge_adapter and (run.dir / "final" / "merged").is_dir():
            save_prm_info(run.dir / "final" / "merged", separator)
    accuracy, majority = final_eval.get("accuracy/eval", math.nan), final_eval.get("accuracy/majority_eval", math.nan)
    summary = {"steps": steps, "separator": separator, "final": {"loss/train": run.log.last("loss/train"), **final_eval},
               "solutions_per_s": seen / max(time.time() - clock, 1e-9),
               "data": {"train": train_report.__dict__, "eval": eval_report.__dict__},
               "parameters": {"trainable": trainable, "total": total}}
    headline = [("steps", steps), ("eval step accuracy", accuracy), ("majority-label baseline", majority),
                ("first error found (flawed solutions)", final_eval.get("first_error/flawed_eval", math.nan)),
                ("correct solutions left unflagged", final_eval.get("first_error/correct_eval", math.nan)),
                ("final model", str(run.dir / "final"))]
    return finish_run(run, summary, headline)
