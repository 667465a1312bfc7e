"""The demo world: a seeded, procedurally generated "arithmetic assistant" with a hidden gold judge.

Why it exists: every recipe needs a task whose true quality is known, so demos and tests can assert that training
improves the *gold* score (rule 12), not merely that a loss went down. The task is small enough for a ~1M-parameter
model, and it has two separable axes a human rater would care about: correctness and manners.

Prompts ask ``a + b`` or ``a - b`` with ``a, b`` in 0..9 in one of six phrasings (and, in the tool world of
``tools_world.py``, ``a * b`` with three- and two-digit numbers, for a model with a calculator). A seeded ~15% of the 200
``(a, op, b)`` combinations is held out: those never appear in training data and form a marked part of the eval
prompts, so an eval can tell memorisation from arithmetic.

Gold judge (``gold_score``), a function of the text alone:

    no answer parses  -> -1.0 (the lowest score; tone does not matter)
    otherwise         -> 1.0 if the answer is correct else 0.0, +0.5 if polite, -0.5 if rude (both can apply)

Answer rule (``parse_answer``): the answer is the first signed integer that follows one of the markers ``=``,
``answer is`` or ``obviously`` (case-insensitive; spaces, ``:`` and ``,`` may sit between), skipping any number
that is part of an expression (followed by a digit, a decimal part, or an operator ``+ - * / =``, ``plus``,
``minus``). So ``"The answer is 3 + 5 = 8"`` answers 8, and ``"8"`` alone answers nothing.

Files written by ``build_world`` (JSONL, one record a line, deterministic given the seed):

    sft.jsonl             {"prompt", "response"}                mixed quality: ~65% correct, tone uniform
    prefs.jsonl           {"prompt", "chosen", "rejected"}      label-noised; prefs_gold.jsonl says the truth:
                          {"gold_chosen_is_first", "chosen_gold", "rejected_gold", "held_out"} line by line
                          (first field: the file's "chosen" really is better, i.e. this pair was not flipped)
    prefs_eval.jsonl      same, all combos (held-out included); prefs_eval_gold.jsonl
    ranked.jsonl          {"prompt", "responses"}               4 responses, best first, distinct gold scores
    kto.jsonl             {"prompt", "completion", "label"}     label = gold >= 1.5 (correct, polite), balanced, noised
    prompts_train.jsonl   {"prompt", "answer", "held_out"}      RL prompts, never held out
    prompts_eval.jsonl    {"prompt", "answer", "held_out"}      every held-out combo once, then in-distribution
    sft_eval.jsonl        {"prompt", "response"}                held-out records like sft.jsonl (perplexity)
    teacher.jsonl         {"prompt", "response"}                curated: always correct and polite (the teacher's data)
    tools_*.jsonl         the tool world (tools_world.py): tool-use transcripts, RL and held-out eval prompts
    prm_*.jsonl           the step world (prm_world.py): step-labelled "a + b * c" solutions, RL and eval prompts
    world.json            seed, sizes, label_noise and the held-out combinations
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

Combo = tuple[int, str, int]  # (a, op, b), op in "+-"

DIGITS = range(10)
OPS = ("+", "-")
OP_WORDS = {"+": "plus", "-": "minus"}
HELD_OUT_FRACTION = 0.15
SFT_CORRECT = 0.65  # a "pretrained" model that knows arithmetic most of the time but has no manners
MALFORMED_RATE = 0.05  # share of unparseable responses in preference-style data, so a reward model meets them
WRONG_OFFSETS = (-3, -2, -1, 1, 2, 3)

# "{s}" is the symbol (+ / -), "{w}" the word (plus / minus).
PHRASINGS = (
    "What is {a} {s} {b}?",
    "Compute {a} {s} {b}.",
    "Please tell me {a} {w} {b}.",
    "Can you work out {a} {w} {b}?",
    "How much is {a} {w} {b}?",
    "Calculate {a} {s} {b}, please.",
)

# "{q}" is the expression ("3 + 5"), "{y}" the stated answer. Every template parses; markers below decide tone.
TEMPLATES = {
    "polite": (
        "Sure! {q} = {y}. Happy to help!",
        "Of course. {q} = {y}. Hope this helps!",
        "Great question! The answer is {y}.",
        "My pleasure: {q} = {y}.",
    ),
    "neutral": ("{q} = {y}.", "The answer is {y}.", "Answer: {q} = {y}.", "So {q} = {y}."),
    "rude": (
        "Ugh. {q} = {y}. Figure it out yourself.",
        "Obviously {y}. Stop asking me.",
        "Whatever. The answer is {y}.",
        "{q} = {y}. Seriously, use a calculator.",
    ),
}
TONES = tuple(TEMPLATES)
MALFORMED_TEMPLATES = ("Hmm, let me think about {q}.", "I am not sure, sorry.", "Numbers are hard.")

POLITE_MARKERS = ("happy to help", "hope this helps", "great question", "my pleasure", "of course", "sure!")
RUDE_MARKERS = ("ugh", "figure it out yourself", "stop asking", "obviously", "whatever", "seriously",
                "use a calculator")


def _marker_re(markers: Iterable[str]) -> re.Pattern[str]:
    # Word boundaries so "ugh" does not fire inside "enough"; none after a marker that ends in punctuation.
    parts = [r"\b" + re.escape(m) + (r"\b" if m[-1].isalnum() else "") for m in markers]
    return re.compile("|".join(parts), re.IGNORECASE)


_POLITE_RE = _marker_re(POLITE_MARKERS)
_RUDE_RE = _marker_re(RUDE_MARKERS)
_ANSWER_RE = re.compile(
    r"(?:=|\banswer is\b|\bobviously\b)[\s:,]*(-?\d+)(?!\d|\.\d|\s*(?:[-+*/=]|plus\b|minus\b))",
    re.IGNORECASE,
)
_PROMPT_RE = re.compile(r"(\d+)\s*(\+|-|\*|plus\b|minus\b|times\b)\s*(\d+)", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- the gold judge


def parse_answer(completion: str) -> int | None:
    """The integer the completion states as its answer, or None (rule in the module docstring)."""
    m = _ANSWER_RE.search(completion)
    return int(m.group(1)) if m else None


def is_well_formed(completion: str) -> bool:
    """True when an answer parses: the format the task asks for, whatever its correctness."""
    return parse_answer(completion) is not None


def is_polite(completion: str) -> bool:
    return _POLITE_RE.search(completion) is not None


def is_rude(completion: str) -> bool:
    return _RUDE_RE.search(completion) is not None


def parse_prompt(prompt: str) -> Combo:
    """(a, op, b) from a world prompt, plain or rendered through a chat template.

    The last expression wins, so a rendered multi-turn prompt is judged on its final question.
    """
    matches = _PROMPT_RE.findall(prompt)
    if not matches:
        raise ValueError(f"not a demo-world prompt (no 'a + b', 'a minus b' or 'a times b' in it): {prompt!r}")
    a, op, b = matches[-1]
    op = {"plus": "+", "minus": "-", "times": "*"}.get(op.lower(), op)
    return int(a), op, int(b)


def solve(combo: Combo) -> int:
    a, op, b = combo
    return a + b if op == "+" else a * b if op == "*" else a - b


def gold_score(prompt: str, completion: str) -> float:
    """The hidden gold judge: -1.0 unparseable; else correctness (1/0) + 0.5 polite - 0.5 rude."""
    answer = parse_answer(completion)
    if answer is None:
        return -1.0
    score = 1.0 if answer == solve(parse_prompt(prompt)) else 0.0
    return score + 0.5 * is_polite(completion) - 0.5 * is_rude(completion)


def gold_reward(prompts: list[str], completions: list[str], **fields: object) -> list[float]:
    """``gold_score`` in alignkit's reward-function form; extra dataset fields are ignored."""
    return [gold_score(p, c) for p, c in zip(prompts, completions, strict=True)]


def format_reward(prompts: list[str], completions: list[str], **fields: object) -> list[float]:
    """1.0 for a well-formed completion, 0.0 otherwise: a shaping reward that knows nothing of the answer."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return [float(is_well_formed(c)) for c in completions]


# ---------------------------------------------------------------------------------------------- generators


def all_combos() -> list[Combo]:
    return [(a, op, b) for op in OPS for a in DIGITS for b in DIGITS]


def held_out_combos(seed: int = 0) -> frozenset[Combo]:
    """The seeded ~15% of combinations kept out of every training file (same seed -> same set)."""
    combos = all_combos()
    rng = random.Random(f"alignkit-demo/{seed}/held-out")
    return frozenset(rng.sample(combos, round(HELD_OUT_FRACTION * len(combos))))


def make_prompt(combo: Combo, phrasing: int) -> str:
    a, op, b = combo
    return PHRASINGS[phrasing].format(a=a, s=op, w=OP_WORDS[op], b=b)


def make_response(combo: Combo, correct: bool, tone: str, template: int, offset: int = 1) -> str:
    """A response in ``tone`` using template number ``template``; a wrong one is off by ``offset`` (nonzero)."""
    a, op, b = combo
    y = solve(combo) + (0 if correct else offset)
    return TEMPLATES[tone][template].format(q=f"{a} {op} {b}", y=y)


def _sample_response(rng: random.Random, combo: Combo, malformed_rate: float = 0.0) -> str:
    if rng.random() < malformed_rate:
        a, op, b = combo
        return rng.choice(MALFORMED_TEMPLATES).format(q=f"{a} {op} {b}")
    correct = rng.random() < SFT_CORRECT
    tone = rng.choice(TONES)
    return make_response(combo, correct, tone, rng.randrange(len(TEMPLATES[tone])), rng.choice(WRONG_OFFSETS))


def _sample_prompt(rng: random.Random, combos: list[Combo]) -> tuple[Combo, str]:
    combo = rng.choice(combos)
    return combo, make_prompt(combo, rng.randrange(len(PHRASINGS)))


def _noisy_indices(rng: random.Random, n: int, label_noise: float) -> set[int]:
    # An exact count rather than per-record coin flips, so the realised noise is what was configured.
    return set(rng.sample(range(n), round(label_noise * n)))


@dataclass(frozen=True)
class WorldSizes:
    """Record counts per file. Defaults give a world that builds in well under a second."""

    sft: int = 3000  # SFT (prompt, response) records
    prefs: int = 3000  # training preference pairs
    prefs_eval: int = 500  # evaluation preference pairs
    ranked: int = 1000  # ranked lists of 4 responses
    kto: int = 3000  # unpaired (prompt, completion, label) records
    rl_prompts: int = 512  # prompt-only records for PPO / GRPO
    eval_prompts: int = 200  # eval prompts; the held-out combinations come first
    sft_eval: int = 300  # held-out SFT-style records (same distribution as sft): perplexity before / after a stage
    teacher: int = 3000  # curated (prompt, response) records, always correct and polite: what the demo teacher learns
    tools_sft: int = 2000  # tool-use transcripts (tools_world.py)
    tools_prompts: int = 512  # RL prompts of the tool world
    tools_eval: int = 100  # held-out tool-world problems
    prm_steps: int = 2000  # step-labelled solutions of the step world (prm_world.py)
    prm_eval: int = 200  # step-labelled solutions to its held-out problems
    prm_prompts: int = 512  # RL prompts of the step world

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"WorldSizes.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class WorldPaths:
    """Where ``build_world`` put each file (schemas in the module docstring)."""

    root: Path
    sft: Path
    prefs: Path
    prefs_gold: Path
    prefs_eval: Path
    prefs_eval_gold: Path
    ranked: Path
    kto: Path
    prompts_train: Path
    prompts_eval: Path
    sft_eval: Path
    teacher: Path
    tools_sft: Path
    tools_prompts: Path
    tools_prompts_eval: Path
    prm_steps: Path
    prm_eval: Path
    prm_prompts: Path
    prm_prompts_eval: Path
    meta: Path

    @classmethod
    def at(cls, root: Path) -> WorldPaths:
        """The paths of a world built (or to be built) in ``root``."""
        root = Path(root)
        jsonl = [f.name for f in fields(cls) if f.name not in ("root", "meta")]  # each file is named after its field
        return cls(root=root, meta=root / "world.json", **{name: root / f"{name}.jsonl" for name in jsonl})


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _sft(rng: random.Random, combos: list[Combo], n: int) -> list[dict]:
    out = []
    for _ in range(n):
        combo, prompt = _sample_prompt(rng, combos)
        out.append({"prompt": prompt, "response": _sample_response(rng, combo)})
    return out


def _teacher(rng: random.Random, combos: list[Combo], n: int) -> list[dict]:
    """Curated answers (correct and polite): the data of the demo's teacher, a stronger model to distil from."""
    out = []
    for _ in range(n):
        combo, prompt = _sample_prompt(rng, combos)
        out.append({"prompt": prompt, "response": make_response(combo, True, "polite", rng.randrange(len(TEMPLATES["polite"])))})
    return out


def _prefs(
    rng: random.Random, combos: list[Combo], n: int, label_noise: float, held: frozenset[Combo]
) -> tuple[list[dict], list[dict]]:
    pairs, gold = [], []
    flips = _noisy_indices(rng, n, label_noise)
    for i in range(n):
        combo, prompt = _sample_prompt(rng, combos)
        first = _sample_response(rng, combo, MALFORMED_RATE)
        second = _sample_response(rng, combo, MALFORMED_RATE)
        while gold_score(prompt, second) == gold_score(prompt, first):  # ties carry no preference: skip them
            second = _sample_response(rng, combo, MALFORMED_RATE)
        chosen, rejected = sorted((first, second), key=lambda r: gold_score(prompt, r), reverse=True)
        if i in flips:
            chosen, rejected = rejected, chosen
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        gold.append({"gold_chosen_is_first": i not in flips, "chosen_gold": gold_score(prompt, chosen),
                     "rejected_gold": gold_score(prompt, rejected), "held_out": combo in held})
    return pairs, gold


def _ranked(rng: random.Random, combos: list[Combo], n: int, k: int = 4) -> list[dict]:
    out = []
    for _ in range(n):
        combo, prompt = _sample_prompt(rng, combos)
        by_score: dict[float, str] = {}
        while len(by_score) < k:  # six score levels exist, so this ends after a handful of draws
            response = _sample_response(rng, combo, MALFORMED_RATE)
            by_score.setdefault(gold_score(prompt, response), response)
        responses = [by_score[s] for s in sorted(by_score, reverse=True)]
        out.append({"prompt": prompt, "responses": responses})
    return out


KTO_DESIRABLE = 1.5  # a "thumbs up": correct and polite


def _kto(rng: random.Random, combos: list[Combo], n: int, label_noise: float) -> list[dict]:
    """Unpaired thumbs-up / thumbs-down feedback: desirable = correct and polite (gold >= 1.5).

    Records alternate between a desirable and an undesirable completion (rejection-sampled from the usual response
    distribution), so the two sides are balanced as in a real feedback log, before the label noise.
    """
    flips = _noisy_indices(rng, n, label_noise)
    out = []
    for i in range(n):
        want = i % 2 == 0
        while True:
            combo, prompt = _sample_prompt(rng, combos)
            completion = _sample_response(rng, combo, MALFORMED_RATE)
            if (gold_score(prompt, completion) >= KTO_DESIRABLE) == want:
                break
        out.append({"prompt": prompt, "completion": completion, "label": want != (i in flips)})
    return out


def _prompts(
    rng: random.Random, train: list[Combo], held: frozenset[Combo], n_train: int, n_eval: int
) -> tuple[list[dict], list[dict]]:
    """RL prompts from a shuffled pool of (combo, phrasing) strings; eval takes the held-out combos, then
    in-distribution prompts not used for RL while the pool lasts (so eval strings are unseen as RL prompts)."""

    def record(combo: Combo, prompt: str) -> dict:
        return {"prompt": prompt, "answer": solve(combo), "held_out": combo in held}

    pool = [(c, make_prompt(c, p)) for c in train for p in range(len(PHRASINGS))]
    rng.shuffle(pool)
    train_recs = [record(*pool[i % len(pool)]) for i in range(n_train)]
    unused = pool[n_train:] or pool
    held_list = sorted(held)
    rng.shuffle(held_list)
    eval_recs = [record(c, make_prompt(c, rng.randrange(len(PHRASINGS)))) for c in held_list[:n_eval]]
    eval_recs += [record(*unused[i % len(unused)]) for i in range(n_eval - len(eval_recs))]
    return train_recs, eval_recs


def build_world(out_dir: Path, seed: int = 0, sizes: WorldSizes | None = None, *,
                label_noise: float = 0.1) -> WorldPaths:
    """Write every file of the world into ``out_dir``; the same seed and sizes give byte-identical files.

    ``label_noise`` is the exact fraction of preference pairs (and KTO labels) flipped, as annotators would.
    Each file draws from its own seeded stream, so resizing one file leaves the others unchanged.
    """
    if not 0.0 <= label_noise < 0.5:
        raise ValueError(f"label_noise must be in [0, 0.5) (a fraction of flipped labels), got {label_noise}")
    sizes = sizes or WorldSizes()
    paths = WorldPaths.at(Path(out_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    held = held_out_combos(seed)
    train = [c for c in all_combos() if c not in held]

    def stream(name: str) -> random.Random:
        return random.Random(f"alignkit-demo/{seed}/{name}")

    prefs, prefs_gold = _prefs(stream("prefs"), train, sizes.prefs, label_noise, held)
    prefs_eval, prefs_eval_gold = _prefs(stream("prefs_eval"), all_combos(), sizes.prefs_eval, label_noise, held)
    prompts_train, prompts_eval = _prompts(stream("prompts"), train, held, sizes.rl_prompts, sizes.eval_prompts)
    files: dict[Path, list[dict]] = {
        paths.sft: _sft(stream("sft"), train, sizes.sft),
        paths.sft_eval: _sft(stream("sft_eval"), train, sizes.sft_eval),
        paths.teacher: _teacher(stream("teacher"), train, sizes.teacher),
        paths.prefs: prefs,
        paths.prefs_gold: prefs_gold,
        paths.prefs_eval: prefs_eval,
        paths.prefs_eval_gold: prefs_eval_gold,
        paths.ranked: _ranked(stream("ranked"), train, sizes.ranked),
        paths.kto: _kto(stream("kto"), train, sizes.kto, label_noise),
        paths.prompts_train: prompts_train,
        paths.prompts_eval: prompts_eval,
    }
    from .tools_world import tool_files

    tools = tool_files(stream, sizes.tools_sft, sizes.tools_prompts, sizes.tools_eval)
    files.update({getattr(paths, stem): records for stem, records in tools.items()})
    from .prm_world import prm_files

    steps = prm_files(stream, sizes.prm_steps, sizes.prm_eval, sizes.prm_prompts, seed)
    files.update({getattr(paths, stem): records for stem, records in steps.items()})
    for path, records in files.items():
        _write_jsonl(path, records)
    meta = {"seed": seed, "sizes": asdict(sizes), "label_noise": label_noise,
            "held_out": [list(c) for c in sorted(held)]}
    paths.meta.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return paths
