"""RRHF: its section and config (ranked lists from the data, or K samples per prompt scored by reward sources)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import RecipeConfig, Section
from .rl import _SAMPLING_INACTIVE, RewardSource, SamplingSection, _demo_rewards


class RRHFSection(Section):
    source: Literal["data", "online"] = Field("data", description="where each prompt's K responses come from: data = the ranked lists of data.train (format ranked, best first); online = samples_per_prompt samples from the current policy, scored by rewards:")
    sft_weight: float = Field(1.0, ge=0, description="weight of the length-normalised NLL of each list's best response (the paper's L_ft, eq. 3; 1 in the paper)")
    samples_per_prompt: int = Field(4, ge=2, description="online: K responses sampled per prompt each step (the paper ranks 4-6)")


def _online(c) -> bool:
    return c.rrhf.source == "online"


def _from_data(c) -> bool:
    return c.rrhf.source == "data"


ONLINE_ONLY = "it configures sampling and scoring (rrhf.source = online)"


class RRHFConfig(RecipeConfig):
    """RRHF: rank the responses to a prompt by their length-normalised log-probs with a hinge (+ NLL on the best)."""

    DEFAULTS = {"model": {"name_or_path": "demo:sft"}, "data": {"train": "demo:ranked", "max_length": 512},
                "train": {"lr": 5e-7, "warmup_ratio": 0.1}, "run": {"output_dir": "runs/rrhf-{time}"}}
    REFUSED = {"data.loss_on": "the loss covers the response after the prompt (every turn of a multi-turn response)",
               **{f"sampling.{k}": "RRHF takes no importance ratio: the samples are ranked, never reweighted"
                  for k in ("correction", "correction_level", "correction_cap")}}
    # sampling's own rules, less the correction ones (refused above), then each field the other source does not use
    INACTIVE = [*RecipeConfig.INACTIVE, *(rule for rule in _SAMPLING_INACTIVE if "correction" not in rule[0]),
                ("rrhf.samples_per_prompt", _online, ONLINE_ONLY),
                *((f"sampling.{k}", _online, ONLINE_ONLY) for k in SamplingSection.model_fields),
                ("rewards", _online, ONLINE_ONLY), ("eval_rewards", _online, ONLINE_ONLY),
                ("data.packing", _from_data, "sampled responses are laid out by the sampler (rrhf.source = online)"),
                ("run.sample_max_new_tokens", _from_data, "online samples are the rollouts themselves (sampling.max_new_tokens)")]
    rrhf: RRHFSection = Field(default_factory=RRHFSection, description="the responses ranked and the loss")
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="online: sampling the K responses (RRHF scores them by the policy's own log-probs, at temperature 1, whatever sampling.temperature drew them)")
    rewards: list[RewardSource] = Field(default_factory=_demo_rewards, description="online: reward sources whose weighted sum scores (ranks) the K responses")
    eval_rewards: list[RewardSource] = Field(default_factory=list, description="online: extra sources scored at eval only, never optimised (reward hacking shows as a gap)")
