"""One run over N processes (torchrun): who this process is, and the few collectives the loop needs.

A run launched by ``torchrun`` (or ``ppo-harness train --nproc-per-node N``, which starts torchrun) has
``WORLD_SIZE`` > 1 in its environment. Every rank holds the whole policy and value model (replicated,
data parallel), samples its own share of the batch and steps the same optimiser on the same gradients:
after each backward the flat gradient buffer (``harness.fast.flat``) is summed across ranks in one
``all_reduce``, which is DDP's gradient reduction with one bucket. The loss each rank differentiates is
its share of the global loss (``shares``), so the summed gradient is the gradient of the loss one
process would compute on the whole minibatch.

``World`` is the answer to "who am I"; a process outside torchrun is ``World()`` (rank 0 of 1) and every
collective below is then the identity, so the single-process path never touches torch.distributed.

The collective timeout (``train.dist_timeout_s``) bounds how long a rank waits for a peer that died or
hangs: the collective then raises and the run ends FAILED. gloo on the CPU, NCCL on CUDA devices.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["MainStopped", "Stopped", "World", "broadcast_", "broadcast_object", "from_main", "gather_equal",
           "gather_objects", "gather_rows", "init", "rank_seed", "shares", "sum_", "world"]


class Stopped(RuntimeError):
    """This rank was stopped by the launcher (SIGTERM): another rank failed, or the launch was stopped."""


class MainStopped(RuntimeError):
    """Raised on every rank but 0 when rank 0's hook stopped the run (a sweep's pruner, a stop request): the
    ranks end together at the same evaluation."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank ``rank`` of ``size`` (``local_rank`` on its machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one rank that talks to MLflow, prints progress and writes files."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


_WORLD = World()


def launched() -> World:
    """The world torchrun describes in this process's environment (``World()`` outside torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def world() -> World:
    """The world of this process's run: set by ``init``, ``World()`` before."""
    return _WORLD


def init(device_type: str, timeout_s: float, group: bool = False) -> World:
    """Join the process group of the torchrun launch (once; later calls return the world). gloo on the CPU,
    NCCL on CUDA; every collective then times out after ``timeout_s`` seconds. ``group``: a process outside
    torchrun gets a process group of its own too (rank 0 of 1: what FSDP2's mesh needs)."""
    import torch

    global _WORLD
    w = launched()
    if not w.parallel and not group:
        return w
    if not torch.distributed.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(w.local_rank)
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            if w.parallel or "MASTER_ADDR" in os.environ:
                torch.distributed.init_process_group(backend, timeout=timeout)
            else:  # one process, no rendezvous: a store in this process
                torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0,
                                                     world_size=1, timeout=timeout)
        except BaseException:  # a peer that never came: this process can form a group again (``close``)
            close()
            raise
    _WORLD = w
    return w


def close() -> None:
    """Leave the process group (end of a run); the world is a single process again."""
    import torch

    global _WORLD
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # which also sets the group counter back to 0
    else:  # an init that failed (a peer that never came) counted its group: the next group this process forms
        # (a sweep worker's next trial) would look for keys under a name its fresh peers never write
        c10d = torch.distributed.distributed_c10d
        if hasattr(c10d, "_world"):
            c10d._world.group_count = 0
    _WORLD = World()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s prompt and token sampling: the run's seed on rank 0 (so a 1-process run is
    rank 0 of 1), a distinct odd-multiple offset on every other rank."""
    return seed if rank == 0 else (seed + rank * 0x9E3779B97F4A7C15) % 2**63


def sum_(t: Tensor, w: World) -> Tensor:
    """``t`` summed over the ranks, in place (the identity for one process). Returns ``t``."""
    import torch

    if not w.parallel:
        return t
    if t.device.type == "cpu" and torch.distributed.get_backend() == "nccl":  # NCCL reduces device tensors only
        moved = t.cuda()
        torch.distributed.all_reduce(moved, op=torch.distributed.ReduceOp.SUM)
        return t.copy_(moved.cpu())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def broadcast_(t: Tensor, w: World) -> Tensor:
    """Rank 0's ``t`` on every rank, in place (the identity for one process). Returns ``t``."""
    import torch

    if not w.parallel:
        return t
    if t.device.type == "cpu" and torch.distributed.get_backend() == "nccl":  # NCCL broadcasts device tensors only
        moved = t.cuda()
        torch.distributed.broadcast(moved, src=0)
        return t.copy_(moved.cpu())
    torch.distributed.broadcast(t, src=0)
    return t


def broadcast_object(obj, w: World):
    """Rank 0's ``obj`` (picklable; tensors in it on the CPU) on every rank; ``obj`` itself for one process."""
    import torch

    if not w.parallel:
        return obj
    box = [obj if w.main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def shares(counts: list[float], w: World) -> list[float]:
    """Each local count over its sum across ranks (0 where the sum is 0): the weight that turns this rank's
    mean over its own items into its share of the mean over every rank's items."""
    import torch

    if not w.parallel:
        return [1.0 if c else 0.0 for c in counts]
    local = torch.tensor(counts, dtype=torch.float64)
    total = sum_(local.clone(), w)
    return [float(c / t) if t else 0.0 for c, t in zip(local.tolist(), total.tolist(), strict=True)]


def gather_objects(obj, w: World) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for one process."""
    import torch

    if not w.parallel:
        return [obj]
    out: list = [None] * w.size
    torch.distributed.all_gather_object(out, obj)
    return out


def gather_equal(t: Tensor, w: World) -> Tensor:
    """Every rank's ``t`` (the same shape on each) concatenated along dim 0 in rank order; ``t`` for one process."""
    import torch

    if not w.parallel:
        return t
    out = [torch.empty_like(t) for _ in range(w.size)]
    torch.distributed.all_gather(out, t.contiguous())
    return torch.cat(out)


def gather_rows(tensors: dict[str, Tensor | None], w: World) -> dict[str, Tensor | None]:
    """Every rank's rows of each (B_r,) or (B_r, T_r) tensor stacked in rank order, (sum B_r, max T_r): the
    second dimension right-padded with zeros (a mask's 0: nothing there). ``tensors`` itself for one process."""
    import torch

    if not w.parallel:
        return tensors
    device = next(t.device for t in tensors.values() if t is not None)
    parts = gather_objects({k: None if t is None else t.detach().cpu() for k, t in tensors.items()}, w)
    out: dict[str, Tensor | None] = {}
    for k, t in tensors.items():
        if t is None:
            out[k] = None
            continue
        rows = [p[k] for p in parts]
        if t.dim() == 2:
            width = max(r.shape[1] for r in rows)
            rows = [torch.nn.functional.pad(r, (0, width - r.shape[1])) for r in rows]
        out[k] = torch.cat(rows).to(device)
    return out


def from_main(hook: Callable[..., None] | None, w: World) -> Callable[..., None] | None:
    """``hook`` (the run's ``on_eval``) called on rank 0 alone, its verdict reaching every rank: what it raised is
    broadcast, rank 0 raises it again and every other rank raises ``MainStopped``, so all of them stop at the same
    evaluation (a pruned sweep trial) and none waits for a peer that left. ``hook`` itself for one process.

    Every rank calls the returned function at the same point (``on_eval`` follows an evaluation every rank
    runs), so the broadcast is a collective like the evaluation's own; with no hook it broadcasts "go on"."""
    import torch

    if not w.parallel:
        return hook

    def call(*args) -> None:
        error: BaseException | None = None
        if w.main and hook is not None:
            try:
                hook(*args)
            except BaseException as e:  # TrialPruned, a stop request (KeyboardInterrupt), an outage
                error = e
        box = [None if error is None else f"{type(error).__name__}: {error}"]
        torch.distributed.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[0] is not None:
            raise MainStopped(f"rank 0 stopped the run ({box[0]})")

    return call
