"""The demo's scripted critic for ``alignkit cai`` (``cai.scripted: alignkit.demo.critic:ScriptedCritic``).

Why it exists: Constitutional AI needs a critic capable enough to follow a principle, and the demo's ~1M-parameter
model answers arithmetic and nothing else. This class stands in for that capable model on the demo world, so the
two stages can be run, tested and trained on end to end offline: it knows what the world's gold judge
(``demo.world.gold_score``) rewards and punishes, and says so as a critique, a revision or a verdict would.
"""

from __future__ import annotations

import re
import zlib

from .world import (
    POLITE_MARKERS,
    RUDE_MARKERS,
    TEMPLATES,
    gold_score,
    is_polite,
    make_response,
    parse_answer,
    parse_prompt,
    solve,
)

BEST = 1.5  # the gold judge's top score: correct and polite, nothing rude


class ScriptedCritic:
    """critique names what the gold judge would punish; revise writes a correct, polite answer (one of the
    world's polite templates); compare answers "A" or "B" by the gold score ("tie" when equal). The principle
    names the critique; the verdicts and revisions follow the gold judge whatever the principle (a capable
    critic's revisions would fix more than the one principle asked, too)."""

    def critique(self, prompt: str, response: str, principle) -> str:
        a, op, b = combo = parse_prompt(prompt)
        got, problems = parse_answer(response), []
        if got is None:
            problems.append("it states no result that can be read (write '3 + 5 = 8' or 'The answer is 8')")
        elif got != solve(combo):
            problems.append(f"its result {got} is wrong: {a} {op} {b} = {solve(combo)}")
        rude = [m for m in RUDE_MARKERS if re.search(rf"\b{re.escape(m)}\b", response, re.IGNORECASE)]
        if rude:
            problems.append(f"it is rude ({', '.join(repr(m) for m in rude)})")
        if not is_polite(response):
            problems.append(f"it is curt: no courteous phrase such as {POLITE_MARKERS[0]!r}")
        found = "; ".join(problems) if problems else "nothing to fix: the result is correct and the tone polite"
        return f"Against the principle '{principle.name}': {found}."

    def revise(self, prompt: str, response: str, critique: str, principle) -> str:
        if gold_score(prompt, response) == BEST:  # nothing to fix: a capable reviser keeps the response as it is
            return response
        template = zlib.crc32(response.encode()) % len(TEMPLATES["polite"])  # varied, and the same on every run (str hash is salted)
        return make_response(parse_prompt(prompt), True, "polite", template)

    def compare(self, prompt: str, first: str, second: str, principle) -> str:
        a, b = gold_score(prompt, first), gold_score(prompt, second)
        return "A" if a > b else "B" if b > a else "tie"
