"""harness.sweep.study: study naming, the changed-spec refusal, slots, trial owners, storage URLs.

Fast: no torch, no training. Real Optuna journal storages in tmp_path.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.sweep.spec import load_spec
from tests.unit.sweep.specs import spec, write_spec

# ---- study naming and the changed-spec refusal (real journal storage) -------------------------------


def test_study_resolution_refuses_a_changed_spec(tmp_path):
    from harness.sweep.study import SweepRefused, open_storage, resolve_study, storage_url

    s1 = load_spec(write_spec(tmp_path / "s.yaml", spec()))
    url = storage_url(s1, None, tmp_path / "runs")
    assert url.endswith("runs/sweeps/t.journal")
    st = open_storage(url)
    study = resolve_study(s1, st, url)
    assert study.study_name == s1.study_name
    assert study.user_attrs["sweep.hash"] == s1.hash
    assert resolve_study(s1, st, url).study_name == s1.study_name  # resume: the same study

    s2 = load_spec(write_spec(tmp_path / "s.yaml", spec(seeds=[0, 1, 2])))
    with pytest.raises(SweepRefused) as e:
        resolve_study(s2, st, url)
    assert e.value.key == "name" and "--new" in e.value.problem and s1.study_name in e.value.problem
    fresh = resolve_study(s2, st, url, new=True)
    assert fresh.study_name == s2.study_name
    assert resolve_study(s2, st, url).study_name == s2.study_name  # the newest study is the one resumed
    again = resolve_study(s2, st, url, new=True)
    assert again.study_name == f"{s2.study_name}-r2"


def test_owner_alive_uses_pid_and_start_time():
    from harness.sweep.study import HOST, owner_alive, owner_tag, parse_owner, process_owner

    me = process_owner()
    assert owner_alive(me) is True
    assert owner_alive({**me, "start": me["start"] - 50}) is False  # pid reused
    assert parse_owner(owner_tag(me)) == me
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = process_owner(p.pid)
    p.wait()
    assert owner_alive(dead) is False
    assert owner_alive({"host": "elsewhere", "pid": 1, "start": 0}) is None
    assert dead["host"] == HOST


def test_storage_urls_are_redacted():
    from harness.urls import redact

    assert redact("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("postgresql://me@db/x") == "postgresql://me@db/x"
