"""``alignkit cai``: Constitutional AI's two data stages (critique -> revision SFT data; AI-feedback preference
pairs), a run that trains nothing."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from .base import DataConfig, ModelConfig, RunConfig, Section, refuse_unused


class CAISection(Section):
    stage: Literal["critique", "feedback"] = Field("critique", description="critique = stage 1 (SL-CAI): the model answers, a critic critiques the answer against a sampled principle and revises it, cai.revisions rounds; the final revisions are SFT data ({prompt, response}); feedback = stage 2 (RLAIF): the model samples two answers per prompt and a judge picks one under a sampled principle; preference pairs ({prompt, chosen, rejected}: dpo / rm data)")
    constitution: str = Field("demo:constitution", description="the constitution YAML: principles (name, critique, revision, compare) and optional templates (see alignkit/constitution.py); demo:constitution = the demo's", json_schema_extra={"resolve": "data"})
    critic: str | None = Field(None, description="the model that critiques, revises and judges (hub id, folder, demo:, ${stage.output}), asked through its chat template, greedy; None = the model itself. Real use needs a capable instruction-following model", json_schema_extra={"resolve": "model"})
    scripted: str | None = Field(None, description="a Python class standing in for the critic, module:Class or path/file.py:Class, built with no arguments: critique(prompt, response, principle) -> str, revise(prompt, response, critique, principle) -> str, compare(prompt, first, second, principle) -> 'A' | 'B' | other text; not with cai.critic")
    revisions: int = Field(1, ge=1, description="critique: critique-and-revise rounds per prompt, each against a freshly sampled principle (distinct ones while they last); the last revision is the SFT target")
    max_prompts: int = Field(0, ge=0, description="use the first N prompts of data.train; 0 = all")
    max_new_tokens: int = Field(64, ge=1, description="token budget of each answer the model samples and of each revision the critic writes")
    critic_max_new_tokens: int = Field(128, ge=1, description="token budget of each critique and verdict the critic model writes")
    temperature: float = Field(1.0, ge=0, description="the model's sampling temperature (critique: 0 = greedy first answers; feedback: > 0, two greedy answers would be the same); the critic is always greedy")
    seed: int = Field(0, description="sampling seed: answer k of prompt i samples from its own stream (as alignkit generate's), and the principle and A/B order of prompt i come from their own seeded streams, so a rerun writes the same file")
    batch_size: int = Field(32, ge=1, description="sequences per generate call (answers, and the critic model's critiques, revisions and verdicts)")


class CAIConfig(Section):
    """Constitutional AI data (Bai et al. 2022): revised answers as SFT data (stage 1) or AI-judged preference pairs
    (stage 2), written in alignkit's own formats (the input of ``alignkit sft`` / ``alignkit dpo``)."""

    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    REFUSED: ClassVar[dict[str, str]] = {
        **{f"data.{k}": "cai reads data.train's prompts (the first cai.max_prompts of them), none held out"
           for k in ("eval", "eval_fraction")},
        **{f"data.{k}": "cai trains nothing; prompts are tokenized afresh (it is quick)"
           for k in ("packing", "pack_length", "loss_on", "cache_tokenized")},
        "data.duplicates": "a repeated prompt is simply answered again; a repeated output record is dropped and counted",
        **{f"model.{k}": "cai samples from the model as saved; it trains nothing"
           for k in ("adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "gradient_checkpointing")},
        **{f"run.{k}": "cai writes its data file and summary only; it trains, evaluates and checkpoints nothing"
           for k in ("log_every", "eval_every", "save_every", "keep_checkpoints", "sample_every", "num_samples",
                     "sample_max_new_tokens", "report_to", "merge_adapter")},
    }
    INACTIVE: ClassVar[list[tuple[str, Any, str]]] = [
        ("cai.revisions", lambda c: c.cai.stage == "critique", "it counts critique rounds (cai.stage = critique)"),
        ("cai.critic_max_new_tokens", lambda c: c.cai.scripted is None,
         "cai.scripted writes the critiques and verdicts, no model does"),
    ]

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name_or_path="demo:sft"), description="the model that answers the prompts (and critiques, revises and judges unless cai.critic or cai.scripted is given)")
    data: DataConfig = Field(default_factory=lambda: DataConfig(train="demo:prompts"), description="prompt-only records (data.train is read)")
    run: RunConfig = Field(default_factory=lambda: RunConfig(output_dir="runs/cai-{time}"), description="where cai.jsonl and summary.json go")
    cai: CAISection = Field(default_factory=CAISection, description="the stage, the constitution and who critiques")

    @model_validator(mode="after")
    def _honest(self) -> CAIConfig:
        refuse_unused(self)
        c = self.cai
        if c.critic is not None and c.scripted is not None:
            raise ValueError("cai.critic and cai.scripted both name the critic: keep one (cai.scripted stands in "
                             "for a critic model)")
        if c.stage == "feedback" and c.temperature == 0:
            raise ValueError("cai.temperature = 0: cai.stage = feedback compares two sampled answers per prompt, "
                             "and two greedy answers are the same; use a temperature > 0 (1.0, say)")
        if c.scripted is not None and ":" not in c.scripted:
            raise ValueError(f'cai.scripted = "{c.scripted}": expected module:Class or path/to/file.py:Class')
        return self
