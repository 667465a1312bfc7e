"""The shared sections every recipe's config is built from (``model``, ``data``, ``train``, ``run``), the
RecipeConfig base that declares them once, and the rule that refuses a knob a recipe would ignore."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key and why."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, objects are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


LORA_FAMILY = ("lora", "qlora", "dora", "rslora")  # the adapters lora_r / lora_alpha / lora_dropout / lora_target_modules shape
PROMPT_LEARNING = ("prefix", "p_tuning_v2")  # a trained key/value prefix, passed by peft as a KV cache: nothing to merge
# adapter knob -> (the adapters it shapes, what setting it needs): "has no effect here" under any other adapter
ADAPTER_KNOBS = {
    **dict.fromkeys(("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"),
                    (LORA_FAMILY, "it needs model.adapter = lora or qlora (or dora, rslora)")),
    **dict.fromkeys(("ia3_target_modules", "ia3_feedforward_modules"), (("ia3",), "it needs model.adapter = ia3")),
    "num_virtual_tokens": (PROMPT_LEARNING, "it needs model.adapter = prefix or p_tuning_v2"),
}
ROPE_TYPES = ("linear", "dynamic", "yarn")


class ModelConfig(Section):
    name_or_path: str = Field("demo:base", description="Hugging Face hub id, local folder, or demo:base / demo:sft (the built-in tiny model)", json_schema_extra={"resolve": "model"})
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) to load")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights dtype; auto = bfloat16 on a GPU that supports it, else float32")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="where to run; auto picks cuda, then mps, then cpu")
    trust_remote_code: bool = Field(False, description="allow model code from the hub repository to run (off: only trusted architectures)")
    chat_template: Literal["auto", "none"] = Field("auto", description="auto = the tokenizer's own chat template, else alignkit's built-in one; none = no template (completion models): prompt and response strings are concatenated as they are, each response followed by the tokenizer's own EOS, the tokenizer otherwise untouched")
    attn_implementation: str | None = Field(None, description="attention kernel passed to transformers: sdpa, eager, flex_attention, flash_attention_2 (flash-attn and CUDA), a hub kernel org/repo (the kernels package); checked against what is installed when the model loads; None = transformers' default (sdpa)")
    rope_scaling: dict[str, Any] | None = Field(None, description="stretch RoPE to a longer context than the model was trained at: {type: linear | dynamic | yarn, factor: > 1 (new context / trained context), original_max_position_embeddings: yarn only, the trained context (default the model's max_position_embeddings)}; set on the model config at load (transformers' rope_parameters) and saved with it; None = the model's own")
    adapter: Literal["none", "lora", "qlora", "dora", "rslora", "ia3", "prefix", "p_tuning_v2"] = Field("none", description="none = full fine-tuning; lora = peft LoRA; qlora = LoRA on a 4-bit NF4 base (CUDA only); dora = weight-decomposed LoRA; rslora = LoRA scaled alpha / sqrt(r); ia3 = learned rescaling vectors ((IA)^3); prefix = prefix tuning (a key/value prefix in every layer, trained through an MLP); p_tuning_v2 = deep prompt tuning (the same prefix trained directly). prefix / p_tuning_v2 cannot be merged, packed or gradient-checkpointed")
    lora_r: int = Field(16, ge=1, description="LoRA rank (lora, qlora, dora, rslora)")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (update scale = alpha / r; rslora: alpha / sqrt(r))")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    lora_target_modules: list[str] | str = Field("all-linear", description="module names to adapt, or all-linear")
    ia3_target_modules: list[str] | None = Field(None, description="ia3: modules whose activations get a learned scale; None = peft's default for the architecture (Llama: k_proj, v_proj, down_proj)")
    ia3_feedforward_modules: list[str] | None = Field(None, description="ia3: which of ia3_target_modules are feed-forward layers (their input is scaled, not their output); None = peft's default (Llama: down_proj)")
    num_virtual_tokens: int = Field(20, ge=1, description="prefix / p_tuning_v2: positions of the trained key/value prefix in every layer (virtual tokens)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward to save memory (slower)")
    router_aux_loss_coef: float | None = Field(None, ge=0, description="mixture-of-experts models (sft, dpo): weight of the router load-balancing loss added to the objective (logged as moe/aux_loss); None = the model config's own when its output_router_logits is on, else off; 0 = off; a dense model or another recipe refuses a value")
    freeze: list[str] = Field(default_factory=list, description="full fine-tuning: parameters kept fixed; router = every MoE router (gate), experts = every routed expert, experts.<i> = expert i of every MoE block, anything else = a glob over parameter names (e.g. model.layers.0.*); each entry must match something")

    @field_validator("rope_scaling")
    @classmethod
    def _rope_scaling(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """One line naming what is wrong; the mapping onto transformers' names happens at load."""
        if value is None:
            return None
        allowed = ("type", "factor", "original_max_position_embeddings")
        extra = [k for k in value if k not in allowed]
        if extra:
            raise ValueError(f"unknown key {extra[0]!r} (expected {', '.join(allowed)})")
        if value.get("type") not in ROPE_TYPES:
            raise ValueError(f"type {value.get('type')!r}: expected one of {', '.join(ROPE_TYPES)}")
        factor = value.get("factor")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
            raise ValueError(f"factor {factor!r}: expected a number > 1 (new context / trained context)")
        original = value.get("original_max_position_embeddings")
        if original is not None and (value["type"] != "yarn" or isinstance(original, bool)
                                     or not isinstance(original, int) or original < 1):
            raise ValueError(f"original_max_position_embeddings {original!r}: a positive integer, and only with "
                             "type yarn")
        return value

    @field_validator("freeze")
    @classmethod
    def _freeze_entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry.startswith("experts.") and not entry.removeprefix("experts.").isdigit():
                raise ValueError(f"{entry!r}: expected experts.<i> with i an expert number (e.g. experts.0)")
        return value

    def stray_adapter_knob(self) -> str | None:
        """The first adapter knob set for an adapter that does not use it, as "key = value has no effect here: ...";
        read at every load, so configs with no INACTIVE rules for them (eval, generate) refuse them too."""
        for key, (adapters, needs) in ADAPTER_KNOBS.items():
            value = getattr(self, key)
            if self.adapter not in adapters and value != type(self).model_fields[key].get_default():
                return f"model.{key} = {value!r} has no effect here: {needs}"
        return None


class DataConfig(Section):
    train: str = Field("demo:sft", description="training data: .jsonl/.json/.parquet/.csv file, hub dataset name, or demo:<set>", json_schema_extra={"resolve": "data"})
    eval: str | None = Field(None, description="separate eval data; None = split eval_fraction off train", json_schema_extra={"resolve": "data"})
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="fraction of train held out for eval when eval is not given")
    format: str = Field("auto", description="record format (see README, Data formats); auto detects it from the first record")
    split: str = Field("train", description="split to read for hub datasets")
    subset: str | None = Field(None, description="configuration name for hub datasets")
    max_length: int = Field(512, ge=8, description="maximum tokens per example (prompt + response)")
    overlong: Literal["truncate", "drop"] = Field("truncate", description="what to do with longer examples: cut the end, or drop them (counts are reported); text records are never cut: they are split into max_length chunks")
    loss_on: Literal["assistant", "last_turn", "all"] = Field("assistant", description="train on every assistant turn, only the last one, or every token (prompts and template markup too); text records always train every token")
    packing: bool = Field(False, description="lay each batch's examples back to back in rows of data.pack_length tokens instead of padding each (no attention across examples; train.batch_size still counts examples)")
    pack_length: int | None = Field(None, ge=8, description="tokens per packed row; None = data.max_length")
    cache_tokenized: bool = Field(True, description="reuse tokenized examples from earlier runs (in $ALIGNKIT_CACHE_DIR/tokenized, default ~/.cache/alignkit) when the examples, tokenizer, chat template and limits are the same")
    duplicates: Literal["error", "keep"] = Field("error", description="a record repeated verbatim: an error naming both lines, or keep it (it then weighs double); demo: sets keep theirs (repeats by design)")

    @property
    def row_length(self) -> int | None:
        """Tokens per packed row when packing is on (pack_length, else max_length); None: padded batches."""
        return (self.pack_length or self.max_length) if self.packing else None


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0, description="passes over the training data (ignored when max_steps > 0)")
    max_steps: int = Field(0, ge=0, description="optimizer steps to run; 0 = derive from epochs")
    batch_size: int = Field(8, ge=1, description="examples per micro-batch, over all processes (global: each process takes batch_size / num_processes, which must divide); RL: prompts per rollout step")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    lr: float = Field(2e-5, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW beta1, beta2")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="fraction of steps with linear warm-up (used when warmup_steps = 0)")
    warmup_steps: int = Field(0, ge=0, description="warm-up steps; overrides warmup_ratio when > 0")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="learning-rate decay after warm-up")
    max_grad_norm: float = Field(1.0, ge=0, description="clip the global gradient norm to this; 0 = no clipping")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="autocast on GPU; auto = bf16 when supported, no on CPU")
    seed: int = Field(0, description="seed for data order, initialisation and sampling")
    on_nonfinite: Literal["stop", "skip"] = Field("stop", description="a NaN / inf loss or gradient norm: stop the run naming the step and the quantity (the last checkpoint stays), or skip that optimizer step and go on (counted in nonfinite/skipped_steps)")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare ``no`` as false: take it as the documented "no" (in files and in overrides)."""
        return "no" if value is False else value


class RunConfig(Section):
    output_dir: str = Field("runs/{recipe}-{time}", description="run folder; {recipe} and {time} are filled in")
    log_every: int = Field(1, ge=1, description="log metrics every N optimizer steps")
    eval_every: int = Field(0, ge=0, description="evaluate every N steps; 0 = only at the end")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps; 0 = only at the end")
    keep_checkpoints: int = Field(2, ge=1, description="how many step checkpoints to keep (oldest deleted first)")
    sample_every: int = Field(0, ge=0, description="write sample generations every N steps, and at the end; 0 = only at the end (RL: the step's rollouts)")
    num_samples: int = Field(4, ge=0, description="eval prompts to generate for in each sample round")
    sample_max_new_tokens: int = Field(64, ge=1, description="token budget of each sample generation")
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 = torch's default")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list, description="extra trackers, when installed")
    merge_adapter: bool = Field(False, description="also save the adapter merged into the base weights (final/merged); LoRA family and ia3 (a prefix has no weight to merge into)")
    progress: bool = Field(True, description="show a progress bar")


class ReplaySection(Section):
    """Earlier data trained alongside a new objective, against forgetting (replay; PPO-ptx in InstructGPT)."""

    data: str | None = Field(None, description="SFT or plain-text data to replay (.jsonl / .txt / ..., a hub dataset, or demo:<set>); None = no replay", json_schema_extra={"resolve": "data"})
    ratio: float = Field(0.25, gt=0, description="replay examples per training example: SFT mixes that many into its data; DPO / PPO / GRPO add that many per pair / prompt of each optimizer step")
    coef: float = Field(1.0, gt=0, description="DPO / PPO / GRPO: weight of the replay examples' mean token NLL in the loss (PPO-ptx's gamma)")


REPLAY_INACTIVE = [(f"replay.{k}", lambda c: c.replay.data is not None, "it needs replay.data") for k in ("ratio", "coef")]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Return base with extra merged in, recursively for nested dicts (extra wins)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class RecipeConfig(Section):
    """The four sections every recipe shares, declared once. A recipe subclass adds its own section(s) and says
    two things as data: ``DEFAULTS``, its own defaults for the shared sections (laid under whatever the user
    gives), and ``REFUSED``, the shared fields it does not use, each with the reason. A refused field set to
    anything but its default is an error naming the key and the reason: a knob that does nothing is never
    accepted in silence."""

    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    REFUSED: ClassVar[dict[str, str]] = {}
    # fields that act only under another setting: (key, does it act here?, what it needs); set otherwise, an error
    INACTIVE: ClassVar[list[tuple[str, Any, str]]] = [
        *((f"model.{k}", lambda c, adapters=adapters: c.model.adapter in adapters, needs)
          for k, (adapters, needs) in ADAPTER_KNOBS.items()),
        ("model.freeze", lambda c: c.model.adapter == "none", "an adapter already keeps every base weight fixed (it "
         "acts in full fine-tuning, model.adapter = none)"),
        ("train.epochs", lambda c: c.train.max_steps == 0, "train.max_steps > 0 sets the run's length"),
        ("train.warmup_ratio", lambda c: c.train.warmup_steps == 0, "train.warmup_steps > 0 overrides it"),
        ("data.eval_fraction", lambda c: c.data.eval is None, "data.eval is given, so nothing is split off"),
        ("data.pack_length", lambda c: c.data.packing, "it needs data.packing = true"),
    ]

    model: ModelConfig = Field(default_factory=ModelConfig, description="the model to train")
    data: DataConfig = Field(default_factory=DataConfig, description="training and eval data")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation")
    run: RunConfig = Field(default_factory=RunConfig, description="outputs, logging, checkpoints")

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # a section passed as an object keeps only what was set on it: the recipe's defaults fill the rest
        return deep_merge(cls.DEFAULTS, {k: v.model_dump(exclude_unset=True) if isinstance(v, Section) else v
                                         for k, v in data.items()})

    @model_validator(mode="after")
    def _honest(self) -> RecipeConfig:
        refuse_unused(self)
        problem = adapter_conflict(self)
        if problem:
            raise ValueError(problem)
        return self


def adapter_conflict(cfg: RecipeConfig) -> str | None:
    """What the chosen adapter (or model.freeze) cannot do under the rest of the config, in one line; else None."""
    model, adapter = cfg.model, cfg.model.adapter
    if cfg.run.merge_adapter and adapter == "none":
        return "run.merge_adapter needs model.adapter = lora, qlora, dora, rslora or ia3 (there is no adapter to merge)"
    if adapter in PROMPT_LEARNING:
        prefix = f"model.adapter = {adapter} trains a key/value prefix that peft passes as a cache"
        if cfg.run.merge_adapter:
            return f"run.merge_adapter: {prefix}; there is no weight to merge it into (load final/ with peft)"
        if cfg.data.packing:
            return (f"data.packing: {prefix}, and with a cache transformers no longer reads packed examples' "
                    "boundaries from the restarting positions: they would attend to each other (use padded batches)")
        if model.gradient_checkpointing:
            return f"model.gradient_checkpointing: peft refuses it with model.adapter = {adapter}"
        sampling = getattr(cfg, "sampling", None)
        if sampling is not None and sampling.engine == "vllm":
            return f"sampling.engine = vllm serves merged weights, and model.adapter = {adapter} has none (use hf)"
    if model.ia3_feedforward_modules is not None and not set(model.ia3_feedforward_modules) <= set(model.ia3_target_modules or ()):
        return ("model.ia3_feedforward_modules must be a subset of model.ia3_target_modules (set both: peft's "
                "defaults go together)")
    if any(e.startswith("experts.") for e in model.freeze) and cfg.train.weight_decay:
        return (f"model.freeze = {model.freeze}: one expert is a slice of the fused expert tensors, kept fixed by a "
                "zero gradient, but AdamW's decoupled weight decay would still shrink it: set train.weight_decay = 0")
    return None


def refuse_unused(cfg: Section) -> None:
    """Raise when a field the recipe does not use (``REFUSED``), or one that does nothing under the rest of the
    config (``INACTIVE``), is set to anything but the recipe's default."""
    for key, why in getattr(cfg, "REFUSED", {}).items():
        value = _value_at(cfg, key)
        if value != _default_at(cfg, key):
            raise ValueError(f"{key} = {value!r} is not used by this recipe: {why}")
    for key, acts, needs in getattr(cfg, "INACTIVE", []):
        value = _value_at(cfg, key)
        if value != _default_at(cfg, key) and not acts(cfg):
            raise ValueError(f"{key} = {value!r} has no effect here: {needs}")


def _value_at(cfg: Section, key: str) -> Any:
    if "." not in key:  # a top-level field (eval's models:)
        return getattr(cfg, key)
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _default_at(cfg: Section, key: str) -> Any:
    """The recipe's default of a dotted key: its DEFAULTS entry, else the section class's own default."""
    if "." not in key:
        return type(cfg).model_fields[key].get_default(call_default_factory=True)
    section, name = key.split(".")
    given = getattr(cfg, "DEFAULTS", {}).get(section, {})
    if name in given:
        return given[name]
    return type(getattr(cfg, section)).model_fields[name].get_default(call_default_factory=True)


class SFTConfig(RecipeConfig):
    """Supervised fine-tuning: next-token loss on the response tokens."""

    REFUSED = {"replay.coef": "SFT mixes the replay examples into its own data: each token weighs the same"}
    INACTIVE = [*RecipeConfig.INACTIVE, *REPLAY_INACTIVE[:1]]
    replay: ReplaySection = Field(default_factory=ReplaySection, description="earlier data mixed into the training data (forgetting)")


C = TypeVar("C", bound=Section)
