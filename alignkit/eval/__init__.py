"""``alignkit eval``: what a trained reward model's scores say about it (accuracy, margins, calibration, the
ready-for-PPO verdict), or how a policy's answers score (``eval.mode: policy``, through the one policy evaluator
that the RL recipes and the demo use, ``rollout.evaluate``).
"""

from __future__ import annotations


def run_eval(cfg, resume=None) -> dict:
    """``alignkit eval CONFIG.yaml``: the evaluation ``eval.mode`` names (reward_model or policy)."""
    from ..runtime import quiet_libraries

    quiet_libraries()
    if cfg.run.threads:
        import torch

        torch.set_num_threads(cfg.run.threads)
    return EVAL_MODES[cfg.eval.mode](cfg)


from .policies import eval_policy  # noqa: E402
from .reward_model import eval_reward_model, pair_margins, preference_metrics  # noqa: E402,F401

EVAL_MODES = {"reward_model": eval_reward_model, "policy": eval_policy}
