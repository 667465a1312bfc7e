"""Generation engines. This is the only place that finds EOS and builds response masks.

The HF engine left-pads prompts (so every row's next token is at the same position), runs ``model.generate`` with
the KV cache, and cuts each response at its first EOS, keeping the EOS token itself (it is part of what the policy
chose). Position ids under left padding are derived from the attention mask by transformers' ``generate``.

Sampling is done here, not by transformers: each row draws from its own generator, seeded per row (``seeds``), by
inverse CDF over softmax(logits / temperature) after top-k / top-p. A sampled response is then a function of its
seed and the model only, not of which rows share its batch or its process, so a resumed run and a run on two
processes draw exactly the tokens an uninterrupted single-process run draws. The model's own generation config
(a hub model's repetition penalty, say) is neutralised: tokens must come from the distribution whose log-probs
training computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .batch import RolloutBatch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64  # response token budget
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter


@dataclass(frozen=True)
class Generation:
    prompt_ids: tuple[int, ...]  # (P,) unpadded prompt
    response_ids: tuple[int, ...]  # (R,) up to and including the first EOS, R <= max_new_tokens
    text: str  # decoded response, special tokens removed
    finished: bool  # True when the response ended with EOS (False: hit the length limit)
    logps: tuple[float, ...] = ()  # (R,) the engine's log-prob of each response token, log softmax(logits / T);
    #                                  empty for greedy decoding
    mask: tuple[int, ...] = ()  # (R,) 1 on the policy's own tokens, 0 on an environment's (multi-turn episodes);
    #                              empty = every response token is the policy's


def unwrap(model):
    """The underlying model of an accelerate/DDP wrapper (generate lives there)."""
    return getattr(model, "module", model)


class RowSampler:
    """A transformers logits processor that samples each row from its own seeded stream (``sample``) and returns
    scores that make the chosen token the only finite one, so greedy decoding emits it. (B, V) -> (B, V).

    Row i's uniforms are drawn up front, ``max_new_tokens`` of them from generator(seed_i): the same stream one
    draw per token would give (torch's CPU generator), in one call per row instead of one per row per token."""

    def __init__(self, seeds: Sequence[int], params: SamplingParams) -> None:
        self.uniforms = torch.stack([torch.rand(params.max_new_tokens, dtype=torch.float64,
                                                generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        self.params = params
        self.step = 0
        self.logps: list[torch.Tensor] = []  # per decode step, (B,) log-prob of the chosen token (see Generation)

    def sample(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, V) next-token logits -> (B,) chosen tokens."""
        probs = sampling_probs(scores, self.params).double()
        # one uniform per row per token, from the row's own stream, scaled by the row's total and searched in
        # float64; the choice is capped at the last token with probability > 0, so rounding at the top of the
        # cumulative sum can never pick a token that top-k / top-p removed
        cdf = probs.cumsum(-1)
        u = self.uniforms[:, self.step].to(cdf.device)
        self.step += 1
        choice = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True)
        last_possible = (probs > 0).long().cumsum(-1).argmax(-1, keepdim=True)
        choice = torch.minimum(choice, last_possible)
        # the log-prob training computes (temperature, no top-k / top-p renormalisation): what an importance
        # correction compares against; recorded here so a rollout carries its engine's view of each token
        self.logps.append((scores.float() / self.params.temperature).log_softmax(-1).gather(1, choice).squeeze(1).cpu())
        return choice.squeeze(1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        choice = self.sample(scores)
        return torch.full_like(scores, float("-inf")).scatter_(1, choice.unsqueeze(1), 0.0)


def sampling_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """softmax(logits / temperature) restricted to the top-k tokens and the top-p nucleus, renormalised. (B, V)."""
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = logits.topk(min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        outside = probs.cumsum(-1) - probs >= params.top_p  # the smallest set with mass >= top_p (as HF); never empty
        logits = logits.scatter(1, order, ordered.masked_fill(outside, float("-inf")))
    return logits.softmax(-1)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[Sequence[int]], params: SamplingParams, batch_size: int = 32,
             seeds: Sequence[int] | None = None) -> list[Generation]:
    """Sample (or greedily decode, temperature 0) a response for each prompt, in batches; the model's train/eval
    mode is kept. ``seeds``: one per prompt, each row's random stream (default: drawn from torch's global RNG).

    Levers measured on this project's 2-core CPU for a 10.8M-parameter Llama (32 rows x 32 new tokens, paired
    runs) and not kept: an own decode loop instead of ``generate`` (prefill, one cached forward per token) was
    1.03x [0.94, 1.11]; a preallocated (static) KV cache, which spares the per-token ``cat`` of the dynamic cache
    (a third of a decode step's CPU time) but attends over the whole preallocated length, 1.00x; bf16 weights
    need CPU bf16 instructions this machine lacks. Decoding this small a model is bound by the many small matmuls
    of a batch-of-one-token forward."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sampled = params.temperature > 0
    if sampled and seeds is None:
        seeds = torch.randint(0, 2**62, (len(prompts),)).tolist()
    stops = stop_token_ids(tokenizer, model)
    out: list[Generation] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [list(p) for p in prompts[start : start + batch_size]]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for row, p in enumerate(chunk):
                ids[row, width - len(p):] = torch.tensor(p)
                attention[row, width - len(p):] = 1
            sampler = RowSampler(seeds[start : start + len(chunk)], params) if sampled else None
            output = model.generate(
                input_ids=ids.to(device), attention_mask=attention.to(device), max_new_tokens=params.max_new_tokens,
                do_sample=False, logits_processor=[sampler] if sampled else [], eos_token_id=sorted(stops),
                pad_token_id=tokenizer.pad_token_id, use_cache=True,
                # neutral values, so the model's generation_config cannot bend the distribution we train on
                repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0, num_beams=1,
            )
            step_logps = torch.stack(sampler.logps, 1).tolist() if sampled else None
            for i, (p, row) in enumerate(zip(chunk, output[:, width:].tolist())):
                response, finished = cut_at_eos(row, stops)
                text = tokenizer.decode(response, skip_special_tokens=True)
                logps = tuple(step_logps[i][: len(response)]) if sampled else ()
                out.append(Generation(tuple(p), tuple(response), text, finished, logps))
    finally:
        model.train(was_training)
    return out


def cut_at_eos(tokens: Sequence[int], stop_ids: set[int] | int) -> tuple[list[int], bool]:
    """Tokens up to and including the first stop token, and whether one was found."""
    stop_ids = {stop_ids} if isinstance(stop_ids, int) else stop_ids
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return list(tokens[: i + 1]), True
    return list(tokens), False


def stop_token_ids(tokenizer, model=None) -> set[int]:
    """Every token that ends a reply: the tokenizer's EOS, the model's generation-config EOS ids, and the special
    token the chat template closes an assistant turn with (``<|im_end|>`` for ChatML even when the tokenizer's EOS
    is ``<|endoftext|>``, ``<|eot_id|>`` for Llama 3)."""
    stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = getattr(unwrap(model), "generation_config", None) if model is not None else None
    configured = getattr(config, "eos_token_id", None)
    stops |= set(configured) if isinstance(configured, (list, tuple)) else ({configured} if configured is not None else set())
    turn_end = _end_of_turn_id(tokenizer)
    if turn_end is not None:
        stops.add(turn_end)
    return stops


def _end_of_turn_id(tokenizer) -> int | None:
    """The first special token the chat template puts right after an assistant message's content."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "Zq7Zq7"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                                         tokenize=False)
    if marker not in text:
        return None
    after = tokenizer(text[text.index(marker) + len(marker):], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    return next((t for t in after if t in special), None)


def rollout_batch(generations: Sequence[Generation], pad_id: int) -> RolloutBatch:
    """Lay generations out as [left-padded prompt | right-padded response] with masks and position ids."""
    prompt_width = max(len(g.prompt_ids) for g in generations)
    response_width = max(1, max(len(g.response_ids) for g in generations))
    rows = len(generations)
    ids = torch.full((rows, prompt_width + response_width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    response_mask = torch.zeros((rows, response_width), dtype=torch.long)
    for i, g in enumerate(generations):
        p, r = len(g.prompt_ids), len(g.response_ids)
        ids[i, prompt_width - p : prompt_width] = torch.tensor(g.prompt_ids)
        attention[i, prompt_width - p : prompt_width] = 1
        if r:
            ids[i, prompt_width : prompt_width + r] = torch.tensor(g.response_ids)
            attention[i, prompt_width : prompt_width + r] = 1
            response_mask[i, :r] = torch.tensor(g.mask) if g.mask else 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    finished = torch.tensor([g.finished for g in generations])
    return RolloutBatch(ids, attention, positions, response_mask, finished, prompt_width)
