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
"""

from __future__ import annotations

import math
import time

import torch

from ..advantages import RunningMoments, adaptive_kl_coef, gae, kl_shaped_rewards
from ..config import ConfigError, PPOConfig
from ..data.prepare import load_split
from ..losses import aggregate, ppo_policy_loss, step_denominator, value_loss
from ..models import (
    SharedValueHead,
    ValueModel,
    count_parameters,
    disable_dropout,
    load_causal_lm,
    load_reference,
    load_reward_model,
    load_tokenizer,
    token_values,
)
from ..ops import explained_variance, kl_estimate, masked_mean, masked_whiten, response_logps
from ..rewards import RewardSet, fields_of
from ..sampling import rollout_batch
from .rl import (
    chunks_of,
    evaluate,
    gather_list,
    gather_rows,
    no_grad_logps,
    rollout_seeds,
    sample,
    sampling_params,
    tokenize_prompts,
)
from .runtime import (
    finish_run,
    micro_step,
    prepare_model,
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


@torch.no_grad()
def no_grad_values(critic, batch, chunks: list[list[int]]) -> torch.Tensor:
    return torch.cat([response_values(critic, batch.select(c)) for c in chunks])


def load_critic(cfg: PPOConfig, actor, tokenizer, device, num_processes: int):
    """A separate critic model (from ppo.critic_model / the reward model / the policy), or a value head on the
    actor's own backbone."""
    if cfg.ppo.critic == "shared":
        if num_processes > 1:
            raise ConfigError("ppo.critic = shared is single-process only; use ppo.critic = separate with several GPUs")
        return SharedValueHead(actor)
    critic_cfg = cfg.model.model_copy(update={"name_or_path": cfg.critic_path})
    return ValueModel(load_reward_model(critic_cfg, tokenizer, device))


def score(cfg: PPOConfig, acc, rewards: RewardSet, examples, gens, moments: RunningMoments):
    """The whole batch's sequence scores (every process's rows, gathered): reward sources, penalties,
    normalisation, clipping. Returns (scores (B,), {source: raw scores (B,)})."""
    p = cfg.ppo
    local, local_parts = rewards([e.prompt for e in examples], [g.text for g in gens], fields_of(examples))
    scores = gather_rows(acc, local.to(acc.device))
    parts = {k: gather_rows(acc, v.to(acc.device)) for k, v in local_parts.items()}
    lengths = gather_rows(acc, torch.tensor([len(g.response_ids) for g in gens], device=acc.device).float())
    finished = gather_rows(acc, torch.tensor([g.finished for g in gens], device=acc.device))
    scores = scores - p.missing_eos_penalty * (~finished).float() - p.length_penalty * lengths
    if p.reward_norm == "running":
        moments.update(scores)
        scores = moments.normalise(scores)
    elif p.reward_norm == "batch":
        scores = (scores - scores.mean()) / (scores.std() + 1e-6)
    return scores.clamp(-p.reward_clip, p.reward_clip), parts


def update(run, step: int, cfg: PPOConfig, models, optimizers, schedulers, batch, mask, old_logps, ref_logps,
           old_values, advantages, returns, kl_coef: float, train_actor: bool) -> tuple[dict, dict]:
    """ppo_epochs passes of seeded, shuffled global mini-batches; this process trains its share of each, in
    micro-batches; actor and critic step with their own optimizers (the actor sits out the critic's warm-up).
    Returns (per-token stat sums of this process's share, figures already global: losses, grad norms, updates)."""
    acc, p, temperature = run.accelerator, cfg.ppo, cfg.sampling.temperature
    (actor, critic), world, rank = models, acc.num_processes, acc.process_index
    trained = list(zip(optimizers, schedulers))[0 if train_actor else 1 :]
    sums: dict[str, torch.Tensor] = {}
    glob: dict[str, float] = {"policy_loss": 0.0, "value_loss": 0.0, "updates": 0}
    for epoch in range(p.ppo_epochs):
        order = torch.randperm(mask.shape[0], generator=torch.Generator().manual_seed(
            (cfg.train.seed * 1_000_003 + step) * 101 + epoch)).tolist()
        for mini in chunks_of(order, p.mini_batch_size):
            denominator = step_denominator([mask[mini]]).to(acc.device)  # the whole mini-batch's token count
            share = p.mini_batch_size // world
            micro = chunks_of(mini[rank * share : (rank + 1) * share], p.micro_batch_size)
            losses = torch.zeros(2, device=acc.device)
            for i, rows in enumerate(micro):
                sub, sub_mask = batch.select(rows), mask[rows]
                with micro_step(acc, actor, critic, last=i == len(micro) - 1):
                    stats: dict[str, torch.Tensor] = {}
                    if train_actor:
                        logps, entropy = response_logps(actor, sub, temperature, with_entropy=True)
                        per_token, stats = ppo_policy_loss(logps, old_logps[rows], advantages[rows], sub_mask,
                                                           p.clip_low, p.clip_high, p.dual_clip)
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
            losses = acc.reduce(losses, "sum")
            grads = {f"grad_norm/{name}": acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
                     for name, model in (("actor", actor), ("critic", critic)) if name == "critic" or train_actor}
            if run.step_is_finite(step, {"policy loss": losses[0], "value loss": losses[1], **grads}):
                for optimizer, _ in trained:
                    optimizer.step()
            for _, scheduler in trained:
                scheduler.step()
            for optimizer in optimizers:  # also during the critic's warm-up: a shared critic's value loss reaches
                optimizer.zero_grad(set_to_none=True)  # the actor's backbone, and must not pile up there
            glob.update({"policy_loss": glob["policy_loss"] + losses[0].item(), "updates": glob["updates"] + 1,
                         "value_loss": glob["value_loss"] + losses[1].item(), **{k: float(v) for k, v in grads.items()}})
    return sums, glob


def train(cfg: PPOConfig, resume: str | bool | None = None) -> dict:
    """Run PPO as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "ppo", resume)
    acc, p = run.accelerator, cfg.ppo
    require_divisible(acc.num_processes, {"ppo.mini_batch_size": p.mini_batch_size})
    temperature = cfg.sampling.temperature
    tokenizer = load_tokenizer(cfg.model, announce=run.print)
    actor = load_causal_lm(cfg.model, tokenizer, acc.device)
    critic = load_critic(cfg, actor, tokenizer, acc.device, acc.num_processes)
    for model in (actor, critic):
        disable_dropout(model)
        model.train()
    reference = load_reference(cfg.model, None, actor, tokenizer, acc.device, acc.autocast)
    rewards = RewardSet(cfg.rewards, acc.device, cfg.data.max_length + cfg.sampling.max_new_tokens, acc.autocast)
    eval_only = RewardSet(cfg.eval_rewards, acc.device, autocast=acc.autocast) if cfg.eval_rewards else None

    train_examples, eval_examples = load_split(cfg.data, "prompt", cfg.train.seed)
    train_examples, prompt_ids, report = tokenize_prompts(train_examples, tokenizer, cfg.data, "train")
    eval_examples, eval_ids, _ = tokenize_prompts(eval_examples, tokenizer, cfg.data, "eval")
    run.print(report.describe("train"))
    steps = total_steps(cfg.train, len(train_examples), cfg.train.batch_size)
    per_step = p.ppo_epochs * (cfg.train.batch_size // p.mini_batch_size)  # optimizer steps per rollout step
    # the actor does not move during the critic's warm-up, so its schedule spans the remaining steps only
    actor, actor_opt, actor_sched = prepare_model(run, actor, cfg.train, max(1, steps - p.critic_warmup_steps) * per_step)
    critic, critic_opt, critic_sched = prepare_model(run, critic, cfg.train, steps * per_step, lr=p.critic_lr)
    if reference.policy is not None:
        reference.policy = actor
    state = run.restore()
    start, kl_coef, moments = state["step"], state.get("kl_coef", p.kl_coef), RunningMoments(state.get("reward_moments"))
    trainable, total = count_parameters(actor)
    critic_from = "a value head on the actor" if p.critic == "shared" else cfg.critic_path
    run.print(f"ppo: {len(train_examples)} prompts, {steps} steps x {cfg.train.batch_size} rollouts, {p.ppo_epochs} "
              f"epochs x {cfg.train.batch_size // p.mini_batch_size} mini-batches = {per_step} optimizer steps per "
              f"rollout step (train.lr applies to each), critic from {critic_from}, actor {trainable:,} of {total:,} "
              f"trainable, rewards: {', '.join(f'{s.weight:g} x {s.label}' for s in cfg.rewards)}")
    if start == 0:
        run.log.log(0, evaluate(acc, cfg, actor, tokenizer, eval_examples, eval_ids, rewards, eval_only))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc="ppo", disable=not (cfg.run.progress and run.is_main))
    tokens_total, train_clock = 0, time.time()
    for step in range(start + 1, steps + 1):
        # 1. rollout: one sampled response per prompt, this process's slice, seeded per row; then the whole batch
        clock = time.time()
        idx = step_indices(len(train_examples), step, cfg.train.batch_size, 1, cfg.train.seed, acc.process_index,
                           acc.num_processes)[0]
        examples = [train_examples[i] for i in idx]
        mine = list(range(acc.process_index * len(idx), (acc.process_index + 1) * len(idx)))
        gens = sample(acc, actor, tokenizer, [prompt_ids[i] for i in idx], sampling_params(cfg),
                      rollout_seeds(cfg.train.seed, step, mine[0], len(idx)))
        all_gens = gather_list(acc, gens)
        batch = rollout_batch(all_gens, tokenizer.pad_token_id).to(acc.device)  # every process: the whole batch
        mask = batch.response_mask.float()
        if p.mask_truncated:
            mask = mask * batch.finished.unsqueeze(-1)
        t_generate = time.time() - clock

        # 2. score: sequence scores; old log-probs, reference log-probs and values of this process's rows, gathered
        clock = time.time()
        scores, parts = score(cfg, acc, rewards, examples, gens, moments)
        chunks = chunks_of(mine, p.micro_batch_size)
        old_logps = gather_rows(acc, no_grad_logps(actor, batch, chunks, temperature))
        ref_logps = gather_rows(acc, torch.cat([reference.response_logps(batch.select(c), temperature).float()
                                                for c in chunks]))
        old_values = gather_rows(acc, no_grad_values(critic, batch, chunks))
        t_score = time.time() - clock

        # 3. advantages over the whole batch: KL-shaped per-token rewards, GAE, whitening
        kl = kl_estimate(old_logps, ref_logps, p.kl_estimator) * mask
        token_rewards = kl_shaped_rewards(scores, kl, mask, 0.0 if p.kl_in_loss else kl_coef)
        advantages, returns = gae(token_rewards, old_values, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        # 4. update: ppo_epochs passes of shuffled mini-batches, actor and critic with their own optimizers
        clock = time.time()
        train_actor = step > p.critic_warmup_steps
        sums, glob = update(run, step, cfg, (actor, critic), (actor_opt, critic_opt), (actor_sched, critic_sched),
                            batch, mask, old_logps, ref_logps, old_values, advantages, returns, kl_coef, train_actor)
        t_train = time.time() - clock

        # 5. the KL controller (the whole batch, so every process adapts alike), then log, eval, checkpoint
        seq_kl = kl.sum(-1).mean().item()
        if p.adaptive_kl:
            kl_coef = adaptive_kl_coef(kl_coef, seq_kl, p.kl_target, p.kl_horizon, mask.shape[0])
        tokens_total += int(batch.response_mask.sum().item())
        if step % cfg.run.log_every == 0 or step == steps:
            ratio_max = gather_rows(acc, sums.pop("ratio_max", torch.zeros((), device=acc.device)).view(1)).max()
            totals = dict(zip(sums, acc.reduce(torch.stack(list(sums.values())), "sum").tolist()))
            n_tokens = max(mask.sum().item(), 1.0) * p.ppo_epochs
            metrics = {
                "reward/score": scores.mean().item(), **{f"reward/{k}": v.mean().item() for k, v in parts.items()},
                "reward/with_kl": token_rewards.sum(-1).mean().item(),
                "kl/per_token": masked_mean(kl, mask).item(), "kl/per_sequence": seq_kl, "kl/coef": kl_coef,
                "loss/value": glob["value_loss"] / glob["updates"],
                "value/explained_variance": explained_variance(old_values, returns, mask).item(),
                "value/clipfrac": totals["value_clipfrac"] / n_tokens,
                "advantage/mean": masked_mean(advantages, mask).item(),
                "advantage/std": masked_mean((advantages - masked_mean(advantages, mask)) ** 2, mask).sqrt().item(),
                "length/mean": batch.response_mask.sum(-1).float().mean().item(),
                "eos_rate/train": batch.finished.float().mean().item(),
                "time/generate_s": t_generate, "time/score_s": t_score, "time/train_s": t_train,
                "speed/tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9),
                "grad_norm/critic": glob["grad_norm/critic"], "lr": actor_sched.get_last_lr()[0]}
            if train_actor:
                metrics.update({"loss/policy": glob["policy_loss"] / glob["updates"],
                                "entropy": totals["entropy"] / n_tokens, "policy/clipfrac": totals["clipfrac"] / n_tokens,
                                "policy/clip_low_frac": totals["clip_low"] / n_tokens,
                                "policy/clip_high_frac": totals["clip_high"] / n_tokens,
                                "policy/approx_kl": totals["approx_kl"] / n_tokens,
                                "ratio/mean": totals["ratio"] / n_tokens, "ratio/max": ratio_max.item(),
                                "grad_norm/actor": glob["grad_norm/actor"]})
            run.log.log(step, metrics)
            bar.set_postfix(score=f"{scores.mean().item():.3f}", kl=f"{seq_kl:.2f}")
        if (cfg.run.sample_every and step % cfg.run.sample_every == 0) or step == steps:
            run.log.add_samples(step, [{"prompt": e.prompt[-1].content, "response": g.text, "score": s.item(),
                                        "kl": k.item()} for e, g, s, k in zip(examples, gens, scores[mine], kl.sum(-1)[mine])][: cfg.run.num_samples])
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, evaluate(acc, cfg, actor, tokenizer, eval_examples, eval_ids, rewards, eval_only))
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.checkpoint(step, {"kl_coef": kl_coef, "reward_moments": moments.state()}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    run.checkpoint(steps, {"kl_coef": kl_coef, "reward_moments": moments.state()}, cfg.run.keep_checkpoints)
    final_eval = evaluate(acc, cfg, actor, tokenizer, eval_examples, eval_ids, rewards, eval_only)
    run.log.log(steps, final_eval)
    save_final(run, actor, tokenizer, cfg.run)
    first = run.log.rows[0] if run.log.rows else {}
    summary = {"steps": steps, "final": final_eval, "initial": {k: v for k, v in first.items() if "eval" in k},
               "kl_coef": kl_coef, "tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9),
               "optimizer_steps_per_rollout_step": per_step, "prompts": report.__dict__,
               "parameters": {"actor_trainable": trainable, "actor_total": total},
               "peak_memory_mib": _peak_memory_mib()}
    headline = [("steps", steps), ("eval reward before", first.get("reward_eval/total", math.nan)),
                ("eval reward after", final_eval.get("reward_eval/total", math.nan)),
                ("KL per sequence (last)", run.log.last("kl/per_sequence")), ("final model", str(run.dir / "final"))]
    return finish_run(run, summary, headline)


def _peak_memory_mib() -> float:
    """Peak resident memory of this process (CPU) or peak allocated CUDA memory, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
