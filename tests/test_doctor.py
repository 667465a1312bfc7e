"""The training doctor: every rule fires on a stream that shows its failure and stays quiet on a healthy one of the
same recipe; each fires once; health.json is atomic, reloadable and stops re-announcement on resume; sparse rows
and missing keys crash nothing. Pure Python: no model, no torch."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from alignkit import doctor as doctor_module
from alignkit.doctor import RULES, Doctor, Finding, RunFacts, read_health


def stream(train: dict, evals: dict | None = None, steps=range(2, 31, 2), eval_steps=(0, 10, 20, 30),
           noise: float = 0.03, seed: int = 0) -> list[dict]:
    """Metric rows as the runtime logs them: one training row per logging step, and eval rows of their own every
    few steps (after the training row of the same step). A spec maps a key to a constant or to f(t) at progress
    t = step / last step; each value gets relative Gaussian noise. A spec of None means the key is not logged."""
    rng, last = random.Random(seed), max(steps)

    def row(step: int, spec: dict) -> dict:
        values = {key: (f(step / last) if callable(f) else f) for key, f in spec.items() if f is not None}
        return {"step": step, **{k: v * (1 + noise * rng.gauss(0, 1)) for k, v in values.items()},
                "time/wall_s": 1.7 * step}

    rows = [row(s, train) for s in steps] + [row(s, evals) for s in eval_steps if evals]
    return sorted(rows, key=lambda r: r["step"])  # stable: at a shared step the training row stays first


# Healthy streams, shaped after the demo's runs (PPO against the demo RM, GRPO with the gold judge, DPO, RM).
PPO_TRAIN = {
    "reward/score": lambda t: 0.1 + 0.9 * t, "reward/reward_model": lambda t: 0.1 + 0.9 * t,
    "reward/with_kl": lambda t: 0.1 + 0.6 * t, "kl/per_token": lambda t: 0.01 + 0.12 * t,
    "kl/per_sequence": lambda t: 0.1 + 1.8 * t, "kl/coef": 0.2, "loss/value": lambda t: 0.5 - 0.3 * t,
    "value/explained_variance": lambda t: -0.4 + 1.1 * t, "value/clipfrac": 0.02, "advantage/mean": 0.0,
    "advantage/std": 1.0, "length/mean": lambda t: 13 - t, "eos_rate/train": 0.95, "loss/policy": -0.02,
    "entropy": lambda t: 0.32 - 0.08 * t, "policy/clipfrac": lambda t: 0.04 - 0.03 * t, "policy/approx_kl": 0.008,
    "ratio/mean": 1.0, "ratio/max": 1.6, "diversity/distinct2": lambda t: 0.62 - 0.08 * t,
    "diversity/repetition": lambda t: 0.04 + 0.02 * t, "lr": 1e-4, "grad_norm": 0.9, "speed/tokens_per_s": 2400.0,
}
RL_EVAL = {"reward_eval/total": lambda t: 0.02 + t, "reward_eval/reward_model": lambda t: 0.02 + t,
           "reward_eval/demo_gold": lambda t: 0.585 + 0.4 * t, "length/eval": 13.0, "eos_rate/eval": 0.97}
GRPO_TRAIN = {
    "reward/score": lambda t: 0.3 + 0.5 * t, "reward/score_std": lambda t: 0.6 - 0.1 * t,
    "reward/demo_gold": lambda t: 0.3 + 0.5 * t, "loss/policy": 0.001, "groups/zero_spread_frac": lambda t: 0.1 + 0.2 * t,
    "groups/kept_rows_frac": 1.0, "policy/clipfrac": 0.01, "policy/approx_kl": 0.002, "entropy": lambda t: 0.31 - 0.08 * t,
    "ratio/mean": 1.0, "length/mean": lambda t: 13.8 + 3 * t, "eos_rate/train": 0.97,
    "kl/per_token": lambda t: 0.002 + 0.02 * t, "mismatch/kl": 0.001, "diversity/distinct2": lambda t: 0.6 - 0.05 * t,
    "diversity/repetition": 0.05, "lr": 1e-5, "grad_norm": 0.5,
}
GRPO_EVAL = {"reward_eval/total": lambda t: 0.585 + 0.3 * t, "reward_eval/demo_gold": lambda t: 0.585 + 0.3 * t,
             "length/eval": 13.5, "eos_rate/eval": 0.97}
DPO_TRAIN = {
    "loss/train": lambda t: 0.69 - 0.3 * t, "rewards/chosen": lambda t: 0.1 * t, "rewards/rejected": lambda t: -0.5 * t,
    "margin/train": lambda t: 0.05 + 0.6 * t, "accuracy/train": lambda t: 0.6 + 0.25 * t,
    "logps/chosen": lambda t: -0.45 - 0.1 * t, "logps/rejected": lambda t: -1.1 - 0.8 * t, "kl/train": lambda t: 0.5 * t,
    "lr": 5e-7, "grad_norm": 3.0,
}
DPO_EVAL = {"loss/eval": lambda t: 0.69 - 0.25 * t, "accuracy/eval": lambda t: 0.5 + 0.3 * t,
            "margin/eval": lambda t: 0.6 * t, "logps/chosen_eval": lambda t: -0.3 - 0.1 * t}
RM_TRAIN = {"loss/train": lambda t: 0.69 - 0.3 * t, "accuracy/train": lambda t: 0.55 + 0.3 * t, "lr": 1e-5,
            "grad_norm": 2.0}
# mid-run eval accuracy is under 0.7 (0.64 at step 50): only the end is judged
RM_EVAL = {"accuracy/eval": lambda t: 0.5 + 0.28 * t, "margin/eval": lambda t: 0.1 + 0.8 * t,
           "calibration/error_eval": lambda t: 0.2 - 0.1 * t}
SFT_TRAIN = {"loss/train": lambda t: 2.5 - 1.5 * t, "lr": 1e-4, "grad_norm": 1.2, "speed/tokens_per_s": 9000.0}
SFT_EVAL = {"loss/eval": lambda t: 2.6 - 1.4 * t, "ppl/eval": lambda t: math.exp(2.6 - 1.4 * t)}

PPO, GRPO = RunFacts("ppo", 30, eval_only=("demo_gold",)), RunFacts("grpo", 60)
DPO, RM, SFT = RunFacts("dpo", 150), RunFacts("rm", 100), RunFacts("sft", 200)


def ppo(train: dict | None = None, evals: dict | None = None) -> list[dict]:
    return stream({**PPO_TRAIN, **(train or {})}, {**RL_EVAL, **(evals or {})})


def grpo(train: dict | None = None) -> list[dict]:
    return stream({**GRPO_TRAIN, **(train or {})}, GRPO_EVAL, steps=range(5, 61, 5), eval_steps=(0, 20, 40, 60))


def dpo(train: dict | None = None) -> list[dict]:
    return stream({**DPO_TRAIN, **(train or {})}, DPO_EVAL, steps=range(5, 151, 5), eval_steps=(0, 50, 100, 150),
                  noise=0.1)  # per-batch DPO figures are noisy


def rm(evals: dict | None = None) -> list[dict]:
    return stream(RM_TRAIN, {**RM_EVAL, **(evals or {})}, steps=range(10, 101, 10), eval_steps=(0, 50, 100))


def sft() -> list[dict]:
    return stream(SFT_TRAIN, SFT_EVAL, steps=range(10, 201, 10), eval_steps=(0, 100, 200))


HEALTHY = {"ppo": (PPO, ppo()), "grpo": (GRPO, grpo()), "dpo": (DPO, dpo()), "rm": (RM, rm()), "sft": (SFT, sft())}


def g(value: float) -> str:
    return f"{value:.3g}"


def values(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if key in r]


def thirds(xs: list[float]) -> tuple[float, float]:
    k = len(xs) // 3
    return statistics.fmean(xs[:k]), statistics.fmean(xs[-k:])


def with_value(rows: list[dict], step: int, key: str, value: object) -> list[dict]:
    """A copy of ``rows`` where the training row at ``step`` logged ``value`` for ``key``."""
    out = [dict(r) for r in rows]
    next(r for r in out if r["step"] == step and "reward/score" in r)[key] = value
    return out


@dataclass(frozen=True)
class Case:
    facts: RunFacts
    firing: list[dict]
    healthy: list[dict]
    numbers: Callable[[list[dict]], list[str]]  # what the message must carry, read off the firing rows


KL_HIGH_ROWS = ppo({"kl/per_sequence": lambda t: 0.5 + 15 * t})
GOLD_FALLS = ppo(evals={"reward_eval/demo_gold": lambda t: 0.585 - 0.5 * t})
LENGTH_PAYS = grpo({"length/mean": lambda t: 14 + 30 * t, "reward/score": lambda t: 0.2 + 0.7 * t})

CASES = {
    "nonfinite": Case(PPO, with_value(ppo(), 14, "grad_norm", float("inf")), ppo(),
                      lambda rows: ["grad_norm = inf", "step 14"]),
    "kl_high": Case(PPO, KL_HIGH_ROWS, ppo(),
                    lambda rows: [g(values(rows, "kl/per_sequence")[-1]), "above 10", "0.5-2.0"]),
    "kl_low": Case(PPO, ppo({"kl/per_sequence": 0.004, "kl/per_token": 0.0003}), ppo(),
                   lambda rows: [g(statistics.fmean(r["kl/per_sequence"] for r in rows
                                                    if "kl/per_sequence" in r and r["step"] >= 15)), "0.01"]),
    "reward_hacking": Case(PPO, GOLD_FALLS, ppo(), lambda rows: [
        "demo_gold (scored at eval only)", g(values(rows, "reward_eval/demo_gold")[0]),
        g(values(rows, "reward_eval/demo_gold")[-1]), g(values(rows, "reward_eval/total")[-1])]),
    "clipfrac_high": Case(PPO, ppo({"policy/clipfrac": lambda t: 0.15 + 0.3 * t}), ppo(),
                          lambda rows: [g(values(rows, "policy/clipfrac")[-1]), "0.3"]),
    "critic_negative_ev": Case(PPO, ppo({"value/explained_variance": lambda t: -0.6 + 0.3 * t}), ppo(),
                               lambda rows: ["10 logged steps in a row", "steps 4-22"]),
    "entropy_collapse": Case(PPO, ppo({"entropy": lambda t: 0.45 * (1 - t) ** 3 + 0.01}), ppo(),
                             lambda rows: [g(values(rows, "entropy")[0]), g(values(rows, "entropy")[-1])]),
    "rm_not_ready": Case(RM, rm({"accuracy/eval": lambda t: 0.5 + 0.12 * t}), rm(),
                         lambda rows: [g(values(rows, "accuracy/eval")[-1]), "0.7"]),
    "length_drives_reward": Case(GRPO, LENGTH_PAYS, grpo(), lambda rows: [
        f"{statistics.correlation(values(rows, 'length/mean'), values(rows, 'reward/score')):.2f}",
        *map(g, thirds(values(rows, "length/mean")))]),
    "dpo_stuck": Case(DPO, dpo({"accuracy/train": 0.5, "margin/train": 0.02}), dpo(),
                      lambda rows: [g(statistics.fmean(values(rows, "accuracy/train")[-5:]))]),
    "chosen_logps_falling": Case(DPO, dpo({"logps/chosen": lambda t: -0.45 - 1.5 * t}), dpo(), lambda rows: [
        *map(g, thirds(values(rows, "logps/chosen"))), *map(g, thirds(values(rows, "margin/train")))]),
    "zero_spread_groups": Case(GRPO, grpo({"groups/zero_spread_frac": lambda t: 0.3 + 0.5 * t}), grpo(),
                               lambda rows: [f"{values(rows, 'groups/zero_spread_frac')[-1]:.0%}", "50%"]),
    "engine_mismatch": Case(GRPO, grpo({"mismatch/kl": 0.03}), grpo(),
                            lambda rows: [g(values(rows, "mismatch/kl")[-1]), "0.01"]),
}


def test_every_rule_has_a_case():
    assert set(CASES) == set(RULES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_fires_with_its_numbers(name):
    case = CASES[name]
    finding = RULES[name](case.firing, case.facts)
    assert finding is not None and finding.rule == name
    assert finding.severity == ("error" if name == "nonfinite" else "warning")
    assert finding.advice
    for number in case.numbers(case.firing):
        assert number in finding.message, (number, finding.message)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_is_quiet_on_a_healthy_stream(name):
    case = CASES[name]
    assert RULES[name](case.healthy, case.facts) is None


@pytest.mark.parametrize("recipe", sorted(HEALTHY))
def test_healthy_runs_raise_nothing_at_any_step(recipe):
    """Rules run at every logging step: no prefix of a healthy run may fire anything."""
    facts, rows = HEALTHY[recipe]
    doc = Doctor(facts)
    for end in range(len(rows) + 1):
        assert doc.check(rows[:end]) == [], rows[end - 1]["step"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_rule_fires_once_at_the_step_it_first_fired(name):
    case = CASES[name]
    doc, announced = Doctor(case.facts), []
    for end in range(1, len(case.firing) + 1):
        new = doc.check(case.firing[:end])
        assert all(f.step == case.firing[end - 1]["step"] for f in new)
        announced += new
    assert [f.rule for f in announced].count(name) == 1
    assert len({f.rule for f in announced}) == len(announced) and doc.findings == announced
    longer = case.firing + [{**row, "step": row["step"] + 60} for row in case.firing[-3:]]
    assert not {f.rule for f in doc.check(longer)} & {f.rule for f in announced}  # a longer stream repeats nothing


def test_kl_high_measures_against_the_adaptive_target():
    assert RULES["kl_high"](KL_HIGH_ROWS, replace(PPO, kl_target=6.0)) is None  # limit 5 x 6 = 30 nats
    finding = RULES["kl_high"](KL_HIGH_ROWS, replace(PPO, kl_target=2.0))
    assert finding is not None and "above 10" in finding.message and "adaptive target of 2" in finding.message


def test_clipfrac_is_expected_under_sequence_ratios():
    """GSPO's sequence clip range (~1e-4) clips a third of the tokens by design: not a finding there."""
    firing = CASES["clipfrac_high"].firing
    assert RULES["clipfrac_high"](firing, PPO) is not None
    assert RULES["clipfrac_high"](firing, replace(GRPO, sequence_clip=True)) is None


def test_kl_high_reads_grpo_per_token_kl_times_length():
    rows = grpo({"kl/per_token": lambda t: 0.05 + 0.5 * t, "length/mean": 30.0})
    last = rows[-2]  # the last training row (an eval row follows at the same step)
    finding = RULES["kl_high"](rows, GRPO)
    assert finding is not None and g(last["kl/per_token"] * last["length/mean"]) in finding.message
    assert RULES["kl_high"](grpo(), GRPO) is None


@pytest.mark.parametrize(("train", "phrase"), [
    ({"length/mean": lambda t: 12 + 25 * t}, "response length grew"),
    ({"diversity/repetition": lambda t: 0.05 + 0.6 * t}, "repetition rose"),
    ({"diversity/distinct2": lambda t: 0.6 - 0.5 * t}, "distinct-2 fell"),
    ({"kl/per_sequence": lambda t: 0.5 + 20 * t}, "KL per sequence reached"),
])
def test_reward_hacking_names_the_side_effect_it_saw(train, phrase):
    """Without an eval-only judge, the optimised reward rising together with a side effect of exploitation."""
    rows = ppo(train)
    finding = RULES["reward_hacking"](rows, replace(PPO, eval_only=()))
    assert finding is not None and phrase in finding.message and "reward/score" in finding.message
    flat = ppo({**train, "reward/score": 0.5})  # the same side effect without a rising reward is not hacking
    assert RULES["reward_hacking"](flat, replace(PPO, eval_only=())) is None


# Two real runs of the demo PPO (30 steps against the demo RM, gold judge at eval only), a few keys each:
# (step, reward/score, kl/per_sequence, length/mean, entropy, value/explained_variance) and eval
# (step, reward_eval/total, reward_eval/demo_gold). lr 1e-3 exploits the RM (gold falls to -1); lr 1e-4 is healthy.
HACKED = ([(2, 0.464, 7.161, 14.656, 0.561, -0.894), (4, 0.557, 12.866, 11.594, 0.526, -0.175),
           (6, 0.928, 13.608, 5.031, 0.262, -0.56), (8, 1.299, 14.505, 4.0, 0.034, -0.886),
           (10, 1.397, 13.982, 4.0, 0.016, -2.126), (12, 1.284, 13.965, 4.0, 0.013, -0.073),
           (14, 1.203, 13.987, 4.0, 0.01, 0.311), (16, 1.312, 14.015, 4.0, 0.014, 0.407),
           (18, 1.271, 14.003, 4.0, 0.022, 0.535), (20, 1.388, 13.922, 4.0, 0.035, 0.425),
           (22, 1.291, 14.304, 4.0, 0.058, 0.213), (24, 1.303, 14.032, 4.0, 0.04, 0.641),
           (26, 1.245, 13.956, 3.875, 0.044, 0.541), (28, 1.244, 13.873, 3.938, 0.048, 0.479),
           (30, 1.276, 13.894, 3.938, 0.051, 0.509)], [(0, 0.02, 0.585), (30, 1.312, -1.0)])
HEALTHY_REAL = ([(2, 0.117, -0.0, 13.031, 0.31, -0.492), (4, 0.295, 0.336, 12.875, 0.317, -0.607),
                 (6, 0.51, 0.422, 12.75, 0.317, 0.05), (8, 0.999, 1.263, 14.5, 0.273, -0.445),
                 (10, 0.829, 1.018, 12.406, 0.282, -0.336), (12, 0.744, 1.126, 13.219, 0.268, -0.176),
                 (14, 0.939, 1.364, 13.188, 0.251, -0.735), (16, 0.953, 0.946, 12.312, 0.244, 0.127),
                 (18, 0.98, 1.689, 13.594, 0.213, -0.495), (20, 1.102, 2.238, 11.906, 0.271, -0.02),
                 (22, 0.988, 2.225, 12.562, 0.25, -0.003), (24, 1.091, 1.653, 13.219, 0.246, -0.611),
                 (26, 0.9, 1.759, 13.0, 0.23, 0.131), (28, 0.961, 1.875, 12.188, 0.242, -0.259),
                 (30, 1.168, 2.311, 12.219, 0.249, -0.546)],
                [(0, 0.02, 0.585), (10, 1.016, 0.988), (20, 1.146, 0.993), (30, 1.035, 1.03)])


def real_rows(run: tuple[list, list]) -> list[dict]:
    train, evals = run
    keys = ("reward/score", "kl/per_sequence", "length/mean", "entropy", "value/explained_variance")
    rows = [{"step": s, **dict(zip(keys, rest))} for s, *rest in train]
    rows += [{"step": s, "reward_eval/total": total, "reward_eval/demo_gold": gold} for s, total, gold in evals]
    return sorted(rows, key=lambda r: r["step"])


def test_real_run_gold_falls_while_the_rm_score_rises():
    rows = real_rows(HACKED)
    finding = RULES["reward_hacking"](rows, PPO)
    assert finding is not None
    assert "demo_gold (scored at eval only) fell from 0.585 at step 0 to -1 while the optimised reward rose from 0.02 " \
        "to 1.31" in finding.message
    assert {f.rule for f in Doctor(PPO).check(rows)} == {"reward_hacking", "kl_high", "entropy_collapse"}
    assert Doctor(PPO).check(real_rows(HEALTHY_REAL)) == []


def test_rm_used_as_a_reward_but_judged_not_ready():
    verdict = "NOT ready for PPO: eval accuracy 0.62 < 0.7 (more or cleaner data, more steps, or a larger backbone)"
    facts = replace(PPO, reward_models=(("runs/rm-1/final", verdict), ("runs/rm-2/final", "ready for PPO")))
    new = Doctor(facts).check(ppo()[:1])  # at the first check
    assert [f.rule for f in new] == ["rm_not_ready"]
    assert "runs/rm-1/final" in new[0].message and verdict in new[0].message and "rm-2" not in new[0].message
    quiet = replace(PPO, reward_models=(("runs/rm-2/final", "ready for PPO"), ("hub/rm", "")))
    assert RULES["rm_not_ready"](ppo(), quiet) is None


def test_health_json_is_written_reloadable_and_atomic(tmp_path, monkeypatch):
    path, case = tmp_path / "health.json", CASES["critic_negative_ev"]
    doc = Doctor(case.facts, path)
    doc.check(case.firing[:3])
    assert json.loads(path.read_text()) == {"findings": [], "rules_checked": sorted(RULES), "last_step": 4}
    doc.check(case.firing)
    saved = json.loads(path.read_text())
    assert saved["last_step"] == case.firing[-1]["step"] and saved["rules_checked"] == sorted(RULES)
    assert read_health(path) == doc.findings and [f.rule for f in doc.findings] == ["critic_negative_ev"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["health.json"]  # no temporary leftovers

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)  # a crash mid-write leaves the previous file whole
    with pytest.raises(OSError):
        doc.check(with_value(case.firing, 30, "grad_norm", float("nan")))
    assert json.loads(path.read_text()) == saved and sorted(p.name for p in tmp_path.iterdir()) == ["health.json"]


def test_health_json_is_rewritten_only_when_something_new_fires(tmp_path, monkeypatch):
    writes = []
    monkeypatch.setattr(doctor_module, "atomic_write_json", lambda path, obj: writes.append(obj))
    facts, rows = HEALTHY["ppo"]
    doc = Doctor(facts, tmp_path / "health.json")
    for end in range(1, len(rows) + 1):
        doc.check(rows[:end])
    assert len(writes) == 1  # once, so the file exists
    rows = with_value(rows, 20, "loss/policy", float("nan"))
    doc.check(rows)
    doc.check(rows)
    assert len(writes) == 2 and writes[-1]["findings"][0]["rule"] == "nonfinite"


def test_restore_stops_re_announcement_on_resume(tmp_path):
    path, case = tmp_path / "health.json", CASES["reward_hacking"]
    first = Doctor(case.facts, path)
    assert [f.rule for f in first.check(case.firing)] == ["reward_hacking"]
    resumed = Doctor(case.facts, path)
    resumed.restore(path)
    assert resumed.check(case.firing) == [] and resumed.findings == first.findings
    assert read_health(path) == first.findings  # the resumed run's first write keeps them


def test_read_health_of_a_run_without_one(tmp_path):
    assert read_health(tmp_path / "health.json") == []
    assert Finding("kl_low", 3, "warning", "m", "a") in [Finding("kl_low", 3, "warning", "m", "a")]


@pytest.mark.parametrize("recipe", sorted(HEALTHY))
def test_sparse_rows_and_missing_keys_crash_no_rule(recipe):
    """Keys dropped at random, eval-only rows, rows without a step, text / bool / None values, NaN: every rule, on
    every prefix, answers a finding or None."""
    facts, rows = HEALTHY[recipe]
    rng = random.Random(0)
    sparse = [{k: v for k, v in row.items() if k == "step" or rng.random() < 0.5} for row in rows]
    odd = [{}, {"step": 3}, {"step": 4, "note": "text", "flag": True, "missing": None, "loss/train": float("nan")},
           {"step": 5, "kl/per_token": 0.1}, {"step": float("nan"), "entropy": -math.inf}]
    stranger = replace(facts, max_steps=0, eval_only=("judge", "demo_gold"), kl_target=0.0)
    for candidate in (sparse, odd + sparse, sparse[:2], [], [{}]):
        for end in range(len(candidate) + 1):
            for facts_ in (facts, stranger):
                for rule in RULES.values():
                    finding = rule(candidate[:end], facts_)
                    assert finding is None or isinstance(finding, Finding)


@pytest.mark.slow
def test_ppo_raises_gold_then_the_doctor_sees_reward_hacking(tmp_path, demo_rm):
    """The demo's PPO against its reward model with kl_coef 0.05 for 50 steps. PPO works: the RM score rises and
    gold (scored at eval only) rises well over SFT's. Then gold falls from its peak while the RM score holds: the
    doctor must say reward_hacking, in health.json and the report."""
    import json

    from alignkit.demo.run import DEMO_STAGES, stage_config

    cfg = stage_config("ppo", tmp_path / "ppo", ppo={"kl_coef": 0.05}, train={"max_steps": 50, "batch_size": 16},
                       run={"eval_every": 10, "log_every": 2, "save_every": 0, "sample_every": 0, "progress": False})
    summary = DEMO_STAGES["ppo"].train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "training_metrics.jsonl").read_text().splitlines()]
    gold = [r["reward_eval/demo_gold"] for r in rows if "reward_eval/demo_gold" in r]
    assert max(gold) >= gold[0] + 0.3, gold  # a sign-flipped loss cannot do this
    assert summary["final"]["reward_eval/reward_model"] > summary["initial"]["reward_eval/reward_model"] + 0.5
    assert max(gold) - gold[-1] > 0.1, gold  # the fall is real, not the rule's artefact
    findings = {f["rule"]: f for f in json.loads((tmp_path / "ppo" / "health.json").read_text())["findings"]}
    assert "reward_hacking" in findings and "demo_gold (scored at eval only) fell" in findings["reward_hacking"]["message"]
    assert "reward_hacking" in (tmp_path / "ppo" / "report.html").read_text()
