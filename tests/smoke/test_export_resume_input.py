"""Bad input to ``export`` and ``train --resume``: one line naming the option or the run, exit 2, nothing written."""

from __future__ import annotations

from harness.tracking import Store
from tests.conftest import run_cli


def _one_line(r, *needles: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (r.returncode, r.stderr)
    assert all(n in lines[0] for n in needles), lines[0]


def test_export_and_resume_refuse_bad_input_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    _one_line(run_cli("export", "abc", str(tmp_path / "out"), "--runs-dir", str(runs), cwd=tmp_path),
              "--runs-dir", "no runs stored")
    assert not runs.exists() and not (tmp_path / "out").exists()
    Store(runs)  # an empty store
    _one_line(run_cli("export", "a" * 32, str(tmp_path / "out"), "--runs-dir", str(runs), cwd=tmp_path),
              "a" * 32, "no saved policy and no checkpoint")
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    _one_line(run_cli("export", "a" * 32, str(tmp_path / "full"), "--runs-dir", str(runs), cwd=tmp_path),
              "DEST", "not empty")
    _one_line(run_cli("export", "../x", str(tmp_path / "out"), "--runs-dir", str(runs), cwd=tmp_path), "RUN_ID")
    _one_line(run_cli("train", "--resume", "a" * 32, "--set", "seed=1", "--runs-dir", str(runs), cwd=tmp_path),
              "--resume", "cannot be given with it")
    _one_line(run_cli("train", "--resume", "a" * 32, "--runs-dir", str(runs), cwd=tmp_path), "--resume", "no checkpoint")
