"""The dry run: what a sweep would do (``ppo-harness sweep SPEC --dry-run``), creating nothing.

Prints the spec and its hash, the study, cells x seeds, the storage and what it already holds,
the MLflow store, the workers, the base overrides and the first cells (or the search ranges).
"""

from __future__ import annotations

from pathlib import Path

from harness.schema import Attr
from harness.sweep.faults import torn_tail
from harness.sweep.spec import AblationSpec, cell_label, fmt_value
from harness.sweep.study import is_rdb, peek_journal, quiet_optuna, slot_state, slots
from harness.urls import redact


def plan_shape(spec: AblationSpec) -> str:
    """``16 cells x 2 seeds`` (grid) or ``tpe: 20 configurations x 3 seeds``."""
    if spec.sampler == "grid":
        return f"{len(spec.cells)} cells x {len(spec.seeds)} seeds"
    return f"{spec.sampler}: {spec.n_trials} configurations x {len(spec.seeds)} seeds"


def print_plan(spec: AblationSpec, url: str, tracking_uri, runs_dir, workers: int, threads: int, first: int = 8):
    """What the sweep would do; opens nothing that does not exist yet."""
    print(f"spec      {spec.path}  (hash {spec.hash[:8]})")
    if spec.description:
        print(f"          {spec.description.strip().splitlines()[0]}")
    print(f"study     {spec.study_name}  sampler {spec.sampler}, {spec.objective.direction} "
          f"final {spec.objective.metric}" + ("  (MedianPruner)" if spec.prune else ""))
    print(f"runs      {plan_shape(spec)} = {spec.n_runs} runs")
    print(f"storage   {redact(url)}  ({_storage_state(spec, url)})")
    print(f"tracking  {redact(tracking_uri) if tracking_uri else Path(runs_dir).resolve() / 'mlflow.db'}  "
          f"experiment '{spec.name}'")
    print(f"workers   {workers} process(es) x {threads} torch thread(s)")
    if spec.base:
        print("base      " + ", ".join(f"{k}={fmt_value(v)}" for k, v in spec.base.items()))
    if spec.sampler == "grid":
        print(f"first {min(first, len(spec.cells))} of {len(spec.cells)} cells (x seeds {list(spec.seeds)}):")
        for i, c in enumerate(spec.cells[:first]):
            print(f"  {i + 1:>3}  {c.id}  {cell_label(c.values)}")
    else:
        print(f"search (x seeds {list(spec.seeds)}):")
        for s in spec.search:
            print(f"  {s.key} in {s.describe()}")


def _storage_state(spec: AblationSpec, url: str) -> str:
    if is_rdb(url):
        return "RDB, not opened in a dry run"
    if not Path(url).exists():
        return "journal file, created on the first run"
    quiet_optuna()
    return _journal_state(spec, url) + ("; its last record is cut (a process killed mid-write): a run truncates "
                                        "it first, keeping the cut bytes" if torn_tail(url) else "")


def _journal_state(spec: AblationSpec, url: str) -> str:
    try:
        st = peek_journal(url)  # read only: a dry run creates, locks, cuts and appends nothing
    except ValueError:  # a damaged record before the last one (NotAJournal was refused before the plan)
        return "journal file with a damaged record; a run cuts it, keeping the cut bytes"
    for s in st.get_all_studies():
        if s.study_name == spec.study_name:
            sid = st.get_study_id_from_name(s.study_name)
            table = slots(st.get_all_trials(sid, deepcopy=False))
            done = sum(slot_state(ts) in ("done", "pruned") for ts in table.values())
            return f"journal file, study exists: {done}/{spec.n_runs} done"
    others = [s.study_name for s in st.get_all_studies() if s.user_attrs.get(Attr.NAME) == spec.name]
    if others:
        return f"journal file; the spec changed since {others[-1]}: a run needs --new"
    return "journal file, no study yet"
