"""Record converters: exact conversations for every format, and one-line errors naming where and the field."""

import re

import pytest

from alignkit.data.formats import (
    FORMATS,
    PREFERENCE_FORMATS,
    RANKED_FORMATS,
    SFT_FORMATS,
    DataError,
    Message,
    PreferenceExample,
    PromptExample,
    RankedExample,
    SFTExample,
    UnpairedExample,
    detect_format,
    to_alpaca,
    to_hh,
    to_messages,
    to_pairwise,
    to_prompt,
    to_prompt_response,
    to_ranked,
    to_unpaired,
)

W = "data/train.jsonl line 41"


def user(text: str) -> Message:
    return Message("user", text)


def assistant(text: str) -> Message:
    return Message("assistant", text)


def system(text: str) -> Message:
    return Message("system", text)


def fails(fragment: str):
    """The error must contain this exact text (where, field and expectation), not merely match loosely."""
    return pytest.raises(DataError, match=re.escape(fragment))


# ---- SFT -------------------------------------------------------------------------------------------------------


def test_prompt_response():
    example = to_prompt_response({"prompt": "Hi?", "response": "Hello."}, W)
    assert example == SFTExample((user("Hi?"), assistant("Hello.")), W)


def test_prompt_response_with_system():
    example = to_prompt_response({"prompt": "Hi?", "response": "Hello.", "system": "Be brief."}, W)
    assert example.messages == (system("Be brief."), user("Hi?"), assistant("Hello."))


def test_alpaca_appends_input_after_blank_line():
    record = {"instruction": "Translate.", "input": "chat", "output": "cat", "system": "S"}
    assert to_alpaca(record, W).messages == (system("S"), user("Translate.\n\nchat"), assistant("cat"))


@pytest.mark.parametrize("extra", [{}, {"input": ""}, {"input": None}, {"system": float("nan")}])
def test_alpaca_without_input_or_with_empty_cells(extra):
    record = {"instruction": "Say hi.", "output": "hi", **extra}
    assert to_alpaca(record, W).messages == (user("Say hi."), assistant("hi"))


def test_messages():
    record = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    }
    expected = (system("S"), user("a"), assistant("b"), user("c"), assistant("d"))
    assert to_messages(record, W) == SFTExample(expected, W)


def test_messages_sharegpt_under_conversations_with_system_field():
    record = {
        "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
        "system": "S",
    }
    assert to_messages(record, W).messages == (system("S"), user("a"), assistant("b"))


def test_messages_without_assistant_turn():
    with fails(f'{W}: field "messages" has no assistant turn'):
        to_messages({"messages": [{"role": "user", "content": "a"}]}, W)


def test_system_field_and_system_turn_conflict():
    record = {
        "messages": [{"role": "system", "content": "S"}, {"role": "assistant", "content": "b"}],
        "system": "T",
    }
    with fails(f'{W}: field "system" is given but the conversation already starts with a system turn'):
        to_messages(record, W)


# ---- message and text errors ------------------------------------------------------------------------------------


def _dialogue(*items: dict) -> dict:
    return {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, *items]}


def test_bad_role():
    with fails(f'{W}: field "messages[2].role" is "bot", expected one of system, user, assistant, tool'):
        to_messages(_dialogue({"role": "bot", "content": "x"}), W)


def test_missing_content():
    with fails(f'{W}: field "messages[2].content" is missing (have: role)'):
        to_messages(_dialogue({"role": "user"}), W)


def test_empty_content():
    with fails(f'{W}: field "messages[2].content" must be a non-empty string, got an empty string'):
        to_messages(_dialogue({"role": "user", "content": "  "}), W)


def test_message_not_an_object():
    with fails(f'{W}: field "messages[2]" must be an object with "role" and "content", got str'):
        to_messages(_dialogue("hello"), W)


def test_bad_sharegpt_speaker():
    with fails(f'{W}: field "conversations[0].from" is "bot", expected one of human, gpt, system'):
        to_messages({"conversations": [{"from": "bot", "value": "x"}]}, W)


def test_messages_not_a_list():
    with fails(f'{W}: field "messages" must be a non-empty list of messages, got an empty list'):
        to_messages({"messages": []}, W)


def test_response_of_wrong_type():
    with fails('data/x.jsonl line 3: field "response" must be a non-empty string, got int'):
        to_prompt_response({"prompt": "p", "response": 7}, "data/x.jsonl line 3")


def test_empty_required_text():
    with fails(f'{W}: field "prompt" must be a non-empty string, got an empty string'):
        to_prompt_response({"prompt": "", "response": "r"}, W)


def test_nan_cell_named():
    with fails(f'{W}: field "output" must be a non-empty string, got NaN (an empty cell?)'):
        to_alpaca({"instruction": "i", "output": float("nan")}, W)


def test_missing_field_lists_what_is_there():
    with fails(f'{W}: field "response" is missing (have: prompt, system)'):
        to_prompt_response({"prompt": "p", "system": "s"}, W)


# ---- preference -------------------------------------------------------------------------------------------------


def test_pairwise_strings():
    example = to_pairwise({"prompt": "Q", "chosen": "good", "rejected": "bad", "margin": 2}, W)
    assert example == PreferenceExample(
        (user("Q"),), (assistant("good"),), (assistant("bad"),), W, margin=2.0
    )


def test_pairwise_message_prompt_and_continuations():
    record = {
        "prompt": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    example = to_pairwise(record, W)
    assert example.prompt == (user("a"), assistant("b"), user("c"))
    assert (example.chosen, example.rejected, example.margin) == (
        (assistant("good"),),
        (assistant("bad"),),
        None,
    )


def _turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


def test_pairwise_infers_prompt_from_shared_turns():
    shared = (("system", "S"), ("user", "a"), ("assistant", "b"), ("user", "c"))
    record = {
        "chosen": _turns(*shared, ("assistant", "good"), ("user", "more"), ("assistant", "good again")),
        "rejected": _turns(*shared, ("assistant", "bad")),
    }
    example = to_pairwise(record, W)
    assert example.prompt == (system("S"), user("a"), assistant("b"), user("c"))
    assert example.chosen == (assistant("good"), user("more"), assistant("good again"))
    assert example.rejected == (assistant("bad"),)


def test_pairwise_checks_a_prompt_given_with_whole_dialogues():
    record = {
        "prompt": "a",
        "chosen": _turns(("user", "a"), ("assistant", "y")),
        "rejected": _turns(("user", "a"), ("assistant", "n")),
    }
    assert to_pairwise(record, W).prompt == (user("a"),)
    with fails(f'{W}: field "prompt" does not match the 1 leading turns "chosen" and "rejected" share'):
        to_pairwise({**record, "prompt": "other"}, W)


def test_pairwise_missing_chosen():
    with fails(f'{W}: field "chosen" is missing (have: prompt, rejected)'):
        to_pairwise({"prompt": "p", "rejected": "r"}, W)


def test_pairwise_strings_need_a_prompt():
    with fails(f'{W}: field "prompt" is missing (have: chosen, rejected)'):
        to_pairwise({"chosen": "c", "rejected": "r"}, W)


def test_pairwise_identical_dialogues():
    turns = _turns(("user", "a"), ("assistant", "b"))
    with fails(f'{W}: field "chosen[2:]" is empty'):
        to_pairwise({"chosen": turns, "rejected": list(turns)}, W)


def test_pairwise_continuation_must_start_with_assistant():
    record = {
        "chosen": _turns(("user", "a"), ("user", "x"), ("assistant", "b")),
        "rejected": _turns(("user", "a"), ("assistant", "c")),
    }
    with fails(f'{W}: field "chosen[1:]" must start with an assistant turn, got "user"'):
        to_pairwise(record, W)


def test_pairwise_explicit_prompt_continuation_must_start_with_assistant():
    with fails(f'{W}: field "chosen" and "rejected" share no leading turns'):
        to_pairwise({"chosen": _turns(("user", "a")), "rejected": _turns(("assistant", "b"))}, W)


def test_pairwise_bad_margin():
    with fails(f'{W}: field "margin" must be a number, got str'):
        to_pairwise({"prompt": "p", "chosen": "c", "rejected": "r", "margin": "big"}, W)


HH_PROMPT = "\n\nHuman: How do I bake bread?\n\nAssistant: Flour, water, yeast.\n\nHuman: How long?  "


def test_hh_multi_turn():
    record = {
        "chosen": HH_PROMPT + "\n\nAssistant:  About an hour at 220C. \n",
        "rejected": HH_PROMPT + "\n\nAssistant: Forever.",
    }
    example = to_hh(record, W)
    assert example.prompt == (
        user("How do I bake bread?"),
        assistant("Flour, water, yeast."),
        user("How long?"),
    )
    assert example.chosen == (assistant("About an hour at 220C."),)
    assert example.rejected == (assistant("Forever."),)
    assert example.margin is None


def test_hh_without_leading_blank_line():
    example = to_hh(
        {"chosen": "Human: hi\n\nAssistant: hello", "rejected": "Human: hi\n\nAssistant: go away"}, W
    )
    assert (example.prompt, example.chosen) == ((user("hi"),), (assistant("hello"),))


def test_hh_prompts_must_match():
    record = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: x\n\nAssistant: b"}
    with fails(f'{W}: field "rejected" differs from "chosen" before its last "Assistant:"'):
        to_hh(record, W)


def test_hh_not_a_transcript():
    with fails(f'{W}: field "chosen" must be an HH transcript'):
        to_hh({"chosen": "just text", "rejected": "\n\nHuman: a\n\nAssistant: b"}, W)


def test_hh_empty_final_turn():
    with fails(f'{W}: field "rejected" has an empty "Assistant:" turn (turn 2 of 2)'):
        to_hh({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant:"}, W)


def test_hh_must_end_with_assistant():
    with fails(f'{W}: field "chosen" must end with an "Assistant:" turn'):
        to_hh(
            {
                "chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c",
                "rejected": "\n\nHuman: a\n\nAssistant: b",
            },
            W,
        )


# ---- ranked, prompt-only, unpaired -------------------------------------------------------------------------------


def test_ranked():
    record = {"prompt": "Q", "responses": ["best", [{"role": "assistant", "content": "mid"}], "worst"]}
    expected = RankedExample(
        (user("Q"),), ((assistant("best"),), (assistant("mid"),), (assistant("worst"),)), W
    )
    assert to_ranked(record, W) == expected


def test_ranked_needs_two():
    with fails(
        f'{W}: field "responses" must be a list of at least 2 responses (best first), got a list of 1'
    ):
        to_ranked({"prompt": "Q", "responses": ["only"]}, W)


def test_ranked_bad_item():
    with fails(f'{W}: field "responses[1]" must be a non-empty string, got an empty string'):
        to_ranked({"prompt": "Q", "responses": ["a", ""]}, W)


def test_prompt_keeps_other_fields():
    example = to_prompt({"prompt": "2+2?", "system": "S", "answer": "4", "id": 7}, W)
    assert example == PromptExample((system("S"), user("2+2?")), W, {"answer": "4", "id": 7})


def test_prompt_must_end_with_user_turn():
    with fails(f'{W}: field "prompt" must end with a user turn, got a final "assistant" turn'):
        to_prompt({"prompt": _turns(("user", "a"), ("assistant", "b"))}, W)


@pytest.mark.parametrize(
    ("label", "expected"),
    [(True, True), (False, False), (1, True), (0, False), ("true", True), ("false", False), ("True", True)],
)
def test_unpaired_labels(label, expected):
    example = to_unpaired({"prompt": "Q", "completion": "A", "label": label}, W)
    assert example == UnpairedExample((user("Q"),), (assistant("A"),), expected, W)


@pytest.mark.parametrize("label", [2, "yes", 0.5, None, [True]])
def test_unpaired_bad_label(label):
    record = {"prompt": "Q", "completion": "A", "label": label}
    fragment = f'{W}: field "label" is missing' if label is None else f'{W}: field "label" is '
    with pytest.raises(DataError, match=re.escape(fragment) + r".*(expected true/false, 0/1|have:)"):
        to_unpaired(record, W)


# ---- detection --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "record", "expected"),
    [
        ("sft", {"prompt": "p", "response": "r"}, "prompt_response"),
        ("sft", {"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ("sft", {"messages": []}, "messages"),
        ("sft", {"conversations": []}, "messages"),
        ("preference", {"prompt": "p", "chosen": "c", "rejected": "r"}, "pairwise"),
        ("preference", {"chosen": [], "rejected": []}, "pairwise"),
        ("preference", {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "x"}, "hh"),
        ("ranked", {"prompt": "p", "responses": []}, "ranked"),
        ("prompt", {"prompt": "p", "answer": 1}, "prompt"),
        ("unpaired", {"prompt": "p", "completion": "c", "label": 0}, "unpaired"),
    ],
)
def test_detect_format(kind, record, expected):
    assert detect_format(record, kind, W) == expected
    assert expected in FORMATS[kind]


def test_detect_failure_lists_keys_and_formats():
    with pytest.raises(DataError) as info:
        detect_format({"question": "q", "answer": "a"}, "sft", W)
    message = str(info.value)
    assert message.startswith(f"{W}: cannot detect the sft format from the keys (have: question, answer)")
    assert all(name in message for name in SFT_FORMATS)


def test_detect_unknown_kind():
    with fails('unknown data kind "rl", expected one of sft, preference, ranked, prompt, unpaired'):
        detect_format({"prompt": "p"}, "rl", W)


def test_format_tables():
    assert set(SFT_FORMATS) == {"prompt_response", "alpaca", "messages", "text"}
    assert set(PREFERENCE_FORMATS) == {"pairwise", "hh"}
    assert set(RANKED_FORMATS) == {"ranked"}
    assert FORMATS["prompt"] == {"prompt": to_prompt} and FORMATS["unpaired"] == {"unpaired": to_unpaired}
