"""A sweep trial over N processes (``ppo-harness sweep --procs-per-run N``): the worker is rank 0, N - 1 followers.

The worker process stays the trial's Optuna client and MLflow owner and becomes rank 0 of a fresh process group
for the trial (``Group``): it starts N - 1 follower processes (``python -m harness.sweep --follower CONFIG``,
``follower_main``), which meet it at a free port on 127.0.0.1 (torch's ``env://`` rendezvous: MASTER_ADDR,
MASTER_PORT, RANK, WORLD_SIZE, as torchrun sets them), then every rank runs ``harness.run.execute`` on the
same config: rank 0 logs, the others are the ``NullLogger`` ranks of any run over several processes. The
trial's config travels as a temporary file (removed after the trial); a follower needs no URL and gets
none (no storage URL, no tracking URI: it never talks to Optuna or MLflow). Its devices are the worker's
(``CUDA_VISIBLE_DEVICES``, set by the coordinator to the worker's group; rank r takes ``cuda:r``).

Faults: Optuna's prune decision (rank 0's ``on_eval``) reaches every rank through ``dist.from_main`` (a
broadcast at each evaluation), so all ranks stop at the same evaluation. A follower that dies ends the
trial FAILED: rank 0's next collective fails (its peer's socket closed) or times out after
``train.dist_timeout_s``; the worker goes on with its next trial. A worker that is killed takes its
followers with it: each follower watches its parent and exits at once when it is gone, and a worker
that stops (SIGTERM, Ctrl-C, the trial's end) stops its followers (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.config import RunConfig

GRACE_S = 10.0  # after rank 0's trial ended: how long its followers get to leave on their own
STOP_S = 5.0  # then SIGTERM, and SIGKILL after this long
WATCH_S = 1.0  # how often a follower looks for its parent
RANK_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
EXIT_FOLLOWER_FAILED = 1
PARENT = "PPO_HARNESS_GROUP_PARENT"  # the worker's pid, in a follower's environment: it leaves when that is gone


def follower_command(config: Path) -> list[str]:
    """A follower's command line: the config file's path only (no URL, no secret)."""
    return [sys.executable, "-m", "harness.sweep", "--follower", str(config)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 free now (rank 0's rendezvous store binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, size: int, port: int) -> dict[str, str]:
    """The environment that makes a process rank ``rank`` of ``size`` on this machine (what torchrun sets)."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(size),
            "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(size)}


class Group:
    """``with Group(cfg, n, say):`` this process is rank 0 of ``n`` for the block (``execute`` joins the group,
    ``dist.close`` leaves it), with ``n - 1`` followers running ``cfg``; at the end, the followers are gone and
    the environment is this process's own again. ``say`` prints a line to the worker's log."""

    def __init__(self, cfg: RunConfig, size: int, say=print):
        self.cfg, self.size, self.say = cfg, size, say
        self.procs: list[subprocess.Popen] = []
        self.tmp: tempfile.TemporaryDirectory | None = None
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> Group:
        self.tmp = tempfile.TemporaryDirectory(prefix="ppo-harness-group-")
        try:
            config = Path(self.tmp.name) / "config.yaml"
            config.write_text(self.cfg.to_yaml())
            port = free_port()
            for rank in range(1, self.size):
                env = {**os.environ, **rank_env(rank, self.size, port), PARENT: str(os.getpid())}
                self.procs.append(subprocess.Popen(follower_command(config), env=env, stdin=subprocess.DEVNULL))
            mine = rank_env(0, self.size, port)
            self.saved = {k: os.environ.get(k) for k in mine}
            os.environ.update(mine)
        except BaseException:
            self._stop(0.0)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop(GRACE_S)

    def _stop(self, grace: float) -> None:
        """The environment restored; the followers given ``grace`` seconds, then stopped; the config removed."""
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.saved = {}
        deadline = time.monotonic() + grace
        for p in self.procs:
            _wait(p, deadline)
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_S
        for p in self.procs:
            if not _wait(p, deadline):
                p.kill()
                p.wait()
        for rank, p in enumerate(self.procs, start=1):
            if p.returncode not in (0, None):
                self.say(f"rank {rank} (pid {p.pid}) ended with {_ending(p.returncode)}")
        self.procs = []
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None


def _wait(p: subprocess.Popen, deadline: float) -> bool:
    try:
        p.wait(timeout=max(0.0, deadline - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        return False


def _ending(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def lost_rank(e: BaseException) -> bool:
    """Whether ``e`` was raised inside torch.distributed (a collective or the rendezvous: a peer died, hung or
    never came), which is a failure of the trial's group, not an outage of the sweep's stores."""
    import traceback

    marker = f"torch{os.sep}distributed{os.sep}"
    return any(marker in frame.filename for frame in traceback.extract_tb(e.__traceback__))


def _watch_parent(ppid: int) -> None:
    """A follower whose worker is gone (even before this thread started) leaves at once: it holds no run."""
    while os.getppid() == ppid:
        time.sleep(WATCH_S)
    os._exit(EXIT_FOLLOWER_FAILED)


def follower_main(config: str) -> int:
    """Rank ``RANK`` of a sweep trial: ``execute`` on the trial's config, logging nothing (rank 0 logs). Exit
    0 when the run finished or rank 0 stopped it (a pruned trial), 1 with one line when it failed."""
    from harness import dist

    threading.Thread(target=_watch_parent, args=(int(os.environ.get(PARENT, os.getppid())),), daemon=True).start()
    rank = os.environ.get("RANK", "?")
    try:
        from harness.config import load_config
        from harness.run import execute

        execute(load_config(config), None, progress=False)
        return 0
    except dist.MainStopped as e:
        print(f"rank {rank}: {e}", file=sys.stderr, flush=True)
        return 0
    except BaseException as e:  # a failure of its own or of a peer: rank 0 records the trial's
        from harness.errors import describe

        print(f"rank {rank}: {describe(e)}", file=sys.stderr, flush=True)
        return EXIT_FOLLOWER_FAILED
