"""MLflow runs of one sweep -> tidy pandas frames (through ``harness.tracking.Store`` only).

A sweep is found from an ablation spec (its ``name`` is the experiment), an experiment name,
or a parent run id. Layout written by the sweep runner (the contract read here):

- parent run: tags ``sweep.role=parent``, ``sweep.name``, ``sweep.hash``, ``sweep.axes`` (JSON list
  of swept dotted keys);
- child run per (cell, seed): tags ``mlflow.parentRunId``, ``sweep.role=child``, ``axis.<key>``,
  ``seed``, ``impl``, ``task``; params = the flattened RunConfig; step = PPO iteration.

Runs of a plain ``ppo-harness train`` (no parent) work too: the axes are then the params that
differ between the finished runs.

Frames:

- ``runs``: one row per FINISHED child run: ``run_id``, ``seed``, ``impl``, ``task``, every axis (typed
  values), the context keys below, ``advantage`` (``token`` or ``sequence/<baseline>``:
  ``reports.labels.advantage_label``), ``cell``
  (the axes except seed, as text: the bootstrap stratum), and the final value of every metric
  (MLflow's latest value = the value at the last logged step; eval metrics are logged at the
  last iteration, so this is the last evaluation).
- ``curves``: long format, one row per (run, metric, step): ``run_id``, id columns, ``step``,
  ``episodes`` (completions seen at that step), ``metric``, ``value``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from harness.errors import InputError, first_line
from harness.schema import Tag
from harness.tracking import DEFAULT_EXPERIMENT, Store
from reports.labels import ADVANTAGE, ADVANTAGE_PARTS, advantage_label


class ReportError(InputError):
    """A report cannot be built; the message is one line saying why."""


# Params always carried into ``runs`` (even when not swept): figures group by them.
CONTEXT_KEYS = (*ADVANTAGE_PARTS, "rollout.batch_size", "ppo.clip_eps", "kl.coef", "eval.prompts")
# Metrics fetched as full histories for curves (only those a run actually logged).
CURVE_KEYS = (
    "eval/gold",
    "eval/gold_se",  # the evaluation noise the over-optimisation test reads (reports.findings)
    "eval/proxy",
    "eval/kl",
    "response/length",
    "response/length_low",  # Dr. GRPO's length bias (reports.claims)
    "policy/clipfrac_avg",
    "policy/clipfrac_high",
    "policy/approxkl_avg",
    "objective/entropy",
    # gradient-noise probe (harness/ppo/variance.py): a run's noise reading is the mean over all
    # its probes (reports.effects.run_noise), never the last probe alone
    "grad/signal",
    "grad/sample_variance",
    "grad/batch_variance",
    # logged once, at the evaluation where over-optimisation started: its step places the onset
    # on the run's curves (reports.overopt.onset_table)
    "eval/overopt_onset_kl",
    # a run's throughput is the mean over its iterations (``mean_throughput``), never the last one
    "perf/tokens_per_s",
)
ID_COLUMNS = ("run_id", "seed", "impl", "task", ADVANTAGE, "cell")
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag naming a nested run's parent
AXIS_TAG = "axis."  # child runs: tag axis.<key> = the value of swept key <key>


@dataclass
class Sweep:
    """Everything a report needs about one sweep."""

    name: str  # MLflow experiment name (= the ablation spec's name)
    parent_run_id: str | None  # where report artifacts are logged; None for plain runs
    axes: list[str]  # swept dotted keys, in the spec's order
    runs: pd.DataFrame
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    excluded: dict[str, int] = field(default_factory=dict)  # status -> child runs left out
    lost: pd.DataFrame = field(default_factory=pd.DataFrame)  # those child runs: axes, cell, status
    where: str = ""  # the store, for messages

    @property
    def factors(self) -> list[str]:
        """Axes with at least two levels among the finished runs (seed is never a factor).

        ``advantage.level`` and ``advantage.baseline`` swept together (a zip group such as
        token/rloo, sequence/none, sequence/rloo, ...; or crossed, where token level ignores the
        baseline) are one factor, ``advantage`` ("token", "sequence/<baseline>"): as two factors
        the baseline's "rloo" level would pool token-level runs with sequence-level RLOO ones.
        """
        out = [a for a in self.axes if a in self.runs and self.runs[a].nunique(dropna=True) >= 2]
        linked = [a for a in ADVANTAGE_PARTS if a in out]
        if "advantage.level" in linked and len(linked) >= 2 and ADVANTAGE in self.runs:
            at = min(out.index(a) for a in linked)
            out = [a for a in out if a not in linked]
            out.insert(at, ADVANTAGE)
        return [a for a in out if a not in self.moves_with]

    @property
    def moves_with(self) -> dict[str, str]:
        """Axes that move one-to-one with an earlier axis (a zip group such as batch size with
        iterations): {follower: leader}. The pair is one factor, named by the leader: as two
        factors neither would have a matched cell (they never vary apart).
        """
        out = [a for a in self.axes if a in self.runs and self.runs[a].nunique(dropna=True) >= 2]
        follows: dict[str, str] = {}
        for i, b in enumerate(out):
            for a in out[:i]:
                if a in follows:
                    continue
                pair = self.runs[[a, b]].dropna().astype(str)
                if len(pair) and (pair.groupby(a)[b].nunique() == 1).all() and (pair.groupby(b)[a].nunique() == 1).all():
                    follows[b] = a
                    break
        return follows


# ---- resolving the sweep ------------------------------------------------------------------------


def spec_name(spec: str | Path) -> str:
    """The ``name`` field of an ablation spec (nothing else of the spec is read)."""
    path = Path(spec)
    if not path.is_file():
        raise ReportError(f"ablation spec '{spec}' not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ReportError(f"ablation spec '{spec}' is not valid YAML: {first_line(e)}") from None
    name = data.get("name") if isinstance(data, dict) else None
    if not name or not isinstance(name, str):
        raise ReportError(f"ablation spec '{spec}' has no 'name' field")
    return name


def collect(
    store: Store,
    spec: str | Path | None = None,
    experiment: str | None = None,
    parent_run: str | None = None,
    curve_keys: tuple[str, ...] = CURVE_KEYS,
) -> Sweep:
    """Find the sweep (exactly one of spec / experiment / parent_run) and read its runs and curves."""
    given = [x for x in (spec, experiment, parent_run) if x]
    if len(given) != 1:
        raise ReportError("give exactly one of: an ablation spec, --experiment NAME, --parent-run ID")
    if parent_run:
        info = store.run_summary(parent_run)
        if info is None:
            raise ReportError(f"no MLflow run with id '{parent_run}' in {store.where}")
        name = info["experiment"]
    else:
        name = spec_name(spec) if spec else experiment
    frame = store.search_runs(experiments=[name])
    if frame.empty:
        if _no_experiment(store, name):
            raise ReportError(f"no MLflow experiment '{name}' in {store.where}")
        raise ReportError(f"experiment '{name}' has no runs in {store.where}")
    frame = frame.copy()
    parents, children = _split(frame, parent_run)
    if parent_run and parent_run not in set(frame["run_id"]):
        raise ReportError(f"run '{parent_run}' is not in experiment '{name}'")
    if children.empty:
        what = f"parent run '{parent_run}'" if parent_run else f"experiment '{name}'"
        raise ReportError(f"{what} has no child runs in {store.where}")
    parent_id = parents["run_id"].iloc[0] if not parents.empty else None
    status = children["status"].astype(str)
    excluded = status[status != "FINISHED"].value_counts().to_dict()
    done = children[status == "FINISHED"]
    if done.empty:
        counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(excluded.items()))
        raise ReportError(f"sweep '{name}' has no finished runs ({counts}) in {store.where}")
    axes = _axes(parents, done)
    runs = _runs_frame(done, axes)
    sweep = Sweep(
        name, parent_id, axes, runs, excluded={k: int(v) for k, v in excluded.items()}, where=store.where
    )
    not_done = children[status != "FINISHED"]
    if len(not_done):
        lost = _runs_frame(not_done, axes)
        sweep.lost = lost.assign(status=lost["run_id"].map(dict(zip(not_done["run_id"], status[status != "FINISHED"], strict=True))))
    sweep.curves = curves_frame(store, sweep.runs, axes, curve_keys)
    sweep.runs = mean_throughput(sweep.runs, sweep.curves)
    return sweep


def mean_throughput(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``perf/tokens_per_s`` replaced by each run's mean over its iterations.

    The last iteration's value alone swings with the machine's load at that moment (a loaded
    machine gave 0.29-2.83x the run's mean); the mean is the run's throughput. Runs without a
    history keep their value.
    """
    key = "perf/tokens_per_s"
    if key not in runs or curves is None or curves.empty or "metric" not in curves:
        return runs
    c = curves[(curves["metric"] == key) & np.isfinite(curves["value"])]
    if c.empty:
        return runs
    out = runs.copy()
    means = out["run_id"].map(c.groupby("run_id")["value"].mean())
    out[key] = means.where(means.notna(), out[key]).astype(float)
    return out


def _no_experiment(store: Store, name: str) -> bool:
    return store.experiment_id(name, create=False) is None


def _tag(frame: pd.DataFrame, key: str) -> pd.Series:
    col = f"tags.{key}"
    return frame[col] if col in frame else pd.Series([None] * len(frame), index=frame.index, dtype=object)


def _split(frame: pd.DataFrame, parent_run: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(parent rows, newest first; child rows) of one experiment."""
    role = _tag(frame, Tag.SWEEP_ROLE)
    parent_of = _tag(frame, PARENT_RUN_TAG)
    if parent_run:
        return frame[frame["run_id"] == parent_run], frame[parent_of == parent_run]
    parents = frame[role == "parent"].sort_values("start_time", ascending=False)
    if parents.empty:  # plain `ppo-harness train` runs: every run is a data point
        return parents, frame[parent_of.isna()]
    # One parent per sweep; if a resume left several, keep those with the newest one's hash.
    newest_hash = _tag(parents, Tag.SWEEP_HASH).iloc[0]
    same = (
        parents[_tag(parents, Tag.SWEEP_HASH) == newest_hash] if newest_hash is not None else parents.iloc[:1]
    )
    return same, frame[parent_of.isin(set(same["run_id"])) & (role != "parent")]


def _axes(parents: pd.DataFrame, children: pd.DataFrame) -> list[str]:
    raw = _tag(parents, Tag.SWEEP_AXES).dropna()
    if not raw.empty:
        try:
            axes = json.loads(raw.iloc[0])
        except (TypeError, ValueError):
            raise ReportError(f"parent run tag {Tag.SWEEP_AXES} is not a JSON list: {raw.iloc[0]!r}") from None
        return [str(a) for a in axes if str(a) != "seed"]
    # No parent (plain runs): the params that differ between runs.
    params = [c for c in children.columns if c.startswith("params.")]
    varying = [c[len("params.") :] for c in params if children[c].nunique(dropna=True) >= 2]
    return sorted(k for k in varying if k != "seed")


def parse_value(text):
    """A tag / param string back to int, float or bool where it is one ('0.2' -> 0.2)."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return None
    if not isinstance(text, str):
        return text
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return v if isinstance(v, int | float | bool) and not isinstance(v, str) else text


def _column(values: pd.Series) -> pd.Series:
    """Typed values: numeric when every present value is a number, else text."""
    parsed = values.map(parse_value)
    present = parsed.dropna()
    if len(present) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pd.to_numeric(parsed)
    return parsed.map(lambda v: None if v is None else str(v)).astype(object)


def _runs_frame(done: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    def first(*cols: str) -> pd.Series:
        out = pd.Series([None] * len(done), index=done.index, dtype=object)
        for c in cols:
            if c in done:
                out = out.where(out.notna(), done[c])
        return out

    runs = pd.DataFrame({"run_id": done["run_id"].to_numpy()}, index=done.index)
    runs["seed"] = pd.to_numeric(first(f"tags.{Tag.SEED}", "params.seed"), errors="coerce").astype("Int64")
    runs["impl"] = first(f"tags.{Tag.IMPL}", "params.impl").fillna("custom").astype(str)
    runs["task"] = first(f"tags.{Tag.TASK}", "params.task.name").fillna("").astype(str)
    runs["gold_source"] = first(f"tags.{Tag.GOLD_SOURCE}").fillna("").astype(str)
    for key in dict.fromkeys([*axes, *CONTEXT_KEYS]):
        if key in ("impl", "seed"):
            continue
        vals = first(f"tags.{AXIS_TAG}{key}", f"params.{key}")
        if vals.notna().any():
            runs[key] = _column(vals)
    if "impl" in axes:
        runs["impl"] = first(f"tags.{AXIS_TAG}impl", "params.impl").fillna("custom").astype(str)
    runs[ADVANTAGE] = advantage_label(runs)
    cell_keys = [a for a in axes if a in runs]
    runs["cell"] = [", ".join(f"{k}={r[k]}" for k in cell_keys) for _, r in runs[cell_keys].iterrows()]
    for c in done.columns:
        if c.startswith("metrics."):
            runs[c[len("metrics.") :]] = pd.to_numeric(done[c], errors="coerce")
    runs["start_time"] = done["start_time"].to_numpy() if "start_time" in done else pd.NaT
    return runs.sort_values(["cell", "seed"]).reset_index(drop=True)


def curves_frame(
    store: Store, runs: pd.DataFrame, axes: list[str], keys: tuple[str, ...] = CURVE_KEYS, workers: int = 8
) -> pd.DataFrame:
    """Long-format histories of ``keys`` for every run, with ``episodes`` joined on step.

    Histories are read concurrently (one MLflow call per run and key, I/O bound).
    """
    id_cols = [c for c in dict.fromkeys([*ID_COLUMNS, *axes, *CONTEXT_KEYS]) if c in runs]
    cols = [*id_cols, "step", "episodes", "metric", "value"]
    jobs = []
    for run in runs.to_dict("records"):
        logged = [k for k in keys if k in run and np.isfinite(run[k])]
        if logged:
            jobs += [(run["run_id"], k) for k in ["episodes", *logged]]
    if not jobs:
        return pd.DataFrame(columns=cols)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        histories = dict(zip(jobs, pool.map(lambda job: store.metric_history(*job), jobs), strict=True))
    batch = runs.set_index("run_id")["rollout.batch_size"] if "rollout.batch_size" in runs else None
    rid, step, metric, value = [], [], [], []
    for (run_id, key), hist in histories.items():
        if key == "episodes" or not hist:
            continue
        rid += [run_id] * len(hist)
        metric += [key] * len(hist)
        step += [s for s, _ in hist]
        value += [v for _, v in hist]
    long = pd.DataFrame(
        {
            "run_id": rid,
            "step": np.asarray(step, dtype=int),
            "metric": metric,
            "value": np.asarray(value, dtype=float),
        }
    )
    ep_rows = [(r, s, v) for (r, k), h in histories.items() if k == "episodes" for s, v in h]
    episodes = pd.DataFrame(ep_rows, columns=["run_id", "step", "episodes"]).drop_duplicates(
        ["run_id", "step"], keep="last"
    )
    long = long.merge(episodes, on=["run_id", "step"], how="left")
    if batch is not None and long["episodes"].isna().any():  # no `episodes` metric: batch size x step
        fallback = long["run_id"].map(pd.to_numeric(batch, errors="coerce")) * long["step"]
        long["episodes"] = long["episodes"].fillna(fallback)
    # MLflow may hold several values for one step (a retried log): keep the last.
    long = long.drop_duplicates(["run_id", "metric", "step"], keep="last")
    out = long.merge(runs[id_cols], on="run_id", how="left")[cols]
    return out.sort_values(["run_id", "metric", "step"], kind="stable").reset_index(drop=True)


__all__ = [
    "DEFAULT_EXPERIMENT",
    "ReportError",
    "Sweep",
    "collect",
    "curves_frame",
    "parse_value",
    "spec_name",
]
