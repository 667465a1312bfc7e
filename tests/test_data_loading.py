"""Reading files and Hub datasets into (where, record) pairs, converting them, and the train/eval split."""

import json
import re

import pandas as pd
import pytest

from alignkit.data.formats import DataError, Message, PreferenceExample, SFTExample, UnpairedExample
from alignkit.data.loading import load_examples, read_records, train_eval_split

ROWS = [
    {"prompt": "Q1", "response": "A1"},
    {"prompt": "Q2", "response": "A2", "system": "S"},
]


def fails(fragment: str):
    return pytest.raises(DataError, match=re.escape(fragment))


def write_jsonl(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


# ---- jsonl ------------------------------------------------------------------------------------------------------


def test_jsonl_round_trip_skips_blank_lines(tmp_path):
    source = write_jsonl(tmp_path / "train.jsonl", [json.dumps(ROWS[0]), "", "   ", json.dumps(ROWS[1])])
    assert read_records(source) == [(f"{source} line 1", ROWS[0]), (f"{source} line 4", ROWS[1])]


def test_jsonl_malformed_line(tmp_path):
    source = write_jsonl(
        tmp_path / "train.jsonl", [json.dumps(ROWS[0]), json.dumps(ROWS[1]), '{"prompt": "Q3",']
    )
    with pytest.raises(
        DataError, match=re.escape(f"{source} line 3: invalid JSON (") + r"Expecting .* at column \d+\)"
    ):
        read_records(source)


def test_jsonl_line_not_an_object(tmp_path):
    source = write_jsonl(tmp_path / "train.jsonl", [json.dumps(ROWS[0]), "[1, 2]"])
    with fails(f"{source} line 2: expected a JSON object, got array"):
        read_records(source)


def test_jsonl_conversion_error_names_its_line(tmp_path):
    source = write_jsonl(
        tmp_path / "x.jsonl", [json.dumps(ROWS[0]), "", json.dumps({"prompt": "Q", "response": 5})]
    )
    with fails(f'{source} line 3: field "response" must be a non-empty string, got int'):
        load_examples(source, "sft")


# ---- json, parquet, csv -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [lambda rows: rows, lambda rows: {"data": rows}])
def test_json_round_trip(tmp_path, wrap):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(wrap(ROWS)), encoding="utf-8")
    assert read_records(str(path)) == [(f"{path} record 1", ROWS[0]), (f"{path} record 2", ROWS[1])]


def test_json_wrong_shape(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"train": ROWS, "test": ROWS}), encoding="utf-8")
    with fails(f"{path}: expected a list of objects, or an object holding one list"):
        read_records(str(path))


def test_json_record_not_an_object(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([ROWS[0], "oops"]), encoding="utf-8")
    with fails(f"{path} record 2: expected a JSON object, got string"):
        read_records(str(path))


def test_json_invalid(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[{"prompt": "a"},\n {"prompt": }]', encoding="utf-8")
    with fails(f"{path}: invalid JSON (Expecting value at line 2 column"):
        read_records(str(path))


def test_parquet_round_trip_with_message_lists(tmp_path):
    rows = [
        {
            "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}],
            "margin": 1.5,
        },
    ]
    path = tmp_path / "prefs.parquet"
    pd.DataFrame(rows).to_parquet(path)
    where = f"{path} row 1"
    assert read_records(str(path)) == [(where, rows[0])]
    expected = PreferenceExample(
        (Message("user", "Q"),), (Message("assistant", "good"),), (Message("assistant", "bad"),), where, 1.5
    )
    assert load_examples(str(path), "preference") == [expected]


def test_csv_round_trip_with_empty_cells(tmp_path):
    path = tmp_path / "kto.csv"
    frame = pd.DataFrame(
        {"prompt": ["Q1", "Q2"], "completion": ["A1", "A2"], "label": [True, False], "system": ["S", None]}
    )
    frame.to_csv(path, index=False)
    examples = load_examples(str(path), "unpaired")
    assert examples == [
        UnpairedExample(
            (Message("system", "S"), Message("user", "Q1")),
            (Message("assistant", "A1"),),
            True,
            f"{path} row 1",
        ),
        UnpairedExample((Message("user", "Q2"),), (Message("assistant", "A2"),), False, f"{path} row 2"),
    ]


def test_csv_error_names_row(tmp_path):
    path = tmp_path / "kto.csv"
    pd.DataFrame({"prompt": ["Q1", "Q2"], "completion": ["A1", "A2"], "label": [1, 3]}).to_csv(
        path, index=False
    )
    with fails(f'{path} row 2: field "label" is 3, expected true/false'):
        load_examples(str(path), "unpaired")


# ---- sources that are not there or not supported ----------------------------------------------------------------




@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"train{suffix}"
    path.write_bytes(b"")
    with fails(f"{path}: no records (the file is empty)"):
        read_records(str(path))


def test_blank_jsonl_is_empty(tmp_path):
    source = write_jsonl(tmp_path / "train.jsonl", ["", "  "])
    with fails(f"{source}: no records (the file is empty)"):
        read_records(source)


@pytest.mark.parametrize("name", ["data/missing.jsonl", "./missing", "/nowhere/at/all", "a/b/c"])
def test_missing_local_file(name, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("went to the Hub"))
    with fails(f"{name}: no such file"):
        read_records(name)


def test_other_names_go_to_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, subset, split):
        calls.append((name, subset, split))
        return datasets.Dataset.from_list([{**ROWS[0], "system": None}, ROWS[1]])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = read_records("someone/some-dataset", split="test", subset="clean")
    assert calls == [("someone/some-dataset", "clean", "test")]
    assert [where for where, _ in records] == [
        "someone/some-dataset[test] row 1",
        "someone/some-dataset[test] row 2",
    ]
    assert records[1][1] == {"prompt": "Q2", "response": "A2", "system": "S"}
    # Hub datasets have one schema for all rows: a row without a system prompt holds None, which counts as absent.
    assert load_examples("someone/some-dataset", "sft", split="test")[0].messages[0] == Message("user", "Q1")


def test_hub_failure_names_source(monkeypatch):
    import datasets

    def fake_load_dataset(name, subset, split):
        raise FileNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with fails(
        "nobody/nothing: not a local file, and loading it as a Hugging Face dataset failed (FileNotFoundError"
    ):
        read_records("nobody/nothing")


# ---- load_examples ----------------------------------------------------------------------------------------------


def test_load_examples_auto_and_explicit(tmp_path):
    source = write_jsonl(tmp_path / "train.jsonl", [json.dumps(row) for row in ROWS])
    expected = [
        SFTExample((Message("user", "Q1"), Message("assistant", "A1")), f"{source} line 1"),
        SFTExample(
            (Message("system", "S"), Message("user", "Q2"), Message("assistant", "A2")), f"{source} line 2"
        ),
    ]
    assert load_examples(source, "sft") == expected
    assert load_examples(source, "sft", "prompt_response") == expected


def test_load_examples_detects_once(tmp_path):
    alpaca = {"instruction": "i", "output": "o"}
    source = write_jsonl(tmp_path / "train.jsonl", [json.dumps(ROWS[0]), json.dumps(alpaca)])
    with fails(f'{source} line 2: field "prompt" is missing (have: instruction, output)'):
        load_examples(source, "sft")


def test_load_examples_detection_failure(tmp_path):
    source = write_jsonl(tmp_path / "train.jsonl", [json.dumps({"question": "q"})])
    with fails(
        f"{source} line 1: cannot detect the preference format from the keys (have: question); known: hh"
    ):
        load_examples(source, "preference")


def test_load_examples_unknown_kind_or_format(tmp_path):
    with fails('unknown data kind "rl"'):
        load_examples("unused.jsonl", "rl")
    with fails('unknown sft format "sharegpt", expected one of auto, prompt_response, alpaca, messages'):
        load_examples("unused.jsonl", "sft", "sharegpt")


def test_load_hh(tmp_path):
    record = {
        "chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: yes",
        "rejected": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: no",
    }
    source = write_jsonl(tmp_path / "hh.jsonl", [json.dumps(record)])
    (example,) = load_examples(source, "preference")
    prompt = (Message("user", "a"), Message("assistant", "b"), Message("user", "c"))
    assert example == PreferenceExample(
        prompt, (Message("assistant", "yes"),), (Message("assistant", "no"),), f"{source} line 1"
    )


# ---- train/eval split -------------------------------------------------------------------------------------------


def test_split_is_deterministic_and_partitions():
    examples = list(range(100))
    train, held = train_eval_split(examples, 0.1, seed=3)
    assert (train, held) == train_eval_split(examples, 0.1, seed=3)
    assert len(held) == 10 and len(train) == 90
    assert sorted(train + held) == examples
    assert train == sorted(train) and held == sorted(held)  # file order kept
    assert held != train_eval_split(examples, 0.1, seed=4)[1]


@pytest.mark.parametrize(
    ("n", "fraction", "n_eval"), [(2, 0.01, 1), (10, 0.25, 2), (10, 0.0, 0), (1, 0.5, 0)]
)
def test_split_sizes(n, fraction, n_eval):
    train, held = train_eval_split(list(range(n)), fraction, seed=0)
    assert (len(train), len(held)) == (n - n_eval, n_eval)


@pytest.mark.parametrize(("n", "fraction"), [(2, 0.9), (0, 0.0)])
def test_split_leaving_no_training_examples(n, fraction):
    with fails(f"eval_fraction {fraction} of {n} examples leaves no training examples"):
        train_eval_split(list(range(n)), fraction, seed=0)


def test_split_rejects_bad_fraction():
    with fails("eval_fraction must be in [0, 1), got 1.5"):
        train_eval_split([1, 2, 3], 1.5, seed=0)
