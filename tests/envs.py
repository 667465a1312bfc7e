"""A small environment for the tests: the user asks ``rounds`` follow-up questions, then the episode ends; the
environment rewards answers that say "yes"."""

from alignkit.rollout.env import Environment


class Echo(Environment):
    def __init__(self, rounds: int = 1) -> None:
        self.rounds = rounds

    def setup(self, example):
        return {"asked": 0}

    def respond(self, messages, state):
        if state["asked"] >= self.rounds:
            return None
        state["asked"] += 1
        return [{"role": "user", "content": f"And {messages[-1]['content']}?"}]

    def reward(self, messages, state):
        return float("yes" in messages[-1]["content"].lower())
