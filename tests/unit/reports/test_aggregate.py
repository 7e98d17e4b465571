"""reports.aggregate: what the figures draw, computed from the tidy frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reports import aggregate as A
from reports import stats


def test_aggregate_curve_compares_at_equal_episodes(frames):
    _, curves = frames
    gold = curves[curves["metric"] == "eval/gold"]
    x, point, low, high, n = A.aggregate_curve(gold)
    # mixed batch sizes (16 and 32): the grid stops where the smaller batch stops
    assert x[0] == 0 and x[-1] == gold.groupby("run_id")["episodes"].max().min()
    assert n == gold["run_id"].nunique()
    assert (low <= point).all() and (point <= high).all()


def test_curve_bands_are_aggregate_curve_per_level(frames):
    _, curves = frames
    gold = A.metric_curves(curves, "eval/gold")
    bands = A.curve_bands(gold, "kl.coef")
    assert list(bands.columns) == A.BAND_COLUMNS
    split = A.split_bands(bands)
    assert [(lv, j) for lv, j, _ in split] == [(0.02, 0), (0.1, 1)]
    for level, _, band in split:
        ref = A.aggregate_curve(gold[gold["kl.coef"] == level])
        np.testing.assert_array_equal(band.x, ref.x)
        np.testing.assert_array_equal(band.point, ref.point)
        np.testing.assert_array_equal(band.low, ref.low)
        assert band.n == ref.n
    # fixed levels keep their order (colour) even when one has no runs
    only = A.curve_bands(gold[gold["impl"] == "trl"], "impl", ["custom", "trl"])
    assert set(only["order"]) == {1} and set(only["level"]) == {"trl"}
    assert A.curve_bands(gold.iloc[0:0], "kl.coef").empty


def test_interval_rows_are_summarise_by(frames):
    runs, _ = frames
    rows = A.interval_rows(runs, "advantage.level", "eval/gold")
    ref = stats.summarise_by(runs, "advantage.level", "eval/gold")
    pd.testing.assert_frame_equal(rows.drop(columns=["order"]), ref)
    assert rows["order"].tolist() == [0, 1]
    tps = A.interval_rows(runs, "impl", "perf/tokens_per_s", ["trl", "custom", "other"])
    assert tps["level"].tolist() == ["trl", "custom"] and tps["order"].tolist() == [0, 1]


def test_kl_trajectory_is_the_iqm_per_step(frames):
    runs, curves = frames
    kl, gold = A.metric_curves(curves, "eval/kl"), A.metric_curves(curves, "eval/gold")
    ids = runs.loc[runs["kl.coef"] == 0.1, "run_id"]
    path = A.kl_trajectory(kl, gold, ids)
    steps = sorted(set(kl.loc[kl["run_id"].isin(ids), "step"]))
    assert len(path) == len(steps)
    last = gold[gold["run_id"].isin(ids) & (gold["step"] == steps[-1])]["value"]
    assert path["value"].iloc[-1] == pytest.approx(stats.iqm(last))
    assert A.kl_trajectory(kl.iloc[0:0], gold, ids).empty


def test_frontier_marks_an_interior_gold_peak(sweep3):
    runs, curves = sweep3
    fr = A.Frontier.of(runs, curves, ["kl.coef"])
    assert fr.levels == [0.0, 0.05, 0.2] and len(fr.onsets) == A.logged_onsets(runs) > 0
    for (metric, _), path in fr.paths.items():
        k = int(np.argmax(path["value"]))
        assert path["peak"].sum() == int(metric == "eval/gold" and k < len(path) - 1)
    # KL 90 at kl.coef 0 is far past KL* for both RM sizes: gold peaks before the end
    assert fr.paths[("eval/gold", 0)]["peak"].any()
    assert set(fr.level_onsets(0.0)["run_id"]) <= set(fr.level_runs(0.0)["run_id"])


def test_noise_stats_reference_line_has_slope_minus_one(frames):
    runs, curves = frames
    noise = A.NoiseStats.of(runs, curves)
    assert noise.group == "advantage" and noise.has_scaling and noise.has_scales
    b, y = noise.reference()
    np.testing.assert_allclose(np.diff(np.log(y)) / np.diff(np.log(b)), -1.0)
    assert noise.levels == ["sequence/rloo", "token"]
    assert noise.slope("token") is not None and noise.slope("nope") is None


def test_sensitivity_grid_is_the_iqm_per_cell(frames):
    runs, _ = frames
    grid = A.sensitivity_grid(runs, "eval/gold", "ppo.clip_eps", "kl.coef")
    assert grid.panels == ["sequence/rloo", "token"]
    assert grid.row_levels == [0.1, 0.2] and grid.col_levels == [0.02, 0.1]
    sel = runs[(runs["advantage"] == "token") & (runs["ppo.clip_eps"] == 0.2) & (runs["kl.coef"] == 0.02)]
    assert grid.values[1][1, 0] == pytest.approx(stats.iqm(sel["eval/gold"]))
    assert grid.vmin == pytest.approx(min(np.nanmin(z) for z in grid.values))
    assert A.single_level(runs, "eval/gold", ("ppo.clip_eps", "kl.coef")) is None
    assert A.single_level(runs[runs["kl.coef"] == 0.1], "eval/gold", ("ppo.clip_eps", "kl.coef")) == "kl.coef"


def test_caption_facts(frames):
    runs, _ = frames
    assert A.frontier_hue(runs, ["ppo.clip_eps"]) == "kl.coef"
    assert A.frontier_hue(runs.drop(columns=["kl.coef"]), ["ppo.clip_eps"]) == "ppo.clip_eps"
    assert A.logged_onsets(runs) == 0
    m = A.matched_impl_runs(runs)
    assert set(m["impl"]) == {"custom", "trl"}
    assert A.varying(runs, ["kl.coef", "task", "missing"]) == ["kl.coef"]
