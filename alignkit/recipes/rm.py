"""Reward model: a scalar head on a causal-LM backbone, trained on preference pairs or K-wise rankings.

Loop per optimizer step: the step's lists -> every response scored once (read at its last real token) -> scatter to
(B, K) -> ranking loss (Bradley-Terry on pairs, InstructGPT all-pairs or Plackett-Luce on lists) + optional
centering -> ``aggregate`` over the step's list count -> backward -> clip, step, schedule -> log, eval, checkpoint.
At the end the reward mean / std over the eval responses are stored with the model (``reward_stats.json``).

Departures from InstructGPT:
1. A K-wise list is one example (its pairs are averaged), not K(K-1)/2 examples; each response is forwarded once.
2. The reward is read from the backbone's hidden state at the last real token found from the attention mask (not
   the classifier's own pad-id pooling, which fails when pad == eos), so left and right padding agree (tested).
3. Dropout is off in the whole model: the same text must get the same score in train and eval mode.
"""

from __future__ import annotations

import math
import time

import torch

from ..batch import RankingBatch
from ..checkpoint import atomic_write_json
from ..config import RMConfig
from ..data.cache import cached
from ..data.collate import pad_rankings
from ..data.prepare import RankRow, load_split, preference_kind, tokenize_rankings
from ..eval import pair_margins, preference_metrics
from ..losses import RANKING_LOSSES, aggregate, bt_pairwise, reward_centering, step_denominator
from ..models import (
    ValueModel,
    count_parameters,
    load_reward_model,
    load_tokenizer,
    save_reward_stats,
    token_values,
)
from ..ops import gather_last, segment_last
from ..runtime import (
    finish_run,
    micro_step,
    prepare_training,
    save_final,
    start_run,
    step_holds,
    step_indices,
)
from ..watch import REWARD_VERDICT

READY_ACCURACY = 0.7  # the field's rule of thumb (our seed texts): below this an RM is not ready for PPO


def list_rewards(model, batch: RankingBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K) rewards of each best-first list and its validity mask; each response forwarded once."""
    values = token_values(model, batch.input_ids, batch.attention_mask, batch.position_ids)
    last = gather_last(values, batch.attention_mask) if batch.segments is None else segment_last(values, batch.segments)
    return batch.scatter(last)


def list_loss(cfg: RMConfig, rewards: torch.Tensor, valid: torch.Tensor, margin: torch.Tensor
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-list loss (B,): pairwise Bradley-Terry with margins when asked (pairs only), else the ranking loss."""
    if cfg.rm.use_margin and rewards.shape[1] == 2:
        loss, stats = bt_pairwise(rewards[:, 0], rewards[:, 1], torch.nan_to_num(margin, nan=0.0))
    else:
        loss, stats = RANKING_LOSSES[cfg.rm.loss](rewards, valid)
    if cfg.rm.center_coef:
        loss = loss + cfg.rm.center_coef * reward_centering(rewards, valid)
    return loss, stats


def best_and_worst(rewards: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward of each list's best response and of its worst (last valid) one: the chosen / rejected of a pair."""
    last = valid.long().sum(-1) - 1
    return rewards[:, 0], rewards.gather(-1, last.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def score_lists(model, rows: list[RankRow], pad_id: int, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, K) rewards and validity for all rows, in order."""
    rewards, valid = [], []
    width = max((len(r.responses) for r in rows), default=2)
    for start in range(0, len(rows), batch_size):
        batch = pad_rankings(rows[start : start + batch_size], range(start, min(start + batch_size, len(rows))),
                             pad_id).to(device)
        r, v = list_rewards(model, batch)
        pad = width - r.shape[1]
        rewards.append(torch.nn.functional.pad(r.float().cpu(), (0, pad)))
        valid.append(torch.nn.functional.pad(v.cpu(), (0, pad), value=False))
    return torch.cat(rewards), torch.cat(valid)


def evaluate(cfg: RMConfig, model, rows: list[RankRow], pad_id: int, device) -> dict[str, float]:
    """Loss, accuracy, margins, accuracy by margin bucket, calibration, reward mean / std on the eval lists."""
    if not rows:
        return {}
    model.eval()
    rewards, valid = score_lists(model, rows, pad_id, cfg.train.batch_size, device)
    margins = torch.tensor([float("nan") if r.margin is None else r.margin for r in rows])
    loss, _ = list_loss(cfg, rewards, valid, margins)
    model.train()
    chosen, rejected = best_and_worst(rewards, valid)
    figures = preference_metrics(pair_margins(rewards, valid))
    scores = rewards[valid]
    out = {"loss/eval": loss.mean().item(), "accuracy/eval": figures.pop("accuracy"),
           "margin/eval": figures.pop("margin_mean"), "rewards/chosen_eval": chosen.mean().item(),
           "rewards/rejected_eval": rejected.mean().item(), "calibration/error_eval": figures.pop("calibration_error"),
           "rewards/mean_eval": scores.mean().item(), "rewards/std_eval": scores.std().item()}
    out.update({f"accuracy_by_margin/{k.split('[')[1].rstrip(')')}": v for k, v in figures.items()})
    return out


def train(cfg: RMConfig, resume: str | bool | None = None) -> dict:
    """Train a reward model as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "rm", resume)
    acc = run.accelerator
    tokenizer = load_tokenizer(cfg.model, announce=run.print)
    model = ValueModel(load_reward_model(cfg.model, tokenizer, acc.device))  # one forward for DDP to wrap
    model.train()
    pad_id = tokenizer.pad_token_id

    kind = preference_kind(cfg.data)
    train_examples, eval_examples = load_split(cfg.data, kind, cfg.train.seed)
    train_rows, train_report = cached(tokenize_rankings, train_examples, tokenizer, cfg.data, "train")
    eval_rows, eval_report = cached(tokenize_rankings, eval_examples, tokenizer, cfg.data, "eval")
    run.print(train_report.describe(f"train {kind}"))
    run.print(eval_report.describe(f"eval {kind}"))

    model, optimizer, scheduler, steps, start = prepare_training(run, model, cfg.train, len(train_rows))
    trainable, total = count_parameters(model)
    run.print(f"rm ({cfg.rm.loss} on {kind}): {len(train_rows)} lists, {steps} steps of "
              f"{step_holds(cfg.data, cfg.train, 'lists')}, "
              f"{trainable:,} of {total:,} parameters trainable")
    if start == 0:
        run.log.log(0, evaluate(cfg, model, eval_rows, pad_id, acc.device))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc="rm", disable=not (cfg.run.progress and run.is_main))
    clock, seen = time.time(), 0
    for step in range(start + 1, steps + 1):
        # 1. the step's lists; the denominator is the step's list count
        micro = [pad_rankings([train_rows[i] for i in idx], idx, pad_id, cfg.data.row_length).to(acc.device) for idx in
                 step_indices(len(train_rows), step, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.seed,
                              acc.process_index, acc.num_processes)]
        denominator = acc.reduce(step_denominator([torch.ones(len(b.index)) for b in micro], "seq_mean_token_mean")
                                 .to(acc.device), "sum")  # lists in the step, over every process
        # 2. score every response once, loss per list, backward
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro):
            with micro_step(acc, model, last=i == len(micro) - 1):
                rewards, valid = list_rewards(model, batch)
                loss, stats = list_loss(cfg, rewards, valid, batch.margin)
                acc.backward(aggregate(loss, torch.ones_like(loss), denominator, "seq_mean_token_mean")
                             * acc.num_processes)
            chosen, rejected = best_and_worst(rewards.detach(), valid)
            for key, value in {"loss": loss.detach(), "accuracy": stats["accuracy"], "margin": chosen - rejected,
                               "chosen": chosen, "rejected": rejected}.items():
                sums[key] = sums.get(key, 0) + value.float().sum()
        # 3. clip, step, schedule
        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
        means = {k: (acc.reduce(v, "sum") / denominator).item() for k, v in sums.items()}
        if run.step_is_finite(step, {"loss": means["loss"], "grad_norm": grad_norm}):
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += int(denominator.item())
        # 4. log, eval, checkpoint
        if step % cfg.run.log_every == 0 or step == steps:
            run.log.log(step, {"loss/train": means["loss"], "accuracy/train": means["accuracy"],
                               "margin/train": means["margin"], "rewards/chosen": means["chosen"],
                               "rewards/rejected": means["rejected"], "lr": scheduler.get_last_lr()[0],
                               "grad_norm": float(grad_norm), "speed/lists_per_s": seen / max(time.time() - clock, 1e-9)})
            bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.2f}")
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, evaluate(cfg, model, eval_rows, pad_id, acc.device))
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.checkpoint(step, {}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    run.checkpoint(steps, {}, cfg.run.keep_checkpoints)
    final_eval = evaluate(cfg, model, eval_rows, pad_id, acc.device)
    run.log.log(steps, final_eval)
    save_final(run, model, tokenizer, cfg.run)
    stats = {"mean": final_eval.get("rewards/mean_eval", 0.0), "std": final_eval.get("rewards/std_eval", 1.0)}
    if run.is_main:
        n_scores = sum(len(r.responses) for r in eval_rows)
        save_reward_stats(run.dir / "final", stats["mean"], stats["std"], n_scores)
        if cfg.run.merge_adapter and (run.dir / "final" / "merged").is_dir():
            save_reward_stats(run.dir / "final" / "merged", stats["mean"], stats["std"], n_scores)
    accuracy = final_eval.get("accuracy/eval", math.nan)
    verdict = ("ready for PPO" if accuracy >= READY_ACCURACY else
               f"NOT ready for PPO: eval accuracy {accuracy:.2f} < {READY_ACCURACY} (more or cleaner data, more steps, "
               "or a larger backbone)")
    run.print(f"reward model: {verdict}")
    if run.is_main:  # the verdict travels with the model: the doctor of an RL run that uses it reads it
        atomic_write_json(run.dir / "final" / REWARD_VERDICT, {"verdict": verdict, "accuracy": accuracy})
    summary = {"steps": steps, "loss": cfg.rm.loss, "data_kind": kind, "verdict": verdict,
               "final": {"loss/train": run.log.last("loss/train"), **final_eval}, "reward_stats": stats,
               "lists_per_s": seen / max(time.time() - clock, 1e-9),
               "data": {"train": train_report.__dict__, "eval": eval_report.__dict__},
               "parameters": {"trainable": trainable, "total": total}}
    headline = [("steps", steps), ("eval accuracy", accuracy), ("eval margin", final_eval.get("margin/eval", math.nan)),
                ("calibration error", final_eval.get("calibration/error_eval", math.nan)),
                ("reward mean / std", f"{stats['mean']:.3f} / {stats['std']:.3f}"), ("verdict", verdict),
                ("final model", str(run.dir / "final"))]
    return finish_run(run, summary, headline)
