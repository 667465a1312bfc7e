"""Tokenized datasets cached between runs: a hit returns what tokenizing returns, and anything the rows depend on
(the examples, the limits, the tokenizer's template) misses."""

from dataclasses import replace

import pytest

from alignkit.config import SFTConfig
from alignkit.data import cache
from alignkit.data.loading import load_examples
from alignkit.data.prepare import tokenize_sft
from alignkit.demo.assets import demo_data


@pytest.fixture()
def counted(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNKIT_CACHE_DIR", str(tmp_path))
    calls = []

    def tokenize(examples, tokenizer, data, name):
        calls.append(name)
        return tokenize_sft(examples, tokenizer, data, name)

    tokenize.__name__ = tokenize.__qualname__ = "tokenize_sft"
    return tokenize, calls


def test_a_hit_returns_the_tokenized_rows_and_a_change_misses(counted, demo_tokenizer, tmp_path):
    fn, calls = counted
    examples = load_examples(str(demo_data("sft")), "sft")[:20]
    data = SFTConfig().data
    first = cache.cached(fn, examples, demo_tokenizer, data, "train")
    again = cache.cached(fn, examples, demo_tokenizer, data, "train")
    assert again == first == tokenize_sft(examples, demo_tokenizer, data, "train") and len(calls) == 1
    assert len(list((tmp_path / "tokenized").iterdir())) == 1
    # each input the rows depend on is part of the key
    cache.cached(fn, examples, demo_tokenizer, data.model_copy(update={"max_length": 24}), "train")
    edited = [replace(examples[0], messages=examples[0].messages[:-1] + (replace(examples[0].messages[-1], content="x"),)),
              *examples[1:]]
    cache.cached(fn, edited, demo_tokenizer, data, "train")
    assert len(calls) == 3
    template = demo_tokenizer.chat_template
    try:
        demo_tokenizer.chat_template = template.replace("<|", "<||")
        cache.cached(fn, examples, demo_tokenizer, data, "train")
    finally:
        demo_tokenizer.chat_template = template
    assert len(calls) == 4
    # a damaged file is recomputed, and switching the cache off writes nothing
    for path in (tmp_path / "tokenized").iterdir():
        path.write_bytes(b"not a pickle")
    assert cache.cached(fn, examples, demo_tokenizer, data, "train") == first and len(calls) == 5
    off = data.model_copy(update={"cache_tokenized": False, "max_length": 30})
    before = set((tmp_path / "tokenized").iterdir())
    cache.cached(fn, examples, demo_tokenizer, off, "train")
    assert set((tmp_path / "tokenized").iterdir()) == before and len(calls) == 6
