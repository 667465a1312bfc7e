"""RRHF (Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback without tears").

Each prompt comes with K responses and their scores: a ranked list from the data (``rrhf.source: data``), or K
samples from the current policy scored by the reward sources (``online``). The policy's length-normalised
log-probs p_k are pushed into the scores' order by a hinge over every pair, and the best response is also fit by
likelihood. No reference model, no value model, no importance ratio.

Loop per optimizer step: the step's lists (from the data; or rollout -> score) -> one forward of all their
responses per micro-batch -> (B, K) summed log-probs -> ``rrhf_loss`` + sft_weight x ``nll_term`` on each list's
best -> ``aggregate`` over the step's list count -> backward -> clip, step, schedule -> log, eval, checkpoint.

Departures from the paper:
1. The SFT term (eq. 3) is the best response's NLL per token (``nll_term``), not eq. 3's sum over tokens (the
   authors' code averages it too, over its padded positions): it stays on the scale of the rank term, whose p_k
   are per token. ``sft_weight`` weighs it; the authors' code weighs the rank term instead (rrhf_weight).
2. A list's loss is its hinge SUM over pairs (eq. 2) + sft_weight x NLL; the step's loss is the mean over all the
   step's lists, whatever the micro-batching and the number of processes.
3. Data lists carry ranks, not rewards: scores K-1 .. 0 best first (eq. 2 only compares them). Preference pairs
   are accepted as lists of two.
4. ``online`` samples the K responses from the current policy every step (seeded per row), where the paper
   samples its candidates once, before training (from the initial model and other sources). Their
   log-probs are the policy's own (temperature 1), whatever temperature drew them, and nothing reweights them:
   RRHF ranks samples, it does not estimate a policy gradient from them.
5. Equal scores make no pair (eq. 2's strict r_i < r_j); a list whose top score is tied fits the first of them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from ..batch import RolloutBatch, SequenceBatch
from ..config import RRHFConfig
from ..data.cache import cached
from ..data.collate import pad_sequences
from ..data.prepare import RankRow, load_split, preference_kind, tokenize_rankings
from ..losses import aggregate, nll_term, rrhf_loss, step_denominator
from ..models import count_parameters, load_causal_lm, load_tokenizer
from ..ops import masked_sum, response_logps, sequence_logps
from ..rollout.core import Rollout, collect, diversity, rollout_seeds, sampling_params
from ..rollout.setup import RLSetup, load_rl
from ..runtime import (
    Run,
    finish_run,
    micro_step,
    prepare_training,
    sample_rows,
    save_final,
    start_run,
    step_holds,
    step_indices,
)


@dataclass(frozen=True)
class Lists:
    """One micro-batch of B prompts' response lists, the unit the loss sees: N responses, at most K per list."""

    sequences: SequenceBatch | RolloutBatch  # the N responses: ranked-list sequences (data) or rollout rows (online)
    slot: Tensor  # (N,) place b * K + k of each response in the (B, K) grid
    scores: Tensor  # (B, K) higher is better: K-1 .. 0 down a ranked list, or the samples' rewards
    valid: Tensor  # (B, K) True on real responses (a ranked list shorter than K is padded)

    def to(self, device: torch.device | str) -> Lists:
        return type(self)(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def ranked_lists(rows: list[RankRow], indices: list[int], pad_id: int, row_length: int | None = None) -> Lists:
    """Lists from the data, best first: every response of the micro-batch in one batch (padded, or packed)."""
    k = max(len(rows[i].responses) for i in indices)
    sequences, slot, owner = [], [], []
    for b, i in enumerate(indices):
        sequences += rows[i].responses
        slot += [b * k + r for r in range(len(rows[i].responses))]
        owner += [i] * len(rows[i].responses)
    slot_t = torch.tensor(slot)
    valid = torch.zeros(len(indices) * k, dtype=torch.bool).index_fill(0, slot_t, True).view(-1, k)
    scores = torch.arange(k - 1, -1, -1, dtype=torch.float32).expand(len(indices), k).clone()
    return Lists(pad_sequences(sequences, owner, pad_id, row_length), slot_t, scores, valid)


def sampled_lists(r: Rollout, rows: range, k: int) -> Lists:
    """Lists from a rollout: each prompt's K contiguous samples, scored by the reward sources."""
    rows_t = torch.tensor(list(rows), device=r.score.device)
    return Lists(r.batch.select(rows_t), torch.arange(len(rows), device=r.score.device), r.score[rows_t].view(-1, k),
                 torch.ones(len(rows) // k, k, dtype=torch.bool, device=r.score.device))


def grid_logps(model, lists: Lists) -> tuple[Tensor, Tensor]:
    """(B, K) summed response log-probs and response token counts (0 on padding), one forward."""
    batch = lists.sequences
    if isinstance(batch, RolloutBatch):
        logps = masked_sum(response_logps(model, batch)[0], batch.response_mask, dim=-1)
        lengths = batch.response_mask.sum(-1)
    else:
        logps, lengths = sequence_logps(model, batch.input_ids, batch.attention_mask, batch.position_ids,
                                        batch.loss_mask, batch.segments)
    shape = lists.scores.shape
    return tuple(v.new_zeros(shape.numel()).index_copy(0, lists.slot, v).view(shape) for v in (logps, lengths.to(logps)))


def list_loss(cfg: RRHFConfig, model, lists: Lists) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-list loss (B,) = rank hinge sum + sft_weight x NLL per token of the best response; per-list stats."""
    logps, lengths = grid_logps(model, lists)
    rank, stats = rrhf_loss(logps, lengths, lists.scores, lists.valid)
    best = lists.scores.masked_fill(~lists.valid, -math.inf).argmax(-1, keepdim=True)
    nll = nll_term(logps.gather(-1, best).squeeze(-1), lengths.gather(-1, best).squeeze(-1))
    return rank + cfg.rrhf.sft_weight * nll, {"rank": rank.detach(), "nll": nll.detach(), "pairs": stats["pairs"],
                                              "correct": stats["accuracy"] * stats["pairs"]}


def list_means(sums: dict[str, float], lists: float) -> dict[str, float]:
    """Logged names of the per-list means; the accuracy is over pairs (NaN when no list had two distinct scores)."""
    pairs = sums["pairs"]
    return {"loss": sums["loss"] / lists, "loss_rank": sums["rank"] / lists, "nll_best": sums["nll"] / lists,
            "accuracy": sums["correct"] / pairs if pairs else math.nan, "pairs_per_list": pairs / lists}


def update(run: Run, step: int, cfg: RRHFConfig, model, optimizer, micro: list[Lists]) -> tuple[dict[str, float], float]:
    """One optimizer step over the step's micro-batches of lists, the loss ``aggregate``d over the step's list
    count on every process. Returns the step's per-list means and the gradient norm."""
    acc = run.accelerator
    denominator = acc.reduce(step_denominator([torch.ones(len(m.scores)) for m in micro], "seq_mean_token_mean")
                             .to(acc.device), "sum")  # lists in the step, over every process
    sums: dict[str, Tensor] = {}
    for i, lists in enumerate(micro):
        with micro_step(acc, model, last=i == len(micro) - 1):
            loss, stats = list_loss(cfg, model, lists)
            acc.backward(aggregate(loss, torch.ones_like(loss), denominator, "seq_mean_token_mean") * acc.num_processes)
        for key, value in {"loss": loss.detach(), **stats}.items():
            sums[key] = sums.get(key, 0) + value.float().sum()
    grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
    means = list_means({k: acc.reduce(v, "sum").item() for k, v in sums.items()}, denominator.item())
    if run.step_is_finite(step, {"rrhf loss": means["loss"], "grad_norm": grad_norm}):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return means, float(grad_norm)


@torch.no_grad()
def evaluate(cfg: RRHFConfig, model, rows: list[RankRow], pad_id: int, device) -> dict[str, float]:
    """The loss terms and the ranking accuracy of the policy's p_k on the eval lists."""
    if not rows:
        return {}
    model.eval()
    sums: dict[str, float] = {}
    for start in range(0, len(rows), cfg.train.batch_size):
        lists = ranked_lists(rows, list(range(start, min(start + cfg.train.batch_size, len(rows)))), pad_id,
                             cfg.data.row_length).to(device)
        loss, stats = list_loss(cfg, model, lists)
        for key, value in {"loss": loss, **stats}.items():
            sums[key] = sums.get(key, 0.0) + value.float().sum().item()
    model.train()
    return {f"{k}/eval": v for k, v in list_means(sums, len(rows)).items()}


def train_from_data(run: Run, cfg: RRHFConfig) -> dict:
    """RRHF on the ranked lists (or pairs) of data.train."""
    acc = run.accelerator
    tokenizer = load_tokenizer(cfg.model, announce=run.print)
    model = load_causal_lm(cfg.model, tokenizer, acc.device)
    model.train()
    pad_id = tokenizer.pad_token_id
    kind = preference_kind(cfg.data)
    train_examples, eval_examples = load_split(cfg.data, kind, cfg.train.seed)
    train_rows, train_report = cached(tokenize_rankings, train_examples, tokenizer, cfg.data, "train")
    eval_rows, eval_report = cached(tokenize_rankings, eval_examples, tokenizer, cfg.data, "eval")
    run.print(train_report.describe(f"train {kind}"))
    run.print(eval_report.describe(f"eval {kind}"))
    sample_prompts = ([e.prompt for e in eval_examples],
                      [(e.chosen if kind == "preference" else e.responses[0])[-1].content for e in eval_examples])

    model, optimizer, scheduler, steps, start = prepare_training(run, model, cfg.train, len(train_rows))
    trainable, total = count_parameters(model)
    run.print(f"rrhf ({kind} data, sft weight {cfg.rrhf.sft_weight}): {len(train_rows)} lists, "
              f"{steps} steps of {step_holds(cfg.data, cfg.train, 'lists')}, {trainable:,} of {total:,} parameters trainable")
    if start == 0:
        run.log.log(0, evaluate(cfg, model, eval_rows, pad_id, acc.device))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc="rrhf/data", disable=not (cfg.run.progress and run.is_main))
    clock, seen = time.time(), 0
    for step in range(start + 1, steps + 1):
        # 1. the step's ranked lists, best first (scores K-1 .. 0): a micro-batch's responses go in one forward
        micro = [ranked_lists(train_rows, idx, pad_id, cfg.data.row_length).to(acc.device) for idx in
                 step_indices(len(train_rows), step, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.seed,
                              acc.process_index, acc.num_processes)]
        # 2. loss per list, backward; clip, step, schedule
        means, grad_norm = update(run, step, cfg, model, optimizer, micro)
        scheduler.step()
        seen += cfg.train.batch_size * cfg.train.grad_accum
        # 3. log, eval, checkpoint
        if step % cfg.run.log_every == 0 or step == steps:
            run.log.log(step, {**{f"{k}/train": v for k, v in means.items()}, "lr": scheduler.get_last_lr()[0],
                               "grad_norm": grad_norm, "speed/lists_per_s": seen / max(time.time() - clock, 1e-9)})
            bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.2f}")
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, evaluate(cfg, model, eval_rows, pad_id, acc.device))
        if cfg.run.sample_every and step % cfg.run.sample_every == 0 and step != steps:
            sample_rows(run, model, tokenizer, *sample_prompts, step, cfg.run)
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.checkpoint(step, {}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    run.checkpoint(steps, {}, cfg.run.keep_checkpoints)
    final_eval = evaluate(cfg, model, eval_rows, pad_id, acc.device)
    run.log.log(steps, final_eval)
    sample_rows(run, model, tokenizer, *sample_prompts, steps, cfg.run)
    save_final(run, model, tokenizer, cfg.run)
    summary = {"steps": steps, "source": "data", "data_kind": kind, "sft_weight": cfg.rrhf.sft_weight,
               "final": {"loss/train": run.log.last("loss/train"), **final_eval},
               "lists_per_s": seen / max(time.time() - clock, 1e-9),
               "data": {"train": train_report.__dict__, "eval": eval_report.__dict__},
               "parameters": {"trainable": trainable, "total": total}}
    headline = [("steps", steps), ("eval ranking accuracy", final_eval.get("accuracy/eval", math.nan)),
                ("eval best-response NLL/token", final_eval.get("nll_best/eval", math.nan)),
                ("final model", str(run.dir / "final"))]
    return finish_run(run, summary, headline)


@dataclass
class Setup(RLSetup):
    """The shared RL pieces (no reference), plus the policy's optimizer and schedule and where the run starts."""

    optimizer: Any = None
    scheduler: Any = None
    steps: int = 0
    start: int = 0


def step_rollout(run: Run, cfg: RRHFConfig, s: Setup, step: int) -> tuple[Rollout, list[int]]:
    """This process's prompts of the step x K samples each (a prompt's K rows contiguous), each seeded by its row's
    place in the global batch (so 1 and N processes sample alike), scored and gathered. Returns the rollout and
    the prompt count of each of this process's micro-batches."""
    acc, k, batch = run.accelerator, cfg.rrhf.samples_per_prompt, cfg.train.batch_size
    examples, prompt_ids = s.train
    micro = step_indices(len(examples), step, batch, cfg.train.grad_accum, cfg.train.seed, acc.process_index,
                         acc.num_processes)
    rows = [i for idx in micro for i in idx for _ in range(k)]
    seeds = [seed for j, idx in enumerate(micro) for seed in rollout_seeds(
        cfg.train.seed, step, (j * batch + acc.process_index * len(idx)) * k, len(idx) * k)]
    r = collect(acc, s.engine, s.policy, [examples[i] for i in rows], [prompt_ids[i] for i in rows], seeds,
                sampling_params(cfg.sampling), s.rewards)
    return r, [len(idx) for idx in micro]


def train_online(run: Run, cfg: RRHFConfig) -> dict:
    """RRHF on K samples per prompt from the current policy, ranked by the reward sources."""
    k = cfg.rrhf.samples_per_prompt
    s = Setup(**vars(load_rl(run, cfg, with_reference=False)))
    policy, s.optimizer, s.scheduler, s.steps, s.start = prepare_training(run, s.policy, cfg.train, len(s.train[0]))
    s.ready(cfg, policy)
    steps = s.steps
    run.print(f"rrhf (online, K={k}, sft weight {cfg.rrhf.sft_weight}, {s.engine.name} engine): {len(s.train[0])} "
              f"prompts, {steps} steps of {step_holds(cfg.data, cfg.train, 'prompts')} x {k} samples, "
              f"{s.parameters[0]:,} of {s.parameters[1]:,} parameters trainable, "
              f"rewards: {', '.join(f'{x.weight:g} x {x.label}' for x in cfg.rewards)}")
    if s.start == 0:
        run.log.log(0, s.evaluate(cfg))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=s.start, desc="rrhf/online", disable=not (cfg.run.progress and run.is_main))
    tokens_total, train_clock = 0, time.time()
    for step in range(s.start + 1, steps + 1):
        # 1. rollout and score: K samples per prompt from the current policy, every reward source, gathered
        r, sizes = step_rollout(run, cfg, s, step)
        # 2. each prompt's K samples are a list ranked by their scores; micro-batches of this process's rows
        clock, starts = time.time(), [r.local.start + k * sum(sizes[:j]) for j in range(len(sizes))]
        micro = [sampled_lists(r, range(a, a + k * n), k) for a, n in zip(starts, sizes)]
        means, grad_norm = update(run, step, cfg, s.policy, s.optimizer, micro)
        s.scheduler.step()
        s.engine.sync(s.policy)  # the next rollout samples from the updated policy
        # 3. log, eval, checkpoint (rewards over the whole batch of every process)
        tokens_total += int(r.lengths.sum().item())
        if step % cfg.run.log_every == 0 or step == steps:
            run.log.log(step, {**{f"{key}/train": v for key, v in means.items()},
                               "reward/score": r.score.mean().item(), "reward/score_std": r.score.std().item(),
                               **{f"reward/{key}": v.mean().item() for key, v in r.rewards.items()},
                               "length/mean": r.lengths.float().mean().item(),
                               "eos_rate/train": r.batch.finished.float().mean().item(), **diversity(r.texts),
                               "lr": s.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                               "time/generate_s": r.seconds["generate"], "time/score_s": r.seconds["score"],
                               "time/train_s": time.time() - clock,
                               "speed/tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9)})
            bar.set_postfix(reward=f"{r.score.mean().item():.3f}", acc=f"{means['accuracy']:.2f}")
        if (cfg.run.sample_every and step % cfg.run.sample_every == 0) or step == steps:
            run.log.add_samples(step, [{"prompt": r.examples[i].prompt[-1].content, "response": r.texts[i],
                                        "reward": r.score[i].item()} for i in range(r.local.start, r.local.stop)][: cfg.run.num_samples])
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, s.evaluate(cfg))
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.checkpoint(step, {}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    run.checkpoint(steps, {}, cfg.run.keep_checkpoints)
    final_eval = s.evaluate(cfg)
    run.log.log(steps, final_eval)
    save_final(run, s.policy, s.tokenizer, cfg.run)
    first = run.log.rows[0] if run.log.rows else {}
    summary = {"steps": steps, "source": "online", "samples_per_prompt": k, "sft_weight": cfg.rrhf.sft_weight,
               "engine": s.engine.name, "final": final_eval,
               "initial": {key: v for key, v in first.items() if key.startswith("reward_eval/")},
               "tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9), "prompts": s.prompts,
               "parameters": {"trainable": s.parameters[0], "total": s.parameters[1]}}
    headline = [("steps", steps),  # each eval reward before -> after follows (runtime.reward_gap)
                ("final model", str(run.dir / "final"))]
    return finish_run(run, summary, headline)


TRAIN_FROM = {"data": train_from_data, "online": train_online}  # rrhf.source -> its loop


def train(cfg: RRHFConfig, resume: str | bool | None = None) -> dict:
    """Run RRHF as configured; returns the summary (also written to the run folder)."""
    return TRAIN_FROM[cfg.rrhf.source](start_run(cfg, "rrhf", resume), cfg)
