"""Reward-model evaluation: what a trained reward model's scores on held-out preference data say about it
(accuracy, margins, calibration) and the ready-for-PPO verdict."""

from __future__ import annotations

from .table import print_table

MARGIN_BUCKETS = (0.0, 0.5, 1.0, 2.0, float("inf"))


def preference_metrics(margins, bins: int = 10) -> dict[str, float]:
    """What a pairwise judge's margins (r_preferred - r_other, one per labelled pair) say about it.

    accuracy: fraction with a positive margin, a zero margin (a tie: the judge cannot tell) counting 0.5, as in
    the training losses' accuracy. margin_mean. accuracy_by_margin[a-b]: accuracy among pairs whose
    |margin| falls in [a, b): a well-behaved RM is more accurate where it is more confident. calibration_error:
    expected calibration error of p = sigmoid(margin) against the labels (confidence max(p, 1 - p) in ``bins``
    equal bins, |accuracy - confidence| weighted by bin size); 0 is perfectly calibrated.
    """
    import torch

    margins = torch.as_tensor(margins, dtype=torch.float64).flatten()
    if margins.numel() == 0:
        return {}
    correct = (margins > 0).double() + 0.5 * (margins == 0).double()
    out = {"accuracy": correct.mean().item(), "margin_mean": margins.mean().item()}
    size = margins.abs()
    for low, high in zip(MARGIN_BUCKETS, MARGIN_BUCKETS[1:]):
        inside = (size >= low) & (size < high)
        if inside.any():
            out[f"accuracy_by_margin[{low:g}-{high:g})"] = correct[inside].mean().item()
    confidence = torch.sigmoid(size)
    edges = torch.linspace(0.5, 1.0, bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence, edges[1:-1])
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.double().mean().item() * abs(correct[members].mean().item() - confidence[members].mean().item())
    out["calibration_error"] = error
    return out


def pair_margins(rewards, valid):
    """Margins r_i - r_j for every valid pair i < j of best-first lists: (B, K), (B, K) -> (P,)."""
    import torch

    k = rewards.shape[-1]
    i, j = torch.triu_indices(k, k, offset=1)
    keep = valid[:, i] & valid[:, j]
    return (rewards[:, i] - rewards[:, j])[keep]


def eval_reward_model(cfg) -> dict:
    """Score held-out preference data with a trained reward model and say whether it is ready for PPO.

    reward_model mode: every pair / ranked list of ``data.train`` is scored by the reward model in ``model``;
    the summary has accuracy, margins, accuracy by margin bucket and calibration, plus the verdict of the field's
    rule (accuracy under ``eval.min_accuracy`` = not ready for PPO). Scores per record go to ``scores.jsonl``.
    """
    import json
    from pathlib import Path

    import torch

    from ..checkpoint import atomic_write_text
    from ..data.loading import load_examples
    from ..data.prepare import preference_kind, resolve_data_source
    from ..rewards import RewardModelScorer
    from ..runtime import open_run_dir

    run_dir = open_run_dir(cfg, "eval")
    kind = preference_kind(cfg.data)
    examples = load_examples(resolve_data_source(cfg.data.train), kind, cfg.data.format, split=cfg.data.split,
                             subset=cfg.data.subset)
    scorer = RewardModelScorer(cfg.model, max_length=cfg.data.max_length)
    lists = [(e.chosen, e.rejected) if kind == "preference" else e.responses for e in examples]
    flat_prompts = [e.prompt for e, responses in zip(examples, lists) for _ in responses]
    flat_responses = [r for responses in lists for r in responses]
    scores = scorer.score(flat_prompts, flat_responses, cfg.eval.batch_size).tolist()
    width = max(len(r) for r in lists)
    rewards = torch.zeros(len(lists), width)
    valid = torch.zeros(len(lists), width, dtype=torch.bool)
    position = 0
    for i, responses in enumerate(lists):
        rewards[i, : len(responses)] = torch.tensor(scores[position : position + len(responses)])
        valid[i, : len(responses)] = True
        position += len(responses)
    figures = preference_metrics(pair_margins(rewards, valid))
    ready = figures["accuracy"] >= cfg.eval.min_accuracy
    verdict = ("ready for PPO" if ready else f"NOT ready for PPO: accuracy {figures['accuracy']:.3f} < "
               f"{cfg.eval.min_accuracy} (more or cleaner preference data, more steps, or a larger backbone)")
    lines = [json.dumps({"where": e.where, "rewards": rewards[i, valid[i]].tolist()}) for i, e in enumerate(examples)]
    atomic_write_text(run_dir / "scores.jsonl", "\n".join(lines) + "\n")
    summary = {"mode": "reward_model", "model": cfg.model.name_or_path, "data": cfg.data.train, "records": len(examples),
               **figures, "reward_mean": float(torch.tensor(scores).mean()), "reward_std": float(torch.tensor(scores).std()),
               "stored_stats": scorer.stats, "verdict": verdict, "run_dir": str(Path(run_dir))}
    from ..checkpoint import atomic_write_json

    atomic_write_json(run_dir / "summary.json", summary)
    from ..report import write_report

    scored = [{"where": e.where, "prompt": _text(e.prompt), "responses": [_text(r) for r in responses],
               "rewards": rewards[i, valid[i]].tolist()} for i, (e, responses) in enumerate(zip(examples, lists))]
    table = {"title": f"reward model on {len(examples)} held-out records: {verdict}", "columns": ["figure", "value"],
             "rows": [[k, v] for k, v in figures.items()]}
    write_report(run_dir, {k: v for k, v in summary.items() if k not in figures}, scored, eval_tables=[table])
    print_table(f"alignkit eval: reward model on {len(examples)} records", summary, skip=("stored_stats",))
    return summary




def _text(conversation) -> str:
    """A prompt or response (messages) as its last message's text, for the report's table."""
    return conversation[-1].content if isinstance(conversation, tuple | list) and conversation else str(conversation)
