"""peft adapters beyond LoRA: each one trains (the loss falls), saves and reloads to the same logits; the
reference with the adapter off is the base model; and what prompt learning cannot do is refused in one line."""

import math

import pytest
import torch
from torch.testing import assert_close

from alignkit.config import ConfigError, GRPOConfig, SFTConfig, load_config
from alignkit.config.base import ModelConfig
from alignkit.data.collate import pack_batch, pad_batch, pad_sequences
from alignkit.data.loading import load_examples
from alignkit.data.templates import tokenize_conversation
from alignkit.demo.assets import demo_data
from alignkit.losses import step_denominator
from alignkit.models import (
    ModelError,
    Reference,
    check_model_options,
    count_parameters,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    save_model,
)
from alignkit.ops import sequence_logps
from alignkit.recipes.sft import sft_step_loss

PROMPT_LEARNING = ("prefix", "p_tuning_v2")
KNOBS = {"lora": {"lora_r": 4, "lora_alpha": 8}, "dora": {"lora_r": 4, "lora_alpha": 8},
         "rslora": {"lora_r": 4, "lora_alpha": 8}, "ia3": {}, "prefix": {"num_virtual_tokens": 4},
         "p_tuning_v2": {"num_virtual_tokens": 4}}



pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def tiny(tmp_path_factory, demo_tokenizer):
    """A Llama of hidden size 32 and 2 layers, saved with the demo tokenizer: a folder load_causal_lm reads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(demo_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
                         pad_token_id=demo_tokenizer.pad_token_id, eos_token_id=demo_tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def rows(demo_tokenizer):
    examples = load_examples(str(demo_data("sft")), "sft")[:4]
    return [tokenize_conversation(demo_tokenizer, e.messages) for e in examples]


def model_cfg(tiny, adapter, **extra):
    return ModelConfig(name_or_path=tiny, device="cpu", adapter=adapter, **{**KNOBS.get(adapter, {}), **extra})


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits


@pytest.mark.parametrize("adapter", ["dora", "rslora", "ia3", "prefix", "p_tuning_v2"])
def test_adapter_trains_saves_and_reloads(adapter, tiny, rows, demo_tokenizer, tmp_path):
    torch.manual_seed(0)
    checkpointing = adapter in ("dora", "ia3")  # the checkpointed path too, where peft allows it
    model = load_causal_lm(model_cfg(tiny, adapter, gradient_checkpointing=checkpointing), demo_tokenizer)
    trainable, total = count_parameters(model)
    assert 0 < trainable < total / 2
    batch = pad_batch(rows, demo_tokenizer.pad_token_id)
    denominator = step_denominator([batch.loss_mask[:, 1:]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    model.train()
    for _ in range(4):
        loss, _ = sft_step_loss(model, batch, denominator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses

    model.eval()
    expected = logits(model, batch)
    save_model(model, demo_tokenizer, tmp_path / "adapter", state_dict=model.state_dict())  # as save_final does
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # the adapter only
    folder = str(tmp_path / "adapter")
    reload_cfg = ModelConfig(name_or_path=folder, device="cpu")
    reloaded = load_causal_lm(reload_cfg, load_tokenizer(reload_cfg), trainable=False)
    assert_close(logits(reloaded, batch), expected, rtol=1e-4, atol=1e-5)
    if adapter in PROMPT_LEARNING:  # nothing to merge: a later stage cannot train from it
        with pytest.raises(ModelError, match="cannot be merged into its base model"):
            load_causal_lm(reload_cfg, load_tokenizer(reload_cfg))
    else:  # merged into the base for the next stage to train
        merged = load_causal_lm(reload_cfg, load_tokenizer(reload_cfg))
        assert not hasattr(merged, "peft_config")
        assert_close(logits(merged, batch), expected, rtol=1e-4, atol=1e-5)


def test_each_adapter_is_the_method_it_names(tiny, demo_tokenizer):
    """dora / rslora / prefix / p_tuning_v2 reach peft as the variant they name, not as plain LoRA or the other."""
    dora = load_causal_lm(model_cfg(tiny, "dora"), demo_tokenizer)
    assert dora.peft_config["default"].use_dora and any("lora_magnitude_vector" in n for n, _ in dora.named_parameters())
    rslora = load_causal_lm(model_cfg(tiny, "rslora", lora_r=4, lora_alpha=8), demo_tokenizer)
    layer = rslora.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))  # not 8 / 4
    prefix = load_causal_lm(model_cfg(tiny, "prefix"), demo_tokenizer)
    deep = load_causal_lm(model_cfg(tiny, "p_tuning_v2"), demo_tokenizer)
    assert prefix.peft_config["default"].prefix_projection and hasattr(prefix.prompt_encoder["default"], "transform")
    assert not deep.peft_config["default"].prefix_projection
    # P-tuning v2 trains the prefix itself: per virtual token, per layer, keys and values of 2 kv heads x 8 dims
    assert count_parameters(deep)[0] == 4 * 2 * 2 * (2 * 8)


@pytest.mark.parametrize("adapter", ["ia3", "prefix", "p_tuning_v2", "dora"])
def test_reference_with_the_adapter_off_is_the_base_model(adapter, tiny, rows, demo_tokenizer):
    base = load_causal_lm(ModelConfig(name_or_path=tiny, device="cpu"), demo_tokenizer, trainable=False)
    policy = load_causal_lm(model_cfg(tiny, adapter), demo_tokenizer)
    with torch.no_grad():  # make the adapter do something (IA3 starts at 1, DoRA's B at 0)
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    batch = pad_sequences(rows[:3], range(3), demo_tokenizer.pad_token_id)
    args = (batch.input_ids, batch.attention_mask, batch.position_ids, batch.loss_mask)
    with torch.no_grad():
        expected = sequence_logps(base, *args)[0]
        adapted = sequence_logps(policy, *args)[0]
    assert (adapted - expected).abs().max() > 1e-3  # the adapter is on: the test can fail
    assert_close(Reference(policy=policy).sequence_logps(batch)[0], expected)
    assert_close(sequence_logps(policy, *args)[0], adapted)  # and it is back on afterwards


def test_packing_would_leak_across_examples_under_a_prefix(tiny, rows, demo_tokenizer):
    """Why data.packing is refused with prefix tuning: the prefix arrives as a cache, and with a cache the
    restarting positions no longer separate packed examples. The base model packs exactly."""
    base = load_causal_lm(ModelConfig(name_or_path=tiny, device="cpu"), demo_tokenizer, trainable=False)
    prefix = load_causal_lm(model_cfg(tiny, "p_tuning_v2"), demo_tokenizer).eval()
    pad = demo_tokenizer.pad_token_id
    plain, packed = pad_batch(rows[:4], pad), pack_batch(rows[:4], 512, pad)
    assert packed.input_ids.shape[0] < 4
    denominator = step_denominator([plain.loss_mask[:, 1:]])
    with torch.no_grad():
        assert_close(sft_step_loss(base, packed, denominator)[0], sft_step_loss(base, plain, denominator)[0])
        leak = sft_step_loss(prefix, packed, denominator)[0] - sft_step_loss(prefix, plain, denominator)[0]
    assert leak.abs() > 1e-3


def test_a_prefix_model_generates_what_it_scores(tiny, demo_tokenizer):
    """RL recipes sample with generate and score with a forward: under a prefix both must see the same positions
    (left-padded prompts), so greedy tokens are the argmax of the scored logits."""
    from alignkit.ops import response_logps
    from alignkit.sampling import SamplingParams, generate, rollout_batch

    torch.manual_seed(1)
    model = load_causal_lm(model_cfg(tiny, "prefix"), demo_tokenizer)
    prompts = [demo_tokenizer("What is 2 + 3?")["input_ids"], demo_tokenizer("Hi")["input_ids"]]
    gens = generate(model, demo_tokenizer, prompts, SamplingParams(max_new_tokens=3, temperature=0.0))
    batch = rollout_batch(gens, demo_tokenizer.pad_token_id)
    with torch.no_grad():
        logps, _ = response_logps(model, batch)
        greedy = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                       use_cache=False).logits[:, -(batch.response_ids.shape[1] + 1) : -1].argmax(-1)
    mask = batch.response_mask.bool()
    assert torch.equal(greedy[mask], batch.response_ids[mask])
    assert torch.isfinite(logps[mask]).all()


def test_reward_model_with_ia3_keeps_the_head_trainable(tiny, demo_tokenizer):
    model = load_reward_model(model_cfg(tiny, "ia3"), demo_tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("ia3_l" in n for n in trainable) and any("score" in n for n in trainable)


@pytest.mark.parametrize("overrides, message", [
    (["model.adapter=prefix", "data.packing=true"], "data.packing: model.adapter = prefix"),
    (["model.adapter=p_tuning_v2", "run.merge_adapter=true"], "no weight to merge it into"),
    (["model.adapter=prefix", "model.gradient_checkpointing=true"], "peft refuses it"),
    (["model.adapter=lora", "model.num_virtual_tokens=8"], "model.num_virtual_tokens = 8 has no effect here"),
    (["model.adapter=prefix", "model.lora_r=8"], "model.adapter = lora or qlora (or dora, rslora)"),
    (["model.ia3_target_modules=[q_proj]"], "it needs model.adapter = ia3"),
    (["model.adapter=ia3", "model.ia3_target_modules=[q_proj]", "model.ia3_feedforward_modules=[down_proj]"],
     "must be a subset of model.ia3_target_modules"),
    (["run.merge_adapter=true"], "run.merge_adapter needs model.adapter"),
])
def test_what_an_adapter_cannot_do_is_refused_at_config_time(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(SFTConfig, None, overrides)


def test_prompt_learning_refusals_outside_sft(tiny, demo_tokenizer):
    with pytest.raises(ConfigError, match="sampling.engine = vllm serves merged weights"):
        load_config(GRPOConfig, None, ["model.adapter=prefix", "sampling.engine=vllm"])
    with pytest.raises(ConfigError, match="cannot train a reward model or critic"):
        load_reward_model(model_cfg(tiny, "prefix"), demo_tokenizer)
    # configs with no INACTIVE rule for adapter knobs (eval, generate) are refused when the model loads
    with pytest.raises(ConfigError, match="model.num_virtual_tokens = 8 has no effect here"):
        check_model_options(ModelConfig(num_virtual_tokens=8), trainable=False)
    for ok in (["model.adapter=dora", "model.lora_r=8"], ["model.adapter=ia3", "run.merge_adapter=true"],
               ["model.adapter=p_tuning_v2", "model.num_virtual_tokens=8"]):
        load_config(SFTConfig, None, ok)  # where a knob acts, it is accepted
