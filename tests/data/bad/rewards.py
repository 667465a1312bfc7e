"""Reward functions that misbehave, for the bad-input catalogue (cases.yaml names them)."""


def raises(prompts, completions, **fields):
    return [1.0 / 0 for _ in completions]


def returns_nan(prompts, completions, **fields):
    return [float("nan")] * len(completions)


def wrong_length(prompts, completions, **fields):
    return [1.0]


def not_numbers(prompts, completions, **fields):
    return ["good"] * len(completions)
