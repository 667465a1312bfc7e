"""Generation engines behind one interface: ``generate(model, prompt_ids, params, seeds) -> [Generation]`` and
``sync(model)`` (push the trained weights; called after each rollout step's optimizer steps).

- ``hf``: transformers ``generate`` on the live training model (weights gathered under FSDP / ZeRO-3); nothing to
  sync. Sampling is alignkit's seeded per-row sampler (sampling.py), so tokens do not depend on batching.
- ``vllm``: a ``vllm.LLM`` colocated in the training process (the vllm extra, CUDA). Weights are pushed into it
  by ``sync`` (full weights, or the LoRA merged into them); between rollouts it can sleep to hand its GPU memory
  back to the trainer. It returns vLLM's own per-token log-probs (``logprobs_mode = processed_logprobs``: after
  temperature; renormalised over the top-k / top-p set when those are on), which ``sampling.correction`` compares
  with the trainer's. Written against vLLM's documented API (>= 0.10.2); see the README for what was exercised.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from ..config import ConfigError
from ..runtime import generation_model, is_sharded
from ..sampling import Generation, SamplingParams, cut_at_eos, generate, stop_token_ids


def engine_name(requested: str) -> str:
    """auto -> vllm where vLLM is installed and CUDA is present, else hf; an explicit vllm without them is refused."""
    import torch

    has_vllm = importlib.util.find_spec("vllm") is not None
    if requested == "auto":
        return "vllm" if has_vllm and torch.cuda.is_available() else "hf"
    if requested == "vllm" and not (has_vllm and torch.cuda.is_available()):
        raise ConfigError("sampling.engine = vllm needs vLLM and a CUDA GPU: pip install 'alignkit[vllm]' on a GPU "
                          f"machine (vllm installed: {has_vllm}, CUDA: {torch.cuda.is_available()}); or use hf")
    return requested


def make_engine(section, acc, tokenizer, model_path: str | None = None, max_model_len: int | None = None):
    """The engine a recipe's ``sampling:`` section names; ``model_path`` is where vLLM loads the initial weights."""
    name = engine_name(section.engine)
    if name == "hf":
        return HFEngine(acc, tokenizer)
    if is_sharded(acc):
        raise ConfigError("sampling.engine = vllm with FSDP / ZeRO-3 is not supported (the weights would have to be "
                          "gathered for every push); use DDP or ZeRO-2, or sampling.engine = hf")
    return VLLMEngine(acc, tokenizer, model_path, section, max_model_len or section.vllm_max_model_len)


class HFEngine:
    """transformers ``generate`` on the training model itself."""

    name = "hf"

    def __init__(self, acc, tokenizer, batch_size: int | None = None) -> None:
        self.acc, self.tokenizer, self.batch_size = acc, tokenizer, batch_size

    def generate(self, model, prompt_ids: Sequence[Sequence[int]], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        if not prompt_ids:
            return []
        size = self.batch_size or len(prompt_ids)
        if self.acc is None:
            return generate(model, self.tokenizer, prompt_ids, params, batch_size=size, seeds=seeds)
        with generation_model(self.acc, model) as module:  # every process: gathering FSDP / ZeRO-3 is collective
            return generate(module, self.tokenizer, prompt_ids, params, batch_size=size, seeds=seeds)

    def sync(self, model) -> None:
        """Nothing to push: generation runs on the live weights."""


class VLLMEngine:
    """A colocated ``vllm.LLM``: one per process (data parallel, ``external_launcher``), tensor parallel within."""

    name = "vllm"

    def __init__(self, acc, tokenizer, model_path: str, section, max_model_len: int | None) -> None:
        import os

        from vllm import LLM

        self.acc, self.tokenizer, self.section = acc, tokenizer, section
        self.stops = sorted(stop_token_ids(tokenizer))
        # vLLM's external launcher joins the process group torchrun / accelerate already set up
        os.environ.setdefault("RANK", str(acc.process_index))
        os.environ.setdefault("LOCAL_RANK", str(acc.local_process_index))
        os.environ.setdefault("WORLD_SIZE", str(acc.num_processes))
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ.setdefault("MASTER_PORT", "29577")
        self.llm = LLM(model=str(Path(model_path)), tokenizer=str(Path(model_path)),
                       gpu_memory_utilization=section.vllm_gpu_memory_utilization,
                       tensor_parallel_size=section.vllm_tensor_parallel_size, max_model_len=max_model_len,
                       enable_sleep_mode=section.vllm_sleep, distributed_executor_backend="external_launcher",
                       logprobs_mode="processed_logprobs", seed=acc.process_index)
        self.asleep = False
        if section.vllm_sleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def generate(self, model, prompt_ids: Sequence[Sequence[int]], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        from vllm import SamplingParams as VLLMParams

        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        greedy = params.temperature == 0
        requests = [VLLMParams(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or -1,
                               max_tokens=params.max_new_tokens, stop_token_ids=self.stops, logprobs=0,
                               seed=None if greedy or seeds is None else int(seeds[i]) % 2**31,
                               skip_special_tokens=True)
                    for i in range(len(prompt_ids))]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], requests, use_tqdm=False)
        out = []
        for p, output in zip(prompt_ids, outputs):
            completion = output.outputs[0]
            response, finished = cut_at_eos(list(completion.token_ids), set(self.stops))
            logps = () if greedy else tuple(
                step[token].logprob for step, token in zip(completion.logprobs or [], response))
            out.append(Generation(tuple(p), tuple(response), self.tokenizer.decode(response, skip_special_tokens=True),
                                  finished, logps))
        if self.section.vllm_sleep:
            self.llm.sleep(level=1)
            self.asleep = True
        return out

    def sync(self, model) -> None:
        """Push the trained weights into vLLM (the LoRA merged in, peft's names mapped back to the base model's),
        then drop its prefix cache, whose KV entries the old weights computed."""
        unwrapped = self.acc.unwrap_model(model)
        merged = hasattr(unwrapped, "merge_adapter")
        if merged:
            unwrapped.merge_adapter()
        try:
            prefix = getattr(unwrapped, "prefix", "lora_")
            weights = [(name.removeprefix("base_model.model.").replace(".base_layer", ""), param.data)
                       for name, param in unwrapped.named_parameters()
                       if prefix not in name and "original_module" not in name]
            if self.asleep:
                self.llm.wake_up(tags=["weights"])
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.model.load_weights(weights)
            self.llm.reset_prefix_cache()
        finally:
            if merged:
                unwrapped.unmerge_adapter()
