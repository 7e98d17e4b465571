"""Real servers for the tests, on 127.0.0.1: a throwaway PostgreSQL and an ``mlflow server``.

Both can be stopped and started again on the same port with the same data (the fault tests take them
down mid-sweep). ``Postgres.find`` says why it cannot run (no binaries, root without a ``postgres``
user) instead of raising, so a test can skip with that reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A PostgreSQL server from Debian's binaries (``/usr/lib/postgresql/*/bin``), trust auth, fsync off."""

    def __init__(self, bindir: Path, user: str | None):
        self.bindir, self.user = bindir, user
        self.base = Path(tempfile.mkdtemp(prefix="ppo-harness-pg-"))  # under /tmp: reachable by the server's user
        if user:
            pw = pwd.getpwnam(user)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self.data = self.base / "data"
        out = self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stderr}")

    @staticmethod
    def find() -> tuple[Postgres | None, str]:
        """A new (stopped) server, or None and why not."""
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            return None, "no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)"
        user = None
        if os.getuid() == 0:  # the server refuses to run as root: run it as Debian's postgres user
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return None, "running as root and there is no 'postgres' user"
            user = "postgres"
        return Postgres(Path(found[-1]).parent, user), ""

    def url(self, password: str | None = None) -> str:
        auth = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/postgres"

    def _pg(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], user=self.user, cwd=self.base,
                              capture_output=True, text=True, timeout=120)

    def running(self) -> bool:
        return self._pg("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def start(self) -> None:
        if self.running():
            return
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.base} -c fsync=off -c max_connections=50"
        out = self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-o", opts, "-w", "start")
        if out.returncode != 0:
            raise RuntimeError(out.stderr + (self.base / "server.log").read_text())

    def stop(self, mode: str = "fast") -> None:
        """``fast``: connections are cut (what a restart does to clients); ``immediate``: no shutdown checkpoint."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` with a SQLite backend and its own artifact root, in its own process group."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts")]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner processes
        log = open(self.root / "server.log", "a")  # noqa: SIM115 - the server's, closed with it
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-3000:]}")
            if self.up():
                return
            time.sleep(0.25)
        raise RuntimeError("mlflow server did not come up")

    def up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def stop(self) -> None:
        """Kill the server and every process it started (its session); connections are refused from then on."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None
