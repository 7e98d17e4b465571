"""Where a run computes: ``train.device`` resolved to a torch device, and the sweep's ``--devices`` list.

    train.device = auto | cpu | cuda | cuda:N | mps      (auto: CUDA when present, else the CPU)

``check_device`` refuses, before a run exists, a spelling outside that list and a device this machine
does not have (one line naming ``train.device``). ``--devices 0,1,2,3`` gives sweep worker k the
CUDA device ``devices[k % n]`` through ``CUDA_VISIBLE_DEVICES``: inside the worker that device is
``cuda:0``, so specs need not name it; with ``--procs-per-run N`` worker k gets the group
``devices[k*N:(k+1)*N]`` and rank r of its trials ``cuda:r``. ``cuda`` (no index) is the current device, as
``auto`` is on a CUDA machine: ``cuda:LOCAL_RANK`` in a rank of a run over several processes
(``dist.init`` sets it), ``cuda:0`` in one process. The CPU fast path (packed GPT-2 forwards, oneDNN GEMMs,
flat buffers) applies to CPU tensors only; elsewhere the generic Hugging Face path runs.
"""

from __future__ import annotations

import os
import re

from harness.errors import InputError

SPELLING = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$")
VISIBLE = "CUDA_VISIBLE_DEVICES"


class DeviceError(InputError):
    """A device this run cannot use: one line naming the key (``train.device``) or option (``--devices``)."""


def check_spelling(value: str) -> str:
    """``value`` when it is one of auto | cpu | cuda | cuda:N | mps (a config validator's rule)."""
    if not SPELLING.match(value):
        raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {value!r}")
    return value


def resolve(value: str):
    """The torch device ``train.device`` means on this machine; DeviceError when it has none such."""
    import torch

    check_spelling(value)
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    if value == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("train.device 'mps': this machine has no Apple GPU (MPS) available to torch")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise DeviceError(f"train.device '{value}': no CUDA device is available to torch on this machine "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})")
    if value == "cuda":  # the current device, as auto: cuda:LOCAL_RANK in a rank of a run over several processes
        return torch.device("cuda")
    index = int(value.partition(":")[2])
    if index >= torch.cuda.device_count():
        raise DeviceError(f"train.device '{value}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def parse_devices(text: str | None) -> list[str]:
    """``--devices 0,1,2`` -> ['0', '1', '2'] (CUDA device indices, each once); [] for None."""
    if text is None:
        return []
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t.isdigit() for t in items):
        raise DeviceError(f"--devices {text!r}: expected CUDA device indices separated by commas, e.g. 0,1,2,3")
    if len(set(items)) != len(items):
        raise DeviceError(f"--devices {text!r}: a device is listed twice")
    return items


def check_devices(devices: list[str]) -> None:
    """Every listed CUDA device exists here (DeviceError naming --devices otherwise)."""
    if not devices:
        return
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [d for d in devices if int(d) >= n]
    if missing:
        raise DeviceError(f"--devices: CUDA device {missing[0]} does not exist on this machine ({n} visible)")


def check_groups(devices: list[str], per_run: int, workers: int) -> None:
    """``--procs-per-run`` against ``--devices`` and ``--workers``: at least 1; over several processes each
    worker holds a group of its own (the devices split into whole groups, enough for every worker)."""
    if per_run < 1:
        raise DeviceError(f"--procs-per-run: expected at least 1, got {per_run}")
    if per_run == 1 or not devices:
        return
    if len(devices) % per_run:
        raise DeviceError(f"--devices: {len(devices)} device(s) do not split into groups of --procs-per-run {per_run}")
    if len(devices) < workers * per_run:
        raise DeviceError(f"--devices: {workers} worker(s) x --procs-per-run {per_run} need {workers * per_run} "
                          f"devices, got {len(devices)}")


def worker_env(devices: list[str], k: int, per_run: int = 1) -> dict[str, str]:
    """The environment pinning sweep worker ``k`` to its device (``devices[k % n]``), or, when each trial is a
    run over ``per_run`` processes, to its group ``devices[k*per_run:(k+1)*per_run]`` (k modulo the groups):
    rank r of its trials then runs on ``cuda:r``. {} without --devices."""
    if not devices:
        return {}
    groups = [devices[i:i + per_run] for i in range(0, len(devices) - per_run + 1, per_run)]
    return {VISIBLE: ",".join(groups[k % len(groups)])}


def describe(device) -> str:
    """The device as a run's tag shows it, e.g. 'cuda:0 (NVIDIA H200; CUDA_VISIBLE_DEVICES=3)' or 'cpu'."""
    import torch

    visible = os.environ.get(VISIBLE)
    n = (torch.cuda.current_device() if device.index is None else device.index) if device.type == "cuda" else 0
    notes = [torch.cuda.get_device_name(n)] if device.type == "cuda" else []
    if visible is not None:
        notes.append(f"{VISIBLE}={visible}")
    index = f":{n}" if device.type == "cuda" else ""
    return f"{device.type}{index}" + (f" ({'; '.join(notes)})" if notes else "")
