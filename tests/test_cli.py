"""The CLI end to end: bad data and bad config give one actionable line; a tiny run leaves its artifacts."""

import json

import pytest

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


def test_accelerate_config_relaunches_the_same_command_under_accelerate_launch():
    import sys

    from alignkit.cli import accelerate_command

    argv = ["sft", "cfg.yaml", "train.lr=1e-4", "--accelerate-config", "fsdp.yaml", "--resume"]
    assert accelerate_command("fsdp.yaml", argv) == [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "fsdp.yaml",
        "-m", "alignkit.cli", "sft", "cfg.yaml", "train.lr=1e-4", "--resume"]


def test_a_missing_accelerate_config_is_one_line(tmp_path, capsys):
    assert main(["sft", "--accelerate-config", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == (f"alignkit: error: --accelerate-config {tmp_path / 'nope.yaml'}: no "
                                               "such file (write one with `accelerate config`)")



@pytest.mark.slow
def test_the_cli_on_two_processes_under_a_real_launcher(tmp_path, demo_base):
    """`torchrun -m alignkit.cli sft ...` on 2 CPU processes (the launcher accelerate's multi-GPU launch wraps; on CPU,
    `accelerate launch --cpu` starts one process unless MPI is set up)."""
    import subprocess
    import sys

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "response": f"{i} + 1 = {i + 1}."}) + "\n"
                            for i in range(12)))
    out = tmp_path / "run"
    from multiproc import free_port

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "alignkit.cli", "sft", f"model.name_or_path={demo_base}", "model.device=cpu",
               f"data.train={data}", "data.eval_fraction=0.2", "train.max_steps=2", "train.batch_size=4",
               f"run.output_dir={out}", "run.progress=false", "run.threads=1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 2
