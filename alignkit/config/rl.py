"""PPO and GRPO: reward sources, rollout sampling, the algorithms' sections and configs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import REPLAY_INACTIVE, RecipeConfig, ReplaySection, Section, deep_merge
from .preference import TRUST_REGION_INACTIVE, DPOSection


class RewardSource(Section):
    """One reward source; a run sums them with their weights and logs each one separately."""

    name: str | None = Field(None, description="metric name for this source (default: derived from it)")
    fn: str | None = Field(None, description="Python reward function: module:function or path/to/file.py:function, called fn(prompts, completions, **fields) -> list[float]")
    builtin: Literal["regex", "length", "repetition", "demo_gold", "demo_format"] | None = Field(None, description="a built-in reward (args configure it)", json_schema_extra={"resolve": "builtin"})
    reward_model: str | None = Field(None, description="a reward model folder from alignkit rm (or demo:rm)", json_schema_extra={"resolve": "model"})
    process_reward_model: str | None = Field(None, description="a process reward model folder from alignkit prm (or demo:prm): scores each step of a completion (split at the separator it was trained with) with the probability that the step is correct; PPO puts the step scores on the tokens where the steps end, GRPO normalises them per group with grpo.advantage = process, everywhere else the completion's score is their step_aggregate", json_schema_extra={"resolve": "model"})
    step_aggregate: Literal["min", "product", "last"] = Field("min", description="process_reward_model: a completion's one score from its step scores: min (Math-Shepherd), product (Lightman et al.), or the last step's; a completion with no step scores 0")
    judge: str | None = Field(None, description="a causal LM used as a judge (RLAIF): it is asked args.template and its first number is the score; self = the trained policy judges its own answers (self-rewarding)", json_schema_extra={"resolve": "model"})
    normalize: bool = Field(True, description="reward models: normalise with the mean / std stored beside the model")
    weight: float = Field(1.0, description="multiplier of this source in the total reward")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for fn, builtin and judge sources (a judge: template, scale, default, max_new_tokens)")
    revision: str | None = Field(None, description="reward_model / process_reward_model / judge: hub revision to load")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="reward_model / process_reward_model / judge: weights dtype")
    trust_remote_code: bool = Field(False, description="reward_model / process_reward_model / judge: allow model code from the hub repository to run")

    @model_validator(mode="after")
    def _one_source(self) -> RewardSource:
        given = [k for k in ("fn", "builtin", "reward_model", "judge", "process_reward_model") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("a reward source needs exactly one of fn, builtin, reward_model, judge, process_reward_model "
                             f"(got {given or 'none'})")
        models = (self.reward_model or self.process_reward_model
                  or (self.judge if self.judge != "self" else None))  # judge: self is the policy
        unused = {"args": bool(self.args) and bool(self.reward_model or self.process_reward_model),
                  "normalize": not self.normalize and not self.reward_model,
                  "step_aggregate": self.step_aggregate != "min" and not self.process_reward_model,
                  **{k: getattr(self, k) != d and not models for k, d in (("revision", None), ("dtype", "auto"),
                                                                          ("trust_remote_code", False))}}
        for key, is_unused in unused.items():
            if is_unused:
                raise ValueError(f"reward source {self.label}: {key} does not apply to a {given[0]} source")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.fn:
            return self.fn.rsplit(":", 1)[-1]
        if self.builtin:
            return self.builtin
        return "reward_model" if self.reward_model else "prm" if self.process_reward_model else "judge"


class SamplingSection(Section):
    max_new_tokens: int = Field(64, ge=1, description="response token budget per rollout")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (PPO and GRPO compute their log-probs at the same temperature; online DPO, RRHF and distillation score with the policy's own, temperature 1)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    top_k: int = Field(0, ge=0, description="top-k filter; 0 = off")
    eval_temperature: float = Field(0.0, ge=0, description="periodic eval: 0 = greedy answers; > 0 samples them (greedy can hide progress and overstate it), with the same seeds at every eval")
    eval_samples: int = Field(1, ge=1, description="periodic eval: answers per eval prompt when eval_temperature > 0; the figures are their means")
    engine: Literal["auto", "hf", "vllm"] = Field("auto", description="rollout engine: hf (transformers generate), vllm (colocated vllm.LLM, the vllm extra, CUDA), auto = vllm when installed and CUDA is present, else hf")
    correction: Literal["none", "tis", "mis"] = Field("none", description="correct the update for the engine's log-probs differing from the trainer's: tis = weight tokens by min(rho, correction_cap), mis = drop tokens / sequences whose rho leaves [1/cap, cap]; rho = pi_train / pi_rollout")
    correction_level: Literal["token", "sequence", "geometric"] = Field("token", description="rho per token, per sequence (product of token ratios) or per sequence as their geometric mean")
    correction_cap: float = Field(2.0, gt=1, description="C: the truncation (tis) or the mask bounds [1/C, C] (mis)")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vllm engine: fraction of GPU memory vLLM may take (weights + KV cache); the trainer keeps the rest")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="vllm engine: GPUs one vLLM instance is split over")
    vllm_sleep: bool = Field(True, description="vllm engine: release vLLM's GPU memory (weights and KV cache) while the trainer trains, wake it to generate")
    vllm_max_model_len: int | None = Field(None, ge=1, description="vllm engine: context length vLLM reserves KV cache for; None = data.max_length + max_new_tokens")


class EnvironmentSection(Section):
    """Multi-turn episodes: what answers the policy between its turns (alignkit.rollout.env). Without a name and
    without tools every episode is one turn (the single-turn rollouts)."""

    name: str | None = Field(None, description="an environment class (package.module:Class or path/to/file.py:Class, see alignkit.rollout.env.Environment) or verifiers:<env id> (a verifiers environment, the verifiers extra); None = the built-in tool environment over tools, or single-turn")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the environment class; verifiers: its [env] block (taskset, seats) plus select (train records) and eval (eval records)")
    tools: list[str] = Field(default_factory=list, description="Python tool functions (module:function or path/to/file.py:function; type hints and an Args: docstring give their schema), offered to the model through the chat template and run when it calls them (the built-in tool environment; a named environment brings its own)")
    max_turns: int = Field(4, ge=1, description="assistant turns per episode at most (an episode cut here counts as truncated)")
    max_tokens: int | None = Field(None, ge=1, description="tokens after the prompt per episode, the policy's and the environment's together (an episode cut here counts as truncated); None = max_turns x sampling.max_new_tokens")
    tool_timeout: float = Field(5.0, gt=0, description="seconds a tool call may run; a slower call returns an error message to the model (tools get no other isolation)")
    tool_format: Literal["auto", "pythonic", "hermes", "mistral", "llama3_json"] = Field("auto", description="how tool calls are written in an assistant turn: pythonic [f(x=1)] (Llama 3.2; alignkit's built-in template), hermes <tool_call>{json}</tool_call> (Qwen, Hermes), mistral [TOOL_CALLS][...], llama3_json; auto = read from the chat template (hermes when it shows none)")

    @property
    def multi_turn(self) -> bool:
        return self.name is not None or bool(self.tools)

    @model_validator(mode="after")
    def _tools_run_by_alignkit(self) -> EnvironmentSection:
        if self.tools and self.name is not None:
            raise ValueError(f"environment.tools is for the built-in tool environment; environment.name = {self.name} "
                             "brings and runs its own tools (its tools attribute; a verifiers environment's toolsets)")
        return self


def _runs_tools(c) -> bool:
    """Tool calls are parsed and run by alignkit: the built-in tool environment, or a verifiers environment's."""
    env = c.environment
    return bool(env.tools) or (env.name or "").startswith("verifiers:")


ENVIRONMENT_INACTIVE = [
    *((f"environment.{k}", lambda c: c.environment.multi_turn, "no environment is set (environment.name or environment.tools)")
      for k in ("max_turns", "max_tokens")),
    *((f"environment.{k}", _runs_tools, "no tool calls are run by alignkit (environment.tools, or a verifiers environment)")
      for k in ("tool_timeout", "tool_format")),
    ("environment.args", lambda c: c.environment.name is not None, "it configures environment.name"),
]


K1_AS_LOSS = ("{key} = k1 cannot be a KL loss term: E[grad log pi] = 0, so its expected gradient is zero and the "
              "penalty would never pull toward the reference; use k3 (unbiased, non-negative) or k2")


class GRPOSection(Section):
    group_size: int = Field(8, ge=2, description="G, responses sampled per prompt")
    advantage: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "process"] = Field("grpo", description="baseline: group mean/std (GRPO), group mean (Dr.GRPO), leave-one-out (RLOO), group mean / batch std (REINFORCE++); process = process supervision (DeepSeekMath 4.1.3): a process_reward_model source's step scores normalised over the group's steps, each token's advantage the sum of those of the steps ending at or after it (any other source's score adds its GRPO advantage)")
    ratio: Literal["token", "sequence", "cispo", "sapo", "gmpo"] = Field("token", description="the policy loss, by how it treats the importance ratio: token = PPO clip per token (GRPO), sequence = clip of the length-normalised sequence ratio (GSPO), cispo = clipped detached weight on REINFORCE, sapo = soft sigmoid gate, gmpo = geometric mean of clipped token ratios")
    clip_low: float | None = Field(None, ge=0, description="lower clip epsilon; None = 0.2 (token), 3e-4 (sequence), 1.0 = no lower bound (cispo), 0.4 in log space (gmpo)")
    clip_high: float | None = Field(None, ge=0, description="upper clip epsilon (DAPO clip-higher: larger than clip_low); None = 0.2 (token), 4e-4 (sequence), 0.28 (cispo), 0.4 in log space (gmpo)")
    sapo_tau_pos: float = Field(1.0, gt=0, description="sapo: gate temperature for positive advantages (larger = narrower trust region)")
    sapo_tau_neg: float = Field(1.05, gt=0, description="sapo: gate temperature for negative advantages")
    num_iterations: int = Field(1, ge=1, description="mu: policy updates per rollout batch; with 1, old log-probs are the current ones (no extra forward)")
    micro_batch_size: int = Field(16, ge=1, description="sequences per forward / backward on each process (memory knob; does not change the result)")
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] | None = Field(None, description="token_mean (DAPO), seq_mean_token_mean (GRPO paper), seq_mean_token_sum (Dr.GRPO: / the token budget, max_new_tokens; in an environment an episode's, environment.max_tokens or max_turns x max_new_tokens); None = seq_mean_token_mean for sequence ratios (GSPO's gradient), token_mean otherwise")
    beta: float = Field(0.0, ge=0, description="KL-to-reference loss coefficient (k3 estimator); 0 = no reference model loaded")
    kl_estimator: Literal["k2", "k3"] = Field("k3", description="per-token KL estimator of the KL loss (k1 is refused: as a loss term its expected gradient is zero)")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus coefficient")
    dynamic_sampling: bool = Field(False, description="drop groups whose rewards are all equal (DAPO); the fraction is reported")
    missing_eos_penalty: float = Field(0.0, ge=0, description="subtracted from the score of responses that hit max_new_tokens without EOS")
    mask_truncated: bool = Field(False, description="give truncated (no-EOS) responses no gradient at all")

    @field_validator("kl_estimator", mode="before")
    @classmethod
    def _no_k1(cls, value: Any) -> Any:
        if value == "k1":
            raise ValueError(K1_AS_LOSS.format(key="grpo.kl_estimator"))
        return value

    @property
    def aggregation(self) -> str:
        """The aggregation in force: GSPO's gradient is (1/|y|) per token of a sequence, i.e. seq_mean_token_mean."""
        if self.loss_aggregation is not None:
            return self.loss_aggregation
        return "seq_mean_token_mean" if self.ratio in ("sequence", "gmpo") else "token_mean"

    @property
    def loss_knobs(self) -> dict[str, float]:
        """The knobs of the policy loss in force (``POLICY_LOSSES[ratio](logps, old, adv, mask, **loss_knobs)``):
        the clip range, whose defaults depend on the loss (GSPO's ratios live near 1 +- 1e-4), or SAPO's gate
        temperatures."""
        if self.ratio == "sapo":
            return {"tau_pos": self.sapo_tau_pos, "tau_neg": self.sapo_tau_neg}
        low, high = {"sequence": (3e-4, 4e-4), "cispo": (1.0, 0.28), "gmpo": (0.4, 0.4)}.get(self.ratio, (0.2, 0.2))
        return {"clip_low": self.clip_low if self.clip_low is not None else low,
                "clip_high": self.clip_high if self.clip_high is not None else high}


def _rl_defaults(recipe: str, batch_size: int) -> dict[str, dict[str, Any]]:
    """PPO's and GRPO's shared-section defaults: the demo SFT policy on the demo prompts, lr 1e-6, 100 steps."""
    return {"model": {"name_or_path": "demo:sft"},
            "data": {"train": "demo:prompts", "eval": "demo:prompts_eval", "max_length": 256},
            "train": {"lr": 1e-6, "batch_size": batch_size, "warmup_ratio": 0.0, "max_steps": 100},
            "run": {"output_dir": f"runs/{recipe}-{{time}}"}}


RL_REFUSED = {"data.packing": "rollouts are laid out by the sampler (packed RL updates are not implemented yet)",
              "data.pack_length": "rollouts are laid out by the sampler (packed RL updates are not implemented yet)",
              "data.loss_on": "the loss covers the sampled response",
              "train.grad_accum": "an RL step is one rollout batch; bound memory with the algorithm's micro_batch_size",
              "data.duplicates": "a repeated prompt is simply sampled again; prompt data is not checked for repeats",
              "run.sample_max_new_tokens": "RL samples are the rollouts themselves (sampling.max_new_tokens)"}


_SAMPLING_INACTIVE = [
    ("sampling.eval_samples", lambda c: c.sampling.eval_temperature > 0, "greedy eval answers are all the same (sampling.eval_temperature = 0)"),
    *((f"sampling.{k}", lambda c: c.sampling.correction != "none", "no engine correction is on (sampling.correction = none)")
      for k in ("correction_level", "correction_cap")),
    *((f"sampling.{k}", lambda c: c.sampling.engine != "hf", "it configures the vllm engine (sampling.engine = hf)")
      for k in ("vllm_gpu_memory_utilization", "vllm_tensor_parallel_size", "vllm_sleep", "vllm_max_model_len")),
]


def _demo_rewards() -> list[RewardSource]:
    return [RewardSource(builtin="demo_gold")]


def process_rules(rewards: list[RewardSource], environment: EnvironmentSection, advantage: str = "") -> None:
    """A process reward model's step scores land on one response's tokens; process advantages need one."""
    has_prm = any(s.process_reward_model for s in rewards)
    if advantage == "process" and not has_prm:
        raise ValueError("grpo.advantage = process needs a process reward model among rewards: "
                         "- process_reward_model: <a final/ folder of alignkit prm>")
    if has_prm and environment.multi_turn:
        raise ValueError("a process_reward_model source places its step scores on a single response's tokens; it cannot "
                         "score multi-turn episodes (environment.name / environment.tools): use it in eval_rewards")


class GRPOConfig(RecipeConfig):
    """Group-relative policy optimisation (GRPO, GSPO, Dr.GRPO, DAPO options, RLOO, REINFORCE++) on prompt-only data."""

    DEFAULTS = _rl_defaults("grpo", batch_size=8)
    REFUSED = RL_REFUSED
    INACTIVE = [*RecipeConfig.INACTIVE, *_SAMPLING_INACTIVE, *ENVIRONMENT_INACTIVE,
                ("grpo.kl_estimator", lambda c: c.grpo.beta > 0, "the KL term is off (grpo.beta = 0)"),
                *((f"grpo.{k}", lambda c: c.grpo.ratio == "sapo", "it sets SAPO's gate (grpo.ratio = sapo)")
                  for k in ("sapo_tau_pos", "sapo_tau_neg")),
                *((f"grpo.{k}", lambda c: c.grpo.ratio != "sapo", "SAPO has no clip range (its gate: sapo_tau_pos / sapo_tau_neg)")
                  for k in ("clip_low", "clip_high")), *REPLAY_INACTIVE]
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="rollout sampling")
    grpo: GRPOSection = Field(default_factory=GRPOSection, description="the algorithm")
    replay: ReplaySection = Field(default_factory=ReplaySection, description="pretraining / SFT data's NLL added to the loss (PPO-ptx; forgetting)")
    environment: EnvironmentSection = Field(default_factory=EnvironmentSection, description="multi-turn episodes: an environment, tools (default: single-turn)")
    rewards: list[RewardSource] = Field(default_factory=_demo_rewards, description="reward sources, summed with their weights")
    eval_rewards: list[RewardSource] = Field(default_factory=list, description="extra sources scored at eval only, never optimised (e.g. a held-out judge: reward hacking shows as a gap)")

    @model_validator(mode="after")
    def _process(self) -> GRPOConfig:
        process_rules(self.rewards, self.environment, self.grpo.advantage)
        if self.grpo.advantage == "process" and self.grpo.ratio in ("sequence", "gmpo"):
            raise ValueError(f"grpo.advantage = process gives every token its own advantage, but grpo.ratio = "
                             f"{self.grpo.ratio} weighs a whole sequence by one advantage: use ratio token, cispo or sapo")
        return self


class PPOSection(Section):
    ppo_epochs: int = Field(4, ge=1, description="passes over each rollout batch")
    mini_batch_size: int = Field(8, ge=1, description="sequences per optimizer step within a pass, over all processes (divides train.batch_size; each process takes mini_batch_size / num_processes)")
    micro_batch_size: int = Field(8, ge=1, description="sequences per forward / backward on each process (memory knob; no effect on the result)")
    clip_low: float = Field(0.2, ge=0, description="policy ratio clip below 1")
    clip_high: float = Field(0.2, ge=0, description="policy ratio clip above 1 (raise it for DAPO-style clip-higher)")
    dual_clip: float | None = Field(None, gt=1, description="dual-clip bound c for negative advantages (e.g. 3.0); None = off")
    value_clip: float | None = Field(0.2, ge=0, description="clip the critic's change per update (PPO2); None = plain squared error")
    critic_lr: float = Field(1e-5, gt=0, description="critic learning rate (the actor uses train.lr)")
    critic_model: str | None = Field(None, description="critic initialisation; None = the first reward model source, else the policy with a new value head", json_schema_extra={"resolve": "model"})
    critic: Literal["separate", "shared"] = Field("separate", description="separate = its own model (from critic_model); shared = a value head on the actor's backbone (less memory, single process)")
    vf_coef: float = Field(0.1, gt=0, description="shared critic only: weight of the value loss in the backbone's gradient")
    critic_warmup_steps: int = Field(0, ge=0, description="rollout steps that train only the critic (lets values settle first)")
    gamma: float = Field(1.0, ge=0, le=1, description="discount over response tokens")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    whiten_advantages: bool = Field(True, description="normalise advantages to zero mean, unit variance over valid tokens")
    kl_coef: float = Field(0.05, ge=0, description="initial coefficient of the per-token KL penalty to the reference")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="per-token KL estimator: k1 (log ratio, classic RLHF reward penalty), k2, or k3 (non-negative); with kl_in_loss, k2 or k3")
    kl_in_loss: bool = Field(False, description="put kl_coef * KL (kl_estimator k2 or k3) in the policy loss instead of the reward (GRPO style)")
    adaptive_kl: bool = Field(False, description="adapt kl_coef with the proportional controller of Ziegler et al.")
    kl_target: float = Field(6.0, gt=0, description="adaptive KL: target per-sequence KL (nats)")
    kl_horizon: int = Field(10000, ge=1, description="adaptive KL: horizon (sequences) of the controller")
    reward_norm: Literal["none", "running", "batch"] = Field("none", description="normalise the total score: running mean/std over the run (checkpointed), or whiten each batch; reward models are already normalised by their stored stats")
    reward_clip: float = Field(10.0, gt=0, description="clip the (normalised) sequence score to +- this")
    missing_eos_penalty: float = Field(0.0, ge=0, description="subtracted from the score of responses that hit max_new_tokens without EOS")
    mask_truncated: bool = Field(False, description="give truncated (no-EOS) responses no gradient instead")
    length_penalty: float = Field(0.0, ge=0, description="subtracted from the score per response token")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus coefficient")


class PPOConfig(RecipeConfig):
    """PPO with a critic (InstructGPT-style RLHF): actor, critic, frozen reference, frozen reward."""

    DEFAULTS = _rl_defaults("ppo", batch_size=16)
    REFUSED = RL_REFUSED
    INACTIVE = [*RecipeConfig.INACTIVE,
                *_SAMPLING_INACTIVE, *ENVIRONMENT_INACTIVE,
                ("ppo.vf_coef", lambda c: c.ppo.critic == "shared", "it weighs a shared critic's value loss"),
                ("ppo.critic_model", lambda c: c.ppo.critic == "separate", "a shared critic is the actor's backbone"),
                *((f"ppo.{k}", lambda c: c.ppo.adaptive_kl, "it tunes the adaptive KL controller (ppo.adaptive_kl)")
                  for k in ("kl_target", "kl_horizon")), *REPLAY_INACTIVE]
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="rollout sampling")
    ppo: PPOSection = Field(default_factory=PPOSection, description="the algorithm")
    replay: ReplaySection = Field(default_factory=ReplaySection, description="pretraining / SFT data's NLL added to the actor's loss (PPO-ptx; forgetting)")
    environment: EnvironmentSection = Field(default_factory=EnvironmentSection, description="multi-turn episodes: an environment, tools (default: single-turn)")
    rewards: list[RewardSource] = Field(default_factory=lambda: [RewardSource(reward_model="demo:rm")], description="reward sources (a reward model, Python functions), summed with weights")
    eval_rewards: list[RewardSource] = Field(default_factory=list, description="extra sources scored at eval only, never optimised (e.g. a held-out judge: reward hacking shows as a gap)")

    @model_validator(mode="after")
    def _ppo_rules(self) -> PPOConfig:
        if self.train.mixed_precision == "fp16":
            raise ValueError("PPO does not support train.mixed_precision = fp16 (the actor and critic optimizers would "
                             "share one loss scaler); use bf16, or no")
        if self.ppo.kl_in_loss and self.ppo.kl_estimator == "k1":
            raise ValueError(K1_AS_LOSS.format(key="ppo.kl_estimator") + " (ppo.kl_in_loss is on)")
        if self.train.batch_size % self.ppo.mini_batch_size:
            raise ValueError(f"ppo.mini_batch_size = {self.ppo.mini_batch_size} must divide train.batch_size = "
                             f"{self.train.batch_size} (both count sequences over all processes)")
        process_rules(self.rewards, self.environment)
        return self

    @property
    def critic_path(self) -> str:
        """The critic starts from ppo.critic_model, else the first reward model, else the policy (new value head)."""
        models = [s.reward_model for s in self.rewards if s.reward_model]
        return self.ppo.critic_model or (models[0] if models else self.model.name_or_path)


# ------------------------------------------------------------------------------------------------ online DPO
class OnlineSection(Section):
    samples_per_prompt: int = Field(2, ge=2, description="K responses sampled per prompt from the current policy each step; the judge's best and worst make the pair")
    iterations: int = Field(1, ge=1, description="iterative DPO: the run's steps split into this many iterations, the reference reset to the current policy at the start of each (1 = it stays the starting policy)")
    micro_batch_size: int = Field(16, ge=1, description="pairs per forward / backward on each process (memory knob; does not change the result)")


class OnlineDPOConfig(RecipeConfig):
    """Online / iterative DPO (OAIF, self-rewarding): pairs sampled from the current policy and ranked by a judge."""

    DEFAULTS = deep_merge(_rl_defaults("online_dpo", batch_size=8), {"train": {"lr": 5e-7}})
    REFUSED = {**RL_REFUSED, "dpo.reference": "online pairs are new every step: the reference scores them as they are sampled",
               **{f"sampling.{k}": "DPO's implicit reward is the policy's own log-ratio: no importance weights between engines"
                  for k in ("correction", "correction_level", "correction_cap")}}
    INACTIVE = [*RecipeConfig.INACTIVE, *_SAMPLING_INACTIVE, *TRUST_REGION_INACTIVE,
                ("dpo.simpo_gamma", lambda c: c.dpo.loss == "simpo", "it is SimPO's margin (dpo.loss = simpo)"),
                *((f"dpo.{k}", lambda c: c.dpo.loss not in ("simpo", "orpo"), "SimPO and ORPO use no reference")
                  for k in ("reference_model", "reference_update")),
                ("online.iterations", lambda c: c.dpo.loss not in ("simpo", "orpo"), "SimPO and ORPO use no reference to refresh")]
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="sampling the candidate responses")
    dpo: DPOSection = Field(default_factory=DPOSection, description="the preference loss trained on the judged pairs, and its reference")
    online: OnlineSection = Field(default_factory=OnlineSection, description="what is sampled and judged each step")
    rewards: list[RewardSource] = Field(default_factory=lambda: [RewardSource(reward_model="demo:rm")], description="the judge: reward sources whose weighted sum ranks the K responses (a reward model, a Python function, an LLM judge; judge: self = the policy itself, self-rewarding)")
    eval_rewards: list[RewardSource] = Field(default_factory=list, description="extra sources scored at eval only, never optimised (e.g. a held-out judge: reward hacking shows as a gap)")

    @model_validator(mode="after")
    def _one_reference_schedule(self) -> OnlineDPOConfig:
        if self.online.iterations > 1 and self.dpo.reference_update != "none":
            raise ValueError("online.iterations > 1 resets the reference at each iteration and dpo.reference_update moves "
                             "it every step or every reference_every steps: choose one schedule")
        if self.train.max_steps and self.online.iterations > self.train.max_steps:
            raise ValueError(f"online.iterations = {self.online.iterations} is more than train.max_steps = "
                             f"{self.train.max_steps}: each iteration needs at least one step")
        return self
