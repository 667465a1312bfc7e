"""Long context: model.rope_scaling reaches the loaded model's rotary settings (and changes its frequencies),
attention kernels are checked against what is installed, and a long run is told what would save memory."""

import pytest
import torch

from alignkit.config import ConfigError, ModelConfig, SFTConfig, load_config
from alignkit.long_context import advice_for, attention_problem, long_context_advice, rope_parameters
from alignkit.models import load_causal_lm

pytestmark = pytest.mark.usefixtures("one_thread")

def test_rope_parameters_keep_the_model_theta_and_fill_yarn_length():
    current = {"rope_theta": 500000.0, "rope_type": "default", "partial_rotary_factor": 0.5}
    assert rope_parameters({"type": "linear", "factor": 2}, current, 4096) == {
        "rope_theta": 500000.0, "partial_rotary_factor": 0.5, "rope_type": "linear", "factor": 2.0}
    yarn = rope_parameters({"type": "yarn", "factor": 4.0}, current, 4096)
    assert yarn["rope_type"] == "yarn" and yarn["original_max_position_embeddings"] == 4096
    given = rope_parameters({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}, current, 8192)
    assert given["original_max_position_embeddings"] == 2048


@pytest.mark.parametrize("value, message", [
    ("{type: ntk, factor: 2}", "type 'ntk': expected one of linear, dynamic, yarn"),
    ("{type: linear, factor: 1}", "factor 1: expected a number > 1"),
    ("{type: linear}", "factor None: expected a number > 1"),
    ("{type: linear, factor: 2, original_max_position_embeddings: 512}", "only with type yarn"),
    ("{type: yarn, factor: 2, rope_type: yarn}", "unknown key 'rope_type'"),
])
def test_bad_rope_scaling_is_one_line(value, message):
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, None, [f"model.rope_scaling={value}"])
    assert 'key "model.rope_scaling"' in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_linear_scaling_reaches_the_model_and_changes_its_rotary_frequencies(demo_base, demo_tokenizer):
    plain = load_causal_lm(ModelConfig(name_or_path=str(demo_base), device="cpu"), demo_tokenizer, trainable=False)
    scaled = load_causal_lm(ModelConfig(name_or_path=str(demo_base), device="cpu",
                                        rope_scaling={"type": "linear", "factor": 2.0}), demo_tokenizer, trainable=False)
    assert scaled.config.rope_parameters == {"rope_theta": plain.config.rope_parameters["rope_theta"],
                                             "rope_type": "linear", "factor": 2.0}
    # linear interpolation: position p is rotated as p / factor, i.e. every frequency halves
    torch.testing.assert_close(scaled.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq / 2)
    ids = torch.tensor([demo_tokenizer("<|user|>\nWhat is 12 + 30?<|end|>\n", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        change = (scaled(input_ids=ids).logits - plain(input_ids=ids).logits).abs().max()
    assert change > 1e-2
    yarn = load_causal_lm(ModelConfig(name_or_path=str(demo_base), device="cpu",
                                      rope_scaling={"type": "yarn", "factor": 4}), demo_tokenizer, trainable=False)
    assert yarn.config.rope_parameters["original_max_position_embeddings"] == plain.config.max_position_embeddings


def test_attention_problem_names_what_is_missing():
    known = ["flash_attention_2", "flex_attention", "sdpa", "paged|eager"]
    assert attention_problem("sdpa", "cpu", set(), known) is None
    assert attention_problem("eager", "cpu", set(), known) is None
    missing = attention_problem("flash_attention_2", "cuda", set(), known)
    assert "needs the flash-attn package or the kernels package" in missing and "pip install flash-attn" in missing
    assert "needs a CUDA GPU, but the model runs on cpu" in attention_problem("flash_attention_2", "cpu", {"flash_attn"}, known)
    assert attention_problem("flash_attention_2", "cuda", {"kernels"}, known) is None
    assert "not an attention kernel transformers knows" in attention_problem("flash2", "cuda", set(), known)
    assert "pip install kernels" in attention_problem("kernels-community/flash-attn", "cuda", set(), known)


def test_loading_with_an_impossible_kernel_is_one_line(demo_base, demo_tokenizer):
    with pytest.raises(ConfigError, match="model.attn_implementation = flash_attention_2 needs") as err:
        load_causal_lm(ModelConfig(name_or_path=str(demo_base), device="cpu", attn_implementation="flash_attention_2"),
                       demo_tokenizer, trainable=False)
    assert "\n" not in str(err.value)
    eager = load_causal_lm(ModelConfig(name_or_path=str(demo_base), device="cpu", attn_implementation="eager"),
                           demo_tokenizer, trainable=False)
    assert eager.config._attn_implementation == "eager"


def test_long_context_advice():
    assert long_context_advice(2048, "eager", False, cuda=False, flash_installed=False) is None  # short: nothing
    both = long_context_advice(8192, "eager", False, cuda=False, flash_installed=False)
    assert "model.attn_implementation = sdpa" in both and "model.gradient_checkpointing = true" in both
    assert long_context_advice(8192, None, True, cuda=False, flash_installed=False) is None  # sdpa already
    assert "flash_attention_2" in long_context_advice(4096, None, True, cuda=True, flash_installed=True)
    assert long_context_advice(4096, "flash_attention_2", True, cuda=True, flash_installed=True) is None


def test_advice_reads_the_row_length_and_is_printed_at_run_start(tmp_path, capsys):
    packed = load_config(SFTConfig, None, ["data.packing=true", "data.pack_length=8192"])
    assert "8192 tokens per row" in advice_for(packed, "cpu")
    assert advice_for(load_config(SFTConfig, None, []), "cpu") is None

    from alignkit.runtime import start_run

    cfg = load_config(SFTConfig, None, ["data.max_length=4096", f"run.output_dir={tmp_path / 'run'}",
                                        "model.device=cpu", "run.threads=1"])
    start_run(cfg, "sft")
    assert capsys.readouterr().out.count("long context (4096 tokens per row)") == 1
