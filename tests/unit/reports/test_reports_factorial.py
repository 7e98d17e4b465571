"""Fixed-effects factorial intervals (reports.factorial, reports.effects): by an independent route
(least squares on an effect-coded design), their coverage by simulation, and Holm's adjustment."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from reports import effects as E
from reports import factorial as F
from reports import findings


def two_by_two(effect: float = 2.0, seeds: int = 5, seed: int = 0, sd=(1.0, 1.0, 1.0, 1.0)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for j, (a, b) in enumerate(itertools.product((0, 1), (0, 1))):
        for s in range(seeds):
            rows.append({"A": a, "B": b, "seed": s, "run_id": f"{a}{b}{s}", "eval/gold": effect * a + rng.normal(0, sd[j])})
    return pd.DataFrame(rows)


def test_fixed_effects_match_least_squares_on_an_effect_coded_design():
    runs = two_by_two(seed=3)
    t = E.effects_table(runs, None, ["A", "B"], metrics=("eval/gold",)).set_index("factor")
    # independent route: y = b0 + bA xA + bB xB + bAB xA xB, x = -1/2 or +1/2; residual df N - 4
    xa, xb = runs["A"].to_numpy(float) - 0.5, runs["B"].to_numpy(float) - 0.5
    X = np.column_stack([np.ones(len(runs)), xa, xb, xa * xb])
    y = runs["eval/gold"].to_numpy(float)
    beta, res, *_ = np.linalg.lstsq(X, y, rcond=None)
    df = len(y) - 4
    cov = res[0] / df * np.linalg.inv(X.T @ X)
    q = st.t.ppf(0.975, df)
    for name, k, scale in (("A", 1, 1.0), ("B", 2, 1.0), ("A x B", 3, 0.5)):  # AB contrast = bAB / 2
        r = t.loc[name]
        assert r["over"] == E.FIXED and r["df"] == 16 and r["n_runs"] == 20
        assert r["estimate"] == pytest.approx(scale * beta[k], abs=1e-12)
        half = scale * q * np.sqrt(cov[k, k])
        assert (r["low"], r["high"]) == pytest.approx((scale * beta[k] - half, scale * beta[k] + half), abs=1e-12)
    # the main effect of a 2-sd effect is called (the matched-cell interval had 1 df and could never call it)
    (a,) = [s for s in findings.effect_sentences(E.effects_table(runs, None, ["A", "B"], metrics=("eval/gold",)))
            if s.startswith("Main effect A")]
    assert "16 error df" in a and "so it is positive" in a


def test_the_matched_cell_interval_stays_where_it_has_more_df():
    # 2^4 with one seed a cell: no within-cell df, the matched cells (8 per factor) are the replicates
    rng = np.random.default_rng(1)
    rows = [{"A": a, "B": b, "C": c, "D": d, "seed": 0, "eval/gold": 0.3 * a + rng.normal()}
            for a, b, c, d in itertools.product((0, 1), repeat=4)]  # fmt: skip
    t = E.main_effects(pd.DataFrame(rows), None, ["A", "B", "C", "D"], "eval/gold").set_index("factor")
    assert (t["over"] == E.CELLS).all() and (t["n_matched"] == 8).all() and (t["df"] == 7).all()


def _coverage(reps: int, effect: float, sd, seeds: int, weights, truth: float, seed: int):
    """Share of ``reps`` simulated 2x2 designs whose pooled / Welch intervals cover ``truth``."""
    rng = np.random.default_rng(seed)
    mu = np.array([0.0, 0.0, effect, effect])  # cells (A0B0, A0B1, A1B0, A1B1)
    y = mu[None, :, None] + np.asarray(sd)[None, :, None] * rng.standard_normal((reps, 4, seeds))
    m, v, n = y.mean(-1), y.var(-1, ddof=1), np.full((reps, 4), float(seeds))
    _, lo, hi, _, _ = F.pooled_contrast(m, v, n, weights)
    _, wlo, whi, _, _ = F.welch_contrast(m, v, n, weights)
    return float(((lo <= truth) & (truth <= hi)).mean()), float(((wlo <= truth) & (truth <= whi)).mean())


MAIN = np.array([-0.5, -0.5, 0.5, 0.5])
INTER = np.array([0.5, -0.5, -0.5, 0.5]) / 2  # ((y11 - y01) - (y10 - y00)) / 2


@pytest.mark.parametrize("weights,truth", [(MAIN, 2.0), (INTER, 0.0)], ids=["main", "interaction"])
def test_coverage_of_the_fixed_effects_intervals(weights, truth):
    """2x2, 5 seeds, a 2-sd main effect: the pooled interval covers 95% with equal variances and the
    Welch-Satterthwaite check keeps ~95% when one cell's sd is 4x the others' (pooled drifts)."""
    reps = 4000
    se = np.sqrt(0.95 * 0.05 / reps)
    pooled, welch = _coverage(reps, 2.0, (1, 1, 1, 1), 5, weights, truth, seed=7)
    assert abs(pooled - 0.95) < 3 * se and abs(welch - 0.95) < 4 * se, (pooled, welch)
    _, welch_uneq = _coverage(reps, 2.0, (1, 1, 1, 4), 5, weights, truth, seed=8)
    assert welch_uneq > 0.93, welch_uneq


def test_coverage_of_the_matched_cell_interval():
    """Main effect over 8 matched cells (2^4, one seed a cell, no interaction): the t-interval covers 95%."""
    rng = np.random.default_rng(11)
    reps, hits = 4000, 0
    d = rng.standard_normal((reps, 8)) * np.sqrt(2) + 0.5  # matched differences: effect 0.5, two runs' noise
    q = st.t.ppf(0.975, 7)
    half = q * d.std(1, ddof=1) / np.sqrt(8)
    hits = ((d.mean(1) - half <= 0.5) & (0.5 <= d.mean(1) + half)).mean()
    assert abs(hits - 0.95) < 3 * np.sqrt(0.95 * 0.05 / reps)
    # the harness's own reading of one such design agrees with the formula
    rows = [{"A": a, "B": b, "C": c, "D": dd, "eval/gold": 0.5 * a + rng.normal()}
            for a, b, c, dd in itertools.product((0, 1), repeat=4)]  # fmt: skip
    runs = pd.DataFrame(rows)
    r = E.main_effects(runs, None, ["A", "B", "C", "D"], "eval/gold").set_index("factor").loc["A"]
    diffs = E.matched_differences(runs, "A", 0, 1, "eval/gold", ["A", "B", "C", "D"]).to_numpy()
    h = q * diffs.std(ddof=1) / np.sqrt(8)
    assert (r["low"], r["high"]) == pytest.approx((diffs.mean() - h, diffs.mean() + h))


def test_holm_by_hand():
    adj = F.holm([0.01, 0.04, 0.03, np.nan, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 (k = 4): 4*0.005, 3*0.01, max(2*0.03, .), max(1*0.04, 0.06)
    assert adj[[4, 0, 2, 1]] == pytest.approx([0.02, 0.03, 0.06, 0.06]) and np.isnan(adj[3])
    assert F.p_from_interval(1.0, 0.0, 2.0, 10) == pytest.approx(2 * st.t.sf(st.t.ppf(0.975, 10), 10))


def test_multiplicity_states_the_family_and_holm_keeps_only_what_survives():
    runs = two_by_two(effect=2.0, seed=3)
    effects = E.effects_table(runs, None, ["A", "B"], metrics=("eval/gold",))
    p = effects.set_index("factor")["p"]
    assert p["A"] < 0.01 and p["B"] > 0.05  # a 2-sd effect of A, none of B
    sentences = findings.effect_sentences(effects)
    s = findings.multiplicity(sentences, effects)
    assert s.startswith(f"Multiplicity: these findings make {sum(x.count('95%') for x in sentences)} statements")
    holm = F.holm(effects["p"].to_numpy(float))
    assert "Holm's adjustment over the 3 effects" in s and "A: 1 - 0 on eval/gold (Holm p = " in s
    assert "B: 1 - 0" not in s and holm.max() > 0.05


def test_a_level_iqm_order_that_the_main_effect_contradicts_gets_a_sentence():
    """At B = 1 most runs read 0.9 against 1.0 at B = 0, but one run of cell (A = 1, B = 1) reads 20: the
    pooled IQM trims it away and puts B = 0 ahead, the cell means (the main effect) put B = 1 ahead."""
    rows = []
    for a, b in itertools.product((0, 1), (0, 1)):
        for s in range(6):
            v = 20.0 if (a, b, s) == (1, 1, 5) else (0.9 if b else 1.0) + 0.001 * s
            rows.append({"A": a, "B": b, "seed": s, "eval/gold": v})
    runs = pd.DataFrame(rows)
    table = E.level_table(runs, None, ["A", "B"], ["eval/gold"])
    effects = E.effects_table(runs, None, ["A", "B"], metrics=("eval/gold",))
    iqm = table[table["factor"] == "B"].set_index("level")["iqm"]
    est = effects.set_index("factor").loc["B", "estimate"]
    assert iqm[1] < iqm[0] and est > 0
    s = findings.iqm_mean_disagree(table, effects, "B")
    assert s.startswith("B: the level IQMs put 0 ahead") and "opposite signs" in s
    assert findings.iqm_mean_disagree(table, effects, "A") is None
