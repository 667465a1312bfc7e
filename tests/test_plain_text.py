"""Plain text (``{"text"}`` records, ``.txt`` files), ``data.loss_on: all`` and ``model.chat_template: none``."""

from __future__ import annotations

import json

import pytest

from alignkit.config import DataConfig, ModelConfig
from alignkit.data.formats import DataError, Message, SFTExample, TextExample
from alignkit.data.loading import load_examples
from alignkit.data.prepare import sample_prompts, tokenize_sft, tokenize_text
from alignkit.data.templates import RAW_TEMPLATE, tokenize_conversation
from alignkit.models import load_tokenizer


def test_txt_file_is_one_record_per_paragraph(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\nsecond line\n\n\nthird paragraph\n  \nlast one")
    examples = load_examples(str(path), "sft")
    assert examples == [TextExample("first line\nsecond line", f"{path} line 1"),
                        TextExample("third paragraph", f"{path} line 5"),
                        TextExample("last one", f"{path} line 7")]


def test_text_records_are_detected_and_validated(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "a document"}) + "\n" + json.dumps({"text": ""}) + "\n")
    with pytest.raises(DataError, match=rf"^{path} line 2: .*text"):
        load_examples(str(path), "sft")


def test_text_is_split_into_chunks_not_cut(demo_tokenizer):
    tok = demo_tokenizer
    text = "the cat sat on the mat " * 12
    ids = tok(text)["input_ids"] + [tok.eos_token_id]
    chunks = tokenize_text(tok, text, max_length=16)
    assert [len(c.input_ids) for c in chunks[:-1]] == [16] * (len(chunks) - 1)
    assert [t for c in chunks for t in c.input_ids] == ids  # every token kept, in order, EOS last
    assert all(c.loss_mask == (1,) * len(c.input_ids) for c in chunks)

    rows, report = tokenize_sft([TextExample(text, "x line 1")], tok, DataConfig(max_length=16), "train")
    assert report.kept == len(rows) == len(chunks) - (len(ids) % 16 == 1)  # a lone last token has no target
    with pytest.raises(DataError, match="^x line 1: data.overlong = drop has no effect on text records"):
        tokenize_sft([TextExample(text, "x line 1")], tok, DataConfig(max_length=16, overlong="drop"), "train")


def test_loss_on_all_trains_every_token(demo_tokenizer):
    messages = (Message("system", "be kind"), Message("user", "2 + 2?"), Message("assistant", "4"))
    assistant = tokenize_conversation(demo_tokenizer, messages)
    everything = tokenize_conversation(demo_tokenizer, messages, loss_on="all")
    assert everything.input_ids == assistant.input_ids
    assert everything.loss_mask == (1,) * len(everything.input_ids)
    assert 0 < sum(assistant.loss_mask) < len(assistant.input_ids)


@pytest.fixture(scope="module")
def plain_tokenizer_dir(tmp_path_factory, demo_base):
    """A tokenizer with no chat template (as a base model's): the demo's BPE with its template removed."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("plain")
    tok = AutoTokenizer.from_pretrained(demo_base)
    tok.chat_template = None
    tok.save_pretrained(folder)
    return folder


def test_no_template_concatenates_raw_strings_and_leaves_the_tokenizer_untouched(plain_tokenizer_dir):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(plain_tokenizer_dir)
    tok = load_tokenizer(ModelConfig(name_or_path=str(plain_tokenizer_dir), chat_template="none"))
    assert tok.chat_template == RAW_TEMPLATE
    assert (len(tok), tok.eos_token, tok.get_vocab()) == (len(plain), plain.eos_token, plain.get_vocab())

    example = SFTExample((Message("user", "Q: 3 + 4 = "), Message("assistant", "7")), "x line 1")
    row = tokenize_conversation(tok, example.messages)
    prompt = plain("Q: 3 + 4 = ", add_special_tokens=False)["input_ids"]
    answer = plain("7", add_special_tokens=False)["input_ids"] + [plain.eos_token_id]
    assert row.input_ids == tuple(prompt + answer)
    assert row.loss_mask == (0,) * len(prompt) + (1,) * len(answer)

    # the built-in chat template spends tokens on role markers that the raw strings do not
    chat = tokenize_conversation(load_tokenizer(ModelConfig(name_or_path=str(plain_tokenizer_dir))), example.messages)
    assert len(chat.input_ids) > len(row.input_ids)


def test_text_samples_are_raw_openings():
    prompts, references = sample_prompts([TextExample("one two three four", "x"),
                                          SFTExample((Message("user", "hi"), Message("assistant", "yo")), "y")], 4)
    assert prompts == ["one two", (Message("user", "hi"),)]
    assert references == [" three four", "yo"]


def test_sft_on_a_txt_corpus_learns_it(demo_base, tmp_path):
    """Continued pretraining on a .txt file, packed: the held-out perplexity of the same kind of text falls."""
    from alignkit.config import SFTConfig, validate
    from alignkit.recipes.sft import train

    lines = [f"the {c} cat sat on the {m} mat" for c in ("red", "big", "old", "shy") for m in ("blue", "flat", "warm")]
    (tmp_path / "train.txt").write_text("\n\n".join(lines * 4))
    (tmp_path / "eval.txt").write_text("\n\n".join(lines[:4]))
    cfg = validate(SFTConfig, {
        "model": {"name_or_path": str(demo_base), "device": "cpu"},
        "data": {"train": str(tmp_path / "train.txt"), "eval": str(tmp_path / "eval.txt"), "max_length": 32,
                 "packing": True, "pack_length": 128, "duplicates": "keep", "cache_tokenized": False},
        "train": {"max_steps": 20, "batch_size": 8, "lr": 1e-2, "warmup_steps": 1},
        "run": {"output_dir": str(tmp_path / "run"), "progress": False, "num_samples": 1, "sample_max_new_tokens": 4}})
    summary = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "training_metrics.jsonl").read_text().splitlines()]
    first_loss = next(r["loss/train"] for r in rows if "loss/train" in r)
    assert summary["final"]["loss/eval"] < 0.5 * first_loss
    sample = json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[-1])
    assert sample["prompt"] == "the red cat sat"  # a raw opening, no chat template
