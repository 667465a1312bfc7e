"""The training doctor: health rules over the logged metric rows, each finding stated with the field's advice.

A rule is a pure function ``(rows so far, RunFacts) -> Finding | None``. The runtime calls every rule at every
logging step, so each is one pass over the rows at most. A rule reads only keys it knows and stays quiet when a
recipe does not log them; rows are sparse (eval metrics arrive every ``eval_every`` steps, in rows of their own),
so a rule reads each metric's own series, never "the previous row". Non-finite values are left out of every series
(``nonfinite`` reports them): one NaN does not cascade into a page of findings.

Reward hacking is one rule with two kinds of evidence, and its message says which fired: a source scored at eval
only (a held-out judge) falls while the optimised reward rises; or the optimised reward rises while a side effect
of exploitation shows (KL explodes, responses grow, repeat themselves or lose variety). Standard library only (plus
the atomic JSON write): the report reads health.json without torch.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .checkpoint import atomic_write_json

HEALTH_FILE = "health.json"

# KL to the reference, nats per sequence (sum over the response of log pi - log ref, mean over sequences).
KL_RANGE = (0.5, 2.0)  # what the field's RLHF tutorials call a healthy PPO run
KL_HIGH = 10.0  # "far" above that range (5x its top); with adaptive KL, KL_TARGET_FACTOR x the controller's target
KL_TARGET_FACTOR = 5.0
KL_LOW = 0.01  # two orders below the range: the policy has not left the reference
KL_WINDOW = 3  # "persistently": the last few logged values, so one spike does not fire
LATE = 0.5  # kl_low judges the second half of the planned run: early on a small KL is normal
# Trends compare the mean of the first third of a series with its last third: one noisy batch cannot fake them.
TREND_MIN = 6  # values before thirds mean anything (two per third)
RISE_SPREADS = 1.0  # a meaningful rise of the optimised reward: more than one standard deviation of its series
LENGTH_GROWTH = 2.0  # responses twice as long as at the start: the classic length exploit of reward models
REPETITION_HIGH = 0.5  # half of a response's n-grams repeated: degenerate text
REPETITION_MIN_RISE = 0.1  # "more than doubling" counts only above this absolute rise (0.02 -> 0.05 is noise)
DISTINCT_DROP = 0.5  # distinct-2 below half its start: the policy collapsed onto a few answers
EVAL_MIN_CHANGE = 0.05  # an eval score moved, in reward units (rewards are O(1): normalised RMs, 0/1 checks) ...
EVAL_REL_CHANGE = 0.1  # ... or 10% of its first value, whichever is larger
CLIPFRAC_HIGH, CLIPFRAC_WINDOW = 0.3, 5  # PPO practice: clipfrac above 0.2-0.3 means steps too large for the clip
EV_RUN, EV_SETTLE = 10, 0.1  # negative explained variance on 10 logged rows in a row, after the first 10% of the run
ENTROPY_FRACTION, ENTROPY_FLOOR = 0.1, 0.1  # below 10% of its start and 0.1 nats/token: near-greedy sampling
RM_READY_ACCURACY = 0.7  # the field's rule of thumb (as recipes/rm.py): under 70% an RM is not ready for PPO
LENGTH_CORRELATION, LENGTH_ROWS, LENGTH_DRIVE_GROWTH = 0.9, 8, 1.5  # reward tracks length, and length grew 50%
PREFERENCE_RECIPES = frozenset({"dpo", "kto"})  # SimPO / ORPO / IPO run through the dpo recipe
DPO_CHANCE, DPO_WINDOW, DPO_SETTLE = (0.45, 0.55), 5, 0.3  # chance accuracy over the last 5 rows past 30% of the run
# logps/chosen is logged per token (recipes/dpo.py divides by the length): 0.5 nats/token is a large fall. Per-batch
# values swing by about that much in the demo sweeps, so the thirds need 4 values each.
CHOSEN_LOGPS_DROP, CHOSEN_MIN_VALUES = 0.5, 12
ZERO_SPREAD_HIGH, ZERO_SPREAD_WINDOW = 0.5, 3  # over half the groups give no gradient
MISMATCH_KL_HIGH, MISMATCH_WINDOW = 0.01, 3  # engine vs trainer log-prob KL per token that biases the update


@dataclass(frozen=True)
class Finding:
    rule: str  # the rule's name, a key of RULES
    step: int  # the logged step at which it first fired
    severity: str  # "warning" | "error"
    message: str  # what was seen, with the numbers
    advice: str  # the field's advice: what to change


@dataclass(frozen=True)
class RunFacts:
    """What the rules know beside the metric stream."""

    recipe: str  # "sft" | "rm" | "dpo" | "kto" | "ppo" | "grpo"
    max_steps: int  # planned optimizer steps: "late in the run" is measured against it
    kl_target: float | None = None  # PPO adaptive-KL target per sequence (nats) when adaptive_kl is on
    eval_only: tuple[str, ...] = ()  # labels of reward sources scored at eval only (never optimised)
    reward_models: tuple[tuple[str, str], ...] = ()  # (path, verdict) of each RM used as a reward; "" = unknown
    sequence_clip: bool = False  # GSPO-style sequence ratios: a clip range of ~1e-4 clips a third of tokens by design


Rule = Callable[[list[dict], RunFacts], Finding | None]  # rows so far (oldest first) -> a finding or None


# --- reading series out of sparse rows ---------------------------------------------------------------------------

def _number(value: object) -> float | None:
    """A finite float, or None for anything a series must skip: absent, text, bool, NaN, inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _step(row: dict) -> int:
    return int(_number(row.get("step")) or 0)


def _last_step(rows: list[dict]) -> int:
    return _step(rows[-1]) if rows else 0


def _points(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of every row that logged ``key`` finitely, oldest first."""
    return [(_step(row), value) for row in rows if (value := _number(row.get(key))) is not None]


def _series(rows: list[dict], key: str) -> list[float]:
    return [value for _, value in _points(rows, key)]


def _tail(rows: list[dict], key: str, n: int) -> list[tuple[int, float]]:
    """The last ``n`` (step, value) of ``key``, oldest first; walks back only as far as it needs."""
    found = []
    for row in reversed(rows):
        if (value := _number(row.get(key))) is not None:
            found.append((_step(row), value))
            if len(found) == n:
                break
    return found[::-1]


def _kl_points(rows: list[dict]) -> list[tuple[int, float]]:
    """KL per sequence (nats) of each row that has it: ``kl/per_sequence`` (PPO), else ``kl/per_token`` x
    ``length/mean`` (GRPO logs only the per-token mean)."""
    points = []
    for row in rows:
        value = _number(row.get("kl/per_sequence"))
        if value is None:
            per_token, length = _number(row.get("kl/per_token")), _number(row.get("length/mean"))
            value = per_token * length if per_token is not None and length is not None else None
        if value is not None:
            points.append((_step(row), value))
    return points


def _ends(values: list[float] | tuple[float, ...]) -> tuple[float, float] | None:
    """Means of the first and the last third; None below TREND_MIN values."""
    if len(values) < TREND_MIN:
        return None
    third = len(values) // 3
    return statistics.fmean(values[:third]), statistics.fmean(values[-third:])


def _rise(values: list[float]) -> tuple[float, float] | None:
    """(start, end) means when the series rose by more than RISE_SPREADS standard deviations of itself."""
    ends = _ends(values)
    if ends is None or ends[1] - ends[0] <= RISE_SPREADS * statistics.pstdev(values):
        return None
    return ends


def _moved(first: float, last: float) -> bool:
    """Whether an eval score changed meaningfully: eval runs rarely, so two values are all there is to compare."""
    return abs(last - first) > max(EVAL_MIN_CHANGE, EVAL_REL_CHANGE * abs(first))


def _above(rows: list[dict], key: str, n: int, limit: float) -> list[float] | None:
    """The last ``n`` values of ``key`` when every one is above ``limit`` ("persistently": not one spike), else None."""
    recent = [value for _, value in _tail(rows, key, n)]
    return recent if len(recent) == n and min(recent) > limit else None


def _kl_limit(facts: RunFacts) -> float:
    return KL_TARGET_FACTOR * facts.kl_target if facts.kl_target else KL_HIGH


def _g(value: float) -> str:
    return f"{value:.3g}"


# --- the rules -----------------------------------------------------------------------------------------------------

def nonfinite(rows: list[dict], facts: RunFacts) -> Finding | None:
    for row in rows:
        bad = [key for key, value in row.items() if isinstance(value, float) and not math.isfinite(value)]
        if bad:
            shown = ", ".join(f"{key} = {row[key]}" for key in bad[:3]) + f" and {len(bad) - 3} more" * (len(bad) > 3)
            return Finding("nonfinite", _step(row), "error", f"Non-finite metrics at step {_step(row)}: {shown}.",
                           "Under train.on_nonfinite: stop (the default) the run stops here, keeping the last good "
                           "checkpoint. Lower the learning rate, train in bf16 rather than fp16, and check the data "
                           "for empty or over-long examples.")
    return None


def kl_high(rows: list[dict], facts: RunFacts) -> Finding | None:
    limit, recent = _kl_limit(facts), [value for _, value in _kl_points(rows)[-KL_WINDOW:]]
    if len(recent) < KL_WINDOW or min(recent) <= limit:
        return None
    why = (f"{KL_TARGET_FACTOR:g}x the adaptive target of {facts.kl_target:g}" if facts.kl_target else
           f"far outside the {KL_RANGE[0]}-{KL_RANGE[1]} nats the field aims for")
    return Finding("kl_high", _last_step(rows), "warning",
                   f"KL to the reference was {', '.join(map(_g, recent))} nats per sequence over the last {KL_WINDOW} "
                   f"logged steps, above {limit:g} ({why}): the policy has drifted far from the reference.",
                   "Raise the KL coefficient (ppo.kl_coef, grpo.beta) or turn on ppo.adaptive_kl, and lower the "
                   "learning rate.")


def kl_low(rows: list[dict], facts: RunFacts) -> Finding | None:
    # the mean, not every value: k1 estimates of a static policy scatter around zero, a few above KL_LOW
    late = [value for step, value in _kl_points(rows) if step >= LATE * facts.max_steps]
    if len(late) < KL_WINDOW or statistics.fmean(late) >= KL_LOW:
        return None
    return Finding("kl_low", _last_step(rows), "warning",
                   f"KL to the reference averaged {_g(statistics.fmean(late))} nats per sequence over the {len(late)} "
                   f"logged steps of the second half of the run (below {KL_LOW}): the policy is not moving.",
                   "Raise the learning rate, lower the KL coefficient (ppo.kl_coef, grpo.beta), and check that the "
                   "reward varies across responses.")


def _exploit_signs(rows: list[dict], facts: RunFacts) -> list[str]:
    """Side effects of exploiting a reward, each a phrase with its numbers (first third -> last third)."""
    signs = []
    kl = _ends([value for _, value in _kl_points(rows)])
    if kl and kl[1] > _kl_limit(facts):
        signs.append(f"KL per sequence reached {_g(kl[1])} nats (> {_kl_limit(facts):g})")
    length = _ends(_series(rows, "length/mean"))
    if length and length[0] > 0 and length[1] > LENGTH_GROWTH * length[0]:
        signs.append(f"response length grew {length[1] / length[0]:.1f}x ({_g(length[0])} -> {_g(length[1])} tokens)")
    rep = _ends(_series(rows, "diversity/repetition"))
    if rep and rep[1] > rep[0] and (rep[1] > REPETITION_HIGH or rep[1] > max(2 * rep[0], rep[0] + REPETITION_MIN_RISE)):
        signs.append(f"repetition rose from {_g(rep[0])} to {_g(rep[1])}")
    distinct = _ends(_series(rows, "diversity/distinct2"))
    if distinct and distinct[1] < DISTINCT_DROP * distinct[0]:
        signs.append(f"distinct-2 fell from {_g(distinct[0])} to {_g(distinct[1])}")
    return signs


def _eval_gaps(rows: list[dict], facts: RunFacts, rise: tuple[float, float] | None) -> list[str]:
    """Eval-only sources that fell from their best while the optimised reward rose (its eval total, else the
    training score) and kept what it had at that best: the policy trades the held-out judge for the optimised one.
    Measured from the best, not the start: RL against a proxy first improves both, then only the proxy."""
    steps = [step for step, _ in _points(rows, "reward_eval/total")]
    total = _series(rows, "reward_eval/total")
    eval_rose = len(total) >= 2 and total[-1] > total[0] and _moved(total[0], total[-1])
    optimised = (total[0], total[-1]) if eval_rose else rise
    gaps = []
    for label in facts.eval_only if optimised else ():
        held = _series(rows, f"reward_eval/{label}")
        if len(held) < 2:
            continue
        best = max(range(len(held)), key=held.__getitem__)
        kept = not eval_rose or len(total) != len(held) or not (total[best] > total[-1] and _moved(total[best], total[-1]))
        if held[-1] < held[best] and _moved(held[best], held[-1]) and kept:
            at = f" at step {steps[best]}" if len(steps) == len(held) else ""
            gaps.append(f"{label} (scored at eval only) fell from {_g(held[best])}{at} to {_g(held[-1])} while the "
                        f"optimised reward rose from {_g(optimised[0])} to {_g(optimised[1])}")
    return gaps


def reward_hacking(rows: list[dict], facts: RunFacts) -> Finding | None:
    rise = _rise(_series(rows, "reward/score"))
    evidence = _eval_gaps(rows, facts, rise)
    signs = _exploit_signs(rows, facts) if rise else []
    if signs:
        evidence.append(f"the optimised reward (reward/score) rose from {_g(rise[0])} to {_g(rise[1])} while "
                        + ", ".join(signs))
    if not evidence:
        return None
    return Finding("reward_hacking", _last_step(rows), "warning",
                   "; ".join(evidence) + ": the policy is exploiting the reward.",
                   "Raise the KL coefficient (ppo.kl_coef, grpo.beta), add length or repetition penalties "
                   "(ppo.length_penalty), stop early at the best eval checkpoint, read the samples, and retrain or "
                   "improve the reward model on the policy's own outputs.")


def clipfrac_high(rows: list[dict], facts: RunFacts) -> Finding | None:
    recent = _above(rows, "policy/clipfrac", CLIPFRAC_WINDOW, CLIPFRAC_HIGH)
    if recent is None or facts.sequence_clip:
        return None
    return Finding("clipfrac_high", _last_step(rows), "warning",
                   f"The policy clip fraction was {', '.join(map(_g, recent))} over the last {CLIPFRAC_WINDOW} logged "
                   f"steps (above {CLIPFRAC_HIGH}): each update moves the policy further than the clip allows.",
                   "Lower the learning rate, use fewer epochs / iterations per batch (ppo.ppo_epochs, "
                   "grpo.num_iterations), or a larger batch.")


def critic_negative_ev(rows: list[dict], facts: RunFacts) -> Finding | None:
    streak: list[tuple[int, float]] = []
    for step, value in _points(rows, "value/explained_variance"):
        if step < EV_SETTLE * facts.max_steps:
            continue
        streak = [*streak, (step, value)] if value < 0 else []
        if len(streak) == EV_RUN:
            return Finding("critic_negative_ev", _last_step(rows), "warning",
                           f"The critic's explained variance stayed below 0 on {EV_RUN} logged steps in a row (steps "
                           f"{streak[0][0]}-{step}, mean {_g(statistics.fmean(v for _, v in streak))}): it predicts "
                           "returns worse than a constant would.",
                           "Tune ppo.critic_lr, give the critic ppo.critic_warmup_steps, keep ppo.value_clip, and "
                           "initialise the critic from the reward model (ppo.critic_model).")
    return None


def entropy_collapse(rows: list[dict], facts: RunFacts) -> Finding | None:
    entropy = _points(rows, "entropy")
    if len(entropy) < 2:
        return None
    first, last = entropy[0][1], entropy[-1][1]
    if not (first > 0 and last < ENTROPY_FRACTION * first and last < ENTROPY_FLOOR):
        return None
    return Finding("entropy_collapse", _last_step(rows), "warning",
                   f"Policy entropy fell from {_g(first)} to {_g(last)} nats per token (below {ENTROPY_FRACTION:.0%} of "
                   "its start): sampling is near-deterministic, and GRPO groups lose their spread.",
                   "Add an entropy bonus (ppo.entropy_coef, grpo.entropy_coef), raise sampling.temperature, or "
                   "lower the learning rate.")


def rm_not_ready(rows: list[dict], facts: RunFacts) -> Finding | None:
    advice = (f"An RM under {RM_READY_ACCURACY:.0%} eval accuracy is not ready for PPO (the field's rule): train it "
              "on more or cleaner preference data, for more steps, or on a larger backbone.")
    weak = [f"the reward model at {path} was judged not ready ({verdict}) and is used as a reward"
            for path, verdict in facts.reward_models if "NOT ready" in verdict]
    if weak:
        message = "; ".join(weak)
        return Finding("rm_not_ready", _last_step(rows), "warning", message[0].upper() + message[1:] + ".", advice)
    final = _tail(rows, "accuracy/eval", 1)
    # judged at the end only: mid-run accuracy is still climbing from chance
    if facts.recipe != "rm" or not final or final[0][0] < facts.max_steps or final[0][1] >= RM_READY_ACCURACY:
        return None
    return Finding("rm_not_ready", _last_step(rows), "warning",
                   f"This reward model ends at {_g(final[0][1])} eval accuracy (below {RM_READY_ACCURACY}): it is not "
                   "ready for PPO.", advice)


def _pearson(xs: tuple[float, ...], ys: tuple[float, ...]) -> float | None:
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # a constant series has no correlation
        return None


def length_drives_reward(rows: list[dict], facts: RunFacts) -> Finding | None:
    pairs = [(length, score) for row in rows if (length := _number(row.get("length/mean"))) is not None
             and (score := _number(row.get("reward/score"))) is not None]
    if len(pairs) < LENGTH_ROWS:
        return None
    lengths, scores = zip(*pairs)
    growth, r = _ends(lengths), _pearson(lengths, scores)
    if growth is None or not 0 < LENGTH_DRIVE_GROWTH * growth[0] < growth[1] or r is None or r <= LENGTH_CORRELATION:
        return None
    return Finding("length_drives_reward", _last_step(rows), "warning",
                   f"The reward follows response length (Pearson r = {r:.2f} over {len(pairs)} logged steps) while "
                   f"length grew from {_g(growth[0])} to {_g(growth[1])} tokens: the reward may be paying for length.",
                   "Add a length penalty (ppo.length_penalty) or use a length-normalised reward model; compare "
                   "samples of equal length.")


def dpo_stuck(rows: list[dict], facts: RunFacts) -> Finding | None:
    if facts.recipe not in PREFERENCE_RECIPES:
        return None
    late = [value for step, value in _tail(rows, "accuracy/train", DPO_WINDOW) if step >= DPO_SETTLE * facts.max_steps]
    if len(late) < DPO_WINDOW or not DPO_CHANCE[0] <= statistics.fmean(late) <= DPO_CHANCE[1]:
        return None
    return Finding("dpo_stuck", _last_step(rows), "warning",
                   f"Preference accuracy averaged {_g(statistics.fmean(late))} over the last {DPO_WINDOW} logged steps, "
                   f"past {DPO_SETTLE:.0%} of the run: the model cannot tell chosen from rejected.",
                   "Raise the learning rate or lower beta (dpo.beta, kto.beta), check the data for label noise, and "
                   "check that the reference is the model the data was sampled from.")


def chosen_logps_falling(rows: list[dict], facts: RunFacts) -> Finding | None:
    chosen, margin = _series(rows, "logps/chosen"), _series(rows, "margin/train")
    if len(chosen) < CHOSEN_MIN_VALUES or len(margin) < CHOSEN_MIN_VALUES:
        return None
    (c0, c1), (m0, m1) = _ends(chosen), _ends(margin)
    if c0 - c1 <= CHOSEN_LOGPS_DROP or m1 <= m0:
        return None
    return Finding("chosen_logps_falling", _last_step(rows), "warning",
                   f"Chosen log-probs fell from {_g(c0)} to {_g(c1)} nats per token while the margin rose from "
                   f"{_g(m0)} to {_g(m1)}: both responses are pushed down (likelihood displacement).",
                   "Add an NLL term on the chosen response (dpo.nll_weight, RPO), and lower the learning rate or beta.")


def zero_spread_groups(rows: list[dict], facts: RunFacts) -> Finding | None:
    recent = _above(rows, "groups/zero_spread_frac", ZERO_SPREAD_WINDOW, ZERO_SPREAD_HIGH)
    if recent is None:
        return None
    return Finding("zero_spread_groups", _last_step(rows), "warning",
                   f"{', '.join(f'{v:.0%}' for v in recent)} of the prompt groups had equal rewards over the last "
                   f"{ZERO_SPREAD_WINDOW} logged steps (above {ZERO_SPREAD_HIGH:.0%}): most groups carry no learning "
                   "signal.",
                   "Use a larger group (grpo.group_size), prompts nearer the model's level (not all solved, not all "
                   "failed), grpo.dynamic_sampling, or a denser reward.")


def engine_mismatch(rows: list[dict], facts: RunFacts) -> Finding | None:
    recent = _above(rows, "mismatch/kl", MISMATCH_WINDOW, MISMATCH_KL_HIGH)
    if recent is None:
        return None
    return Finding("engine_mismatch", _last_step(rows), "warning",
                   f"The rollout engine's log-probs differ from the trainer's (KL {', '.join(map(_g, recent))} over the "
                   f"last {MISMATCH_WINDOW} logged steps, above {MISMATCH_KL_HIGH}): updates are off-policy.",
                   "Turn on sampling.correction (tis or mis), and check that engine and trainer use the same dtype.")


RULES: dict[str, Rule] = {rule.__name__: rule for rule in (  # a rule's name is its function's name
    nonfinite, kl_high, kl_low, reward_hacking, clipfrac_high, critic_negative_ev, entropy_collapse, rm_not_ready,
    length_drives_reward, dpo_stuck, chosen_logps_falling, zero_spread_groups, engine_mismatch)}


# --- the doctor and its file ---------------------------------------------------------------------------------------

class Doctor:
    """Runs every rule on the rows so far; each rule fires at most once per run."""

    def __init__(self, facts: RunFacts, path: str | Path | None = None) -> None:
        self.facts = facts
        self.path = Path(path) if path is not None else None  # where health.json goes; None: nowhere
        self.findings: list[Finding] = []
        self._written = False

    def check(self, rows: list[dict], final: bool = False) -> list[Finding]:
        """New findings only. health.json is rewritten when something new fires, on the first call so that it
        exists (the report then knows the run was checked and found healthy), and on the ``final`` check at the
        end of the run (its last step)."""
        fired = {f.rule for f in self.findings}
        new = [f for name, rule in RULES.items() if name not in fired and (f := rule(rows, self.facts)) is not None]
        self.findings.extend(new)
        if self.path is not None and (new or final or not self._written):
            atomic_write_json(self.path, {"findings": [asdict(f) for f in self.findings], "rules_checked": sorted(RULES),
                                          "last_step": _step(rows[-1]) if rows else None})
            self._written = True
        return new

    def restore(self, path: str | Path) -> None:
        """On resume: take back the findings of an existing health.json, so they are not announced again."""
        fired = {f.rule for f in self.findings}
        for finding in read_health(path):
            if finding.rule not in fired:
                self.findings.append(finding)
                fired.add(finding.rule)


def read_health(path: str | Path) -> list[Finding]:
    """The findings of a health.json, for the report; [] when the run has none (an older run, or no doctor)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [Finding(**f) for f in json.loads(path.read_text())["findings"]]
