"""No command ever modifies a file the harness did not create: every command and option that takes a path
is pointed at a user's JSON-lines file, a CSV file and a symbolic link to a file, with and without
``--dry-run`` where the command has one. Each is refused (exit 2, one ``error:`` line naming the option)
and afterwards every file's bytes and mode, the link and its target are as they were, nothing was
added beside them and nothing was created in the working folder or in ``$HOME``.

Runs ``harness.cli.main(argv)`` in-process (the ``ppo-harness`` entry point), as tests/smoke/test_bad_input.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.cli import main

SPEC = ("name: safe\nbase:\n  train.iterations: 1\n  rollout.batch_size: 8\n  rollout.group_size: 2\n"
        "  ppo.minibatches: 2\ngrid: {kl.coef: [0.0, 0.1]}\nseeds: [0]\n")
USER = {
    "data.jsonl": b'{"prompt": "a"}\n{"prompt": "b"}',  # first line JSON, no final newline: the old repair's prey
    "table.csv": b"prompt,completion\n\"a, b\",c\n",
}
TARGETS = ("data.jsonl", "table.csv", "link")  # link -> data.jsonl

# (id, argv, option the line must name); {f} is the user file, {spec} a valid sweep spec
CASES = [
    ("train-config", ["train", "--config", "{f}"], "{f}"),
    ("train-runs-dir", ["train", "--runs-dir", "{f}"], "--runs-dir"),
    ("train-tracking-uri", ["train", "--tracking-uri", "sqlite:///{f}"], "--tracking-uri"),
    ("train-policy", ["train", "--set", "model.policy={f}"], "model.policy"),
    ("train-reward", ["train", "--set", "model.reward={f}"], "model.reward"),
    ("sweep-spec", ["sweep", "{f}"], "{f}"),
    ("sweep-storage", ["sweep", "{spec}", "--storage", "{f}"], "--storage"),
    ("sweep-storage-sqlite", ["sweep", "{spec}", "--storage", "sqlite:///{f}"], "--storage"),
    ("sweep-runs-dir", ["sweep", "{spec}", "--runs-dir", "{f}"], "--runs-dir"),
    ("sweep-tracking-uri", ["sweep", "{spec}", "--tracking-uri", "sqlite:///{f}"], "--tracking-uri"),
    ("report-spec", ["report", "{f}"], "mlflow.db"),  # no store: refused before the spec is read
    ("report-out", ["report", "--experiment", "x", "--out", "{f}"], "--out"),
    ("report-runs-dir", ["report", "--experiment", "x", "--runs-dir", "{f}"], "{f}"),
    ("report-tracking-uri", ["report", "--experiment", "x", "--tracking-uri", "sqlite:///{f}"], "--tracking-uri"),
    ("compare-out", ["compare", "--out", "{f}"], "--out"),
    ("compare-runs-dir", ["compare", "--runs-dir", "{f}"], "--runs-dir"),
    ("compare-tracking-uri", ["compare", "--tracking-uri", "sqlite:///{f}"], "--tracking-uri"),
    ("bench-json", ["bench", "--json", "{f}", "--iterations", "1"], "--json"),
    ("ui-runs-dir", ["ui", "--runs-dir", "{f}"], "--runs-dir"),
]
DRY = {"sweep-spec", "sweep-storage", "sweep-storage-sqlite", "sweep-runs-dir", "sweep-tracking-uri"}
PARAMS = [(c, t, dry) for c in CASES for t in TARGETS for dry in ((False, True) if c[0] in DRY else (False,))]


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry of ``folder``: (bytes or link target, mode), read without following links."""
    out = {}
    for p in sorted(folder.iterdir()):
        st = os.lstat(p)
        out[p.name] = (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir", st.st_mode)
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case, target, dry", PARAMS,
                         ids=[f"{c[0]}-{t}{'-dry-run' if d else ''}" for c, t, d in PARAMS])
def test_a_users_file_is_never_modified(case, target, dry, tmp_path, monkeypatch, capsys):
    _, argv, names = case
    user, cwd, home, cache = (tmp_path / n for n in ("user", "cwd", "home", "cache"))
    for d in (user, cwd, home, cache):
        d.mkdir()
    for name, body in USER.items():
        (user / name).write_bytes(body)
        os.chmod(user / name, 0o640)
    os.symlink("data.jsonl", user / "link")
    (tmp_path / "spec.yaml").write_text(SPEC)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PPO_HARNESS_CACHE", str(cache))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    f = str(user / target)
    args = [a.replace("{f}", f).replace("{spec}", str(tmp_path / "spec.yaml")) for a in argv]
    if dry:
        args.append("--dry-run")
    before = snapshot(user)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    assert snapshot(user) == before, "a user's file changed, or something was created beside it"
    assert e.value.code == 2, f"exit {e.value.code}\n{out}\n{err[-2000:]}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    name = names.replace("{f}", target)
    assert name in lines[0], lines[0]
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == [] and list(cache.iterdir()) == []


CI_VARS = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS", "TF_BUILD",
           "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION", "CLOUD_RUN_EXECUTION",
           "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID", "XDG_CONFIG_HOME", "MLFLOW_DISABLE_TELEMETRY",
           "DO_NOT_TRACK")


@pytest.mark.timeout(300)
def test_mlflow_telemetry_is_off_unless_turned_on(tmp_path):
    """MLflow 3 writes ~/.config/mlflow/telemetry.json (and sends usage events) on its first client call; it
    keeps quiet under pytest or CI, so the child here runs with those variables removed, as a user's shell
    would. Off by default: a refused command leaves $HOME empty; MLFLOW_DISABLE_TELEMETRY=false turns it on."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    base = {k: v for k, v in os.environ.items() if k not in CI_VARS}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    for name, extra in (("off", {}), ("on", {"MLFLOW_DISABLE_TELEMETRY": "false"})):
        home = tmp_path / name
        home.mkdir()
        p = subprocess.run([sys.executable, "-m", "harness.cli", "train", "--tracking-uri", "http://127.0.0.1:99999"],
                           cwd=home, env={**base, **extra, "HOME": str(home)}, capture_output=True, text=True, timeout=240)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr[-2000:]
        made = sorted(str(x.relative_to(home)) for x in home.rglob("*"))
        if name == "off":
            assert made == [], made
        else:  # the switch is real: MLflow's own file appears once telemetry is on
            assert ".config/mlflow/telemetry.json" in made, made
