"""LLaMA-Factory configs: mapped key by key onto alignkit recipes (exact values, LLaMA-Factory's defaults written
out, the report of what was not mapped), written as valid alignkit YAML, and run directly by `alignkit <recipe>`.

The files are written here in LLaMA-Factory's documented format, modelled on its examples/train_lora/*.yaml,
with a dataset_info.json beside the data as its data/README.md describes."""

import json
from pathlib import Path

import pytest
import yaml

from alignkit.cli import main
from alignkit.config import (
    ConfigError,
    DPOConfig,
    KTOConfig,
    PPOConfig,
    RMConfig,
    SFTConfig,
    load_config,
    validate,
)
from alignkit.config.llamafactory import convert, converted_sections
from alignkit.config.llamafactory_data import map_dataset
from alignkit.pipeline import load_pipeline, stage_config

INFO = {
    "alpaca_demo": {"file_name": "alpaca_demo.json"},
    "pairs": {"file_name": "pairs.jsonl", "ranking": True,
              "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}},
    "kto_pairs": {"file_name": "kto.jsonl", "columns": {"prompt": "prompt", "response": "completion", "kto_tag": "label"}},
    "prompts": {"file_name": "prompts.jsonl", "columns": {"prompt": "prompt"}},
    "c4": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}},
}
SFT_YAML = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true
flash_attn: sdpa
rope_scaling: linear

### method
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
lora_rank: 16
lora_dropout: 0.05

### dataset
dataset: alpaca_demo
dataset_dir: {data}
template: llama3
cutoff_len: 1024
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
report_to: none

### train
per_device_train_batch_size: 2
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000

### eval
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""


@pytest.fixture
def data_dir(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps(INFO))
    return folder


def lf_file(path: Path, text: str, data_dir: Path) -> Path:
    path.write_text(text.replace("{data}", str(data_dir)))
    return path


def lf_config(data_dir: Path, **keys) -> dict:
    """A LLaMA-Factory config of the example's shape: its model and output keys, then the stage's own."""
    return {"model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "dataset_dir": str(data_dir),
            "per_device_train_batch_size": 1, "gradient_accumulation_steps": 8, "learning_rate": 5.0e-6,
            "num_train_epochs": 3.0, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "bf16": True, **keys}


def test_an_sft_lora_file_maps_to_these_exact_alignkit_keys(tmp_path, data_dir):
    raw = yaml.safe_load(SFT_YAML.replace("{data}", str(data_dir)))
    out = convert(raw, "lf.yaml")
    assert out.recipe == "sft"
    assert out.config == {
        "model": {"name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct", "trust_remote_code": True,
                  "attn_implementation": "sdpa", "gradient_checkpointing": True, "adapter": "lora", "lora_r": 16,
                  "lora_alpha": 32.0, "lora_dropout": 0.05, "lora_target_modules": "all-linear"},
        "data": {"train": str(data_dir / "alpaca_demo.json"), "format": "alpaca", "max_length": 1024,
                 "eval_fraction": 0.1},
        "train": {"batch_size": 2, "grad_accum": 8, "lr": 1e-4, "epochs": 3.0, "schedule": "cosine",
                  "warmup_ratio": 0.1, "seed": 42, "mixed_precision": "auto"},
        "run": {"output_dir": "saves/llama3-8b/lora/sft", "log_every": 10, "save_every": 500, "eval_every": 500}}
    assert [k for k, _ in out.unmapped] == ["rope_scaling", "max_samples"] and out.blocking == {}
    assert {k for k, _ in out.ignored} == {"overwrite_cache", "preprocessing_num_workers", "plot_loss",
                                           "overwrite_output_dir", "ddp_timeout", "per_device_eval_batch_size"}
    notes = dict(out.notes)
    assert "lora_alpha: 2 x lora_rank = 32" in notes["(left out)"] and "seed: 42" in notes["(left out)"]
    assert {"template", "bf16", "per_device_train_batch_size", "output_dir"} <= set(notes)
    cfg = validate(SFTConfig, out.config)
    assert cfg.model.lora_alpha == 32.0 and cfg.train.mixed_precision == "auto"


def test_keys_left_out_take_llamafactorys_defaults_not_alignkits(data_dir):
    out = convert({"stage": "sft", "model_name_or_path": "m", "dataset": "alpaca_demo", "dataset_dir": str(data_dir)},
                  "lf.yaml")
    assert out.config["model"] == {"name_or_path": "m", "gradient_checkpointing": True, "adapter": "lora",
                                   "lora_r": 8, "lora_alpha": 16.0, "lora_target_modules": "all-linear"}
    assert out.config["train"] == {"batch_size": 8, "grad_accum": 1, "lr": 5e-5, "epochs": 3.0, "schedule": "linear",
                                   "warmup_ratio": 0.0, "seed": 42, "mixed_precision": "no"}
    assert out.config["data"]["max_length"] == 2048 and "eval_fraction" not in out.config["data"]
    assert {"val_size", "bf16 / fp16"} <= dict(out.notes).keys()
    validate(SFTConfig, out.config)


def test_rm_full_finetuning_on_ranked_pairs(data_dir):
    out = convert(lf_config(data_dir, stage="rm", dataset="pairs", finetuning_type="full", lora_rank=8,
                            max_steps=100, num_train_epochs=1.0), "rm.yaml")
    assert out.recipe == "rm"
    assert out.config["model"]["adapter"] == "none" and "lora_r" not in out.config["model"]
    assert out.config["data"] == {"train": str(data_dir / "pairs.jsonl"), "format": "pairwise", "max_length": 2048}
    assert out.config["train"]["max_steps"] == 100 and "epochs" not in out.config["train"]
    assert dict(out.ignored)["lora_rank"] == "a LoRA setting, and finetuning_type is full"
    assert dict(out.ignored)["num_train_epochs"] == "max_steps > 0 sets the run's length"
    validate(RMConfig, out.config)


@pytest.mark.parametrize("keys, dpo, ignored", [
    ({"pref_loss": "sigmoid", "pref_beta": 0.2, "dpo_label_smoothing": 0.1, "pref_ftx": 0.5, "ref_model": "ref/m",
      "simpo_gamma": 1.0},
     {"loss": "sigmoid", "beta": 0.2, "label_smoothing": 0.1, "nll_weight": 0.5, "reference_model": "ref/m"},
     {"simpo_gamma"}),
    ({"pref_loss": "orpo", "pref_beta": 0.1, "pref_ftx": 0.5, "ref_model": "ref/m"},  # ORPO's own SFT term + ftx
     {"loss": "orpo", "beta": 0.1, "nll_weight": 1.5}, {"ref_model"}),
    ({"pref_loss": "simpo", "pref_beta": 2.0, "simpo_gamma": 1.0, "kto_chosen_weight": 2.0},
     {"loss": "simpo", "beta": 2.0, "simpo_gamma": 1.0}, {"kto_chosen_weight"}),
])
def test_dpo_losses_and_their_knobs(data_dir, keys, dpo, ignored):
    out = convert(lf_config(data_dir, stage="dpo", dataset="pairs", finetuning_type="lora", **keys), "dpo.yaml")
    assert out.recipe == "dpo" and out.config["dpo"] == dpo
    assert ignored <= {k for k, _ in out.ignored} and out.blocking == {}
    validate(DPOConfig, out.config)


def test_kto_pair_loss_is_blocking_and_names_its_stand_in(data_dir):
    out = convert(lf_config(data_dir, stage="dpo", dataset="pairs", pref_loss="kto_pair"), "dpo.yaml")
    assert out.blocking == {"pref_loss": "dpo.loss"}
    with pytest.raises(ConfigError, match="pref_loss: kto_pair: .*pass dpo.loss="):
        out.require_runnable({})
    out.require_runnable({"dpo": {"loss": "sigmoid"}})  # an override stands in for it


def test_kto_weights_under_both_of_their_names(data_dir):
    out = convert(lf_config(data_dir, stage="kto", dataset="kto_pairs", pref_beta=0.2, kto_chosen_weight=1.0,
                            kto_undesirable_weight=1.5, ref_model="ref/m"), "kto.yaml")
    assert out.config["kto"] == {"beta": 0.2, "desirable_weight": 1.0, "undesirable_weight": 1.5,
                                 "reference_model": "ref/m"}
    assert out.config["data"]["format"] == "unpaired"
    renamed = convert(lf_config(data_dir, stage="kto", dataset="kto_pairs", kto_rejected_weight=1.33), "kto.yaml")
    assert renamed.config["kto"] == {"undesirable_weight": 1.33}
    validate(KTOConfig, out.config)


def test_ppo_batches_kl_control_sampling_and_reward_model(tmp_path, data_dir):
    rm = tmp_path / "rm"
    rm.mkdir()
    out = convert(lf_config(data_dir, stage="ppo", dataset="prompts", reward_model=str(rm), finetuning_type="lora",
                            per_device_train_batch_size=2, gradient_accumulation_steps=2, ppo_buffer_size=2,
                            ppo_epochs=2, ppo_target=3.0, ppo_score_norm=True, top_k=0, top_p=0.9,
                            max_new_tokens=128, ref_model="ref/m"), "ppo.yaml")
    assert out.recipe == "ppo"
    assert out.config["ppo"] == {"mini_batch_size": 4, "micro_batch_size": 2, "ppo_epochs": 2, "critic": "shared",
                                 "adaptive_kl": True, "kl_coef": 0.2, "kl_target": 3.0, "reward_norm": "running"}
    assert out.config["sampling"] == {"temperature": 0.95, "top_p": 0.9, "top_k": 0, "max_new_tokens": 128}
    assert out.config["rewards"] == [{"reward_model": str(rm)}]
    assert out.config["train"]["batch_size"] == 8 and out.config["train"]["max_steps"] == 0
    assert out.config["data"] == {"train": str(data_dir / "prompts.jsonl"), "format": "prompt", "eval": None,
                                  "max_length": 2048}
    assert "grad_accum" not in out.config["train"] and [k for k, _ in out.unmapped] == ["ref_model"]
    cfg = validate(PPOConfig, out.config)
    assert cfg.data.eval is None and cfg.critic_path == str(rm)


def test_a_llamafactory_reward_model_is_blocking(tmp_path, data_dir):
    rm = tmp_path / "lf_rm"
    rm.mkdir()
    (rm / "value_head.safetensors").write_bytes(b"")
    out = convert(lf_config(data_dir, stage="ppo", dataset="prompts", reward_model=str(rm)), "ppo.yaml")
    assert out.blocking == {"reward_model": "rewards"} and "rewards" not in out.config
    assert "value_head.safetensors" in dict(out.unmapped)["reward_model"]


def test_pretraining_is_sft_on_packed_text(data_dir):
    out = convert(lf_config(data_dir, stage="pt", dataset="c4", template="default"), "pt.yaml")
    assert out.recipe == "sft"
    assert out.config["data"] == {"train": str(data_dir / "c4.jsonl"), "format": "text", "max_length": 2048,
                                  "packing": True}
    validate(SFTConfig, out.config)


@pytest.mark.parametrize("stage, names, entry, expected", [
    ("sft", "identity,alpaca_demo", None, "2 datasets (identity, alpaca_demo): alignkit trains on one file; merge "
     "them first (alignkit data mix"),
    ("sft", "renamed", {"file_name": "r.json", "columns": {"prompt": "question", "response": "answer"}},
     '"question" renamed to "instruction"; "answer" renamed to "output"'),
    ("kto", "renamed", {"file_name": "k.json", "columns": {"prompt": "instruction", "response": "output",
                                                          "kto_tag": "kto_tag"}},
     '"instruction" renamed to "prompt"; "output" renamed to "completion"; "kto_tag" renamed to "label"'),
    ("ppo", "alpaca_demo", None, "holds SFT records (alpaca) and alignkit's PPO reads prompt records: `alignkit data "
     "convert DATA/alpaca_demo.json --to prompt -o prompts.jsonl`"),
    ("ppo", "chat", {"file_name": "chat.json", "formatting": "sharegpt"}, "holds SFT records (messages)"),
    ("dpo", "dpo_en_demo", {"file_name": "dpo.json", "formatting": "sharegpt", "ranking": True,
                            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
     '"chosen": [<chosen>], "rejected": [<rejected>]}'),
    ("sft", "pairs", None, "is a preference dataset (ranking: true)"),
    ("sft", "mm", {"file_name": "m.json", "formatting": "sharegpt", "columns": {"messages": "conversations",
                                                                             "images": "images"}}, "multimodal"),
    ("sft", "nowhere", None, '"nowhere" is not defined in'),
    ("sft", "arrow", {"file_name": "d.arrow"}, "alignkit reads .jsonl, .json, .parquet, .csv, .txt files"),
])
def test_datasets_alignkit_cannot_read_as_they_are_say_what_to_do(tmp_path, data_dir, stage, names, entry, expected):
    if entry is not None:
        (data_dir / "dataset_info.json").write_text(json.dumps({**INFO, names: entry}))
    answer = map_dataset(names, str(data_dir), stage, tmp_path)
    assert expected.replace("DATA", str(data_dir)) in answer.problem


@pytest.mark.parametrize("dataset_dir, entry, values", [
    ("DATA", {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
              "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                       "system_tag": "system"}}, {"source": "DATA/chat.json", "format": "messages"}),
    ("DATA", {"file_name": "chat.json", "formatting": "sharegpt"}, {"source": "DATA/chat.json", "format": "messages"}),
    ("DATA", {"hf_hub_url": "org/data", "subset": "en", "split": "test"},
     {"source": "org/data", "subset": "en", "split": "test", "format": "alpaca"}),
    ("ONLINE", None, {"source": "org/chat", "format": "alpaca"}),  # names are hub ids, read as alpaca
])
def test_datasets_alignkit_reads_as_they_are(tmp_path, data_dir, dataset_dir, entry, values):
    if entry is not None:
        (data_dir / "dataset_info.json").write_text(json.dumps({"org/chat": entry}))
    answer = map_dataset("org/chat", dataset_dir.replace("DATA", str(data_dir)), "sft", tmp_path)
    assert answer.problem is None
    assert answer.values == {k: v.replace("DATA", str(data_dir)) for k, v in values.items()}


def test_several_datasets_block_a_run_until_data_train_is_given(data_dir):
    raw = lf_config(data_dir, stage="sft", dataset="alpaca_demo,pairs", max_steps=5)
    with pytest.raises(ConfigError, match=r"lf.yaml: dataset: 2 datasets .*, or pass data.train=\.\.\.$"):
        converted_sections("sft", raw, "lf.yaml")
    sections = converted_sections("sft", raw, "lf.yaml", {"data": {"train": "merged.jsonl"}})
    assert "train" not in sections["data"]  # the override brings it


def test_a_bad_value_names_the_file_line_and_key(tmp_path, data_dir, capsys):
    lf = lf_file(tmp_path / "lf.yaml", "stage: sft\nmodel_name_or_path: m\nlearning_rate: fast\n", data_dir)
    assert main(["convert", "llamafactory", str(lf)]) == 2
    assert capsys.readouterr().err.strip() == (f"alignkit: error: {lf} line 3: learning_rate = 'fast' is not a number")


def test_convert_writes_alignkit_yaml_with_the_report_and_never_overwrites_the_file(tmp_path, data_dir, capsys):
    lf = lf_file(tmp_path / "lf.yaml", SFT_YAML, data_dir)
    before = lf.read_bytes()
    assert main(["convert", "llamafactory", str(lf)]) == 0
    out = tmp_path / "lf.alignkit.yaml"
    text = out.read_text()
    assert text.startswith(f"# Converted from the LLaMA-Factory config {lf} (stage: sft)")
    assert f"alignkit sft {out}" in text and "#   max_samples: 1000: alignkit reads every record" in text
    cfg = load_config(SFTConfig, out)
    assert (cfg.model.lora_r, cfg.data.max_length, cfg.train.grad_accum) == (16, 1024, 8)
    printed = capsys.readouterr().out
    assert "not carried over:" in printed and f"wrote {out}" in printed
    assert main(["convert", "llamafactory", str(lf), "-o", str(lf)]) == 2
    assert "that is the file being converted" in capsys.readouterr().err and lf.read_bytes() == before


def test_a_direct_run_refuses_another_stages_recipe_and_blocking_keys(tmp_path, data_dir, capsys):
    lf = lf_file(tmp_path / "lf.yaml", SFT_YAML, data_dir)
    assert main(["dpo", str(lf)]) == 2
    err = capsys.readouterr().err
    assert "alignkit sft" in err.splitlines()[0]  # the report comes first
    assert err.strip().endswith("stage: sft is LLaMA-Factory's sft stage, which alignkit trains with `alignkit sft`, "
                                "not `alignkit dpo`")
    frozen = lf_file(tmp_path / "frozen.yaml", SFT_YAML.replace("finetuning_type: lora", "finetuning_type: freeze"),
                     data_dir)
    assert main(["sft", str(frozen)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"alignkit: error: {frozen}: finetuning_type: freeze:") and "pass model.adapter=" in last


def test_a_pipeline_stage_takes_a_llamafactory_config(tmp_path, data_dir):
    lf = lf_file(tmp_path / "lf.yaml", SFT_YAML, data_dir)
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"),
                                    "stages": {"sft": {"config": "lf.yaml", "train": {"max_steps": 2}}}}))
    pipeline = load_pipeline(pipe)
    cfg = stage_config(pipeline, pipeline.stages[0])
    assert (cfg.model.adapter, cfg.model.lora_r, cfg.train.max_steps, cfg.train.epochs) == ("lora", 16, 2, 1.0)
    assert cfg.run.output_dir == str(tmp_path / "out" / "sft") and lf.is_file()


def test_alignkit_sft_trains_directly_from_a_llamafactory_file(tmp_path, data_dir, demo_base, capsys, monkeypatch):
    monkeypatch.setattr("alignkit.runtime.plot_curves", lambda *args, **kwargs: None)  # seconds of matplotlib, not ours
    rows = [{"instruction": f"What is {i} + 1?", "input": "", "output": f"{i} + 1 = {i + 1}."} for i in range(8)]
    (data_dir / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data_dir / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "tiny.jsonl"}}))
    lf = lf_file(tmp_path / "lf.yaml", """\
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
lora_rank: 4
dataset: tiny
dataset_dir: {data}
template: llama3
cutoff_len: 64
output_dir: saves/tiny
per_device_train_batch_size: 2
learning_rate: 1.0e-4
num_train_epochs: 1.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
val_size: 0.25
""", data_dir)
    run = tmp_path / "run"
    code = main(["sft", str(lf), f"model.name_or_path={demo_base}", "model.device=cpu", "train.max_steps=1",
                 f"run.output_dir={run}", "run.progress=false", "run.num_samples=0"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"alignkit: {lf} is a LLaMA-Factory config (stage: sft) -> alignkit sft" in err
    assert json.loads((run / "summary.json").read_text())["steps"] == 1
    used = yaml.safe_load((run / "config.yaml").read_text())
    assert (used["model"]["adapter"], used["model"]["lora_r"], used["model"]["lora_alpha"]) == ("lora", 4, 8.0)
    assert (used["data"]["format"], used["data"]["eval_fraction"], used["train"]["mixed_precision"]) == (
        "alpaca", 0.25, "auto")  # bf16: true maps to auto, which is no autocast on this CPU run


def test_use_dora_and_use_rslora_map_to_the_adapter_of_that_name(tmp_path, data_dir):
    base = yaml.safe_load(SFT_YAML.replace("{data}", str(data_dir)))
    assert convert({**base, "use_dora": True}, "lf.yaml").config["model"]["adapter"] == "dora"
    assert convert({**base, "use_rslora": True}, "lf.yaml").config["model"]["adapter"] == "rslora"
    both = convert({**base, "use_dora": True, "use_rslora": True}, "lf.yaml")
    assert both.config["model"]["adapter"] == "lora" and {"use_dora", "use_rslora"} <= {k for k, _ in both.unmapped}
