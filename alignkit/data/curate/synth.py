"""``alignkit data synth SEEDS -o OUT --model MODEL [--num N --novelty rouge|minhash --max-similarity 0.7]``: new
instruction-following records from a few seed instructions, by self-instruct (Wang et al. 2022, "Self-Instruct:
Aligning Language Models with Self-Generated Instructions").

Each round: ``--shots`` instructions drawn from the pool (the seeds and every instruction kept so far) are shown
to the model, which writes a new one; it is kept only when novel, its similarity to every instruction in the pool
below ``--max-similarity`` (ROUGE-L F, as the paper, or MinHash-estimated Jaccard of word bigrams); the model
then answers it. Records are written as alpaca (``instruction``, ``output``) or prompt_response.

Where this departs from the paper:

1. The prompt is one chat user turn (rendered by the model's chat template) listing the examples, not a raw
   "Task 1: ... Task 9:" continuation: alignkit's models are chat models. The new instruction is the first
   non-empty line of the reply, with any list numbering stripped.
2. The examples are drawn uniformly from the pool, not 6 seeds + 2 generated.
3. No classification / input-first instance generation and no keyword filters: one answer per instruction.
4. Generation is alignkit's own (`alignkit.sampling.generate`), each row sampled from its own seed drawn from
   ``--seed``: the same command on the same model writes the same file.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence

from ..formats import Message
from .records import Item
from .similarity import minhash, rouge_l, shingles

Sampler = Callable[[list[str], list[int]], list[str]]  # (user messages, one seed each) -> replies
_NUMBERING = re.compile(r"^(?:\s*(?:(?:task|instruction)\s*\d*\s*[:.)-]|\d+\s*[:.)-]|[-*•]))+\s*", re.IGNORECASE)
MINHASH_NGRAM = 2  # instructions are one sentence: word bigrams keep order without making every pair disjoint


class Novelty:
    """The instructions seen so far, and how similar a candidate is to the closest of them."""

    def __init__(self, metric: str, num_perm: int = 128) -> None:
        if metric not in ("rouge", "minhash"):
            raise ValueError(f"novelty metric {metric!r}: expected rouge or minhash")
        self.metric, self.num_perm = metric, num_perm
        self.texts: list[str] = []
        self.sketches: list = []

    def _sketch(self, text: str):
        return minhash(shingles(text, MINHASH_NGRAM), self.num_perm)

    def add(self, text: str) -> None:
        self.texts.append(text)
        if self.metric == "minhash":
            self.sketches.append(self._sketch(text))

    def closest(self, text: str) -> tuple[float, str]:
        """(similarity, text) of the most similar instruction seen; (0.0, "") before any."""
        if self.metric == "rouge":
            scores = [rouge_l(text, other) for other in self.texts]
        else:
            sketch = self._sketch(text)
            scores = [sketch.jaccard(other) for other in self.sketches]
        if not scores:
            return 0.0, ""
        best = max(range(len(scores)), key=scores.__getitem__)
        return scores[best], self.texts[best]


def seed_instruction(item: Item) -> str:
    """A seed record's instruction: its first user turn (alpaca's input merged in), else all its text."""
    example = item.example
    turns = getattr(example, "messages", None) or getattr(example, "prompt", None) or ()
    users = [m.content for m in turns if isinstance(m, Message) and m.role == "user"]
    return users[0] if users else item.text


def instruction_prompt(examples: Sequence[str]) -> str:
    listed = "\n".join(f"{i}. {text.strip()}" for i, text in enumerate(examples, 1))
    return (f"Here are some tasks:\n{listed}\nWrite one new task, different from these. "
            "Reply with the task only.")


def clean_instruction(reply: str) -> str:
    """The first non-empty line of a reply, without list numbering ("4.", "Task 5:", "-") or quotes."""
    line = next((line for line in reply.splitlines() if line.strip()), "")
    return _NUMBERING.sub("", line).strip().strip("\"'").strip()


def self_instruct(seeds: Sequence[str], sample: Sampler, num: int, novelty: Novelty, max_similarity: float,
                  seed: int = 0, shots: int = 3, max_candidates: int | None = None,
                  batch_size: int = 8) -> tuple[list[tuple[str, str]], Counter]:
    """((instruction, answer) pairs, counts: generated / kept / too similar / empty instruction / empty answer)."""
    rng = random.Random(seed)
    pool = list(dict.fromkeys(s.strip() for s in seeds if s.strip()))
    for text in pool:
        novelty.add(text)
    limit = max_candidates if max_candidates is not None else 5 * num
    kept: list[tuple[str, str]] = []
    counts = Counter({"generated": 0, "kept": 0, "too similar": 0, "empty instruction": 0, "empty answer": 0})
    while len(kept) < num and counts["generated"] < limit:
        # no more rows than instructions still wanted: every candidate is then kept or dropped for a reason
        rows = min(batch_size, num - len(kept), limit - counts["generated"])
        prompts = [instruction_prompt(rng.sample(pool, min(shots, len(pool)))) for _ in range(rows)]
        replies = sample(prompts, [rng.getrandbits(62) for _ in prompts])
        counts["generated"] += rows
        fresh: list[str] = []
        for reply in replies:
            instruction = clean_instruction(reply)
            if not instruction:
                counts["empty instruction"] += 1
            elif novelty.closest(instruction)[0] >= max_similarity:
                counts["too similar"] += 1
            else:
                novelty.add(instruction)  # later candidates of this batch are compared with it too
                fresh.append(instruction)
        answers = sample(fresh, [rng.getrandbits(62) for _ in fresh]) if fresh else []
        for instruction, answer in zip(fresh, answers):
            if answer.strip():
                kept.append((instruction, answer.strip()))
                pool.append(instruction)
            else:
                counts["empty answer"] += 1
    counts["kept"] = len(kept)
    return kept, counts


def as_records(pairs: Sequence[tuple[str, str]], fmt: str) -> list[dict]:
    keys = {"alpaca": ("instruction", "output"), "prompt_response": ("prompt", "response")}[fmt]
    return [dict(zip(keys, pair)) for pair in pairs]


def model_sampler(name: str, device: str, max_new_tokens: int, temperature: float, batch_size: int) -> Sampler:
    """Replies of a model to user messages through alignkit's own loading (`alignkit.models`), chat template and
    seeded sampling (`alignkit.sampling.generate`). Imported here, when synth runs: the other data tools never
    load torch."""
    from ...config import ModelConfig
    from ...models import load_causal_lm, load_tokenizer, resolve_device
    from ...sampling import SamplingParams, generate
    from ..templates import tokenize_prompt

    cfg = ModelConfig(name_or_path=name, device=device)
    tokenizer = load_tokenizer(cfg, announce=print)
    model = load_causal_lm(cfg, tokenizer, resolve_device(cfg.device), with_adapter=False, trainable=False)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)

    def sample(messages: list[str], seeds: list[int]) -> list[str]:
        ids = [tokenize_prompt(tokenizer, (Message("user", text),)) for text in messages]
        return [g.text for g in generate(model, tokenizer, ids, params, batch_size=batch_size, seeds=seeds)]

    return sample
