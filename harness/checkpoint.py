"""Checkpoints of a custom-core run: write one atomically, find the newest, restore it, prune the old.

A checkpoint is a folder ``<runs-dir>/checkpoints/<run id>/iter-NNNNNN/`` holding

- ``policy.safetensors`` and ``value.safetensors``: every parameter of the policy and of the value
  model (absent without one), by name;
- ``optimizer.pt`` / ``scheduler.pt``: the optimiser's and scheduler's ``state_dict`` (``torch.load``
  with ``weights_only=True`` reads them back);
- ``rng.pt``: the prompt sampler's ``random.Random`` state, the token-sampling / shuffle generator, the
  noise probe's generator, torch's global CPU generator (and CUDA's when the run is on a GPU); a run over N
  ranks (``train --nproc-per-node N``) adds ``rng-rank-R.pt`` for each rank R >= 1 (``rng.pt`` is rank 0's):
  every rank samples from generators of its own;
- ``state.json``: the iteration, the KL controller's coefficient, the episodes, fp16's loss scale (its
  scale, good steps and skipped steps), the world size it was written at, and what the recorder keeps across
  iterations (metric history, evaluations, samples, the over-optimisation onset);
- ``config.yaml``: the run's config (``--resume`` reads it from here).

It is written into ``.iter-NNNNNN.tmp`` and renamed when whole, so a kill mid-write leaves the
previous checkpoint as the newest. Disk per checkpoint: the trainable weights in their dtype, plus
Adam's two moments (2x those weights, fp32) - about 3x the trainable parameters x 4 bytes.

Over N ranks (``train.parallel=ddp``: the replicas' weights, optimiser and scheduler are equal on every rank)
rank 0 alone writes and reads files: it gathers the ranks' random states to write them, and on resume reads
the checkpoint and broadcasts the weights, the optimiser's, scheduler's and loop's state, the recorder's and
each rank its own random state, so every rank continues exactly where it was. A checkpoint continues only at
the world size it was written at (sampling differs with it).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from harness import dist

__all__ = ["Checkpoints", "WorldSizeMismatch", "checkpoint_dirs", "latest", "load_policy", "prune", "restore",
           "restore_ranks", "rng_file", "run_folder", "save", "world_size"]

PREFIX = "iter-"


class WorldSizeMismatch(ValueError):
    """A checkpoint continued at another world size than the one it was written at."""


def run_folder(runs_dir: str | Path, run_id: str) -> Path:
    """Where a run's checkpoints live: ``<runs-dir>/checkpoints/<run id>``."""
    return Path(runs_dir) / "checkpoints" / run_id


def checkpoint_dirs(folder: Path) -> list[tuple[int, Path]]:
    """The whole checkpoints in ``folder`` as (iteration, path), oldest first (temporary folders left out)."""
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit():
            out.append((int(p.name[len(PREFIX):]), p))
    return sorted(out)


def latest(folder: Path) -> Path | None:
    """The newest whole checkpoint in ``folder``, or None."""
    dirs = checkpoint_dirs(folder)
    return dirs[-1][1] if dirs else None


def prune(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (``keep=0``: keep all) and stale temporary folders."""
    for p in folder.glob(f".{PREFIX}*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
    dirs = checkpoint_dirs(folder)
    for _, p in dirs[: -keep] if keep else []:
        shutil.rmtree(p, ignore_errors=True)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    # cloned: the parameters are views of one flat buffer, which safetensors refuses as shared storage
    return {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}


def _load_weights(model: nn.Module, path: Path) -> None:
    saved = load_file(str(path))
    params = dict(model.named_parameters())
    if set(saved) != set(params):
        raise ValueError(f"checkpoint '{path}': its parameters do not match the model's")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n].to(p.device))  # in place: the flat optimiser buffers stay the parameters' storage


def _rng_state(st: Any) -> dict[str, Any]:
    version, internal, gauss = st.rng.getstate()
    state = {
        "random": [version, list(internal), gauss],
        "generator": st.generator.get_state(),
        "probe_generator": st.probe_generator.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(st: Any, state: dict[str, Any]) -> None:
    version, internal, gauss = state["random"]
    st.rng.setstate((version, tuple(internal), gauss))
    st.generator.set_state(state["generator"])
    st.probe_generator.set_state(state["probe_generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(rank: int) -> str:
    """The file of rank ``rank``'s random state: ``rng.pt`` for rank 0 (and a single process), else ``rng-rank-R.pt``."""
    return "rng.pt" if rank == 0 else f"rng-rank-{rank}.pt"


def world_size(path: Path) -> int:
    """How many ranks wrote the checkpoint at ``path`` (1 for one written before world sizes were recorded)."""
    return int(json.loads((path / "state.json").read_text()).get("world_size", 1))


def save(folder: Path, models: Any, st: Any, recorder: dict[str, Any], config_yaml: str, keep: int,
         rngs: list[dict[str, Any]] | None = None) -> Path:
    """Write the checkpoint of iteration ``st.iteration`` into ``folder`` (atomically), then prune to ``keep``.
    ``rngs``: every rank's random state in rank order (a run over N ranks); this process's alone by default."""
    rngs = rngs if rngs is not None else [_rng_state(st)]
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{st.iteration:06d}"
    tmp, final = folder / f".{name}.tmp", folder / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_weights(models.policy), str(tmp / "policy.safetensors"))
    if models.value is not None:
        save_file(_weights(models.value), str(tmp / "value.safetensors"))
    torch.save(st.optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(st.scheduler.state_dict(), tmp / "scheduler.pt")
    for rank, rng in enumerate(rngs):
        torch.save(rng, tmp / rng_file(rank))
    state = {"iteration": st.iteration, "kl_coef": st.kl_coef, "episodes": st.episodes,
             "loss_scaler": st.scaler.state_dict(), "world_size": len(rngs), "recorder": recorder}
    (tmp / "state.json").write_text(json.dumps(state))
    (tmp / "config.yaml").write_text(config_yaml)
    for f in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # a rerun from an older checkpoint overwrites what it redoes
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune(folder, keep)
    return final


def load_policy(policy: nn.Module, path: Path) -> None:
    """The policy weights of the checkpoint at ``path`` into ``policy`` (``ppo-harness export``)."""
    _load_weights(policy, path / "policy.safetensors")


def _read(path: Path) -> dict[str, Any]:
    """Everything of the checkpoint at ``path`` but the weights, on the CPU (picklable: rank 0 broadcasts it)."""
    state = json.loads((path / "state.json").read_text())
    return {
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"),
        "scheduler": torch.load(path / "scheduler.pt", weights_only=True, map_location="cpu"),
        "rngs": [torch.load(path / rng_file(r), weights_only=True) for r in range(state.get("world_size", 1))],
        "state": state,
    }


def _apply(saved: dict[str, Any], st: Any, rank: int) -> dict[str, Any]:
    """``_read``'s result into ``st`` (in place), rank ``rank``'s random state; returns the recorder's state."""
    st.optimizer.load_state_dict(saved["optimizer"])  # cast to each parameter's device
    st.scheduler.load_state_dict(saved["scheduler"])
    _set_rng_state(st, saved["rngs"][rank])
    state = saved["state"]
    st.iteration, st.kl_coef, st.episodes = state["iteration"], state["kl_coef"], state["episodes"]
    if "loss_scaler" in state:
        st.scaler.load_state_dict(state["loss_scaler"])
    return state["recorder"]


def _load_models(path: Path, models: Any) -> None:
    _load_weights(models.policy, path / "policy.safetensors")
    if models.value is not None:
        _load_weights(models.value, path / "value.safetensors")


def restore(path: Path, models: Any, st: Any) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``models`` and ``st`` (in place, one process); returns the recorder's
    state."""
    _load_models(path, models)
    return _apply(_read(path), st, 0)


def restore_ranks(folder: Path | None, models: Any, st: Any) -> dict[str, Any] | None:
    """The newest checkpoint in ``folder`` restored on every rank of ``st.world`` (``restore`` for one process):
    rank 0 alone finds and reads it (the other ranks' ``folder`` is None: they may not see the runs dir), then
    broadcasts the trainable weights (the flat buffers), the optimiser's, scheduler's and loop's state, the
    recorder's and every rank's random state; each rank takes its own. Returns the recorder's state, or None
    when there is no checkpoint. Raises WorldSizeMismatch (on every rank) at another world size."""
    w = st.world
    saved: dict[str, Any] | str | None = None
    path = latest(folder) if w.main and folder is not None else None
    if path is not None:
        if (n := world_size(path)) != w.size:
            saved = (f"checkpoint '{path}' was written by {n} rank(s) and cannot continue over {w.size} "
                     f"(--nproc-per-node {n})")
        else:
            _load_models(path, models)
            saved = _read(path)
    saved = dist.broadcast_object(saved, w)
    if isinstance(saved, str):
        raise WorldSizeMismatch(saved)
    if saved is None:
        return None
    with torch.no_grad():
        for buf in st.params.flat:  # the replicas are rank 0's (the same broadcast as at the start)
            dist.broadcast_(buf.data, w)
    return _apply(saved, st, w.rank)


class Checkpoints:
    """A run's checkpointing as the loop sees it: ``resume`` before the first iteration, ``after`` each.

    Off (both no-ops) when ``train.checkpoint_every`` is 0 or rank 0's logger has no local store folder. Over N
    ranks every rank calls both (they hold collectives); rank 0 alone has the folder, and ``resume`` tells the
    other ranks whether checkpoints are on.
    """

    def __init__(self, cfg: Any, logger: Any, world: dist.World | None = None):
        self.world = world or dist.World()
        store = getattr(logger, "store", None) if self.world.main else None  # the other ranks: a NullLogger
        self.every, self.keep, self.cfg = cfg.train.checkpoint_every, cfg.train.keep_checkpoints, cfg
        self.folder = run_folder(store.runs_dir, logger.run_id) if store is not None and self.every else None
        self.on = self.folder is not None

    def resume(self, models: Any, st: Any, recorder: Any) -> int:
        """Restore the newest checkpoint, if any, into ``models``, ``st`` and ``recorder``; its iteration (else 0)."""
        self.on = bool(dist.broadcast_object(self.on, self.world))
        if not self.on:
            return 0
        state = restore_ranks(self.folder, models, st)
        if state is None:
            return 0
        recorder.load_state(state)
        return st.iteration

    def after(self, it: int, models: Any, st: Any, recorder: Any) -> None:
        """Checkpoint after iteration ``it`` when due (every ``train.checkpoint_every`` and after the last)."""
        if self.on and (it % self.every == 0 or it == self.cfg.train.iterations):
            rngs = dist.gather_objects(_rng_state(st), self.world)  # every rank's: each samples on its own
            if self.world.main:
                save(self.folder, models, st, recorder.state(), self.cfg.to_yaml(), self.keep, rngs)
