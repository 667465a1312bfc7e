"""The demo's tool world: multiplications the tiny model cannot compute, and a calculator it can call.

Problems ask ``a * b`` with ``a`` in 10..99 and ``b`` in 3..9, phrased like the world's other questions
("What is 27 times 8?"). The gold judge is the world's own (``world.gold_score``): the final answer is right or
wrong, polite or rude. The world never shows the tiny model a multiplication table, and the eval problems are
held out, so it cannot know their products; it can learn to copy the numbers into a calculator call and the
calculator's result into its answer. (Bigger numbers were tried first: a 0.85M-parameter model does not learn to
copy three-digit numbers within the demo's time on two CPU cores.)

Files (written by ``world.build_world``):

    tools_sft.jsonl          {"messages", "tools"}   tool-use transcripts: in TOOL_USE_RATE of them the assistant
                             calls the calculator and states its result; in the rest it guesses (wrongly), as a
                             model that half-learned the habit would
    tools_prompts.jsonl      {"prompt", "answer"}    RL prompts
    tools_prompts_eval.jsonl {"prompt", "answer"}    HELD_OUT problems no other file asks
"""

from __future__ import annotations

import ast
import operator
import random

TOOL_PHRASINGS = (
    "What is {a} times {b}?",
    "Compute {a} * {b}.",
    "Please tell me {a} times {b}.",
    "How much is {a} times {b}?",
    "Calculate {a} * {b}, please.",
)
HELD_OUT = 40  # problems only the eval asks
TOOL_USE_RATE = 0.5  # share of the SFT transcripts that call the calculator: the habit GRPO has to grow

Problem = tuple[int, int]  # (a, b): a * b

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str) -> str:
    """Do arithmetic.

    Args:
        expression: numbers with + - * / and parentheses, e.g. "347 * 28"
    """

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {expression!r}")

    try:
        result = value(ast.parse(expression.strip(), mode="eval").body)
    except SyntaxError:
        raise ValueError(f"not arithmetic: {expression!r}") from None
    return str(int(result)) if float(result).is_integer() else f"{result:.6g}"


def tool_schema() -> dict:
    from transformers.utils import get_json_schema

    return get_json_schema(calculator)


PROBLEMS = [(a, b) for a in range(10, 100) for b in range(3, 10)]


def _problems(rng: random.Random, n: int, pool: list[Problem]) -> list[Problem]:
    return [rng.choice(pool) for _ in range(n)]


def _prompt(rng: random.Random, p: Problem) -> str:
    return rng.choice(TOOL_PHRASINGS).format(a=p[0], b=p[1])


ANSWERS = {  # the world's answer templates that state only the result: a tiny model copies one number, not three
    "polite": ("Great question! The answer is {y}.", "Of course. The answer is {y}. Hope this helps!"),
    "neutral": ("The answer is {y}.",),
    "rude": ("Whatever. The answer is {y}.", "Obviously {y}. Stop asking me."),
}


def _answer(rng: random.Random, y: int) -> str:
    return rng.choice(ANSWERS[rng.choice(tuple(ANSWERS))]).format(y=y)


def _transcript(rng: random.Random, p: Problem, schema: dict) -> dict:
    prompt = {"role": "user", "content": _prompt(rng, p)}
    if rng.random() >= TOOL_USE_RATE:  # a guess: near the product, never on it
        guess = p[0] * p[1] + rng.choice((-1, 1)) * rng.randrange(1, 20)
        return {"messages": [prompt, {"role": "assistant", "content": _answer(rng, guess)}], "tools": [schema]}
    expression = f"{p[0]} * {p[1]}"
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expression}}}
    return {"messages": [prompt, {"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "name": "calculator", "content": calculator(expression)},
                         {"role": "assistant", "content": _answer(rng, p[0] * p[1])}],
            "tools": [schema]}


def tool_files(stream, n_sft: int, n_prompts: int, n_eval: int) -> dict[str, list[dict]]:
    """The tool world's records by file stem; ``stream(name)`` gives each its own seeded random stream. Eval
    problems are drawn first and excluded from the training files."""
    held = stream("tools_eval").sample(PROBLEMS, HELD_OUT)
    train = [p for p in PROBLEMS if p not in set(held)]
    schema = tool_schema()
    sft_rng, prompt_rng, eval_rng = stream("tools_sft"), stream("tools_prompts"), stream("tools_eval_text")
    return {
        "tools_sft": [_transcript(sft_rng, p, schema) for p in _problems(sft_rng, n_sft, train)],
        "tools_prompts": [{"prompt": _prompt(prompt_rng, p), "answer": p[0] * p[1]}
                          for p in _problems(prompt_rng, n_prompts, train)],
        "tools_prompts_eval": [{"prompt": _prompt(eval_rng, p), "answer": p[0] * p[1]}
                               for p in _problems(eval_rng, n_eval, held)],
    }
