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

    s2 = load_spec(write_spec(tmp_path / "s.yaml", spec(base={**spec()["base"], "ppo.clip_eps": 0.3})))
    with pytest.raises(SweepRefused) as e:
        resolve_study(s2, st, url)
    assert e.value.key == "name" and "--new" in e.value.problem and s1.study_name in e.value.problem
    assert "shared settings changed" in e.value.problem
    fresh = resolve_study(s2, st, url, new=True)
    assert fresh.study_name == s2.study_name
    assert resolve_study(s2, st, url).study_name == s2.study_name  # the newest study is the one resumed
    again = resolve_study(s2, st, url, new=True)
    assert again.study_name == f"{s2.study_name}-r2"


def test_a_spec_that_only_adds_seeds_cells_or_levels_grows_the_same_study(tmp_path):
    from harness.sweep.study import SweepRefused, grown_from, open_storage, resolve_study, storage_url

    s1 = load_spec(write_spec(tmp_path / "s.yaml", spec(seeds=[0])))
    url = storage_url(s1, None, tmp_path / "runs")
    st = open_storage(url)
    first = resolve_study(s1, st, url)
    assert grown_from(first) == []
    s2 = load_spec(write_spec(tmp_path / "s.yaml", spec(seeds=[0, 1])))  # a seed more
    grown = resolve_study(s2, st, url)
    assert grown.study_name == s1.study_name and grown.user_attrs["sweep.hash"] == s2.hash
    assert [h["hash"] for h in grown.user_attrs["sweep.specs"]] == [s1.hash, s2.hash]
    assert [h["hash"] for h in grown_from(grown)] == [s1.hash]
    s3 = load_spec(write_spec(tmp_path / "s.yaml", spec(seeds=[0, 1], grid={"kl.coef": [0.0, 0.2, 0.5]})))  # a level
    assert resolve_study(s3, st, url).study_name == s1.study_name
    assert resolve_study(s3, st, url).user_attrs["sweep.shape"]["cells"] == [c.id for c in s3.cells]
    for changed, words in (
        (spec(seeds=[0, 1], grid={"kl.coef": [0.0, 0.5]}), "cell(s) of the old spec are gone or changed"),
        (spec(seeds=[1], grid={"kl.coef": [0.0, 0.2, 0.5]}), "seed(s) [0] were dropped"),
        (spec(seeds=[0, 1], grid={"kl.coef": [0.0, 0.2, 0.5], "ppo.clip_eps": [0.2, 0.3]}), "shared settings"),
    ):
        with pytest.raises(SweepRefused) as e:
            resolve_study(load_spec(write_spec(tmp_path / "s.yaml", changed)), st, url)
        assert words in e.value.problem and "--new" in e.value.problem, e.value.problem
    assert len(st.get_all_studies()) == 1


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
