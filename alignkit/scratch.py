"""A tokenizer and a small model of a chosen architecture, built from scratch from a user's corpus
(``alignkit init``): for users who start from their own text rather than a hub checkpoint, and for the tests,
which load models of real architectures (Llama, Qwen2, Mistral, Gemma, Mixtral, Qwen2-MoE) from local folders.

The tokenizer is a byte-level BPE trained by ``tokenizers`` (any string round-trips; digits split one per token,
so numbers are learnable), carrying alignkit's built-in chat template and its markers from the start, so later
chat SFT adds nothing to the vocabulary. The model is the architecture's own ``transformers`` class, built from its
config with random weights sized by the arguments: the result is an ordinary Hugging Face folder that every
alignkit command (and every other tool) loads as it would a downloaded checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from .data.templates import BUILTIN_END, BUILTIN_ROLE_TOKENS, BUILTIN_TEMPLATE

PAD = "<|pad|>"
SPECIAL_TOKENS = (PAD, BUILTIN_END, *BUILTIN_ROLE_TOKENS.values())  # pad is id 0, end (eos) id 1
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))

# Per architecture: config fields beyond the shared ones (the MoE shapes: 4 experts, 2 per token).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {},
    "mistral": {"sliding_window": None},
    "gemma": {},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1},
}


def build_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int = 256):
    """Train a byte-level BPE on ``texts`` and wrap it as a Hugging Face fast tokenizer with alignkit's built-in
    chat template. Special-token strings inside ``texts`` are cut out before training (the trainer would
    otherwise spend merges on "<|" and "|>"); the template's markers are added whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((piece for text in texts for piece in _SPECIAL_RE.split(text) if piece), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=BUILTIN_END,
        additional_special_tokens=list(BUILTIN_ROLE_TOKENS.values()), padding_side="right",
        clean_up_tokenization_spaces=False,  # would rewrite " ." to "." and break the exact round trip
        model_max_length=max_length,
    )
    tokenizer.chat_template = BUILTIN_TEMPLATE
    return tokenizer


def build_model(arch: str, tokenizer, hidden: int = 128, layers: int = 4, heads: int = 4, kv_heads: int | None = None,
                max_positions: int = 256, seed: int = 0):
    """A seeded, randomly initialised causal LM of architecture ``arch`` (``ARCHITECTURES``) sized to
    ``tokenizer``. The feed-forward width is 2.75 x hidden, rounded to a multiple of 8 (Llama's ratio)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if arch not in ARCHITECTURES:
        raise ValueError(f'unknown architecture "{arch}"; expected one of {", ".join(ARCHITECTURES)}')
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} must be a multiple of the head count {heads}")
    ffn = -(-int(hidden * 2.75) // 8) * 8
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
           "bos_token_id": tokenizer.eos_token_id}  # the template has no BOS; generate() needs a start token
    config = AutoConfig.for_model(
        arch, vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads or heads, head_dim=hidden // heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, attention_dropout=0.0,
        **({"moe_intermediate_size": ffn // 2, "shared_expert_intermediate_size": ffn} if arch == "qwen2_moe" else {}),
        **ARCHITECTURES[arch], **ids)
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's random state
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    return model


def corpus_texts(source: str) -> Iterator[str]:
    """Every string in a data file alignkit reads (.txt paragraphs, or any field of .jsonl / .json / .parquet /
    .csv records, nested lists and objects included): what the tokenizer is trained on."""
    from .data.loading import read_records

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list | tuple):
            for item in value:
                yield from strings(item)

    for _, record in read_records(source):
        yield from strings(record)


def init_model(corpus: str, out: str | Path, arch: str = "llama", vocab_size: int = 2000, **sizes: Any) -> Path:
    """``alignkit init``: train the tokenizer on ``corpus``, build the model, save both to ``out`` (atomically)."""
    from .checkpoint import atomic_dir

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; choose a new folder")
    tokenizer = build_tokenizer(corpus_texts(corpus), vocab_size, sizes.get("max_positions", 256))
    model = build_model(arch, tokenizer, **sizes)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out
