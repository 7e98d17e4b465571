"""One figure per claim where a figure says it better than the table (``reports.claims``).

- ``critical-batch``: iterations vs episodes to the gold target, one point per run, the hyperbola
  (S/S_min - 1)(E/E_min - 1) = 1 fitted on the seeds' mean, and where B_simple and B_crit fall on it;
- ``dr-grpo-length``: low-reward response length over training, GRPO vs Dr. GRPO;
- ``clip-higher``: entropy over training, eps_high 0.2 vs 0.28.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports import claims as C
from reports.plots.style import Style, new_figure, palette, skippable


@skippable
def critical_batch(runs: pd.DataFrame, curves: pd.DataFrame, style: Style) -> Figure | str:
    steps = C.run_steps(curves)
    pts = runs.assign(S=runs["run_id"].map(steps)).dropna(subset=["S"])
    if pts.empty:
        return "no run reached the gold target"
    pts = pts.assign(E=pts["S"] * pts["rollout.batch_size"])
    fig = new_figure(style, style.single, style.row + 0.9)
    ax = fig.subplots()
    for i, (b, g) in enumerate(pts.groupby("rollout.batch_size")):
        ax.scatter(g["E"], g["S"], s=14, color=palette(i), label=f"B = {b}", zorder=3)
    t = C.critical_batch_table(runs, curves)
    s_min, e_min = float(t["S_min"].mean()), float(t["E_min"].mean())
    if np.isfinite(s_min) and np.isfinite(e_min):
        b = np.geomspace(1, 1e5, 400)
        ax.plot(b * (s_min + e_min / b), s_min + e_min / b, color="0.3", lw=1,
                label=f"(S/S_min-1)(E/E_min-1)=1, B_crit {e_min / s_min:.3g}")
        simple = float(t["B_simple"].mean())
        for bb, mark, lab in ((e_min / s_min, "s", "B_crit"), (simple, "*", f"B_simple {simple:.3g}")):
            if np.isfinite(bb) and bb > 0:
                ax.scatter([bb * (s_min + e_min / bb)], [s_min + e_min / bb], marker=mark, s=40, color="k",
                           zorder=4, label=lab if lab != "B_crit" else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("episodes to target E (completions)")
    ax.set_ylabel("iterations to target S")
    ax.legend(fontsize=style.small, loc="upper right")
    return fig


def _curve_by(runs: pd.DataFrame, curves: pd.DataFrame, key: str, axis: str, ylabel: str, style: Style,
              names: dict | None = None) -> Figure | str:
    c = C.metric(curves, key)
    if c.empty or axis not in runs:
        return f"no {key} history"
    level = c["run_id"].map(runs.set_index("run_id")[axis].astype(str))
    mean = c.assign(level=level).groupby(["level", "step"])["value"].mean().reset_index()
    fig = new_figure(style, style.single, style.row + 0.6)
    ax = fig.subplots()
    for i, (lv, g) in enumerate(mean.groupby("level")):
        ax.plot(g["step"], g["value"], color=palette(i), lw=1.2, label=(names or {}).get(lv, f"{axis} {lv}"))
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=style.small)
    return fig


@skippable
def dr_grpo_length(runs: pd.DataFrame, curves: pd.DataFrame, style: Style) -> Figure | str:
    return _curve_by(runs, curves, "response/length_low", "advantage.baseline", "low-reward length (tokens)", style,
                     {"group_norm": "GRPO (seq-mean-token-mean, std)", "group_mean": "Dr. GRPO"})


@skippable
def clip_higher(runs: pd.DataFrame, curves: pd.DataFrame, style: Style) -> Figure | str:
    return _curve_by(runs, curves, "objective/entropy", "ppo.clip_eps_high", "entropy (nats/token)", style)


FIGURES = {"critical-batch": critical_batch, "dr-grpo-length": dr_grpo_length, "clip-higher": clip_higher}
