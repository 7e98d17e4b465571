"""Findings: plain sentences generated from a sweep's numbers (never hard-coded conclusions).

Each function looks at the tidy frames and the summary tables and says what the numbers say,
with the interval that qualifies it: which level of each factor is best and whether the
intervals separate it from the next, the factorial main effects and interactions over matched
cells, how the batch-gradient variance scales with batch size, the gradient noise scale per
advantage estimator, whether a baseline (or GAE lambda < 1) lowers the gradient variance, where
gold and proxy reward part ways (and the Gao et al. 2022 fit of gold gain against sqrt(KL) per
proxy-RM size, its peak, and the onsets the runs logged), and how custom PPO compares with TRL.

A finding never calls a difference from fewer than ``MIN_SEEDS`` runs per level, or an effect
from fewer than ``MIN_CELLS`` matched cells: it says how many more are needed instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.onset import onset_index
from harness.schema import impl_label
from reports import attrition as A
from reports import effects as E
from reports import factorial as F
from reports import overopt as O
from reports import stats
from reports.aggregate import frontier_hue, impls_present, matched_impl_runs
from reports.effects import MIN_CELLS, MIN_SEEDS
from reports.labels import ADVANTAGE, advantage_column, level_label, with_advantage
from reports.stats import Interval

# the per-level interval (stats.interval): it pools the level's cells, so the other factors' spread
# counts as noise (coverage measured 91.5-92% on such mixtures, below the nominal 95%)
IV = "95% Yuen interval"
IVS = "95% Yuen intervals (each pooled over its level's cells)"
T_IV = "95% t-interval"


def findings(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    factors: Sequence[str],
    table: pd.DataFrame,
    poi: pd.DataFrame,
    excluded: dict[str, int] | None = None,
    effects: pd.DataFrame | None = None,
    lost: pd.DataFrame | None = None,
) -> list[str]:
    """All findings, in reading order.

    ``table`` from ``stats.summarise_factors`` or ``effects.level_table``, ``poi`` from
    ``stats.poi_table``, ``effects`` from ``effects.effects_table`` (computed here when None),
    ``lost`` the child runs that did not finish (``reports.attrition``).
    """
    if effects is None:
        effects = E.effects_table(runs, curves, factors)
    noisy = E.with_noise(runs, curves)
    refused = {f: why for f in factors if (why := A.unequal_loss(runs, lost, f))}
    out = [coverage(runs, excluded or {}, lost)]
    out += [s for s in [small_samples(table, runs)] if s]
    out += [s for f in factors if (s := factor_level(runs, curves, factors, table, f, refused.get(f)))]
    out += [s for s in [kl_driver(table, factors, runs)] if s]
    out += effect_sentences(effects, refused=refused)
    out += [s for f in factors if (s := iqm_mean_disagree(table, effects, f))]
    out = reconcile(out, factors)
    out += [s for s in [batch_variance_scaling(noisy)] if s]
    out += [s for s in [noise_scale(noisy)] if s]
    out += baseline_variance(noisy, factors)
    out += [s for s in [gae_lambda_variance(noisy, factors)] if s]
    out += poi_sentences(poi)
    out += [s for s in [over_optimisation(runs, curves, factors)] if s]
    out += gao_sentences(runs, curves)
    out += [s for s in [custom_vs_trl(runs)] if s]
    out += [s for s in [multiplicity(out, effects)] if s]
    return out


def reconcile(out: list[str], factors: Sequence[str]) -> list[str]:
    """After a factor's main effect on gold reward that excludes 0, one sentence when the same findings
    said that factor's level intervals overlap: the two answer different questions."""
    done = list(out)
    for f in factors:
        overlap = any(x.startswith(f"{f} = ") and f"the {IVS} overlap, so this sweep does not separate them" in x
                      for x in out)
        hit = next((i for i, x in enumerate(done) if x.startswith(f"Main effect {f}: ") and " on gold reward " in x
                    and "excludes 0" in x), None)
        if overlap and hit is not None:
            done.insert(hit + 1, (
                f"Both hold for {f}: its level intervals pool every run of a level across the other factors' "
                "levels, so the spread between cells widens them, while the main effect compares matched cells "
                "(equal in every other factor), which removes that spread; the matched comparison is the sharper "
                "one, and the overlap does not contradict it."
            ))
    return done


def _iv(row: pd.Series) -> Interval:
    return Interval(
        float(row["iqm"]), float(row["ci_low"]), float(row["ci_high"]), int(row["n"]), str(row["note"])
    )


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def needs_more(n: int, minimum: int, what: str) -> str | None:
    """'needs 2 more seeds per level' when ``n`` < ``minimum``, else None."""
    if n >= minimum:
        return None
    k = minimum - n
    return f"needs {k} more {what if k != 1 else what.replace('seeds', 'seed').replace('cells', 'cell')}"


def coverage(runs: pd.DataFrame, excluded: dict[str, int], lost: pd.DataFrame | None = None) -> str:
    cells = runs.groupby("cell").size() if "cell" in runs and len(runs) else pd.Series([len(runs)])
    lo, hi = int(cells.min()), int(cells.max())
    seeds = f"{lo} seed{_s(lo)}" if lo == hi else f"{lo} to {hi} seeds"
    s = f"The report covers {len(runs)} finished runs in {len(cells)} sweep cells ({seeds} per cell)."
    if excluded:
        parts = [f"{n} {status.lower()}" for status, n in sorted(excluded.items())]
        s += f" Left out: {', '.join(parts)} child run{_s(sum(excluded.values()))}."
    if note := A.loss_note(runs, lost):
        s += f" Runs lost per cell ({note}); tables/runs_by_cell.md counts them."
    return s


def best_level(
    table: pd.DataFrame, factor: str, metric: str, what: str, higher: bool = True, where: str = "",
    refused: str | None = None,
) -> str | None:
    """'<factor> = <level> gives the highest <what>: IQM [interval] vs ... for the next best; verdict.'

    The verdict refuses to call a difference when either level has fewer than ``MIN_SEEDS``
    runs (it says how many more are needed); otherwise it says whether the intervals overlap.
    ``where`` qualifies the comparison (e.g. ' at 160 episodes').
    """
    t = table[(table["factor"] == factor) & (table["metric"] == metric)].dropna(subset=["iqm"])
    if len(t) < 2:
        return None
    t = t.sort_values("iqm", ascending=not higher)
    best, nxt = t.iloc[0], t.iloc[1]
    a, b = _iv(best), _iv(nxt)
    word = "highest" if higher else "lowest"
    n_min = int(t["n"].min())
    if refused:
        verdict = refused
    elif (more := needs_more(n_min, MIN_SEEDS, "seeds per level")) is not None:
        verdict = f"not called: {n_min} run{_s(n_min)} at the smallest level, {more} to call a difference"
    elif a.overlaps(b):
        verdict = f"the {IVS} overlap, so this sweep does not separate them"
    else:
        verdict = f"the {IVS} do not overlap"
    return (
        f"{factor} = {level_label(best['level'])} gives the {word} {what}{where}: IQM {a.fmt()} against "
        f"{b.fmt()} for {factor} = {level_label(nxt['level'])}, the next best; {verdict}."
    )


def factor_level(
    runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str], table: pd.DataFrame, factor: str,
    refused: str | None = None,
) -> str | None:
    """``best_level`` on gold reward, at matched episodes when ``factor`` changes the sample budget.

    Budgets are read from the runs' ``episodes`` (``effects.budget_differs``). With curves the
    levels are compared at the last episode count all runs reached; without, the sentence says
    that the budgets differ. When the levels' cells differ in the other factors (a cell lost all
    its runs), only the matched cells are compared, and the sentence says so. ``refused``: why the
    levels cannot be compared (``attrition.unequal_loss``).
    """
    metric, what = "eval/gold", "final gold reward"
    frame, at = E.comparison_frame(runs, curves, metric, factor, factors)
    kept = _matched_cells(frame, factor, factors)
    pooled = "" if kept is None else (
        f"; the levels' cells differ in the other factors, so only the {kept[1]} matched cell settings are "
        f"compared ({kept[2]} runs left out)")  # fmt: skip
    if kept is not None:
        frame = kept[0]
    if at == "final" and kept is None:
        return best_level(table, factor, metric, what, refused=refused)
    if at == "final" or at.startswith("at "):
        where = f" {at} (the last count all runs reached)" if at.startswith("at ") else ""
        t = stats.summarise_by(frame, factor, metric).assign(factor=factor, metric=metric)
        s = best_level(t, factor, metric, "gold reward" if where else what, where=where, refused=refused)
        budgets = f"; the levels' sample budgets differ, so they are compared {at}" if where else ""
        return None if s is None else s[:-1] + budgets + pooled + "."
    eps = runs.groupby(runs[factor].map(level_label))["episodes"].median()
    budgets = ", ".join(f"{k}: {v:g}" for k, v in eps.items())
    s = best_level(table, factor, metric, what, refused=refused)
    return (
        None
        if s is None
        else s[:-1] + f"; the sample budgets differ (final episodes {budgets}): unequal budgets{pooled}."
    )


def _matched_cells(frame: pd.DataFrame, factor: str, factors: Sequence[str]):
    """(frame restricted to the other-factor settings every level ran, settings kept, runs dropped), or
    None when every level ran the same settings."""
    others = [f for f in factors if f != factor and f in frame]
    df = stats.finite_rows(frame, "eval/gold")
    if not others or factor not in df or df.empty:
        return None
    key = df[others].astype(str).agg("|".join, axis=1)
    sets = key.groupby(df[factor].map(level_label)).agg(frozenset)
    if sets.nunique() <= 1:
        return None
    common = frozenset.intersection(*sets)
    keep = key.isin(common)
    return df[keep], len(common), int((~keep).sum())


def kl_driver(table: pd.DataFrame, factors: Sequence[str], runs: pd.DataFrame | None = None) -> str | None:
    """The factor whose levels spread final KL the most (largest minus smallest IQM).

    When that factor's levels saw different numbers of episodes (``runs`` given), the sentence says
    so: final KL then also measures how long each level trained.
    """
    t = table[(table["metric"] == "eval/kl") & table["factor"].isin(list(factors))].dropna(subset=["iqm"])
    best = None
    for f, g in t.groupby("factor", sort=False):
        if len(g) < 2:
            continue
        lo, hi = g.loc[g["iqm"].idxmin()], g.loc[g["iqm"].idxmax()]
        spread = hi["iqm"] - lo["iqm"]
        if best is None or spread > best[0]:
            best = (spread, f, lo, hi, int(g["n"].min()))
    if best is None:
        return None
    _, f, lo, hi, n_min = best
    s = (
        f"Final KL to the reference spreads most over {f}: IQM {_iv(lo).fmt()} nats at {f} = "
        f"{level_label(lo['level'])} and {_iv(hi).fmt()} nats at {f} = {level_label(hi['level'])}"
    )
    if (more := needs_more(n_min, MIN_SEEDS, "seeds per level")) is not None:
        return s + f"; not called a difference: {more}."
    verdict = "overlap" if _iv(lo).overlaps(_iv(hi)) else "do not overlap"
    s += f"; the {IVS} {verdict}"
    if runs is not None and E.budget_differs(runs, f, factors):
        s += ", but the levels' sample budgets differ, so this also measures how long each level trained"
    return s + "."


def effect_sentences(effects: pd.DataFrame, metric: str = "eval/gold", refused: dict | None = None) -> list[str]:
    """One sentence per main effect and interaction on ``metric`` (rows of ``effects.effects_table``).

    Fewer than ``MIN_CELLS`` matched cells: not called, with how many more are needed. Sweeps
    with one factor (no matched cells to speak of) are left to the per-level findings.
    ``refused``: {factor: why its levels cannot be compared} (``attrition.unequal_loss``).
    """
    out = []
    if effects is None or effects.empty:
        return out
    what = {"eval/gold": "gold reward", "eval/kl": "KL"}.get(metric, metric)
    for r in effects[effects["metric"] == metric].itertuples(index=False):
        why = [refused[f] for f in str(r.factor).split(" x ") if refused and f in refused]
        if why:
            kind = "Main effect" if r.term == "main" else "Interaction"
            out.append(f"{kind} {r.effect} on {what} ({r.at}): {stats.fmt_number(r.estimate)}, {why[0]}.")
            continue
        if r.over == E.FIXED:
            out.append(_fixed_sentence(r, what))
            continue
        seeds = r.over == E.SEEDS
        kind = ("Difference" if seeds else "Main effect") if r.term == "main" else "Interaction"
        head = f"{kind} {r.effect} on {what} ({r.at})"
        n = int(r.n_runs) if seeds else int(r.n_matched)
        unit = "seeds per level" if seeds else "matched cells"
        have = f"{n} run{_s(n)} per level (one cell)" if seeds else f"{n} matched cell{_s(n)}"
        if (more := needs_more(n, MIN_SEEDS if seeds else MIN_CELLS, unit)) is not None:
            est = f"{stats.fmt_number(r.estimate)} " if np.isfinite(r.estimate) else ""
            out.append(f"{head}: {est}over {have}, not called: {more}.")
            continue
        iv = Interval(float(r.estimate), float(r.low), float(r.high), n)
        tiv = "95% Welch t-interval over seeds" if seeds else T_IV
        if r.low > 0 or r.high < 0:
            verdict = f"the {tiv} excludes 0, so it is {'positive' if r.estimate > 0 else 'negative'}"
        else:
            verdict = f"the {tiv} includes 0, so the sweep does not resolve it"
        out.append(f"{head}: {iv.fmt()} over {have}; {verdict}.")
    return out


FIXED_HOW = ("fixed-effects 95% t-interval: cell means, within-cell variance pooled over every cell, "
             "assuming independent runs, normal within a cell, one common variance")


def _fixed_sentence(r, what: str) -> str:
    """An effect read by the fixed-effects analysis, with its unequal-variance (Welch-Satterthwaite) check."""
    kind = "Main effect" if r.term == "main" else "Interaction"
    head = f"{kind} {r.effect} on {what} ({r.at})"
    cells = f"{int(r.n_matched)} matched cell{_s(int(r.n_matched))}" if r.term == "main" else (
        f"{int(r.n_matched)} matched quadruple{_s(int(r.n_matched))}")  # fmt: skip
    have = f"{int(r.n_runs)} runs, {cells}, {r.df:g} error df"
    if r.note:
        est = f"{stats.fmt_number(r.estimate)} " if np.isfinite(r.estimate) else ""
        return f"{head}: {est}over {have}, not called: {r.note.split('; ', 1)[-1]}."
    iv = Interval(float(r.estimate), float(r.low), float(r.high), int(r.n_runs))
    check = Interval(float(r.estimate), float(r.check_low), float(r.check_high), int(r.n_runs))
    sides = [iv.low > 0 or iv.high < 0, check.low > 0 or check.high < 0] if np.isfinite(check.low) else None
    if sides is not None and sides[0] != sides[1]:
        verdict = (f"the equal-variance interval {'excludes' if sides[0] else 'includes'} 0 but the unequal-"
                   f"variance check {check.fmt()} does not agree, so it is not called")
    elif sides is not None and sides[0] or sides is None and (iv.low > 0 or iv.high < 0):
        verdict = f"it excludes 0, so it is {'positive' if r.estimate > 0 else 'negative'}"
    else:
        verdict = "it includes 0, so the sweep does not resolve it"
    chk = f"; unequal-variance check {check.fmt()}" if np.isfinite(check.low) else ""
    return f"{head}: {iv.fmt()} over {have} ({FIXED_HOW}{chk}); {verdict}."


def iqm_mean_disagree(table: pd.DataFrame, effects: pd.DataFrame | None, factor: str) -> str | None:
    """A sentence when the levels' IQMs (pooled over cells) and the main effect (matched cells) order a
    two-level factor's levels in opposite directions on gold reward."""
    if effects is None or effects.empty or table is None or table.empty:
        return None
    t = table[(table["factor"] == factor) & (table["metric"] == "eval/gold")].dropna(subset=["iqm"])
    e = effects[(effects["metric"] == "eval/gold") & (effects["term"] == "main") & (effects["factor"] == factor)]
    if len(t) != 2 or len(e) != 1:
        return None
    r = e.iloc[0]
    iqm = t.set_index(t["level"].map(level_label))["iqm"]
    if r.level_a not in iqm.index or r.level_b not in iqm.index or not np.isfinite(r.estimate):
        return None
    gap = float(iqm[r.level_b] - iqm[r.level_a])
    if gap == 0 or r.estimate == 0 or np.sign(gap) == np.sign(r.estimate):
        return None
    return (
        f"{factor}: the level IQMs put {r.level_b if gap > 0 else r.level_a} ahead (IQM difference "
        f"{r.level_b} - {r.level_a} = {stats.fmt_number(gap)}) but the main effect {r.level_b} - {r.level_a} "
        f"is {stats.fmt_number(r.estimate)}: the IQM trims each level's runs pooled over its cells, the main "
        "effect averages cell means over matched cells, so they weigh runs differently; opposite signs "
        "mean neither orders the levels reliably."
    )


def multiplicity(sentences: Sequence[str], effects: pd.DataFrame | None) -> str | None:
    """The family of interval statements the findings make, and Holm's adjusted call over the effects table."""
    n_iv = sum(s.count("95%") for s in sentences)
    if n_iv < 2:
        return None
    s = (f"Multiplicity: these findings make {n_iv} statements with a 95% interval each (per-level "
         "comparisons, effects, ratios, fits), each at its own 95%; about 1 in 20 of them may exclude its "
         "true value by chance alone.")
    if effects is None or effects.empty or "p" not in effects:
        return s
    e = effects[np.isfinite(pd.to_numeric(effects["p"], errors="coerce")) & (effects["note"].fillna("") == "")]
    if e.empty:
        return s
    adj = F.holm(e["p"].to_numpy(float))
    called = [f"{r.effect} on {r.metric} (Holm p = {stats.fmt_number(p, 2)})"
              for r, p in zip(e.itertuples(index=False), adj, strict=True) if p <= 0.05]  # fmt: skip
    head = (f" Holm's adjustment over the {len(e)} effects of the effects table (the family; family-wise "
            "error 5%): ")
    return s + head + ("; ".join(called) + " stay called." if called else "none stays called.")


def batch_variance_scaling(runs: pd.DataFrame) -> str | None:
    """Log-log slope of the batch-gradient variance tr(Sigma)/B on batch size, per advantage level (theory -1)."""
    fits = E.batch_variance_slopes(runs, advantage_column(runs, 1))
    fits = fits[fits["n_sizes"] >= 2]
    if fits.empty:
        return None
    parts = []
    for r in fits.itertuples(index=False):
        if not np.isfinite(r.slope):
            parts.append(f"{r.level}: no slope interval ({r.note})")
            continue
        iv = Interval(float(r.slope), float(r.low), float(r.high), int(r.n))
        verdict = "consistent with -1" if r.low <= -1 <= r.high else (
            "flatter than -1" if r.low > -1 else "steeper than -1")  # fmt: skip
        parts.append(f"{r.level}: {iv.fmt(2)} over {r.n} runs at {r.n_sizes} batch sizes, {verdict}")
    return (
        "Batch-gradient variance tr(Σ)/B against batch size B (log-log least-squares slope of per-run "
        f"means over probes, {T_IV}; 1/B averaging alone gives -1): " + "; ".join(parts) + "."
    )


def noise_scale(runs: pd.DataFrame) -> str | None:
    """Gradient noise scale B_simple per advantage level (and sequence baseline), or 'unresolved'.

    Rule: resolved when the t-interval of the level's mean signal over runs excludes 0 (Fieller's
    interval is then bounded); an unresolved level quotes no ratio.
    """
    t = E.noise_scale_by(runs, advantage_column(runs, 1))
    if t.empty:
        return None
    parts = []
    for r in t.itertuples(index=False):
        if r.resolved:
            iv = Interval(float(r.point), float(r.low), float(r.high), int(r.n))
            parts.append(f"{r.level}: {iv.fmt()} completions ({r.n} runs)")
        else:
            sig = Interval(float(r.signal), float(r.signal_low), float(r.signal_high), int(r.n))
            parts.append(f"{r.level}: unresolved (mean signal {sig.fmt()} does not exclude 0; {r.n} runs)")
    return (
        "Gradient noise scale B_simple = mean tr(Σ) / mean |G|² over runs (each run's means over its "
        "probes; 95% Fieller interval; a level is unresolved, and no ratio quoted, when the t-interval of "
        "its mean signal includes 0): " + "; ".join(parts) + "."
    )


TR_SIGMA = "per-completion gradient variance tr(Σ)"
B_SIMPLE = ("noise scale B_simple = tr(Σ)/|G|² (scale-free: whitening, which rescales each baseline's "
            "advantages by a different std, leaves it unchanged; tr(Σ) alone would not be comparable)")


def _ratio_sentence(what: str, lb: str, la: str, result: tuple[Interval, int, str], quantity: str = TR_SIGMA) -> str:
    iv, cells, over = result
    head = f"{what}: {lb} against {la}"
    seeds = over == E.SEEDS
    n = iv.n if seeds else cells
    have = f"{n} run{_s(n)} per level (one cell)" if seeds else f"{n} matched cell{_s(n)}"
    unit = "seeds per level" if seeds else "matched cells"
    if (more := needs_more(n, MIN_SEEDS if seeds else MIN_CELLS, unit)) is not None:
        return f"{head}: {have}, not called: {more}."
    if iv.high < 1:
        verdict = "lower"
    elif iv.low > 1:
        verdict = "higher"
    else:
        verdict = "not resolved (the interval includes 1)"
    how = (
        f"ratio of geometric means over {have}, 95% Welch t-interval of the log ratio"
        if seeds
        else f"geometric mean over {have}, {T_IV} of the log ratio"
    )
    return f"{head}: {quantity} ratio {iv.fmt(2)} ({how}): {verdict}."


def baseline_variance(runs: pd.DataFrame, factors: Sequence[str]) -> list[str]:
    """Whether each sequence baseline lowers the noise scale B_simple against baseline ``none`` at matched settings.

    B_simple = tr(Sigma) / |G|^2 per run (``effects.NOISE_SCALE``), not tr(Sigma): with
    ``advantage.whiten`` each baseline's advantages are divided by a different std, which scales
    tr(Sigma) by 1/std^2 and says nothing about the baseline; the ratio to the signal cancels it.
    """
    col = advantage_column(runs)
    if col != ADVANTAGE or "sequence/none" not in set(runs[col]):
        return []
    others = [
        lv
        for lv in stats.sorted_levels(runs[col])
        if str(lv).startswith("sequence/") and lv != "sequence/none"
    ]
    fs = with_advantage(factors, col)
    if E.NOISE_SCALE not in runs:
        return []
    return [
        _ratio_sentence("Baseline", lv, "sequence/none",
                        E.variance_ratio(runs, col, "sequence/none", lv, fs, value=E.NOISE_SCALE), B_SIMPLE)
        for lv in others
    ]


def gae_lambda_variance(runs: pd.DataFrame, factors: Sequence[str]) -> str | None:
    """Whether GAE lambda < 1 lowers tr(Sigma) against lambda = 1 at matched settings (token level only).

    lambda is either its own factor (every run token level) or part of the merged ``advantage``
    factor ("token/lam=0.95", "token/lam=1"; see ``reports.collect``).
    """
    f = "advantage.lam"
    if E.SAMPLE_VAR not in runs:
        return None
    col = advantage_column(runs)
    if col == ADVANTAGE and f not in factors:
        levels = [lv for lv in stats.sorted_levels(runs[col]) if str(lv).startswith("token/lam=")]
        ones = [lv for lv in levels if float(str(lv).split("=", 1)[1]) == 1.0]
        if not ones:
            return None
        fs = with_advantage(factors, col)
        parts = [
            _ratio_sentence(
                "GAE", f"lambda = {str(lv).split('=', 1)[1]}", "lambda = 1", E.variance_ratio(runs, col, ones[0], lv, fs)
            )
            for lv in levels
            if lv not in ones
        ]
        return " ".join(parts) or None
    if f not in factors or f not in runs:
        return None
    r = runs[runs["advantage.level"] == "token"] if "advantage.level" in runs else runs
    levels = stats.sorted_levels(r[f])
    if 1.0 not in levels or len(levels) < 2:
        return None
    parts = [
        _ratio_sentence(
            "GAE", f"lambda = {level_label(lam)}", "lambda = 1", E.variance_ratio(r, f, 1.0, lam, factors)
        )
        for lam in levels
        if lam < 1
    ]
    return " ".join(parts) or None


def poi_sentences(poi: pd.DataFrame, what: str = "final gold reward") -> list[str]:
    """One sentence per unordered pair of levels, in the direction with P >= 0.5."""
    out = []
    if poi is None or poi.empty:
        return out
    seen = set()
    for row in poi.sort_values("poi", ascending=False).itertuples(index=False):
        pair = frozenset((row.a, row.b))
        if pair in seen or not np.isfinite(row.poi):
            continue
        seen.add(pair)
        how = (
            "pooled over all runs (no sweep cell ran both)"
            if row.pooled
            else f"averaged over {row.n_strata} matched cell{'s' if row.n_strata != 1 else ''}"
        )
        strength = "" if abs(row.poi - 0.5) >= 0.25 else " (close to a coin flip)"
        out.append(
            f"Probability of improvement on {what}: P({level_label(row.a)} > {level_label(row.b)}) = {row.poi:.2f}, {how}{strength}."
        )
    return out


def overoptimised_runs(curves: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per run: the over-optimisation test (``harness.onset``) on its eval/gold, eval/gold_se and eval/proxy.

    Columns: run_id, peak_step (the evaluation with the highest gold), gain (peak gold minus the
    first), drop (peak minus last), proxy_rise (last proxy minus the proxy at the peak), onset_step
    (the evaluation at which the fall was called; NaN when never), overoptimised, tested (False
    when the run logged no eval/gold_se: no noise to test against). The test calls a fall only
    beyond what the evaluations' standard errors allow, at a 5% run-wide false-alarm rate for a
    run of that many evaluations; ``eval.prompts`` (from ``runs``) sets the calibration.
    """
    cols = ["run_id", "peak_step", "gain", "drop", "proxy_rise", "onset_step", "overoptimised", "tested"]
    if curves is None or curves.empty:
        return pd.DataFrame(columns=cols)
    wide = curves[curves["metric"].isin(["eval/gold", "eval/gold_se", "eval/proxy"])].pivot_table(
        index=["run_id", "step"], columns="metric", values="value", aggfunc="last")
    if "eval/gold" not in wide:
        return pd.DataFrame(columns=cols)
    prompts = runs.set_index("run_id")["eval.prompts"] if runs is not None and "eval.prompts" in runs else None
    rows = []
    for rid, g in wide.groupby(level="run_id"):
        g = g.dropna(subset=["eval/gold"])
        v = g["eval/gold"].to_numpy(float)
        if v.size < 3:
            continue
        steps = g.index.get_level_values("step").to_numpy(int)
        p = g["eval/proxy"].to_numpy(float) if "eval/proxy" in g else np.full(v.size, np.nan)
        se = g["eval/gold_se"].to_numpy(float) if "eval/gold_se" in g else np.full(v.size, np.nan)
        k = int(np.argmax(v))
        n_p = prompts.get(rid) if prompts is not None else None
        n_p = int(n_p) if n_p is not None and np.isfinite(n_p) else None
        at = onset_index(v, se, p, prompts=n_p)
        rows.append([rid, int(steps[k]), v[k] - v[0], v[k] - v[-1], p[-1] - p[k],
                     float(steps[at]) if at is not None else np.nan, at is not None, bool(np.isfinite(se).any())])  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


OVEROPT_RULE = (
    "gold reward fell, between two stretches of consecutive evaluations, by more than their standard "
    "errors allow (a segment scan with a 5% false-alarm rate per run, harness/onset.py) while the proxy "
    "reward rose between the same stretches"
)


def over_optimisation(runs: pd.DataFrame, curves: pd.DataFrame, factors: Sequence[str]) -> str | None:
    o = overoptimised_runs(curves, runs)
    if o.empty or o["proxy_rise"].isna().all():
        return None
    untested = int((~o["tested"].astype(bool)).sum())
    o = o[o["tested"].astype(bool)]
    if o.empty:
        return (f"Over-optimisation is not tested: none of the {untested} runs logged eval/gold_se, the "
                "evaluation noise a fall must exceed.")
    bad = o[o["overoptimised"].astype(bool)]
    expected = 0.05 * len(o)
    tail = f" ({untested} run{_s(untested)} without eval/gold_se not tested.)" if untested else ""
    if bad.empty:
        return f"No run over-optimised the proxy reward (criterion: {OVEROPT_RULE}).{tail}"
    s = (f"{len(bad)} of {len(o)} runs over-optimised the proxy reward: their {OVEROPT_RULE}; with no "
         f"over-optimisation at all at most 5% ({stats.fmt_number(expected, 2)} of {len(o)}) would be called.{tail}")
    hue = frontier_hue(runs, factors)
    if hue:
        per = runs.set_index("run_id").loc[bad["run_id"], hue].value_counts()
        total = runs[hue].value_counts()
        parts = [f"{n} of {int(total.get(lv, 0))} at {level_label(lv)}" for lv, n in per.sort_index().items()]
        s += f" By {hue}: {', '.join(parts)}."
    return s


GAO_FORM = "R(d) = d (α − β ln d), d = √KL"


def gao_sentences(runs: pd.DataFrame, curves: pd.DataFrame, analysis: O.Analysis | None = None) -> list[str]:
    """Gao et al. (2022) over-optimisation findings: one per RM size, the peak shift, the onsets.

    ``analysis`` from ``overopt.analyse`` (computed here when None). Empty when the sweep has no
    eval/kl curves.
    """
    if analysis is None:
        if not O.has_kl_curves(curves):
            return []
        analysis = O.analyse(runs, curves)
    if analysis.empty:
        return []
    out = [gao_fit_sentence(r, analysis.grouped) for r in analysis.summary.itertuples(index=False)]
    if analysis.shift is not None:
        out.append(peak_shift_sentence(analysis.shift))
    out.append(onset_sentence(analysis))
    return out


def _where(level: str, grouped: bool) -> str:
    return f"at {O.RM} = {level}" if grouped else "over all runs"


def gao_fit_sentence(r, grouped: bool = True) -> str:
    """One level's fit (a row of ``overopt.level_summary``): alpha, beta [t-intervals], R², KL*, empirical
    peak."""
    where = _where(r.level, grouped)
    head = (
        f"Gao et al. (2022) fit of gold gain over the initial policy, {GAO_FORM}, {where} "
        f"({r.n_seeds} seed{_s(r.n_seeds)}, {r.n_runs} run{_s(r.n_runs)}, {r.n_points} points with KL > 0)"
    )
    if not np.isfinite(r.alpha_pooled):
        return f"{head}: too few points to fit."
    a = Interval(float(r.alpha), float(r.alpha_low), float(r.alpha_high), int(r.n_seeds))
    b = Interval(float(r.beta), float(r.beta_low), float(r.beta_high), int(r.n_seeds))
    over = f"{T_IV}s over per-seed fits" if r.n_seeds >= 2 else "one seed, no interval"
    s = f"{head}: α = {a.fmt()}, β = {b.fmt()} ({over}); pooled R² = {r.r2:.2f}"
    if r.unlocated:
        s += f"; {r.unlocated}"
    else:
        k = Interval(float(r.kl_star), float(r.kl_star_low), float(r.kl_star_high), int(r.n_peak))
        how = (
            f"exp of the {T_IV} of ln KL* over {r.n_peak} seeds"
            if r.n_peak >= 2
            else f"{r.n_peak} seed{_s(r.n_peak)} with a fitted peak, no interval"
        )
        s += f"; fitted peak KL* = d*² = {k.fmt()} nats ({how})"
        if (missing := r.n_seeds - r.n_peak) > 0:
            s += f"; {missing} of {r.n_seeds} seeds' fits have no peak (β ≤ 0) and are left out of KL*"
        if r.kl_star > r.kl_max:
            s += f"; KL* lies beyond the largest KL reached ({stats.fmt_number(r.kl_max)} nats): extrapolated"
    if r.n_empirical:
        s += (
            f"; empirical gold peak at KL {stats.fmt_number(r.empirical_kl)} nats (median over "
            f"{r.n_empirical} run{_s(r.n_empirical)}"
        )
        if r.n_peak_at_end:
            s += f"; {r.n_peak_at_end} of them highest at their last evaluation, a lower bound there"
        s += ")"
    return s + "."


def peak_shift_sentence(shift: O.PeakShift) -> str:
    """Whether more RM data moves the fitted peak KL* (largest against smallest ``model.rm_pairs``)."""
    head = f"Peak shift with more RM data ({O.RM} = {shift.large} against {shift.small})"
    if shift.no_peak:
        where = " and ".join(f"{O.RM} = {lv}" for lv in shift.no_peak)
        return f"{head}: not estimated: the fit locates no peak at {where} (see the fit above)."
    n = min(shift.n_small, shift.n_large)
    have = f"{shift.n_small} and {shift.n_large} seeds with a fitted peak"
    est = f"KL* ratio {stats.fmt_number(shift.ratio.point)}"  # 'n/a' when NaN
    dropped = ""
    if shift.seeds_without_peak:
        parts = [f"{k} at {O.RM} = {lv}" for lv, k in shift.seeds_without_peak.items()]
        dropped = f"; seeds whose fit has no peak left out: {', '.join(parts)}"
    if (more := needs_more(n, MIN_SEEDS, "seeds per level")) is not None:
        return f"{head}: {est} from {have}, not called: {more}{dropped}."
    iv = shift.ratio
    if iv.low > 1:
        verdict = "the interval excludes 1, so more RM data moves the peak to larger KL"
    elif iv.high < 1:
        verdict = "the interval excludes 1, so more RM data moves the peak to smaller KL"
    else:
        verdict = "the interval includes 1, so the sweep does not resolve a shift of the peak"
    return (
        f"{head}: KL*({shift.large}) / KL*({shift.small}) = {iv.fmt()} (Welch's 95% t-interval of the "
        f"difference in ln KL* over {have}, exponentiated); {verdict}{dropped}."
    )


def onset_sentence(analysis: O.Analysis) -> str:
    """How many runs per RM size and kl.coef logged an over-optimisation onset, at what median KL."""
    rule = (
        f"{O.ONSET}, logged at the first evaluation at which gold had fallen by more than its "
        "standard errors allow while the proxy rose; 5% false alarms per run on gold curves without a fall"
    )
    o = analysis.onsets
    if o.empty or not o["onset"].any():
        why = "" if analysis.onset_logged else "; no run logged the metric, or the runs predate it"
        return f"No run shows an over-optimisation onset ({rule}{why}) among {len(o)} runs with eval curves."
    t = O.onset_summary(o)
    parts = []
    for level, g in t.groupby("level", sort=False):
        cells = []
        for r in g.itertuples(index=False):
            at = f"{O.COEF} = {r.coef}: " if r.coef != "" else ""
            kl = f" (median onset KL {stats.fmt_number(r.median_kl)} nats)" if r.n_onset else ""
            cells.append(f"{at}{r.n_onset} of {r.n_runs}{kl}")
        lead = f"{O.RM} = {level}: " if analysis.grouped else ""
        parts.append(lead + ", ".join(cells))
    n = int(o["onset"].sum())
    return f"{n} of {len(o)} runs show an over-optimisation onset ({rule}): " + "; ".join(parts) + "."


def custom_vs_trl(runs: pd.DataFrame) -> str | None:
    """Custom PPO against every other implementation the sweep ran, at the settings all ran: gold reward (and
    throughput) per implementation, each other one's interval set against custom's."""
    m = matched_impl_runs(runs)
    if m.empty or "eval/gold" not in m:
        return None
    key = m["cell"].map(lambda c: ", ".join(p for p in str(c).split(", ") if not p.startswith("impl=")))
    ref, *others = impls_present(m)
    c = m[m["impl"] == ref]
    a = stats.interval(c["eval/gold"])
    gold = {o: stats.interval(m[m["impl"] == o]["eval/gold"]) for o in others}
    verdicts = []
    for o, b in gold.items():
        if (more := needs_more(min(a.n, b.n), MIN_SEEDS, "seeds per level")) is not None:
            v = f"not called: {more}"
        else:
            v = f"the {IVS} overlap" if a.overlaps(b) else f"the {IVS} do not overlap"
        verdicts.append(v if len(others) == 1 else f"{impl_label(o)}: {v}")
    reached = " and ".join([", ".join(f"{impl_label(o)} {b.fmt()}" for o, b in gold.items())])
    s = (
        f"At the {key.nunique()} settings {'both' if len(others) == 1 else 'all'} implementations ran, custom PPO "
        f"reaches final gold reward IQM {a.fmt()} and {reached}; {'; '.join(verdicts)}."
    )
    if "perf/tokens_per_s" in m and np.isfinite(m["perf/tokens_per_s"]).any():
        x = stats.interval(c["perf/tokens_per_s"]).at_least(0.0)
        tps = {o: stats.interval(m[m["impl"] == o]["perf/tokens_per_s"]).at_least(0.0) for o in others}
        shown = [f"{impl_label(o)} {y.fmt()} ({stats.fmt_number(x.point / y.point, 2)}x)" for o, y in tps.items()
                 if np.isfinite(x.point) and np.isfinite(y.point) and y.point > 0]
        if shown:
            s += (
                f" Throughput (each run's mean over its iterations, the noise probe's time left out): "
                f"custom IQM {x.fmt()} tokens/s, {', '.join(shown)}."
            )
    return s


def small_samples(table: pd.DataFrame, runs: pd.DataFrame | None = None) -> str | None:
    """Say when levels have too few runs for the findings to call a difference."""
    t = table[table["metric"] == "eval/gold"] if "metric" in table else table
    if t.empty:
        return None
    n_min = int(t["n"].min())
    if n_min >= MIN_SEEDS:
        return None
    few = t[t["n"] == n_min]
    names = ", ".join(f"{r.factor} = {level_label(r.level)}" for r in few.itertuples(index=False))
    if n_min <= 1:
        return (
            f"Some levels have a single run ({names}): no interval; the findings call no difference "
            f"there ({needs_more(n_min, MIN_SEEDS, 'seeds per level')})."
        )
    return (
        f"Some levels have only {n_min} runs ({names}): the findings call no difference between levels "
        f"from fewer than {MIN_SEEDS} runs ({needs_more(n_min, MIN_SEEDS, 'seeds per level')})."
    )
