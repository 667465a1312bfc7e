"""Long context: ``model.rope_scaling`` mapped onto the model config's rotary settings, which attention kernels can
run on this machine, and the one-line advice a run with long examples gets at its start.

Pure functions of plain values; ``rope_kwargs``, ``installed_modules`` and ``advice_for`` are the thin probes
around them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

LONG_CONTEXT = 4096  # data.max_length from which a run is told about memory-saving settings

# attention kernel -> (modules that provide it, any one will do; needs a CUDA device). transformers 5 can also fetch
# the flash kernels from the hub through the ``kernels`` package, hence the alternative.
ATTENTION_NEEDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "eager": ((), False),
    "sdpa": ((), False),  # torch.nn.functional.scaled_dot_product_attention, in every torch transformers 5 takes
    "flex_attention": (("torch.nn.attention.flex_attention",), False),
    "flash_attention_2": (("flash_attn", "kernels"), True),
    "flash_attention_3": (("flash_attn_interface", "kernels"), True),
    "flash_attention_4": (("flash_attn", "kernels"), True),
}
PIP_NAMES = {"flash_attn": "flash-attn", "flash_attn_interface": "flash-attn-3", "kernels": "kernels",
             "torch.nn.attention.flex_attention": "torch>=2.5"}


def rope_parameters(scaling: dict[str, Any], current: dict[str, Any] | None,
                    max_position_embeddings: int | None) -> dict[str, Any]:
    """The model config's ``rope_parameters`` (transformers 5's name; the type is ``rope_type``) for alignkit's
    ``{type, factor, original_max_position_embeddings?}``, keeping the model's own ``rope_theta`` (and partial
    rotary factor). YaRN needs the pre-training length; it defaults to the model's ``max_position_embeddings``
    (the context the checkpoint was trained at, before this run stretches it by ``factor``)."""
    kept = {k: v for k, v in (current or {}).items() if k in ("rope_theta", "partial_rotary_factor")}
    out = {**kept, "rope_type": scaling["type"], "factor": float(scaling["factor"])}
    if scaling["type"] == "yarn":
        out["original_max_position_embeddings"] = int(scaling.get("original_max_position_embeddings")
                                                       or max_position_embeddings)
    return out


def rope_kwargs(cfg: Any, path: str) -> dict[str, Any]:
    """``model.rope_scaling`` as the loader's ``rope_parameters`` override for the model at ``path``: transformers
    5 keeps RoPE settings in ``config.rope_parameters``, so the model's own is read first (its theta is kept)."""
    from transformers import AutoConfig

    from .config import ConfigError

    config = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    current = getattr(config, "rope_parameters", None)
    if not current:
        raise ConfigError(f"model.rope_scaling: {cfg.name_or_path} has no rotary position embeddings to scale "
                          "(its config has no rope_parameters)")
    if any(isinstance(v, dict) for v in current.values()):
        raise ConfigError(f"model.rope_scaling: {cfg.name_or_path} sets RoPE per layer type; scale it in its "
                          "config.json (rope_parameters) instead")
    return {"rope_parameters": rope_parameters(cfg.rope_scaling, current,
                                               getattr(config, "max_position_embeddings", None))}


def attention_problem(name: str, device_type: str, installed: Collection[str], known: Collection[str]) -> str | None:
    """Why ``model.attn_implementation = name`` cannot run here, in one line; None when it can.

    ``installed``: the modules of ``ATTENTION_NEEDS`` that import here; ``known``: the kernels transformers
    registers (``AttentionInterface``). A hub kernel (``org/repo``) needs the ``kernels`` package."""
    key = f"model.attn_implementation = {name}"
    if "/" in name:
        return None if "kernels" in installed else f"{key} is a hub kernel, which needs the kernels package (pip install kernels)"
    if name not in ATTENTION_NEEDS and name not in known:
        have = ", ".join(sorted(set(ATTENTION_NEEDS) | set(known)))
        return f"{key} is not an attention kernel transformers knows (have: {have})"
    modules, cuda = ATTENTION_NEEDS.get(name, ((), False))
    if modules and not any(m in installed for m in modules):
        options = " or ".join(f"the {PIP_NAMES.get(m, m)} package" for m in modules)
        return f"{key} needs {options}, and none is installed here (pip install {PIP_NAMES.get(modules[0], modules[0])})"
    if cuda and device_type != "cuda":
        return f"{key} needs a CUDA GPU, but the model runs on {device_type} (use sdpa)"
    return None


def long_context_advice(max_length: int, attn_implementation: str | None, gradient_checkpointing: bool,
                        cuda: bool, flash_installed: bool) -> str | None:
    """One line of advice for a run whose examples reach ``LONG_CONTEXT`` tokens or more; None when there is
    nothing to add. Attention memory grows with length squared under eager (the full score matrix per head);
    sdpa (transformers' default) and flash attention never build it; activations grow linearly with length,
    which gradient checkpointing trades for a second forward."""
    if max_length < LONG_CONTEXT:
        return None
    tips = []
    if attn_implementation == "eager":
        tips.append(f"model.attn_implementation = sdpa (eager builds the {max_length} x {max_length} score matrix "
                    "of every head)")
    elif attn_implementation in (None, "sdpa") and cuda and flash_installed:
        tips.append("model.attn_implementation = flash_attention_2 (flash-attn is installed)")
    if not gradient_checkpointing:
        tips.append("model.gradient_checkpointing = true (activations grow with the length)")
    if not tips:
        return None
    return f"long context ({max_length} tokens per row): consider " + "; ".join(tips)


def installed_modules() -> set[str]:
    """The modules of ``ATTENTION_NEEDS`` that can be imported here."""
    from importlib.util import find_spec

    found = set()
    for name in {m for modules, _ in ATTENTION_NEEDS.values() for m in modules}:
        try:
            if find_spec(name) is not None:
                found.add(name)
        except (ImportError, ValueError):  # a parent package missing
            pass
    return found


def known_attention() -> list[str]:
    """The attention kernels this transformers registers, and eager."""
    from transformers import AttentionInterface

    return ["eager", *AttentionInterface().valid_keys()]


def advice_for(cfg: Any, device_type: str) -> str | None:
    """``long_context_advice`` for a recipe config, on the run's device (the one call in ``runtime.start_run``).
    The length that matters is a row's: data.max_length, or data.pack_length when packing makes rows longer."""
    data, model = getattr(cfg, "data", None), getattr(cfg, "model", None)
    if data is None or model is None:
        return None
    length = max(data.max_length, data.row_length or 0)
    if length < LONG_CONTEXT:
        return None
    return long_context_advice(length, model.attn_implementation, model.gradient_checkpointing,
                               device_type == "cuda", "flash_attn" in installed_modules())
