"""PPO with a critic, the RLHF stage of InstructGPT: actor (trained), critic (trained), reference (frozen),
reward (frozen reward model and / or Python reward functions).

Loop per step: sample one response per prompt (rollout) -> score, normalise, clip; old log-probs, reference
log-probs and values (score) -> per-token reward = -kl_coef * KL_t (+ score at the last token), GAE, whitening
(advantages) -> ppo_epochs passes of shuffled mini-batches: clipped policy loss on the actor, clipped value loss on
the critic, separate optimizers (update) -> adaptive KL controller -> log, eval, checkpoint.

Departures from InstructGPT / Ziegler et al.:
1. Log-probs are computed with logits divided by the sampling temperature (the distribution that produced the
   tokens); dropout is off in all four models so rollout-time and update-time log-probs agree.
2. Rewards are normalised with the mean / std stored beside the reward model by ``alignkit rm`` (no guessing),
   then clipped; PPO-ptx (pretraining mix) is not implemented.
3. Each mini-batch's loss is a token mean over the whole mini-batch, split-invariant across micro-batches.
4. The critic is a separate model, initialised from the reward model by default (as in InstructGPT), or a value
   head on the actor's backbone (``ppo.critic: shared``: the value loss, weighted by vf_coef, also trains the
   backbone); with LoRA the reference is the actor's base weights with the adapter disabled.
5. Multi-process: each process samples and scores its slice of the prompts, then the rollout is gathered, so
   advantages, whitening, reward normalisation and the KL controller see the whole batch; each global mini-batch
   (a seeded permutation of the whole batch) is split evenly over the processes. Rollouts are seeded per row.
   1 and N processes, and a resumed run, train identically (tested).
6. With ``sampling.correction`` the policy term is reweighted by the engine-mismatch correction (truncated or
   masked importance sampling of pi_train / pi_rollout); the value loss and KL penalty are not.
7. In an environment (``environment:``), the critic values the policy's own tokens only and GAE steps from one
   policy token to the next across the environment's replies (context, not actions); an environment's per-turn
   rewards land on each turn's last token, its end reward (with the reward sources') on the episode's last.
8. A process reward model source (``process_reward_model``) rewards each step on the token where the step ends (the
   last step on the response's last token), as Math-Shepherd's step-by-step PPO, instead of adding its aggregate
   to the sequence score; its step scores (probabilities) are not normalised or clipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..advantages import RunningMoments, adaptive_kl_coef, gae, kl_shaped_rewards
from ..config import ConfigError, PPOConfig
from ..losses import aggregate, engine_correction, ppo_policy_loss, step_denominator, value_loss
from ..models import (
    SharedValueHead,
    ValueModel,
    disable_dropout,
    load_reward_model,
    token_values,
)
from ..ops import explained_variance, kl_estimate, masked_mean, masked_whiten, response_logps
from ..replay import Replay, load_replay
from ..rollout.core import (
    Rollout,
    chunks_of,
    collect,
    diversity,
    episode_metrics,
    gather_rows,
    policy_logps,
    rollout_seeds,
    rows_logps,
    sampling_params,
)
from ..rollout.setup import RLSetup, load_rl
from ..runtime import (
    Run,
    finish_run,
    micro_step,
    prepare_models,
    require_divisible,
    save_final,
    start_run,
    step_indices,
    total_steps,
)


def response_values(critic, batch) -> torch.Tensor:
    """V(s_t) for each response token t: the critic's head at the position before the token, (B, R)."""
    values = token_values(critic, batch.input_ids, batch.attention_mask, batch.position_ids)
    return values[:, batch.prompt_width - 1 : -1]


def load_critic(cfg: PPOConfig, actor, tokenizer, device, num_processes: int):
    """A separate critic model (from ppo.critic_model / the reward model / the policy), or a value head on the
    actor's own backbone."""
    if cfg.ppo.critic == "shared":
        if num_processes > 1:
            raise ConfigError("ppo.critic = shared is single-process only; use ppo.critic = separate with several GPUs")
        return SharedValueHead(actor)
    critic_cfg = cfg.model.model_copy(update={"name_or_path": cfg.critic_path})
    return ValueModel(load_reward_model(critic_cfg, tokenizer, device))


@dataclass
class Setup(RLSetup):
    """The shared RL pieces, plus the critic, both optimizers and schedules, and the restored trainer state."""

    critic: Any = None
    optimizers: tuple[Any, Any] = (None, None)  # (actor, critic)
    schedulers: tuple[Any, Any] = (None, None)
    steps: int = 0
    per_step: int = 0  # optimizer steps per rollout step
    state: dict[str, Any] = field(default_factory=dict)  # the restored trainer state ({"step": 0} when fresh)
    replay: Replay | None = None  # PPO-ptx's pretraining / SFT term (replay:)


def set_up(run: Run, cfg: PPOConfig) -> Setup:
    acc, p = run.accelerator, cfg.ppo
    require_divisible(acc.num_processes, {"ppo.mini_batch_size": p.mini_batch_size})
    s = Setup(**vars(load_rl(run, cfg, with_reference=True)))
    s.replay = load_replay(cfg.replay, cfg.data, s.tokenizer, p.mini_batch_size, acc.num_processes, cfg.train.seed,
                           run.print)
    critic = load_critic(cfg, s.policy, s.tokenizer, acc.device, acc.num_processes)
    disable_dropout(critic)  # values at rollout time and update time must agree
    critic.train()
    s.steps = total_steps(cfg.train, len(s.train[0]), cfg.train.batch_size)
    s.per_step = p.ppo_epochs * (cfg.train.batch_size // p.mini_batch_size)
    # the actor does not move during the critic's warm-up, so its schedule spans the remaining steps only
    ((actor, actor_opt, actor_sched), (s.critic, critic_opt, critic_sched)), s.state = prepare_models(run, cfg.train, [
        (s.policy, max(1, s.steps - p.critic_warmup_steps) * s.per_step, None), (critic, s.steps * s.per_step, p.critic_lr)])
    s.optimizers, s.schedulers = (actor_opt, critic_opt), (actor_sched, critic_sched)
    s.ready(cfg, actor)
    return s


def describe(cfg: PPOConfig, s: Setup) -> str:
    """The run header: what one step does, where the critic comes from, what is trained and rewarded."""
    p = cfg.ppo
    critic_from = "a value head on the actor" if p.critic == "shared" else cfg.critic_path
    return (f"ppo ({s.engine.name} engine): {len(s.train[0])} prompts, {s.steps} steps x {cfg.train.batch_size} "
            f"rollouts, {p.ppo_epochs} epochs x {cfg.train.batch_size // p.mini_batch_size} mini-batches = "
            f"{s.per_step} optimizer steps per rollout step (train.lr applies to each), critic from {critic_from}, "
            f"actor {s.parameters[0]:,} of {s.parameters[1]:,} trainable, "
            f"rewards: {', '.join(f'{x.weight:g} x {x.label}' for x in cfg.rewards)}")


def shaped_scores(cfg: PPOConfig, r: Rollout, moments: RunningMoments) -> torch.Tensor:
    """The whole batch's sequence scores as PPO optimises them: the rollout's score (reward sources less the
    no-EOS penalty; a process reward model's steps are rewarded on their tokens instead), less the length penalty,
    normalised, clipped. (B,)"""
    p = cfg.ppo
    scores = r.outcome_score - p.length_penalty * r.lengths.float()
    if p.reward_norm == "running":
        moments.update(scores)
        scores = moments.normalise(scores)
    elif p.reward_norm == "batch":
        scores = (scores - scores.mean()) / (scores.std() + 1e-6)
    return scores.clamp(-p.reward_clip, p.reward_clip)


def update(run, step: int, cfg: PPOConfig, s: Setup, r: Rollout, mask, old_logps, ref_logps, old_values, advantages,
           returns, weights, kl_coef: float, train_actor: bool) -> tuple[dict, dict]:
    """ppo_epochs passes of seeded, shuffled global mini-batches; this process trains its share of each, in
    micro-batches; actor and critic step with their own optimizers (the actor sits out the critic's warm-up).
    ``weights``: (B, R) engine-correction weights of the policy term, or None.
    Returns (per-token stat sums of this process's share, figures already global: losses, grad norms, updates)."""
    acc, p, temperature = run.accelerator, cfg.ppo, cfg.sampling.temperature
    actor, critic, world, rank = s.policy, s.critic, acc.num_processes, acc.process_index
    trained = list(zip(s.optimizers, s.schedulers))[0 if train_actor else 1 :]
    sums: dict[str, torch.Tensor] = {}
    glob: dict[str, float] = {"policy_loss": 0.0, "value_loss": 0.0, "updates": 0, "replay_nll": 0.0}
    ptx = s.replay if train_actor else None  # PPO-ptx trains the actor: not during the critic's warm-up
    for epoch in range(p.ppo_epochs):
        order = torch.randperm(mask.shape[0], generator=torch.Generator().manual_seed(
            (cfg.train.seed * 1_000_003 + step) * 101 + epoch)).tolist()
        for mini in chunks_of(order, p.mini_batch_size):
            denominator = step_denominator([mask[mini]]).to(acc.device)  # the whole mini-batch's token count
            share = p.mini_batch_size // world
            micro = chunks_of(mini[rank * share : (rank + 1) * share], p.micro_batch_size)
            losses = torch.zeros(2, device=acc.device)
            for i, rows in enumerate(micro):
                sub, sub_mask = r.batch.select(rows), mask[rows]
                with micro_step(acc, actor, critic, last=i == len(micro) - 1 and ptx is None):
                    stats: dict[str, torch.Tensor] = {}
                    if train_actor:
                        logps, entropy = response_logps(actor, sub, temperature, with_entropy=True)
                        per_token, stats = ppo_policy_loss(logps, old_logps[rows], advantages[rows], sub_mask,
                                                           p.clip_low, p.clip_high, p.dual_clip)
                        if weights is not None:
                            per_token = per_token * weights[rows]
                        if p.kl_in_loss:
                            per_token = per_token + kl_coef * kl_estimate(logps, ref_logps[rows], p.kl_estimator) * sub_mask
                        per_token = per_token - p.entropy_coef * entropy * sub_mask
                        policy_loss = aggregate(per_token, sub_mask, denominator)
                        acc.backward(policy_loss * world)  # DDP averages gradients over processes; undo that
                        stats["entropy"] = entropy.detach() * sub_mask
                        losses[0] += policy_loss.detach()
                    values = response_values(critic, sub)
                    v_token, v_stats = value_loss(values, old_values[rows], returns[rows], sub_mask, p.value_clip)
                    v_loss = aggregate(v_token, sub_mask, denominator)
                    acc.backward(v_loss * world * (p.vf_coef if p.critic == "shared" else 1.0))
                    losses[1] += v_loss.detach()
                for key, value in {**stats, **v_stats}.items():
                    sums[key] = sums.get(key, 0.0) + value.sum()
                if stats:
                    sums["ratio_max"] = torch.maximum(sums.get("ratio_max", stats["ratio"].max()), stats["ratio"].max())
            if ptx is not None:  # + coef * NLL of pretraining / SFT data, in the last (synchronising) micro-step
                with micro_step(acc, actor, critic, last=True):
                    replay_loss, nll = ptx.loss(acc, actor, (step - 1) * s.per_step + glob["updates"] + 1)
                    acc.backward(replay_loss * world)
                glob["replay_nll"] += nll.item()
            losses = acc.reduce(losses, "sum")
            grads = {f"grad_norm/{name}": acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
                     for name, model in (("actor", actor), ("critic", critic)) if name == "critic" or train_actor}
            if run.step_is_finite(step, {"policy loss": losses[0], "value loss": losses[1], **grads}):
                for optimizer, _ in trained:
                    optimizer.step()
            for _, scheduler in trained:
                scheduler.step()
            for optimizer in s.optimizers:  # also during the critic's warm-up: a shared critic's value loss reaches
                optimizer.zero_grad(set_to_none=True)  # the actor's backbone, and must not pile up there
            glob.update({"policy_loss": glob["policy_loss"] + losses[0].item(), "updates": glob["updates"] + 1,
                         "value_loss": glob["value_loss"] + losses[1].item(), **{k: float(v) for k, v in grads.items()}})
    return sums, glob


def step_metrics(acc, cfg: PPOConfig, r: Rollout, sums: dict, glob: dict, scores, kl, token_rewards, mask, old_values,
                 advantages, returns, mismatch: dict, kl_coef: float, extra: dict[str, float]) -> dict[str, float]:
    """The step's logged figures, over the whole batch of every process."""
    ratio_max = gather_rows(acc, sums.pop("ratio_max", torch.zeros((), device=acc.device)).view(1)).max()
    totals = dict(zip(sums, acc.reduce(torch.stack(list(sums.values())), "sum").tolist()))
    n_tokens = max(mask.sum().item(), 1.0) * cfg.ppo.ppo_epochs
    adv_mean = masked_mean(advantages, mask)
    metrics = {
        "reward/score": scores.mean().item(), **{f"reward/{k}": v.mean().item() for k, v in r.rewards.items()},
        "reward/with_kl": token_rewards.sum(-1).mean().item(), **diversity(r.texts),
        "kl/per_token": masked_mean(kl, mask).item(), "kl/per_sequence": kl.sum(-1).mean().item(), "kl/coef": kl_coef,
        "loss/value": glob["value_loss"] / glob["updates"],
        "value/explained_variance": explained_variance(old_values, returns, mask).item(),
        "value/clipfrac": totals["value_clipfrac"] / n_tokens, "advantage/mean": adv_mean.item(),
        "advantage/std": masked_mean((advantages - adv_mean) ** 2, mask).sqrt().item(),
        "length/mean": r.lengths.float().mean().item(), "eos_rate/train": r.batch.finished.float().mean().item(),
        "grad_norm/critic": glob["grad_norm/critic"],
        **({"replay/nll": glob["replay_nll"] / glob["updates"]} if cfg.replay.data and "entropy" in sums else {}),
        **{f"mismatch/{k}": masked_mean(v, mask).item() for k, v in mismatch.items()}, **episode_metrics(r), **extra}
    if "entropy" in totals:  # the actor trained this step (not in the critic's warm-up)
        metrics.update({"loss/policy": glob["policy_loss"] / glob["updates"], "entropy": totals["entropy"] / n_tokens,
                        "policy/clipfrac": totals["clipfrac"] / n_tokens,
                        "policy/clip_low_frac": totals["clip_low"] / n_tokens,
                        "policy/clip_high_frac": totals["clip_high"] / n_tokens,
                        "policy/approx_kl": totals["approx_kl"] / n_tokens, "ratio/mean": totals["ratio"] / n_tokens,
                        "ratio/max": ratio_max.item(), "grad_norm/actor": glob["grad_norm/actor"]})
    return metrics


def train(cfg: PPOConfig, resume: str | bool | None = None) -> dict:
    """Run PPO as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "ppo", resume)
    acc, p, temperature, sampling = run.accelerator, cfg.ppo, cfg.sampling.temperature, cfg.sampling
    s = set_up(run, cfg)
    (train_examples, prompt_ids), steps = s.train, s.steps
    start, kl_coef, moments = s.state["step"], s.state.get("kl_coef", p.kl_coef), RunningMoments(s.state.get("reward_moments"))
    run.print(describe(cfg, s))
    if start == 0:
        run.log.log(0, s.evaluate(cfg))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc="ppo", disable=not (cfg.run.progress and run.is_main))
    tokens_total, train_clock = 0, time.time()
    for step in range(start + 1, steps + 1):
        # 1. rollout: one response per prompt, this process's slice, seeded per global row, scored, gathered
        idx = step_indices(len(train_examples), step, cfg.train.batch_size, 1, cfg.train.seed, acc.process_index,
                           acc.num_processes)[0]
        r = collect(acc, s.engine, s.policy, [train_examples[i] for i in idx], [prompt_ids[i] for i in idx],
                    rollout_seeds(cfg.train.seed, step, acc.process_index * len(idx), len(idx)),
                    sampling_params(sampling), s.rewards, p.missing_eos_penalty, s.play)
        mask = r.batch.response_mask.float() * (r.batch.finished.unsqueeze(-1) if p.mask_truncated else 1)

        # 2. score: shaped sequence scores; old log-probs, reference log-probs and values (this process's rows, gathered)
        clock = time.time()
        scores = shaped_scores(cfg, r, moments)
        chunks = chunks_of(range(r.local.start, r.local.stop), p.micro_batch_size)
        old_logps = rows_logps(acc, policy_logps(s.policy, temperature), r.batch, chunks)
        ref_logps = rows_logps(acc, lambda b: s.reference.response_logps(b, temperature), r.batch, chunks)
        old_values = rows_logps(acc, lambda b: response_values(s.critic, b), r.batch, chunks)
        weights, mismatch = (engine_correction(old_logps, r.sample_logps, mask, sampling.correction,
                                               sampling.correction_level, sampling.correction_cap)
                             if sampling.correction != "none" else (None, {}))
        t_score = r.seconds["score"] + time.time() - clock

        # 3. advantages over the whole batch: KL-shaped per-token rewards, GAE, whitening
        kl = kl_estimate(old_logps, ref_logps, p.kl_estimator) * mask
        token_rewards = kl_shaped_rewards(scores, kl, mask, 0.0 if p.kl_in_loss else kl_coef)
        if r.turn_rewards is not None:  # an environment's per-turn rewards, on each turn's last token
            token_rewards = token_rewards + r.turn_rewards * mask
        if r.step_rewards is not None:  # a process reward model's step scores, on each step's last token
            token_rewards = token_rewards + r.step_rewards * mask
        advantages, returns = gae(token_rewards, old_values, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        # 4. update: ppo_epochs passes of shuffled mini-batches, actor and critic with their own optimizers
        clock, train_actor = time.time(), step > p.critic_warmup_steps
        sums, glob = update(run, step, cfg, s, r, mask, old_logps, ref_logps, old_values, advantages, returns,
                            weights, kl_coef, train_actor)
        s.engine.sync(s.policy)
        t_train = time.time() - clock

        # 5. the KL controller (the whole batch, so every process adapts alike), then log, eval, checkpoint
        if p.adaptive_kl:
            kl_coef = adaptive_kl_coef(kl_coef, kl.sum(-1).mean().item(), p.kl_target, p.kl_horizon, mask.shape[0])
        tokens_total += int(r.lengths.sum().item())
        if step % cfg.run.log_every == 0 or step == steps:
            run.log.log(step, step_metrics(acc, cfg, r, sums, glob, scores, kl, token_rewards, mask, old_values,
                                           advantages, returns, mismatch, kl_coef, {
                "time/generate_s": r.seconds["generate"], "time/score_s": t_score, "time/train_s": t_train,
                "speed/tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9),
                "lr": s.schedulers[0].get_last_lr()[0]}))
            bar.set_postfix(score=f"{scores.mean().item():.3f}", kl=f"{kl.sum(-1).mean().item():.2f}")
        if (cfg.run.sample_every and step % cfg.run.sample_every == 0) or step == steps:
            run.log.add_samples(step, [{"prompt": r.examples[i].prompt[-1].content,
                                        "response": r.transcripts[i] if r.transcripts else r.texts[i],
                                        "score": scores[i].item(), "kl": kl[i].sum().item()}
                                       for i in range(r.local.start, r.local.stop)][: cfg.run.num_samples])
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, s.evaluate(cfg))
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.checkpoint(step, {"kl_coef": kl_coef, "reward_moments": moments.state()}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    run.checkpoint(steps, {"kl_coef": kl_coef, "reward_moments": moments.state()}, cfg.run.keep_checkpoints)
    final_eval = s.evaluate(cfg)
    run.log.log(steps, final_eval)
    save_final(run, s.policy, s.tokenizer, cfg.run)
    first = run.log.rows[0] if run.log.rows else {}
    summary = {"steps": steps, "final": final_eval, "initial": {k: v for k, v in first.items() if "eval" in k},
               "kl_coef": kl_coef, "tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9),
               "optimizer_steps_per_rollout_step": s.per_step, "prompts": s.prompts, "engine": s.engine.name,
               "parameters": {"actor_trainable": s.parameters[0], "actor_total": s.parameters[1]},
               "peak_memory_mib": _peak_memory_mib()}
    headline = [("steps", steps),  # each eval reward before -> after follows (runtime.reward_gap)
                ("KL per sequence (last)", run.log.last("kl/per_sequence")), ("final model", str(run.dir / "final"))]
    return finish_run(run, summary, headline)


def _peak_memory_mib() -> float:
    """Peak resident memory of this process (CPU) or peak allocated CUDA memory, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
