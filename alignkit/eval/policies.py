"""Policy evaluation: several models answer one prompt set with the same sampling settings and seeds; each answer
is scored by every reward source, and the models are compared with intervals."""

from __future__ import annotations

from .table import print_table


def eval_policy(cfg) -> dict:
    """Answer every prompt of ``data.train`` with the causal LM in ``model`` (greedy, or sampled with seeds) and
    score the answers with ``rewards``: each source's mean, their weighted total, the EOS rate and the mean length
    (and each source per side of ``eval.group_by``). The answers and their scores go to ``samples.jsonl``."""
    import json

    from ..checkpoint import atomic_write_json, atomic_write_text
    from ..config import dump_config
    from ..data.loading import load_examples
    from ..data.prepare import resolve_data_source
    from ..models import load_causal_lm, load_tokenizer, resolve_device
    from ..rewards import RewardSet
    from ..rollout.core import rollout_seeds, tokenize_prompts
    from ..rollout.engines import HFEngine
    from ..rollout.evaluate import evaluate_policy
    from ..runtime import resolve_run_dir
    from ..sampling import SamplingParams

    run_dir = resolve_run_dir(cfg.run, "eval", None)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    device = resolve_device(cfg.model.device)
    tokenizer = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model, tokenizer, device, trainable=False)
    examples = load_examples(resolve_data_source(cfg.data.train), "prompt", cfg.data.format, split=cfg.data.split,
                             subset=cfg.data.subset)
    examples, prompt_ids, report = tokenize_prompts(examples, tokenizer, cfg.data, cfg.data.train)
    rewards = RewardSet(cfg.rewards, device, cfg.data.max_length + cfg.eval.max_new_tokens)
    e = cfg.eval
    params = SamplingParams(max_new_tokens=e.max_new_tokens, temperature=e.temperature)
    seeds = rollout_seeds(e.seed, 0, 0, len(examples)) if e.temperature > 0 else None
    metrics, rows = evaluate_policy(HFEngine(None, tokenizer, batch_size=e.batch_size), model, examples, prompt_ids,
                                    rewards, params, split_field=e.group_by, seeds=seeds)
    atomic_write_text(run_dir / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    summary = {"mode": "policy", "model": cfg.model.name_or_path, "data": cfg.data.train, "prompts": report.__dict__,
               "sampling": {"max_new_tokens": e.max_new_tokens, "temperature": e.temperature}, **metrics,
               "run_dir": str(run_dir)}
    atomic_write_json(run_dir / "summary.json", summary)
    print_table(f"alignkit eval: policy on {len(examples)} prompts", summary, skip=("prompts", "sampling"))
    return summary
