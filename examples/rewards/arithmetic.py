"""An example reward-function file for `alignkit grpo` (rewards: [{fn: examples/rewards/arithmetic.py:correct}]).

A reward function takes the prompts (the last user turn of each), the generated completions, and every extra
column of the prompt dataset as keyword lists (here `answer`, present in the demo world's prompt files), and
returns one float per completion.
"""

import re


def correct(prompts: list[str], completions: list[str], answer: list[int] | None = None, **fields) -> list[float]:
    """1.0 when the last integer in the completion equals the record's `answer`, else 0.0."""
    if answer is None:
        raise ValueError("this reward needs an `answer` column in the prompt data")
    out = []
    for completion, expected in zip(completions, answer):
        numbers = re.findall(r"-?\d+", completion)
        out.append(float(bool(numbers) and int(numbers[-1]) == int(expected)))
    return out


def polite(prompts: list[str], completions: list[str], **fields) -> list[float]:
    """0.5 for a polite marker, -0.5 for a rude one (what the demo's gold judge also rewards)."""
    lowered = [c.lower() for c in completions]
    return [0.5 * any(w in c for w in ("sure", "happy to help", "of course", "my pleasure", "great question"))
            - 0.5 * any(w in c for w in ("ugh", "obviously", "whatever", "seriously")) for c in lowered]
