"""Chat templates and response-only loss masks.

The tokenizer's own ``chat_template`` is used when it has one. Otherwise alignkit installs ``BUILTIN_TEMPLATE``:

    <|system|>\n{content}<|end|>\n      (only when a system message is present)
    <|user|>\n{content}<|end|>\n
    <|assistant|>\n{content}<|end|>\n
    ...and, to ask for a reply, the generation prompt ``<|assistant|>\n``.

``<|end|>`` closes every turn and is the end-of-sequence token, so a model trained on it learns to stop. The four
markers are added to the tokenizer as special tokens when missing (which grows the vocabulary: the model's
embeddings are resized to match at load time).
"""

from __future__ import annotations

BUILTIN_ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
BUILTIN_END = "<|end|>"
BUILTIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

from dataclasses import dataclass  # noqa: E402

from .formats import Conversation, DataError  # noqa: E402


@dataclass(frozen=True)
class Tokenized:
    input_ids: tuple[int, ...]  # (L,) whole rendered conversation
    loss_mask: tuple[int, ...]  # (L,) 1 on tokens the loss trains (assistant turns), 0 elsewhere
    truncated: bool = False  # cut to max_length


def ensure_chat_template(tokenizer) -> bool:
    """Install the built-in template (and its marker tokens) when the tokenizer has none; True if installed."""
    if getattr(tokenizer, "chat_template", None):
        return False
    missing = [t for t in (*BUILTIN_ROLE_TOKENS.values(), BUILTIN_END) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.chat_template = BUILTIN_TEMPLATE
    tokenizer.eos_token = BUILTIN_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = BUILTIN_END
    return True


def render(tokenizer, messages: Conversation, add_generation_prompt: bool = False) -> str:
    """The conversation as text through the tokenizer's chat template."""
    if not messages:
        return ""
    as_dicts = [{"role": m.role, "content": m.content} for m in messages]
    return tokenizer.apply_chat_template(as_dicts, tokenize=False, add_generation_prompt=add_generation_prompt)


def _segments(tokenizer, messages: Conversation, first_trained: int, last_only: bool) -> list[tuple[str, bool]]:
    """Split the rendered conversation into consecutive (text, trained) pieces.

    Each assistant turn i is located by rendering the prefix ``messages[:i]`` with the generation prompt and the
    prefix ``messages[:i+1]`` without: the text between the two is exactly what the model must produce for that
    turn (its content plus the template's end-of-turn marker). This works for any template that renders
    conversations incrementally, which is checked, not assumed.
    """
    assistant_turns = [i for i, m in enumerate(messages) if m.role == "assistant" and i >= first_trained]
    trained = set(assistant_turns[-1:] if last_only else assistant_turns)
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        boundaries = []
        if message.role == "assistant":
            boundaries.append((render(tokenizer, messages[:i], add_generation_prompt=True), False))
        boundaries.append((render(tokenizer, messages[: i + 1]), i in trained))
        for text, is_trained in boundaries:
            if not text.startswith(done):
                raise DataError(
                    f"the chat template does not render conversations incrementally (turn {i + 1} rewrites earlier "
                    "text), so response tokens cannot be located; use a template without history rewriting"
                )
            pieces.append((text[len(done):], is_trained))
            done = text
    return pieces


def tokenize_conversation(tokenizer, messages: Conversation, loss_on: str = "assistant", first_trained: int = 0,
                          max_length: int | None = None) -> Tokenized:
    """Token ids of the rendered conversation and its response-only loss mask.

    loss_on: "assistant" trains every assistant turn at index >= first_trained; "last_turn" only the last one.
    Pieces are tokenized separately and concatenated, so a mask boundary never falls inside a token.
    """
    ids: list[int] = []
    mask: list[int] = []
    for text, trained in _segments(tokenizer, messages, first_trained, loss_on == "last_turn"):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        mask.extend([int(trained)] * len(piece))
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    return Tokenized(tuple(ids), tuple(mask), truncated)


def tokenize_prompt(tokenizer, prompt: Conversation) -> list[int]:
    """Token ids of a prompt followed by the generation prompt (what the model continues from)."""
    return tokenizer(render(tokenizer, prompt, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
