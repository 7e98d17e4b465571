"""A JournalStorage file cut mid-record (kill -9 mid-write, a full disk) is repaired, and what MLflow holds as
FINISHED is not run again: real sweeps, a real journal, a real MLflow store.
"""

from __future__ import annotations

import json

import pytest

from tests.faults.faultkit import assert_done_once, run, runs, write_spec

pytestmark = pytest.mark.slow


def _cut_mid_line(journal, nth_complete: int) -> bytes:
    """Cut the journal in the middle of the record that completes its ``nth_complete`` trial (the rest of the
    file is lost, as when the writer was killed there); returns the half record left at the end."""
    data = journal.read_bytes()
    offset, seen = 0, 0
    for line in data.splitlines(keepends=True):
        rec = json.loads(line)
        if rec.get("op_code") == 6 and rec.get("state") == 1:  # set_trial_state_values -> COMPLETE
            seen += 1
            if seen == nth_complete:
                cut = offset + len(line) // 2
                with open(journal, "r+b") as f:
                    f.truncate(cut)
                return line[: len(line) // 2]
        offset += len(line)
    raise AssertionError("no such record")


def test_a_journal_cut_mid_line_is_repaired_and_finished_runs_are_not_run_again(tmp_path):
    spec = write_spec(tmp_path, "torn")
    journal = tmp_path / "runs" / "sweeps" / "torn.journal"
    assert run(tmp_path, spec, "--workers", "1").returncode == 0
    before = {r.info.run_id for r in runs(tmp_path, "torn")[1]}
    assert len(before) == 4
    cut = _cut_mid_line(journal, 2)  # trial 1's COMPLETE record is half there, trials 2 and 3 look unrun
    assert not journal.read_bytes().endswith(b"\n")

    torn, listing = journal.read_bytes(), sorted(p.name for p in journal.parent.iterdir())
    dry = run(tmp_path, spec, "--dry-run")  # reads the journal, changes nothing: the run repairs it
    assert dry.returncode == 0 and "Traceback" not in dry.stderr, dry.stderr
    assert journal.read_bytes() == torn and sorted(p.name for p in journal.parent.iterdir()) == listing
    assert "study exists: 1/4 done; its last record is cut" in dry.stdout

    again = run(tmp_path, spec, "--workers", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    notes = [line for line in again.stderr.splitlines() if "record was cut" in line]
    assert len(notes) == 1, again.stderr
    copies = list(journal.parent.glob("torn.journal.torn-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == cut  # the cut bytes are kept
    assert "Traceback" not in again.stdout + again.stderr
    assert "already had a FINISHED run in MLflow" in again.stdout
    ts, _, children = assert_done_once(tmp_path, str(journal), "torn")
    assert {r.info.run_id for r in children} == before  # nothing trained twice: the runs are the same four
    assert sum("sweep.adopted" in t.user_attrs for t in ts if t.state.name == "COMPLETE") == 3


def test_journal_repair_and_healing_appends(tmp_path):
    """The repair itself, fast and without training: a cut tail, a record appended onto a cut one (what an
    old writer did), and a live storage whose next append heals a tail another process cut."""
    import optuna

    from harness.sweep.faults import repair_journal
    from harness.sweep.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = tmp_path / "j.journal"
    st = open_storage(str(path))
    study = optuna.create_study(study_name="s", storage=st)
    for i in range(3):
        study.enqueue_trial({"x": i})
    good = path.read_bytes()
    lines = good.splitlines(keepends=True)

    path.write_bytes(good + lines[-1][:20])  # (1) a cut tail
    assert len(open_storage(str(path)).get_all_trials(0)) == 3
    assert path.read_bytes() == good

    path.write_bytes(good + lines[-1][:20] + lines[-2] + lines[-1])  # (2) records appended onto the cut one
    assert len(open_storage(str(path)).get_all_trials(0)) == 3
    assert path.read_bytes() == good

    live = optuna.load_study(study_name="s", storage=open_storage(str(path)))
    path.write_bytes(good + lines[-1][:20])  # (3) another process died mid-write; this one appends next
    live.enqueue_trial({"x": 9})
    assert len(open_storage(str(path)).get_all_trials(0)) == 4
    assert all(json.loads(line) for line in path.read_bytes().splitlines())
    assert repair_journal(str(path)) is None  # healthy: nothing to do
    assert len(list(tmp_path.glob("j.journal.torn-*"))) == 3
