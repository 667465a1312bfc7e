"""peft adapters: one peft config per ``model.adapter``, wrapping a model with it, and what prompt learning cannot do.

Prefix tuning vs P-tuning v2. peft implements both with one method, ``PrefixTuningConfig`` (its maintainers: the
two papers "are implemented together", huggingface/peft#630): a trained key/value prefix of
``num_virtual_tokens`` positions in every layer. What tells them apart is the reparameterisation:
- ``prefix`` (Li & Liang 2021, sec. 4.3): the prefix is the output of a two-layer MLP over a smaller embedding
  during training (``prefix_projection=True``); the paper found direct optimisation of the prefix unstable.
  peft saves the MLP's output, so a reloaded prefix is the plain key/value tensor (it reloads for inference).
- ``p_tuning_v2`` (Liu et al. 2022, "deep prompt tuning"): the key/value prefix itself is the parameter
  (``prefix_projection=False``); the paper makes reparameterisation optional and trains without it by default.
peft's ``PromptEncoderConfig`` is P-tuning v1 (a prompt at the input layer only, through an LSTM/MLP encoder): not
what either paper here does.
"""

from __future__ import annotations

from typing import Any

from .config import ModelConfig
from .config.base import LORA_FAMILY, PROMPT_LEARNING


def _lora(cfg: ModelConfig, model, task_type: str):
    """LoRA and its variants: DoRA (Liu et al. 2024) splits each update into magnitude and direction; rsLoRA
    (Kalajdzievski 2023) scales it by alpha / sqrt(r) instead of alpha / r, so a large rank still learns."""
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type=task_type,
                      target_modules=targets if isinstance(targets, str) else list(targets),
                      use_dora=cfg.adapter == "dora", use_rslora=cfg.adapter == "rslora")


def _ia3(cfg: ModelConfig, model, task_type: str):
    """(IA)^3 (Liu et al. 2022): learned vectors rescale the keys, values and feed-forward activations."""
    from peft import IA3Config

    return IA3Config(task_type=task_type, target_modules=cfg.ia3_target_modules,
                     feedforward_modules=cfg.ia3_feedforward_modules)


def _prefix(cfg: ModelConfig, model, task_type: str, projection: bool = True):
    from peft import PrefixTuningConfig

    # the MLP's width: the model's hidden size (Li & Liang used 512-800 for models of that order)
    return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=cfg.num_virtual_tokens,
                              prefix_projection=projection,
                              encoder_hidden_size=model.config.hidden_size if projection else None)


def _p_tuning_v2(cfg: ModelConfig, model, task_type: str):
    return _prefix(cfg, model, task_type, projection=False)


PEFT_CONFIGS = {**dict.fromkeys(LORA_FAMILY, _lora), "ia3": _ia3, "prefix": _prefix, "p_tuning_v2": _p_tuning_v2}


def add_adapter(model, cfg: ModelConfig, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with the configured peft adapter (QLoRA: after preparing the 4-bit base for training).

    task_type SEQ_CLS (reward models, critics) keeps the freshly initialised scalar head fully trainable.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if cfg.adapter == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-requiring input when the base is frozen
    return get_peft_model(model, PEFT_CONFIGS[cfg.adapter](cfg, model, task_type))


def is_prompt_learning(model) -> bool:
    """A peft model whose adapter is a trained prefix (prefix / p_tuning_v2): it acts only through the peft
    wrapper's forward, which passes it as a key/value cache, never inside the base model's layers."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _adapter_config(folder: str) -> dict[str, Any]:
    import json
    from pathlib import Path

    return json.loads((Path(folder) / "adapter_config.json").read_text())


def adapter_peft_type(folder: str) -> str:
    """The ``peft_type`` of a saved adapter folder (LORA, IA3, PREFIX_TUNING...)."""
    return str(_adapter_config(folder).get("peft_type", "LORA"))


def adapter_base(folder: str) -> str:
    """The base model a saved adapter folder was trained on."""
    return str(_adapter_config(folder)["base_model_name_or_path"])


def load_adapter_folder(path: str, kwargs: dict[str, Any], trainable: bool):
    """An adapter folder as a model to train or run: its base with the adapter merged in, so a later stage
    (SFT -> DPO) trains that model instead of stacking adapters.

    A prefix (prefix / p_tuning_v2) has no weight to merge into: it is loaded as the peft model for inference
    (eval, generate, a frozen reference), and a stage that would train from it is refused in one line.
    """
    from peft import AutoPeftModelForCausalLM

    from .models import ModelError

    kind = adapter_peft_type(path)
    if kind != "PREFIX_TUNING":
        return AutoPeftModelForCausalLM.from_pretrained(path, **kwargs).merge_and_unload()
    if trainable:
        raise ModelError(f"{path}: a prefix-tuning adapter (model.adapter = {' / '.join(PROMPT_LEARNING)}) cannot be "
                         "merged into its base model (it is a key/value prefix, not a weight change), so no stage can "
                         "train from it: start from its base model with a new adapter, or use it for eval / generate")
    return AutoPeftModelForCausalLM.from_pretrained(path, **kwargs).eval()
