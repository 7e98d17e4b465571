"""reports.stats against hand-computed values on small arrays."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import trim_mean

from reports import stats
from reports.stats import Interval


@pytest.fixture(autouse=True)
def _no_warnings():
    """Small samples must not spam RuntimeWarnings (mean of empty slice, degrees of freedom ...)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---- IQM and summary ------------------------------------------------------------------------------


def test_iqm_of_one_to_eight_is_the_mean_of_three_to_six():
    # 8 values: 25% = 2 trimmed from each end -> mean(3, 4, 5, 6) = 4.5
    assert stats.iqm(np.arange(1, 9)) == 4.5
    assert stats.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5  # order does not matter


def test_iqm_trims_the_outlier():
    # 5 values: int(1.25) = 1 trimmed per end -> mean(2, 3, 4) = 3, the 100 is gone
    assert stats.iqm([1, 2, 3, 4, 100]) == 3.0
    # fewer than 4 values: nothing trimmed -> plain mean
    assert stats.iqm([5, 1, 3]) == 3.0


def test_iqm_drops_nan_and_empty_is_nan():
    assert stats.iqm([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(stats.iqm([]))


def test_iqm_along_an_axis():
    x = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [2, 2, 2, 2, 2, 2, 2, 10]], dtype=float)
    np.testing.assert_allclose(stats.iqm(x, axis=1), [4.5, 2.0])


def test_summary_by_hand():
    s = stats.summary([1, 2, 3, 4])
    assert s["n"] == 4 and s["mean"] == 2.5 and s["median"] == 2.5
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, ddof=1
    assert s["iqm"] == 2.5  # 1 trimmed per end -> mean(2, 3)


def test_summary_of_one_and_none():
    one = stats.summary([7.0])
    assert one["n"] == 1 and one["mean"] == 7.0 and math.isnan(one["std"])
    none = stats.summary([])
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["iqm"])


# ---- bootstrap intervals ----------------------------------------------------------------------------


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    true = 1.0
    hits = 0
    trials = 200
    for k in range(trials):
        x = rng.normal(true, 1.0, size=30)
        ci = stats.bootstrap_ci(x, statistic=np.mean, n_resamples=1000, seed=k)
        assert ci.low <= ci.point <= ci.high
        hits += ci.low <= true <= ci.high
    # percentile bootstrap at n=30 under-covers a little; 95% nominal -> at least 88% observed
    assert 0.88 <= hits / trials <= 0.99


def test_bootstrap_ci_of_iqm_covers_the_centre_of_a_symmetric_distribution():
    rng = np.random.default_rng(7)
    hits, trials = 0, 100
    for k in range(trials):
        x = rng.normal(2.0, 0.5, size=24)  # symmetric: population IQM = mean = 2
        ci = stats.bootstrap_ci(x, n_resamples=1000, seed=k)
        assert ci.point == pytest.approx(trim_mean(x, 0.25))
        hits += ci.low <= 2.0 <= ci.high
    assert 0.85 <= hits / trials <= 1.0


def test_bootstrap_is_reproducible_with_the_fixed_seed():
    x = [0.1, 0.5, 0.2, 0.9, 0.4, 0.3]
    assert stats.bootstrap_ci(x) == stats.bootstrap_ci(x)
    assert stats.bootstrap_ci(x, seed=1) != stats.bootstrap_ci(x, seed=2)


def test_bootstrap_small_samples_degenerate_gracefully():
    one = stats.bootstrap_ci([3.0])
    assert (one.point, one.low, one.high, one.n) == (3.0, 3.0, 3.0, 1)
    assert one.degenerate and "n=1" in one.note
    two = stats.bootstrap_ci([1.0, 2.0])
    assert 1.0 <= two.low <= two.point == 1.5 <= two.high <= 2.0
    assert "n=2" in two.note
    same = stats.bootstrap_ci([4.0, 4.0, 4.0])
    assert same.low == same.high == 4.0 and same.degenerate
    empty = stats.bootstrap_ci([])
    assert empty.n == 0 and math.isnan(empty.point)


def test_stratified_bootstrap_keeps_strata_apart():
    strata = [np.array([1.0, 2.0, 3.0]), np.array([10.0, 11.0, 12.0])]
    strat = stats.bootstrap_ci(strata, statistic=np.mean)
    pooled = stats.bootstrap_ci(np.concatenate(strata), statistic=np.mean)
    assert strat.point == pooled.point == 6.5
    # resampling within strata never changes the 50/50 mix of the two groups: a narrower interval
    assert strat.high - strat.low < pooled.high - pooled.low
    assert strat.note == ""


def test_stratum_of_one_falls_back_to_a_pooled_bootstrap():
    ci = stats.bootstrap_ci([[1.0, 2.0, 3.0], [4.0]])
    assert ci.n == 4 and "pooled" in ci.note and ci.low < ci.high


def test_curve_band_is_pointwise_iqm_with_a_band():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(8, 5)) + np.arange(5)
    point, low, high = stats.curve_band(v)
    np.testing.assert_allclose(point, trim_mean(v, 0.25, axis=0))
    assert np.all(low <= point) and np.all(point <= high) and np.all(high - low > 0)
    p1, l1, h1 = stats.curve_band(v[:1])
    np.testing.assert_array_equal(p1, l1)
    np.testing.assert_array_equal(p1, h1)


def test_yuen_interval_by_hand():
    # [1, 2, 3, 4, 100]: g = 1, h = 3; trimmed mean 3; winsorised [2, 2, 3, 4, 4], var = 4 / 4 = 1;
    # se = sqrt((n - 1) var / (h (h - 1))) = sqrt(4 / 6); t(2 df, 0.975) = 4.302653
    iv = stats.interval([100, 1, 2, 3, 4])
    half = 4.302652730 * math.sqrt(4 / 6)
    assert iv.point == 3.0 and iv.n == 5
    assert iv.low == pytest.approx(3 - half) and iv.high == pytest.approx(3 + half)


def test_mean_interval_is_students_t():
    from scipy import stats as st

    x = np.array([0.3, 0.1, 0.7, 0.4, 0.9, 0.2])
    lo, hi = st.t.interval(0.95, x.size - 1, loc=x.mean(), scale=st.sem(x))
    iv = stats.mean_interval(x)
    assert iv.point == pytest.approx(x.mean()) and (iv.low, iv.high) == pytest.approx((lo, hi))


def test_interval_small_and_degenerate_samples():
    assert math.isnan(stats.interval([]).point)
    one = stats.interval([2.0])
    assert one.degenerate and "n=1" in one.note
    assert stats.interval([4.0, 4.0, 4.0]).degenerate
    flat = stats.interval([1.0, 5.0, 5.0, 5.0, 9.0])  # winsorised to five 5s: no spread left
    assert flat.degenerate and "winsorised variance is 0" in flat.note


def test_slope_interval_by_hand():
    fit = stats.slope_interval([0, 1, 2, 3], [1, 3, 5, 7.5])
    from scipy import stats as st

    ref = st.linregress([0, 1, 2, 3], [1, 3, 5, 7.5])
    half = st.t.ppf(0.975, 2) * ref.stderr
    assert fit.point == pytest.approx(ref.slope) and fit.high == pytest.approx(ref.slope + half)
    assert math.isnan(stats.slope_interval([1, 1, 1], [1, 2, 3]).point)


def test_ratio_interval_resolved_and_not():
    iv, ok = stats.ratio_interval([4.0, 4.6, 3.5, 4.1], [1.0, 1.1, 0.9, 1.05])
    assert ok and iv.point == pytest.approx(16.2 / 4.05) and iv.low < iv.point < iv.high
    # a denominator whose mean is not resolved from 0: no ratio is quoted
    iv, ok = stats.ratio_interval([4.0, 4.4, 3.6, 4.2], [0.5, -0.4, 0.3, -0.2])
    assert not ok and math.isnan(iv.point) and math.isnan(iv.low)


def test_sorted_levels():
    assert stats.sorted_levels(pd.Series([0.2, 0.1, None, 0.2])) == [0.1, 0.2]
    assert stats.sorted_levels(["b", 2, "a", 1.5]) == [1.5, 2, "a", "b"]


def test_finite_rows():
    df = pd.DataFrame({"x": [1.0, np.nan, np.inf, 2.0], "y": ["a", "b", "c", "d"]})
    assert stats.finite_rows(df, "x")["y"].tolist() == ["a", "d"]
    assert stats.finite_rows(df, "missing").empty


def test_interval_format_and_overlap():
    a = Interval(0.5123, 0.431, 0.598, 5)
    assert a.fmt() == "0.512 [0.431, 0.598]"
    assert Interval(1234.5, 1100.0, 1300.0, 5).fmt() == "1234 [1100, 1300]"
    assert a.overlaps(Interval(0.59, 0.55, 0.7, 5))
    assert not a.overlaps(Interval(0.7, 0.6, 0.8, 5))


# ---- probability of improvement ------------------------------------------------------------------------


def test_probability_of_improvement_extremes():
    assert stats.probability_of_improvement([5, 6, 7], [1, 2, 3]) == 1.0
    assert stats.probability_of_improvement([1, 2, 3], [5, 6, 7]) == 0.0
    assert stats.probability_of_improvement([1, 2, 3], [1, 2, 3]) == 0.5


def test_probability_of_improvement_by_hand():
    # x=1 beats none of y=[2]; 3 and 4 beat it -> 2 / 3
    assert stats.probability_of_improvement([1, 3, 4], [2]) == pytest.approx(2 / 3)
    # pairs (2,2) tie = 0.5, (2,1) = 1, (3,2) = 1, (3,1) = 1 -> 3.5 / 4
    assert stats.probability_of_improvement([2, 3], [2, 1]) == pytest.approx(0.875)
    assert math.isnan(stats.probability_of_improvement([], [1]))


def test_stratified_poi_averages_strata():
    p, k = stats.stratified_poi([([2.0], [1.0]), ([1.0], [2.0]), ([5.0, 6.0], [1.0, 2.0])])
    assert k == 3 and p == pytest.approx((1 + 0 + 1) / 3)
    assert stats.stratified_poi([])[1] == 0


# ---- frames ---------------------------------------------------------------------------------------------


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "lr": [0.1] * 4 + [0.2] * 4,
            "cell": ["a", "a", "b", "b"] * 2,
            "gold": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, float("nan")],
        }
    )


def test_summarise_by_levels_by_hand():
    t = stats.summarise_by(_frame(), "lr", "gold")
    assert t["level"].tolist() == [0.1, 0.2]
    assert t["n"].tolist() == [4, 3]  # the NaN row is dropped
    assert t["iqm"].tolist() == [2.5, 6.0]
    assert t["mean"].tolist() == [2.5, 6.0]
    assert (t["ci_low"] <= t["iqm"]).all() and (t["iqm"] <= t["ci_high"]).all()


def test_summarise_by_uses_the_yuen_interval_by_hand():
    t = stats.summarise_by(_frame(), "lr", "gold")
    # level 0.1: [1, 2, 3, 4]: g = 1, h = 2, winsorised [2, 2, 3, 3] (var 1/3),
    # se = sqrt(3 * (1/3) / (2 * 1)) = sqrt(1/2), t(1 df, 0.975) = 12.706
    half = 12.706204736 * math.sqrt(0.5)
    assert t.loc[0, "ci_low"] == pytest.approx(2.5 - half) and t.loc[0, "ci_high"] == pytest.approx(
        2.5 + half
    )
    assert "1 df" in t.loc[0, "note"]


def test_summarise_factors_long_table():
    df = _frame().assign(eps=[1, 2] * 4, kl=np.arange(8.0))
    t = stats.summarise_factors(df, ["lr", "eps"], ["gold", "kl", "missing"])
    assert set(t["metric"]) == {"gold", "kl"}
    assert len(t) == 2 * 2 * 2  # 2 factors x 2 levels x 2 metrics
    row = t[(t["factor"] == "eps") & (t["level"] == 1) & (t["metric"] == "kl")].iloc[0]
    assert row["iqm"] == trim_mean([0, 2, 4, 6], 0.25)


def test_poi_table_and_matrix_stratified():
    df = pd.DataFrame(
        {
            "adv": ["seq", "seq", "tok", "tok"] * 2,
            "cell": ["a"] * 4 + ["b"] * 4,
            "gold": [5, 6, 1, 2, 50, 60, 10, 20],
        }
    )
    t = stats.poi_table(df, "adv", "gold", strata=["cell"])
    row = t[(t["a"] == "seq") & (t["b"] == "tok")].iloc[0]
    assert row["poi"] == 1.0 and row["n_strata"] == 2 and not row["pooled"]
    m = stats.poi_matrix(t)
    assert m.loc["tok", "seq"] == 0.0 and math.isnan(m.loc["seq", "seq"])


def test_matched_keeps_settings_run_by_every_level():
    df = pd.DataFrame(
        {
            "impl": ["custom", "trl", "custom", "custom"],
            "cell": ["kl=0.1, impl=custom", "kl=0.1, impl=trl", "kl=0.2, impl=custom", "kl=0.2, impl=custom"],
        }
    )
    m = stats.matched(df, "impl", ["custom", "trl"])
    assert m.index.tolist() == [0, 1]
    assert stats.matched(df[df["impl"] == "custom"], "impl", ["custom", "trl"]).empty


def test_fieller_interval_of_positive_quantities_stays_positive():
    # a noisy positive numerator (tr(Sigma)) whose normal-theory set reaches below 0
    x = np.array([10.0, 400.0, 30.0, 900.0, 20.0])
    y = np.array([1.0, 1.2, 0.9, 1.1, 1.0])
    iv, resolved = stats.ratio_interval(x, y)
    assert resolved and iv.low == 0.0 and iv.high > iv.point > 0
    iv2, _ = stats.ratio_interval(x - 500.0, y)  # a numerator that can be negative is not clipped
    assert iv2.low < 0
