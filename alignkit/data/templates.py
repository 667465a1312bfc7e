"""Chat templates and response-only loss masks.

The tokenizer's own ``chat_template`` is used when it has one. Otherwise alignkit installs ``BUILTIN_TEMPLATE``:

    <|system|>\n{content}<|end|>\n      (only when a system message is present)
    <|user|>\n{content}<|end|>\n
    <|assistant|>\n{content}<|end|>\n
    ...and, to ask for a reply, the generation prompt ``<|assistant|>\n``.

With tools (``apply_chat_template(..., tools=[schema, ...])``) the built-in template is alignkit's documented
tool format: a leading system turn lists each tool as ``name(arg: type, ...): description`` (kept short: small
models pay for every token; the call format is learned from demonstrations); an assistant turn's calls follow
its text as Llama 3.2's "pythonic" list, ``[calculator(expression="347 * 28")]`` (a third of the tokens of Hermes
JSON); a tool result is a user turn ``<tool_response>\n{result}\n</tool_response>`` (as Qwen's). No new special
tokens: a tokenizer built before tools existed renders every conversation without tools unchanged.

``model.chat_template: none`` installs ``RAW_TEMPLATE`` instead, for completion models: the messages' strings are
concatenated as they are, each assistant turn followed by the tokenizer's own EOS, and nothing else is added (no
markers, no new tokens, the EOS untouched). It is meant for single-turn prompt / response data.

``<|end|>`` closes every turn and is the end-of-sequence token, so a model trained on it learns to stop. The four
markers are added to the tokenizer as special tokens when missing (which grows the vocabulary: the model's
embeddings are resized to match at load time).
"""

from __future__ import annotations

BUILTIN_ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
BUILTIN_END = "<|end|>"
BUILTIN_TOOL_HEADER = "Tools:"
BUILTIN_TOOL_MARK = "{# alignkit pythonic tool calls #}"  # lets the tool-call parser recognise this template
BUILTIN_TEMPLATE = (
    "{% if tools %}{{ '<|system|>\n" + BUILTIN_TOOL_HEADER + "\n' }}"
    "{% for tool in tools %}{% set f = tool.function if tool.function is defined else tool %}"
    "{{ f.name + '(' }}{% for arg, spec in f.parameters.properties.items() %}"
    "{{ arg + ': ' + spec.type }}{% if not loop.last %}{{ ', ' }}{% endif %}{% endfor %}"
    "{{ '): ' + (f.description or '') + '\n' }}{% endfor %}"
    "{{ '<|end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|user|>\n<tool_response>\n' + message['content'] + '\n</tool_response><|end|>\n' }}"
    "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message.get('tool_calls') %}" + BUILTIN_TOOL_MARK + "{{ '[' }}"
    "{% for call in message['tool_calls'] %}{% set f = call.function if call.function is defined else call %}"
    "{{ f.name + '(' }}{% for arg, value in f.arguments.items() %}{{ arg + '=' + value | tojson }}"
    "{% if not loop.last %}{{ ', ' }}{% endif %}{% endfor %}{{ ')' }}{% if not loop.last %}{{ ', ' }}{% endif %}"
    "{% endfor %}{{ ']' }}{% endif %}"
    "{{ '<|end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# model.chat_template: none. No generation prompt: the model continues the prompt's last character.
RAW_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)

import json  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from .formats import Conversation, DataError  # noqa: E402


@dataclass(frozen=True)
class Tokenized:
    input_ids: tuple[int, ...]  # (L,) whole rendered conversation
    loss_mask: tuple[int, ...]  # (L,) 1 on tokens the loss trains (assistant turns), 0 elsewhere
    truncated: bool = False  # cut to max_length


# The built-in template before it rendered tools: tokenizers saved by earlier alignkit runs carry it. It renders
# every conversation without tools exactly as BUILTIN_TEMPLATE does, so it is upgraded in place on load.
LEGACY_BUILTIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer) -> bool:
    """Install the built-in template (and its marker tokens) when the tokenizer has none; True if installed. An
    earlier alignkit's built-in template is replaced by today's (the same text without tools, tools besides)."""
    if getattr(tokenizer, "chat_template", None) == LEGACY_BUILTIN_TEMPLATE:
        tokenizer.chat_template = BUILTIN_TEMPLATE
        return False
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


def render(tokenizer, messages, add_generation_prompt: bool = False, tools: list[dict] | None = None) -> str:
    """The conversation (``Message``s or chat-template dicts) as text through the tokenizer's chat template, with
    the tool schemas ``tools`` when given."""
    if not messages:
        return ""
    as_dicts = [m.as_dict() if hasattr(m, "as_dict") else m for m in messages]
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(as_dicts, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)


def schemas(tools: str | list | None) -> list[dict] | None:
    """Tool schemas as a record carries them (a JSON string) or as a list; None for none."""
    if isinstance(tools, str):
        return json.loads(tools) if tools else None
    return tools or None


def _segments(tokenizer, messages: Conversation, first_trained: int, last_only: bool,
              tools: list[dict] | None = None) -> list[tuple[str, bool]]:
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
            boundaries.append((render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools), False))
        boundaries.append((render(tokenizer, messages[: i + 1], tools=tools), i in trained))
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
                          max_length: int | None = None, tools: str | list | None = None) -> Tokenized:
    """Token ids of the rendered conversation and its response-only loss mask.

    loss_on: "assistant" trains every assistant turn at index >= first_trained; "last_turn" only the last one;
    "all" every token (the prompt and the template's markup too: continued pretraining on dialogues).
    Pieces are tokenized separately and concatenated, so a mask boundary never falls inside a token. ``tools``:
    the record's tool schemas, rendered by the template (tool turns and tool results are context, never trained).
    """
    ids: list[int] = []
    mask: list[int] = []
    for text, trained in _segments(tokenizer, messages, first_trained, loss_on == "last_turn", schemas(tools)):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        mask.extend([int(trained or loss_on == "all")] * len(piece))
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    return Tokenized(tuple(ids), tuple(mask), truncated)


def tokenize_prompt(tokenizer, prompt: Conversation, tools: list[dict] | None = None) -> list[int]:
    """Token ids of a prompt followed by the generation prompt (what the model continues from), with the tool
    schemas an environment offers."""
    return tokenizer(render(tokenizer, prompt, add_generation_prompt=True, tools=tools),
                     add_special_tokens=False)["input_ids"]
