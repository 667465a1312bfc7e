"""YAML -> typed, frozen, validated config objects.

Every recipe has one config class built from shared sections (``model``, ``data``, ``train``, ``run``). Each field
carries a one-line description (it is what ``alignkit <recipe> --help`` prints) and a default that works on the
demo. Errors name the file, the line when it can be found, the dotted key, the value and what was expected; an
unknown key suggests the closest valid one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key and why."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, objects are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelConfig(Section):
    name_or_path: str = Field("demo:base", description="Hugging Face hub id, local folder, or demo:base / demo:sft (the built-in tiny model)", json_schema_extra={"resolve": "model"})
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) to load")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights dtype; auto = bfloat16 on a GPU that supports it, else float32")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="where to run; auto picks cuda, then mps, then cpu")
    trust_remote_code: bool = Field(False, description="allow model code from the hub repository to run (off: only trusted architectures)")
    attn_implementation: str | None = Field(None, description="attention kernel passed to transformers (sdpa, eager, flash_attention_2); None = its default")
    adapter: Literal["none", "lora", "qlora"] = Field("none", description="none = full fine-tuning; lora = peft LoRA; qlora = LoRA on a 4-bit NF4 base (CUDA only)")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (update scale = alpha / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    lora_target_modules: list[str] | str = Field("all-linear", description="module names to adapt, or all-linear")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward to save memory (slower)")


class DataConfig(Section):
    train: str = Field("demo:sft", description="training data: .jsonl/.json/.parquet/.csv file, hub dataset name, or demo:<set>", json_schema_extra={"resolve": "data"})
    eval: str | None = Field(None, description="separate eval data; None = split eval_fraction off train", json_schema_extra={"resolve": "data"})
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="fraction of train held out for eval when eval is not given")
    format: str = Field("auto", description="record format (see README, Data formats); auto detects it from the first record")
    split: str = Field("train", description="split to read for hub datasets")
    subset: str | None = Field(None, description="configuration name for hub datasets")
    max_length: int = Field(512, ge=8, description="maximum tokens per example (prompt + response)")
    overlong: Literal["truncate", "drop"] = Field("truncate", description="what to do with longer examples: cut the end, or drop them (counts are reported)")
    loss_on: Literal["assistant", "last_turn"] = Field("assistant", description="train on every assistant turn, or only the last one")
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
    merge_adapter: bool = Field(False, description="also save the LoRA adapter merged into the base weights (final/merged)")
    progress: bool = Field(True, description="show a progress bar")


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
        *((f"model.{k}", lambda c: c.model.adapter != "none", "it needs model.adapter = lora or qlora")
          for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")),
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
        if self.model.adapter == "none" and self.run.merge_adapter:
            raise ValueError("run.merge_adapter needs model.adapter = lora or qlora")
        return self


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


C = TypeVar("C", bound=Section)


# ----------------------------------------------------------------------------------------------- loading
def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "data.packing=true"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f'override "{pair}" must look like key=value, e.g. train.lr=1e-4')
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f'override "{pair}": "{part}" is set twice')
        node[parts[-1]] = _scalar(raw)
    return out


def _scalar(raw: str) -> Any:
    """A YAML value; also reads 1e-4 as a float (YAML 1.1 wants 1.0e-4, which surprises everyone)."""
    if not raw.strip():
        return ""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            return value
    return value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Return base with extra merged in, recursively for nested dicts (extra wins)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """The mapping in a YAML file and its node tree (for line numbers in errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1} column {mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, data:, ...), got {type(data).__name__}")
    return data, node


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> C:
    """Build a validated ``cls`` from an optional YAML file, an optional base dict and ``key=value`` overrides."""
    data, node = read_yaml(path) if path is not None else ({}, None)
    data = deep_merge(base or {}, data)
    data = deep_merge(data, parse_overrides(overrides or []))
    return validate(cls, data, source=str(path) if path else "<overrides>", node=node)


def validate(cls: type[C], data: dict[str, Any], source: str = "<config>", node: yaml.Node | None = None) -> C:
    """Validate a plain dict into ``cls``; pydantic's errors become one readable line each.

    The dict is laid over the recipe's own defaults first, so setting one key of a section keeps the recipe's
    defaults for the others (DPO's ``data.train`` stays ``demo:prefs`` when only ``data.max_length`` is given).
    """
    if isinstance(data, dict):
        data = deep_merge(cls.model_validate({}).model_dump(exclude_defaults=False), data)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(cls, err, source, node) for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def _describe(cls: type[Section], err: dict[str, Any], source: str, node: yaml.Node | None) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) if loc else "(top level)"
    line = _line_of(node, loc)
    where = f"{source} line {line}" if line else source
    if err["type"] == "extra_forbidden":
        renamed = RENAMED.get(".".join(p for p in loc if not p.isdigit()))
        if renamed:
            return f'{where}: key "{key}" was renamed to "{renamed}"'
        valid = _keys_at(cls, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f' (did you mean "{".".join(loc[:-1] + (close[0],))}"?)' if close else f" (valid keys here: {', '.join(valid)})"
        return f'{where}: unknown key "{key}"{hint}'
    if err["type"] == "value_error" and not loc:
        return f"{where}: {err['msg'].removeprefix('Value error, ')}"
    return f'{where}: key "{key}" = {err.get("input")!r} is invalid: {err["msg"].removeprefix("Value error, ")}'


# old key -> its new name: a config written for an earlier version gets told, not "unknown key"
RENAMED = {"grpo.overlong_penalty": "grpo.missing_eos_penalty"}


def _keys_at(cls: type[Section], loc: tuple[str, ...]) -> list[str]:
    current: Any = cls
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def _line_of(node: yaml.Node | None, loc: tuple[str, ...]) -> int | None:
    """1-based line of the deepest key of ``loc`` found in the YAML node tree."""
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


def dump_config(cfg: Section) -> str:
    """The resolved config as YAML, every field present (what a run folder's config.yaml holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# A path field's kind ("model", "data", "builtin"), in its Field's json_schema_extra: what a resolver maps it to.
Lookup = Any  # Callable[[kind, value], str | dict]: a replacement value, or a dict of updates for the whole section


def resolve_paths(cfg: C, lookup: Lookup, skip: frozenset[str] = frozenset(), prefix: str = "") -> C:
    """``cfg`` with every path field passed through ``lookup(kind, value)`` (nested sections, lists of sections
    and name -> path dicts included). The walk lives here, beside the fields that declare their kind; what names
    mean (``demo:`` assets, ``${stage.output}`` references) is the caller's: ``pipeline.resolve`` is the one
    resolver the commands use, so models, data and rewards only ever see real paths. A lookup may answer a dict:
    updates for the section holding the field, applied to the field itself and to fields left unset (None): a
    demo reward becomes a Python function source keeping its label, say. ``skip``: dotted keys the config does
    not read (``unread_paths``), left as they are: resolving them could build a demo model nobody uses."""
    updates: dict[str, Any] = {}
    skip = skip | frozenset(getattr(cfg, "unread_paths", ()))
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if f"{prefix}{name}" in skip:
            continue
        kind = (field.json_schema_extra or {}).get("resolve") if isinstance(field.json_schema_extra, dict) else None
        new = _resolve_value(value, kind, lookup, skip, f"{prefix}{name}.")
        if isinstance(new, dict) and isinstance(value, str | None):  # section updates: the field, and unset ones
            updates.update({k: v for k, v in new.items() if k == name or getattr(cfg, k) is None})
        elif new is not value:
            updates[name] = new
    return cfg.model_copy(update=updates) if updates else cfg


def _resolve_value(value: Any, kind: str | None, lookup: Lookup, skip: frozenset[str], prefix: str) -> Any:
    if isinstance(value, Section):
        return resolve_paths(value, lookup, skip, prefix)
    if isinstance(value, list):
        items = [_resolve_value(v, kind, lookup, skip, prefix) for v in value]
        return items if any(a is not b for a, b in zip(items, value)) else value
    if kind is None:
        return value
    if isinstance(value, dict):
        return {k: lookup(kind, v) if isinstance(v, str) else v for k, v in value.items()}
    if isinstance(value, str):
        new = lookup(kind, value)
        return value if new == value else new
    return value


def describe_fields(cls: type[Section], prefix: str = "", defaults: Section | None = None) -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every leaf field, in declaration order: the --help table.

    Defaults come from a default instance, so a recipe's own section defaults (DPO's lr, say) are the ones shown.
    """
    defaults = defaults if defaults is not None else cls.model_validate({})
    rows = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(defaults, name)
        if isinstance(value, Section):
            rows.extend(describe_fields(type(value), key + ".", value))
        else:
            rows.append((key, value if isinstance(value, str) else repr(value), field.description or ""))
    return rows


# ------------------------------------------------------------------------------------------ preference stages
class DPOSection(Section):
    loss: Literal["sigmoid", "robust", "ipo", "hinge", "simpo", "orpo"] = Field("sigmoid", description="preference loss (see README table): sigmoid = DPO; robust / ipo / hinge / simpo / orpo")
    beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward (DPO beta; ORPO lambda; SimPO beta)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="assumed fraction of flipped labels (cDPO / robust DPO epsilon)")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target reward margin gamma")
    nll_weight: float | None = Field(None, ge=0, description="weight of an NLL term on the chosen response (RPO); None = 1 for orpo, 0 otherwise")
    reference: Literal["cached", "on_the_fly"] = Field("cached", description="reference log-probs computed once before training (cached with the run) or every step")
    reference_model: str | None = Field(None, description="reference model path; None = the starting policy (model.name_or_path; with LoRA, the base with the adapter off)", json_schema_extra={"resolve": "model"})

    @property
    def nll_weight_value(self) -> float:
        """The NLL weight in force: ORPO is defined with its NLL term; other losses add none unless asked."""
        if self.nll_weight is not None:
            return self.nll_weight
        return 1.0 if self.loss == "orpo" else 0.0


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
                  for k in ("reference", "reference_model"))]
    dpo: DPOSection = Field(default_factory=DPOSection, description="the preference loss and its reference")


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

    INACTIVE: ClassVar[list[tuple[str, Any, str]]] = [
        ("eval.min_accuracy", lambda c: c.eval.mode == "reward_model", "it is the reward-model verdict (eval.mode = reward_model)"),
        *((f"eval.{k}", lambda c: c.eval.mode == "policy", "it sets how policies answer and are compared (eval.mode = policy)")
          for k in ("max_new_tokens", "temperature", "seed", "group_by", "max_prompts", "samples", "baseline", "judge",
                    "pass_threshold", "reference", "perplexity_data", "bootstrap", "human_sheet", "ratings",
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
    if len(set(labels)) < len(labels):
        raise ValueError(f"rewards: two sources share a label ({', '.join(labels)}); give them distinct name:s")
    if e.ratings and e.ratings_key is None:
        raise ValueError("eval.ratings needs eval.ratings_key (the human_eval_key.json written with the sheet)")
    if e.human_sheet and len(cfg.policies) < 2:
        raise ValueError("eval.human_sheet compares models side by side: list two or more in models:")


# ------------------------------------------------------------------------------------------------ RL stages
class RewardSource(Section):
    """One reward source; a run sums them with their weights and logs each one separately."""

    name: str | None = Field(None, description="metric name for this source (default: derived from it)")
    fn: str | None = Field(None, description="Python reward function: module:function or path/to/file.py:function, called fn(prompts, completions, **fields) -> list[float]")
    builtin: Literal["regex", "length", "repetition", "demo_gold", "demo_format"] | None = Field(None, description="a built-in reward (args configure it)", json_schema_extra={"resolve": "builtin"})
    reward_model: str | None = Field(None, description="a reward model folder from alignkit rm (or demo:rm)", json_schema_extra={"resolve": "model"})
    judge: str | None = Field(None, description="a causal LM used as a judge (RLAIF): it is asked args.template and its first number is the score", json_schema_extra={"resolve": "model"})
    normalize: bool = Field(True, description="reward models: normalise with the mean / std stored beside the model")
    weight: float = Field(1.0, description="multiplier of this source in the total reward")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for fn, builtin and judge sources (a judge: template, scale, default, max_new_tokens)")
    revision: str | None = Field(None, description="reward_model / judge: hub revision to load")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="reward_model / judge: weights dtype")
    trust_remote_code: bool = Field(False, description="reward_model / judge: allow model code from the hub repository to run")

    @model_validator(mode="after")
    def _one_source(self) -> RewardSource:
        given = [k for k in ("fn", "builtin", "reward_model", "judge") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"a reward source needs exactly one of fn, builtin, reward_model, judge (got {given or 'none'})")
        models = self.reward_model or self.judge
        unused = {"args": bool(self.args) and bool(self.reward_model), "normalize": not self.normalize and not self.reward_model,
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
        return "reward_model" if self.reward_model else "judge"


class SamplingSection(Section):
    max_new_tokens: int = Field(64, ge=1, description="response token budget per rollout")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (log-probs are computed at the same temperature)")
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


K1_AS_LOSS = ("{key} = k1 cannot be a KL loss term: E[grad log pi] = 0, so its expected gradient is zero and the "
              "penalty would never pull toward the reference; use k3 (unbiased, non-negative) or k2")


class GRPOSection(Section):
    group_size: int = Field(8, ge=2, description="G, responses sampled per prompt")
    advantage: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp"] = Field("grpo", description="baseline: group mean/std (GRPO), group mean (Dr.GRPO), leave-one-out (RLOO), group mean / batch std (REINFORCE++)")
    ratio: Literal["token", "sequence", "cispo", "sapo", "gmpo"] = Field("token", description="the policy loss, by how it treats the importance ratio: token = PPO clip per token (GRPO), sequence = clip of the length-normalised sequence ratio (GSPO), cispo = clipped detached weight on REINFORCE, sapo = soft sigmoid gate, gmpo = geometric mean of clipped token ratios")
    clip_low: float | None = Field(None, ge=0, description="lower clip epsilon; None = 0.2 (token), 3e-4 (sequence), 1.0 = no lower bound (cispo), 0.4 in log space (gmpo)")
    clip_high: float | None = Field(None, ge=0, description="upper clip epsilon (DAPO clip-higher: larger than clip_low); None = 0.2 (token), 4e-4 (sequence), 0.28 (cispo), 0.4 in log space (gmpo)")
    sapo_tau_pos: float = Field(1.0, gt=0, description="sapo: gate temperature for positive advantages (larger = narrower trust region)")
    sapo_tau_neg: float = Field(1.05, gt=0, description="sapo: gate temperature for negative advantages")
    num_iterations: int = Field(1, ge=1, description="mu: policy updates per rollout batch; with 1, old log-probs are the current ones (no extra forward)")
    micro_batch_size: int = Field(16, ge=1, description="sequences per forward / backward on each process (memory knob; does not change the result)")
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] | None = Field(None, description="token_mean (DAPO), seq_mean_token_mean (GRPO paper), seq_mean_token_sum (Dr.GRPO: / max_new_tokens); None = seq_mean_token_mean for sequence ratios (GSPO's gradient), token_mean otherwise")
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


class GRPOConfig(RecipeConfig):
    """Group-relative policy optimisation (GRPO, GSPO, Dr.GRPO, DAPO options, RLOO, REINFORCE++) on prompt-only data."""

    DEFAULTS = _rl_defaults("grpo", batch_size=8)
    REFUSED = RL_REFUSED
    INACTIVE = [*RecipeConfig.INACTIVE, *_SAMPLING_INACTIVE,
                ("grpo.kl_estimator", lambda c: c.grpo.beta > 0, "the KL term is off (grpo.beta = 0)"),
                *((f"grpo.{k}", lambda c: c.grpo.ratio == "sapo", "it sets SAPO's gate (grpo.ratio = sapo)")
                  for k in ("sapo_tau_pos", "sapo_tau_neg")),
                *((f"grpo.{k}", lambda c: c.grpo.ratio != "sapo", "SAPO has no clip range (its gate: sapo_tau_pos / sapo_tau_neg)")
                  for k in ("clip_low", "clip_high"))]
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="rollout sampling")
    grpo: GRPOSection = Field(default_factory=GRPOSection, description="the algorithm")
    rewards: list[RewardSource] = Field(default_factory=_demo_rewards, description="reward sources, summed with their weights")
    eval_rewards: list[RewardSource] = Field(default_factory=list, description="extra sources scored at eval only, never optimised (e.g. a held-out judge: reward hacking shows as a gap)")


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
                *_SAMPLING_INACTIVE,
                ("ppo.vf_coef", lambda c: c.ppo.critic == "shared", "it weighs a shared critic's value loss"),
                ("ppo.critic_model", lambda c: c.ppo.critic == "separate", "a shared critic is the actor's backbone"),
                *((f"ppo.{k}", lambda c: c.ppo.adaptive_kl, "it tunes the adaptive KL controller (ppo.adaptive_kl)")
                  for k in ("kl_target", "kl_horizon"))]
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="rollout sampling")
    ppo: PPOSection = Field(default_factory=PPOSection, description="the algorithm")
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
        return self

    @property
    def critic_path(self) -> str:
        """The critic starts from ppo.critic_model, else the first reward model, else the policy (new value head)."""
        models = [s.reward_model for s in self.rewards if s.reward_model]
        return self.ppo.critic_model or (models[0] if models else self.model.name_or_path)


EvalConfig.model_rebuild()  # its rewards field names RewardSource, defined after it


# ------------------------------------------------------------------------------------------ on-policy data
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
