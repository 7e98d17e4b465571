"""reports.overopt (Gao et al. 2022 fit) and its findings: curves built from known alpha, beta (figure 8: test_plots_overopt.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import TRUE, gao_sweep

from reports import findings, overopt, stats


def kl_star(alpha: float, beta: float) -> float:
    return float(np.exp(2 * (alpha / beta - 1)))


# ---- the fit -------------------------------------------------------------------------------------------


def test_fit_recovers_alpha_beta_and_the_peak():
    rng = np.random.default_rng(1)
    d = np.linspace(0.0, 6.0, 60)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(d > 0, d * (1.0 - 0.5 * np.log(d)), 0.0) + rng.normal(0, 0.01, d.size)
    f = overopt.fit_gao(d, r)
    assert f.n == 59  # d = 0 is left out
    assert f.alpha == pytest.approx(1.0, abs=0.02) and f.beta == pytest.approx(0.5, abs=0.01)
    assert f.r2 > 0.99
    assert f.has_peak and f.d_star == pytest.approx(np.e, rel=0.03)
    assert f.kl_star == pytest.approx(np.e**2, rel=0.06) and f.kl_star == pytest.approx(f.d_star**2)
    assert f.predict([0.0])[0] == 0.0 and f.predict([np.e])[0] == pytest.approx(np.e * 0.5, rel=0.03)
    # R^2 by hand: SS_tot about the mean of R (not about 0), over the points with d > 0
    x, y = d[1:], r[1:]
    assert f.r2 == pytest.approx(1 - np.sum((y - f.predict(x)) ** 2) / np.sum((y - y.mean()) ** 2))
    offset = overopt.fit_gao(x, y + 5.0)  # no intercept: a constant offset is not fitted away
    assert offset.r2 < 0.5


def test_fit_is_exact_on_noise_free_data_and_needs_two_regressors():
    d = np.array([0.5, 1.0, 2.0, 3.0, 4.0])
    r = d * (0.7 - 0.2 * np.log(d))
    f = overopt.fit_gao(d, r)
    assert (f.alpha, f.beta) == (pytest.approx(0.7), pytest.approx(0.2)) and f.r2 == pytest.approx(1.0)
    # a curve linear in d (beta = 0) is not mistaken for one with a peak
    lin = overopt.fit_gao(d, 0.4 * d)
    assert lin.beta == pytest.approx(0.0, abs=1e-9) and lin.alpha == pytest.approx(0.4)
    assert np.isnan(overopt.fit_gao([0.0, 1.0], [0.0, 1.0]).alpha)  # too few points with d > 0


def test_beta_not_positive_gives_no_peak():
    d = np.linspace(0.1, 5.0, 40)
    f = overopt.fit_gao(d, d * (1.0 + 0.2 * np.log(d)))  # beta = -0.2: convex, still rising
    assert f.beta == pytest.approx(-0.2) and not f.has_peak
    assert np.isnan(f.d_star) and np.isnan(f.kl_star) and np.isnan(f.log_kl_star)


# ---- points and levels ----------------------------------------------------------------------------------


def test_points_clip_kl_and_take_gains_over_step_zero(sweep3):
    runs, curves = sweep3
    pts = overopt.run_points(curves)
    one = pts[pts["run_id"] == "rm512-c0-s0"].set_index("step")
    c = curves[curves["run_id"] == "rm512-c0-s0"].pivot(index="step", columns="metric", values="value")
    assert one.loc[0, "kl"] == 0.0 and one.loc[0, "d"] == 0.0  # -0.002 clipped
    assert one.loc[0, "gold_gain"] == 0.0 and one.loc[0, "proxy_gain"] == 0.0
    assert one.loc[35, "d"] == pytest.approx(np.sqrt(c.loc[35, "eval/kl"]))
    assert one.loc[35, "gold_gain"] == pytest.approx(c.loc[35, "eval/gold"] - c.loc[0, "eval/gold"])
    assert one.loc[35, "proxy_gain"] == pytest.approx(c.loc[35, "eval/proxy"] - c.loc[0, "eval/proxy"])


def test_level_summary_recovers_each_rm_size(sweep3):
    runs, curves = sweep3
    a = overopt.analyse(runs, curves)
    t = a.summary.set_index("level")
    assert list(t.index) == ["512", "4096"]  # numeric order, not text order
    assert set(a.fits.groupby("level")["seed"].nunique()) == {3}  # one fit per seed, pooled over kl.coef
    for rm, (alpha, beta) in TRUE.items():
        r = t.loc[str(rm)]
        assert r["n_seeds"] == 3 and r["n_runs"] == 9
        assert r["alpha"] == pytest.approx(alpha, abs=0.03) and r["beta"] == pytest.approx(beta, abs=0.02)
        assert r["alpha_low"] < r["alpha"] < r["alpha_high"] and r["beta_low"] < r["beta"] < r["beta_high"]
        assert r["r2"] > 0.98 and r["has_peak"]
        assert r["kl_star"] == pytest.approx(kl_star(alpha, beta), rel=0.2)
        assert r["kl_star_low"] < r["kl_star"] < r["kl_star_high"]
    # the empirical peak: a run's KL at its highest gold, median over runs; the kl.coef = 0.2 runs
    # (KL 4) never get past the 512 peak (7.4): they peak at their last evaluation
    assert t.loc["512", "n_peak_at_end"] == 3
    assert t.loc["512", "empirical_kl"] == pytest.approx(kl_star(*TRUE[512]), rel=0.35)


def test_one_group_when_rm_pairs_is_not_in_the_runs(sweep3):
    runs, curves = sweep3
    one = runs[runs["model.rm_pairs"] == 512].drop(columns=["model.rm_pairs"])
    a = overopt.analyse(one, curves)
    assert not a.grouped and a.shift is None and list(a.summary["level"]) == [overopt.ALL]
    assert a.summary.loc[0, "beta"] == pytest.approx(0.5, abs=0.02)
    s = findings.gao_sentences(one, curves)
    assert "over all runs" in s[0] and not any(x.startswith("Peak shift") for x in s)


# ---- findings --------------------------------------------------------------------------------------------


def test_fit_sentence_quotes_the_numbers(sweep3):
    runs, curves = sweep3
    a = overopt.analyse(runs, curves)
    s = findings.gao_sentences(runs, curves, a)
    r = a.summary.set_index("level").loc["512"]
    first = s[0]
    assert first.startswith("Gao et al. (2022) fit of gold gain") and "at model.rm_pairs = 512" in first
    assert f"α = {findings.Interval(r['alpha'], r['alpha_low'], r['alpha_high'], 3).fmt()}" in first
    assert f"R² = {r['r2']:.2f}" in first and "KL* = d*² = " in first
    assert "empirical gold peak at KL" in first and "3 of them highest at their last evaluation" in first
    assert "at model.rm_pairs = 4096" in s[1]


def test_peak_shift_refuses_with_three_seeds_and_calls_with_six(sweep3):
    runs, curves = sweep3
    few = findings.peak_shift_sentence(overopt.analyse(runs, curves).shift)
    assert few.startswith("Peak shift with more RM data (model.rm_pairs = 4096 against 512)")
    assert "not called: needs 2 more seeds per level" in few and "moves the peak" not in few

    a6 = overopt.analyse(*gao_sweep(seeds=6, seed=3))
    shift = a6.shift
    assert (shift.small, shift.large, shift.n_small, shift.n_large) == ("512", "4096", 6, 6)
    truth = kl_star(*TRUE[4096]) / kl_star(*TRUE[512])
    assert shift.ratio.point == pytest.approx(truth, rel=0.25) and shift.ratio.low > 1
    called = findings.peak_shift_sentence(shift)
    assert "Welch's 95% t-interval" in called and "moves the peak to larger KL" in called

    # the same peaks the other way round: more RM data moves it to smaller KL
    flipped = overopt.analyse(*gao_sweep(true={512: TRUE[4096], 4096: TRUE[512]}, seeds=6, seed=3))
    assert flipped.shift.ratio.high < 1
    assert "to smaller KL" in findings.peak_shift_sentence(flipped.shift)


def test_peak_shift_says_there_is_no_fitted_peak_where_beta_is_not_positive():
    runs, curves = gao_sweep(true={512: (1.0, -0.2), 4096: TRUE[4096]}, seeds=5)
    a = overopt.analyse(runs, curves)
    t = a.summary.set_index("level")
    assert not t.loc["512", "has_peak"] and t.loc["512", "beta"] < 0 and np.isnan(t.loc["512", "kl_star"])
    s = findings.gao_sentences(runs, curves, a)
    assert "no peak within the fit" in s[0]
    shift = findings.peak_shift_sentence(a.shift)
    assert "not estimated: the fit locates no peak at model.rm_pairs = 512" in shift and "moves" not in shift


def test_onset_sentence_counts_runs_per_rm_size_and_coefficient(sweep3):
    runs, curves = sweep3
    a = overopt.analyse(runs, curves)
    logged = runs.dropna(subset=[overopt.ONSET])
    assert len(logged) and len(logged) < len(runs)  # some runs over-optimise, some never do
    table = overopt.onset_summary(a.onsets).set_index(["level", "coef"])
    for (rm, coef), g in runs.groupby(["model.rm_pairs", "kl.coef"]):
        r = table.loc[(str(rm), f"{coef:g}")]
        hit = g[overopt.ONSET].dropna()
        assert r["n_runs"] == len(g) and r["n_onset"] == len(hit)
        if len(hit):
            assert r["median_kl"] == pytest.approx(np.median(np.maximum(hit, 0)))
    s = findings.onset_sentence(a)
    assert s.startswith(f"{len(logged)} of {len(runs)} runs show an over-optimisation onset")
    r0 = table.loc[("512", "0")]
    assert f"model.rm_pairs = 512: kl.coef = 0: {int(r0['n_onset'])} of {int(r0['n_runs'])}" in s
    assert "kl.coef = 0.2: 0 of 3" in s  # KL 4 never gets past the 512 peak
    # the onset point is the run's gold at the onset step, placed at d = sqrt(onset KL)
    o = a.onsets[a.onsets["onset"]].iloc[0]
    c = curves[(curves["run_id"] == o["run_id"]) & (curves["step"] == o["onset_step"])]
    assert o["onset_gold"] == pytest.approx(c.loc[c["metric"] == "eval/gold", "value"].item())
    assert o["onset_d"] == pytest.approx(np.sqrt(c.loc[c["metric"] == "eval/kl", "value"].item()))
    # without the onset's own curve, the step is found from the KL it logged
    no_curve = overopt.onset_table(runs, curves[curves["metric"] != overopt.ONSET])
    pd.testing.assert_frame_equal(no_curve, a.onsets)


def test_no_onset_and_no_kl_curves(sweep3):
    runs, curves = sweep3
    quiet = runs.drop(columns=[overopt.ONSET])
    s = findings.onset_sentence(overopt.analyse(quiet, curves))
    assert s.startswith("No run shows an over-optimisation onset") and "predate" in s
    no_kl = curves[curves["metric"] != "eval/kl"]
    assert findings.gao_sentences(runs, no_kl) == []
    factors = ["model.rm_pairs", "kl.coef"]
    table = stats.summarise_factors(runs, factors, ["eval/gold", "eval/kl"])
    assert not any("Gao" in x for x in findings.findings(runs, no_kl, factors, table, None))
    full = findings.findings(runs, curves, factors, table, None)
    assert sum("Gao et al. (2022) fit" in x for x in full) == 2 and any(
        x.startswith("Peak shift") for x in full
    )


def test_a_peak_is_located_only_with_beta_clear_of_zero_and_within_reach():
    iv = lambda lo, hi: stats.Interval((lo + hi) / 2, lo, hi, 5)  # noqa: E731
    assert overopt.unlocated(True, iv(0.1, 0.3), 5, 9.0, 4.0) == ""  # KL* 9 within 10x the largest KL 4
    assert "no peak within the fit" in overopt.unlocated(False, iv(-0.3, -0.1), 5, np.nan, 4.0)
    assert "interval includes 0" in overopt.unlocated(True, iv(-0.01, 0.3), 5, 9.0, 4.0)
    assert overopt.unlocated(True, iv(np.nan, np.nan), 1, 9.0, 4.0) == ""  # one seed: no interval to ask
    assert "beyond 10× the largest KL reached" in overopt.unlocated(True, iv(0.1, 0.3), 5, 41.0, 4.0)


def test_a_nearly_flat_beta_reports_no_absurd_peak():
    """beta -> 0+ sends KL* = exp(2 (alpha / beta - 1)) past 1e40: no KL* is printed, no shift estimated."""
    runs, curves = gao_sweep(true={512: (1.0, 0.02), 4096: TRUE[4096]}, seeds=5)
    a = overopt.analyse(runs, curves)
    r = a.summary.set_index("level").loc["512"]
    assert r["unlocated"] and (r["kl_star"] > 1e6 or not r["beta_low"] > 0)
    s = findings.gao_sentences(runs, curves, a)
    assert "KL* = d*²" not in s[0] and r["unlocated"] in s[0]
    assert "KL* = d*²" in s[1]  # the other level's peak is located
    assert "not estimated: the fit locates no peak at model.rm_pairs = 512" in findings.peak_shift_sentence(a.shift)
