"""Load and save models: causal LMs from a hub id or local folder, full or with a peft adapter (``adapters``),
tokenizer alongside.

Later stages add the reward model and critic here (a causal-LM backbone with a scalar head).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .adapters import add_adapter, load_adapter_folder
from .checkpoint import atomic_dir
from .config import ConfigError, ModelConfig
from .config.base import ADAPTER_KNOBS, PROMPT_LEARNING
from .data.templates import BUILTIN_TEMPLATE, RAW_TEMPLATE, ensure_chat_template

REWARD_STATS = "reward_stats.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device that is absent is an error, not a silent fallback."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device = cuda, but torch sees no CUDA device on this machine (use auto or cpu)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("model.device = mps, but this machine has no Apple MPS device (use auto or cpu)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, master: bool = False) -> torch.dtype:
    """``auto`` -> bfloat16 on a GPU that supports it, else float32 (fp16 weights are never a silent default).

    ``master``: the weights will be trained in full. They stay float32 then (autocast does the bf16 math): AdamW
    updates at learning rates such as 1e-6 mostly round away in bf16 weights.
    """
    if dtype != "auto":
        return DTYPES[dtype]
    if device.type == "cuda" and torch.cuda.is_bf16_supported() and not master:
        return torch.bfloat16
    return torch.float32


def resolve_model_path(name_or_path: str) -> str:
    """The path to load; a ``demo:`` name here is a config that skipped the resolver (``pipeline.resolve``, which
    every command runs): one line saying so rather than a hub lookup of "demo:sft"."""
    if name_or_path.startswith("demo:"):
        raise ModelError(f"{name_or_path}: a demo: name reached the model loader unresolved; pass the config "
                         "through alignkit.pipeline.resolve(cfg) first (the alignkit commands do)")
    return name_or_path


def load_tokenizer(cfg: ModelConfig, padding_side: str = "right", announce=None):
    """The tokenizer, with a pad token and a chat template guaranteed (the built-in one when it has none).

    Installing the built-in template changes the tokenizer (new special tokens, a new EOS); ``announce`` (a print
    function) is told so in one line, and the model loaded with it is made to agree (``_finish_loading``).
    """
    check_model_folder(resolve_model_path(cfg.name_or_path), "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(cfg.name_or_path), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    )
    size, eos = len(tokenizer), tokenizer.eos_token
    if cfg.chat_template == "none":
        if eos is None:
            raise ModelError(f"{cfg.name_or_path}: model.chat_template = none appends the tokenizer's EOS to each "
                             "response, but this tokenizer has no eos_token")
        tokenizer.chat_template = RAW_TEMPLATE  # saved with the model: later stages render the same way
    elif ensure_chat_template(tokenizer) and announce is not None:
        announce(f"{cfg.name_or_path}: the tokenizer has no chat template; installed alignkit's built-in one "
                 f"({len(tokenizer) - size} special tokens added, EOS {eos!r} -> {tokenizer.eos_token!r}, "
                 f"vocabulary {size} -> {len(tokenizer)}); final/ is saved with it")
    if tokenizer.pad_token is None:
        # Reusing EOS as padding is safe here because loss masks never come from pad ids.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def _quantization_config(cfg: ModelConfig, device: torch.device, dtype: torch.dtype):
    if cfg.adapter != "qlora":
        return None
    if device.type != "cuda":
        raise RuntimeError(
            f"model.adapter = qlora needs a CUDA GPU (bitsandbytes 4-bit kernels), but the device is {device.type}. "
            "Use adapter: lora on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError("model.adapter = qlora needs bitsandbytes: pip install 'alignkit[qlora]'") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )


def _load_kwargs(cfg: ModelConfig, device: torch.device, trainable: bool = False) -> dict:
    dtype = resolve_dtype(cfg.dtype, device, master=trainable and cfg.adapter == "none")
    kwargs = {"dtype": dtype, "revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    if cfg.rope_scaling is not None:  # set on the base model's config (an adapter folder's base)
        from .adapters import adapter_base
        from .long_context import rope_kwargs

        path = resolve_model_path(cfg.name_or_path)
        kwargs.update(rope_kwargs(cfg, adapter_base(path) if is_adapter_folder(path) else path))
    if cfg.attn_implementation:
        from .long_context import attention_problem, installed_modules, known_attention

        problem = attention_problem(cfg.attn_implementation, device.type, installed_modules(), known_attention())
        if problem:
            raise ConfigError(problem)
        kwargs["attn_implementation"] = cfg.attn_implementation
    quant = _quantization_config(cfg, device, dtype)
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": device.index or 0})
    return kwargs


def resize_embeddings(model, tokenizer) -> None:
    """Grow the embeddings when the tokenizer gained tokens (the built-in template's markers).

    The new rows are drawn at random; a fixed seed makes every load of the same checkpoint identical, so a
    separately loaded reference equals the policy at step 0.
    """
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
            torch.manual_seed(0)
            model.resize_token_embeddings(len(tokenizer))


def _finish_loading(model, cfg: ModelConfig, tokenizer, device: torch.device):
    """Shared tail of loading: vocabulary resize, device, gradient checkpointing.

    Under the built-in template the model's EOS becomes the template's, so a saved config.json agrees with the
    saved tokenizer (and generation stops where the template ends a turn).
    """
    resize_embeddings(model, tokenizer)
    if getattr(tokenizer, "chat_template", None) == BUILTIN_TEMPLATE:
        model.config.eos_token_id = tokenizer.eos_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id
    if "quantization_config" not in model.config.to_dict():
        model.to(device)
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            model.activation_checkpointing_enable(kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    return model


def load_causal_lm(cfg: ModelConfig, tokenizer, device: torch.device | None = None,
                   with_adapter: bool = True, trainable: bool = True, router_aux: bool = False) -> PreTrainedModel:
    """A causal LM on ``device`` in the configured dtype, wrapped with a fresh peft adapter when asked.

    The embeddings are resized when the tokenizer gained tokens (the built-in template's markers).
    ``router_aux``: the recipe adds the MoE router's load-balancing loss to its objective (sft, dpo), so
    ``model.router_aux_loss_coef`` acts; a trained model also gets ``model.freeze``.
    """
    check_model_options(cfg, trainable, router_aux)
    device = device or resolve_device(cfg.device)
    kwargs = _load_kwargs(cfg, device, trainable)
    path = resolve_model_path(cfg.name_or_path)
    check_model_folder(path, "model")
    if is_adapter_folder(path):
        model = _load_merged_adapter(path, kwargs, trainable)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if model.generation_config is not None:  # its eos ids are kept: sampling stops at those and the template's
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model = _finish_loading(model, cfg, tokenizer, device)
    if trainable:
        _moe_options(model, cfg, router_aux)
    if with_adapter and cfg.adapter != "none":
        model = add_adapter(model, cfg)
    return model


def check_model_options(cfg: ModelConfig, trainable: bool, router_aux: bool = False) -> None:
    """Refuse, before loading, a knob that would do nothing to this model: another adapter's knob (configs such
    as eval's have no INACTIVE rules for them), model.freeze on a model that is not trained, and
    model.router_aux_loss_coef where no objective adds the router's term."""
    stray = cfg.stray_adapter_knob()
    if stray:
        raise ConfigError(stray)
    if cfg.freeze and not trainable:
        raise ConfigError(f"model.freeze = {cfg.freeze} has no effect here: this model is not trained")
    if cfg.router_aux_loss_coef is not None and not (trainable and router_aux):
        why = ("this model is not trained" if not trainable else
               "this recipe's objective has no router load-balancing term (sft and dpo add it)")
        raise ConfigError(f"model.router_aux_loss_coef = {cfg.router_aux_loss_coef} has no effect here: {why}")


def _moe_options(model, cfg: ModelConfig, router_aux: bool) -> None:
    """The router load-balancing coefficient (recipes that add the term) and model.freeze, on a trained model."""
    from .moe import freeze, set_router_aux_loss

    if router_aux:
        set_router_aux_loss(model, cfg.router_aux_loss_coef, cfg.name_or_path)
    if cfg.freeze:
        freeze(model, cfg.freeze, cfg.name_or_path)


def is_adapter_folder(path: str) -> bool:
    """A saved peft adapter (adapter_config.json without a full model's config.json)."""
    folder = Path(path)
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def _load_merged_adapter(path: str, kwargs: dict, trainable: bool = True):
    """Load an adapter folder as a plain model: its base, with the adapter merged in.

    A stage that starts from an earlier stage's adapter output (SFT -> DPO) then trains (or adapts) that merged
    model, instead of stacking adapters. A prefix (prefix / p_tuning_v2) cannot be merged: it loads as the peft
    model for inference only, and training from it is refused (``adapters.load_adapter_folder``).
    """
    return load_adapter_folder(path, kwargs, trainable)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def is_adapter_model(model) -> bool:
    return hasattr(model, "peft_config")


def save_model(model, tokenizer, path: str | Path, merge_adapter: bool = False, state_dict: dict | None = None) -> Path:
    """Save weights (full model, or the adapter only) with the tokenizer, atomically.

    ``state_dict``: the weights to write (a full state dict gathered from sharded processes); default the model's.
    With ``merge_adapter`` an adapter model is also saved merged into its base under ``path/merged`` (a plain
    model folder for serving). The live model is not modified: merging works on a copy of the weights.
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
        tokenizer.save_pretrained(tmp)
        if merge_adapter and is_adapter_model(model):
            import copy

            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp / "merged", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "merged")
    return path


class Reference:
    """The frozen reference policy of DPO / KTO / PPO.

    With an adapter policy and no separate reference path it is the policy itself with the adapter disabled: the
    same base weights, no second copy in memory (tested equal to the base model for LoRA, DoRA, IA3 and both prefix
    methods, whose forward peft swaps for the base model's). Otherwise a separately loaded,
    frozen model in eval mode (dropout off).
    """

    def __init__(self, policy=None, model=None, autocast=contextlib.nullcontext) -> None:
        self.policy = policy  # adapter-disabled mode
        self.model = model  # separate frozen model
        self.autocast = autocast  # the trained model's autocast (accelerate's), so both compute in one precision

    @contextlib.contextmanager
    def active(self):
        """The module to run as the reference: the frozen copy, or the policy in eval mode with its adapter off;
        under the run's autocast, so at step 0 the reference's log-probs equal the policy's."""
        if self.model is not None:
            with self.autocast():
                yield self.model
            return
        # the adapter is switched off on the inner peft model, but the forward goes through the wrapper (DDP,
        # FSDP): under FSDP only the wrapper's forward gathers the sharded parameters
        policy = getattr(self.policy, "module", self.policy)
        was_training = policy.training
        policy.eval()
        try:
            with policy.disable_adapter(), self.autocast():
                yield self.policy
        finally:
            policy.train(was_training)

    @torch.no_grad()
    def sequence_logps(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed response log-probs (N,) and response lengths (N,) of a SequenceBatch."""
        from .ops import sequence_logps

        with self.active() as model:
            return sequence_logps(model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.loss_mask,
                                  batch.segments)

    @torch.no_grad()
    def response_logps(self, batch, temperature: float = 1.0) -> torch.Tensor:
        """Per-token log-probs (B, R) of a RolloutBatch's responses."""
        from .ops import response_logps

        with self.active() as model:
            return response_logps(model, batch, temperature)[0]

    @torch.no_grad()
    def follow(self, policy, alpha: float) -> None:
        """Move the reference toward the policy: ref <- alpha * policy + (1 - alpha) * ref (alpha = 1 copies it).
        Trust-region DPO's soft (alpha < 1) and hard (alpha = 1) updates, and iterative DPO's refresh."""
        self.check_follows(policy)
        for target, value in zip(self.model.parameters(), getattr(policy, "module", policy).parameters()):
            target.lerp_(value.detach().to(target.dtype), alpha)

    def check_follows(self, policy) -> None:
        """Refuse, before training, a reference that cannot follow ``policy`` (see ``follow``)."""
        source = getattr(policy, "module", policy)
        if self.model is None or is_adapter_model(source):
            raise ConfigError("a moving reference (dpo.reference_update, online.iterations) needs a full policy and "
                              "a separate reference copy; with model.adapter = lora the reference is the base model "
                              "with the adapter off, which cannot follow the policy")
        targets, sources = list(self.model.parameters()), list(source.parameters())
        if len(targets) != len(sources) or any(t.shape != s.shape for t, s in zip(targets, sources)):
            raise ConfigError("the reference cannot follow the policy: their parameters differ in number or shape "
                              "(a sharded policy under FSDP / ZeRO-3 is not supported here)")


def move_reference(reference: Reference | None, policy, update: str, alpha: float, every: int, step: int) -> bool:
    """Trust-region DPO's reference schedule after optimizer step ``step``: soft every step, hard every ``every``
    steps, or none. Returns whether the reference moved."""
    if reference is None or update == "none" or (update == "hard" and step % every):
        return False
    reference.follow(policy, alpha if update == "soft" else 1.0)
    return True


def load_reference(cfg: ModelConfig, reference_path: str | None, policy, tokenizer, device,
                   autocast=contextlib.nullcontext) -> Reference:
    """The reference for ``policy``: adapter-disabled policy when possible, else a frozen copy from disk.

    ``autocast``: the context the trained policy computes under (``accelerator.autocast``); the reference runs
    under it too. A frozen model is placed on this process's device and never wrapped by accelerate.
    """
    if reference_path is None and is_adapter_model(policy):
        return Reference(policy=policy, autocast=autocast)
    ref_cfg = cfg.model_copy(update={"name_or_path": reference_path or cfg.name_or_path, "adapter": "none",
                                     "gradient_checkpointing": False, "freeze": [], "router_aux_loss_coef": None,
                                     **{k: ModelConfig.model_fields[k].get_default() for k in ADAPTER_KNOBS}})
    model = load_causal_lm(ref_cfg, tokenizer, device, trainable=False)
    model.eval()
    model.requires_grad_(False)
    return Reference(model=model, autocast=autocast)


@torch.no_grad()
def reference_logps(reference: Reference, sequences: list, pad_id: int, batch_size: int,
                    device: torch.device) -> torch.Tensor:
    """(N,) summed reference log-probs of the response tokens of each tokenized sequence."""
    from .data.collate import pad_sequences

    out = [torch.zeros(0)]
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        batch = pad_sequences(chunk, range(len(chunk)), pad_id).to(device)
        out.append(reference.sequence_logps(batch)[0].float().cpu())
    return torch.cat(out)


def reference_cache(path: Path, reference: Reference, named: dict[str, list], pad_id: int, batch_size: int,
                    device: torch.device, write: bool = True, reuse: bool = False) -> dict[str, torch.Tensor]:
    """Reference log-probs of every named list of sequences, computed once and kept in the run folder.

    Exact, because the reference is frozen. ``reuse`` (set when resuming) reads an existing cache instead of
    recomputing; a fresh run in a reused folder never trusts a cache it did not write. Written atomically (only by
    the main process).
    """
    import io

    from .checkpoint import atomic_write_bytes

    if reuse and path.is_file():
        return torch.load(path, weights_only=True)
    cache = {name: reference_logps(reference, seqs, pad_id, batch_size, device) for name, seqs in named.items()}
    if write:
        buffer = io.BytesIO()
        torch.save(cache, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return cache



# ------------------------------------------------------------------------------------ reward models, critics
def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout to p = 0: a reward model / critic must score the same text the same way in train mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def load_reward_model(cfg: ModelConfig, tokenizer, device: torch.device | None = None, trainable: bool = True):
    """A causal-LM backbone with a scalar head: ``AutoModelForSequenceClassification(num_labels=1)``.

    From a causal LM (usually the SFT model) the head is new and is initialised N(0, 1/(d_model + 1)), the scale of
    Stiennon et al. 2020, so initial rewards are O(1) whatever the width; from a saved reward model it is kept.
    Dropout is disabled. With LoRA the head stays fully trainable.
    """
    from transformers import AutoModelForSequenceClassification

    check_model_options(cfg, trainable)
    if trainable and cfg.adapter in PROMPT_LEARNING:
        raise ConfigError(f"model.adapter = {cfg.adapter} cannot train a reward model or critic: their scalar head reads "
                          "the backbone's hidden states, which a prefix (passed by peft's forward as a cache) never "
                          "reaches; use lora, dora, rslora or ia3")
    device = device or resolve_device(cfg.device)
    path = resolve_model_path(cfg.name_or_path)
    check_model_folder(path, "reward model")
    kwargs = _load_kwargs(cfg, device, trainable)
    if is_adapter_folder(path):  # a LoRA reward model: its base as a classifier, the adapter (and head) merged in
        from peft import PeftConfig, PeftModel

        base = PeftConfig.from_pretrained(path).base_model_name_or_path
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, **kwargs)
        resize_embeddings(model, tokenizer)  # before the adapter: it was trained on the resized model
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
        head_is_trained = True
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
        head_is_trained = any("ForSequenceClassification" in a for a in (model.config.architectures or []))
    model.config.pad_token_id = tokenizer.pad_token_id
    if not head_is_trained:
        head = reward_head(model)
        with torch.no_grad():
            torch.nn.init.normal_(head.weight, std=1.0 / (model.config.hidden_size + 1) ** 0.5)
            if head.bias is not None:
                head.bias.zero_()
    disable_dropout(model)
    model = _finish_loading(model, cfg, tokenizer, device)
    if trainable:
        _moe_options(model, cfg, router_aux=False)
    if trainable and cfg.adapter != "none":
        model = add_adapter(model, cfg, task_type="SEQ_CLS")
    if not trainable:
        model.eval()
        model.requires_grad_(False)
    return model


def reward_head(model) -> torch.nn.Linear:
    """The scalar head of a sequence-classification model (``score`` in Llama/Qwen/Mistral/Gemma/GPT-2)."""
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear `score` head; use an architecture that has one")
    return head


def _head_values(model, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
    """The sequence-classification model's ``score`` head on its backbone's hidden state at every position.

    Computed from the hidden states rather than the classifier's own pooling, which finds the last token from pad
    ids and so goes wrong when pad == eos; here the attention mask decides (``ops.gather_last``).
    """
    inner = model.get_base_model() if is_adapter_model(model) else model
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state
    return inner.score(hidden).squeeze(-1).float()


class ValueModel(torch.nn.Module):
    """A trained reward model or critic as one module whose forward returns the head at every position, (N, L).

    Trained value models go through accelerate as this wrapper, so their forward runs inside DDP's: DDP
    all-reduces gradients only for forwards that pass through it. ``hf`` is the Hugging Face model (saved as is).
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.hf = model

    def forward(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        return _head_values(self.hf, input_ids, attention_mask, position_ids)


def token_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The scalar head applied at every position: (N, L) -> (N, L). Rewards read it at the last real token; a
    critic reads it at every response token. Wrapped value models are called through their (DDP) wrapper."""
    inner = getattr(model, "module", model)
    if isinstance(inner, (ValueModel, SharedValueHead)):
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return _head_values(inner, input_ids, attention_mask, position_ids)


class SharedValueHead(torch.nn.Module):
    """A critic that is only a value head on the actor's own backbone (PPO's memory-saving option).

    Its one parameter tensor is the head; the backbone stays the actor's (deliberately not registered as a
    submodule), so the value loss's gradient reaches the backbone through the actor's parameters and is applied
    by the actor's optimizer, while the critic's optimizer updates the head. Costs a second forward through the
    backbone instead of a second model in memory. Single process only: the actor's DDP wrapper would not
    all-reduce gradients that arrive through this path.
    """

    def __init__(self, actor) -> None:
        super().__init__()
        inner = getattr(actor, "module", actor)
        inner = inner.get_base_model() if is_adapter_model(inner) else inner
        hidden = inner.config.hidden_size
        weight = next(inner.parameters())
        self.score = torch.nn.Linear(hidden, 1, bias=False).to(weight.device, weight.dtype)
        torch.nn.init.normal_(self.score.weight, std=1.0 / (hidden + 1) ** 0.5)
        object.__setattr__(self, "actor", actor)  # not a submodule: its parameters belong to the actor

    def forward(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        actor = getattr(self.actor, "module", self.actor)
        inner = actor.get_base_model() if is_adapter_model(actor) else actor
        backbone = getattr(inner, inner.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        return self.score(hidden).squeeze(-1).float()


def save_reward_stats(path: Path, mean: float, std: float, count: int) -> None:
    """Reward mean / std over the eval responses, stored beside the model so later stages can normalise."""
    from .checkpoint import atomic_write_json

    atomic_write_json(Path(path) / REWARD_STATS, {"mean": mean, "std": std, "count": count})


def load_reward_stats(path: str | Path) -> dict | None:
    import json

    file = Path(resolve_model_path(str(path))) / REWARD_STATS
    return json.loads(file.read_text()) if file.is_file() else None


PRM_INFO = "prm.json"  # beside a process reward model: how its steps were laid out ({"separator": ...})


def save_prm_info(path: Path, separator: str) -> None:
    """The step separator a process reward model was trained with, stored beside it: scoring splits at the same."""
    from .checkpoint import atomic_write_json

    atomic_write_json(Path(path) / PRM_INFO, {"separator": separator})


def load_prm_info(path: str | Path) -> dict:
    """The stored step layout of a process reward model folder; a folder without one is not a PRM (one line)."""
    import json

    file = Path(resolve_model_path(str(path))) / PRM_INFO
    if not file.is_file():
        raise ModelError(f"{path}: not a process reward model (no {PRM_INFO} beside the weights); train one with "
                         "alignkit prm, or use reward_model: for a reward model that scores whole responses")
    return json.loads(file.read_text())


# ------------------------------------------------------------------------------------ model folder checks
class ModelError(ValueError):
    """A model or tokenizer that cannot be loaded: one line naming the folder (or file) and what is wrong."""


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_HALF_WRITTEN = "a half-written or interrupted save?"


def check_model_folder(path: str, what: str) -> None:
    """Fail with one line, before transformers or peft would with a traceback, when ``path`` cannot give ``what``
    ("tokenizer", "model" or "reward model"): a missing folder, a half-written save (no weights, a truncated
    safetensors file, broken JSON), a LoRA adapter whose base is gone, a tokenizer that cannot pad.

    A name that is no folder here and does not look like a path (hub ids are "name" or "owner/name", the data
    loader's rule) is left to transformers: that is a hub lookup, not a local mistake.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        if path.startswith(("/", ".", "~")) or "\\" in path or path.count("/") > 1:
            raise ModelError(f"{path}: no such model folder")
        return
    if not folder.is_dir():
        raise ModelError(f"{path}: is a file; expected a model folder (config.json, weights, tokenizer files)")
    if what == "tokenizer":
        _check_tokenizer(path, folder)
    elif is_adapter_folder(str(folder)):
        _check_adapter(path, folder, what)
    else:
        _check_weights(path, folder)


def _json_object(file: Path) -> dict:
    import json

    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{file}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno}); {_HALF_WRITTEN}") from None
    except UnicodeDecodeError:
        raise ModelError(f"{file}: not UTF-8 text; {_HALF_WRITTEN}") from None
    if not isinstance(value, dict):
        raise ModelError(f"{file}: expected a JSON object")
    return value


def _check_tokenizer(path: str, folder: Path) -> None:
    """Tokenizer files are there, and it can pad: with a chat template of its own the built-in one (which brings
    its end marker as EOS) is not installed, so the tokenizer needs a pad or an EOS token itself."""
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(f"{path}: no tokenizer here (none of {', '.join(_TOKENIZER_FILES)})")
    if (folder / "config.json").is_file():  # AutoTokenizer reads it too, to find the tokenizer class
        _json_object(folder / "config.json")
    config = _json_object(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    special = _json_object(folder / "special_tokens_map.json") if (folder / "special_tokens_map.json").is_file() else {}
    templated = config.get("chat_template") or any((folder / n).is_file() for n in ("chat_template.jinja", "chat_template.json"))
    if templated and not any(config.get(key) or special.get(key) for key in ("pad_token", "eos_token")):
        raise ModelError(f'{path}: the tokenizer has neither a pad token nor an eos token, so batches cannot be padded; '
                         'set "pad_token" in its tokenizer_config.json')


def _check_weights(path: str, folder: Path) -> None:
    """config.json that parses, and weights that are all there (every shard, every safetensors file complete)."""
    if not (folder / "config.json").is_file():
        raise ModelError(f"{path}: no config.json, so not a model folder (a model has config.json and "
                         "model.safetensors; a LoRA adapter has adapter_config.json)")
    _json_object(folder / "config.json")
    found = [name for name in _WEIGHTS if (folder / name).is_file()]
    if not found:
        raise ModelError(f"{path}: has config.json but no weights (model.safetensors or pytorch_model.bin); {_HALF_WRITTEN}")
    files = [found[0]]
    if found[0].endswith(".index.json"):
        files = sorted(set(_json_object(folder / found[0]).get("weight_map", {}).values()))
        missing = [name for name in files if not (folder / name).is_file()]
        if missing:
            raise ModelError(f"{path}: {missing[0]} (named in {found[0]}) is missing; {_HALF_WRITTEN}")
    for name in files:
        if name.endswith(".safetensors"):
            _check_safetensors(folder / name)


def _check_safetensors(file: Path) -> None:
    """The header says how long the file must be: shorter means a save that never finished."""
    import json

    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else size
        header = f.read(n) if n <= size - 8 else b""
    try:
        tensors = json.loads(header)
        end = max((t["data_offsets"][1] for k, t in tensors.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise ModelError(f"{file}: not a readable safetensors file ({size} bytes, header cut or garbled); "
                         f"{_HALF_WRITTEN}") from None
    if 8 + n + end > size:
        raise ModelError(f"{file}: truncated ({size} of {8 + n + end} bytes); {_HALF_WRITTEN}")


def _check_adapter(path: str, folder: Path, what: str) -> None:
    """A LoRA adapter: its config names a base that exists (checked in turn), and its weights are there."""
    config_file = folder / "adapter_config.json"
    base = _json_object(config_file).get("base_model_name_or_path")
    if not (isinstance(base, str) and base):
        raise ModelError(f'{config_file}: field "base_model_name_or_path" is missing; a LoRA adapter needs the '
                         "model it was trained on")
    weights = [name for name in _ADAPTER_WEIGHTS if (folder / name).is_file()]
    if not weights:
        raise ModelError(f"{path}: has adapter_config.json but no adapter weights (adapter_model.safetensors); "
                         f"{_HALF_WRITTEN}")
    if weights[0].endswith(".safetensors"):
        _check_safetensors(folder / weights[0])
    try:
        check_model_folder(base, what)
    except ModelError as e:
        raise ModelError(f"{path}: its LoRA base model (base_model_name_or_path in adapter_config.json) cannot be "
                         f"loaded: {e}") from None
