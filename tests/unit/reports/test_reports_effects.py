"""reports.effects and the findings built on it: known effects built into synthetic frames (figure 4: test_plots_noise.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from reports import effects as E
from reports import findings, stats


def factorial(effect_a=0.3, effect_b=-0.1, inter=0.0, seeds=3, noise=0.02, seed=0, c_levels=(1, 2)):
    """Runs of an A x B x C grid: gold = 0.5 + effect_a [A=1] + effect_b [B=y] + inter [A=1][B=y] + noise.

    Each level of C also gets a random offset shared by every run at it (settings differ a lot),
    which the A and B matched differences cancel.
    """
    rng = np.random.default_rng(seed)
    offsets = {c: rng.normal(0, 0.5) for c in c_levels}
    rows = []
    for a, b, c in itertools.product((0, 1), ("x", "y"), c_levels):
        offset = offsets[c] if noise else 0.0
        for s in range(seeds):
            gold = 0.5 + effect_a * a + effect_b * (b == "y") + inter * a * (b == "y") + 0.1 * c
            rows.append({"A": a, "B": b, "C": c, "seed": s, "run_id": f"{a}{b}{c}{s}", "episodes": 320.0,
                         "eval/gold": gold + offset + rng.normal(0, noise)})  # fmt: skip
    return pd.DataFrame(rows)


def _offsets(seed, c_levels=(1, 2)):
    rng = np.random.default_rng(seed)
    return {c: rng.normal(0, 0.5) for c in c_levels}


# ---- main effects and interactions -------------------------------------------------------------------


def test_main_effect_recovers_a_built_in_effect_with_an_interval_containing_it():
    runs = factorial(effect_a=0.3)
    t = E.main_effects(runs, None, ["A", "B", "C"], "eval/gold").set_index("factor")
    a = t.loc["A"]
    assert a["effect"] == "A: 1 - 0" and a["n_matched"] == 4  # B x C cells
    assert a["estimate"] == pytest.approx(0.3, abs=0.03)
    assert a["low"] < 0.3 < a["high"] and a["high"] - a["low"] < 0.1
    assert t.loc["B", "estimate"] == pytest.approx(-0.1, abs=0.03)
    assert t.loc["C", "estimate"] == pytest.approx(0.1 + np.diff(list(_offsets(0).values()))[0], abs=0.03)


def test_main_effect_sign_follows_the_data():
    flipped = factorial(effect_a=-0.3)
    est = E.main_effects(flipped, None, ["A", "B", "C"], "eval/gold").set_index("factor").loc["A", "estimate"]
    assert est == pytest.approx(-0.3, abs=0.03)


def test_main_effect_is_the_mean_of_matched_cell_differences_by_hand():
    runs = pd.DataFrame({"A": [0, 0, 1, 1, 0, 1, 1], "B": ["x", "x", "x", "x", "y", "y", "z"],
                         "eval/gold": [1.0, 3.0, 4.0, 6.0, 10.0, 13.0, 99.0]})  # fmt: skip
    # cell x: mean at A=1 is 5, at A=0 is 2 -> 3; cell y: 13 - 10 = 3
    d = E.matched_differences(runs, "A", 0, 1, "eval/gold", ["A", "B"])
    assert d.to_dict() == {"x": 3.0, "y": 3.0}  # cell z has only A=1: not matched
    t = E.main_effects(runs, None, ["A", "B"], "eval/gold")
    row = t[t["factor"] == "A"].iloc[0]
    # 7 runs in 5 cells: 2 error df for the fixed-effects interval (more than the matched cells' 1)
    assert row["estimate"] == 3.0 and row["n_matched"] == 2 and row["over"] == E.FIXED and row["df"] == 2
    assert "needs 1 more run to call it" in row["note"]


def test_interaction_is_half_the_difference_of_effects():
    runs = factorial(effect_a=0.3, effect_b=-0.1, inter=0.2, noise=0.0)
    main = E.main_effects(runs, None, ["A", "B", "C"], "eval/gold")
    # with an interaction the main effect of A averages its effect at B = x (0.3) and y (0.5)
    assert main.set_index("factor").loc["A", "estimate"] == pytest.approx(0.4)
    inter = E.interactions(runs, None, ["A", "B", "C"], "eval/gold", main)
    ab = inter[inter["factor"].isin(["A x B", "B x A"])].iloc[0]
    assert ab["estimate"] == pytest.approx(0.1) and ab["n_matched"] == 2  # ((0.5) - (0.3)) / 2
    ac = inter[inter["factor"].isin(["A x C", "C x A"])].iloc[0]
    assert ac["estimate"] == pytest.approx(0.0, abs=1e-12)


def test_more_than_two_levels_each_against_the_first_and_advantage_as_one_factor():
    rows = []
    for adv, shift in (("sequence/none", 0.0), ("sequence/rloo", 0.2), ("token", -0.1)):
        for kl in (0.01, 0.1):
            for s in range(2):
                rows.append({"advantage": adv, "kl.coef": kl, "seed": s, "eval/gold": 1 + shift + kl})
    t = E.main_effects(pd.DataFrame(rows), None, ["kl.coef", "advantage"], "eval/gold")
    adv = t[t["factor"] == "advantage"].set_index("level_b")
    assert list(adv.index) == ["sequence/rloo", "token"]
    assert adv.loc["sequence/rloo", "estimate"] == pytest.approx(0.2)
    assert adv.loc["token", "estimate"] == pytest.approx(-0.1)
    assert (adv["level_a"] == "sequence/none").all() and (adv["n_matched"] == 2).all()


# ---- matched episodes ---------------------------------------------------------------------------------


def _budget_sweep(iterations_by_batch=None):
    """Batch 16 vs 32 at equal iterations (different budgets) x clip, with eval curves."""
    runs, curves = [], []
    for bs, clip, s in itertools.product((16, 32), (0.1, 0.2), range(2)):
        iters = (iterations_by_batch or {}).get(bs, 10)
        rid = f"b{bs}c{clip}s{s}"
        runs.append({"run_id": rid, "rollout.batch_size": bs, "ppo.clip_eps": clip, "seed": s,
                     "episodes": float(bs * iters), "eval/gold": 0.001 * bs * iters})  # fmt: skip
        for t in range(0, iters + 1, 5):  # gold = 0.001 x episodes + 0.05 at batch 32
            curves.append({"run_id": rid, "step": t, "episodes": float(bs * t), "metric": "eval/gold",
                           "value": 0.001 * bs * t + (0.05 if bs == 32 else 0.0)})  # fmt: skip
    return pd.DataFrame(runs), pd.DataFrame(curves)


def test_budget_detected_from_episodes_not_the_factor_name():
    runs, _ = _budget_sweep()
    assert E.budget_differs(runs, "rollout.batch_size", ["rollout.batch_size", "ppo.clip_eps"])
    assert not E.budget_differs(runs, "ppo.clip_eps", ["rollout.batch_size", "ppo.clip_eps"])
    equal, _ = _budget_sweep({16: 20, 32: 10})  # iterations scaled: same episodes
    assert not E.budget_differs(equal, "rollout.batch_size", ["rollout.batch_size", "ppo.clip_eps"])


def test_at_episodes_interpolates_each_curve():
    _, curves = _budget_sweep()
    v = E.at_episodes(curves, "eval/gold", 120.0)
    assert v["b16c0.1s0"] == pytest.approx(0.12)  # between 80 and 160 episodes, linear
    assert v["b32c0.1s0"] == pytest.approx(0.12 + 0.05)
    assert math.isnan(E.at_episodes(curves, "eval/gold", 200.0)["b16c0.1s0"])  # batch 16 stops at 160
    assert E.matched_episodes(curves, "eval/gold") == 160.0


def test_budget_factor_is_compared_at_matched_episodes():
    runs, curves = _budget_sweep()
    factors = ["rollout.batch_size", "ppo.clip_eps"]
    t = E.main_effects(runs, curves, factors, "eval/gold").set_index("factor")
    # final values would give 0.32 - 0.16 = 0.16; at 160 episodes only the built-in 0.05 remains
    assert t.loc["rollout.batch_size", "at"] == "at 160 episodes"
    assert t.loc["rollout.batch_size", "estimate"] == pytest.approx(0.05)
    assert t.loc["ppo.clip_eps", "at"] == "final"
    table = stats.summarise_factors(runs, factors, ["eval/gold"])
    s = findings.factor_level(runs, curves, factors, table, "rollout.batch_size")
    assert "at 160 episodes" in s and "sample budgets differ" in s
    no_curves = findings.factor_level(runs, curves.iloc[0:0], factors, table, "rollout.batch_size")
    assert "sample budgets differ (final episodes 16: 160, 32: 320)" in no_curves


# ---- refusals ------------------------------------------------------------------------------------------


def test_effect_from_too_few_matched_cells_is_not_called():
    runs = factorial(effect_a=0.3, c_levels=(1,), seeds=1)  # only 2 matched cells for A, no within-cell df
    t = E.effects_table(runs, None, ["A", "B", "C"])
    out = findings.effect_sentences(t)
    a = next(s for s in out if s.startswith("Main effect A: 1 - 0"))
    assert "over 2 matched cells, not called: needs 2 more matched cells" in a
    assert "excludes 0" not in a
    four = findings.effect_sentences(E.effects_table(factorial(effect_a=0.3), None, ["A", "B", "C"]))
    assert any(s.startswith("Main effect A: 1 - 0") and "excludes 0, so it is positive" in s for s in four)
    # the same 2 matched cells with 3 seeds each: the seeds give the fixed-effects interval 8 error df
    seeded = findings.effect_sentences(E.effects_table(factorial(effect_a=0.3, c_levels=(1,)), None, ["A", "B", "C"]))
    a3 = next(s for s in seeded if s.startswith("Main effect A: 1 - 0"))
    assert "8 error df" in a3 and "so it is positive" in a3


def test_small_samples_sentence_says_how_many_more_seeds():
    table = stats.summarise_factors(factorial(seeds=1, c_levels=(1,)), ["A"], ["eval/gold"])
    s = findings.small_samples(table)
    assert "needs 3 more seeds per level" in s  # 2 runs per level


# ---- gradient noise ------------------------------------------------------------------------------------


def _probe_curves(run_id, signal, sample_variance, batch):
    rows = []
    for t, (g, v) in enumerate(zip(signal, sample_variance, strict=True)):
        for key, val in (("grad/signal", g), ("grad/sample_variance", v), ("grad/batch_variance", v / batch)):
            rows.append(
                {"run_id": run_id, "step": 2 * t, "episodes": 2.0 * t * batch, "metric": key, "value": val}
            )
    return rows


def test_run_noise_is_a_ratio_of_means_over_probes():
    curves = pd.DataFrame(_probe_curves("r", [1.0, 3.0], [10.0, 10.0], 16)
                          + _probe_curves("u", [0.5, -1.5], [10.0, 10.0], 16))  # fmt: skip
    n = E.run_noise(curves).set_index("run_id")
    assert n.loc["r", E.NOISE_SCALE] == pytest.approx(10.0 / 2.0)  # not the mean of 10 and 3.33
    assert n.loc["r", E.N_PROBES] == 2 and n.loc["r", E.BATCH_VAR] == pytest.approx(10 / 16)
    assert math.isnan(n.loc["u", E.NOISE_SCALE])  # mean signal -0.5 <= 0: unresolved


def _noise_runs(seed=0, slope=-1.0):
    """Runs with per-run probe means: sequence has signal ~2, token signal around 0."""
    rng = np.random.default_rng(seed)
    rows = []
    for adv, bs, s in itertools.product(("sequence/rloo", "token"), (16, 32, 64), range(3)):
        sv = (40.0 if adv == "sequence/rloo" else 120.0) * np.exp(rng.normal(0, 0.1))
        sig = rng.normal(2.0, 0.2) if adv == "sequence/rloo" else rng.normal(0.0, 0.5)
        bv = sv * 16 ** (-1 - slope) * bs**slope * np.exp(rng.normal(0, 0.05))
        rows.append({"run_id": f"{adv}{bs}{s}", "advantage": adv, "rollout.batch_size": bs, "seed": s,
                     E.SIGNAL: sig, E.SAMPLE_VAR: sv, E.BATCH_VAR: bv})  # fmt: skip
    return pd.DataFrame(rows)


def test_noise_scale_per_level_and_the_unresolved_path():
    runs = _noise_runs()
    t = E.noise_scale_by(runs, "advantage").set_index("level")
    seq = runs[runs["advantage"] == "sequence/rloo"]
    assert t.loc["sequence/rloo", "resolved"]
    assert t.loc["sequence/rloo", "point"] == pytest.approx(seq[E.SAMPLE_VAR].mean() / seq[E.SIGNAL].mean())
    assert not t.loc["token", "resolved"] and math.isnan(t.loc["token", "point"])
    s = findings.noise_scale(runs)
    tok = s.split("token:")[1]
    assert tok.lstrip().startswith("unresolved") and "completions" not in tok
    assert "sequence/rloo: " in s and "completions" in s.split("token:")[0]


def test_log_log_slope_of_batch_variance():
    fits = E.batch_variance_slopes(_noise_runs(), "advantage").set_index("level")
    for lv in ("sequence/rloo", "token"):
        assert fits.loc[lv, "slope"] == pytest.approx(-1.0, abs=0.08)
        assert fits.loc[lv, "low"] < -1 < fits.loc[lv, "high"] and fits.loc[lv, "n_sizes"] == 3
    assert "consistent with -1" in findings.batch_variance_scaling(_noise_runs())
    flat = findings.batch_variance_scaling(_noise_runs(slope=-0.5))
    assert "flatter than -1" in flat and "consistent" not in flat


def test_baseline_is_compared_on_the_scale_free_noise_scale():
    """Whitening divides each baseline's advantages by a different std: here RLOO's tr(Sigma) reads 2x
    baseline none's (its advantages were scaled up) while its signal reads 4x, so its B_simple is half.
    The finding compares B_simple (scale-free), never tr(Sigma)."""
    rows = []
    for adv, var, sig in (("sequence/none", 1.0, 1.0), ("sequence/rloo", 2.0, 4.0)):
        for kl, s in itertools.product((0.0, 0.01, 0.05, 0.1), range(2)):
            v = var * (10 + kl * 100 + s)
            rows.append({"advantage": adv, "kl.coef": kl, "seed": s, E.SAMPLE_VAR: v, E.SIGNAL: sig,
                         E.NOISE_SCALE: v / sig})  # fmt: skip
    runs = pd.DataFrame(rows)
    (s,) = findings.baseline_variance(runs, ["kl.coef", "advantage"])
    iv, cells, over = E.variance_ratio(runs, "advantage", "sequence/none", "sequence/rloo", ["kl.coef", "advantage"],
                                       value=E.NOISE_SCALE)
    assert iv.point == pytest.approx(0.5) and cells == 4 and over == E.CELLS
    assert s.startswith("Baseline: sequence/rloo against sequence/none: noise scale B_simple") and s.endswith("lower.")
    assert "scale-free" in s and "ratio 0.50" in s
    raw, _, _ = E.variance_ratio(runs, "advantage", "sequence/none", "sequence/rloo", ["kl.coef", "advantage"])
    assert raw.point == pytest.approx(2.0)  # what a tr(Sigma) comparison would have read: "higher"
    (few,) = findings.baseline_variance(runs[runs["kl.coef"] < 0.05], ["kl.coef", "advantage"])
    assert "needs 2 more matched cells" in few


def test_gae_lambda_against_lambda_one():
    rows = []
    for lam, scale in ((0.95, 0.6), (1.0, 1.0)):
        for kl, s in itertools.product((0.0, 0.01, 0.05, 0.1), range(2)):
            rows.append({"advantage.level": "token", "advantage.lam": lam, "kl.coef": kl, "seed": s,
                         E.SAMPLE_VAR: scale * (10 + kl * 100 + s)})  # fmt: skip
    s = findings.gae_lambda_variance(pd.DataFrame(rows), ["kl.coef", "advantage.lam"])
    assert s.startswith("GAE: lambda = 0.95 against lambda = 1") and "0.60" in s and s.endswith("lower.")



def _one_factor(seeds: int, gap: float = 0.1, noise: float = 0.02, seed: int = 0) -> pd.DataFrame:
    """A one-factor sweep (a zip group: one cell per level): gold differs by ``gap`` between the levels."""
    rng = np.random.default_rng(seed)
    rows = [{"advantage": adv, "seed": s, "run_id": f"{adv}{s}", "episodes": 320.0,
             "eval/gold": 0.5 + gap * (adv == "token") + rng.normal(0, noise),
             E.SAMPLE_VAR: (1.0 if adv == "token" else 2.0) * np.exp(rng.normal(0, 0.1))}
            for adv in ("sequence/none", "token") for s in range(seeds)]  # fmt: skip
    return pd.DataFrame(rows)


def test_one_cell_per_level_compares_over_seeds_with_welch():
    runs = _one_factor(seeds=5)
    t = E.main_effects(runs, None, ["advantage"], "eval/gold").iloc[0]
    token, none = runs["advantage"] == "token", runs["advantage"] == "sequence/none"
    iv = stats.welch_interval(runs.loc[none, "eval/gold"], runs.loc[token, "eval/gold"])
    assert t["over"] == E.SEEDS and t["n_runs"] == 5 and t["n_matched"] == 1
    assert t["estimate"] == pytest.approx(0.1, abs=0.03) and (t["low"], t["high"]) == pytest.approx((iv.low, iv.high))
    assert t["low"] > 0
    (s,) = findings.effect_sentences(E.effects_table(runs, None, ["advantage"], metrics=("eval/gold",)))
    assert "over 5 runs per level (one cell)" in s and "excludes 0, so it is positive" in s
    (few,) = findings.effect_sentences(E.effects_table(_one_factor(3), None, ["advantage"], metrics=("eval/gold",)))
    assert "not called: needs 2 more seeds per level" in few
    ratio, cells, over = E.variance_ratio(runs, "advantage", "sequence/none", "token", ["advantage"])
    assert over == E.SEEDS and ratio.point == pytest.approx(0.5, rel=0.15) and ratio.high < 1


def test_gae_lambda_inside_the_merged_advantage_factor():
    rows = []
    rng = np.random.default_rng(1)
    for adv, scale in (("token/lam=0.95", 0.6), ("token/lam=1", 1.0), ("sequence/rloo", 2.0)):
        for s in range(5):
            rows.append({"advantage": adv, "seed": s, E.SAMPLE_VAR: scale * np.exp(rng.normal(0, 0.05))})
    s = findings.gae_lambda_variance(pd.DataFrame(rows), ["advantage"])
    assert s.startswith("GAE: lambda = 0.95 against lambda = 1") and "0.60" in s and s.endswith("lower.")


def test_kl_driver_says_when_the_budgets_differ():
    rows = [{"rollout.batch_size": bs, "seed": s, "episodes": 20.0 * bs, "eval/kl": 1.0 + bs / 16 + 0.01 * s}
            for bs in (16, 128) for s in range(5)]  # fmt: skip
    runs = pd.DataFrame(rows)
    table = stats.summarise_factors(runs, ["rollout.batch_size"], ["eval/kl"])
    assert "sample budgets differ" in findings.kl_driver(table, ["rollout.batch_size"], runs)
    same = runs.assign(episodes=2560.0)
    assert "budgets" not in findings.kl_driver(table, ["rollout.batch_size"], same)


def test_axes_that_move_together_are_one_factor():
    from reports.collect import Sweep

    rows = [{"rollout.batch_size": bs, "train.iterations": 1280 // bs, "kl.coef": kl, "advantage.level": "token",
             "advantage": "token", "seed": s} for bs in (32, 64) for kl in (0.0, 0.2) for s in range(2)]  # fmt: skip
    sweep = Sweep("x", None, ["kl.coef", "rollout.batch_size", "train.iterations"], pd.DataFrame(rows))
    assert sweep.moves_with == {"train.iterations": "rollout.batch_size"}
    assert sweep.factors == ["kl.coef", "rollout.batch_size"]
    crossed = pd.DataFrame([{**r, "train.iterations": it} for r in rows for it in (20, 40)])
    assert Sweep("x", None, ["kl.coef", "rollout.batch_size", "train.iterations"], crossed).moves_with == {}


# ---- budgets and lost runs in the tables ----------------------------------------------------------------


def test_the_level_table_compares_a_budget_factor_at_matched_episodes():
    """final_by_factor: batch 16 vs 32 at equal iterations reads 0.16 vs 0.32 from final values (the budget
    alone); the level table compares at 160 episodes (0.16 vs 0.21) and says so, the figure caption too."""
    from reports import render

    runs, curves = _budget_sweep()
    factors = ["rollout.batch_size", "ppo.clip_eps"]
    t = E.level_table(runs, curves, factors, ["eval/gold"])
    bs = t[t["factor"] == "rollout.batch_size"].set_index("level")
    assert (bs["at"] == "at 160 episodes").all()
    assert bs.loc[16, "iqm"] == pytest.approx(0.16) and bs.loc[32, "iqm"] == pytest.approx(0.21)
    assert (t.loc[t["factor"] == "ppo.clip_eps", "at"] == "final").all()
    wide = render.wide_table(t, metrics=["eval/gold"])
    assert list(wide.loc[wide["factor"] == "rollout.batch_size", "compared at"]) == ["at 160 episodes"] * 2
    fig = type("F", (), {"stem": "fig2_final_reward", "meta": {}, "title": ""})()
    caps = render.captions([fig], runs, factors)
    assert "Sample budgets differ between the levels of rollout.batch_size" in caps["fig2_final_reward"][1]


def _lossy(drop_worst: int = 0, drop_cell: bool = False):
    """2 x 2 (A x B), 10 seeds a cell, no effect of A; optionally the ``drop_worst`` worst runs at A = 1
    fail (lost), or the whole cell A = 1, B = y fails."""
    rng = np.random.default_rng(4)
    rows = [{"A": a, "B": b, "seed": s, "run_id": f"{a}{b}{s}", "cell": f"A={a}, B={b}",
             "eval/gold": (0.3 if b == "y" else 0.0) + rng.normal(0, 0.1)}
            for a, b in itertools.product((0, 1), ("x", "y")) for s in range(10)]  # fmt: skip
    runs = pd.DataFrame(rows)
    lost = runs.iloc[0:0]
    if drop_worst:
        worst = runs[runs["A"] == 1].nsmallest(drop_worst, "eval/gold").index
        lost, runs = runs.loc[worst], runs.drop(worst)
    if drop_cell:
        gone = (runs["A"] == 1) & (runs["B"] == "y")
        lost, runs = runs[gone], runs[~gone]
    return runs.reset_index(drop=True), lost.drop(columns=["eval/gold"]).assign(status="FAILED")


def test_failed_runs_are_counted_per_cell_and_level_and_unequal_losses_refuse_the_call():
    from reports import attrition, render

    runs, lost = _lossy(drop_worst=8)
    cells = attrition.cell_counts(runs, lost)
    assert cells["planned"].eq(10).all() and cells["failed"].sum() == 8 and cells["missing"].sum() == 0
    levels = attrition.level_counts(runs, lost, "A")
    assert levels.loc["0", "failed"] == 0 and levels.loc["1", "failed"] == 8 and levels.loc["1", "finished"] == 12
    why = attrition.unequal_loss(runs, lost, "A")
    assert why.startswith("not called: the levels lost different shares") and "1 lost 8 of 20" in why
    assert attrition.unequal_loss(runs, lost, "B") is None or "B" not in why
    table = E.level_table(runs, None, ["A", "B"], ["eval/gold"])
    effects = E.effects_table(runs, None, ["A", "B"], metrics=("eval/gold",))
    refused = {"A": why}
    a = next(s for s in findings.effect_sentences(effects, refused=refused) if s.startswith("Main effect A"))
    assert "not called: the levels lost different shares" in a and "positive" not in a
    # the survivors at A = 1 are its best runs: a positive estimate for an effect that is 0 by construction
    assert effects.set_index("factor").loc["A", "estimate"] > 0.04
    level = findings.factor_level(runs, pd.DataFrame(), ["A", "B"], table, "A", why)
    assert "lost different shares" in level
    cov = findings.coverage(runs, {"FAILED": 8}, lost)
    assert "Runs lost per cell (A=1, B=" in cov and "failed, 0 missing of 10" in cov
    wide = render.wide_table(table, metrics=["eval/gold"], counts={"A": levels})
    assert list(wide.loc[wide["factor"] == "A", "failed"]) == [0, 8]
    shown = render.effects_display(attrition.with_losses(effects, runs, lost)).set_index("effect")
    assert shown.loc["A: 1 - 0", "runs lost"] == "0: 0 of 20, 1: 8 of 20"
    # an attempt that failed and then finished on a resume is not a loss
    again = lost.iloc[:1].assign(status="KILLED")
    assert attrition.cell_counts(runs, again.assign(seed=runs["seed"].iloc[0], cell=runs["cell"].iloc[0]))[
        "failed"].sum() == 0
    # a seed that never started is missing: one cell with 9 runs of the 10 the others hold
    short = runs.drop(runs[(runs["A"] == 0) & (runs["B"] == "x")].index[:1])
    assert attrition.cell_counts(short, lost).loc["A=0, B=x", "missing"] == 1


def test_a_level_that_lost_a_whole_cell_is_compared_on_matched_cells_only():
    runs, lost = _lossy(drop_cell=True)
    table = E.level_table(runs, None, ["A", "B"], ["eval/gold"])
    assert table.loc[table["factor"] == "A", "unmatched"].all()
    s = findings.factor_level(runs, pd.DataFrame(), ["A", "B"], table, "A")
    assert "only the 1 matched cell settings are compared (10 runs left out)" in s
