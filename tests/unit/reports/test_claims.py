"""Claims: verdict rules on synthetic numbers and synthetic run tables, the measurements, the shipped specs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from harness.sweep.spec import load_spec
from reports import claims as C
from reports.verdicts import CONTRADICTED, REPRODUCED, UNRESOLVED, Rule, seeds_to_resolve, verdict

# ---- the verdict rule --------------------------------------------------------------------------------


def test_rule_text_and_region():
    assert Rule(0.0).text("d") == "d > 0"
    assert Rule(high=0.02).text() == "Q < 0.02"
    assert Rule(-1.0, 1.0).text() == "-1 <= Q <= 1"
    assert Rule(-1.0, 1.0).distance(0.25) == 0.75 and Rule(0.0).distance(-2.0) == 2.0


def test_a_clear_effect_is_reproduced_its_negation_contradicted():
    x = [0.30, 0.32, 0.29, 0.31, 0.33]
    v = verdict(x, Rule(0.0))
    assert v.word == REPRODUCED and v.interval.n == 5 and v.interval.low > 0
    # the interval by hand: mean +- t_{4} s / sqrt(5)
    half = st.t.ppf(0.975, 4) * np.std(x, ddof=1) / math.sqrt(5)
    assert v.interval.low == pytest.approx(np.mean(x) - half) and v.interval.high == pytest.approx(np.mean(x) + half)
    assert verdict([-a for a in x], Rule(0.0)).word == CONTRADICTED
    # a two-sided region: inside -> reproduced; wholly past either end -> contradicted
    assert verdict([0.1, 0.2, 0.0, 0.15], Rule(-1, 1)).word == REPRODUCED
    assert verdict([2.1, 2.3, 2.2], Rule(-1, 1)).word == CONTRADICTED
    assert verdict([-3.1, -3.3, -3.2], Rule(-1, 1)).word == CONTRADICTED


def test_noise_at_three_seeds_is_unresolved_with_the_seeds_that_would_resolve_it():
    x = [0.05, -0.02, 0.09]  # mean 0.04, sd 0.0557: the t-interval at 2 df spans 0
    v = verdict(x, Rule(0.0))
    assert v.word == UNRESOLVED and v.interval.n == 3
    n, s, d = v.seeds_needed, np.std(x, ddof=1), np.mean(x)
    assert n is not None and n > 3 and v.more_seeds == n - 3
    # the count by hand: the half-width at n seeds is below the distance, at n - 1 it is not
    assert st.t.ppf(0.975, n - 1) * s / math.sqrt(n) < d <= st.t.ppf(0.975, n - 2) * s / math.sqrt(n - 1)
    assert f"(the estimate leans reproduced; about {n} would resolve it: {n - 3} more)" in v.text()
    assert verdict([-a for a in x], Rule(0.0)).leans == CONTRADICTED


def test_the_seed_count_is_honest_about_what_cannot_be_resolved():
    assert verdict([0.1, -0.1, 0.2, -0.2], Rule(0.0)).seeds_needed is None  # the estimate sits on the end
    one = verdict([0.4], Rule(0.0))
    assert one.word == UNRESOLVED and one.seeds_needed is None and "needs 2 or more" in one.text()
    assert verdict([], Rule(0.0)).word == UNRESOLVED
    assert seeds_to_resolve(1.0, 0.0, 3) is None and seeds_to_resolve(0.0, 1.0, 3) == 4


# ---- synthetic run tables through a claim's measurements ---------------------------------------------------


def rloo_tables(effect: float, seeds: int, noise: float = 0.01, lam_effect: float = 0.05, rng_seed: int = 0):
    """Runs and curves of the rloo-vs-ppo sweep: three cells x seeds; final gold = 0.5 + cell effect + noise."""
    rng = np.random.default_rng(rng_seed)
    runs, curves = [], []
    cells = [("token", 0.95, 0.0), ("token", 1.0, lam_effect), ("sequence", 0.95, effect)]
    for seed in range(seeds):
        for level, lam, eff in cells:
            rid = f"{level}-{lam}-{seed}"
            gold = 0.5 + eff + noise * rng.standard_normal()
            runs.append({"run_id": rid, "seed": seed, "advantage.level": level, "advantage.lam": lam,
                         "advantage.baseline": "rloo", "eval/gold": gold})
            curves += [{"run_id": rid, "metric": "eval/gold", "step": s, "value": v} for s, v in ((0, 0.3), (20, gold))]
    return pd.DataFrame(runs), pd.DataFrame(curves)


def test_rloo_vs_ppo_on_synthetic_run_tables():
    claim = C.CLAIMS["rloo-vs-ppo"]
    good = C.evaluate(claim, *rloo_tables(effect=0.10, seeds=5))
    assert [r.verdict.word for r in good] == [REPRODUCED, REPRODUCED]
    assert good[0].verdict.interval.point == pytest.approx(0.10, abs=0.02)
    bad = C.evaluate(claim, *rloo_tables(effect=-0.20, seeds=5, lam_effect=-0.1))
    assert [r.verdict.word for r in bad] == [CONTRADICTED, CONTRADICTED]
    noisy = C.evaluate(claim, *rloo_tables(effect=0.0, seeds=3, noise=0.08, lam_effect=0.03, rng_seed=2))
    assert noisy[1].verdict.word == UNRESOLVED and noisy[1].verdict.seeds_needed > 3
    t = C.table(good + noisy, wall={"rloo-vs-ppo": "1m02s"})
    assert list(t.columns) == ["claim", "paper", "quantity", "estimate [95%]", "seeds", "rule", "verdict",
                               "claim verdict", "wall time"]
    assert t.loc[0, "rule"] == "dGold > -0.02" and t.loc[1, "rule"] == "dGold > 0"
    assert set(t["claim verdict"]) == {UNRESOLVED}  # one part unresolved: the claim is not reproduced


def test_a_sweep_missing_a_cell_measures_nothing_and_says_so():
    runs, curves = rloo_tables(effect=0.1, seeds=3)
    runs = runs[runs["advantage.level"] == "token"]
    out = C.evaluate(C.CLAIMS["rloo-vs-ppo"], runs, curves)
    assert out[0].verdict.word == UNRESOLVED and out[0].verdict.interval.n == 0


def test_steps_to_target_interpolates_between_evaluations():
    assert C.steps_to_target([0, 4, 8], [0.1, 0.3, 0.5], 0.3) == pytest.approx(6.0)  # 0.4 reached halfway
    assert math.isnan(C.steps_to_target([0, 4, 8], [0.1, 0.2, 0.3], 0.3))  # never reached
    assert math.isnan(C.steps_to_target([1, 4], [0.1, 0.9], 0.3))  # no step-0 evaluation


def critical_tables(s_min: float, e_min: float, simple: float, seeds: int = 3):
    """Gold rising linearly so it reaches +0.3 at exactly S = s_min + e_min / B; probes giving B_simple."""
    runs, curves = [], []
    for seed in range(seeds):
        for b in (16, 32, 64, 128):
            rid, s = f"{b}-{seed}", s_min + e_min / b
            runs.append({"run_id": rid, "seed": seed, "rollout.batch_size": b})
            steps = np.arange(0, int(np.ceil(s)) + 3)
            curves += [{"run_id": rid, "metric": "eval/gold", "step": int(k), "value": 0.1 + 0.3 * k / s} for k in steps]
            curves += [{"run_id": rid, "metric": "grad/signal", "step": 1, "value": 2.0 * (1 + 0.1 * seed)},
                       {"run_id": rid, "metric": "grad/sample_variance", "step": 1, "value": 2.0 * (1 + 0.1 * seed) * simple}]
    return pd.DataFrame(runs), pd.DataFrame(curves)


def test_the_critical_batch_fit_recovers_the_hyperbola():
    runs, curves = critical_tables(s_min=10.0, e_min=640.0, simple=40.0)
    t = C.critical_batch_table(runs, curves)
    assert t["S_min"].to_numpy() == pytest.approx([10.0] * 3, rel=1e-6)
    assert t["E_min"].to_numpy() == pytest.approx([640.0] * 3, rel=1e-6)
    assert t["B_crit"].to_numpy() == pytest.approx([64.0] * 3, rel=1e-6)
    assert t["log_ratio"].to_numpy() == pytest.approx([math.log10(64 / 40)] * 3, rel=1e-6)
    # B_crit 64 against B_simple 40: within an order of magnitude, with zero spread -> reproduced
    (r,) = C.evaluate(C.CLAIMS["critical-batch"], runs, curves)
    assert r.verdict.word == REPRODUCED
    runs, curves = critical_tables(s_min=10.0, e_min=640.0, simple=4000.0)
    (r,) = C.evaluate(C.CLAIMS["critical-batch"], runs, curves)
    assert r.verdict.word == CONTRADICTED  # B_simple 60x B_crit
    assert all(math.isnan(v) for v in C.fit_hyperbola([16, 32], [float("nan"), 5.0]))  # one batch size reached
    assert all(math.isnan(v) for v in C.fit_hyperbola([16, 32], [4.0, 5.0]))  # S rising with B: E_min < 0


def test_variance_slope_and_baseline_ratio_by_hand():
    runs, curves = [], []
    for seed in range(3):
        for b in (16, 32, 64):
            for base, tr in (("none", 8.0), ("rloo", 2.0)):
                rid = f"{b}-{base}-{seed}"
                runs.append({"run_id": rid, "seed": seed, "rollout.batch_size": b, "advantage.baseline": base})
                curves += [{"run_id": rid, "metric": "grad/batch_variance", "step": 1, "value": tr / b ** (1 + 0.01 * seed)},
                           {"run_id": rid, "metric": "grad/sample_variance", "step": 1, "value": tr}]
    runs, curves = pd.DataFrame(runs), pd.DataFrame(curves)
    assert C.variance_slope(runs, curves).to_numpy() == pytest.approx([-1.0, -1.01, -1.02])
    assert C.baseline_log_ratio(runs, curves).to_numpy() == pytest.approx([math.log(0.25)] * 3)
    assert [r.verdict.word for r in C.evaluate(C.CLAIMS["variance-1-over-b"], runs, curves)] == [REPRODUCED, REPRODUCED]


def test_growth_is_the_fitted_change_over_training():
    curves = pd.DataFrame([{"run_id": "a", "metric": "response/length_low", "step": s, "value": 5 + 0.5 * s}
                           for s in range(1, 11)])
    assert C.run_growth(curves, "response/length_low")["a"] == pytest.approx(4.5)  # slope 0.5 over 9 steps


# ---- the shipped claims ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(C.CLAIMS))
def test_every_claim_ships_a_valid_spec_with_its_header(name):
    claim = C.CLAIMS[name]
    spec = load_spec(claim.spec)
    assert spec.name == f"claim-{name}" and C.for_sweep(spec.name) is claim and C.for_sweep(f"claim-{name}-s9") is claim
    head = C.header(claim.spec)
    assert set(head) == {"paper", "claim", "quantity", "rule", "cost", "wall time"}, head
    assert claim.paper.split(",")[0].split(" (")[0] in head["paper"]
    assert f"{spec.n_configs} cells x {len(spec.seeds)} seeds = {spec.n_runs} runs" in head["cost"]
    for p in claim.parts:  # the header states each part's rule bounds
        for bound in (p.rule.low, p.rule.high):
            if math.isfinite(bound):
                assert f"{bound:g}" in head["rule"], (bound, head["rule"])


def test_did_you_mean():
    assert C.did_you_mean("clip-hgher") == " (did you mean 'clip-higher'?)"
    assert C.did_you_mean("zzzz") == ""
    assert C.for_sweep("quick") is None
