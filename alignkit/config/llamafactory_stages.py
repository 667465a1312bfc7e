"""LLaMA-Factory's stage keys -> alignkit's recipe sections: DPO (pref_loss, pref_beta, pref_ftx ...), KTO
(kto_chosen_weight ...) and PPO (ppo_*, reward_model, the generating args). LLaMA-Factory's DPO and KTO losses are
its train/dpo and train/kto trainers; its PPO is TRL's PPOTrainer 0.8 (train/ppo/trainer.py), configured from
per_device_train_batch_size, gradient_accumulation_steps and ppo_buffer_size."""

from __future__ import annotations

from pathlib import Path

from .llamafactory_keys import Mapper

_DPO_LOSSES = {"sigmoid": "sigmoid", "hinge": "hinge", "ipo": "ipo", "orpo": "orpo", "simpo": "simpo"}


def _dpo(m: Mapper, stage: str) -> None:
    loss = str(m.get("pref_loss") or "sigmoid")
    if loss in _DPO_LOSSES:
        m.set("dpo.loss", _DPO_LOSSES[loss])
    else:
        m.block("pref_loss", f"{loss}: no alignkit preference loss (sigmoid, hinge, ipo, orpo, simpo; KTO on "
                "unpaired data is alignkit kto)", "dpo.loss")
    if loss == "ipo":
        m.note("pref_loss", "ipo: LLaMA-Factory (as TRL) averages the log-probs over tokens, alignkit sums them as "
               "the paper does, so the same pref_beta means a different strength")
    if m.has("pref_beta"):
        m.set("dpo.beta", m.number("pref_beta"))
    if m.number("dpo_label_smoothing", float, 0.0):
        m.set("dpo.label_smoothing", m.number("dpo_label_smoothing"))
    if m.has("simpo_gamma"):
        if loss == "simpo":
            m.set("dpo.simpo_gamma", m.number("simpo_gamma"))
        else:
            m.ignore("simpo_gamma", "pref_loss is not simpo")
    ftx = m.number("pref_ftx", float, 0.0)
    if ftx:  # LLaMA-Factory's SFT term is the length-averaged NLL of the chosen response, as dpo.nll_weight's
        m.set("dpo.nll_weight", ftx + (1.0 if loss == "orpo" else 0.0))
    if m.has("ref_model"):
        if loss in ("orpo", "simpo"):
            m.ignore("ref_model", f"{loss} uses no reference model")
        else:
            m.set("dpo.reference_model", str(m.get("ref_model")))
    _unused_extras(m, ("pref_bco_weight", "ld_alpha", "ref_model_adapters", "ref_model_quantization_bit"))


def _kto(m: Mapper, stage: str) -> None:
    for key, target in (("pref_beta", "kto.beta"), ("kto_chosen_weight", "kto.desirable_weight"),
                        ("kto_rejected_weight", "kto.undesirable_weight"),
                        ("kto_undesirable_weight", "kto.undesirable_weight")):  # the latter: its older name
        if m.has(key):
            m.set(target, m.number(key))
    if m.number("pref_ftx", float, 0.0):
        m.drop("pref_ftx", "alignkit's KTO adds no SFT term")
    if m.has("ref_model"):
        m.set("kto.reference_model", str(m.get("ref_model")))
    _unused_extras(m, ("ref_model_adapters", "ref_model_quantization_bit"))


def _unused_extras(m: Mapper, keys: tuple[str, ...]) -> None:
    for key in keys:
        if m.get(key):
            m.drop(key, "not in alignkit")
        elif m.has(key):
            m.ignore(key, "off")


def _ppo_batches(m: Mapper, batch: int, accum: int) -> None:
    """TRL's PPO under LLaMA-Factory: each step rolls out per_device x accumulation x ppo_buffer_size prompts and
    takes one optimizer step per per_device x accumulation of them."""
    buffer = m.number("ppo_buffer_size", int, 1)
    m.set("train.batch_size", batch * accum * buffer)
    m.set("ppo.mini_batch_size", batch * accum)
    m.set("ppo.micro_batch_size", batch)
    m.note("per_device_train_batch_size", f"PPO: {batch} x gradient_accumulation_steps {accum} x ppo_buffer_size "
           f"{buffer} = {batch * accum * buffer} prompts per step (train.batch_size), mini-batches of {batch * accum}; "
           "alignkit counts over all processes: multiply by the number of GPUs when running on several")


def _ppo(m: Mapper, stage: str) -> None:
    _ppo_batches(m, m.number("per_device_train_batch_size", int), m.number("gradient_accumulation_steps", int, 1))
    if m.has("ppo_epochs"):
        m.set("ppo.ppo_epochs", m.number("ppo_epochs", int))
    # TRL's PPOTrainer (0.8): a value head on the policy, the adaptive KL controller from 0.2 toward the target
    m.set("ppo.critic", "shared")
    m.set("ppo.adaptive_kl", True)
    m.set("ppo.kl_coef", 0.2)
    m.set("ppo.kl_target", m.number("ppo_target"))
    m.note("stage", "ppo: as TRL's PPO trainer under LLaMA-Factory, a value head on the policy (ppo.critic: shared, "
           "one process) and an adaptive KL penalty from 0.2; alignkit also clips scores to +-ppo.reward_clip")
    if m.flag("ppo_score_norm"):
        m.set("ppo.reward_norm", "running")
        if m.flag("ppo_whiten_rewards"):
            m.drop("ppo_whiten_rewards", "alignkit normalises the score one way (ppo_score_norm's running mean/std)")
    elif m.flag("ppo_whiten_rewards"):
        m.set("ppo.reward_norm", "batch")
        m.note("ppo_whiten_rewards", "TRL scales each batch's per-token rewards; alignkit's ppo.reward_norm: batch "
               "whitens each batch's sequence scores")
    _reward_model(m)
    if m.has("ref_model"):
        m.drop("ref_model", "alignkit's PPO reference is the starting policy")
    for key, kind in (("temperature", float), ("top_p", float), ("top_k", int), ("max_new_tokens", int)):
        m.set(f"sampling.{key}", m.number(key, kind))
    if m.has("do_sample") and not m.flag("do_sample"):
        m.drop("do_sample", "false: PPO samples its rollouts (sampling.temperature)")
    if m.number("num_beams", int, 1) > 1:
        m.drop("num_beams", "PPO samples its rollouts; no beam search")
    if m.number("repetition_penalty", float, 1.0) != 1.0:
        m.drop("repetition_penalty", "alignkit samples without a repetition penalty")
    for key in ("length_penalty", "max_length"):
        if m.has(key):
            m.ignore(key, "beam search / max_new_tokens sets the budget")


def _reward_model(m: Mapper) -> None:
    path, kind = m.get("reward_model"), str(m.get("reward_model_type") or "lora")
    folder = Path(str(path or ""))
    if not path:
        m.block("reward_model", "LLaMA-Factory's PPO needs one; alignkit's reads a folder from alignkit rm", "rewards")
    elif kind == "api":
        m.block("reward_model", "a reward API server: alignkit calls Python reward functions instead (rewards: "
                "[{fn: module:function}])", "rewards")
    elif any((folder / name).is_file() for name in ("value_head.safetensors", "value_head.bin")):
        m.block("reward_model", f"{path} is a LLaMA-Factory reward model (its head in value_head.safetensors), which "
                "alignkit does not read: train it with alignkit rm (convert its YAML the same way)", "rewards")
    else:
        m.set("rewards", [{"reward_model": str(path)}])
        m.note("reward_model", "read as an alignkit reward model (a folder from alignkit rm, or a sequence-"
               "classification model), its scores normalised with the mean / std stored beside it")
    _unused_extras(m, ("reward_model_adapters", "reward_model_quantization_bit"))


STAGE_KEYS = {"dpo": _dpo, "kto": _kto, "ppo": _ppo}  # stage -> the function mapping its own keys
