"""Response-only loss masks: the exact trained tokens on hand-checked single- and multi-turn examples."""

import copy

import pytest

from alignkit.data.formats import DataError, Message
from alignkit.data.templates import (
    BUILTIN_TEMPLATE,
    ensure_chat_template,
    tokenize_conversation,
    tokenize_prompt,
)

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def conv(*pairs):
    return tuple(Message(role, content) for role, content in pairs)


def ids(tok, text):
    return list(tok(text, add_special_tokens=False)["input_ids"])


def trained(row):
    return [i for i, m in zip(row.input_ids, row.loss_mask) if m]


def test_single_turn_mask_is_exactly_the_response_and_end(demo_tokenizer):
    tok = demo_tokenizer
    row = tokenize_conversation(tok, conv(("user", "What is 2 + 3?"), ("assistant", "2 + 3 = 5.")))
    prompt = ids(tok, "<|user|>\nWhat is 2 + 3?<|end|>\n<|assistant|>\n")
    response = ids(tok, "2 + 3 = 5.") + ids(tok, "<|end|>\n")
    assert list(row.input_ids) == prompt + response
    assert list(row.loss_mask) == [0] * len(prompt) + [1] * len(response)
    assert tok.decode(trained(row)) == "2 + 3 = 5.<|end|>\n"


def test_multi_turn_masks_every_assistant_turn_and_nothing_else(demo_tokenizer):
    tok = demo_tokenizer
    messages = conv(("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "1 + 1?"),
                    ("assistant", "1 + 1 = 2."))
    row = tokenize_conversation(tok, messages)
    expected_ids, expected_mask = [], []
    for text, m in [("<|system|>\nBe kind.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n", 0), ("Hello!<|end|>\n", 1),
                    ("<|user|>\n1 + 1?<|end|>\n<|assistant|>\n", 0), ("1 + 1 = 2.<|end|>\n", 1)]:
        piece = ids(tok, text)
        expected_ids += piece
        expected_mask += [m] * len(piece)
    assert list(row.input_ids) == expected_ids and list(row.loss_mask) == expected_mask
    last = tokenize_conversation(tok, messages, loss_on="last_turn")
    assert list(last.input_ids) == expected_ids
    assert tok.decode(trained(last)) == "1 + 1 = 2.<|end|>\n"


def test_first_trained_skips_earlier_assistant_turns(demo_tokenizer):
    messages = conv(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))
    row = tokenize_conversation(demo_tokenizer, messages, first_trained=2)
    assert demo_tokenizer.decode(trained(row)) == "d<|end|>\n"


def test_tokenizer_own_template_is_used(demo_tokenizer):
    tok = copy.deepcopy(demo_tokenizer)
    tok.chat_template = CHATML
    assert ensure_chat_template(tok) is False and tok.chat_template == CHATML
    row = tokenize_conversation(tok, conv(("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")))
    assert tok.decode(row.input_ids) == ("<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
                                         "<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\na2<|im_end|>\n")
    pieces = [tok.decode([i for i, m in zip(row.input_ids, row.loss_mask) if m])]
    assert pieces == ["a1<|im_end|>\na2<|im_end|>\n"]
    assert tok.decode(tokenize_prompt(tok, conv(("user", "q")))) == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"


def test_builtin_template_installed_with_markers(demo_tokenizer):
    tok = copy.deepcopy(demo_tokenizer)
    tok.chat_template = None
    assert ensure_chat_template(tok) is True
    assert tok.chat_template == BUILTIN_TEMPLATE and tok.eos_token == "<|end|>"


def test_template_that_rewrites_history_is_refused(demo_tokenizer):
    tok = copy.deepcopy(demo_tokenizer)
    # A template that shows only the last message: earlier text disappears as turns are added.
    tok.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(DataError, match="does not render conversations incrementally"):
        tokenize_conversation(tok, conv(("user", "a"), ("assistant", "b")))


def test_truncation_flags_and_cuts(demo_tokenizer):
    row = tokenize_conversation(demo_tokenizer, conv(("user", "What is 2 + 3?"), ("assistant", "2 + 3 = 5.")),
                                max_length=10)
    assert row.truncated and len(row.input_ids) == 10 and sum(row.loss_mask) == 0
