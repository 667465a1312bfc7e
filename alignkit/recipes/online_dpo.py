"""Online and iterative DPO: preference pairs sampled from the current policy and ranked by a judge, every step.

Loop per step: B prompts x K sampled responses (rollout) -> the judge scores them (reward sources: a reward model,
a Python function, an LLM judge, or the policy itself, ``judge: self``) -> per prompt, the best against the worst
(judged pairs) -> the DPO-family loss on those pairs (``dpo.loss``, the offline recipe's math) -> one optimizer
step -> the reference's schedule (iterations, trust region) -> log, eval, checkpoint.

Departures from the papers (Guo et al. 2024 "Direct language model alignment from online AI feedback"; Yuan et al.
2024 "Self-rewarding language models"; Xu et al. 2023 iterative DPO; Gorbatovski et al. 2024 TR-DPO):
1. Iterative DPO samples once per iteration and trains on that set; here every step samples afresh (OAIF) and
   ``online.iterations`` only resets the reference to the current policy at each iteration's first step, so
   iterations = 1 is OAIF and iterations = N is the iterative schedule on on-policy data.
2. Pairs are best vs worst of K by the judge's weighted total; a prompt whose K responses tie (or whose best and
   worst are the same text) gives no pair that step, and the step's loss is the mean over the pairs it has.
3. Self-rewarding asks the live policy to score each answer with the judge template (LLM-as-a-judge scoring), not
   the paper's separate judge-training data; the policy judges with the weights it has when the step samples.
4. Rollouts are seeded per row (train.seed, step, row) and pairs are formed over the whole gathered batch, so 1 and
   N processes, and a resumed run, train identically (a moving reference is saved with every checkpoint).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..config import OnlineDPOConfig
from ..losses import REFERENCE_FREE, aggregate
from ..models import move_reference
from ..ops import masked_sum, response_logps
from ..rollout.core import Rollout, chunks_of, collect, diversity, rollout_seeds, sampling_params
from ..rollout.setup import RLSetup, load_rl
from ..runtime import Run, finish_run, micro_step, prepare_training, save_final, start_run, step_indices
from .dpo import metric_name, preference_loss


@dataclass
class Setup(RLSetup):
    optimizer: Any = None
    scheduler: Any = None
    steps: int = 0
    start: int = 0


def set_up(run: Run, cfg: OnlineDPOConfig) -> Setup:
    with_reference = cfg.dpo.loss not in REFERENCE_FREE
    s = Setup(**vars(load_rl(run, cfg, with_reference, cfg.dpo.reference_model)))
    if with_reference and (cfg.online.iterations > 1 or cfg.dpo.reference_update != "none"):
        s.reference.check_follows(s.policy)  # a moving reference: refused here if it cannot move, else checkpointed
        run.accelerator.register_for_checkpointing(s.reference.model)
    policy, s.optimizer, s.scheduler, s.steps, s.start = prepare_training(run, s.policy, cfg.train, len(s.train[0]))
    s.ready(cfg, policy)
    return s


def judged_pairs(score: torch.Tensor, texts: tuple[str, ...], k: int) -> tuple[list[int], list[int]]:
    """Global rows of each group's best and worst response by ``score`` (B*K,), K rows per group; groups whose best
    and worst tie, or are the same text, give no pair."""
    chosen, rejected = [], []
    for first in range(0, len(score), k):
        group = score[first : first + k]
        best, worst = first + int(group.argmax()), first + int(group.argmin())
        if score[best] > score[worst] and texts[best] != texts[worst]:
            chosen.append(best)
            rejected.append(worst)
    return chosen, rejected


def pair_logps(model, r: Rollout, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs (N,) and lengths (N,) of rollout ``rows`` under ``model`` (temperature 1: DPO's
    implicit reward is the policy's own log-ratio, whatever distribution sampled the responses)."""
    sub = r.batch.select(rows)
    logps = response_logps(model, sub)[0]
    return masked_sum(logps, sub.response_mask, dim=-1), sub.response_mask.sum(-1)


def update(run: Run, step: int, cfg: OnlineDPOConfig, s: Setup, r: Rollout, chosen: list[int], rejected: list[int]
           ) -> tuple[dict[str, torch.Tensor], float]:
    """One optimizer step over this process's pairs in micro-batches, the loss the mean over every process's pairs.
    Returns the summed per-pair stats (this process's) and the gradient norm."""
    acc, model = run.accelerator, s.policy
    mine = [i for i, row in enumerate(chosen) if r.local.start <= row < r.local.stop]
    denominator = acc.reduce(torch.tensor(float(len(mine)), device=acc.device), "sum")
    sums: dict[str, torch.Tensor] = {}
    chunks = chunks_of(mine, cfg.online.micro_batch_size) or [[]]
    for i, chunk in enumerate(chunks):
        with micro_step(acc, model, last=i == len(chunks) - 1):
            if not chunk:  # no pair here this step: a zero loss keeps every process's collectives in step
                acc.backward(sum(p.sum() for p in model.parameters()) * 0.0)
                continue
            rows = [chosen[j] for j in chunk] + [rejected[j] for j in chunk]
            logps, lengths = pair_logps(model, r, rows)
            ref = None
            if s.reference is not None:
                with torch.no_grad():
                    sub = r.batch.select(rows)
                    ref = masked_sum(s.reference.response_logps(sub), sub.response_mask, dim=-1).chunk(2)
            loss, stats = preference_loss(cfg.dpo, logps.chunk(2), lengths.chunk(2), ref)
            acc.backward(aggregate(loss, torch.ones_like(loss), denominator, "seq_mean_token_mean") * acc.num_processes)
        for key, value in {"loss": loss.detach(), **stats}.items():
            sums[key] = sums.get(key, 0.0) + value.float().sum()
    grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
    total_loss = acc.reduce(sums.get("loss", torch.zeros((), device=acc.device)), "sum") / denominator.clamp(min=1)
    if run.step_is_finite(step, {f"{cfg.dpo.loss} loss": total_loss, "grad_norm": grad_norm}):
        s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    return sums, float(grad_norm)


def train(cfg: OnlineDPOConfig, resume: str | bool | None = None) -> dict:
    """Run online / iterative DPO as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "online_dpo", resume)
    acc, k = run.accelerator, cfg.online.samples_per_prompt
    s = set_up(run, cfg)
    (train_examples, prompt_ids), steps = s.train, s.steps
    iteration_steps = math.ceil(steps / cfg.online.iterations)
    run.print(f"online dpo ({cfg.dpo.loss}, beta {cfg.dpo.beta}, K={k}, {cfg.online.iterations} iteration(s) of "
              f"{iteration_steps} steps, reference update {cfg.dpo.reference_update}, {s.engine.name} engine): "
              f"{len(train_examples)} prompts, {steps} steps x {cfg.train.batch_size} prompts, {s.parameters[0]:,} of "
              f"{s.parameters[1]:,} parameters trainable, judge: {', '.join(f'{x.weight:g} x {x.label}' for x in cfg.rewards)}")
    if s.start == 0:
        run.log.log(0, s.evaluate(cfg))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=s.start, desc=f"online_dpo/{cfg.dpo.loss}", disable=not (cfg.run.progress and run.is_main))
    clock = time.time()
    for step in range(s.start + 1, steps + 1):
        # 0. iterative DPO: each iteration's first step starts from a reference equal to the current policy
        if step > 1 and (step - 1) % iteration_steps == 0 and cfg.online.iterations > 1 and s.reference is not None:
            s.reference.follow(s.policy, 1.0)
        # 1. rollout: this process's prompts x K samples (a group's rows contiguous), judged, gathered
        idx = step_indices(len(train_examples), step, cfg.train.batch_size, 1, cfg.train.seed, acc.process_index,
                           acc.num_processes)[0]
        rows = [i for i in idx for _ in range(k)]
        r = collect(acc, s.engine, s.policy, [train_examples[i] for i in rows], [prompt_ids[i] for i in rows],
                    rollout_seeds(cfg.train.seed, step, acc.process_index * len(rows), len(rows)),
                    sampling_params(cfg.sampling), s.rewards)
        # 2. judged pairs over the whole batch: best against worst per prompt
        chosen, rejected = judged_pairs(r.score, r.texts, k)
        # 3. update on the pairs; the reference's trust-region schedule; the engine gets the new weights
        clock_train = time.time()
        sums, grad_norm = update(run, step, cfg, s, r, chosen, rejected)
        s.scheduler.step()
        move_reference(s.reference, s.policy, cfg.dpo.reference_update, cfg.dpo.reference_alpha,
                       cfg.dpo.reference_every, step)
        s.engine.sync(s.policy)
        # 4. log, eval, checkpoint (figures over the whole batch of every process)
        if step % cfg.run.log_every == 0 or step == steps:
            totals = {key: acc.reduce(v, "sum").item() for key, v in sums.items()} if sums else {}
            n_pairs = max(len(chosen), 1)
            run.log.log(step, {**{metric_name(key): v / n_pairs for key, v in totals.items()},
                               "reward/score": r.score.mean().item(), "reward/score_std": r.score.std().item(),
                               **{f"reward/{key}": v.mean().item() for key, v in r.rewards.items()},
                               "pairs/kept_frac": len(chosen) / max(len(r.score) // k, 1),
                               "pairs/judge_margin": (r.score[chosen] - r.score[rejected]).mean().item() if chosen else 0.0,
                               "length/mean": r.lengths.float().mean().item(), **diversity(r.texts),
                               "eos_rate/train": r.batch.finished.float().mean().item(),
                               "lr": s.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                               "time/generate_s": r.seconds["generate"], "time/score_s": r.seconds["score"],
                               "time/train_s": time.time() - clock_train})
            bar.set_postfix(reward=f"{r.score.mean().item():.3f}", pairs=len(chosen))
        if (cfg.run.sample_every and step % cfg.run.sample_every == 0) or step == steps:
            run.log.add_samples(step, [{"prompt": r.examples[c].prompt[-1].content, "chosen": r.texts[c],
                                        "rejected": r.texts[j], "judge_margin": (r.score[c] - r.score[j]).item()}
                                       for c, j in zip(chosen, rejected)][: cfg.run.num_samples])
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
    summary = {"steps": steps, "loss": cfg.dpo.loss, "beta": cfg.dpo.beta, "samples_per_prompt": k,
               "iterations": cfg.online.iterations, "reference_update": cfg.dpo.reference_update,
               "final": final_eval, "initial": {key: v for key, v in first.items() if key.startswith("reward_eval/")},
               "seconds": time.time() - clock, "prompts": s.prompts,
               "parameters": {"trainable": s.parameters[0], "total": s.parameters[1]}}
    headline = [("steps", steps), ("loss", f"{cfg.dpo.loss} (beta {cfg.dpo.beta}), K = {k}"),
                ("final model", str(run.dir / "final"))]  # each eval reward before -> after follows
    return finish_run(run, summary, headline)
