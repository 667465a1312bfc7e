"""DPO and its family, KTO, and the reward model: their sections and configs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import REPLAY_INACTIVE, DataConfig, RecipeConfig, ReplaySection, Section


class DPOSection(Section):
    loss: Literal["sigmoid", "robust", "ipo", "hinge", "simpo", "orpo"] = Field("sigmoid", description="preference loss (see README table): sigmoid = DPO; robust / ipo / hinge / simpo / orpo")
    beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward (DPO beta; ORPO lambda; SimPO beta)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="assumed fraction of flipped labels (cDPO / robust DPO epsilon)")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target reward margin gamma")
    nll_weight: float | None = Field(None, ge=0, description="weight of an NLL term on the chosen response (RPO); None = 1 for orpo, 0 otherwise")
    reference: Literal["cached", "on_the_fly"] = Field("cached", description="reference log-probs computed once before training (cached with the run) or every step")
    reference_model: str | None = Field(None, description="reference model path; None = the starting policy (model.name_or_path; with LoRA, the base with the adapter off)", json_schema_extra={"resolve": "model"})
    reference_update: Literal["none", "soft", "hard"] = Field("none", description="trust-region DPO (Gorbatovski et al. 2024): the reference follows the policy, soft = ref <- alpha * policy + (1 - alpha) * ref every step, hard = ref <- policy every reference_every steps; needs a separate reference copy (not LoRA's adapter-off base) and reference: on_the_fly")
    reference_alpha: float = Field(0.6, gt=0, le=1, description="soft reference update: weight of the policy in the mix (TR-DPO alpha)")
    reference_every: int = Field(64, ge=1, description="hard reference update: optimizer steps between copies of the policy into the reference (TR-DPO tau)")

    @property
    def nll_weight_value(self) -> float:
        """The NLL weight in force: ORPO is defined with its NLL term; other losses add none unless asked."""
        if self.nll_weight is not None:
            return self.nll_weight
        return 1.0 if self.loss == "orpo" else 0.0


TRUST_REGION_INACTIVE = [
    ("dpo.reference_alpha", lambda c: c.dpo.reference_update == "soft", "it weighs the soft update (dpo.reference_update = soft)"),
    ("dpo.reference_every", lambda c: c.dpo.reference_update == "hard", "it spaces the hard update (dpo.reference_update = hard)"),
]


def _preference_data(train: str) -> DataConfig:
    return DataConfig(train=train, eval_fraction=0.05, max_length=512)


class DPOConfig(RecipeConfig):
    """Direct preference optimisation and its family, on prompt/chosen/rejected pairs."""

    DEFAULTS = {"model": {"name_or_path": "demo:sft"}, "data": {"train": "demo:prefs", "max_length": 512},
                "train": {"lr": 5e-7, "warmup_ratio": 0.1}, "run": {"output_dir": "runs/dpo-{time}"}}
    REFUSED = {"data.loss_on": "the loss covers the response after the prompt (every turn of a multi-turn response)"}
    INACTIVE = [*RecipeConfig.INACTIVE,
                ("dpo.simpo_gamma", lambda c: c.dpo.loss == "simpo", "it is SimPO's margin (dpo.loss = simpo)"),
                *((f"dpo.{k}", lambda c: c.dpo.loss not in ("simpo", "orpo"), "SimPO and ORPO use no reference")
                  for k in ("reference", "reference_model", "reference_update")),
                *TRUST_REGION_INACTIVE, *REPLAY_INACTIVE]

    @model_validator(mode="after")
    def _trust_region(self) -> DPOConfig:
        if self.dpo.reference_update != "none" and self.dpo.reference == "cached":
            raise ValueError(f"dpo.reference_update = {self.dpo.reference_update} moves the reference, so its log-probs "
                             "cannot be cached before training: set dpo.reference = on_the_fly")
        return self
    dpo: DPOSection = Field(default_factory=DPOSection, description="the preference loss and its reference")
    replay: ReplaySection = Field(default_factory=ReplaySection, description="earlier data's NLL added to the loss (forgetting)")


class KTOSection(Section):
    beta: float = Field(0.1, gt=0, description="KTO beta: scale of the implicit reward inside the sigmoid")
    desirable_weight: float = Field(1.0, gt=0, description="lambda_D, weight of desirable examples")
    undesirable_weight: float = Field(1.0, gt=0, description="lambda_U, weight of undesirable examples (raise it when they are rarer)")
    reference: Literal["cached", "on_the_fly"] = Field("cached", description="reference log-probs computed once before training or every step")
    reference_model: str | None = Field(None, description="reference model path; None = the starting policy", json_schema_extra={"resolve": "model"})


class KTOConfig(RecipeConfig):
    """Kahneman-Tversky optimisation on unpaired prompt/completion/label data."""

    DEFAULTS = {"model": {"name_or_path": "demo:sft"}, "data": {"train": "demo:kto", "max_length": 512},
                "train": {"lr": 5e-7, "warmup_ratio": 0.1}, "run": {"output_dir": "runs/kto-{time}"}}
    REFUSED = {"data.loss_on": "the loss covers the response after the prompt (every turn of a multi-turn response)"}
    kto: KTOSection = Field(default_factory=KTOSection, description="the KTO loss and its reference")


# ------------------------------------------------------------------------------------------------ reward model
class RMSection(Section):
    loss: Literal["all_pairs", "plackett_luce"] = Field("all_pairs", description="ranking loss: all_pairs = InstructGPT's mean over the K(K-1)/2 pairs (Bradley-Terry on pairs), or listwise plackett_luce")
    use_margin: bool = Field(False, description="subtract each pair's \"margin\" field inside the Bradley-Terry sigmoid (Llama 2)")
    center_coef: float = Field(0.0, ge=0, description="weight of the reward-centering term mean(r)^2 that keeps rewards near zero")


class RMConfig(RecipeConfig):
    """Reward model: a scalar head on a causal-LM backbone, trained on preference pairs or ranked lists."""

    DEFAULTS = {"model": {"name_or_path": "demo:sft"}, "data": {"train": "demo:prefs", "max_length": 512},
                "train": {"lr": 1e-5, "warmup_ratio": 0.05}, "run": {"output_dir": "runs/rm-{time}"}}
    REFUSED = {**{"data.loss_on": "the loss covers the response after the prompt (every turn of a multi-turn response)"},
               **{f"run.{k}": "a reward model scores text, it does not generate any"
                  for k in ("sample_every", "num_samples", "sample_max_new_tokens")}}
    rm: RMSection = Field(default_factory=RMSection, description="the ranking loss")
