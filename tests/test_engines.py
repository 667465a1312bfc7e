"""Rollout engines and fast paths against the plain paths: the HF engine's recorded log-probs equal the trainer's,
the output layer computed only where log-probs are read equals the full head, engine choice, threads; the vllm
engine where vLLM and CUDA are present (reported as skipped, never as passed, elsewhere)."""

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from alignkit.config import ConfigError, ModelConfig
from alignkit.data.templates import tokenize_prompt
from alignkit.models import load_causal_lm
from alignkit.ops import accepts_logits_to_keep, response_logps
from alignkit.rollout.engines import HFEngine, engine_name
from alignkit.sampling import SamplingParams, rollout_batch

HAS_VLLM = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def demo_prompts(tokenizer, n=6):
    from alignkit.data.loading import load_examples
    from alignkit.demo.assets import demo_data

    examples = load_examples(str(demo_data("prompts_eval")), "prompt")[:n]
    return examples, [tokenize_prompt(tokenizer, e.prompt) for e in examples]


def test_hf_engine_log_probs_are_the_trainers(demo_sft, demo_tokenizer):
    """The log-prob each sampled token is recorded with equals what training computes for it (fp32, CPU): an
    engine-mismatch correction on the hf engine is a no-op, as it should be."""
    model = load_causal_lm(ModelConfig(name_or_path=str(demo_sft), device="cpu"), demo_tokenizer)
    _, ids = demo_prompts(demo_tokenizer)
    params = SamplingParams(max_new_tokens=12, temperature=0.7, top_k=20)
    gens = HFEngine(None, demo_tokenizer).generate(model, ids, params, seeds=list(range(len(ids))))
    assert all(len(g.logps) == len(g.response_ids) > 0 for g in gens)
    batch = rollout_batch(gens, demo_tokenizer.pad_token_id)
    with torch.no_grad():
        trainer = response_logps(model, batch, temperature=0.7)[0]
    for i, g in enumerate(gens):
        assert_close(trainer[i, : len(g.logps)], torch.tensor(g.logps), rtol=1e-4, atol=1e-4)
    greedy = HFEngine(None, demo_tokenizer).generate(model, ids, SamplingParams(max_new_tokens=4, temperature=0.0))
    assert all(g.logps == () for g in greedy)


class FullHead(torch.nn.Module):
    """The same model without ``logits_to_keep`` in its signature: the plain path, every position's logits."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache)


def test_output_layer_only_where_log_probs_are_read_equals_the_full_head(demo_sft, demo_tokenizer):
    model = load_causal_lm(ModelConfig(name_or_path=str(demo_sft), device="cpu"), demo_tokenizer)
    assert accepts_logits_to_keep(model) and not accepts_logits_to_keep(FullHead(model))
    _, ids = demo_prompts(demo_tokenizer)
    gens = HFEngine(None, demo_tokenizer).generate(model, ids, SamplingParams(max_new_tokens=10), seeds=list(range(6)))
    batch = rollout_batch(gens, demo_tokenizer.pad_token_id)
    with torch.no_grad():
        fast, fast_entropy = response_logps(model, batch, 0.9, with_entropy=True)
        plain, plain_entropy = response_logps(FullHead(model), batch, 0.9, with_entropy=True)
    assert_close(fast, plain)
    assert_close(fast_entropy, plain_entropy)


def test_engine_choice():
    assert engine_name("hf") == "hf"
    if not HAS_VLLM:
        assert engine_name("auto") == "hf"
        with pytest.raises(ConfigError, match="sampling.engine = vllm needs vLLM and a CUDA GPU"):
            engine_name("vllm")


def test_threads_follow_run_threads_or_the_free_cores():
    import os

    from alignkit.runtime import choose_threads, free_cores

    assert choose_threads(3) == (3, "run.threads")
    threads, why = choose_threads(0)
    assert "cores free" in why and 1 <= threads <= len(os.sched_getaffinity(0))
    free = free_cores([0])
    assert free is not None and 0.0 <= free <= 1.0


@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM and a CUDA GPU (the vllm extra); not run here")
def test_vllm_engine_matches_the_hf_engine_and_follows_weight_pushes(demo_sft, demo_tokenizer):
    from alignkit.rollout.engines import VLLMEngine

    model = load_causal_lm(ModelConfig(name_or_path=str(demo_sft), device="cuda"), demo_tokenizer,
                           torch.device("cuda"))
    section = SimpleNamespace(vllm_gpu_memory_utilization=0.2, vllm_tensor_parallel_size=1, vllm_sleep=True,
                              vllm_max_model_len=None)
    acc = SimpleNamespace(process_index=0, local_process_index=0, num_processes=1, unwrap_model=lambda m: m)
    engine = VLLMEngine(acc, demo_tokenizer, model, section, 512)
    hf = HFEngine(None, demo_tokenizer)
    _, ids = demo_prompts(demo_tokenizer)
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    assert [g.response_ids for g in engine.generate(model, ids, greedy)] == [g.response_ids for g in hf.generate(model, ids, greedy)]
    # sampled: vLLM's log-probs against the trainer's, within bf16-level tolerance
    gens = engine.generate(model, ids, SamplingParams(max_new_tokens=12, temperature=1.0), seeds=list(range(6)))
    batch = rollout_batch(gens, demo_tokenizer.pad_token_id).to("cuda")
    with torch.no_grad():
        trainer = response_logps(model, batch)[0].cpu()
    for i, g in enumerate(gens):
        assert_close(trainer[i, : len(g.logps)], torch.tensor(g.logps), rtol=0.0, atol=0.05)
    # a weight push: perturb the model, sync, and greedy answers follow the new weights
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    engine.sync(model)
    assert [g.response_ids for g in engine.generate(model, ids, greedy)] == [g.response_ids for g in hf.generate(model, ids, greedy)]
