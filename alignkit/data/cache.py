"""Tokenised datasets cached between runs, so a short run does not spend its time re-rendering chat templates.

The key is a fingerprint of everything the tokenised rows depend on: the examples themselves (their content, so
any source, file or hub, is covered and an edited file misses), the tokenizer (its vocabulary and merges, special
tokens, chat template), the limits (``max_length``, ``overlong``, ``loss_on``), the tokenising function, the
source of alignkit's templates and tokenizing code, and the transformers and tokenizers versions. Files live in ``$ALIGNKIT_CACHE_DIR/tokenized`` (default ``~/.cache/alignkit``), written
atomically; a file that cannot be read is recomputed. ``data.cache_tokenized: false`` turns it off. The files are
Python pickles that alignkit writes for itself: do not load cache folders from people you do not trust.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import DataConfig

FORMAT_VERSION = 1  # bump when a tokenising function's output changes for the same inputs


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGNKIT_CACHE_DIR") or Path.home() / ".cache" / "alignkit") / "tokenized"


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides how a tokenizer renders and splits text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return "\n".join([type(tokenizer).__name__, vocab, repr(getattr(tokenizer, "chat_template", None)),
                      repr(sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items())),
                      repr(getattr(tokenizer, "add_bos_token", None)), repr(getattr(tokenizer, "add_eos_token", None))])


def code_fingerprint(fn: Callable) -> str:
    """The versions and code that render and split text: transformers, tokenizers, and alignkit's chat templates,
    tokenizing helpers and the module of ``fn`` (their source), so an upgrade of any of them misses."""
    import inspect

    import tokenizers
    import transformers

    from . import prepare, templates

    modules = {templates, prepare, inspect.getmodule(fn)}
    return "\n".join([transformers.__version__, tokenizers.__version__,
                      *sorted(inspect.getsource(m) for m in modules if m is not None)])


def fingerprint(fn: Callable, examples: Sequence, tokenizer, data: DataConfig, extra: dict | None = None) -> str:
    digest = hashlib.sha256()
    for part in (f"v{FORMAT_VERSION}", code_fingerprint(fn), f"{fn.__module__}.{fn.__qualname__}",
                 tokenizer_fingerprint(tokenizer), repr((data.max_length, data.overlong, data.loss_on)),
                 repr(sorted((extra or {}).items()))):
        digest.update(part.encode())
        digest.update(b"\0")
    for example in examples:
        digest.update(repr(example).encode())
    return digest.hexdigest()[:32]


def cached(fn: Callable[..., Any], examples: Sequence, tokenizer, data: DataConfig, name: str, **extra: Any) -> Any:
    """``fn(examples, tokenizer, data, name, **extra)``, from the cache when the same inputs were tokenised
    before (``extra``, such as an environment's tool schemas, is part of the key)."""
    if not data.cache_tokenized or not examples:
        return fn(examples, tokenizer, data, name, **extra)
    from ..checkpoint import atomic_write_bytes

    path = cache_dir() / f"{fn.__name__}-{fingerprint(fn, examples, tokenizer, data, extra)}.pkl"
    if path.is_file():
        try:
            return pickle.loads(path.read_bytes())
        except Exception:  # a truncated or foreign file: recompute and overwrite it
            pass
    result = fn(examples, tokenizer, data, name, **extra)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    except OSError:  # a read-only home: the run goes on uncached
        pass
    return result
