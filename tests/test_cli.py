"""The CLI end to end: bad data and bad config give one actionable line; a tiny run leaves its artifacts."""

import json

from alignkit.cli import main


def test_malformed_jsonl_line_names_file_and_line(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": \n')
    assert main(["sft", f"data.train={data}", "run.progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"alignkit: error: {data} line 2: invalid JSON") and "\n" not in err


def test_missing_field_names_file_line_and_field(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "answer": "d"}\n')
    assert main(["sft", f"data.train={data}", "data.format=prompt_response", "run.progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{data} line 2" in err and 'field "response" is missing' in err


def test_cli_sft_run_on_a_local_jsonl(tmp_path, demo_base):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "response": f"{i} + 1 = {i + 1}."}) + "\n"
                            for i in range(9)))
    out = tmp_path / "run"
    code = main(["sft", f"model.name_or_path={demo_base}", f"data.train={data}", "data.eval_fraction=0.2",
                 "train.max_steps=3", "train.batch_size=4", f"run.output_dir={out}", "run.progress=false"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["data"]["train"]["kept"] == 7
