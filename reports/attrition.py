"""Failed and missing runs per cell and per level, and when they make a comparison unsafe.

Pure pandas. ``runs``: the finished runs (``reports.collect``); ``lost``: the sweep's child runs
that did not finish (failed, killed, still running), with the same axis columns and ``cell``.
A cell's planned count is the most runs (any status) any cell of the sweep holds, so a seed that
never started counts as missing.

Why a comparison is refused: a run that fails is rarely a random one (a diverging setting fails
more often, and its worst seeds first), so comparing the survivors of levels that lost different
shares of their runs compares differently filtered samples; with a true effect of 0, dropping
the 8 worst runs of one level gives an interval that excludes 0.
"""

from __future__ import annotations

import pandas as pd

from reports.labels import level_label

COUNT_COLUMNS = ["planned", "finished", "failed", "missing"]


def _cells(frame: pd.DataFrame | None) -> pd.Series:
    if frame is None or frame.empty or "cell" not in frame:
        return pd.Series(dtype=object)
    return frame["cell"].astype(str)


def retried(runs: pd.DataFrame, lost: pd.DataFrame | None) -> pd.DataFrame | None:
    """``lost`` without the runs whose (cell, seed) finished on a later attempt (a resumed sweep's retries)."""
    if lost is None or lost.empty or "seed" not in lost or "seed" not in runs or "cell" not in runs:
        return lost
    done = set(zip(runs["cell"].astype(str), runs["seed"].astype(str), strict=True))
    keep = [(c, s) not in done for c, s in zip(lost["cell"].astype(str), lost["seed"].astype(str), strict=True)]
    return lost[keep]


def cell_counts(runs: pd.DataFrame, lost: pd.DataFrame | None) -> pd.DataFrame:
    """One row per cell: planned, finished, failed (not finished), missing (never started). Index: cell.

    A failed attempt whose (cell, seed) finished later (a resumed sweep) is not a loss.
    """
    lost = retried(runs, lost)
    fin = _cells(runs).value_counts()
    bad = _cells(lost).value_counts()
    cells = sorted(set(fin.index) | set(bad.index))
    out = pd.DataFrame(index=pd.Index(cells, name="cell"))
    out["finished"] = fin.reindex(cells).fillna(0).astype(int)
    out["failed"] = bad.reindex(cells).fillna(0).astype(int)
    planned = int((out["finished"] + out["failed"]).max()) if len(out) else 0
    out["planned"] = planned
    out["missing"] = out["planned"] - out["finished"] - out["failed"]
    return out[COUNT_COLUMNS]


def level_counts(runs: pd.DataFrame, lost: pd.DataFrame | None, factor: str) -> pd.DataFrame:
    """Per level of ``factor`` (labels): planned, finished, failed, missing summed over its cells. Index: level."""
    counts = cell_counts(runs, lost)
    lost = retried(runs, lost)
    frames = [f for f in (runs, lost) if f is not None and not f.empty and factor in f and "cell" in f]
    if counts.empty or not frames:
        return pd.DataFrame(columns=COUNT_COLUMNS)
    both = pd.concat([f[["cell", factor]] for f in frames]).drop_duplicates("cell")
    level_of = both.set_index("cell")[factor].map(level_label)
    counts = counts.assign(level=counts.index.map(level_of))
    return counts.groupby("level")[COUNT_COLUMNS].sum()


def unequal_loss(runs: pd.DataFrame, lost: pd.DataFrame | None, factor: str, levels=None) -> str | None:
    """Why ``factor``'s levels (default all; labels or raw values) cannot be compared, or None.

    Refused when the levels lost (failed + missing) different shares of their planned runs.
    """
    t = level_counts(runs, lost, factor)
    if t.empty:
        return None
    if levels is not None:
        t = t.reindex([level_label(v) for v in levels]).dropna()
    if len(t) < 2:
        return None
    gone = t["failed"] + t["missing"]
    share = gone / t["planned"].where(t["planned"] > 0)
    if share.fillna(0).nunique() <= 1:
        return None
    parts = ", ".join(f"{lv} lost {int(gone[lv])} of {int(t.loc[lv, 'planned'])}" for lv in t.index)
    return (f"not called: the levels lost different shares of their runs ({parts}), and a failed run "
            "is rarely a random one, so their survivors are differently filtered samples")


def loss_note(runs: pd.DataFrame, lost: pd.DataFrame | None) -> str:
    """'' when every cell finished all its planned runs, else 'cell: 1 failed, 2 missing; ...'."""
    c = cell_counts(runs, lost)
    c = c[(c["failed"] > 0) | (c["missing"] > 0)]
    parts = [f"{cell}: {r.failed} failed, {r.missing} missing of {r.planned}" for cell, r in c.iterrows()]
    return "; ".join(parts)


def with_losses(effects: pd.DataFrame, runs: pd.DataFrame, lost: pd.DataFrame | None) -> pd.DataFrame:
    """``effects`` with a 'lost' column for main effects: each compared level's failed + missing of planned runs."""
    if effects is None or effects.empty:
        return effects
    out = effects.copy()
    texts = []
    for r in out.itertuples(index=False):
        t = level_counts(runs, lost, r.factor) if r.term == "main" else pd.DataFrame()
        if t.empty:
            texts.append("")
            continue
        parts = [f"{lv}: {int(t.loc[lv, 'failed'] + t.loc[lv, 'missing'])} of {int(t.loc[lv, 'planned'])}"
                 for lv in (r.level_a, r.level_b) if lv in t.index]  # fmt: skip
        texts.append(", ".join(parts))
    out["lost"] = texts
    return out
