"""`alignkit data`: every command on small files the tests write, with exact kept / dropped records and reasons."""

import json
from collections import Counter

import pytest

from alignkit.cli import main
from alignkit.data.curate.filters import Rules, filter_items, repetition_ratio
from alignkit.data.curate.mix import Share, parse_share, plan
from alignkit.data.curate.records import parse, read_dataset, sides
from alignkit.data.curate.similarity import jaccard, ngrams, rouge_l, shingles, words
from alignkit.data.curate.synth import Novelty, clean_instruction, self_instruct
from alignkit.data.formats import FORMATS, DataError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def cli(capsys, *argv):
    code = main(["data", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------ records and texts
@pytest.mark.parametrize("fmt, record, expected", [
    ("prompt_response", {"system": "S", "prompt": "P", "response": "R"}, (("S", "P"), ("R",))),
    ("alpaca", {"instruction": "I", "input": "X", "output": "O"}, (("I\n\nX",), ("O",))),
    ("messages", {"messages": [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
                               {"role": "tool", "content": "T"}, {"role": "assistant", "content": "A2"}]},
     (("U1", "T"), ("A1", "A2"))),
    ("text", {"text": "a plain document"}, ((), ("a plain document",))),
    ("pairwise", {"prompt": "P", "chosen": "C", "rejected": "R", "margin": 1.5}, (("P",), ("C", "R"))),
    ("hh", {"chosen": "\n\nHuman: H\n\nAssistant: C", "rejected": "\n\nHuman: H\n\nAssistant: R"},
     (("H",), ("C", "R"))),
    ("ranked", {"prompt": "P", "responses": ["A", "B", "C"]}, (("P",), ("A", "B", "C"))),
    ("prompt", {"prompt": "P", "answer": "42"}, (("P",), ())),
    ("unpaired", {"prompt": "P", "completion": "C", "label": True}, (("P",), ("C",))),
])
def test_prompt_and_response_texts_of_every_format(fmt, record, expected):
    kind = next(kind for kind, formats in FORMATS.items() if fmt in formats)
    assert sides(FORMATS[kind][fmt](record, "f line 1")) == expected


def test_a_blank_text_is_placed_on_its_side_only_when_asked():
    convert = FORMATS["sft"]["alpaca"]
    with pytest.raises(DataError, match=r'^f line 1: field "output" must be a non-empty string'):
        parse({"instruction": "I", "output": " "}, "f line 1", convert)
    assert parse({"instruction": "I", "input": "", "output": " "}, "f line 1", convert, True).blank == "response"
    assert parse({"instruction": "", "output": "O"}, "f line 1", convert, True).blank == "prompt"


def test_words_ngrams_and_jaccard_by_hand():
    assert words("Don't STOP: 2+5!") == ["don", "t", "stop", "2", "+", "5"]
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a", "b"], 5) == [("a", "b")]  # shorter than n: the whole text is its one gram
    assert shingles("A b, a B", 1) == {"a", "b"}
    assert jaccard({"a", "b", "c"}, {"b", "c", "d"}) == 2 / 4
    assert jaccard(set(), set()) == 0.0


# ----------------------------------------------------------------------------------------------------- stats
def test_stats_reports_fields_lengths_duplicates_and_turns(tmp_path, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}], "id": 1},
        {"messages": [{"role": "user", "content": "Hello "}, {"role": "assistant", "content": "HI"}], "id": ""},
        {"messages": [{"role": "user", "content": "a" * 20}, {"role": "assistant", "content": "b" * 20},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
    ])
    code, out, _ = cli(capsys, "stats", data, "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["records"], report["format"], report["kind"]) == (3, "messages", "sft")
    assert report["fields"] == {"messages": 1.0, "id": pytest.approx(1 / 3)}
    # 5 + 2, 6 + 2, 20 + 20 + 1 + 1 characters
    assert {k: report["length"][k] for k in ("unit", "min", "median", "max")} == \
        {"unit": "chars", "min": 7, "median": 8, "max": 42}
    assert report["length"]["histogram"] == [{"from": 0, "to": 8, "count": 1}, {"from": 8, "to": 16, "count": 1},
                                             {"from": 16, "to": 32, "count": 0}, {"from": 32, "to": 64, "count": 1}]
    assert report["exact_duplicates"] == 1  # record 2 is record 1 up to case and whitespace
    assert report["turns"] == {"2": 2, "4": 1}
    code, out, _ = cli(capsys, "stats", data)
    assert "3 records, format messages (kind sft)" in out and "turns per record: 2: 2, 4: 1" in out


# ----------------------------------------------------------------------------------------------------- dedup
def test_dedup_drops_exact_and_near_duplicates_keeping_the_first(tmp_path, capsys):
    base = [f"w{i}" for i in range(40)]
    records = [
        {"prompt": "Say it", "response": "the same   answer"},  # line 1
        {"prompt": "say IT", "response": "The same answer"},  # line 2: exact duplicate of 1 (case, whitespace)
        {"prompt": "q", "response": " ".join(base)},  # line 3
        {"prompt": "q", "response": " ".join([*base[:39], "other"])},  # line 4: Jaccard 40/42 = 0.95 with line 3
        {"prompt": "q", "response": " ".join(base[:20] + [f"x{i}" for i in range(20)])},  # line 5: 21/61 with 3
    ]
    assert jaccard(shingles("q " + " ".join(base), 1), shingles(records[3]["prompt"] + " " + records[3]["response"], 1)) \
        == pytest.approx(40 / 42)
    data = write_jsonl(tmp_path / "train.jsonl", records)
    code, out, _ = cli(capsys, "dedup", data, "-o", tmp_path / "exact.jsonl")
    assert code == 0 and read_jsonl(tmp_path / "exact.jsonl") == [records[i] for i in (0, 2, 3, 4)]
    assert "exact duplicate  1" in out and "line 2: of line 1" in out
    code, out, _ = cli(capsys, "dedup", data, "-o", tmp_path / "near.jsonl", "--near", "--ngram", "1")
    assert code == 0 and read_jsonl(tmp_path / "near.jsonl") == [records[i] for i in (0, 2, 4)]
    assert "line 4: of line 3 (Jaccard 0.95)" in out
    # a threshold above the pair's similarity keeps both
    code, _, _ = cli(capsys, "dedup", data, "-o", tmp_path / "strict.jsonl", "--near", "--ngram", "1",
                     "--threshold", "0.96")
    assert read_jsonl(tmp_path / "strict.jsonl") == [records[i] for i in (0, 2, 3, 4)]


def test_dedup_round_trips_parquet_and_refuses_a_knob_without_its_switch(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"prompt": "a", "response": "b", "n": 1}, {"prompt": "a", "response": "b", "n": 2},
               {"prompt": "c", "response": "d", "n": None}]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "in.parquet")
    code, _, _ = cli(capsys, "dedup", tmp_path / "in.parquet", "-o", tmp_path / "out.parquet")
    assert code == 0 and pq.read_table(tmp_path / "out.parquet").to_pylist() == [records[0], records[2]]
    code, _, err = cli(capsys, "dedup", tmp_path / "in.parquet", "-o", tmp_path / "x.parquet", "--threshold", "0.9")
    assert code == 2 and err.strip() == "alignkit: error: --threshold has no effect without --near"
    code, _, err = cli(capsys, "dedup", tmp_path / "in.parquet", "-o", tmp_path / "x.jsonl")
    assert code == 2 and "keeps the input's file type (.parquet)" in err


# ---------------------------------------------------------------------------------------------------- filter
def test_repetition_ratio_by_hand():
    assert repetition_ratio("a b c a b c a b c", 3) == pytest.approx(1 - 3 / 7)  # 7 trigrams, 3 distinct
    assert repetition_ratio("go go go go", 3) == pytest.approx(0.5)  # (go go go) twice
    assert repetition_ratio("one two", 3) == 0.0


def test_filter_reasons_and_counts(tmp_path, capsys):
    records = [
        {"instruction": "Greet", "output": "Hello there, friend."},  # kept
        {"instruction": "Empty", "input": "", "output": "   "},  # empty response
        {"instruction": "Loop", "output": "go go go go go go go go"},  # 6 trigrams, 1 distinct: 0.83
        {"instruction": "Refuse", "output": "I\u2019m sorry, but I can\u2019t do that."},  # curly apostrophes
        {"instruction": "Long", "output": "x" * 60},  # too long
        {"instruction": "Skip me", "output": "fine"},  # the predicate drops it
        {"instruction": "Short", "output": "ok"},  # kept: 7 chars
    ]
    data = write_jsonl(tmp_path / "train.jsonl", records)
    (tmp_path / "pred.py").write_text("def keep(record):\n    return record['instruction'] != 'Skip me'\n")
    code, out, _ = cli(capsys, "filter", data, "-o", tmp_path / "out.jsonl", "--drop-empty", "--max-chars", "50",
                       "--max-repetition", "0.5", "--drop-refusals", "--predicate", f"{tmp_path / 'pred.py'}:keep")
    assert code == 0
    assert read_jsonl(tmp_path / "out.jsonl") == [records[0], records[6]]
    assert "kept 2 of 7 records, dropped 5" in out
    for reason, line in (("empty response", "line 2"), ("repetitive", "line 3"), ("refusal", "line 4"),
                         ("too long", "line 5: 64 chars > --max-chars 50"), ("predicate", "line 6")):
        assert f"  {reason}" in out and line in out
    assert "0.83 of its 3-grams repeat" in out and 'contains "i\'m sorry, but i can\'t"' in out
    # the phrases file replaces the built-in list; "ok" now counts as a refusal, the apology no longer does
    (tmp_path / "phrases.txt").write_text("# mine\nok\n")
    code, out, _ = cli(capsys, "filter", data, "-o", tmp_path / "mine.jsonl", "--drop-refusals",
                       "--refusal-phrases", tmp_path / "phrases.txt", "--drop-empty")
    assert [r["instruction"] for r in read_jsonl(tmp_path / "mine.jsonl")] == ["Greet", "Loop", "Refuse", "Long",
                                                                             "Skip me"]


def test_filter_token_bounds_measure_the_chosen_side():
    items = read_dataset_from([{"prompt": "one two three", "response": "four"},
                               {"prompt": "one", "response": "two three four five"}])
    by_words = lambda texts: [len(t.split()) for t in texts]  # noqa: E731 - a tokenizer of words
    kept, drops = filter_items(items, Rules(max_tokens=2, length_of="response"), by_words)
    assert [i.record["response"] for i in kept] == ["four"] and drops[0].detail == "4 tokens > --max-tokens 2"
    kept, _ = filter_items(items, Rules(min_tokens=3, length_of="prompt"), by_words)
    assert [i.record["prompt"] for i in kept] == ["one two three"]
    kept, _ = filter_items(items, Rules(min_tokens=5, length_of="all"), by_words)
    assert [i.record["prompt"] for i in kept] == ["one"]


def read_dataset_from(records):
    convert = FORMATS["sft"]["prompt_response"]
    return [parse(r, f"t line {n}", convert) for n, r in enumerate(records, 1)]


# --------------------------------------------------------------------------------------------- decontaminate
def test_decontaminate_drops_a_shared_13_gram_and_keeps_a_12_gram(tmp_path, capsys):
    sentence = "the quick brown fox jumps over the lazy dog while the farmer sleeps soundly tonight"
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "Repeat", "response": sentence}])
    short = write_jsonl(tmp_path / "short.jsonl", [{"question": "What is 17 + 25?", "answer": "42"}])
    w = sentence.split()
    records = [
        {"prompt": "Tell me", "response": "Once " + " ".join(w[2:15]) + " then"},  # w[2:15]: 13 words of it
        {"prompt": "Tell me", "response": "Once " + " ".join(w[2:14]) + " then"},  # only 12 in a row
        {"prompt": "Quiz: what is 17 + 25?", "response": "42, of course"},  # the short eval record's whole text
    ]
    data = write_jsonl(tmp_path / "train.jsonl", records)
    code, out, _ = cli(capsys, "decontaminate", data, "-o", tmp_path / "clean.jsonl", "--against", evals, short)
    assert code == 0 and read_jsonl(tmp_path / "clean.jsonl") == [records[1]]
    gram = " ".join(w[2:15])
    assert f'line 1: shares "{gram}" with {evals} line 1' in out
    assert f'line 3: shares "what is 17 + 25 42" with {short} line 1' in out
    assert f"{evals}: 1 training records removed" in out and f"{short}: 1 training records removed" in out
    assert "short.jsonl: format not recognised; every string of its records was compared" in out


# ------------------------------------------------------------------------------------------------------- mix
def test_mix_plans_counts_by_hand():
    assert plan([Share("a", 2, False), Share("b", 1, False)], [100, 100], 10) == [7, 3]  # 6.67 / 3.33, remainders
    assert plan([Share("a", 0.5, False), Share("b", 0.5, False)], [10, 4], None) == [4, 4]  # b limits the total
    assert plan([Share("a", 3, True), Share("b", 2, True)], [10, 10], None) == [3, 2]
    assert parse_share("data/a.jsonl:0.7") == Share("data/a.jsonl", 0.7, False)
    assert parse_share("C:/x.jsonl:500") == Share("C:/x.jsonl", 500, True)
    with pytest.raises(DataError, match="every share as a count"):
        plan([Share("a", 3, True), Share("b", 0.5, False)], [10, 10], None)


def test_mix_converts_formats_and_is_reproducible(tmp_path, capsys):
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": f"i{n}", "output": f"o{n}"} for n in range(6)])
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": f"u{n}"}, {"role": "assistant", "content": f"a{n}"}]}
        for n in range(4)])
    code, out, _ = cli(capsys, "mix", "-o", tmp_path / "m1.jsonl", f"{alpaca}:3", f"{chat}:2", "--seed", "7")
    assert code == 0 and "converted to messages" in out
    mixed = read_jsonl(tmp_path / "m1.jsonl")
    users = Counter(r["messages"][0]["content"][0] for r in mixed)
    assert users == {"i": 3, "u": 2} and all(set(r) == {"messages"} for r in mixed)
    assert len({json.dumps(r) for r in mixed}) == 5  # without replacement
    cli(capsys, "mix", "-o", tmp_path / "m2.jsonl", f"{alpaca}:3", f"{chat}:2", "--seed", "7")
    assert (tmp_path / "m2.jsonl").read_bytes() == (tmp_path / "m1.jsonl").read_bytes()
    code, _, err = cli(capsys, "mix", "-o", tmp_path / "m3.jsonl", f"{chat}:6")
    assert code == 2 and "6 records asked for, it has 4" in err and "--allow-repeats" in err
    code, out, _ = cli(capsys, "mix", "-o", tmp_path / "m3.jsonl", f"{chat}:6", "--allow-repeats")
    assert "(2 repeats)" in out
    assert sorted(Counter(json.dumps(r) for r in read_jsonl(tmp_path / "m3.jsonl")).values()) == [1, 1, 2, 2]


# --------------------------------------------------------------------------------------------------- convert
def test_convert_round_trips_with_exact_records(tmp_path, capsys):
    records = [{"id": 7, "system": "Be brief.", "prompt": "Hi?", "response": "Hello."},
               {"id": 8, "prompt": "2 + 2?", "response": "4"}]
    data = write_jsonl(tmp_path / "pr.jsonl", records)
    assert cli(capsys, "convert", data, "-o", tmp_path / "chat.jsonl", "--to", "messages")[0] == 0
    assert read_jsonl(tmp_path / "chat.jsonl") == [
        {"id": 7, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                               {"role": "assistant", "content": "Hello."}]},
        {"id": 8, "messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]}]
    assert cli(capsys, "convert", tmp_path / "chat.jsonl", "-o", tmp_path / "back.jsonl", "--to",
               "prompt_response")[0] == 0
    assert read_jsonl(tmp_path / "back.jsonl") == records


def test_convert_csv_alpaca_and_a_multi_turn_error(tmp_path, capsys):
    (tmp_path / "a.csv").write_text("instruction,input,output\nAdd,1 and 2,three\nName a colour,,red\n")
    assert cli(capsys, "convert", tmp_path / "a.csv", "-o", tmp_path / "pr.csv", "--to", "prompt_response")[0] == 0
    assert read_dataset(str(tmp_path / "pr.csv")).items[0].record == {"prompt": "Add\n\n1 and 2", "response": "three"}
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}])
    code, _, err = cli(capsys, "convert", chat, "-o", tmp_path / "x.jsonl", "--to", "alpaca")
    assert code == 2 and "\n" not in err.strip()
    assert err.startswith(f"alignkit: error: {chat} line 2: cannot write as alpaca: it has the turns user, "
                          "assistant, user, assistant")
    assert not (tmp_path / "x.jsonl").exists()


def test_convert_preference_formats(tmp_path, capsys):
    hh = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
                                              "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}])
    cli(capsys, "convert", hh, "-o", tmp_path / "pw.jsonl", "--to", "pairwise")
    assert read_jsonl(tmp_path / "pw.jsonl") == [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}]
    cli(capsys, "convert", tmp_path / "pw.jsonl", "-o", tmp_path / "kto.jsonl", "--to", "unpaired")
    assert read_jsonl(tmp_path / "kto.jsonl") == [{"prompt": "Hi", "completion": "Hello!", "label": True},
                                                  {"prompt": "Hi", "completion": "Go away.", "label": False}]
    ranked = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "P", "responses": ["A", "B", "C"]}])
    cli(capsys, "convert", ranked, "-o", tmp_path / "best.jsonl", "--to", "pairwise")
    assert [(r["chosen"], r["rejected"]) for r in read_jsonl(tmp_path / "best.jsonl")] == [("A", "B"), ("A", "C")]
    cli(capsys, "convert", ranked, "-o", tmp_path / "adj.jsonl", "--to", "pairwise", "--pairs", "adjacent")
    assert [(r["chosen"], r["rejected"]) for r in read_jsonl(tmp_path / "adj.jsonl")] == [("A", "B"), ("B", "C")]
    code, _, err = cli(capsys, "convert", hh, "-o", tmp_path / "y.jsonl", "--to", "pairwise", "--pairs", "best")
    assert code == 2 and "--pairs has no effect converting hh to pairwise" in err


# ---------------------------------------------------------------------------------------------- output rules
def test_refuses_to_overwrite_its_input_or_an_existing_output(tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "response": "b"}])
    before = data.read_bytes()
    code, _, err = cli(capsys, "dedup", data, "-o", data, "--force")
    assert code == 2 and "is an input file" in err and data.read_bytes() == before
    (tmp_path / "out.jsonl").write_text("old\n")
    code, _, err = cli(capsys, "dedup", data, "-o", tmp_path / "out.jsonl")
    assert code == 2 and "exists; pass --force" in err and (tmp_path / "out.jsonl").read_text() == "old\n"
    assert cli(capsys, "dedup", data, "-o", tmp_path / "out.jsonl", "--force")[0] == 0
    assert read_jsonl(tmp_path / "out.jsonl") == [{"prompt": "a", "response": "b"}]


def test_a_bad_record_is_one_line_naming_file_and_line(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "respone": "d"}\n')
    code, _, err = cli(capsys, "dedup", data, "-o", tmp_path / "out.jsonl")
    assert code == 2 and "\n" not in err.strip()
    assert err.strip() == (f'alignkit: error: {data} line 2: field "response" is missing (have: prompt, respone; '
                           'rename "respone" to "response"?)')


# ----------------------------------------------------------------------------------------------------- synth
def test_rouge_l_and_the_novelty_filter_by_hand():
    # LCS of [the cat sat on the mat] and [the cat lay on a mat] is "the cat on mat": P = R = 4/6
    assert rouge_l("The cat sat on the mat.", "the cat lay on a mat") == pytest.approx(2 / 3)
    assert rouge_l("a b", "c d") == 0.0
    novelty = Novelty("rouge")
    novelty.add("the cat sat on the mat")
    novelty.add("write a poem about the sea")
    assert novelty.closest("the cat lay on a mat") == (pytest.approx(2 / 3), "the cat sat on the mat")
    minhash = Novelty("minhash")
    minhash.add("write a poem about the sea")
    assert minhash.closest("write a poem about the sea")[0] == 1.0
    assert minhash.closest("list three prime numbers")[0] < 0.3
    assert clean_instruction('\n  4. Task 5: "Name a bird."\nmore') == "Name a bird."


def test_self_instruct_keeps_novel_instructions_and_counts_the_rest():
    replies = iter([
        ["1. the cat lay on a mat", "", "Name three birds"],  # too similar (0.67 >= 0.6), empty, novel
        ["name three birds please"],  # the answer to "Name three birds"
        ["Describe the sea", "Sum two numbers"],  # both novel (ROUGE-L 0.22 and 0 with the pool)
        ["  ", "Add them."],  # a blank answer, an answer
        ["- Name three birds!"],  # the same words as a kept one: too similar
        ["Tell a joke"],
        ["Why not."],
    ])
    calls = []

    def sample(prompts, seeds):
        calls.append(len(prompts))
        return next(replies)

    pairs, counts = self_instruct(["the cat sat on the mat"], sample, num=3, novelty=Novelty("rouge"),
                                  max_similarity=0.6, seed=0, batch_size=3)
    assert pairs == [("Name three birds", "name three birds please"), ("Sum two numbers", "Add them."),
                     ("Tell a joke", "Why not.")]
    assert counts == {"generated": 7, "kept": 3, "too similar": 2, "empty instruction": 1, "empty answer": 1}
    assert calls == [3, 1, 2, 2, 1, 1, 1]  # never more rows than instructions still wanted


def test_self_instruct_is_reproducible_from_its_seed():
    def run(seed):
        seen = []

        def sample(prompts, seeds):
            seen.append((prompts, seeds))
            return [f"task {len(seen)} {n}" for n in range(len(prompts))]

        return self_instruct(["a b", "c d", "e f"], sample, num=3, novelty=Novelty("rouge"), max_similarity=0.99,
                             seed=seed, shots=2), seen

    assert run(5) == run(5)  # the same examples shown, the same sampling seeds, the same records
    assert run(5)[1] != run(6)[1]


def test_synth_on_the_demo_model(demo_sft, tmp_path, capsys):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"prompt": s, "response": "x"} for s in
                                                   ("What is 1 + 2?", "Compute 3 - 1.", "How much is 4 plus 4?")])
    code, out, _ = cli(capsys, "synth", seeds, "-o", tmp_path / "new.jsonl", "--model", demo_sft, "--num", "2",
                       "--max-candidates", "4", "--max-new-tokens", "8", "--device", "cpu")
    assert code == 0
    written = read_jsonl(tmp_path / "new.jsonl")
    counts = dict(part.rsplit(" ", 1) for part in out.split("): ", 1)[1].splitlines()[0].split(", "))
    assert int(counts["kept"]) == len(written) >= 1
    assert int(counts["generated"]) == sum(int(counts[k]) for k in ("kept", "too similar", "empty instruction",
                                                                    "empty answer"))
    assert all(set(r) == {"instruction", "output"} and r["instruction"].strip() and r["output"].strip()
               for r in written)
    assert read_dataset(str(tmp_path / "new.jsonl")).format == "alpaca"  # a file alignkit sft reads
