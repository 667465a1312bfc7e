"""Mixture-of-experts training knobs: the router load-balancing loss (``model.router_aux_loss_coef``) and keeping
routers or experts fixed (``model.freeze``).

A sparse MoE block here is a module with a ``gate`` (the router: hidden -> one logit per expert) and ``experts``
(Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3 in transformers). transformers 5 stores a block's experts
fused, one (num_experts, ...) tensor per projection, so one expert is a slice: it is kept fixed by zeroing that
slice of the gradient (AdamW then never moves it, as long as weight decay is 0, which the config checks).
"""

from __future__ import annotations

import fnmatch

import torch

from .config import ConfigError


def is_moe(model) -> bool:
    """The model's config has router settings (``output_router_logits``): transformers' MoE causal LMs."""
    return hasattr(getattr(model, "config", None), "output_router_logits")


def set_router_aux_loss(model, coef: float | None, name: str) -> float:
    """Resolve ``model.router_aux_loss_coef`` for ``model`` (loaded from ``name``, trained by a recipe that adds
    the router's load-balancing loss) and write it to the model config's ``router_aux_loss_coef``, where
    ``router_aux_coef`` reads it (and where it is saved, as the coefficient the model was trained with).
    None = the config's own coefficient when the config asks for router logits, else off. Returns it (0 = off).

    ``output_router_logits`` is switched off in the config: the training forward asks for the router logits per
    call (``ops.forward_token_logps_aux``), and generation, which runs with a cache, cannot compute this loss
    (transformers fails on it). A coefficient for a model with no router is refused in one line."""
    config = getattr(model, "config", None)
    if not is_moe(model):
        if coef is not None:
            raise ConfigError(f"model.router_aux_loss_coef = {coef} has no effect here: {name} is not a "
                              "mixture-of-experts model (its config has no router settings)")
        return 0.0
    if coef is None:
        coef = float(getattr(config, "router_aux_loss_coef", 0.0)) if config.output_router_logits else 0.0
    config.output_router_logits = False
    config.router_aux_loss_coef = coef
    return coef


def router_aux_coef(model) -> float:
    """The router load-balancing coefficient of a model loaded for a recipe that adds the term (``load_causal_lm``
    with ``router_aux``); 0 for a dense model or when off."""
    inner = getattr(model, "module", model)
    return float(getattr(inner.config, "router_aux_loss_coef", 0.0)) if is_moe(inner) else 0.0


def moe_blocks(model) -> list[tuple[str, torch.nn.Module]]:
    """(name, block) of every sparse MoE block: a module with a router ``gate`` and ``experts``."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(getattr(module, "gate", None), torch.nn.Module)
            and isinstance(getattr(module, "experts", None), torch.nn.Module)]


def freeze(model, entries: list[str], name: str) -> dict[str, int]:
    """Keep parameters fixed (``model.freeze``): ``router`` = every MoE router, ``experts`` = every routed
    expert, ``experts.<i>`` = expert i of every MoE block, anything else = a glob over parameter names. Returns
    entry -> number of parameter tensors (or expert slices) it fixed; an entry that fixes nothing is an error."""
    blocks = moe_blocks(model)
    counts = {}
    for entry in entries:
        if entry in ("router", "experts") or entry.startswith("experts."):
            if not blocks:
                raise ConfigError(f"model.freeze: {entry!r} names a mixture-of-experts part, but {name} has no MoE "
                                  "blocks (no module with a router gate and experts)")
            counts[entry] = _freeze_moe(blocks, entry, name)
        else:
            matched = [p for n, p in model.named_parameters() if fnmatch.fnmatchcase(n, entry)]
            if not matched:
                example = next(n for n, _ in model.named_parameters())
                raise ConfigError(f"model.freeze: {entry!r} matches no parameter name of {name} (names look like "
                                  f"{example}; use router, experts, experts.<i>, or a glob such as model.layers.0.*)")
            for p in matched:
                p.requires_grad_(False)
            counts[entry] = len(matched)
    return counts


def _freeze_moe(blocks: list[tuple[str, torch.nn.Module]], entry: str, name: str) -> int:
    count = 0
    for _, block in blocks:
        if entry == "router":
            count += _fix(block.gate.parameters())
        elif entry == "experts":
            count += _fix(block.experts.parameters())
        else:
            count += _freeze_expert(block, int(entry.split(".", 1)[1]), name)
    return count


def _fix(params) -> int:
    params = list(params)
    for p in params:
        p.requires_grad_(False)
    return len(params)


def _freeze_expert(block: torch.nn.Module, index: int, name: str) -> int:
    """Expert ``index`` of one block: its own module when the experts are a list, else its slice of every fused
    (num_experts, ...) tensor, whose gradient rows are zeroed by a hook (AdamW's step is then exactly 0 there)."""
    experts = block.experts
    if isinstance(experts, torch.nn.ModuleList):
        if index >= len(experts):
            raise ConfigError(f"model.freeze: experts.{index}, but {name} has {len(experts)} experts per block")
        return _fix(experts[index].parameters())
    fused = [p for p in experts.parameters() if p.dim() >= 2]
    n_experts = fused[0].shape[0] if fused else 0
    if index >= n_experts:
        raise ConfigError(f"model.freeze: experts.{index}, but {name} has {n_experts} experts per block")
    for p in fused:
        rows = getattr(p, "_alignkit_frozen_rows", set())
        if not rows:
            p.register_hook(lambda grad, rows=rows: _zero_rows(grad, rows))
        rows.add(index)
        p._alignkit_frozen_rows = rows
    return len(fused)


def _zero_rows(grad: torch.Tensor, rows: set[int]) -> torch.Tensor:
    grad = grad.clone()
    grad[sorted(rows)] = 0
    return grad
