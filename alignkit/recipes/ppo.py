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
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch

from ..advantages import RunningMoments, adaptive_kl_coef, gae, kl_shaped_rewards
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import PPOConfig
from ..data.prepare import load_split
from ..data.templates import tokenize_prompt
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
from ..ops import check_finite, explained_variance, kl_estimate, masked_mean, masked_whiten, response_logps
from ..rewards import RewardSet, fields_of
from ..sampling import generate, rollout_batch
from .grpo import evaluate, no_grad_logps, sampling_params
from .runtime import (
    finish_run,
    make_optimizer,
    make_scheduler,
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
    out = torch.zeros(batch.response_mask.shape, device=batch.input_ids.device)
    for chunk in chunks:
        out[chunk] = response_values(critic, batch.select(chunk))
    return out


def load_critic(cfg: PPOConfig, actor, tokenizer, device, num_processes: int):
    """A separate critic model (from ppo.critic_model / the reward model / the policy), or a value head on the
    actor's own backbone."""
    if cfg.ppo.critic == "shared":
        if num_processes > 1:
            raise ValueError("ppo.critic = shared is single-process only; use ppo.critic = separate with several GPUs")
        return SharedValueHead(actor)
    critic_cfg = cfg.model.model_copy(update={"name_or_path": cfg.critic_path})
    return ValueModel(load_reward_model(critic_cfg, tokenizer, device))


def train(cfg: PPOConfig, resume: str | bool | None = None) -> dict:
    """Run PPO as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "ppo", resume)
    acc, p = run.accelerator, cfg.ppo
    temperature = cfg.sampling.temperature
    tokenizer = load_tokenizer(cfg.model)
    actor = load_causal_lm(cfg.model, tokenizer, acc.device)
    critic = load_critic(cfg, actor, tokenizer, acc.device, acc.num_processes)
    for model in (actor, critic):
        disable_dropout(model)
        model.train()
    reference = load_reference(cfg.model, None, actor, tokenizer, acc.device)
    rewards = RewardSet(cfg.rewards, device=str(acc.device), max_length=cfg.data.max_length + cfg.sampling.max_new_tokens)
    eval_only = RewardSet(cfg.eval_rewards, device=str(acc.device)) if cfg.eval_rewards else None

    train_examples, eval_examples = load_split(cfg.data, "prompt", cfg.train.seed)
    prompt_ids = [tokenize_prompt(tokenizer, e.prompt)[-cfg.data.max_length :] for e in train_examples]
    eval_ids = [tokenize_prompt(tokenizer, e.prompt)[-cfg.data.max_length :] for e in eval_examples]
    steps = total_steps(cfg.train, len(train_examples), cfg.train.batch_size * acc.num_processes)
    per_step = p.ppo_epochs * math.ceil(cfg.train.batch_size / p.mini_batch_size)  # optimizer steps per rollout
    actor_opt = make_optimizer(actor.parameters(), cfg.train)
    critic_opt = make_optimizer(critic.parameters(), cfg.train, lr=p.critic_lr)
    # the actor does not move during the critic's warm-up, so its schedule spans the remaining steps only
    actor_sched = make_scheduler(actor_opt, cfg.train, max(1, steps - p.critic_warmup_steps) * per_step)
    critic_sched = make_scheduler(critic_opt, cfg.train, steps * per_step)
    actor, critic, actor_opt, critic_opt, actor_sched, critic_sched = acc.prepare(
        actor, critic, actor_opt, critic_opt, actor_sched, critic_sched)
    if reference.policy is not None:
        reference.policy = actor
    start, kl_coef, moments = 0, p.kl_coef, RunningMoments()
    if run.resume_from:
        state = load_checkpoint(acc, run.resume_from)
        start, kl_coef, moments = state["step"], state["kl_coef"], RunningMoments(state["reward_moments"])
        run.log.resume(start)
        run.print(f"resumed from {run.resume_from} at step {start} (kl_coef {kl_coef:.4g})")
    trainable, total = count_parameters(actor)
    critic_from = "a value head on the actor" if p.critic == "shared" else cfg.critic_path
    run.print(f"ppo: {len(train_examples)} prompts, {steps} steps x {cfg.train.batch_size} rollouts, "
              f"{p.ppo_epochs} epochs, critic from {critic_from}, actor {trainable:,} of {total:,} trainable, "
              f"rewards: {', '.join(f'{s.weight:g} x {s.label}' for s in cfg.rewards)}")
    if start == 0:
        run.log.log(0, evaluate(cfg, actor, tokenizer, eval_examples, eval_ids, rewards, eval_only))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc="ppo", disable=not (cfg.run.progress and run.is_main))
    tokens_total, train_clock = 0, time.time()
    for step in range(start + 1, steps + 1):
        # 1. rollout: one sampled response per prompt
        clock = time.time()
        idx = step_indices(len(train_examples), step, cfg.train.batch_size, 1, cfg.train.seed, acc.process_index,
                           acc.num_processes)[0]
        examples = [train_examples[i] for i in idx]
        gens = generate(actor, tokenizer, [prompt_ids[i] for i in idx], sampling_params(cfg), batch_size=len(idx))
        batch = rollout_batch(gens, tokenizer.pad_token_id).to(acc.device)
        mask = batch.response_mask.float()
        t_generate = time.time() - clock

        # 2. score: sequence rewards; old log-probs, reference log-probs, values
        clock = time.time()
        fields = fields_of(examples)
        scores, parts = rewards([e.prompt for e in examples], [g.text for g in gens], fields)
        scores = scores.to(acc.device)
        truncated = ~batch.finished
        scores = scores - p.missing_eos_penalty * truncated.float() - p.length_penalty * mask.sum(-1)
        if p.reward_norm == "running":
            moments.update(acc.gather(scores))
            scores = moments.normalise(scores)
        elif p.reward_norm == "batch":
            scores = (scores - scores.mean()) / (scores.std() + 1e-6)
        scores = scores.clamp(-p.reward_clip, p.reward_clip)
        if p.mask_truncated:
            mask = mask * batch.finished.unsqueeze(-1)
        chunks = [list(range(s, min(s + p.micro_batch_size, len(idx)))) for s in range(0, len(idx), p.micro_batch_size)]
        old_logps = no_grad_logps(actor, batch, chunks, temperature)
        ref_logps = torch.cat([reference.response_logps(batch.select(c), temperature).float() for c in chunks])
        old_values = no_grad_values(critic, batch, chunks)
        t_score = time.time() - clock

        # 3. advantages: KL-shaped per-token rewards, GAE, whitening
        kl = kl_estimate(old_logps, ref_logps, p.kl_estimator) * mask
        token_rewards = kl_shaped_rewards(scores, kl, mask, 0.0 if p.kl_in_loss else kl_coef)
        advantages, returns = gae(token_rewards, old_values, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        # 4. update: ppo_epochs passes of shuffled mini-batches, actor and critic with their own optimizers
        clock = time.time()
        train_actor = step > p.critic_warmup_steps
        sums: dict[str, float] = {}
        n_updates = 0
        for _ in range(p.ppo_epochs):
            order = torch.randperm(len(idx)).tolist()
            for m in range(0, len(idx), p.mini_batch_size):
                mini = order[m : m + p.mini_batch_size]
                micro = [mini[k : k + p.micro_batch_size] for k in range(0, len(mini), p.micro_batch_size)]
                denominator = acc.reduce(step_denominator([mask[c] for c in micro]).to(acc.device), "sum")
                for i, rows in enumerate(micro):
                    sub, sub_mask = batch.select(rows), mask[rows]
                    last = i == len(micro) - 1
                    with nullcontext() if last else acc.no_sync(actor), nullcontext() if last else acc.no_sync(critic):
                        stats: dict[str, torch.Tensor] = {}
                        if train_actor:
                            logps, entropy = response_logps(actor, sub, temperature, with_entropy=True)
                            per_token, stats = ppo_policy_loss(logps, old_logps[rows], advantages[rows], sub_mask,
                                                               p.clip_low, p.clip_high, p.dual_clip)
                            if p.kl_in_loss:
                                per_token = per_token + kl_coef * kl_estimate(logps, ref_logps[rows], "k3") * sub_mask
                            per_token = per_token - p.entropy_coef * entropy * sub_mask
                            policy_loss = aggregate(per_token, sub_mask, denominator)
                            acc.backward(policy_loss * acc.num_processes)
                            stats["entropy"] = entropy.detach() * sub_mask
                            sums["policy_loss"] = sums.get("policy_loss", 0.0) + policy_loss.item()
                        values = response_values(critic, sub)
                        v_token, v_stats = value_loss(values, old_values[rows], returns[rows], sub_mask, p.value_clip)
                        v_loss = aggregate(v_token, sub_mask, denominator)
                        acc.backward(v_loss * acc.num_processes * (p.vf_coef if p.critic == "shared" else 1.0))
                    sums["value_loss"] = sums.get("value_loss", 0.0) + v_loss.item()
                    for key, value in {**stats, **v_stats}.items():
                        sums[key] = sums.get(key, 0.0) + value.sum().item()
                    sums["ratio_max"] = max(sums.get("ratio_max", 0.0), stats["ratio"].max().item() if stats else 0.0)
                check_finite(torch.tensor(sums["value_loss"] + sums.get("policy_loss", 0.0)), "the PPO loss", step)
                if train_actor:
                    actor_grad = acc.clip_grad_norm_(actor.parameters(), cfg.train.max_grad_norm or float("inf"))
                    actor_opt.step()
                    actor_sched.step()
                critic_grad = acc.clip_grad_norm_(critic.parameters(), cfg.train.max_grad_norm or float("inf"))
                critic_opt.step()
                critic_sched.step()
                actor_opt.zero_grad(set_to_none=True)
                critic_opt.zero_grad(set_to_none=True)
                n_updates += 1
        t_train = time.time() - clock

        # 5. the KL controller, then log, eval, checkpoint
        seq_kl = acc.reduce(kl.sum(-1).mean(), "mean").item()  # every rank adapts kl_coef identically
        if p.adaptive_kl:
            kl_coef = adaptive_kl_coef(kl_coef, seq_kl, p.kl_target, p.kl_horizon, len(idx) * acc.num_processes)
        tokens_total += int(batch.response_mask.sum().item())
        n_tokens = max(mask.sum().item(), 1.0) * p.ppo_epochs
        if step % cfg.run.log_every == 0 or step == steps:
            metrics = {
                "reward/score": scores.mean().item(), **{f"reward/{k}": v.mean().item() for k, v in parts.items()},
                "reward/total": token_rewards.sum(-1).mean().item(),
                "kl/per_token": masked_mean(kl, mask).item(), "kl/per_sequence": seq_kl, "kl/coef": kl_coef,
                "loss/value": sums["value_loss"] / n_updates,
                "value/explained_variance": explained_variance(old_values, returns, mask).item(),
                "value/clipfrac": sums["value_clipfrac"] / n_tokens,
                "advantage/mean": masked_mean(advantages, mask).item(),
                "advantage/std": masked_mean((advantages - masked_mean(advantages, mask)) ** 2, mask).sqrt().item(),
                "length/mean": batch.response_mask.sum(-1).float().mean().item(),
                "eos_rate/train": batch.finished.float().mean().item(),
                "time/generate_s": t_generate, "time/score_s": t_score, "time/train_s": t_train,
                "speed/tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9),
                "grad_norm/critic": float(critic_grad), "lr": actor_sched.get_last_lr()[0]}
            if train_actor:
                metrics.update({"loss/policy": sums["policy_loss"] / n_updates, "entropy": sums["entropy"] / n_tokens,
                                "policy/clipfrac": sums["clipfrac"] / n_tokens,
                                "policy/approx_kl": sums["approx_kl"] / n_tokens,
                                "ratio/mean": sums["ratio"] / n_tokens, "ratio/max": sums["ratio_max"],
                                "grad_norm/actor": float(actor_grad)})
            run.log.log(step, metrics)
            bar.set_postfix(score=f"{scores.mean().item():.3f}", kl=f"{seq_kl:.2f}")
        if cfg.run.sample_every and step % cfg.run.sample_every == 0:
            run.log.add_samples(step, [{"prompt": e.prompt[-1].content, "response": g.text, "score": s.item(),
                                        "kl": k.item()} for e, g, s, k in zip(examples, gens, scores, kl.sum(-1))][:8])
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, evaluate(cfg, actor, tokenizer, eval_examples, eval_ids, rewards, eval_only))
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.log.flush()
            save_checkpoint(acc, run.dir, step, {"kl_coef": kl_coef, "reward_moments": moments.state()},
                            cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    final_eval = evaluate(cfg, actor, tokenizer, eval_examples, eval_ids, rewards, eval_only)
    run.log.log(steps, final_eval)
    save_final(run, actor, tokenizer, steps, cfg.run, {"kl_coef": kl_coef, "reward_moments": moments.state()})
    first = run.log.rows[0] if run.log.rows else {}
    summary = {"steps": steps, "final": final_eval, "initial": {k: v for k, v in first.items() if "eval" in k},
               "kl_coef": kl_coef, "tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9),
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

