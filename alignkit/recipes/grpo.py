"""Group-relative policy optimisation: GRPO, GSPO, Dr.GRPO, DAPO's options, RLOO and REINFORCE++ in one loop.

Loop per step: B prompts x G sampled responses (rollout) -> rewards from every source (score) -> group-relative
advantages (advantages) -> mu updates of the clipped policy loss (+ beta KL to the reference) over micro-batches,
``aggregate``d over the whole rollout batch (update) -> log, eval, checkpoint.

Departures from the papers (numbered, as they matter when reading curves):
1. One optimizer step per iteration over the whole rollout batch (micro-batches accumulate), so the loss does not
   depend on ``micro_batch_size``; the learning-rate schedule advances once per rollout step.
2. With ``num_iterations`` = 1 the old log-probs are the current ones, detached: the ratio is 1 with the right
   gradient, and the extra no-grad forward is skipped. With mu > 1 they are computed once after the rollout.
3. Log-probs are computed with logits divided by the sampling temperature: the distribution that actually produced
   the tokens (a frequent peer bug).
4. KL to the reference is a loss term (k3), as in GRPO, not a reward penalty; with beta = 0 no reference is loaded.
5. Dynamic sampling drops zero-spread groups from the update instead of resampling until the batch is full.
6. Rollouts are seeded per row (train.seed, step, row), and group statistics are taken over the whole batch of
   every process, so 1 and N processes, and a resumed run, train identically.
7. With ``sampling.correction`` the policy term is reweighted by the engine-mismatch correction (truncated or
   masked importance sampling of pi_train / pi_rollout); the KL and entropy terms are not.
8. In an environment (``environment:``), a group is G episodes of one prompt; the score is the episode's end
   reward plus its per-turn rewards, and every term (policy loss, KL, entropy) counts the policy's own tokens
   only: tool results and other environment tokens are context.
9. ``advantage: process`` (DeepSeekMath's process supervision) gives per-token advantages from a process reward
   model's step scores; the rest of the score (other sources, the no-EOS penalty) adds its GRPO advantage to every
   token, where the paper has the process rewards alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..advantages import ADVANTAGES, process_advantages, zero_spread_groups
from ..config import GRPOConfig
from ..losses import POLICY_LOSSES, aggregate, engine_correction, step_denominator
from ..ops import kl_estimate, response_logps
from ..replay import Replay, load_replay
from ..rollout.core import (
    Rollout,
    chunks_of,
    collect,
    diversity,
    episode_metrics,
    policy_logps,
    rollout_seeds,
    rows_logps,
    sampling_params,
)
from ..rollout.setup import RLSetup, load_rl
from ..runtime import Run, finish_run, micro_step, prepare_training, save_final, start_run, step_indices


@dataclass
class Setup(RLSetup):
    """The shared RL pieces, plus the policy's optimizer and schedule and where the run starts."""

    optimizer: Any = None
    scheduler: Any = None
    steps: int = 0
    start: int = 0
    replay: Replay | None = None  # PPO-ptx's pretraining / SFT term (replay:)


def set_up(run: Run, cfg: GRPOConfig) -> Setup:
    s = Setup(**vars(load_rl(run, cfg, with_reference=cfg.grpo.beta > 0)))  # no reference at all when beta = 0
    s.replay = load_replay(cfg.replay, cfg.data, s.tokenizer, cfg.train.batch_size, run.accelerator.num_processes,
                           cfg.train.seed, run.print)
    policy, s.optimizer, s.scheduler, s.steps, s.start = prepare_training(run, s.policy, cfg.train, len(s.train[0]))
    s.ready(cfg, policy)
    return s


def describe(cfg: GRPOConfig, s: Setup, world: int) -> str:
    """The run header: the variant, what one step samples and trains, what is rewarded."""
    g, mu = cfg.grpo.group_size, cfg.grpo.num_iterations
    return (f"grpo ({cfg.grpo.advantage}, {cfg.grpo.ratio} policy loss, G={g}, mu={mu}, beta={cfg.grpo.beta}, "
            f"{s.engine.name} engine): {len(s.train[0])} prompts, {s.steps} steps x {cfg.train.batch_size} prompts "
            f"x {g} samples ({cfg.train.batch_size // world * g} sequences per process), {mu} optimizer "
            f"step(s) per rollout step, {s.parameters[0]:,} of {s.parameters[1]:,} parameters trainable, "
            f"rewards: {', '.join(f'{x.weight:g} x {x.label}' for x in cfg.rewards)}")


def update(run, step: int, cfg: GRPOConfig, s: Setup, r: Rollout, advantages, mask, old_logps, ref_logps,
           chunks) -> tuple[dict[str, torch.Tensor], float, dict[str, float]]:
    """mu optimizer steps, each over this process's rows of the rollout in micro-batches, the loss aggregated over
    the step's global count (plus the replay term, when on, as the last micro-step). Every tensor is indexed by
    global row. Returns summed stats (this process's share, averaged over the mu passes), the last gradient norm
    and figures already global (the replay NLL)."""
    acc, mu, temperature, model, sampling = run.accelerator, cfg.grpo.num_iterations, cfg.sampling.temperature, s.policy, cfg.sampling
    denominator = acc.reduce(step_denominator([mask[c] for c in chunks], cfg.grpo.aggregation,
                                              s.play.token_budget(cfg.sampling.max_new_tokens)).to(acc.device), "sum")
    sums: dict[str, torch.Tensor] = {}
    replay_nll = 0.0
    for k in range(mu):
        pass_loss = torch.zeros((), device=acc.device)
        for i, chunk in enumerate(chunks):
            with micro_step(acc, model, last=i == len(chunks) - 1 and s.replay is None):
                sub, sub_mask = r.batch.select(chunk), mask[chunk]
                logps, entropy = response_logps(model, sub, temperature, with_entropy=True)
                old = old_logps[chunk] if old_logps is not None else logps.detach()
                adv = advantages[chunk] if advantages.dim() == 2 else advantages[chunk].unsqueeze(-1).expand_as(logps)
                per_token, stats = POLICY_LOSSES[cfg.grpo.ratio](logps, old, adv, sub_mask, **cfg.grpo.loss_knobs)
                if sampling.correction != "none":
                    weight, mismatch = engine_correction(old, r.sample_logps[chunk], sub_mask, sampling.correction,
                                                         sampling.correction_level, sampling.correction_cap)
                    per_token, stats = per_token * weight, {**stats, **mismatch}
                if ref_logps is not None:
                    kl = kl_estimate(logps, ref_logps[chunk], cfg.grpo.kl_estimator)
                    per_token = per_token + cfg.grpo.beta * kl * sub_mask
                    stats["kl"] = kl.detach() * sub_mask
                if cfg.grpo.entropy_coef:
                    per_token = per_token - cfg.grpo.entropy_coef * entropy * sub_mask
                stats["entropy"] = entropy.detach() * sub_mask
                loss = aggregate(per_token, sub_mask, denominator, cfg.grpo.aggregation)
                acc.backward(loss * acc.num_processes)  # DDP averages gradients over processes; undo that
            pass_loss += loss.detach()
            for key, value in {"loss": loss.detach(), **stats}.items():
                sums[key] = sums.get(key, 0.0) + value.sum() / mu
        if s.replay is not None:  # PPO-ptx: + coef * NLL of earlier data, in the last (synchronising) micro-step
            with micro_step(acc, model, last=True):
                replay_loss, nll = s.replay.loss(acc, model, (step - 1) * mu + k + 1)
                acc.backward(replay_loss * acc.num_processes)
            replay_nll += nll.item() / mu
        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
        if run.step_is_finite(step, {"policy loss": acc.reduce(pass_loss, "sum"), "grad_norm": grad_norm}):
            s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
    return sums, float(grad_norm), {"replay/nll": replay_nll} if s.replay is not None else {}


def advantages_of(cfg: GRPOConfig, r: Rollout, keep: torch.Tensor) -> torch.Tensor:
    """(B,) one advantage per response; under ``advantage: process`` (B, R) per token: the process reward models'
    step scores normalised over each group's steps (DeepSeekMath 4.1.3), plus GRPO's advantage of the rest of the
    score (the other sources, the no-EOS penalty), the same on every token of a response."""
    g = cfg.grpo.group_size
    if cfg.grpo.advantage != "process":
        return ADVANTAGES[cfg.grpo.advantage](r.score, g, 1e-6, keep)
    outcome = ADVANTAGES["grpo"](r.outcome_score, g, 1e-6, keep)
    return outcome.unsqueeze(-1) + process_advantages(r.step_rewards, r.step_ends, g)


def step_metrics(acc, r: Rollout, sums: dict, mask, keep, flat_groups, extra: dict[str, float]) -> dict[str, float]:
    """The step's logged figures, over the whole batch of every process."""
    totals = {k: v.item() for k, v in zip(sums, acc.reduce(torch.stack(list(sums.values())), "sum"))}
    n_tokens = max(mask.sum().item(), 1)
    score = r.score
    metrics = {"reward/score": score.mean().item(), "reward/score_std": score.std().item(),
               **{f"reward/{k}": v.mean().item() for k, v in r.rewards.items()},
               **{f"reward_std/{k}": v.std().item() for k, v in r.rewards.items()},
               "loss/policy": totals["loss"], "groups/zero_spread_frac": flat_groups.float().mean().item(),
               "groups/kept_rows_frac": keep.float().mean().item(), **diversity(r.texts),
               **{f"policy/{name}": totals[key] / n_tokens for name, key in (
                   ("clipfrac", "clipfrac"), ("clip_low_frac", "clip_low"), ("clip_high_frac", "clip_high"),
                   ("approx_kl", "approx_kl"))},
               "entropy": totals["entropy"] / n_tokens, "ratio/mean": totals["ratio"] / n_tokens,
               "length/mean": r.lengths.float().mean().item(), "eos_rate/train": r.batch.finished.float().mean().item(),
               **episode_metrics(r), **extra}
    for key, name in (("kl", "kl/per_token"), ("mismatch_kl", "mismatch/kl"), ("corrected", "mismatch/corrected_frac")):
        if key in totals:
            metrics[name] = totals[key] / n_tokens
    return metrics


def train(cfg: GRPOConfig, resume: str | bool | None = None) -> dict:
    """Run GRPO (or a variant) as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "grpo", resume)
    acc, g, mu, temperature = run.accelerator, cfg.grpo.group_size, cfg.grpo.num_iterations, cfg.sampling.temperature
    s = set_up(run, cfg)
    (train_examples, prompt_ids), steps = s.train, s.steps
    run.print(describe(cfg, s, acc.num_processes))
    if s.start == 0:
        run.log.log(0, s.evaluate(cfg))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=s.start, desc=f"grpo/{cfg.grpo.advantage}", disable=not (cfg.run.progress and run.is_main))
    tokens_total, train_clock = 0, time.time()
    for step in range(s.start + 1, steps + 1):
        # 1. rollout: this process's prompts x G samples each (a group's rows contiguous), seeded per global row,
        #    scored by every reward source, gathered: the whole batch on every process
        idx = step_indices(len(train_examples), step, cfg.train.batch_size, 1, cfg.train.seed, acc.process_index,
                           acc.num_processes)[0]
        rows = [i for i in idx for _ in range(g)]
        r = collect(acc, s.engine, s.policy, [train_examples[i] for i in rows], [prompt_ids[i] for i in rows],
                    rollout_seeds(cfg.train.seed, step, acc.process_index * len(rows), len(rows)),
                    sampling_params(cfg.sampling), s.rewards, cfg.grpo.missing_eos_penalty, s.play)

        # 2. group-relative advantages over the whole batch; rows that get no gradient (dropped groups, truncations)
        clock = time.time()
        flat_groups = zero_spread_groups(r.score, g)
        keep = torch.ones_like(r.score, dtype=torch.bool)
        if cfg.grpo.dynamic_sampling:
            keep &= ~flat_groups.repeat_interleave(g)
        if cfg.grpo.mask_truncated:
            keep &= r.batch.finished
        advantages = advantages_of(cfg, r, keep)
        mask = r.batch.response_mask * keep.unsqueeze(-1)
        chunks = chunks_of(range(r.local.start, r.local.stop), cfg.grpo.micro_batch_size)
        old_logps = rows_logps(acc, policy_logps(s.policy, temperature), r.batch, chunks) if mu > 1 else None
        ref_logps = (rows_logps(acc, lambda b: s.reference.response_logps(b, temperature), r.batch, chunks)
                     if s.reference is not None else None)

        # 3. update: mu optimizer steps, each over the whole rollout batch; then the engine gets the new weights
        sums, grad_norm, figures = update(run, step, cfg, s, r, advantages, mask, old_logps, ref_logps, chunks)
        s.scheduler.step()
        s.engine.sync(s.policy)
        t_train = time.time() - clock

        # 4. log, eval, checkpoint (every figure over the whole batch of every process)
        tokens_total += int(r.lengths.sum().item())
        if step % cfg.run.log_every == 0 or step == steps:
            run.log.log(step, step_metrics(acc, r, sums, mask, keep, flat_groups, {
                "lr": s.scheduler.get_last_lr()[0], "grad_norm": grad_norm, "time/generate_s": r.seconds["generate"],
                "time/score_s": r.seconds["score"], "time/train_s": t_train,
                "speed/tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9), **figures}))
            bar.set_postfix(reward=f"{r.score.mean().item():.3f}")
        if (cfg.run.sample_every and step % cfg.run.sample_every == 0) or step == steps:
            run.log.add_samples(step, [{"prompt": r.examples[i].prompt[-1].content,
                                        "response": r.transcripts[i] if r.transcripts else r.texts[i],
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
    summary = {"steps": steps, "algorithm": {"advantage": cfg.grpo.advantage, "ratio": cfg.grpo.ratio, "group_size": g,
                                             "num_iterations": mu, "beta": cfg.grpo.beta, "engine": s.engine.name},
               "final": final_eval, "initial": {k: v for k, v in first.items() if k.startswith("reward_eval/")},
               "tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9), "prompts": s.prompts,
               "parameters": {"trainable": s.parameters[0], "total": s.parameters[1]}}
    headline = [("steps", steps),  # each eval reward before -> after follows (runtime.reward_gap)
                ("final model", str(run.dir / "final"))]
    return finish_run(run, summary, headline)
