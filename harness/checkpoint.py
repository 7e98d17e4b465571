"""Checkpoints of a custom-core run: write one atomically, find the newest, restore it, prune the old.

A checkpoint is a folder ``<runs-dir>/checkpoints/<run id>/iter-NNNNNN/`` holding

- ``policy.safetensors`` and ``value.safetensors``: every parameter of the policy and of the value
  model (absent without one), by name;
- ``optimizer.pt`` / ``scheduler.pt``: the optimiser's and scheduler's ``state_dict`` (``torch.load``
  with ``weights_only=True`` reads them back);
- ``rng.pt``: the prompt sampler's ``random.Random`` state, the token-sampling / shuffle generator, the
  noise probe's generator, torch's global CPU generator (and CUDA's when the run is on a GPU);
- ``state.json``: the iteration, the KL controller's coefficient, the episodes, fp16's loss scale (its
  scale, good steps and skipped steps), and what the recorder keeps across iterations (metric history, evaluations, samples, the over-optimisation onset);
- ``config.yaml``: the run's config (``--resume`` reads it from here).

It is written into ``.iter-NNNNNN.tmp`` and renamed when whole, so a kill mid-write leaves the
previous checkpoint as the newest. Disk per checkpoint: the trainable weights in their dtype, plus
Adam's two moments (2x those weights, fp32) - about 3x the trainable parameters x 4 bytes.
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

__all__ = ["Checkpoints", "checkpoint_dirs", "latest", "load_policy", "prune", "restore", "run_folder", "save"]

PREFIX = "iter-"


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


def save(folder: Path, models: Any, st: Any, recorder: dict[str, Any], config_yaml: str, keep: int) -> Path:
    """Write the checkpoint of iteration ``st.iteration`` into ``folder`` (atomically), then prune to ``keep``."""
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
    torch.save(_rng_state(st), tmp / "rng.pt")
    state = {"iteration": st.iteration, "kl_coef": st.kl_coef, "episodes": st.episodes,
             "loss_scaler": st.scaler.state_dict(), "recorder": recorder}
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


def restore(path: Path, models: Any, st: Any) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``models`` and ``st`` (in place); returns the recorder's state."""
    _load_weights(models.policy, path / "policy.safetensors")
    if models.value is not None:
        _load_weights(models.value, path / "value.safetensors")
    st.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    st.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    _set_rng_state(st, torch.load(path / "rng.pt", weights_only=True))
    state = json.loads((path / "state.json").read_text())
    st.iteration, st.kl_coef, st.episodes = state["iteration"], state["kl_coef"], state["episodes"]
    if "loss_scaler" in state:
        st.scaler.load_state_dict(state["loss_scaler"])
    return state["recorder"]


class Checkpoints:
    """A run's checkpointing as the loop sees it: ``resume`` before the first iteration, ``after`` each.

    Off (both no-ops) when ``train.checkpoint_every`` is 0 or the logger has no local store folder.
    """

    def __init__(self, cfg: Any, logger: Any):
        store = getattr(logger, "store", None)
        self.every, self.keep, self.cfg = cfg.train.checkpoint_every, cfg.train.keep_checkpoints, cfg
        self.folder = run_folder(store.runs_dir, logger.run_id) if store is not None and self.every else None

    def resume(self, models: Any, st: Any, recorder: Any) -> int:
        """Restore the newest checkpoint, if any, into ``models``, ``st`` and ``recorder``; its iteration (else 0)."""
        path = latest(self.folder) if self.folder is not None else None
        if path is None:
            return 0
        recorder.load_state(restore(path, models, st))
        return st.iteration

    def after(self, it: int, models: Any, st: Any, recorder: Any) -> None:
        """Checkpoint after iteration ``it`` when due (every ``train.checkpoint_every`` and after the last)."""
        if self.folder is not None and (it % self.every == 0 or it == self.cfg.train.iterations):
            save(self.folder, models, st, recorder.state(), self.cfg.to_yaml(), self.keep)
