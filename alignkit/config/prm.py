"""The process reward model: its section and config."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import RecipeConfig, Section


class PRMSection(Section):
    separator: str = Field("\n", description="the text that ends every step when a solution's steps are laid out as one response; saved with the model (prm.json), so completions are split into steps at the same text when the model scores them")

    @field_validator("separator")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value:
            raise ValueError("prm.separator must be a non-empty string (e.g. \"\\n\"): it marks where each step ends")
        return value


class PRMConfig(RecipeConfig):
    """Process reward model: a per-step correctness classifier (a scalar head read at each step's end)."""

    DEFAULTS = {"model": {"name_or_path": "demo:sft"},
                "data": {"train": "demo:prm_steps", "eval": "demo:prm_eval", "max_length": 256},
                "train": {"lr": 1e-5, "warmup_ratio": 0.05}, "run": {"output_dir": "runs/prm-{time}"}}
    REFUSED = {"data.loss_on": "the head is read at each step's end; there is no token loss to place",
               **{f"run.{k}": "a process reward model scores steps, it does not generate any"
                  for k in ("sample_every", "num_samples", "sample_max_new_tokens")}}
    prm: PRMSection = Field(default_factory=PRMSection, description="how steps are laid out")

