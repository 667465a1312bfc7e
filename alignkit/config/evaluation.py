"""Runs that train nothing: ``alignkit eval`` (reward models; several policies side by side) and
``alignkit generate`` (on-policy preference data)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from .base import DataConfig, ModelConfig, RunConfig, Section, refuse_unused
from .preference import _preference_data
from .rl import ENVIRONMENT_INACTIVE, EnvironmentSection, RewardSource, _demo_rewards


class EvalSection(Section):
    mode: Literal["reward_model", "policy"] = Field("reward_model", description="what to evaluate: reward_model = score a preference file with a reward model; policy = answer a prompt file with a causal LM and score the answers with the rewards sources")
    batch_size: int = Field(32, ge=1, description="sequences per forward pass (policy: prompts per generate call)")
    min_accuracy: float = Field(0.7, ge=0, le=1, description="reward_model: below this pairwise accuracy the summary says the RM is not ready for PPO")
    max_new_tokens: int = Field(64, ge=1, description="policy: answer token budget")
    temperature: float = Field(0.0, ge=0, description="policy: 0 = greedy answers; > 0 samples, seeded per prompt by eval.seed")
    seed: int = Field(0, description="policy: sampling seed (temperature > 0)")
    group_by: str | None = Field(None, description="policy: a boolean field of the prompt records (e.g. held_out); each source's mean is also reported on either side of it")
    max_prompts: int = Field(0, ge=0, description="policy: answer the first N prompts of data.train; 0 = all")
    samples: int = Field(1, ge=1, description="policy: answers per prompt and model (k); > 1 needs eval.temperature > 0 and gives mean@k (and pass@k with eval.pass_threshold)")
    baseline: str | None = Field(None, description="policy: the model (a key of models) every other one is compared with: win rate with its interval; None = the first")
    judge: str | None = Field(None, description="policy: the reward source (its label) that decides wins and pass@k; None = the first source")
    pass_threshold: float | None = Field(None, description="policy: an answer whose judge score is >= this counts as solved: pass@1 and pass@k (a verifiable reward)")
    rerank_by: str | None = Field(None, description="policy: best-of-N reranking: the reward source (its label; typically a process_reward_model, whose step_aggregate makes one score of its step scores) that picks the best of each prompt's eval.samples answers; the judge's mean score of the picked answers (best_of_<N>) is reported next to a single sample's")
    reference: str | None = Field(None, description="policy: a model to measure KL(model || reference) against, on each model's own answers (summed over answer tokens)", json_schema_extra={"resolve": "model"})
    perplexity_data: str | None = Field(None, description="policy: held-out SFT-format text; each model's perplexity on its response tokens (forgetting shows as a rise)", json_schema_extra={"resolve": "data"})
    bootstrap: int = Field(1000, ge=100, description="policy: bootstrap resamples over prompts for every 95% interval")
    human_sheet: int = Field(0, ge=0, description="policy: items per model (vs the baseline) in the blind side-by-side sheet for people to rate; 0 = no sheet")
    ratings: list[str] = Field(default_factory=list, description="policy: filled human-eval sheets (CSV / JSONL, one per rater or a rater column) to read back into the summary")
    ratings_key: str | None = Field(None, description="policy: the human_eval_key.json written with the sheet that eval.ratings filled")


class EvalConfig(Section):
    """Evaluation runs: score held-out data with a trained model and report the figures that say if it is ready."""

    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    REFUSED: ClassVar[dict[str, str]] = {
        **{f"data.{k}": "eval reads data.train only, whole" for k in ("eval", "eval_fraction", "packing", "pack_length", "cache_tokenized", "overlong",
                                                                      "loss_on", "duplicates")},
        **{f"model.{k}": "eval scores with the model as saved; it trains nothing"
           for k in ("adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "gradient_checkpointing")},
        **{f"run.{k}": "eval writes its summary and scores only; it trains, samples and checkpoints nothing"
           for k in ("log_every", "eval_every", "save_every", "keep_checkpoints", "sample_every", "num_samples",
                     "sample_max_new_tokens", "report_to", "merge_adapter", "progress")},
    }

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name_or_path="demo:rm"), description="the model to evaluate")
    data: DataConfig = Field(default_factory=lambda: _preference_data("demo:prefs_eval"), description="held-out data (data.train is read)")
    run: RunConfig = Field(default_factory=lambda: RunConfig(output_dir="runs/eval-{time}"), description="where the report goes")
    eval: EvalSection = Field(default_factory=EvalSection, description="what to evaluate")
    rewards: list[RewardSource] = Field(default_factory=list, description="policy: reward sources scoring the answers (each reported; their weighted sum as total)")
    models: dict[str, str] = Field(default_factory=dict, description="policy: name -> model (hub id, folder, demo:, ${stage.output}) answering the same prompts with the same seeds; empty = model.name_or_path alone", json_schema_extra={"resolve": "model"})
    environment: EnvironmentSection = Field(default_factory=EnvironmentSection, description="policy: answer in episodes of an environment (tools; default single-turn)")

    INACTIVE: ClassVar[list[tuple[str, Any, str]]] = [
        *ENVIRONMENT_INACTIVE,
        *((f"environment.{k}", lambda c: c.eval.mode == "policy", "episodes are played by policies (eval.mode = policy)")
          for k in ("name", "tools")),
        ("eval.min_accuracy", lambda c: c.eval.mode == "reward_model", "it is the reward-model verdict (eval.mode = reward_model)"),
        *((f"eval.{k}", lambda c: c.eval.mode == "policy", "it sets how policies answer and are compared (eval.mode = policy)")
          for k in ("max_new_tokens", "temperature", "seed", "group_by", "max_prompts", "samples", "baseline", "judge",
                    "pass_threshold", "rerank_by", "reference", "perplexity_data", "bootstrap", "human_sheet", "ratings",
                    "ratings_key")),
        ("models", lambda c: c.eval.mode == "policy", "it lists policies (eval.mode = policy)"),
        ("eval.seed", lambda c: c.eval.temperature > 0, "answers are greedy (eval.temperature = 0)"),
    ]

    @property
    def unread_paths(self) -> tuple[str, ...]:
        """Path fields this eval does not read (the resolver leaves them alone)."""
        return ("model.name_or_path",) if self.eval.mode == "policy" and self.models else ()

    @property
    def policies(self) -> dict[str, str]:
        """policy mode: name -> model path, in the order given (models:, else model.name_or_path as "model")."""
        return dict(self.models) or {"model": self.model.name_or_path}

    @model_validator(mode="after")
    def _honest(self) -> EvalConfig:
        refuse_unused(self)
        if self.eval.mode == "policy" and not self.rewards:
            raise ValueError("eval.mode = policy needs rewards: [...] to score the answers (e.g. - builtin: demo_gold)")
        if self.eval.mode == "policy":
            policy_rules(self)
        if self.eval.mode == "policy" and self.model.name_or_path == "demo:rm" and not self.models:
            raise ValueError("eval.mode = policy: set model.name_or_path to the policy to evaluate (the default, "
                             "demo:rm, is a reward model)")
        if self.eval.mode == "policy" and self.data.train == "demo:prefs_eval":
            raise ValueError("eval.mode = policy: set data.train to a prompt file (the default, demo:prefs_eval, is "
                             "preference data)")
        if self.eval.mode == "reward_model" and self.rewards:
            raise ValueError("rewards: has no effect here: it scores a policy's answers (eval.mode = policy)")
        return self


def policy_rules(cfg: EvalConfig) -> None:
    """What a policy comparison needs to be meaningful, said before any model loads."""
    e = cfg.eval
    if cfg.models and cfg.model.name_or_path != "demo:rm":
        raise ValueError("set the policies either in models: (several) or in model.name_or_path (one), not both")
    if e.samples > 1 and e.temperature == 0:
        raise ValueError(f"eval.samples = {e.samples} needs eval.temperature > 0 (greedy answers are all the same)")
    if e.baseline is not None and e.baseline not in cfg.policies:
        raise ValueError(f'eval.baseline = "{e.baseline}" is not a key of models (have: {", ".join(cfg.policies)})')
    labels = [s.label for s in cfg.rewards]
    if e.judge is not None and e.judge not in labels:
        raise ValueError(f'eval.judge = "{e.judge}" is not the label of a reward source (have: {", ".join(labels)})')
    if e.rerank_by is not None and e.rerank_by not in labels:
        raise ValueError(f'eval.rerank_by = "{e.rerank_by}" is not the label of a reward source (have: {", ".join(labels)})')
    if e.rerank_by is not None and e.samples < 2:
        raise ValueError("eval.rerank_by picks the best of each prompt's eval.samples answers: set eval.samples >= 2 "
                         "(and eval.temperature > 0)")
    if len(set(labels)) < len(labels):
        raise ValueError(f"rewards: two sources share a label ({', '.join(labels)}); give them distinct name:s")
    if e.ratings and e.ratings_key is None:
        raise ValueError("eval.ratings needs eval.ratings_key (the human_eval_key.json written with the sheet)")
    if e.human_sheet and len(cfg.policies) < 2:
        raise ValueError("eval.human_sheet compares models side by side: list two or more in models:")


class GenerateSection(Section):
    samples: int = Field(4, ge=1, description="K, responses sampled per prompt (pairs and ranked need K >= 2)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (> 0: K greedy responses would all be the same)")
    max_new_tokens: int = Field(64, ge=1, description="token budget of each response")
    seed: int = Field(0, description="sampling seed: response k of prompt i has its own stream, a function of (seed, k, i) as in alignkit eval's sample k, so a rerun writes the same file")
    batch_size: int = Field(32, ge=1, description="sequences per generate call and per reward call")
    max_prompts: int = Field(0, ge=0, description="sample for the first N prompts of data.train; 0 = all")
    engine: Literal["auto", "hf", "vllm"] = Field("auto", description="generation engine: hf (transformers generate), vllm (vllm.LLM, the vllm extra, CUDA), auto = vllm when installed and CUDA is present, else hf")
    output: Literal["raw", "pairs", "ranked"] = Field("pairs", description="what generated.jsonl holds: raw = every response with its scores; pairs = per prompt the best vs the worst response by the weighted total ({prompt, chosen, rejected}: alignkit dpo / rm data); ranked = per prompt its responses best first ({prompt, responses}: alignkit rm data)")
    min_margin: float = Field(0.0, ge=0, description="pairs: keep a pair only when total(chosen) - total(rejected) >= this; 0 = any strict preference (a tie is never a pair)")


class GenerateConfig(Section):
    """On-policy preference data: K sampled responses per prompt, scored by reward sources, written as they are,
    as judged pairs or as ranked lists in alignkit's own data formats (the input of ``alignkit dpo`` / ``rm``)."""

    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    REFUSED: ClassVar[dict[str, str]] = {
        **{f"data.{k}": "generate reads data.train's prompts (the first generate.max_prompts of them), none held out"
           for k in ("eval", "eval_fraction")},
        **{f"data.{k}": "generate trains nothing; prompts are tokenized afresh (it is quick)"
           for k in ("packing", "pack_length", "loss_on", "cache_tokenized")},
        "data.duplicates": "a repeated prompt is simply sampled again; a repeated output record is dropped and counted",
        **{f"model.{k}": "generate samples from the model as saved; it trains nothing"
           for k in ("adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "gradient_checkpointing")},
        **{f"run.{k}": "generate writes its data file and summary only; it trains, evaluates and checkpoints nothing"
           for k in ("log_every", "eval_every", "save_every", "keep_checkpoints", "sample_every", "num_samples",
                     "sample_max_new_tokens", "report_to", "merge_adapter")},
    }
    INACTIVE: ClassVar[list[tuple[str, Any, str]]] = [
        ("generate.min_margin", lambda c: c.generate.output == "pairs", "it filters pairs (generate.output = pairs)"),
    ]

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name_or_path="demo:sft"), description="the policy to sample from")
    data: DataConfig = Field(default_factory=lambda: DataConfig(train="demo:prompts"), description="prompt-only records (data.train is read)")
    run: RunConfig = Field(default_factory=lambda: RunConfig(output_dir="runs/generate-{time}"), description="where generated.jsonl and summary.json go")
    generate: GenerateSection = Field(default_factory=GenerateSection, description="sampling and what is written")
    rewards: list[RewardSource] = Field(default_factory=_demo_rewards, description="reward sources judging every response (each score kept; their weighted sum ranks them); the default, the demo's gold judge, only knows the demo's arithmetic prompts: name yours")

    @model_validator(mode="after")
    def _honest(self) -> GenerateConfig:
        refuse_unused(self)
        g = self.generate
        if not self.rewards:
            raise ValueError("rewards: at least one reward source is needed to judge the responses (e.g. - builtin: demo_gold)")
        labels = [s.label for s in self.rewards]
        if len(set(labels)) < len(labels):
            raise ValueError(f"rewards: two sources share a label ({', '.join(labels)}); give them distinct name:s")
        if g.output != "raw" and g.samples < 2:
            raise ValueError(f"generate.samples = {g.samples}: generate.output = {g.output} compares responses to one "
                             "prompt and needs at least 2 of them")
        return self
