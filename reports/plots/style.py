"""Figure style and the drawing helpers every figure shares: the only place rc settings live.

No pyplot: figures are ``matplotlib.figure.Figure`` objects (no global state, nothing to close),
drawn under an rc context built from a ``Style`` (venue column widths, print-sized fonts,
seaborn's colourblind palette, no LaTeX) and saved as vector PDF (Type 42 fonts) + PNG (300 dpi).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from cycler import cycler
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from reports.labels import STYLE_NAMES

PALETTE = sns.color_palette("colorblind").as_hex()
ONSET_MARKER = "X"  # a run's logged over-optimisation onset (eval/overopt_onset_kl), figures 3 and 8


@dataclass(frozen=True)
class Style:
    """Venue geometry and type sizes. Widths in inches; sizes in points."""

    name: str
    single: float  # one-column figure (or half the text width on one-column venues)
    double: float  # full text width
    font: float = 8.0
    small: float = 7.0  # ticks, legends, annotations
    row: float = 1.45  # height of one row of panels

    def rc(self) -> dict[str, Any]:
        return {
            # Type 42 (TrueType) fonts: some venues reject Type 3; no LaTeX installation needed.
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "svg.fonttype": "none",
            "text.usetex": False,
            "mathtext.fontset": "dejavusans",
            "font.family": "sans-serif",
            "font.sans-serif": ["DejaVu Sans"],
            "font.size": self.font,
            "axes.titlesize": self.font,
            "axes.labelsize": self.font,
            "xtick.labelsize": self.small,
            "ytick.labelsize": self.small,
            "legend.fontsize": self.small,
            "legend.title_fontsize": self.small,
            "legend.frameon": False,
            "legend.handlelength": 1.4,
            "legend.columnspacing": 0.9,
            "legend.borderaxespad": 0.2,
            "axes.prop_cycle": cycler(color=PALETTE),
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.linewidth": 0.6,
            "axes.grid": True,
            "grid.linewidth": 0.4,
            "grid.alpha": 0.35,
            "xtick.major.width": 0.6,
            "ytick.major.width": 0.6,
            "xtick.major.size": 2.5,
            "ytick.major.size": 2.5,
            "xtick.minor.size": 1.5,
            "ytick.minor.size": 1.5,
            "lines.linewidth": 1.2,
            "lines.markersize": 3.0,
            "patch.linewidth": 0.5,
            "figure.dpi": 100,
            "savefig.dpi": 300,
            "savefig.pad_inches": 0.02,
            "figure.constrained_layout.h_pad": 0.03,
            "figure.constrained_layout.w_pad": 0.03,
        }


STYLES: dict[str, Style] = {
    "default": Style("default", single=3.5, double=7.0),
    "icml": Style("icml", single=3.25, double=6.75),
    # One-column venues: text width 5.5 in; "single" is half of it (two figures side by side).
    "neurips": Style("neurips", single=2.7, double=5.5),
    "iclr": Style("iclr", single=2.7, double=5.5),
}
assert tuple(STYLES) == STYLE_NAMES, "reports.labels.STYLE_NAMES names the styles checked before plotting"


def get_style(name: str | Style = "default") -> Style:
    if isinstance(name, Style):
        return name
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown style '{name}'; choose one of {', '.join(STYLES)}") from None


@contextmanager
def styled(style: Style):
    with mpl.rc_context(style.rc()):
        yield


def palette(i: int) -> str:
    """The i-th colour of the palette, cycling."""
    return PALETTE[i % len(PALETTE)]


def save_figure(fig: Figure, out_dir: str | Path, stem: str, style: Style) -> list[Path]:
    """Vector PDF (Type 42 fonts) and a 300 dpi PNG; returns [pdf, png]."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pdf, png = out / f"{stem}.pdf", out / f"{stem}.png"
    with styled(style):
        fig.savefig(pdf, metadata={"CreationDate": None, "Creator": "ppo-harness report"})
        fig.savefig(png, dpi=300, metadata={"Software": "ppo-harness report"})
    return [pdf, png]


def skippable(fn: Callable[..., Figure | str]) -> Callable[..., Figure | None]:
    """fn returns a Figure or a skip reason; the public function returns the Figure or None.

    ``public.explain(...)`` returns what ``fn`` returns: the Figure or the reason.
    """

    @functools.wraps(fn)
    def public(*args, **kwargs) -> Figure | None:
        out = fn(*args, **kwargs)
        return None if isinstance(out, str) else out

    public.explain = fn  # type: ignore[attr-defined]
    return public


# ---- figures and panels --------------------------------------------------------------------------


def new_figure(style: Style, width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def panel_grid(n: int, style: Style, max_cols: int | None = None) -> tuple[int, int]:
    """(rows, columns) of ``n`` panels: four columns at full width on wide venues, else two."""
    cols = max_cols or (4 if style.double >= 6.5 else 2)
    cols = min(n, cols)
    return int(np.ceil(n / cols)), cols


def legend_above(ax, handles, labels, title: str, width_in: float, style: Style) -> None:
    """A legend in a band above the axes, as many columns as fit the panel width."""
    if not labels:  # nothing drawn in this panel (e.g. runs of one iteration: no curve to band)
        return
    char_w = style.small / 72 * 0.55  # average glyph width, inches
    widths = [0.35 + len(lab) * char_w for lab in labels]
    ncol = len(labels)
    while ncol > 1 and sum(sorted(widths, reverse=True)[:ncol]) > width_in:
        ncol -= 1
    rows = int(np.ceil(len(labels) / ncol))
    # matplotlib fills legend columns first; permute so the levels read left to right, row by row.
    order = [r * ncol + c for c in range(ncol) for r in range(rows) if r * ncol + c < len(labels)]
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        title=title,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=ncol,
        handletextpad=0.4,
    )


def band(ax, x, point, low, high, color, label, marker=None) -> Any:
    """A line with its shaded band; returns the line (a legend handle)."""
    ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
    (line,) = ax.plot(x, point, color=color, label=label, marker=marker, markersize=2.5)
    return line


def interval_bars(ax, rows: pd.DataFrame, colors: Sequence[str], labels: Sequence[str]) -> None:
    """rliable-style interval plot: one horizontal CI bar + IQM tick per row, top to bottom."""
    y = np.arange(len(rows))[::-1]
    for yi, (_, r), color in zip(y, rows.iterrows(), colors, strict=True):
        ax.barh(
            yi, r["ci_high"] - r["ci_low"], left=r["ci_low"], height=0.6, color=color, alpha=0.45, linewidth=0
        )
        ax.plot([r["iqm"], r["iqm"]], [yi - 0.3, yi + 0.3], color=color, linewidth=1.6, solid_capstyle="butt")
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.grid(axis="y", visible=False)


def onset_handle() -> Line2D:
    """The legend entry of a run's logged onset."""
    return Line2D([], [], linestyle="none", marker=ONSET_MARKER, markersize=5, color="0.5",
                  markeredgecolor="black", markeredgewidth=0.4)  # fmt: skip


# ---- axes ----------------------------------------------------------------------------------------


def thousands(x: float, _pos=None) -> str:
    """Tick label: 2500 -> '2.5k', 1200000 -> '1.2M'."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:g}{suffix}"
    return f"{x:g}"


def log_axis(axis) -> None:
    """Log ticks at 1, 2, 5 x 10^k, labelled as plain numbers (0.5, 2, 10), no minor labels."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def thousands_axis(axis) -> None:
    """Four ticks labelled '2.5k' style (episodes, throughput)."""
    axis.set_major_locator(MaxNLocator(4))
    axis.set_major_formatter(FuncFormatter(thousands))


def episodes_axis(ax) -> None:
    """The x axis of completions seen."""
    thousands_axis(ax.xaxis)
