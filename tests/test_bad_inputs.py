"""Bad inputs give one actionable line and exit code 2, never a traceback: the catalogue is tests/data/bad/cases.yaml.

Each case runs ``alignkit.cli.main`` in-process on the tiny demo model. stderr must be exactly
``alignkit: error: <the case's error>`` and one line. The errors fire while the config, the model or the data
load (or, for the full disk, at the first save of a one-step run), so a case takes about a second.

A case needing files made at test time (model folders, a LoRA adapter, an output folder under a file, a full disk)
names a ``fixture``: a builder ``(tmp_path, demo_base) -> Path`` in BUILDERS below, or a pytest fixture; what it
returns is ``{dir}`` in the case.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from alignkit.checkpoint import STATE_FILE, latest_checkpoint
from alignkit.cli import main

BAD = Path(__file__).parent / "data" / "bad"
CATALOGUE = yaml.safe_load((BAD / "cases.yaml").read_text())
CASES: dict[str, dict] = CATALOGUE["cases"]
DEFAULTS: dict[str, list[str]] = CATALOGUE["defaults"]


# ---- builders: the inputs that are folders, made fresh for each case ----------------------------------------------
def _copy_model(base: Path, to: Path, leave_out: tuple[str, ...] = ()) -> Path:
    to.mkdir(parents=True)
    for file in base.iterdir():
        if file.name not in leave_out:
            shutil.copy(file, to / file.name)
    return to


def missing_model_folder(tmp_path: Path, base: Path) -> Path:
    return tmp_path / "no-such-model"


def model_path_is_file(tmp_path: Path, base: Path) -> Path:
    path = tmp_path / "model.safetensors"
    shutil.copy(base / "model.safetensors", path)
    return path


def half_written_model(tmp_path: Path, base: Path) -> Path:
    """config.json and the tokenizer are there, the weights never arrived."""
    return _copy_model(base, tmp_path / "half", leave_out=("model.safetensors",))


def truncated_weights(tmp_path: Path, base: Path) -> Path:
    folder = _copy_model(base, tmp_path / "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    return folder


def missing_shard(tmp_path: Path, base: Path) -> Path:
    """A sharded save that stopped after its first shard."""
    folder = _copy_model(base, tmp_path / "sharded", leave_out=("model.safetensors",))
    shutil.copy(base / "model.safetensors", folder / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                                           "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def garbled_config(tmp_path: Path, base: Path) -> Path:
    folder = _copy_model(base, tmp_path / "garbled")
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    return folder


def no_config_json(tmp_path: Path, base: Path) -> Path:
    return _copy_model(base, tmp_path / "no-config", leave_out=("config.json",))


def no_tokenizer(tmp_path: Path, base: Path) -> Path:
    return _copy_model(base, tmp_path / "no-tokenizer", leave_out=("tokenizer.json", "tokenizer_config.json"))


def tokenizer_without_pad_or_eos(tmp_path: Path, base: Path) -> Path:
    """A tokenizer with a chat template of its own (so the built-in one, which brings an EOS, is not installed)
    and neither a pad nor an EOS token: nothing to pad a batch with."""
    folder = _copy_model(base, tmp_path / "no-pad")
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("pad_token", None)
    config.pop("eos_token", None)
    config_file.write_text(json.dumps(config))
    return folder


def _adapter(tmp_path: Path, base: Path, config: dict, weights: bool = True) -> Path:
    """A LoRA adapter folder as `save_model` writes one: adapter config and weights, with the tokenizer."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "adapter"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(base / name, folder / name)
    lora = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps({**lora, **config}))
    if weights:
        save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 128)},
                  folder / "adapter_model.safetensors")
    return folder


def lora_without_base(tmp_path: Path, base: Path) -> Path:
    return _adapter(tmp_path, base, {"base_model_name_or_path": str(tmp_path / "deleted-base")})


def lora_base_not_named(tmp_path: Path, base: Path) -> Path:
    return _adapter(tmp_path, base, {})


def lora_without_weights(tmp_path: Path, base: Path) -> Path:
    return _adapter(tmp_path, base, {"base_model_name_or_path": str(base)}, weights=False)


def file_where_a_folder_goes(tmp_path: Path, base: Path) -> Path:
    """Running as root, chmod stops no write: a regular file where the run folder's parent should be does."""
    path = tmp_path / "afile"
    path.write_text("not a folder\n")
    return path


BUILDERS: dict[str, Callable[[Path, Path], Path]] = {
    "missing_model_folder": missing_model_folder,
    "model_path_is_file": model_path_is_file,
    "half_written_model": half_written_model,
    "truncated_weights": truncated_weights,
    "missing_shard": missing_shard,
    "garbled_config": garbled_config,
    "no_config_json": no_config_json,
    "no_tokenizer": no_tokenizer,
    "tokenizer_without_pad_or_eos": tokenizer_without_pad_or_eos,
    "lora_without_base": lora_without_base,
    "lora_base_not_named": lora_base_not_named,
    "lora_without_weights": lora_without_weights,
    "file_where_a_folder_goes": file_where_a_folder_goes,
}


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs: room for the config and the logs, not for a checkpoint. Mounting needs root with
    CAP_SYS_ADMIN; where that is refused, the one case using this is skipped."""
    where = tmp_path / "full"
    where.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


# ---- running a case --------------------------------------------------------------------------------------------
def _fill(text: str, values: dict[str, str]) -> str:
    """Placeholders by plain replacement: error texts hold braces of their own ({"data": [...]})."""
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def case_argv(case: dict, values: dict[str, str]) -> list[str]:
    """``alignkit <recipe> [CONFIG] key=value ...``: the defaults, then data.train, then the case's own."""
    argv = [case["recipe"], *([values["config"]] if "config" in case else [])]
    overrides = [*DEFAULTS["all"], *DEFAULTS.get(case["recipe"], [])]
    if "data" in case:
        overrides.append("data.train={file}")
    return argv + [_fill(o, values) for o in [*overrides, *case.get("set", [])]]


def case_values(case: dict, tmp_path: Path, base: Path, request=None) -> dict[str, str]:
    values = {"tmp": str(tmp_path), "base": str(base), "bad": str(BAD),
              "base_weights_bytes": str((base / "model.safetensors").stat().st_size)}
    if "data" in case:
        values["file"] = str(BAD / case["data"])
    if "config" in case:
        values["config"] = str(BAD / _fill(case["config"], values))  # a filled absolute path stays as it is
    if "fixture" in case:
        name = case["fixture"]
        built = BUILDERS[name](tmp_path, base) if name in BUILDERS else request.getfixturevalue(name)
        values["dir"] = str(built)
    return values


def _nothing_half_saved(root: Path) -> None:
    """A failed run may leave temporary folders (.step-1.tmp), never a checkpoint or final model that looks
    complete: every case fails before a first save completes, so there is nothing to resume from."""
    for checkpoints in root.rglob("checkpoints"):
        assert latest_checkpoint(checkpoints.parent) is None
        assert not [d for d in checkpoints.glob("step-*") if not (d / STATE_FILE).is_file()]
        assert not (checkpoints.parent / "final").exists()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line(name, tmp_path, demo_base, request, capsys):
    case = CASES[name]
    values = case_values(case, tmp_path, demo_base, request)
    code = main(case_argv(case, values))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err == f"alignkit: error: {_fill(case['error'], values)}\n"
    assert code == 2
    _nothing_half_saved(tmp_path)


def test_catalogue_is_complete():
    """At least 30 cases, each with a recipe and an error, and every data file of tests/data/bad used by one."""
    assert len(CASES) >= 30
    for name, case in CASES.items():
        assert {"recipe", "error"} <= case.keys() <= {"recipe", "error", "data", "config", "fixture", "set"}, name
    used = {case.get("data") for case in CASES.values()} | {case.get("config") for case in CASES.values()}
    used |= {part.split("/")[-1].split(":")[0] for case in CASES.values() for o in case.get("set", [])
             for part in o.split('"') if part.startswith("{bad}/")}  # files named in overrides
    files = {p.name for p in BAD.iterdir() if p.name not in ("cases.yaml", ".gitattributes")}
    assert files <= used, f"files no case uses: {sorted(files - used)}"
