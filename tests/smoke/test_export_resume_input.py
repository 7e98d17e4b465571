"""Bad input to ``export`` and ``train --resume``: one line naming the option or the run, exit 2, nothing written.
Through ``ppo-harness``'s entry point ``main(argv)`` in this process (a fresh Python per call costs seconds)."""

from __future__ import annotations

from harness.tracking import Store
from tests.conftest import main_exit


def _one_line(r, *needles: str) -> None:
    code, _, err = r
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (code, err)
    assert all(n in lines[0] for n in needles), lines[0]


def test_export_and_resume_refuse_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.chdir(tmp_path)
    _one_line(main_exit(capsys, "export", "abc", str(tmp_path / "out"), "--runs-dir", str(runs)),
              "--runs-dir", "no runs stored")
    assert not runs.exists() and not (tmp_path / "out").exists()
    Store(runs)  # an empty store
    _one_line(main_exit(capsys, "export", "a" * 32, str(tmp_path / "out"), "--runs-dir", str(runs)),
              "a" * 32, "no saved policy and no checkpoint")
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    _one_line(main_exit(capsys, "export", "a" * 32, str(tmp_path / "full"), "--runs-dir", str(runs)),
              "DEST", "not empty")
    _one_line(main_exit(capsys, "export", "../x", str(tmp_path / "out"), "--runs-dir", str(runs)), "RUN_ID")
    _one_line(main_exit(capsys, "train", "--resume", "a" * 32, "--set", "seed=1", "--runs-dir", str(runs)),
              "--resume", "cannot be given with it")
    _one_line(main_exit(capsys, "train", "--resume", "a" * 32, "--runs-dir", str(runs)), "--resume", "no checkpoint")
