"""A journal is recognised by its records before anything touches it: a user's JSON-lines or CSV file,
a symbolic link or a FIFO given as the journal is refused (NotAJournal / SweepRefused, one line) and
left byte for byte as it was, with no ``.torn-*`` copy and no lock beside it; a dry run's look at a
real journal (``peek_journal``) changes nothing, not even a cut last record."""

from __future__ import annotations

import os

import optuna
import pytest

from harness.sweep.faults import NotAJournal, check_journal, journal_backend, repair_journal
from harness.sweep.study import SweepRefused, open_storage, peek_journal

optuna.logging.set_verbosity(optuna.logging.WARNING)

USER_FILES = {
    "data.jsonl": b'{"prompt": "a"}\n{"prompt": "b"}',  # first line JSON, last line "cut": the old repair's prey
    "table.csv": b"prompt,completion\na,b\n",
    "ops.jsonl": b'{"op_code": 0}\n',  # JSON with an op_code, yet not a create-study record
}


def _state(folder):
    return {p.name: (p.read_bytes() if p.is_file() and not p.is_symlink() else os.readlink(p) if p.is_symlink()
                     else None, os.lstat(p).st_mode) for p in folder.iterdir()}


@pytest.fixture
def user_files(tmp_path):
    for name, body in USER_FILES.items():
        (tmp_path / name).write_bytes(body)
        os.chmod(tmp_path / name, 0o640)
    os.symlink("data.jsonl", tmp_path / "link.journal")
    os.mkfifo(tmp_path / "fifo.journal")
    return tmp_path


@pytest.mark.parametrize("name, words", [
    ("data.jsonl", "not an Optuna journal"), ("table.csv", "not an Optuna journal"),
    ("ops.jsonl", "not an Optuna journal"), ("link.journal", "symbolic link"), ("fifo.journal", "not a regular file"),
])  # fmt: skip
def test_a_file_the_harness_did_not_create_is_refused_and_left_alone(name, words, user_files):
    before = _state(user_files)
    path = str(user_files / name)
    with pytest.raises(NotAJournal, match=words):
        check_journal(path)
    with pytest.raises(SweepRefused) as e:
        open_storage(path)
    assert words in e.value.problem and "\n" not in str(e.value)
    for fn in (repair_journal, lambda p: repair_journal(p, full=True), peek_journal, journal_backend):
        with pytest.raises(NotAJournal):
            fn(path)
    assert _state(user_files) == before  # bytes, modes, link target: no .torn-*, no .lock


def test_a_real_journal_a_cut_one_and_an_empty_file_are_journals(tmp_path):
    path = tmp_path / "j.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(str(path)))
    study.enqueue_trial({"x": 1})
    check_journal(str(path))
    first = path.read_bytes().splitlines(keepends=True)[0]
    (tmp_path / "cut.journal").write_bytes(first[:30])  # the only record, cut by a kill
    check_journal(str(tmp_path / "cut.journal"))
    (tmp_path / "empty.journal").write_bytes(b"")
    check_journal(str(tmp_path / "empty.journal"))
    check_journal(str(tmp_path / "missing.journal"))


def test_a_dry_runs_look_changes_nothing_even_a_cut_tail(tmp_path):
    path = tmp_path / "j.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(str(path)))
    for i in range(3):
        study.enqueue_trial({"x": i})
    good = path.read_bytes()
    path.write_bytes(good + good.splitlines(keepends=True)[-1][:20])
    torn = _state(tmp_path)
    st = peek_journal(str(path))
    assert len(st.get_all_trials(0)) == 3  # the cut record skipped, as Optuna's reader skips it
    with pytest.raises(RuntimeError):
        st._backend.append_logs([{"op_code": 1, "worker_id": "w", "study_id": 0}])
    assert _state(tmp_path) == torn


def test_writes_never_follow_a_link_swapped_in_after_the_check(tmp_path):
    """The healing backend appends and truncates through O_NOFOLLOW: a link put in the journal's place
    later makes the write fail (ELOOP) instead of landing in the link's target."""
    path = tmp_path / "j.journal"
    st = open_storage(str(path))
    optuna.create_study(study_name="s", storage=st)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"user data\n")
    os.replace(path, tmp_path / "moved.journal")
    os.symlink(victim, path)
    with pytest.raises(OSError):
        st._backend.append_logs([{"op_code": 1, "worker_id": "w", "study_id": 0}])
    assert victim.read_bytes() == b"user data\n"
