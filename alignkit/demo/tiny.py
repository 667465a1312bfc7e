"""A tiny tokenizer and Llama model built from scratch, so the demo and the tests run offline in seconds.

Why from scratch: no download, no cache, and a model small enough (~0.85M parameters) that every recipe trains it on
a CPU in seconds. The result is an ordinary Hugging Face folder, so the rest of alignkit loads it exactly as it
would load a real checkpoint (``AutoModelForCausalLM`` / ``AutoTokenizer``); nothing downstream special-cases it.

The model is *untrained*: ``build_base_model`` gives the random-init starting point; the SFT recipe is what teaches
it the task (the world's SFT data plays the role of a pretraining corpus with mixed manners).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import jinja2
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..data.templates import BUILTIN_TEMPLATE
from ..scratch import build_tokenizer as scratch_tokenizer
from .world import WorldPaths

VOCAB_SIZE = 384  # 256 byte symbols + 5 specials + ~120 merges: enough for the world's few dozen words
MAX_POSITIONS = 256  # the longest rendered demo conversation is well under 64 tokens


def build_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """The demo's byte-level BPE (``scratch.build_tokenizer``: digits one per token, because a model that sees
    "13" as "1", "3" can learn carrying, while merged number tokens would each need to be memorised)."""
    return scratch_tokenizer(texts, vocab_size, MAX_POSITIONS)


# (hidden, intermediate) per size: "small" is the demo's policy (~0.85M parameters), "large" the teacher it is
# distilled from (~1.8M; a bigger one would not train within the demo's time on 2 CPU cores)
SIZES = {"small": (128, 352), "large": (192, 512)}


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, size: str = "small") -> LlamaForCausalLM:
    """A seeded, randomly initialised small Llama sized to ``tokenizer`` (``SIZES``).

    The template has no BOS token (it starts with a role marker), so the tokenizer adds none; ``bos_token_id`` is
    set to the end token only so that ``generate()`` has a start token when called without input.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=SIZES[size][0],
        intermediate_size=SIZES[size][1],
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,  # at this size the embedding table is a visible share of the parameters
        attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's random state
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(config, key))
    return model


def _read_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def world_chats(world: WorldPaths) -> Iterator[str]:
    """Every training conversation of the world rendered through the built-in chat template.

    Only training files are read: the eval prompts share the same words, so leaving them out costs nothing and
    keeps the held-out set untouched by anything that is fitted.
    """
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(BUILTIN_TEMPLATE)

    def chat(prompt: str, response: str | None = None) -> str:
        messages = [{"role": "user", "content": prompt}]
        if response is not None:
            messages.append({"role": "assistant", "content": response})
        return template.render(messages=messages, add_generation_prompt=response is None)

    for r in _read_jsonl(world.sft):
        yield chat(r["prompt"], r["response"])
    for r in _read_jsonl(world.prefs):
        yield chat(r["prompt"], r["chosen"])
        yield chat(r["prompt"], r["rejected"])
    for r in _read_jsonl(world.ranked):
        yield from (chat(r["prompt"], response) for response in r["responses"])
    for r in _read_jsonl(world.kto):
        yield chat(r["prompt"], r["completion"])
    for r in _read_jsonl(world.prompts_train):
        yield chat(r["prompt"])


def build_base_model(out_dir: Path, world: WorldPaths, seed: int = 0, size: str = "small") -> Path:
    """Train the tokenizer on the world's chats, build the tiny model, and save both as one HF folder.

    Returns ``out_dir``, which ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load
    offline. Takes about a second.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(world_chats(world))
    model = build_tiny_model(tokenizer, seed=seed, size=size)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return out_dir
