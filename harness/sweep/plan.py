"""The dry run: what a sweep would do (``ppo-harness sweep SPEC --dry-run``), creating nothing.

Prints the spec and its hash, the study (and whether this spec grows an earlier one), cells x
seeds, how many runs are new, the storage and what it already holds, an estimate of the time from
the runs already finished, the MLflow store, the workers, the base overrides and every cell (with
the seeds it has done) or the search ranges.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from harness.schema import Attr
from harness.sweep.faults import torn_tail
from harness.sweep.spec import AblationSpec, cell_label, fmt_value, growth_problem
from harness.sweep.study import is_rdb, peek_journal, quiet_optuna, slot_state, slots
from harness.urls import redact


def plan_shape(spec: AblationSpec) -> str:
    """``16 cells x 2 seeds`` (grid) or ``tpe: 20 configurations x 3 seeds``."""
    if spec.sampler == "grid":
        return f"{len(spec.cells)} cells x {len(spec.seeds)} seeds"
    return f"{spec.sampler}: {spec.n_trials} configurations x {len(spec.seeds)} seeds"


@dataclass
class Held:
    """What the storage already holds for this spec (a dry run's view)."""

    state: str  # one phrase for the storage line
    study: str | None = None  # the study a run would use (None: a new one)
    done: dict[str, int] = field(default_factory=dict)  # cell id -> seeds done
    old_cells: set[str] | None = None  # a grown study: the cells of its spec so far
    seconds: list[float] = field(default_factory=list)  # wall time of each finished run


def print_plan(spec: AblationSpec, url: str, tracking_uri, runs_dir, workers: int, threads: int):
    """What the sweep would do; opens nothing that does not exist yet."""
    held = _held(spec, url)
    done = sum(held.done.values())
    print(f"spec      {spec.path}  (hash {spec.hash[:8]})")
    if spec.description:
        print(f"          {spec.description.strip().splitlines()[0]}")
    print(f"study     {held.study or spec.study_name}  sampler {spec.sampler}, {spec.objective.direction} "
          f"final {spec.objective.metric}" + ("  (MedianPruner)" if spec.prune else ""))
    print(f"runs      {plan_shape(spec)} = {spec.n_runs} runs; {spec.n_runs - done} new (not done yet)"
          + (f", {done} done kept" if done else ""))
    print(f"storage   {redact(url)}  ({held.state})")
    print(f"time      {_estimate(held, spec.n_runs - done, workers)}")
    print(f"tracking  {redact(tracking_uri) if tracking_uri else Path(runs_dir).resolve() / 'mlflow.db'}  "
          f"experiment '{spec.name}'")
    print(f"workers   {workers} process(es) x {threads} torch thread(s)")
    if spec.base:
        print("base      " + ", ".join(f"{k}={fmt_value(v)}" for k, v in spec.base.items()))
    if spec.sampler == "grid":
        print(f"{len(spec.cells)} cells (x seeds {list(spec.seeds)}; seeds done of each):")
        for i, c in enumerate(spec.cells):
            new = "  new" if held.old_cells is not None and c.id not in held.old_cells else ""
            print(f"  {i + 1:>3}  {c.id}  {held.done.get(c.id, 0)}/{len(spec.seeds)}  {cell_label(c.values)}{new}")
    else:
        print(f"search (x seeds {list(spec.seeds)}):")
        for s in spec.search:
            print(f"  {s.key} in {s.describe()}")


def _estimate(held: Held, todo: int, workers: int) -> str:
    if todo == 0:
        return "nothing to run"
    if not held.seconds:
        return "no estimate (no finished run to time yet)"
    per = statistics.fmean(held.seconds)
    total = todo * per / max(1, workers)
    return (f"about {_fmt(total)} for {todo} run(s) on {workers} worker(s) "
            f"(mean of {len(held.seconds)} finished run(s): {_fmt(per)} each; worker start-up not counted)")


def _fmt(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else (f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s")


def _held(spec: AblationSpec, url: str) -> Held:
    if is_rdb(url):
        return Held("RDB, not opened in a dry run")
    if not Path(url).exists():
        return Held("journal file, created on the first run")
    quiet_optuna()
    held = _journal_held(spec, url)
    if torn_tail(url):
        held.state += ("; its last record is cut (a process killed mid-write): a run truncates it first, keeping "
                       "the cut bytes")
    return held


def _journal_held(spec: AblationSpec, url: str) -> Held:
    try:
        st = peek_journal(url)  # read only: a dry run creates, locks, cuts and appends nothing
    except ValueError:  # a damaged record before the last one (NotAJournal was refused before the plan)
        return Held("journal file with a damaged record; a run cuts it, keeping the cut bytes")
    mine = [s for s in st.get_all_studies() if s.user_attrs.get(Attr.NAME) == spec.name]
    latest = max(mine, key=lambda s: s.user_attrs.get(Attr.CREATED, 0.0), default=None)
    if latest is None:
        return Held("journal file, no study yet")
    grows = latest.user_attrs.get(Attr.HASH) != spec.hash
    shape = latest.user_attrs.get(Attr.SHAPE)
    if grows and (shape is None or growth_problem(shape, spec) is not None):
        return Held(f"journal file; the spec changed since {latest.study_name}: a run needs --new")
    trials = st.get_all_trials(st.get_study_id_from_name(latest.study_name), deepcopy=False)
    held = Held("", latest.study_name, old_cells=set(shape["cells"]) if grows else None)
    for (cid, seed), ts in slots(trials).items():
        if seed in spec.seeds and slot_state(ts) in ("done", "pruned"):
            held.done[cid] = held.done.get(cid, 0) + 1
    held.seconds = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.state.name == "COMPLETE" and t.datetime_start and t.datetime_complete
    ]
    n = sum(held.done.values())
    held.state = (f"journal file; this spec grows study {latest.study_name} (runs done are kept): {n} done"
                  if grows else f"journal file, study exists: {n}/{spec.n_runs} done")
    return held
