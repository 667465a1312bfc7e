"""LLaMA-Factory's keys -> alignkit's config keys, group by group (model, method, training, outputs, data limits,
DPO, KTO, PPO). Names and defaults are LLaMA-Factory's hparams (model_args.py, data_args.py, finetuning_args.py,
generating_args.py) and transformers' TrainingArguments.
`Mapper` holds the alignkit sections being built and the account of every key; ``map_shared_keys`` maps the keys
every stage shares. The stages' own keys are ``llamafactory_stages``', the datasets ``llamafactory_data``'s."""

from __future__ import annotations

from typing import Any

from .base import ConfigError

# LLaMA-Factory's defaults (or transformers') that differ from alignkit's and change the result: a file that
# leaves the key out trains with these, so they are written out.
LF_DEFAULTS: dict[str, Any] = {
    "finetuning_type": "lora", "lora_rank": 8, "lora_target": "all", "disable_gradient_checkpointing": False,
    "learning_rate": 5e-5, "num_train_epochs": 3.0, "per_device_train_batch_size": 8, "lr_scheduler_type": "linear",
    "warmup_ratio": 0.0, "seed": 42, "cutoff_len": 2048,
    "ppo_target": 6.0, "temperature": 0.95, "top_p": 0.7, "top_k": 50, "max_new_tokens": 1024,
}
# Keys LLaMA-Factory reads in some stages only; elsewhere they change nothing.
_ONLY: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("pref_beta", "pref_ftx"), ("dpo", "kto")),
    **dict.fromkeys(("pref_loss", "dpo_label_smoothing", "simpo_gamma", "pref_bco_weight", "ld_alpha"), ("dpo",)),
    **dict.fromkeys(("kto_chosen_weight", "kto_rejected_weight", "kto_undesirable_weight"), ("kto",)),
    **dict.fromkeys(("ref_model", "ref_model_adapters", "ref_model_quantization_bit"), ("dpo", "kto", "ppo")),
    **dict.fromkeys(("reward_model", "reward_model_type", "reward_model_adapters", "reward_model_quantization_bit",
                     "ppo_buffer_size", "ppo_epochs", "ppo_score_norm", "ppo_target", "ppo_whiten_rewards",
                     "do_sample", "temperature", "top_p", "top_k", "max_new_tokens", "num_beams",
                     "repetition_penalty", "length_penalty", "max_length"), ("ppo",)),
    **dict.fromkeys(("train_on_prompt", "mask_history"), ("sft",)),
    **dict.fromkeys(("packing", "neat_packing"), ("pt", "sft")),
}
_SPEED = "speed or memory of LLaMA-Factory's own pipeline only"
_NO_EFFECT: dict[str, str] = {
    **dict.fromkeys(("ddp_timeout", "dataloader_num_workers", "preprocessing_num_workers", "preprocessing_batch_size",
                     "dataloader_pin_memory", "use_unsloth", "use_unsloth_gc", "enable_liger_kernel", "tf32",
                     "low_cpu_mem_usage", "use_fast_tokenizer", "streaming", "buffer_size",
                     "per_device_eval_batch_size", "ddp_find_unused_parameters", "upcast_layernorm"), _SPEED),
    **dict.fromkeys(("overwrite_cache", "tokenized_path", "cache_dir", "data_shared_file_system"),
                    "caches: alignkit caches tokenized data itself (data.cache_tokenized)"),
    **dict.fromkeys(("plot_loss", "logging_dir", "save_only_model", "run_name", "include_num_input_tokens_seen",
                     "include_effective_tokens_per_second", "include_tokens_per_second", "disable_tqdm",
                     "log_level", "save_safetensors", "print_param_status", "hf_hub_token"),
                    "output housekeeping: alignkit always writes training_curves.png, report.html and safetensors"),
    "overwrite_output_dir": "alignkit writes into run.output_dir as it is (--resume continues a run there)",
    "create_new_adapter": "alignkit always trains a new adapter",
    "mix_strategy": "one dataset: nothing to mix", "interleave_probs": "one dataset: nothing to mix",
    "media_dir": "text only", "eval_num_beams": "predictions only", "ignore_pad_token_for_loss": "alignkit never "
    "trains on padding",
}
_ATTENTION = {"auto": None, "disabled": "eager", "off": "eager", "eager": "eager", "sdpa": "sdpa",
              "fa2": "flash_attention_2", "fa3": "flash_attention_3", "true": "flash_attention_2", "false": None}
_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant_with_warmup": "constant", "constant": "constant"}
_LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target")
_LORA_EXTRAS = {"additional_target": "modules trained in full beside the adapter (peft modules_to_save)",
                "use_rslora": "rank-stabilised LoRA scaling", "use_dora": "DoRA", "pissa_init": "PiSSA initialisation",
                "loraplus_lr_ratio": "LoRA+ learning rates"}
_LORA_VARIANTS = {"use_dora": "dora", "use_rslora": "rslora"}  # LoRA flags that are an alignkit model.adapter


class Mapper:
    """The alignkit sections being built, and an account of every key of the LLaMA-Factory file."""

    def __init__(self, raw: dict[str, Any], source: str, lines: dict[str, int] | None = None):
        self.raw, self.source, self.lines = raw, source, lines or {}
        self.config: dict[str, Any] = {"model": {}, "data": {}, "train": {}, "run": {}}
        self.unmapped: list[tuple[str, str]] = []
        self.notes: list[tuple[str, str]] = []
        self.ignored: list[tuple[str, str]] = []
        self.blocking: dict[str, str] = {}
        self.defaulted: list[str] = []
        self.handled: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, fallback: Any = None) -> Any:
        """The file's value, else LLaMA-Factory's default (noted as written out), else ``fallback``."""
        if key in self.raw:
            self.handled.add(key)
            return self.raw[key]
        if key in LF_DEFAULTS:
            value = LF_DEFAULTS[key]
            self.defaulted.append(f"{key}: {str(value).lower() if isinstance(value, bool) else value}")
            return LF_DEFAULTS[key]
        return fallback

    def number(self, key: str, kind: type = float, fallback: Any = None) -> Any:
        value = self.get(key, fallback)
        if value is None:
            return None
        try:
            number = float(value)  # YAML 1.1 reads 1e-4 as a string; LLaMA-Factory's examples write 1.0e-4
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, bool) or (kind is int and number != int(number)):
            raise ConfigError(f"{self._where(key)}: {key} = {value!r} is not {'a whole number' if kind is int else 'a number'}")
        return int(number) if kind is int else number

    def flag(self, key: str, fallback: bool = False) -> bool:
        value = self.get(key, fallback)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if value is None or isinstance(value, bool):
            return bool(value)
        raise ConfigError(f"{self._where(key)}: {key} = {value!r} is not true or false")

    def _where(self, key: str) -> str:
        return f"{self.source} line {self.lines[key]}" if key in self.lines else self.source

    def set(self, dotted: str, value: Any) -> None:
        section, _, name = dotted.partition(".")
        if not name:
            self.config[section] = value
        else:
            self.config.setdefault(section, {})[name] = value

    def note(self, key: str, text: str) -> None:
        self.notes.append((key, text))

    def drop(self, key: str, why: str, track: bool = True) -> None:
        self.unmapped.append((key, why))
        if track:
            self.handled.add(key)

    def block(self, key: str, why: str, fix: str = "") -> None:
        self.drop(key, why)
        self.blocking[key] = fix

    def ignore(self, key: str, why: str) -> None:
        self.ignored.append((key, why))
        self.handled.add(key)

    def finish(self) -> None:
        """Every key of the file is accounted for: one not handled has no alignkit equivalent."""
        for key in self.raw:
            if key not in self.handled:
                self.unmapped.append((key, "no alignkit equivalent"))
        if self.defaulted:
            self.notes.insert(0, ("(left out)", "LLaMA-Factory's defaults, written out: " + ", ".join(self.defaulted)))

    def sections(self) -> dict[str, Any]:
        """The alignkit config: the sections that were set, in the order model, data, train, run, the recipe's."""
        return {k: v for k, v in self.config.items() if v not in ({}, None)}


def map_shared_keys(m: Mapper, stage: str) -> None:
    """The keys every stage shares (model, method, training, outputs, data limits); another stage's keys and keys
    without effect are set aside first."""
    m.get("stage")
    for key in m.raw:
        if key in _ONLY and stage not in _ONLY[key]:
            m.ignore(key, f"LLaMA-Factory reads it in stage {' / '.join(_ONLY[key])} only")
        elif key in _NO_EFFECT:
            m.ignore(key, _NO_EFFECT[key])
    for group in (_model, _method, _training, _outputs, _data_limits):
        group(m, stage)


def _model(m: Mapper, stage: str) -> None:
    m.set("model.name_or_path", str(m.get("model_name_or_path")))
    adapters = [p.strip() for p in str(m.get("adapter_name_or_path") or "").split(",") if p.strip()]
    if len(adapters) == 1:
        m.set("model.name_or_path", adapters[0])
        m.note("adapter_name_or_path", "alignkit starts from the adapter merged into its base (named in its "
               "adapter_config.json) and trains a new adapter on top; LLaMA-Factory trains the same adapter on")
    elif adapters:
        m.block("adapter_name_or_path", "several adapters stacked: merge them into one model first",
                "model.name_or_path")
    if m.has("trust_remote_code"):
        m.set("model.trust_remote_code", m.flag("trust_remote_code"))
    if str(m.get("model_revision") or "main") != "main":
        m.set("model.revision", str(m.raw["model_revision"]))
    if m.has("flash_attn"):
        value = str(m.get("flash_attn")).lower()
        if value not in _ATTENTION:
            m.drop("flash_attn", f"{value}: no such attention setting in alignkit (sdpa, eager, flash_attention_2)")
        elif _ATTENTION[value]:
            m.set("model.attn_implementation", _ATTENTION[value])
    if m.get("rope_scaling") is not None:
        m.drop("rope_scaling", "LLaMA-Factory derives the factor from the model's context length when it loads; "
               "set model.rope_scaling={type: ..., factor: ...} yourself")
    # LLaMA-Factory checkpoints activations unless told not to: the same memory footprint, the same result
    m.set("model.gradient_checkpointing", not m.flag("disable_gradient_checkpointing"))
    if m.has("template"):
        if stage == "pt":
            m.ignore("template", "pre-training text is tokenized without a template")
        else:
            m.note("template", f"{m.get('template')}: alignkit renders turns with the tokenizer's own chat template "
                   "(its built-in one when there is none), which for an instruct model is normally this one")


def _method(m: Mapper, stage: str) -> None:
    """finetuning_type, LoRA and quantization."""
    kind = str(m.get("finetuning_type"))
    if kind == "lora":
        _lora(m)
        return
    if kind == "full":
        m.set("model.adapter", "none")
        for key in (*_LORA_KEYS, *_LORA_EXTRAS):
            if m.has(key):
                m.ignore(key, "a LoRA setting, and finetuning_type is full")
    else:
        m.block("finetuning_type", f"{kind}: alignkit trains every weight (model.adapter: none) or a LoRA adapter "
                "(lora / qlora), not a frozen subset", "model.adapter")
    if m.get("quantization_bit") is not None:
        m.drop("quantization_bit", "alignkit quantizes the base only under LoRA (model.adapter: qlora)")


def _lora(m: Mapper) -> None:
    adapter = "lora"
    bits = m.get("quantization_bit")
    if bits is not None:
        method, kind = str(m.get("quantization_method") or "bnb"), str(m.get("quantization_type") or "nf4")
        if str(bits) == "4" and method == "bnb" and kind == "nf4":
            adapter = "qlora"
            if m.has("double_quantization") and not m.flag("double_quantization"):
                m.note("double_quantization", "off in the file; alignkit's QLoRA always quantizes the constants too")
        else:
            m.drop("quantization_bit", f"{bits}-bit {method} {kind}: alignkit's one quantized base is 4-bit NF4 "
                   "(bitsandbytes, model.adapter: qlora); the base stays in 16 bits")
    rank = m.number("lora_rank", int)
    alpha = m.number("lora_alpha")
    if alpha is None:
        alpha = 2.0 * rank
        m.defaulted.append(f"lora_alpha: 2 x lora_rank = {alpha:g}")
    m.set("model.adapter", adapter)
    m.set("model.lora_r", rank)
    m.set("model.lora_alpha", float(alpha))
    if m.has("lora_dropout"):
        m.set("model.lora_dropout", m.number("lora_dropout"))
    target = m.get("lora_target")
    targets = target if isinstance(target, list) else [t.strip() for t in str(target).split(",") if t.strip()]
    m.set("model.lora_target_modules", "all-linear" if targets == ["all"] else targets)
    variants = [key for key in _LORA_VARIANTS if m.get(key)]
    if len(variants) == 1 and adapter == "lora":
        m.set("model.adapter", _LORA_VARIANTS[variants[0]])
    for key, what in _LORA_EXTRAS.items():
        if m.get(key) and key in variants and len(variants) == 1 and adapter == "lora":
            continue  # mapped: model.adapter above
        if m.get(key):
            why = ("only one of use_dora / use_rslora, and not with quantization" if key in _LORA_VARIANTS
                   else "not in alignkit's LoRA")
            m.drop(key, f"{what}: {why}")
        elif m.has(key):
            m.ignore(key, "off")


def _training(m: Mapper, stage: str) -> None:
    if stage != "ppo":  # PPO's batch shapes are its own (llamafactory_stages)
        batch = m.number("per_device_train_batch_size", int)
        m.set("train.batch_size", batch)
        accum = m.number("gradient_accumulation_steps", int, 1)
        m.set("train.grad_accum", accum)
        m.note("per_device_train_batch_size", f"{batch} per GPU; alignkit's train.batch_size counts examples over "
               "all processes: multiply it by the number of GPUs when running on several")
    m.set("train.lr", m.number("learning_rate"))
    max_steps = m.number("max_steps", int, -1)
    if max_steps > 0:
        m.set("train.max_steps", max_steps)
        if m.has("num_train_epochs"):
            m.ignore("num_train_epochs", "max_steps > 0 sets the run's length")
    else:
        m.set("train.epochs", m.number("num_train_epochs"))
        if stage == "ppo":
            m.set("train.max_steps", 0)  # alignkit's PPO runs 100 steps by default; LLaMA-Factory's, epochs
    _schedule(m)
    for key, target in (("weight_decay", "train.weight_decay"), ("max_grad_norm", "train.max_grad_norm")):
        if m.has(key):
            m.set(target, m.number(key))
    m.set("train.seed", m.number("seed", int))
    if m.has("adam_beta1") or m.has("adam_beta2"):
        m.set("train.adam_betas", [m.number("adam_beta1", float, 0.9), m.number("adam_beta2", float, 0.999)])
    if m.number("adam_epsilon", float, 1e-8) != 1e-8:
        m.drop("adam_epsilon", "alignkit's AdamW uses epsilon 1e-8")
    if str(m.get("optim") or "adamw_torch") not in ("adamw_torch", "adamw_torch_fused", "adamw_hf"):
        m.drop("optim", f"{m.raw['optim']}: alignkit's optimizer is AdamW")
    _precision(m, stage)


def _schedule(m: Mapper) -> None:
    name = str(m.get("lr_scheduler_type"))
    if name == "constant":  # transformers' constant schedule has no warm-up; alignkit's constant has one
        m.set("train.schedule", "constant")
        m.set("train.warmup_ratio", 0.0)
        for key in ("warmup_ratio", "warmup_steps"):
            if m.has(key):
                m.ignore(key, "lr_scheduler_type constant has no warm-up (constant_with_warmup has)")
        return
    if name in _SCHEDULES:
        m.set("train.schedule", _SCHEDULES[name])
    else:
        m.drop("lr_scheduler_type", f"{name}: alignkit's schedules are cosine, linear and constant, after a linear "
               "warm-up (cosine is used)")
    if m.has("lr_scheduler_kwargs"):
        m.drop("lr_scheduler_kwargs", "alignkit's schedules decay to 0 and take no arguments")
    steps = m.number("warmup_steps", float, 0)
    if steps >= 1:
        m.set("train.warmup_steps", int(steps))
        if m.has("warmup_ratio"):
            m.ignore("warmup_ratio", "warmup_steps overrides it")
    else:  # transformers reads a warmup_steps below 1 as a ratio
        m.set("train.warmup_ratio", steps or m.number("warmup_ratio"))


def _precision(m: Mapper, stage: str) -> None:
    bf16, fp16, pure = m.flag("bf16"), m.flag("fp16"), m.flag("pure_bf16")
    if pure:
        m.set("model.dtype", "bfloat16")
        m.note("pure_bf16", "the weights are held in bfloat16 (model.dtype), the optimizer states too")
    if bf16 or pure:
        precision = "auto"
        m.note("bf16", "train.mixed_precision: auto = bf16 autocast on a GPU that supports it, as asked; none on "
               "CPU and fp16 on an older GPU (where LLaMA-Factory would refuse bf16)")
    elif fp16 and stage == "ppo":
        precision = "no"
        m.drop("fp16", "alignkit's PPO refuses fp16 (actor and critic would share one loss scaler); use bf16")
    else:
        precision = "fp16" if fp16 else "no"
        if not fp16:
            m.note("bf16 / fp16", "neither is set: LLaMA-Factory trains without autocast, so train.mixed_precision: "
                   "no")
    m.set("train.mixed_precision", precision)


def _outputs(m: Mapper, stage: str) -> None:
    if m.has("output_dir"):
        m.set("run.output_dir", str(m.get("output_dir")))
        m.note("output_dir", "alignkit writes the trained model to <output_dir>/final (checkpoints beside it)")
    if m.has("logging_steps"):
        _steps(m, "logging_steps", "run.log_every")
    save = str(m.get("save_strategy") or "steps")
    if save == "steps" and m.has("save_steps"):
        _steps(m, "save_steps", "run.save_every")
    elif save == "no" and m.has("save_steps"):
        m.ignore("save_steps", "save_strategy is no")
    elif save not in ("steps", "no"):
        m.drop("save_strategy", f"{save}: alignkit checkpoints every run.save_every steps")
    if m.has("save_total_limit") and m.get("save_total_limit") is not None:
        m.set("run.keep_checkpoints", max(1, m.number("save_total_limit", int)))
    _evaluation(m)
    _report_to(m)
    if m.get("resume_from_checkpoint"):
        m.drop("resume_from_checkpoint", "pass --resume [RUN_DIR] on the command line instead")
    if m.has("do_train") and not m.flag("do_train"):
        m.block("do_train", "false: alignkit's recipes train; to evaluate a model, use alignkit eval")
    for key in ("do_eval", "do_predict"):
        if m.flag(key):
            m.drop(key, "alignkit evaluates on its eval split during training; predictions: alignkit generate / eval")
    if m.has("deepspeed"):
        m.drop("deepspeed", "alignkit runs DeepSpeed through accelerate: pass --accelerate-config FILE (an "
               "accelerate config with a deepspeed_config)")


def _steps(m: Mapper, key: str, target: str) -> None:
    value = m.number(key)
    if value >= 1:
        m.set(target, int(value))
    else:
        m.drop(key, f"{value}: a fraction of the run; alignkit's {target} counts steps")


def _evaluation(m: Mapper) -> None:
    strategy = next((str(m.get(k)) for k in ("eval_strategy", "evaluation_strategy") if m.has(k)), "no")
    if strategy == "steps":
        m.set("run.eval_every", m.number("eval_steps", int, None) or m.number("logging_steps", int, 500))
    elif strategy == "no" and m.has("eval_steps"):
        m.ignore("eval_steps", "eval_strategy is no (alignkit evaluates at the end either way)")
    elif strategy != "no":
        m.drop("eval_strategy", f"{strategy}: alignkit evaluates every run.eval_every steps and at the end")


def _report_to(m: Mapper) -> None:
    value = m.get("report_to")
    items = [str(v).lower() for v in (value if isinstance(value, list) else [value] if value is not None else [])]
    kept = [t for t in ("tensorboard", "wandb") if t in items or "all" in items]
    other = [t for t in items if t not in ("tensorboard", "wandb", "all", "none")]
    if kept:
        m.set("run.report_to", kept)
    if other:
        m.drop("report_to", f"{', '.join(other)}: alignkit reports to tensorboard and wandb (besides its own CSV)")


def _data_limits(m: Mapper, stage: str) -> None:
    """The data keys besides the datasets themselves."""
    m.set("data.max_length", m.number("cutoff_len", int))
    if m.has("val_size") and not m.has("eval_dataset"):
        size = m.number("val_size")
        if size >= 1:
            m.drop("val_size", f"{size:g} examples; alignkit's data.eval_fraction is a fraction of the data")
        else:
            m.set("data.eval_fraction", size)
    elif m.has("val_size"):
        m.ignore("val_size", "eval_dataset is given (LLaMA-Factory refuses both)")
    elif not m.has("eval_dataset"):
        m.note("val_size", "not set: LLaMA-Factory holds nothing out; alignkit holds out data.eval_fraction (5%) "
               "for its eval metrics (data.eval_fraction=0 trains on all of it)")
    if m.has("max_samples"):
        m.drop("max_samples", f"{m.get('max_samples')}: alignkit reads every record (cut the file to try less)")
    if stage == "sft" and m.flag("mask_history"):
        m.set("data.loss_on", "last_turn")
    elif stage == "sft" and m.flag("train_on_prompt"):
        m.set("data.loss_on", "all")
        m.note("train_on_prompt", "data.loss_on: all trains the template's markup too, besides the prompt")
    if stage in ("pt", "sft"):
        packing, neat = m.get("packing"), m.flag("neat_packing")
        if neat or packing or (packing is None and stage == "pt"):  # LLaMA-Factory packs pre-training by default
            m.set("data.packing", True)
            if not neat:
                m.note("packing", "alignkit's packed rows keep examples apart (no attention across them, "
                       "LLaMA-Factory's neat_packing); its plain packing lets them attend to each other")
    if stage == "pt":
        m.note("stage", "pt: continued pre-training as alignkit sft on {\"text\"} records: every token trained, "
               "a document longer than data.max_length split into chunks")
    for key, what in (("default_system", "a system prompt for every example: put it in the records"),
                      ("enable_thinking", "a chat-template switch: alignkit renders the template's default"),
                      ("tool_format", "alignkit reads OpenAI tool_calls in the records")):
        if m.has(key):
            m.drop(key, what)
