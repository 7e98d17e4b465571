"""Published claims checked on the shipped benchmark: what each measures per seed, and its rule.

Each claim is a sweep spec under ``ablations/claims/`` (its header: the paper, the claim, the measured
quantity, the verdict rule and the wall time measured here) and an entry of ``CLAIMS``: one or more
``Part``s, each a quantity measured once per seed from the sweep's ``runs`` and ``curves`` frames
(``reports.collect``) with a ``reports.verdicts.Rule`` fixed before any run. ``evaluate`` turns a sweep
into one row per part (claim, quantity, estimate [95%], rule, verdict); a claim of several parts is
reproduced when every part is (``reports.verdicts.combined``).

The measurements are pure functions of the frames (tested on synthetic run tables).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reports.stats import fmt_number
from reports.verdicts import Rule, Verdict, combined, verdict

CLAIMS_DIR = Path(__file__).resolve().parents[1] / "ablations" / "claims"
NaN = float("nan")

Measure = Callable[[pd.DataFrame, pd.DataFrame], pd.Series]  # (runs, curves) -> one value per seed


@dataclass(frozen=True)
class Part:
    quantity: str  # what is measured, in words, with its symbol
    symbol: str
    rule: Rule
    measure: Measure


@dataclass(frozen=True)
class Claim:
    name: str
    paper: str
    statement: str
    parts: tuple[Part, ...]
    figure: str | None = None  # the key of its figure in reports.plots.claims, if a figure says it better
    notes: tuple[str, ...] = field(default=())

    @property
    def spec(self) -> Path:
        return CLAIMS_DIR / f"{self.name}.yaml"


# ---- per-run readings from the curves ---------------------------------------------------------------


def metric(curves: pd.DataFrame, key: str) -> pd.DataFrame:
    """The rows of one metric, sorted by run and step (empty when it was never logged)."""
    if curves is None or curves.empty or "metric" not in curves:
        return pd.DataFrame(columns=["run_id", "step", "value"])
    return curves[curves["metric"] == key].sort_values(["run_id", "step"])


def run_mean(curves: pd.DataFrame, key: str) -> pd.Series:
    """Each run's mean of ``key`` over its logged steps, by run_id."""
    return metric(curves, key).groupby("run_id")["value"].mean()


def run_first(curves: pd.DataFrame, key: str) -> pd.Series:
    """Each run's first logged value of ``key`` (the probe at the start of training), by run_id."""
    return metric(curves, key).groupby("run_id")["value"].first()


def run_growth(curves: pd.DataFrame, key: str) -> pd.Series:
    """Each run's change of ``key`` over training: the least-squares slope per step times the steps spanned."""
    def one(g: pd.DataFrame) -> float:
        x, y = g["step"].to_numpy(float), g["value"].to_numpy(float)
        ok = np.isfinite(y)
        if ok.sum() < 3 or np.unique(x[ok]).size < 2:
            return NaN
        return float(np.polyfit(x[ok], y[ok], 1)[0] * (x[ok].max() - x[ok].min()))

    return metric(curves, key).groupby("run_id").apply(one, include_groups=False)


def gold_gain(curves: pd.DataFrame) -> pd.Series:
    """Each run's final eval/gold minus its step-0 eval/gold, by run_id."""
    g = metric(curves, "eval/gold").groupby("run_id")["value"]
    return g.last() - g.first()


def steps_to_target(steps, gold, gain: float) -> float:
    """Iterations until held-out gold first reaches its step-0 value + ``gain``, linear between evaluations;
    NaN when it never does. ``steps`` ascending, starting at the step-0 evaluation."""
    s, g = np.asarray(steps, dtype=float), np.asarray(gold, dtype=float)
    if s.size < 2 or s[0] != 0:
        return NaN
    target = g[0] + gain
    for i in range(1, s.size):
        if g[i] >= target:
            frac = (target - g[i - 1]) / (g[i] - g[i - 1]) if g[i] != g[i - 1] else 1.0
            return float(s[i - 1] + frac * (s[i] - s[i - 1]))
    return NaN


# ---- per-seed comparisons -------------------------------------------------------------------------


def where(runs: pd.DataFrame, **at) -> pd.DataFrame:
    """Runs whose columns equal ``at`` (keys with '.' spelled '__': ``advantage__lam=1.0``)."""
    mask = pd.Series(True, index=runs.index)
    for k, v in at.items():
        col = k.replace("__", ".")
        mask &= runs[col].astype(str) == str(v)
    return runs[mask]


def by_seed(runs: pd.DataFrame, values: pd.Series, **at) -> pd.Series:
    """``values`` (by run_id) of the runs at ``at``, one per seed (a seed's runs averaged)."""
    r = where(runs, **at)
    return pd.Series(r["run_id"].map(values).to_numpy(float), index=r["seed"].to_numpy()).groupby(level=0).mean()


def paired(runs: pd.DataFrame, values: pd.Series, a: dict, b: dict) -> pd.Series:
    """Per seed: value at ``b`` minus value at ``a`` (seeds with both only)."""
    d = by_seed(runs, values, **b) - by_seed(runs, values, **a)
    return d.dropna()


def final(runs: pd.DataFrame, key: str) -> pd.Series:
    return pd.Series(runs[key].to_numpy(float), index=runs["run_id"]) if key in runs else pd.Series(dtype=float)


# ---- claim 1: the critical batch from steps vs episodes ------------------------------------------------

CRITICAL_GAIN = 0.3  # the fixed gold target: step-0 held-out gold + 0.3


def run_steps(curves: pd.DataFrame, gain: float = CRITICAL_GAIN) -> pd.Series:
    """Each run's iterations to the gold target (``steps_to_target``), by run_id."""
    g = metric(curves, "eval/gold")
    return g.groupby("run_id").apply(lambda r: steps_to_target(r["step"], r["value"], gain), include_groups=False)


def fit_hyperbola(batch, steps) -> tuple[float, float]:
    """(S_min, E_min) of S = S_min + E_min / B, least squares on 1/B (McCandlish et al. 2018, eq. 2.11:
    (S/S_min - 1)(E/E_min - 1) = 1 with E = B S); NaN when fewer than 2 batch sizes reached the target or
    a fitted constant is not positive (the hyperbola is not identified)."""
    b, s = np.asarray(batch, dtype=float), np.asarray(steps, dtype=float)
    ok = np.isfinite(b) & np.isfinite(s)
    if np.unique(b[ok]).size < 2:
        return NaN, NaN
    e_min, s_min = np.polyfit(1.0 / b[ok], s[ok], 1)
    if s_min <= 0 or e_min <= 0:
        return NaN, NaN
    return float(s_min), float(e_min)


def b_simple(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    """Per seed: B_simple = mean tr(Sigma) / mean |G|^2 over its runs' first probes (ratio of means); NaN
    when the mean signal is not positive."""
    sig, sv = run_first(curves, "grad/signal"), run_first(curves, "grad/sample_variance")
    out = {}
    for seed, r in runs.groupby("seed"):
        num, den = r["run_id"].map(sv).mean(), r["run_id"].map(sig).mean()
        out[seed] = num / den if den > 0 else NaN
    return pd.Series(out, dtype=float)


def critical_batch_table(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Per seed: S_min, E_min, B_crit = E_min / S_min, B_simple, and log10(B_crit / B_simple)."""
    steps = run_steps(curves)
    rows = []
    simple = b_simple(runs, curves)
    for seed, r in runs.groupby("seed"):
        s_min, e_min = fit_hyperbola(r["rollout.batch_size"], r["run_id"].map(steps))
        crit = e_min / s_min if s_min == s_min else NaN
        bs = simple.get(seed, NaN)
        q = math.log10(crit / bs) if np.isfinite(crit) and np.isfinite(bs) and bs > 0 else NaN
        rows.append({"seed": seed, "S_min": s_min, "E_min": e_min, "B_crit": crit, "B_simple": bs, "log_ratio": q})
    return pd.DataFrame(rows)


def critical_vs_simple(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    t = critical_batch_table(runs, curves)
    return pd.Series(t["log_ratio"].to_numpy(float), index=t["seed"].to_numpy())


# ---- claim 2: batch-gradient variance falls as 1/B; a baseline lowers it --------------------------------


def variance_slope(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    """Per seed: slope of ln tr(Sigma)/B on ln B over the RLOO runs' first probes."""
    bv = run_first(curves, "grad/batch_variance")
    r = where(runs, advantage__baseline="rloo")
    out = {}
    for seed, g in r.groupby("seed"):
        x, y = np.log(g["rollout.batch_size"].to_numpy(float)), np.log(g["run_id"].map(bv).to_numpy(float))
        ok = np.isfinite(x) & np.isfinite(y)
        out[seed] = float(np.polyfit(x[ok], y[ok], 1)[0]) if np.unique(x[ok]).size >= 2 else NaN
    return pd.Series(out, dtype=float)


def baseline_log_ratio(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    """Per seed: mean over batch sizes of ln(tr(Sigma) with RLOO / tr(Sigma) without a baseline)."""
    sv = np.log(run_first(curves, "grad/sample_variance"))
    d = []
    for b in sorted(runs["rollout.batch_size"].unique()):
        d.append(paired(runs, sv, {"advantage__baseline": "none", "rollout__batch_size": b},
                        {"advantage__baseline": "rloo", "rollout__batch_size": b}))
    return pd.concat(d).groupby(level=0).mean() if d else pd.Series(dtype=float)


# ---- claims 3-7: paired differences between cells --------------------------------------------------

PPO = {"advantage__level": "token", "advantage__lam": 0.95}
PPO_LAM1 = {"advantage__level": "token", "advantage__lam": 1.0}
RLOO = {"advantage__level": "sequence"}
NON_INFERIORITY = 0.02  # gold: "at least as good" allows a loss this small


def rloo_minus_ppo(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    return paired(runs, final(runs, "eval/gold"), PPO, RLOO)


def lam1_minus_lam095(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    return paired(runs, final(runs, "eval/gold"), PPO, PPO_LAM1)


def peak_kl(curves: pd.DataFrame) -> pd.Series:
    """Each run's held-out KL at its highest held-out gold after step 0, by run_id."""
    g, k = metric(curves, "eval/gold"), metric(curves, "eval/kl")
    both = g.merge(k[["run_id", "step", "value"]], on=["run_id", "step"], suffixes=("", "_kl"))
    both = both[both["step"] > 0]
    return both.loc[both.groupby("run_id")["value"].idxmax()].set_index("run_id")["value_kl"]


def peak_kl_shift(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    """Per seed, at kl.coef 0: ln(KL at the gold peak, most RM pairs / fewest RM pairs)."""
    sizes = sorted(runs["model.rm_pairs"].unique())
    kl = np.log(peak_kl(curves).clip(lower=1e-6))
    return paired(runs, kl, {"model__rm_pairs": sizes[0], "kl__coef": 0.0}, {"model__rm_pairs": sizes[-1], "kl__coef": 0.0})


def best_gold(curves: pd.DataFrame) -> pd.Series:
    """Each run's highest held-out gold gain over its step-0 evaluation (the frontier's top)."""
    g = metric(curves, "eval/gold").groupby("run_id")["value"]
    return g.max() - g.first()


def penalty_frontier_gain(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    """Per seed, mean over RM sizes: best gold gain with the KL penalty minus without it."""
    coefs = sorted(runs["kl.coef"].unique())
    best = best_gold(curves)
    d = [paired(runs, best, {"model__rm_pairs": s, "kl__coef": coefs[0]}, {"model__rm_pairs": s, "kl__coef": coefs[-1]})
         for s in sorted(runs["model.rm_pairs"].unique())]
    return pd.concat(d).groupby(level=0).mean()


GRPO = {"advantage__baseline": "group_norm"}
DR_GRPO = {"advantage__baseline": "group_mean"}


def grpo_length_growth(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    return by_seed(runs, run_growth(curves, "response/length_low"), **GRPO).dropna()


def grpo_minus_dr_growth(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    return paired(runs, run_growth(curves, "response/length_low"), DR_GRPO, GRPO)


def _clip_pair(runs: pd.DataFrame, values: pd.Series) -> pd.Series:
    hi = sorted(runs["ppo.clip_eps_high"].unique())
    return paired(runs, values, {"ppo__clip_eps_high": hi[0]}, {"ppo__clip_eps_high": hi[-1]})


def entropy_gain(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    return _clip_pair(runs, run_mean(curves, "objective/entropy"))


def upper_clip_change(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    return _clip_pair(runs, run_mean(curves, "policy/clipfrac_high"))


def sequence_minus_token_clip(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    return paired(runs, run_mean(curves, "policy/clipfrac_avg"), {"ppo__ratio_level": "token"},
                  {"ppo__ratio_level": "sequence"})


def gspo_gold_gain(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    return by_seed(runs, gold_gain(curves), ppo__ratio_level="sequence").dropna()


# ---- the claims --------------------------------------------------------------------------------------

CLAIMS: dict[str, Claim] = {c.name: c for c in (
    Claim("critical-batch", "McCandlish et al. 2018, An Empirical Model of Large-Batch Training (arXiv 1812.06162)",
          "the gradient noise scale B_simple predicts the critical batch B_crit = E_min / S_min within an order "
          "of magnitude",
          (Part("log10(B_crit / B_simple): B_crit from the steps-vs-episodes hyperbola to held-out gold "
                f"+{CRITICAL_GAIN}, B_simple at the first probe", "Q", Rule(-1.0, 1.0), critical_vs_simple),),
          figure="critical-batch"),
    Claim("variance-1-over-b", "McCandlish et al. 2018 (arXiv 1812.06162), with policy-gradient variance theory",
          "the batch gradient's variance tr(Sigma)/B falls as 1/B, and a baseline lowers the per-completion noise",
          (Part("slope of ln tr(Sigma)/B on ln B (RLOO, first probe)", "slope", Rule(-1.25, -0.75), variance_slope),
           Part("ln(tr(Sigma) with RLOO / without a baseline), mean over B", "ln ratio", Rule(high=0.0),
                baseline_log_ratio))),
    Claim("rloo-vs-ppo", "Ahmadian et al. 2024, Back to Basics (arXiv 2402.14740)",
          "RLOO is at least as good as PPO at matched samples, and GAE lambda towards 1 is better there",
          (Part("final gold, RLOO - PPO (lambda 0.95), same episodes", "dGold", Rule(-NON_INFERIORITY), rloo_minus_ppo),
           Part("final gold, PPO lambda 1 - lambda 0.95", "dGold", Rule(0.0), lam1_minus_lam095))),
    Claim("overopt-rm-size", "Gao et al. 2022, Scaling Laws for Reward Model Overoptimization (arXiv 2210.10760)",
          "the gold peak moves to larger KL with more reward-model data; a KL penalty does not raise the gold "
          "frontier (it acts like early stopping)",
          (Part("ln(KL at the gold peak: most / fewest RM pairs), kl.coef 0", "ln ratio", Rule(0.0), peak_kl_shift),
           Part("best gold gain, KL penalty - none (mean over RM sizes)", "dGold", Rule(high=NON_INFERIORITY),
                penalty_frontier_gain))),
    Claim("dr-grpo-length", "Liu et al. 2025, Understanding R1-Zero-Like Training (Dr. GRPO, arXiv 2503.20783)",
          "with per-sequence length normalisation and std scaling, low-reward responses grow longer over "
          "training; with Dr. GRPO's aggregation and no std scaling they grow less",
          (Part("growth of low-reward response length over training, GRPO (tokens)", "dLen", Rule(0.0),
                grpo_length_growth),
           Part("that growth, GRPO - Dr. GRPO (tokens)", "ddLen", Rule(0.0), grpo_minus_dr_growth)),
          figure="dr-grpo-length"),
    Claim("clip-higher", "Yu et al. 2025, DAPO (arXiv 2503.14476)",
          "clip-higher (eps_high 0.28 vs 0.2) keeps the policy's entropy up",
          (Part("mean entropy over training, eps_high 0.28 - 0.2 (nats/token)", "dH", Rule(0.0), entropy_gain),
           Part("mean upper clip fraction, eps_high 0.28 - 0.2", "dClip", Rule(high=0.0), upper_clip_change)),
          figure="clip-higher"),
    Claim("gspo-clipping", "Zheng et al. 2025, Group Sequence Policy Optimization (arXiv 2507.18071)",
          "sequence-level ratios clip a far larger share yet learn",
          (Part("mean clip fraction, sequence - token ratio", "dClip", Rule(0.0), sequence_minus_token_clip),
           Part("held-out gold gain over training, sequence ratio", "gain", Rule(0.0), gspo_gold_gain))),
)}


def did_you_mean(name: str) -> str:
    """' (did you mean 'clip-higher'?)' for a near miss of a claim name, else ''."""
    import difflib

    close = difflib.get_close_matches(name, list(CLAIMS), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


SWEEP_PREFIX = "claim-"  # a claim's spec is named claim-<claim>; with --seeds N, claim-<claim>-s<N>


def for_sweep(name: str) -> Claim | None:
    """The claim whose spec (or its --seeds variant) named this sweep, else None."""
    if not name.startswith(SWEEP_PREFIX):
        return None
    rest = name[len(SWEEP_PREFIX):]
    return CLAIMS.get(rest) or CLAIMS.get(re.sub(r"-s\d+$", "", rest))


# ---- the spec's header: what --list prints -----------------------------------------------------------

_HEADER = re.compile(r"^#\s*(paper|claim|quantity|rule|cost|wall time):\s*(.*)$", re.IGNORECASE)


def header(path: Path) -> dict[str, str]:
    """The ``# key: value`` lines of a claim spec's header (paper, claim, quantity, rule, cost, wall time);
    a value continues on following ``#`` lines indented by two spaces or more."""
    out: dict[str, str] = {}
    last = None
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        m = _HEADER.match(line)
        if m:
            last = m.group(1).lower()
            out[last] = m.group(2).strip()
        elif last and re.match(r"^#\s{3,}\S", line):
            out[last] += " " + line[1:].strip()
        else:
            last = None
    return out


# ---- evaluation: a sweep -> rows of the claims table -------------------------------------------------


@dataclass(frozen=True)
class PartResult:
    claim: Claim
    part: Part
    values: pd.Series  # per seed
    verdict: Verdict


def evaluate(claim: Claim, runs: pd.DataFrame, curves: pd.DataFrame) -> list[PartResult]:
    """Measure every part of ``claim`` on the sweep's frames and give each its verdict."""
    out = []
    for p in claim.parts:
        try:
            values = p.measure(runs, curves)
        except (KeyError, ValueError, IndexError):  # a column or cell the sweep does not have: measured nothing
            values = pd.Series(dtype=float)
        out.append(PartResult(claim, p, values, verdict(values.to_numpy(float), p.rule)))
    return out


def table(results: list[PartResult], wall: dict[str, str] | None = None, numbers: bool = False) -> pd.DataFrame:
    """The claims table: claim, quantity, estimate [95%], rule, verdict (and the claim's verdict over its
    parts); ``wall`` adds a wall-time column (claim name -> text); ``numbers`` the estimate, its interval's
    ends and the seeds a resolution needs as numbers (for CSV)."""
    rows = []
    for r in results:
        parts = [x.verdict for x in results if x.claim.name == r.claim.name]
        iv = r.verdict.interval
        row = {
            "claim": r.claim.name,
            "paper": r.claim.paper.split(",")[0],
            "quantity": r.part.quantity,
            "estimate [95%]": iv.fmt(3) if np.isfinite(iv.low) else (fmt_number(iv.point) if np.isfinite(iv.point) else "n/a"),
            "seeds": iv.n,
            "rule": r.part.rule.text(r.part.symbol),
            "verdict": r.verdict.text(),
            "claim verdict": combined(parts),
        }
        if wall is not None:
            row["wall time"] = wall.get(r.claim.name, "")
        if numbers:
            row.update(estimate=iv.point, low=iv.low, high=iv.high, seeds_needed=r.verdict.seeds_needed)
        rows.append(row)
    return pd.DataFrame(rows)
