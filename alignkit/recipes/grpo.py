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
"""

from __future__ import annotations

import math
import time

import torch

from ..advantages import ADVANTAGES, zero_spread_groups
from ..config import GRPOConfig
from ..data.prepare import load_split
from ..losses import POLICY_LOSSES, aggregate, step_denominator
from ..models import count_parameters, disable_dropout, load_causal_lm, load_reference, load_tokenizer
from ..ops import kl_estimate, response_logps
from ..rewards import RewardSet, fields_of
from ..sampling import rollout_batch
from .rl import (
    chunks_of,
    evaluate,
    gather_rows,
    no_grad_logps,
    rollout_seeds,
    sample,
    sampling_params,
    tokenize_prompts,
)
from .runtime import finish_run, micro_step, prepare_training, save_final, start_run, step_indices


def update(run, step: int, cfg: GRPOConfig, model, optimizer, batch, advantages, mask, old_logps, ref_logps,
           chunks) -> tuple[dict[str, torch.Tensor], float]:
    """mu optimizer steps, each over this process's whole rollout slice in micro-batches, the loss aggregated over
    the step's global count. Returns summed stats (this process's share, averaged over the mu passes) and the last
    gradient norm."""
    acc, mu, temperature = run.accelerator, cfg.grpo.num_iterations, cfg.sampling.temperature
    clip_low, clip_high = cfg.grpo.clip_range
    denominator = acc.reduce(step_denominator([mask[c] for c in chunks], cfg.grpo.aggregation,
                                              cfg.sampling.max_new_tokens).to(acc.device), "sum")
    sums: dict[str, torch.Tensor] = {}
    for _ in range(mu):
        pass_loss = torch.zeros((), device=acc.device)
        for i, chunk in enumerate(chunks):
            with micro_step(acc, model, last=i == len(chunks) - 1):
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
                acc.backward(loss * acc.num_processes)  # DDP averages gradients over processes; undo that
            pass_loss += loss.detach()
            for key, value in {"loss": loss.detach(), **stats}.items():
                sums[key] = sums.get(key, 0.0) + value.sum() / mu
        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
        if run.step_is_finite(step, {"policy loss": acc.reduce(pass_loss, "sum"), "grad_norm": grad_norm}):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return sums, float(grad_norm)


def train(cfg: GRPOConfig, resume: str | bool | None = None) -> dict:
    """Run GRPO (or a variant) as configured; returns the summary (also written to the run folder)."""
    run = start_run(cfg, "grpo", resume)
    acc = run.accelerator
    g, mu, temperature = cfg.grpo.group_size, cfg.grpo.num_iterations, cfg.sampling.temperature
    tokenizer = load_tokenizer(cfg.model, announce=run.print)
    model = load_causal_lm(cfg.model, tokenizer, acc.device)
    disable_dropout(model)  # the ratio must compare the same function at rollout and update time
    model.train()

    train_examples, eval_examples = load_split(cfg.data, "prompt", cfg.train.seed)
    train_examples, prompt_ids, report = tokenize_prompts(train_examples, tokenizer, cfg.data, "train")
    eval_examples, eval_ids, _ = tokenize_prompts(eval_examples, tokenizer, cfg.data, "eval")
    run.print(report.describe("train"))
    rewards = RewardSet(cfg.rewards, acc.device, cfg.data.max_length + cfg.sampling.max_new_tokens, acc.autocast)
    eval_only = RewardSet(cfg.eval_rewards, acc.device, autocast=acc.autocast) if cfg.eval_rewards else None
    reference = (load_reference(cfg.model, None, model, tokenizer, acc.device, acc.autocast)
                 if cfg.grpo.beta > 0 else None)
    model, optimizer, scheduler, steps, start = prepare_training(run, model, cfg.train, len(train_examples))
    if reference is not None and reference.policy is not None:
        reference.policy = model
    trainable, total = count_parameters(model)
    per_rank = cfg.train.batch_size // acc.num_processes
    run.print(f"grpo ({cfg.grpo.advantage}, {cfg.grpo.ratio} ratio, G={g}, mu={mu}, beta={cfg.grpo.beta}): "
              f"{len(train_examples)} prompts, {steps} steps x {cfg.train.batch_size} prompts x {g} samples "
              f"({per_rank * g} sequences per process), {mu} optimizer step(s) per rollout step, "
              f"{trainable:,} of {total:,} parameters trainable, "
              f"rewards: {', '.join(f'{s.weight:g} x {s.label}' for s in cfg.rewards)}")
    if start == 0:
        run.log.log(0, evaluate(acc, cfg, model, tokenizer, eval_examples, eval_ids, rewards, eval_only))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc=f"grpo/{cfg.grpo.advantage}", disable=not (cfg.run.progress and run.is_main))
    tokens_total, train_clock = 0, time.time()
    for step in range(start + 1, steps + 1):
        # 1. rollout: this process's prompts x G samples each (rows of a group are contiguous), seeded per row
        clock = time.time()
        idx = step_indices(len(train_examples), step, cfg.train.batch_size, 1, cfg.train.seed, acc.process_index,
                           acc.num_processes)[0]
        first_row = acc.process_index * len(idx) * g
        examples = [train_examples[i] for i in idx for _ in range(g)]
        gens = sample(acc, model, tokenizer, [prompt_ids[i] for i in idx for _ in range(g)], sampling_params(cfg),
                      rollout_seeds(cfg.train.seed, step, first_row, len(examples)))
        batch = rollout_batch(gens, tokenizer.pad_token_id).to(acc.device)
        t_generate = time.time() - clock

        # 2. score with every reward source; gather the whole batch's scores (group statistics are global)
        clock = time.time()
        local_scores, local_parts = rewards([e.prompt for e in examples], [x.text for x in gens], fields_of(examples))
        truncated = gather_rows(acc, ~batch.finished)
        scores = gather_rows(acc, local_scores.to(acc.device)) - cfg.grpo.missing_eos_penalty * truncated.float()
        parts = {k: gather_rows(acc, v.to(acc.device)) for k, v in local_parts.items()}
        t_score = time.time() - clock

        # 3. group-relative advantages over the whole batch; rows that get no gradient (dropped groups, truncations)
        clock = time.time()
        flat_groups = zero_spread_groups(scores, g)
        keep = torch.ones_like(scores, dtype=torch.bool)
        if cfg.grpo.dynamic_sampling:
            keep &= ~flat_groups.repeat_interleave(g)
        if cfg.grpo.mask_truncated:
            keep &= ~truncated
        mine = slice(first_row, first_row + len(examples))
        advantages = ADVANTAGES[cfg.grpo.advantage](scores, g, 1e-6, keep)[mine]
        mask = batch.response_mask * keep[mine].unsqueeze(-1)
        chunks = chunks_of(range(len(examples)), cfg.grpo.micro_batch_size)
        old_logps = no_grad_logps(model, batch, chunks, temperature) if mu > 1 else None
        ref_logps = (torch.cat([reference.response_logps(batch.select(c), temperature).float() for c in chunks])
                     if reference is not None else None)

        # 4. update: mu optimizer steps, each over the whole rollout batch
        sums, grad_norm = update(run, step, cfg, model, optimizer, batch, advantages, mask, old_logps, ref_logps, chunks)
        scheduler.step()
        t_train = time.time() - clock

        # 5. log, eval, checkpoint (every figure over the whole batch of every process)
        totals = {k: v.item() for k, v in zip(sums, acc.reduce(torch.stack(list(sums.values())), "sum"))}
        n_tokens = max(acc.reduce(mask.sum().float(), "sum").item(), 1)
        lengths = gather_rows(acc, batch.response_mask.sum(-1).float())
        tokens_total += int(lengths.sum().item())
        if step % cfg.run.log_every == 0 or step == steps:
            metrics = {"reward/score": scores.mean().item(), "reward/score_std": scores.std().item(),
                       **{f"reward/{k}": v.mean().item() for k, v in parts.items()},
                       **{f"reward_std/{k}": v.std().item() for k, v in parts.items()},
                       "loss/policy": totals["loss"], "groups/zero_spread_frac": flat_groups.float().mean().item(),
                       "groups/kept_rows_frac": keep.float().mean().item(),
                       "policy/clipfrac": totals["clipfrac"] / n_tokens,
                       "policy/clip_low_frac": totals["clip_low"] / n_tokens,
                       "policy/clip_high_frac": totals["clip_high"] / n_tokens,
                       "policy/approx_kl": totals["approx_kl"] / n_tokens, "entropy": totals["entropy"] / n_tokens,
                       "ratio/mean": totals["ratio"] / n_tokens,
                       "length/mean": lengths.mean().item(), "eos_rate/train": 1 - truncated.float().mean().item(),
                       "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                       "time/generate_s": t_generate, "time/score_s": t_score, "time/train_s": t_train,
                       "speed/tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9)}
            if "kl" in totals:
                metrics["kl/per_token"] = totals["kl"] / n_tokens
            run.log.log(step, metrics)
            bar.set_postfix(reward=f"{scores.mean().item():.3f}")
        if (cfg.run.sample_every and step % cfg.run.sample_every == 0) or step == steps:
            run.log.add_samples(step, [{"prompt": e.prompt[-1].content, "response": x.text, "reward": s.item()}
                                       for e, x, s in zip(examples, gens, scores[mine])][: cfg.run.num_samples])
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step != steps:
            run.log.log(step, evaluate(acc, cfg, model, tokenizer, eval_examples, eval_ids, rewards, eval_only))
        if cfg.run.save_every and step % cfg.run.save_every == 0 and step != steps:
            run.checkpoint(step, {}, cfg.run.keep_checkpoints)
        bar.update(1)
    bar.close()

    run.checkpoint(steps, {}, cfg.run.keep_checkpoints)
    final_eval = evaluate(acc, cfg, model, tokenizer, eval_examples, eval_ids, rewards, eval_only)
    run.log.log(steps, final_eval)
    save_final(run, model, tokenizer, cfg.run)
    first = run.log.rows[0] if run.log.rows else {}
    summary = {"steps": steps, "algorithm": {"advantage": cfg.grpo.advantage, "ratio": cfg.grpo.ratio,
                                             "group_size": g, "num_iterations": mu, "beta": cfg.grpo.beta},
               "final": final_eval, "initial": {k: v for k, v in first.items() if k.startswith("reward_eval/")},
               "tokens_per_s": tokens_total / max(time.time() - train_clock, 1e-9), "prompts": report.__dict__,
               "parameters": {"trainable": trainable, "total": total}}
    headline = [("steps", steps), ("eval reward before", first.get("reward_eval/total", math.nan)),
                ("eval reward after", final_eval.get("reward_eval/total", math.nan)),
                ("final model", str(run.dir / "final"))]
    return finish_run(run, summary, headline)
