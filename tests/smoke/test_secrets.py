"""No credential is ever shown: a real MLflow server, a real PostgreSQL that requires a password, the real CLI.

The tracking URI carries basic-auth credentials (``http://alice:PW@...``; the report uses the token
form ``http://:TOKEN@...``), the Optuna storage URL a PostgreSQL password and a secret query
parameter (``sslpassword``). After ``train``, ``sweep`` (and its ``--dry-run``), ``report`` and two
commands that fail on an unreachable server, none of them may appear in stdout or stderr, in the
command lines of the sweep's workers, in any file under the working folder (worker logs, report files), in the MLflow server's runs (params,
tags, artifacts; its database and artifact files) or in the Optuna study. Without the PostgreSQL
binaries the sweep uses a journal file and the PostgreSQL checks skip, saying why.

Also checked here, because the README says so: libpq reads a password from ``PGPASSFILE`` for a URL
without one, and MLflow's client sends ``MLFLOW_TRACKING_USERNAME`` / ``PASSWORD`` (basic auth) or
``MLFLOW_TRACKING_TOKEN`` (bearer) to the server.
"""

from __future__ import annotations

import base64
import glob
import http.server
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from harness.urls import redact
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

# between them every printable ASCII class: letters, digits, the space and all 32 punctuation characters;
# in URLs percent-encoded (enc), as a URL must carry '/', '?', '#', '@' (tests/smoke/test_redaction.py
# also feeds them raw to the CLI)
MLFLOW_PW, TOKEN = "s3cret'PW\" @:/%#?-mlflow", "tok3n`~!$^&*()XYZ-mlflow"
PG_PW, SSL_PW = "PGs3c;,=+<>|[]{}\\PW-pg", "SSLk3y._PW-pg"
SECRETS = (MLFLOW_PW, TOKEN, PG_PW, SSL_PW)


def enc(secret: str) -> str:
    return quote(secret, safe="")


TINY = {"task.name": "sort", "train.iterations": 1, "rollout.batch_size": 8, "rollout.group_size": 2,
        "ppo.minibatches": 2, "eval.prompts": 8, "model.reward": "gold"}
SPEC = "secrets-sweep"
WORKER_CMDLINES: list[list[str]] = []  # what `ps` showed of the sweep's workers while they ran


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leaks(text: str | bytes) -> list[str]:
    """The secrets found in ``text`` (plain, or percent-encoded as a URL would carry them)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [s for s in SECRETS if any(f in text for f in (s, enc(s), quote(s), s.replace("-", "%2D"), repr(s)[1:-1]))]


# ---- servers -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 (no auth app: it needs extra packages; the client sends what the URL holds)."""
    d = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(d / "server.log", "wb")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}", "--artifacts-destination", str(d / "artifacts")]
    proc = subprocess.Popen(cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (d / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield port, d
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def pg_port():
    """A throwaway PostgreSQL on 127.0.0.1 whose TCP connections need a password (scram-sha-256); None when
    the binaries are missing (the reason is printed). As tests/smoke/test_sweep.py starts one, with a password."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        print("PostgreSQL part skipped: no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
        yield None
        return
    bindir = Path(found[-1]).parent
    user = pw = None
    if os.getuid() == 0:  # the server refuses to run as root: run it as Debian's postgres user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            print("PostgreSQL part skipped: running as root and there is no 'postgres' user")
            yield None
            return
        user = "postgres"
    base = Path(tempfile.mkdtemp(prefix="ppo-harness-pg-"))
    pwfile = base / "pw"
    pwfile.write_text(PG_PW + "\n")
    if pw:
        os.chown(base, pw.pw_uid, pw.pw_gid)
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    port = _free_port()

    def pg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(bindir / args[0]), *args[1:]], user=user, cwd=base, capture_output=True,
                              text=True, timeout=120)

    out = pg("initdb", "-D", str(base / "data"), "-U", "postgres", "--auth-host=scram-sha-256", "--auth-local=trust",
             f"--pwfile={pwfile}", "-E", "UTF8")
    pwfile.unlink()
    assert out.returncode == 0, out.stderr
    opts = f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=50"
    out = pg("pg_ctl", "-D", str(base / "data"), "-l", str(base / "server.log"), "-o", opts, "-w", "start")
    assert out.returncode == 0, out.stderr + (base / "server.log").read_text()
    try:
        yield port
    finally:
        pg("pg_ctl", "-D", str(base / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


# ---- the commands ----------------------------------------------------------------------------------------


def _sets(d: dict) -> list[str]:
    return [a for k, v in d.items() for a in ("--set", f"{k}={v}")]


def _sweep_watching_workers(args: list[str], cwd: Path, log: Path) -> subprocess.CompletedProcess:
    """``ppo-harness sweep ARGS``, recording the command lines of its worker processes while they run."""
    import psutil

    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", *args], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        seen: set[int] = set()
        while proc.poll() is None:
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    cmd = child.cmdline()
                    if child.pid not in seen and "harness.sweep" in cmd:
                        seen.add(child.pid)
                        WORKER_CMDLINES.append(cmd)
            except psutil.Error:
                pass
            time.sleep(0.2)
    text = log.read_text()
    return subprocess.CompletedProcess(proc.args, proc.returncode, text, "")


@pytest.fixture(scope="module")
def scenario(mlflow_server, pg_port, tmp_path_factory):
    port, _ = mlflow_server
    root = tmp_path_factory.mktemp("secrets")
    runs = root / "runs"
    tracking = f"http://alice:{enc(MLFLOW_PW)}@127.0.0.1:{port}"
    token_tracking = f"http://:{enc(TOKEN)}@127.0.0.1:{port}"
    if pg_port:
        storage = f"postgresql+psycopg2://postgres:{enc(PG_PW)}@127.0.0.1:{pg_port}/postgres?sslmode=disable&sslpassword={enc(SSL_PW)}"
    else:
        storage = str(root / "runs" / "sweeps" / f"{SPEC}.journal")
    spec = root / f"{SPEC}.yaml"
    spec.write_text("# two cells x two seeds, tiny\n" + yaml.safe_dump(
        {"name": SPEC, "base": {k: v for k, v in TINY.items()}, "grid": {"kl.coef": [0.0, 0.1]}, "seeds": [0, 1]},
        sort_keys=False))  # fmt: skip
    common = ["--runs-dir", str(runs)]
    out: dict[str, subprocess.CompletedProcess] = {}
    out["train"] = run_cli("train", *_sets(TINY), "--experiment", "secrets-train", "--tracking-uri", tracking, *common,
                           cwd=root)  # fmt: skip
    out["dry-run"] = run_cli("sweep", str(spec), "--storage", storage, "--tracking-uri", tracking, "--dry-run", *common,
                             cwd=root)  # fmt: skip
    out["sweep"] = _sweep_watching_workers([str(spec), "--workers", "1", "--storage", storage, "--tracking-uri",
                                            tracking, *common], root, root / "sweep.out")  # fmt: skip
    out["report"] = run_cli("report", str(spec), "--tracking-uri", token_tracking, "--out", str(root / "report"),
                            *common, cwd=root)  # fmt: skip
    out["report-missing"] = run_cli("report", "--experiment", "nope", "--tracking-uri", token_tracking, *common, cwd=root)
    # a server that does not answer: MLflow's own error quotes the request URL, credentials and all
    dead = f"http://alice:{enc(MLFLOW_PW)}@127.0.0.1:{_free_port()}"
    no_retry = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    out["train-dead"] = run_cli("train", *_sets(TINY), "--tracking-uri", dead, *common, cwd=root, env=no_retry)
    out["report-dead"] = run_cli("report", str(spec), "--tracking-uri", dead, "--out", str(root / "r2"), *common,
                                 cwd=root, env=no_retry)  # fmt: skip
    for name, r in out.items():
        print(f"---- {name}: exit {r.returncode}\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    return {"root": root, "out": out, "storage": storage, "port": port, "pg": pg_port}


def test_the_commands_ran(scenario):
    out = scenario["out"]
    assert [out[k].returncode for k in ("train", "dry-run", "sweep", "report")] == [0, 0, 0, 0]
    assert out["report-missing"].returncode != 0
    assert out["train-dead"].returncode != 0 and out["report-dead"].returncode != 0


def test_no_output_shows_a_credential(scenario):
    out, port = scenario["out"], scenario["port"]
    for name, r in out.items():
        assert not _leaks(r.stdout + r.stderr), f"{name}: {_leaks(r.stdout + r.stderr)}"
    assert f"stored   http://alice:***@127.0.0.1:{port} (experiment 'secrets-train')" in out["train"].stdout
    assert f"tracking  http://alice:***@127.0.0.1:{port}" in out["dry-run"].stdout
    assert f"MLflow http://alice:***@127.0.0.1:{port}" in out["sweep"].stdout
    if scenario["pg"]:
        shown = f"postgresql+psycopg2://postgres:***@127.0.0.1:{scenario['pg']}/postgres?sslmode=disable&sslpassword=***"
        assert f"storage   {shown}" in out["dry-run"].stdout and f"storage {shown}" in out["sweep"].stdout
    assert f"in http://:***@127.0.0.1:{port}" in out["report-missing"].stderr
    for name in ("train-dead", "report-dead"):
        assert "alice:***@127.0.0.1" in out[name].stderr, out[name].stderr[-2000:]  # the error is shown, masked


def test_no_file_holds_a_credential(scenario):
    root = scenario["root"]
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name.startswith("worker-") and p.suffix == ".log" for p in files)  # the workers' logs are read
    assert (root / "report" / "report.md").is_file() and (root / "report" / "report.html").is_file()
    bad = {str(p): _leaks(p.read_bytes()) for p in files if _leaks(p.read_bytes())}
    assert not bad, bad
    assert f"store: http://:***@127.0.0.1:{scenario['port']}" in (root / "report" / "report.md").read_text()


def test_mlflow_holds_no_credential(scenario, mlflow_server, tmp_path):
    from harness.tracking import Store

    port, server_dir = mlflow_server
    store = Store(tmp_path / "unused", f"http://127.0.0.1:{port}")
    client = store.client
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], max_results=1000)]
    assert len(runs) >= 1 + 1 + 4  # train, the sweep's parent, its children
    for r in runs:
        values = [*r.data.params.items(), *r.data.tags.items(), r.info.artifact_uri, r.info.run_name]
        assert not _leaks(repr(values)), (r.info.run_id, _leaks(repr(values)))
    parent = [r for r in runs if r.data.tags.get("sweep.role") == "parent"][0]
    assert parent.data.tags["sweep.storage"] == redact(scenario["storage"])
    assert {"summary.md", "report"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    for p in (f for f in server_dir.rglob("*") if f.is_file()):  # the database and every artifact, as stored
        assert not _leaks(p.read_bytes()), (str(p), _leaks(p.read_bytes()))


def test_the_optuna_study_holds_no_credential(scenario):
    if not scenario["pg"]:
        pytest.skip("PostgreSQL binaries missing (see the printed reason): the sweep used a journal file")
    from harness.sweep.study import open_storage

    st = open_storage(scenario["storage"])  # the password is the one the server asks for
    studies = [s for s in st.get_all_studies() if s.user_attrs.get("sweep.name") == SPEC]
    assert studies
    for s in studies:
        trials = st.get_all_trials(s._study_id)
        assert len([t for t in trials if t.state.name == "COMPLETE"]) == 4
        text = repr([s.user_attrs, s.system_attrs, [(t.user_attrs, t.system_attrs, t.params) for t in trials]])
        assert not _leaks(text), _leaks(text)


def test_worker_command_lines_hold_no_credential(scenario):
    # any user of the machine can read /proc/<pid>/cmdline: the payload with both URLs goes to stdin
    assert WORKER_CMDLINES, "no worker was seen running"
    bad = [_leaks(" ".join(c)) for c in WORKER_CMDLINES if _leaks(" ".join(c))]
    assert not bad, bad


# ---- what the README tells users to do instead -------------------------------------------------------------


def test_libpq_takes_the_password_from_pgpassfile(pg_port, tmp_path, monkeypatch):
    if not pg_port:
        pytest.skip("PostgreSQL binaries missing (see the printed reason)")
    import psycopg2

    from harness.sweep.study import open_storage

    url = f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"  # no password in the URL
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(url).close()
    passfile = tmp_path / "pgpass"
    escaped = PG_PW.replace("\\", "\\\\").replace(":", "\\:")  # .pgpass escapes '\' and ':'
    passfile.write_text(f"127.0.0.1:{pg_port}:*:postgres:{escaped}\n")
    passfile.chmod(0o600)  # libpq ignores a pgpass file others can read
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    conn = psycopg2.connect(url)
    conn.close()
    open_storage(url).get_all_studies()  # and so does the sweep's storage, through SQLAlchemy


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request 'no such experiment' and records its Authorization header."""

    seen: list[str | None] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).seen.append(self.headers.get("Authorization"))
        body = b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such experiment"}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("env, url_auth, expect", [
    ({"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": MLFLOW_PW}, "",
     "Basic " + base64.b64encode(f"alice:{MLFLOW_PW}".encode()).decode()),
    ({"MLFLOW_TRACKING_TOKEN": TOKEN}, "", f"Bearer {TOKEN}"),
    ({}, f"alice:{enc(MLFLOW_PW)}@", "Basic " + base64.b64encode(f"alice:{MLFLOW_PW}".encode()).decode()),
])  # fmt: skip
def test_mlflow_sends_the_credentials_of_its_environment(tmp_path, monkeypatch, env, url_auth, expect):
    from harness.tracking import Store

    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _Recorder.seen = []
        store = Store(tmp_path, f"http://{url_auth}127.0.0.1:{server.server_address[1]}")
        assert store.experiment_id("x", create=False) is None
        assert _Recorder.seen and set(_Recorder.seen) == {expect}
        assert not _leaks(store.where + repr(store))
    finally:
        server.shutdown()
        server.server_close()


# ---- names that become folders -----------------------------------------------------------------------------


def test_names_that_leave_their_folder_are_refused(tmp_path):
    from harness.tracking import Store, UnsafeName

    runs = tmp_path / "runs"
    for args in (["train", *_sets(TINY), "--experiment", ".."], ["report", "--experiment", ".."],
                 ["compare", "--experiment", "../x"]):
        r = run_cli(*args, "--runs-dir", str(runs), cwd=tmp_path, timeout=300)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("error: --experiment '..") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "reports").exists() and not (runs / "artifacts").exists()
    store = Store(runs)
    with pytest.raises(UnsafeName):
        store.experiment_id("..")
    assert store.experiment_id("..", create=False) is None  # nothing was created
