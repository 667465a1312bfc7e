"""``alignkit cai CONFIG.yaml``: Constitutional AI's two data stages (Bai et al. 2022, "Constitutional AI:
Harmlessness from AI Feedback"), each writing ``cai.jsonl`` in alignkit's own data formats, so it feeds
``alignkit sft`` / ``alignkit dpo`` as it is (in a pipeline: ``data: {train: ${stage.output}}``).

- ``cai.stage: critique`` (stage 1, SL-CAI): the model answers every prompt (seeded per prompt); then
  ``cai.revisions`` rounds, each against a principle sampled for that prompt (distinct ones while they last): the
  critic critiques the current response against the principle's critique request, and revises it under its
  revision request. The last revision is the SFT target: ``{"prompt", "response", "initial", "critiques",
  "revisions", "principles", "seed", "model", "critic"}`` (the prompt is the record's text, or its message list;
  when any prompt is a dialogue every record also carries ``"messages"``, the prompt and the revision, which is
  what the sft loader then reads). A blank revision leaves the response as it was (``blank_revisions``); a prompt
  none of whose revisions has text is skipped (``skipped_no_revision``). A critic model's revision that ran out
  of ``cai.max_new_tokens`` is kept and counted (``revisions_cut``: trained on, it teaches stopping mid-sentence).
- ``cai.stage: feedback`` (stage 2, RLAIF): the model samples two answers per prompt (``cai.temperature`` > 0,
  answer k from seed ``rollout_seeds(seed, k, i)`` as alignkit generate's sample k); the judge is asked the compare
  question of a principle sampled for that prompt, the two answers shown as (A) and (B) in a seeded random order
  (a judge's position bias then falls on either side alike; ``picked_first`` reports it). Its verdict
  (``parse_verdict``: "A", "(B)", "Response A", "The answer is (A)"...) makes a pair ``{"prompt", "chosen",
  "rejected", "principle", "judge", "verdict" (its raw text), "shown_first" ("chosen" | "rejected"), "samples",
  "seeds", "model"}``. Skipped and counted: a blank answer (``skipped_blank``), two equal answers
  (``skipped_identical``, never asked), a tie (``skipped_tie``), a verdict that does not parse
  (``skipped_unparseable``).

In both, a record equal to an earlier one is dropped (``duplicates_dropped``: the trainers refuse repeats), and
the keys the loaders read beyond the trained ones (``margin``, ``system``) are never written.

Who critiques: ``cai.scripted`` (a Python class, for tests and worlds with a known judge), else ``cai.critic`` (a
causal LM), else the model itself. A critic model is asked each template as one user turn through its chat template
and answers greedily; an ask longer than its context (``max_position_embeddings``) keeps its end
(``asks_truncated``). Real use needs a capable instruction-following critic: the demo's tiny model cannot critique
(its verdicts mostly do not parse, and are counted so); the demo uses ``alignkit.demo.critic:ScriptedCritic``.

Where this departs from the paper:

1. No few-shot examples are prepended to the critique and revision asks (the paper's are); a constitution's
   templates can carry some.
2. Critiques, revisions and verdicts are greedy (a rerun writes the same file); the model's answers are sampled.
3. A verdict is the hard label parsed from the judge's text, not the normalised probabilities of the (A) / (B)
   tokens used as soft preference-model targets; the pairs train DPO (or a reward model) directly.
4. One principle per comparison (no ensembling over principles), one order per pair, no chain-of-thought.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .constitution import Constitution, Principle, parse_verdict, prompt_text
from .data.formats import Conversation

OUTPUT = "cai.jsonl"
COUNTS = {"critique": ("blank_revisions", "unchanged_revisions", "skipped_no_revision", "duplicates_dropped"),
          "feedback": ("skipped_blank", "skipped_identical", "skipped_tie", "skipped_unparseable", "duplicates_dropped")}
STAGE_METHODS = {"critique": ("critique", "revise"), "feedback": ("compare",)}  # what each stage calls on cai.scripted


def run_cai(cfg, resume=None) -> dict:
    """``alignkit cai CONFIG.yaml``: run the configured stage and write ``cai.jsonl`` (see the module docstring),
    with summary.json, report.html and the resolved config.yaml, in the run folder; prints a summary table."""
    from tqdm.auto import tqdm

    from .checkpoint import atomic_write_json, atomic_write_text
    from .config import ConfigError
    from .constitution import load_constitution
    from .data.prepare import load_prompts
    from .generate import drop_repeated_records
    from .models import load_causal_lm, load_tokenizer, resolve_device
    from .report import write_report
    from .rollout.core import tokenize_prompts
    from .runtime import open_run_dir, quiet_libraries

    if resume:
        raise ConfigError("alignkit cai writes its file in one go and keeps no checkpoints: there is nothing to "
                          "resume; run it again (the same cai.seed writes the same file)")
    quiet_libraries()
    if cfg.run.threads:
        import torch

        torch.set_num_threads(cfg.run.threads)
    c = cfg.cai
    constitution = load_constitution(c.constitution)  # a bad file or class is refused before anything loads
    scripted = Scripted(c.scripted, c.stage) if c.scripted is not None else None
    run_dir = open_run_dir(cfg, "cai")
    device = resolve_device(cfg.model.device)
    examples = load_prompts(cfg.data, c.max_prompts)
    tokenizer = load_tokenizer(cfg.model, announce=print)
    kept, prompt_ids, report = tokenize_prompts(examples, tokenizer, cfg.data, cfg.data.train)
    print(report.describe(cfg.data.train))
    position = {id(e): i for i, e in enumerate(examples)}  # a prompt's seeds follow its place in the file
    model = load_causal_lm(cfg.model, tokenizer, device, trainable=False)
    critic = scripted or model_critic(cfg, constitution, model, tokenizer, device)
    calls = len(kept) * (1 + 2 * c.revisions if c.stage == "critique" else 3)  # answers, then critic calls
    with tqdm(total=calls, desc=f"cai {c.stage}", unit="call", disable=not cfg.run.progress) as bar:
        policy = Policy(model, tokenizer, [position[id(e)] for e in kept], prompt_ids, bar)
        records, stats = STAGES[c.stage](cfg, constitution, critic, policy, kept, bar)
    records = [{**r, "model": cfg.model.name_or_path} for r in records]
    records, stats["duplicates_dropped"] = drop_repeated_records(records)
    path = run_dir / OUTPUT
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    summary = {"recipe": "cai", "stage": c.stage, "model": cfg.model.name_or_path, "critic": critic.name,
               "constitution": constitution.source, "data": cfg.data.train, "prompts": len(kept),
               "prompts_truncated": report.truncated, "prompts_dropped": report.dropped, "kept": len(records),
               **stats, "asks_truncated": getattr(critic, "truncated", 0),
               "sampling": {"temperature": c.temperature, "max_new_tokens": c.max_new_tokens, "seed": c.seed},
               "file": str(path), "run_dir": str(run_dir)}
    atomic_write_json(run_dir / "summary.json", summary)
    write_report(run_dir, summary, records)
    print_summary(summary)
    return summary


class Policy:
    """The model that answers: k seeded samples per prompt, ``cai.batch_size`` rows per generate call."""

    def __init__(self, model, tokenizer, positions: list[int], prompt_ids: list[list[int]], bar) -> None:
        self.model, self.tokenizer, self.positions, self.prompt_ids, self.bar = model, tokenizer, positions, prompt_ids, bar

    def answers(self, c, samples: int) -> list[list[tuple[str, int]]]:
        """[prompt][k] -> (text, seed); answer k of the prompt at file position p samples from
        ``rollout_seeds(cai.seed, k, p)``: the tokens depend on neither the batch size nor the other prompts."""
        from .rollout.core import chunks_of, rollout_seeds
        from .sampling import SamplingParams, generate

        params = SamplingParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature)
        rows = [(i, k) for i in range(len(self.prompt_ids)) for k in range(samples)]
        seeds = [rollout_seeds(c.seed, k, self.positions[i], 1)[0] for i, k in rows]
        out: list[list[Any]] = [[None] * samples for _ in self.prompt_ids]
        for chunk in chunks_of(range(len(rows)), c.batch_size):
            gens = generate(self.model, self.tokenizer, [self.prompt_ids[rows[r][0]] for r in chunk], params,
                            batch_size=len(chunk), seeds=[seeds[r] for r in chunk])
            for g, r in zip(gens, chunk):
                out[rows[r][0]][rows[r][1]] = (g.text, seeds[r])
            self.bar.update(len(chunk))
        return out


def principle_draws(seed: int, position: int, n: int, rounds: int, stage: str) -> list[int]:
    """Principle indices for a prompt's rounds, from the prompt's own stream: a shuffled pass over all n, then
    another, so a prompt meets distinct principles while they last."""
    rng = random.Random(f"alignkit-cai/{seed}/{stage}/{position}")
    out: list[int] = []
    while len(out) < rounds:
        out += rng.sample(range(n), n)
    return out[:rounds]


def in_batches(ask: Callable[..., list[str]], columns: Sequence[Sequence], size: int, bar) -> list[str]:
    """``ask`` over aligned columns, ``size`` rows a call."""
    from .rollout.core import chunks_of

    out: list[str] = []
    for chunk in chunks_of(range(len(columns[0])), size):
        out += ask(*[[column[i] for i in chunk] for column in columns])
        bar.update(len(chunk))
    return out


# -------------------------------------------------------------------------------------------------- stages
def critique_stage(cfg, constitution: Constitution, critic: Critic, policy: Policy, examples: Sequence,
                   bar) -> tuple[list[dict], dict]:
    """Stage 1: answer, then ``cai.revisions`` rounds of critique -> revision; SFT records of the last revisions."""
    c, principles = cfg.cai, constitution.principles
    answers = [a[0] for a in policy.answers(c, 1)]
    draws = [principle_draws(c.seed, p, len(principles), c.revisions, "critique") for p in policy.positions]
    prompts = [e.prompt for e in examples]
    current = [text for text, _ in answers]
    trails: list[dict[str, list[str]]] = [{"critiques": [], "revisions": [], "principles": []} for _ in examples]
    counts = Counter({k: 0 for k in COUNTS["critique"]})
    for r in range(c.revisions):
        chosen = [principles[d[r]] for d in draws]
        critiques = in_batches(critic.critiques, [prompts, current, chosen], c.batch_size, bar)
        revised = in_batches(critic.revisions, [prompts, current, critiques, chosen], c.batch_size, bar)
        for i, trail in enumerate(trails):
            trail["critiques"].append(critiques[i])
            trail["revisions"].append(revised[i])
            trail["principles"].append(chosen[i].name)
            counts["blank_revisions"] += not revised[i].strip()
            counts["unchanged_revisions"] += bool(revised[i].strip()) and revised[i].strip() == current[i].strip()
            current[i] = revised[i] if revised[i].strip() else current[i]
    records, dialogues = [], any(not isinstance(prompt_json(p), str) for p in prompts)
    for i, trail in enumerate(trails):
        if not any(text.strip() for text in trail["revisions"]):
            counts["skipped_no_revision"] += 1
            continue
        record = {"prompt": prompt_json(prompts[i]), "response": current[i], "initial": answers[i][0], **trail,
                  "seed": answers[i][1] if c.temperature > 0 else None, "critic": critic.name}
        if dialogues:  # the sft loader reads one format per file: a dialogue's prompt needs "messages"
            record["messages"] = [*as_dicts(prompts[i]), {"role": "assistant", "content": current[i]}]
        records.append(record)
    used = Counter(name for trail in trails for name in trail["principles"])
    return records, {**counts, "revision_rounds": c.revisions, "revisions_cut": getattr(critic, "revisions_cut", 0),
                     "principles": dict(sorted(used.items()))}


def feedback_stage(cfg, constitution: Constitution, critic: Critic, policy: Policy, examples: Sequence,
                   bar) -> tuple[list[dict], dict]:
    """Stage 2: two sampled answers per prompt, a verdict under a sampled principle, the preference pairs."""
    c, principles = cfg.cai, constitution.principles
    answers = policy.answers(c, 2)
    counts = Counter({k: 0 for k in COUNTS["feedback"]})
    asks = []  # (prompt index, the sample shown first, principle)
    for i, ((a, _), (b, _)) in enumerate(answers):
        p = policy.positions[i]
        if not (a.strip() and b.strip()) or a.strip() == b.strip():
            counts["skipped_blank" if not (a.strip() and b.strip()) else "skipped_identical"] += 1
            continue
        first = int(random.Random(f"alignkit-cai/{c.seed}/order/{p}").random() < 0.5)
        asks.append((i, first, principles[principle_draws(c.seed, p, len(principles), 1, "feedback")[0]]))
    bar.update(len(examples) - len(asks))
    verdicts = in_batches(critic.verdicts, [[examples[i].prompt for i, _, _ in asks],
                                            [answers[i][f][0] for i, f, _ in asks],
                                            [answers[i][1 - f][0] for i, f, _ in asks],
                                            [p for _, _, p in asks]], c.batch_size, bar)
    records, firsts = [], []
    for (i, first, principle), raw in zip(asks, verdicts):
        verdict = parse_verdict(raw)
        if verdict in (None, "tie"):
            counts["skipped_unparseable" if verdict is None else "skipped_tie"] += 1
            continue
        firsts.append(verdict == "A")
        win = first if verdict == "A" else 1 - first
        (chosen, chosen_seed), (rejected, rejected_seed) = answers[i][win], answers[i][1 - win]
        records.append({"prompt": prompt_json(examples[i].prompt), "chosen": chosen, "rejected": rejected,
                        "principle": principle.name, "judge": critic.name, "verdict": raw,
                        "shown_first": "chosen" if verdict == "A" else "rejected",
                        "samples": {"chosen": win, "rejected": 1 - win},
                        "seeds": {"chosen": chosen_seed, "rejected": rejected_seed}})
    used = Counter(p.name for _, _, p in asks)
    return records, {**counts, "asked": len(asks), "picked_first": sum(firsts) / len(firsts) if firsts else None,
                     "principles": dict(sorted(used.items()))}


STAGES = {"critique": critique_stage, "feedback": feedback_stage}


# ------------------------------------------------------------------------------------------------- critics
class Critic(Protocol):
    """What the stages ask of a critic, a batch at a time: aligned lists in, one text per row out."""

    name: str  # written into every record ("critic" / "judge")

    def critiques(self, prompts: Sequence[Conversation], responses: Sequence[str],
                  principles: Sequence[Principle]) -> list[str]: ...

    def revisions(self, prompts: Sequence[Conversation], responses: Sequence[str], critiques: Sequence[str],
                  principles: Sequence[Principle]) -> list[str]: ...

    def verdicts(self, prompts: Sequence[Conversation], firsts: Sequence[str], seconds: Sequence[str],
                 principles: Sequence[Principle]) -> list[str]: ...  # the judge's raw text; see parse_verdict


class Scripted:
    """``cai.scripted``: a Python class standing in for the critic, called one item at a time with the prompt as
    text (``constitution.prompt_text``) and the ``Principle``; whatever it returns must be a str."""

    def __init__(self, reference: str, stage: str) -> None:
        from .config import ConfigError
        from .rewards import load_function

        cls = load_function(reference, "class", ConfigError, label=f'cai.scripted = "{reference}"')
        missing = [m for m in STAGE_METHODS[stage] if not callable(getattr(cls, m, None))]
        if missing:
            raise ConfigError(f'cai.scripted = "{reference}": {getattr(cls, "__name__", cls)} has no method '
                              f"{', '.join(missing)} (cai.stage = {stage} calls {', '.join(STAGE_METHODS[stage])})")
        self.critic, self.name = cls(), f"scripted:{reference}"

    def _each(self, method: str, prompts, *columns) -> list[str]:
        out = []
        for prompt, *args in zip(prompts, *columns):
            text = getattr(self.critic, method)(prompt_text(prompt), *args)
            if not isinstance(text, str):
                from .config import ConfigError

                raise ConfigError(f"{self.name}: {method}() returned {type(text).__name__}; expected a str")
            out.append(text)
        return out

    def critiques(self, prompts, responses, principles) -> list[str]:
        return self._each("critique", prompts, responses, principles)

    def revisions(self, prompts, responses, critiques, principles) -> list[str]:
        return self._each("revise", prompts, responses, critiques, principles)

    def verdicts(self, prompts, firsts, seconds, principles) -> list[str]:
        return self._each("compare", prompts, firsts, seconds, principles)


def model_critic(cfg, constitution: Constitution, model, tokenizer, device) -> ModelCritic:
    """``cai.critic`` loaded like the model (its dtype, device, trust_remote_code, attention), else the model."""
    from .config import ModelConfig
    from .models import load_causal_lm, load_tokenizer

    c, m = cfg.cai, cfg.model
    if c.critic is None:
        return ModelCritic(model, tokenizer, constitution, m.name_or_path, c)
    spec = ModelConfig(name_or_path=c.critic, dtype=m.dtype, device=m.device, trust_remote_code=m.trust_remote_code,
                       attn_implementation=m.attn_implementation)
    critic_tokenizer = load_tokenizer(spec, announce=print)
    return ModelCritic(load_causal_lm(spec, critic_tokenizer, device, trainable=False), critic_tokenizer,
                       constitution, c.critic, c)


_LABEL = re.compile(r"^\s*(?:revised response|revision|response)\s*:\s*", re.IGNORECASE)  # an echoed label


class ModelCritic:
    """A causal LM asked the constitution's templates, one user turn each, greedy: revisions get
    ``cai.max_new_tokens`` (they become trained responses), critiques and verdicts ``cai.critic_max_new_tokens``."""

    def __init__(self, model, tokenizer, constitution: Constitution, name: str, c) -> None:
        from .sampling import unwrap

        self.model, self.tokenizer, self.constitution, self.name = model, tokenizer, constitution, name
        self.answer_tokens, self.critic_tokens = c.max_new_tokens, c.critic_max_new_tokens
        self.limit = getattr(unwrap(model).config, "max_position_embeddings", None)
        self.truncated = 0  # asks cut to fit the context (their end kept)
        self.revisions_cut = 0  # revisions that ran out of tokens before their end: trained on, they teach stopping
        #                         mid-sentence, so the summary says how many (raise cai.max_new_tokens)

    def ask(self, texts: list[str], max_new_tokens: int) -> list:
        from .data.formats import Message
        from .data.templates import tokenize_prompt
        from .sampling import SamplingParams, generate

        ids = []
        for text in texts:
            tokens = tokenize_prompt(self.tokenizer, (Message("user", text),))
            if self.limit and len(tokens) + max_new_tokens > self.limit:
                tokens, self.truncated = tokens[-max(self.limit - max_new_tokens, 1):], self.truncated + 1
            ids.append(tokens)
        gens = generate(self.model, self.tokenizer, ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                        batch_size=len(ids))
        return gens

    def critiques(self, prompts, responses, principles) -> list[str]:
        asks = [self.constitution.critique_ask(p, q, r) for q, r, p in zip(prompts, responses, principles)]
        return [g.text.strip() for g in self.ask(asks, self.critic_tokens)]

    def revisions(self, prompts, responses, critiques, principles) -> list[str]:
        asks = [self.constitution.revision_ask(p, q, r, k) for q, r, k, p in zip(prompts, responses, critiques, principles)]
        gens = self.ask(asks, self.answer_tokens)
        self.revisions_cut += sum(not g.finished for g in gens)
        return [_LABEL.sub("", g.text.strip()) for g in gens]

    def verdicts(self, prompts, firsts, seconds, principles) -> list[str]:
        asks = [self.constitution.compare_ask(p, q, a, b) for q, a, b, p in zip(prompts, firsts, seconds, principles)]
        return [g.text.strip() for g in self.ask(asks, self.critic_tokens)]


# ------------------------------------------------------------------------------------------------- records
def as_dicts(prompt) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in prompt]


def prompt_json(prompt) -> str | list[dict[str, str]]:
    """The prompt as alignkit's data records hold it: a lone user turn as its text, else the message list (a
    system turn included, so no "system" key is needed)."""
    return prompt[0].content if len(prompt) == 1 and prompt[0].role == "user" else as_dicts(prompt)


def print_summary(summary: dict) -> None:
    from .eval.table import print_table

    skip = ("principles", "sampling", "file", "run_dir", "recipe")
    rows = {k: v for k, v in summary.items() if k not in skip}
    rows.update({f"principle {name}": n for name, n in summary["principles"].items()})
    print_table(f"alignkit cai: {summary['stage']}", rows)
    if not summary["kept"]:
        print("no records written: every prompt was skipped (see the counts above)")
    recipe = "sft" if summary["stage"] == "critique" else "dpo"
    print(f"data: {summary['file']}  (train on it: alignkit {recipe} CONFIG.yaml data.train={summary['file']})")
