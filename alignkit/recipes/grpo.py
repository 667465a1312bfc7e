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
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from statistics import fmean

import torch

from ..advantages import ADVANTAGES, zero_spread_groups
from ..checkpoint import save_checkpoint
from ..config import GRPOConfig
from ..data.prepare import load_split
from ..data.templates import tokenize_prompt
from ..losses import POLICY_LOSSES, aggregate, step_denominator
from ..models import count_parameters, disable_dropout, load_causal_lm, load_reference, load_tokenizer
from ..ops import check_finite, kl_estimate, response_logps
from ..rewards import RewardSet, fields_of
from ..sampling import SamplingParams, generate, rollout_batch
from .runtime import finish_run, prepare_training, save_final, start_run, step_indices


def sampling_params(cfg: GRPOConfig) -> SamplingParams:
    s = cfg.sampling
    return SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)


@torch.no_grad()
def no_grad_logps(model, batch, rows: list[list[int]], temperature: float) -> torch.Tensor:
    """(B, R) response log-probs of the whole rollout batch, micro-batch by micro-batch, without gradients."""
    out = torch.zeros(batch.response_mask.shape, device=batch.input_ids.device)
    for chunk in rows:
        out[chunk] = response_logps(model, batch.select(chunk), temperature)[0].float()
    return out


@torch.no_grad()
def evaluate(cfg, model, tokenizer, examples, prompt_ids, rewards: RewardSet,
             eval_only: RewardSet | None = None) -> dict[str, float]:
    """Greedy answers to the eval prompts, scored by every reward source (and the eval-only ones)."""
    if not examples:
        return {}
    gens = generate(model, tokenizer, prompt_ids, SamplingParams(max_new_tokens=cfg.sampling.max_new_tokens,
                                                                temperature=0.0))
    fields = fields_of(examples)
    prompts, texts = [e.prompt for e in examples], [g.text for g in gens]
    total, parts = rewards(prompts, texts, fields)
    if eval_only is not None:
        parts.update(eval_only(prompts, texts, fields)[1])
    return {"reward_eval/total": total.mean().item(), **{f"reward_eval/{k}": v.mean().item() for k, v in parts.items()},
            "length/eval": fmean(len(g.response_ids) for g in gens)}


def train(cfg: GRPOConfig, resume: str | bool | None = None) -> dict:
    """Run GRPO (or a variant) as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "grpo", resume)
    acc = run.accelerator
    g, mu, temperature = cfg.grpo.group_size, cfg.grpo.num_iterations, cfg.sampling.temperature
    clip_low, clip_high = cfg.grpo.clip_range
    tokenizer = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model, tokenizer, acc.device)
    disable_dropout(model)  # the ratio must compare the same function at rollout and update time
    model.train()

    train_examples, eval_examples = load_split(cfg.data, "prompt", cfg.train.seed)
    prompt_ids = [tokenize_prompt(tokenizer, e.prompt)[-cfg.data.max_length :] for e in train_examples]
    eval_ids = [tokenize_prompt(tokenizer, e.prompt)[-cfg.data.max_length :] for e in eval_examples]
    rewards = RewardSet(cfg.rewards, device=str(acc.device), max_length=cfg.data.max_length + cfg.sampling.max_new_tokens)
    eval_only = RewardSet(cfg.eval_rewards, device=str(acc.device)) if cfg.eval_rewards else None
    reference = load_reference(cfg.model, None, model, tokenizer, acc.device) if cfg.grpo.beta > 0 else None
    model, optimizer, scheduler, steps, start = prepare_training(run, model, cfg.train, len(train_examples))
    if reference is not None and reference.policy is not None:
        reference.policy = model
    trainable, total = count_parameters(model)
    run.print(f"grpo ({cfg.grpo.advantage}, {cfg.grpo.ratio} ratio, G={g}, mu={mu}, beta={cfg.grpo.beta}): "
              f"{len(train_examples)} prompts, {steps} steps, {trainable:,} of {total:,} parameters trainable, "
              f"rewards: {', '.join(f'{s.weight:g} x {s.label}' for s in cfg.rewards)}")
    if start == 0:
        run.log.log(0, evaluate(cfg, model, tokenizer, eval_examples, eval_ids, rewards, eval_only))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc=f"grpo/{cfg.grpo.advantage}", disable=not (cfg.run.progress and run.is_main))
    tokens_total, train_clock = 0, time.time()
    for step in range(start + 1, steps + 1):
        # 1. rollout: B prompts x G samples each (rows of a group are contiguous)
        clock = time.time()
        idx = step_indices(len(train_examples), step, cfg.train.batch_size, 1, cfg.train.seed, acc.process_index,
                           acc.num_processes)[0]
        examples = [train_examples[i] for i in idx for _ in range(g)]
        gens = generate(model, tokenizer, [prompt_ids[i] for i in idx for _ in range(g)], sampling_params(cfg),
                        batch_size=len(examples))
        batch = rollout_batch(gens, tokenizer.pad_token_id).to(acc.device)
        t_generate = time.time() - clock

        # 2. score with every reward source
        clock = time.time()
        fields = fields_of(examples)
        scores, parts = rewards([e.prompt for e in examples], [x.text for x in gens], fields)
        scores = scores.to(acc.device)
        truncated = ~batch.finished
        if cfg.grpo.overlong_penalty:
            scores = scores - cfg.grpo.overlong_penalty * truncated.float()
        t_score = time.time() - clock

        # 3. group-relative advantages; rows that get no gradient (dropped groups, masked truncations)
        clock = time.time()
        advantages = ADVANTAGES[cfg.grpo.advantage](scores, g, 1e-6)
        flat_groups = zero_spread_groups(scores, g)
        keep = torch.ones_like(scores, dtype=torch.bool)
        if cfg.grpo.dynamic_sampling:
            keep &= ~flat_groups.repeat_interleave(g)
        if cfg.grpo.mask_truncated:
            keep &= ~truncated
        mask = batch.response_mask * keep.unsqueeze(-1)
        chunks = [list(range(s, min(s + cfg.grpo.micro_batch_size, len(examples))))
                  for s in range(0, len(examples), cfg.grpo.micro_batch_size)]
        old_logps = no_grad_logps(model, batch, chunks, temperature) if mu > 1 else None
        ref_logps = None
        if reference is not None:
            ref_logps = torch.zeros_like(mask, dtype=torch.float)
            for chunk in chunks:
                ref_logps[chunk] = reference.response_logps(batch.select(chunk), temperature).float()

        # 4. update: mu optimizer steps, each over the whole rollout batch
        denominator = acc.reduce(step_denominator([mask[c] for c in chunks], cfg.grpo.aggregation,
                                                  cfg.sampling.max_new_tokens).to(acc.device), "sum")
        sums: dict[str, float] = {}
        for _ in range(mu):
            for i, chunk in enumerate(chunks):
                with acc.no_sync(model) if i < len(chunks) - 1 else nullcontext():
                    sub, sub_mask = batch.select(chunk), mask[chunk]
                    logps, entropy = response_logps(model, sub, temperature, with_entropy=True)
                    old = old_logps[chunk] if old_logps is not None else logps.detach()
                    adv = advantages[chunk].unsqueeze(-1).expand_as(logps)
                    per_token, stats = POLICY_LOSSES[cfg.grpo.ratio](logps, old, adv, sub_mask, clip_low, clip_high)
                    if ref_logps is not None:
                        kl = kl_estimate(logps, ref_logps[chunk], cfg.grpo.kl_estimator)
                        per_token = per_token + cfg.grpo.beta * kl * sub_mask
                        stats["kl"] = kl.detach() * sub_mask
                    if cfg.grpo.entropy_coef:
                        per_token = per_token - cfg.grpo.entropy_coef * entropy * sub_mask
                    stats["entropy"] = entropy.detach() * sub_mask
                    loss = aggregate(per_token, sub_mask, denominator, cfg.grpo.aggregation)
                    acc.backward(loss * acc.num_processes)
                sums["loss"] = sums.get("loss", 0.0) + loss.item() / mu
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value.sum().item() / mu
            grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
            check_finite(torch.tensor(sums["loss"]), "the policy loss", step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        t_train = time.time() - clock

        # 5. log, eval, checkpoint
        n_tokens = max(mask.sum().item(), 1)
        tokens_total += int(batch.response_mask.sum().item())
        if step % cfg.run.log_every == 0 or step == steps:
            metrics = {"reward/total": scores.mean().item(), "reward/total_std": scores.std().item(),
                       **{f"reward/{k}": v.mean().item() for k, v in parts.items()},
                       **{f"reward_std/{k}": v.std().item() for k, v in parts.items()},
                       "loss/policy": sums["loss"], "groups/zero_spread_frac": flat_groups.float().mean().item(),
                       "groups/kept_rows_frac": keep.float().mean().item(),
                       "clip/low_frac": sums["clip_low"] / n_tokens, "clip/high_frac": sums["clip_high"] / n_tokens,
                       "entropy": sums["entropy"] / n_tokens, "policy/approx_kl": sums["approx_kl"] / n_tokens,
                       "length/mean": batch.response_mask.sum(-1).float().mean().item(),
                       "eos_rate/train": batch.finished.float().mean().item(), "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm), "time/generate_s": t_generate, "time/score_s": t_score,
                       "time/train_s": t_train, "speed/tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9)}
            if "kl" in sums:
                metrics["kl/ref"] = sums["kl"] / n_tokens
            run.log.log(step, metrics)
            bar.set_postfix(reward=f"{scores.mean().item():.3f}")
            run.log.add_samples(step, [{"prompt": e.prompt[-1].content, "response": x.text, "reward": s.item()}
                                       for e, x, s in zip(examples[:g], gens[:g], scores[:g])]
                                if cfg.run.sample_every and step % cfg.run.sample_every == 0 else [])
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, evaluate(cfg, model, tokenizer, eval_examples, eval_ids, rewards, eval_only))
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.log.flush()
            save_checkpoint(acc, run.dir, step, {}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    final_eval = evaluate(cfg, model, tokenizer, eval_examples, eval_ids, rewards, eval_only)
    run.log.log(steps, final_eval)
    save_final(run, model, tokenizer, steps, cfg.run)
    first = run.log.rows[0] if run.log.rows else {}
    summary = {"steps": steps, "algorithm": {"advantage": cfg.grpo.advantage, "ratio": cfg.grpo.ratio,
                                             "group_size": g, "num_iterations": mu, "beta": cfg.grpo.beta},
               "final": final_eval, "initial": {k: v for k, v in first.items() if k.startswith("reward_eval/")},
               "tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9),
               "parameters": {"trainable": trainable, "total": total}}
    headline = [("steps", steps), ("eval reward before", first.get("reward_eval/total", math.nan)),
                ("eval reward after", final_eval.get("reward_eval/total", math.nan)),
                ("final model", str(run.dir / "final"))]
    return finish_run(run, summary, headline)
