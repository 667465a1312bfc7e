"""Loading from local folders, LoRA save / reload / merge, and the QLoRA error off CUDA."""

import pytest
import torch
from torch.testing import assert_close

from alignkit.config import ModelConfig
from alignkit.models import count_parameters, load_causal_lm, load_tokenizer, save_model


def logits(model, tokenizer):
    ids = torch.tensor([tokenizer("<|user|>\nWhat is 2 + 3?<|end|>\n", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_local_folder_full_model_round_trip(demo_base, demo_tokenizer, tmp_path):
    cfg = ModelConfig(name_or_path=str(demo_base), device="cpu")
    model = load_causal_lm(cfg, demo_tokenizer)
    save_model(model, demo_tokenizer, tmp_path / "copy")
    again_cfg = ModelConfig(name_or_path=str(tmp_path / "copy"), device="cpu")
    again = load_causal_lm(again_cfg, load_tokenizer(again_cfg))
    assert_close(logits(again, demo_tokenizer), logits(model, demo_tokenizer))
    assert (tmp_path / "copy" / "tokenizer.json").is_file()


def test_lora_adapter_saves_reloads_and_merges(demo_base, demo_tokenizer, tmp_path):
    cfg = ModelConfig(name_or_path=str(demo_base), device="cpu", adapter="lora", lora_r=4, lora_alpha=8)
    model = load_causal_lm(cfg, demo_tokenizer)
    trainable, total = count_parameters(model)
    assert 0 < trainable < total / 4
    with torch.no_grad():  # make the adapter do something (B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    expected = logits(model, demo_tokenizer)
    save_model(model, demo_tokenizer, tmp_path / "adapter", merge_adapter=True)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # the base weights are not copied
    for folder in ("adapter", "adapter/merged"):
        reload_cfg = ModelConfig(name_or_path=str(tmp_path / folder), device="cpu")
        reloaded = load_causal_lm(reload_cfg, load_tokenizer(reload_cfg))
        assert_close(logits(reloaded, demo_tokenizer), expected, rtol=1e-4, atol=1e-5)
    assert_close(logits(model, demo_tokenizer), expected)  # saving merged did not touch the live model


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error path is for machines without CUDA")
def test_qlora_without_cuda_is_a_clear_error(demo_base, demo_tokenizer):
    cfg = ModelConfig(name_or_path=str(demo_base), device="cpu", adapter="qlora")
    with pytest.raises(RuntimeError, match="qlora needs a CUDA GPU"):
        load_causal_lm(cfg, demo_tokenizer)


def test_trust_remote_code_is_off_by_default():
    assert ModelConfig().trust_remote_code is False


def test_gradient_checkpointing_with_lora_trains(demo_base, demo_tokenizer):
    cfg = ModelConfig(name_or_path=str(demo_base), device="cpu", adapter="lora", lora_r=4, gradient_checkpointing=True)
    model = load_causal_lm(cfg, demo_tokenizer)
    model.train()
    ids = torch.tensor([demo_tokenizer("<|user|>\nWhat is 2 + 3?<|end|>\n", add_special_tokens=False)["input_ids"]])
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]  # lora_A gets 0: B starts at 0
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
