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

import contextlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from ..config import ConfigError
from ..runtime import generation_model, is_sharded
from ..sampling import Generation, SamplingParams, cut_at_eos, generate, stop_token_ids


def engine_name(requested: str, sharded: bool = False) -> str:
    """auto -> vllm where vLLM is installed and CUDA is present (and the training weights are not sharded), else
    hf; an explicit vllm without them is refused."""
    import torch

    has_vllm = importlib.util.find_spec("vllm") is not None
    if requested == "auto":
        return "vllm" if has_vllm and torch.cuda.is_available() and not sharded else "hf"
    if requested == "vllm" and not (has_vllm and torch.cuda.is_available()):
        raise ConfigError("sampling.engine = vllm needs vLLM and a CUDA GPU: pip install 'alignkit[vllm]' on a GPU "
                          f"machine (vllm installed: {has_vllm}, CUDA: {torch.cuda.is_available()}); or use hf")
    return requested


def make_engine(section, acc, tokenizer, model, max_model_len: int | None = None):
    """The engine a recipe's ``sampling:`` section names, for the (prepared) training ``model``."""
    name = engine_name(section.engine, is_sharded(acc))
    if name == "hf":
        return HFEngine(acc, tokenizer)
    refusals = {
        "sampling.engine = vllm with FSDP / ZeRO-3 is not supported (every push would gather the weights); use DDP "
        "or ZeRO-2, or sampling.engine = hf": is_sharded(acc),
        "sampling.vllm_tensor_parallel_size > 1 is not supported yet (every rank of a tensor-parallel group would "
        "have to send the same prompts); use 1, one vLLM per GPU": section.vllm_tensor_parallel_size > 1,
        "sampling.engine = vllm with model.adapter = qlora is not supported (4-bit weights cannot be pushed into "
        "vLLM); use lora, or sampling.engine = hf": bool(getattr(acc.unwrap_model(model), "is_loaded_in_4bit", False)),
        "sampling.correction with top_p < 1 or top_k > 0 on the vllm engine would be biased (vLLM's log-probs are "
        "renormalised over the kept tokens, the trainer's are not); turn one of them off":
        section.correction != "none" and (section.top_p < 1 or section.top_k > 0),
    }
    for message, refused in refusals.items():
        if refused:
            raise ConfigError(message)
    return VLLMEngine(acc, tokenizer, model, section, section.vllm_max_model_len or max_model_len)


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

    def __init__(self, acc, tokenizer, model, section, max_model_len: int | None) -> None:
        import os
        import tempfile

        from vllm import LLM

        self.acc, self.tokenizer, self.section = acc, tokenizer, section
        # vLLM starts from the training model as it is now (a resized vocabulary, a merged LoRA, resumed weights):
        # written once to a scratch folder it can load, with the tokenizer
        folder = Path(tempfile.mkdtemp(prefix="alignkit-vllm-"))
        with self._merged_weights(model) as (base, weights):
            base.save_pretrained(folder, state_dict=dict(weights))
        tokenizer.save_pretrained(folder)
        self.stops = sorted(stop_token_ids(tokenizer, acc.unwrap_model(model)))
        # vLLM's external launcher joins the process group torchrun / accelerate already set up
        os.environ.setdefault("RANK", str(acc.process_index))
        os.environ.setdefault("LOCAL_RANK", str(acc.local_process_index))
        os.environ.setdefault("WORLD_SIZE", str(acc.num_processes))
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ.setdefault("MASTER_PORT", "29577")
        self.llm = LLM(model=str(folder), tokenizer=str(folder),
                       gpu_memory_utilization=section.vllm_gpu_memory_utilization,
                       tensor_parallel_size=section.vllm_tensor_parallel_size, max_model_len=max_model_len,
                       enable_sleep_mode=section.vllm_sleep, distributed_executor_backend="external_launcher",
                       logprobs_mode="processed_logprobs", seed=acc.process_index, dtype=_rollout_dtype())
        self.asleep: set[str] = set()  # what vLLM has released: "weights", "kv_cache"
        self._sleep()

    def generate(self, model, prompt_ids: Sequence[Sequence[int]], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        from vllm import SamplingParams as VLLMParams

        if self.asleep:
            self.llm.wake_up(tags=sorted(self.asleep))
            self.asleep.clear()
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
        self._sleep()
        return out

    def _sleep(self) -> None:
        """Hand vLLM's GPU memory back to the trainer (level 1: the weights are kept in CPU memory, the KV cache
        dropped), when ``vllm_sleep`` is on."""
        if self.section.vllm_sleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def sync(self, model) -> None:
        """Push the trained weights into vLLM, then drop its prefix cache, whose KV entries the old weights
        computed."""
        with self._merged_weights(model) as (_, weights):
            if "weights" in self.asleep:
                self.llm.wake_up(tags=["weights"])
                self.asleep.discard("weights")
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.model.load_weights(weights)
            self.llm.reset_prefix_cache()

    @contextlib.contextmanager
    def _merged_weights(self, model):
        """(the Hugging Face model to save, [(name, tensor)] under the base model's names): a LoRA merged in for
        the duration, peft's wrapper names mapped back, adapter tensors left out."""
        unwrapped = self.acc.unwrap_model(model)
        peft = hasattr(unwrapped, "merge_adapter")
        if peft:
            unwrapped.merge_adapter()
        try:
            prefix = getattr(unwrapped, "prefix", "lora_")
            weights = [(name.removeprefix("base_model.model.").replace(".base_layer", "")
                        .replace("modules_to_save.default.", ""), param.data)
                       for name, param in unwrapped.named_parameters()
                       if prefix not in name and "original_module" not in name]
            yield (unwrapped.get_base_model() if peft else unwrapped), weights
        finally:
            if peft:
                unwrapped.unmerge_adapter()


def _rollout_dtype() -> str:
    """vLLM's weights dtype: bf16 where the GPU has it, else fp16 (the trainer may hold fp32 master weights)."""
    import torch

    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"
