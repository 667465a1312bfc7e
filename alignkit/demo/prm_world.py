"""The demo's step world: ``a + b * c`` solved in two steps, some of them wrong, each step labelled by the gold
computation, for process reward models (``alignkit prm``) and process-supervised RL.

Problems ask ``a + b * c`` with ``a`` in 1..9 and ``b, c`` in 2..6, phrased like the world's other questions. A
correct solution multiplies first, then adds, one step a line::

    4 * 5 = 20
    3 + 20 = 23

Wrong solutions, at seeded rates: the order of operations broken (adding first: ``3 + 4 = 7``, then ``7 * 5 = 35``),
a slip in the product (``4 * 5 = 21``, carried into the sum), or a slip in the sum (``3 + 20 = 22``). A step is
labelled correct when it is the gold computation's step at that place with the gold value: so a step built on a wrong
one is wrong too (it cannot reach the right answer any more, Math-Shepherd's criterion), and the first wrong step is
where the solution went astray. About half of all steps are correct, so a step classifier must beat 50%.

Files (written by ``world.build_world``):

    prm_steps.jsonl         {"prompt", "steps", "labels"}   solutions to train a PRM on
    prm_eval.jsonl          {"prompt", "steps", "labels"}   solutions to HELD_OUT problems no other file asks
    prm_prompts.jsonl       {"prompt", "answer"}            RL prompts (process-supervised GRPO)
    prm_prompts_eval.jsonl  {"prompt", "answer"}            every held-out problem once
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

Problem = tuple[int, int, int]  # (a, b, c): a + b * c

PHRASINGS = ("What is {a} + {b} * {c}?", "Compute {a} + {b} * {c}.", "Calculate {a} + {b} * {c}, please.",
             "How much is {a} + {b} * {c}?")
HELD_OUT_FRACTION = 0.15
# kind of solution -> its share: correct, the order of operations broken, a slip in the product, a slip in the sum
KINDS = {"correct": 0.4, "order": 0.2, "product_slip": 0.2, "sum_slip": 0.2}
SLIPS = (-3, -2, -1, 1, 2, 3)

_PROBLEM_RE = re.compile(r"(\d+)\s*\+\s*(\d+)\s*\*\s*(\d+)")
_STATED_RE = re.compile(r"=\s*(-?\d+)")


def all_problems() -> list[Problem]:
    return [(a, b, c) for a in range(1, 10) for b in range(2, 7) for c in range(2, 7)]


def held_out_problems(seed: int = 0) -> frozenset[Problem]:
    problems = all_problems()
    rng = random.Random(f"alignkit-demo/{seed}/prm-held-out")
    return frozenset(rng.sample(problems, round(HELD_OUT_FRACTION * len(problems))))


def solve(problem: Problem) -> int:
    a, b, c = problem
    return a + b * c


def make_prompt(problem: Problem, phrasing: int) -> str:
    a, b, c = problem
    return PHRASINGS[phrasing].format(a=a, b=b, c=c)


def solution(problem: Problem, kind: str, slip: int = 1) -> tuple[list[str], list[bool]]:
    """The two steps of a solution of ``kind`` (see KINDS) and their gold labels; ``slip`` is a wrong value's offset."""
    a, b, c = problem
    product = b * c
    if kind == "order":  # (a + b) * c: the first step already leaves the gold computation
        return [f"{a} + {b} = {a + b}", f"{a + b} * {c} = {(a + b) * c}"], [False, False]
    if kind == "product_slip":  # the wrong product is carried into a sum that is itself done right
        return [f"{b} * {c} = {product + slip}", f"{a} + {product + slip} = {a + product + slip}"], [False, False]
    if kind == "sum_slip":
        return [f"{b} * {c} = {product}", f"{a} + {product} = {a + product + slip}"], [True, False]
    return [f"{b} * {c} = {product}", f"{a} + {product} = {a + product}"], [True, True]


def _solutions(rng: random.Random, problems: list[Problem], n: int) -> list[dict]:
    out = []
    kinds, weights = list(KINDS), list(KINDS.values())
    for _ in range(n):
        problem = rng.choice(problems)
        steps, labels = solution(problem, rng.choices(kinds, weights)[0], rng.choice(SLIPS))
        out.append({"prompt": make_prompt(problem, rng.randrange(len(PHRASINGS))), "steps": steps, "labels": labels})
    return out


def _prompts(rng: random.Random, problems: list[Problem], n: int) -> list[dict]:
    picks = [rng.choice(problems) for _ in range(n)] if n else problems
    return [{"prompt": make_prompt(p, rng.randrange(len(PHRASINGS))), "answer": solve(p)} for p in picks]


def prm_files(stream: Callable[[str], random.Random], n_steps: int, n_eval: int, n_prompts: int,
              seed: int = 0) -> dict[str, list[dict]]:
    """The step world's records by file stem (``WorldPaths`` field), each from its own seeded stream."""
    held = held_out_problems(seed)
    train = [p for p in all_problems() if p not in held]
    held_list = sorted(held)
    return {"prm_steps": _solutions(stream("prm_steps"), train, n_steps),
            "prm_eval": _solutions(stream("prm_eval"), held_list, n_eval),
            "prm_prompts": _prompts(stream("prm_prompts"), train, n_prompts),
            "prm_prompts_eval": _prompts(stream("prm_prompts_eval"), held_list, 0)}


def final_answer(completion: str) -> int | None:
    """The value the completion's last ``= n`` states: a step solution's answer."""
    found = _STATED_RE.findall(completion)
    return int(found[-1]) if found else None


def gold_reward(prompts: list[str], completions: list[str], **fields: object) -> list[float]:
    """The step world's gold judge, in alignkit's reward-function form: 1.0 when the last stated value is the
    answer to the prompt's ``a + b * c``, else 0.0."""
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        found = _PROBLEM_RE.findall(prompt)
        if not found:
            raise ValueError(f"not a step-world prompt (no 'a + b * c' in it): {prompt!r}")
        a, b, c = (int(x) for x in found[-1])
        out.append(float(final_answer(completion) == solve((a, b, c))))
    return out
