"""Knowledge distillation: the teacher, the divergence and where the responses come from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import RecipeConfig, Section
from .rl import SamplingSection


class DistillSection(Section):
    teacher: str = Field("demo:teacher", description="the frozen teacher (hub id or folder); its tokenizer must have the student's vocabulary", json_schema_extra={"resolve": "model"})
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field("forward_kl", description="per-token divergence: forward_kl = KL(teacher || student) (Hinton's soft labels, mean-seeking), reverse_kl = KL(student || teacher) (mode-seeking, on-policy distillation), jsd = GKD's generalised Jensen-Shannon with jsd_beta")
    temperature: float = Field(1.0, gt=0, description="tau: both distributions are softmax(logits / tau); the soft loss is scaled by tau^2 so its gradient keeps its size")
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="jsd: the mixture weight beta of M = beta * teacher + (1 - beta) * student")
    hard_weight: float = Field(0.0, ge=0, le=1, description="w: on dataset batches the loss is (1 - w) * soft + w * NLL of the dataset's tokens (on-policy batches have no labels: soft only)")
    on_policy_fraction: float = Field(0.0, ge=0, le=1, description="lambda (GKD): share of steps whose responses the student samples itself (seeded per step); 0 = offline KD on the dataset's responses, 1 = fully on-policy")
    teacher_topk: int = Field(0, ge=0, description="offline only: > 0 runs the teacher once before training and caches its top-k logits per target token to the run folder (teacher_topk.pt); the loss is then the forward KL over those k tokens and the teacher is not kept in memory; 0 = full teacher logits every step")


class DistillConfig(RecipeConfig):
    """Knowledge distillation: a trained student matches a frozen teacher's token distributions (offline on a
    dataset's responses, or on-policy on its own samples)."""

    DEFAULTS = {"model": {"name_or_path": "demo:sft"}, "data": {"train": "demo:sft", "max_length": 512},
                "train": {"lr": 1e-4, "warmup_ratio": 0.05}, "run": {"output_dir": "runs/distill-{time}"}}
    REFUSED = {"data.packing": "teacher and student logits are compared position by position on padded rows",
               "data.pack_length": "teacher and student logits are compared position by position on padded rows",
               **{f"sampling.{k}": "the student's samples are scored by the teacher, not corrected by importance weights"
                  for k in ("correction", "correction_level", "correction_cap")}}
    INACTIVE = [*RecipeConfig.INACTIVE,
                ("distill.jsd_beta", lambda c: c.distill.loss == "jsd", "it is the JSD's mixture weight (distill.loss = jsd)"),
                ("distill.teacher_topk", lambda c: c.distill.on_policy_fraction == 0,
                 "the student's own samples need the teacher's full distribution at every step (on_policy_fraction = 0 for a cache)"),
                *((f"sampling.{k}", lambda c: c.distill.on_policy_fraction > 0,
                   "it shapes the student's training samples, and distill.on_policy_fraction = 0 draws none")
                  for k in ("temperature", "top_p", "top_k")),
                *((f"sampling.{k}", lambda c: not c.distill.teacher_topk,
                   "the eval's KL on the student's own answers needs the live teacher (distill.teacher_topk = 0)")
                  for k in ("max_new_tokens", "eval_temperature", "engine")),
                ("sampling.eval_samples", lambda c: c.sampling.eval_temperature > 0, "greedy eval answers are all the same (sampling.eval_temperature = 0)"),
                *((f"sampling.{k}", lambda c: c.sampling.engine != "hf", "it configures the vllm engine (sampling.engine = hf)")
                  for k in ("vllm_gpu_memory_utilization", "vllm_tensor_parallel_size", "vllm_sleep", "vllm_max_model_len"))]
    distill: DistillSection = Field(default_factory=DistillSection, description="the teacher and the divergence")
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="the student's own samples (on-policy steps) and the eval's answers")

    @model_validator(mode="after")
    def _distill_rules(self) -> DistillConfig:
        if self.distill.hard_weight and self.distill.on_policy_fraction == 1:
            raise ValueError("distill.hard_weight weighs the NLL of dataset responses, and with on_policy_fraction = 1 "
                             "every step trains on the student's own samples: set it to 0 or lower on_policy_fraction")
        if self.data.loss_on == "all" and self.distill.on_policy_fraction > 0:
            raise ValueError("data.loss_on = all leaves no prompt for the student to answer (distill.on_policy_fraction "
                             "> 0 samples after each trained block): use assistant or last_turn")
        return self
