"""What PPO and GRPO build before their loops, once: the policy, its frozen reference, the reward sources, the
tokenized prompt data, and (after the recipe has prepared its trained models) the rollout engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.cache import cached
from ..data.prepare import load_split
from ..models import count_parameters, disable_dropout, load_causal_lm, load_reference, load_tokenizer
from ..rewards import RewardSet
from .core import tokenize_prompts
from .engines import engine_name, make_engine
from .env import Environment, Play, play_of
from .evaluate import eval_metrics


@dataclass
class RLSetup:
    """The pieces every RL recipe's loop uses. ``policy`` is the trained model (accelerate-wrapped once the recipe
    has prepared it: ``ready`` then swaps it in and builds the engine)."""

    accelerator: Any
    tokenizer: Any
    policy: Any
    reference: Any  # models.Reference, or None when no KL to a reference is computed
    rewards: RewardSet
    eval_only: RewardSet | None  # sources scored at eval only, never optimised
    train: tuple[list, list[list[int]]]  # (prompt records, prompt token ids)
    eval: tuple[list, list[list[int]]]
    prompts: dict[str, int]  # the train prompts' report: kept, truncated, dropped
    play: Play = field(default_factory=Play)  # the environment episodes are played in (single-turn by default)
    parameters: tuple[int, int] = (0, 0)  # the policy's (trainable, total)
    engine: Any = None

    def ready(self, cfg, prepared_policy) -> None:
        """The prepared (wrapped) policy replaces the loaded one, the reference follows it (a LoRA reference is the
        policy with its adapter off), and the engine is built and given the weights (a resumed run's)."""
        self.policy = prepared_policy
        if self.reference is not None and self.reference.policy is not None:
            self.reference.policy = prepared_policy
        self.engine = make_engine(cfg.sampling, self.accelerator, self.tokenizer, prepared_policy,
                                  cfg.data.max_length + cfg.sampling.max_new_tokens)
        self.engine.sync(prepared_policy)
        self.parameters = count_parameters(prepared_policy)

    def evaluate(self, cfg) -> dict[str, float]:
        """Answers to the eval prompts (greedy, or sampled: sampling.eval_temperature / eval_samples), scored by
        every source (``reward_eval/*``, ``length/eval``...)."""
        s = cfg.sampling
        return eval_metrics(self.engine, self.policy, *self.eval, self.rewards, s.max_new_tokens, self.eval_only,
                            temperature=s.eval_temperature, samples=s.eval_samples, seed=cfg.train.seed,
                            play=self.play)


def load_rl(run, cfg, with_reference: bool, reference_path: str | None = None) -> RLSetup:
    """Load the policy (dropout off: the ratio must compare the same function at rollout and update time), its
    reference when asked (``reference_path``, else the starting policy), the reward sources (a ``judge: self``
    source judges with the policy itself) and the tokenized prompts of ``cfg``."""
    acc = run.accelerator
    engine_name(cfg.sampling.engine)  # an engine this machine cannot run is refused before anything loads
    tokenizer = load_tokenizer(cfg.model, announce=run.print)
    policy = load_causal_lm(cfg.model, tokenizer, acc.device)
    disable_dropout(policy)
    policy.train()
    reference = (load_reference(cfg.model, reference_path, policy, tokenizer, acc.device, acc.autocast)
                 if with_reference else None)
    play = play_of(cfg.environment, tokenizer) if hasattr(cfg, "environment") else Play()
    rewards = RewardSet(cfg.rewards, acc.device, cfg.data.max_length + cfg.sampling.max_new_tokens, acc.autocast,
                        policy=(policy, tokenizer), scored_elsewhere=callable(getattr(play.env, "reward", None))
                        and type(play.env).reward is not Environment.reward)
    eval_only = RewardSet(cfg.eval_rewards, acc.device, autocast=acc.autocast) if cfg.eval_rewards else None
    train_examples, eval_examples = prompt_split(cfg.data, play.env, cfg.train.seed)
    train_examples, prompt_ids, report = cached(tokenize_prompts, train_examples, tokenizer, cfg.data, "train",
                                                tools=play.tools)
    eval_examples, eval_ids, _ = cached(tokenize_prompts, eval_examples, tokenizer, cfg.data, "eval", tools=play.tools)
    run.print(report.describe("train"))
    return RLSetup(acc, tokenizer, policy, reference, rewards, eval_only, (train_examples, prompt_ids),
                   (eval_examples, eval_ids), report.__dict__, play)


ENVIRONMENT_DATA = "environment"  # data.train / data.eval: the records the environment carries


def prompt_split(data, env, seed: int) -> tuple[list, list]:
    """Train and eval prompts: from ``data`` as usual, or, where ``data.train`` / ``data.eval`` is
    ``environment``, the environment's own records (``Environment.records``), converted like a prompt file's."""
    if ENVIRONMENT_DATA not in (data.train, data.eval):
        return load_split(data, "prompt", seed)
    from ..data.formats import FORMATS, DataError
    from ..data.loading import train_eval_split

    def records(split: str) -> list:
        rows = env.records(split) if hasattr(env, "records") else None
        if rows is None:
            raise DataError(f"data.{split} = environment, but {type(env).__name__} carries no {split} records "
                            "(Environment.records)")
        return [FORMATS["prompt"]["prompt"](row, f"{type(env).__name__} {split} record {i}") for i, row in enumerate(rows)]

    train = records("train") if data.train == ENVIRONMENT_DATA else load_split(data, "prompt", seed)[0]
    if data.eval == ENVIRONMENT_DATA:
        return train, records("eval")
    if data.eval:
        return train, load_split(data, "prompt", seed)[1]
    return train_eval_split(train, data.eval_fraction, seed)
