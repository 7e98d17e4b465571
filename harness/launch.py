"""``ppo-harness train --nproc-per-node N [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT]``: one run
over N processes on each of M machines, started through PyTorch's elastic launcher (torchrun's own Python
API, ``torch.distributed.launcher.elastic_launch``; no restarts).

Why an option in front of torchrun rather than only ``torchrun -m harness train``: the launch is checked
here, once, before anything starts (``check``: a world size that does not divide the batch or the prompt
groups, more processes than CUDA devices, an option the ranks cannot share; one line naming it, exit 2, no
run created), a failed rank is one line and exit 1 (not torchrun's report), and the machine that holds rank
0 marks the run FAILED even when rank 0 itself was killed. Plain ``torchrun`` works as well: every rank then
runs the same checks and refuses the same way (torchrun prints its own report around it).

The ranks run ``python -m harness.cli train --config <the resolved config> ...``; the config travels as a
temporary file (removed at the end), a tracking URI through the environment (never on a command line), and so
does the id of a run continued from its checkpoint (``--resume``: rank 0 reopens it and restores the checkpoint,
the other ranks receive it from rank 0, ``harness.checkpoint.restore_ranks``).
With one machine the ranks meet at a free local port (torchrun --standalone); with M machines at
``--rdzv-endpoint`` (static rendezvous: machine R holds ranks R*N .. R*N+N-1, machine 0 rank 0).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from harness.config import RunConfig
from harness.errors import InputError

__all__ = ["Launch", "LaunchError", "RanksFailed", "check", "resumed_run", "run"]

ENDPOINT = re.compile(r"^[A-Za-z0-9_.\-]+:\d{1,5}$")
RUN_FILE = "PPO_HARNESS_RUN_FILE"  # where rank 0 writes its run id, for the launcher to mark it FAILED
RESUME = "PPO_HARNESS_RESUME"  # ``train --resume RUN_ID --nproc-per-node N``: the run rank 0 continues


class LaunchError(InputError):
    """A launch the run cannot have: one line naming the option or config key."""


class RanksFailed(RuntimeError):
    """A rank exited non-zero (or by a signal): the one line says which and how."""


@dataclass(frozen=True)
class Launch:
    """``--nproc-per-node``, ``--nnodes``, ``--node-rank``, ``--rdzv-endpoint``."""

    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    endpoint: str | None = None

    @property
    def size(self) -> int:
        return self.nproc * self.nnodes


def check_options(launch: Launch) -> None:
    """The launch options on their own."""
    if launch.nproc < 1:
        raise LaunchError(key="--nproc-per-node", problem=f"expected at least 1, got {launch.nproc}")
    if launch.nnodes < 1:
        raise LaunchError(key="--nnodes", problem=f"expected at least 1, got {launch.nnodes}")
    if not 0 <= launch.node_rank < launch.nnodes:
        raise LaunchError(key="--node-rank", problem=f"{launch.node_rank} is not in 0..{launch.nnodes - 1}")
    if launch.nnodes > 1 and launch.endpoint is None:
        raise LaunchError(key="--rdzv-endpoint", problem=f"--nnodes {launch.nnodes} needs HOST:PORT of machine 0")
    if launch.endpoint is not None and not ENDPOINT.match(launch.endpoint):
        raise LaunchError(key="--rdzv-endpoint", problem=f"expected HOST:PORT, got {launch.endpoint!r}")


def check(cfg: RunConfig, size: int, local: int, device_type: str, devices: int, checkpoints: bool = False) -> None:
    """Whether ``cfg`` can run over ``size`` ranks, ``local`` of them on this machine (``devices`` CUDA devices
    when ``device_type`` is cuda). ``checkpoints``: the caller continues such a run from its checkpoints
    (``train --resume RUN_ID --nproc-per-node N``); a sweep's trials over a process group do not yet, so without
    it ``train.checkpoint_every`` is refused. Raises LaunchError naming the key or option."""
    if size == 1:
        return
    r = cfg.rollout
    if cfg.impl != "custom":
        raise LaunchError(key="impl", problem=f"{cfg.impl} runs in one process; a run over {size} ranks is "
                          "impl=custom (TRL's trainers have their own launcher: accelerate launch)")
    if r.batch_size % (size * r.group_size):
        raise LaunchError(key="rollout.batch_size", problem=f"{r.batch_size} does not split over {size} ranks in "
                          f"whole prompt groups of rollout.group_size={r.group_size} (a multiple of "
                          f"{size * r.group_size} does)")
    per_rank = r.batch_size // size
    if per_rank % cfg.ppo.minibatches:
        raise LaunchError(key="ppo.minibatches", problem=f"{cfg.ppo.minibatches} does not divide each rank's "
                          f"{per_rank} rows (rollout.batch_size {r.batch_size} over {size} ranks)")
    k = cfg.probe.microbatches
    if cfg.probe.every and (k % size or per_rank % (k // size)):
        raise LaunchError(key="probe.microbatches", problem=f"{k} parts over {size} ranks: each rank takes K / "
                          f"{size} of them from its {per_rank} rows; use a multiple of {size} that splits them")
    if cfg.eval.prompts < size:
        raise LaunchError(key="eval.prompts", problem=f"{cfg.eval.prompts} held-out prompts cannot be shared by "
                          f"{size} ranks")
    if cfg.train.checkpoint_every and not checkpoints:
        raise LaunchError(key="train.checkpoint_every", problem=f"a run over {size} ranks writes no checkpoints in a "
                          "sweep (a trial over a process group is not continued from them yet); set it 0")
    if re.fullmatch(r"cuda:\d+", cfg.train.device):
        raise LaunchError(key="train.device", problem=f"{cfg.train.device} names one device; over {size} ranks each "
                          "rank takes its local rank's CUDA device: write cuda or auto")
    if device_type == "cuda" and local > devices:
        raise LaunchError(key="--nproc-per-node", problem=f"{local} processes on a machine with {devices} CUDA "
                          "device(s): one process per device")


def run(cfg: RunConfig, launch: Launch, *, experiment: str, runs_dir: Path, tracking_uri: str | None,
        quiet: bool, resume: str | None = None) -> None:
    """Start ``launch.nproc`` ranks of ``cfg`` on this machine and wait for them (and the other machines').
    ``resume``: the id of the run they continue from its newest checkpoint (``cfg`` is the checkpoint's).
    Raises RanksFailed with one line when a rank fails (its run then FAILED, when this machine holds rank 0)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with tempfile.TemporaryDirectory(prefix="ppo-harness-launch-") as tmp:
        config, run_file = Path(tmp) / "config.yaml", Path(tmp) / "run-id"
        config.write_text(cfg.to_yaml())
        if resume is not None:  # the run exists already: the launcher can end it however rank 0 ends
            run_file.write_text(resume)
        args = ["-m", "harness.cli", "train", "--config", str(config), "--experiment", experiment,
                "--runs-dir", str(runs_dir)] + (["--quiet"] if quiet else [])
        lc = LaunchConfig(min_nodes=launch.nnodes, max_nodes=launch.nnodes, nproc_per_node=launch.nproc,
                          run_id=uuid.uuid4().hex if launch.nnodes == 1 else "ppo-harness", max_restarts=0,
                          **_rendezvous(launch))
        with _child_env(launch, tracking_uri, run_file, resume), _quiet_elastic():
            try:
                elastic_launch(lc, entrypoint=sys.executable)(*args)
            except SignalException:  # Ctrl-C / SIGTERM to the launcher: it stopped the ranks; the run KILLED
                _mark_ended(run_file, runs_dir, tracking_uri, "KILLED", "interrupted", ("RUNNING", "FAILED"))
                raise KeyboardInterrupt from None
            except ChildFailedError as e:
                rank, failure = min(e.failures.items())
                why = f"signal {failure.signal_name()}" if failure.signal_name() != "<N/A>" else (
                    f"exit code {failure.exitcode}")
                marked = _mark_ended(run_file, runs_dir, tracking_uri, "FAILED", f"rank {rank} ended with {why}")
                raise RanksFailed(f"rank {rank} ended with {why}" + (f"; run {marked} marked FAILED" if marked
                                                                      else "")) from None


def _rendezvous(launch: Launch) -> dict:
    if launch.nnodes == 1:  # torchrun --standalone: a free local port
        return {"rdzv_backend": "c10d", "rdzv_endpoint": "localhost:0"}
    return {"rdzv_backend": "static", "rdzv_endpoint": launch.endpoint, "rdzv_configs": {"rank": launch.node_rank}}


@contextlib.contextmanager
def _child_env(launch: Launch, tracking_uri: str | None, run_file: Path, resume: str | None = None):
    """The ranks' environment: the tracking URI (not on their command line), the run-id file, the run continued
    (``resume``), and one share of the cores each when the user set no thread count (torchrun sets
    OMP_NUM_THREADS=1 likewise)."""
    extra = {RUN_FILE: str(run_file), RESUME: resume or ""}
    if tracking_uri:
        extra["MLFLOW_TRACKING_URI"] = tracking_uri
    if "OMP_NUM_THREADS" not in os.environ:
        extra["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // launch.nproc))
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_elastic():
    """The elastic agent's own log lines (start, rendezvous, failure report) off: a failure is our one line."""
    import logging

    log = logging.getLogger("torch.distributed.elastic")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _mark_ended(run_file: Path, runs_dir: Path, tracking_uri: str | None, status: str, reason: str,
                when: tuple[str, ...] = ("RUNNING",)) -> str | None:
    """The run rank 0 started on this machine, when its status is one of ``when`` (still RUNNING: rank 0
    itself was killed; FAILED: the launcher's own stop reached rank 0 as a peer's failure): ended ``status``
    with ``reason``. Returns its id when this machine holds rank 0 and a run was started, else None."""
    if not run_file.exists():
        return None
    from harness.schema import Tag
    from harness.tracking import Store

    run_id = run_file.read_text().strip()
    store = Store(runs_dir, tracking_uri)
    summary = store.run_summary(run_id)
    if summary is not None and summary["status"] in when:
        store.run_logger(run_id).set_tags({Tag.FAILURE: reason})
        store.set_terminated(run_id, status)
    return run_id


def resumed_run() -> str | None:
    """Rank 0 of a launch of ``train --resume RUN_ID --nproc-per-node N``: RUN_ID (None otherwise)."""
    return os.environ.get(RESUME) or None


def note_run(run_id: str) -> None:
    """Rank 0 of a launched run: write the run id where the launcher looks for it (nothing outside a launch)."""
    if path := os.environ.get(RUN_FILE):
        Path(path).write_text(run_id)
