"""train.device and sweep --devices: spelling, resolution on this machine, the worker's pinning, the run's tag."""

from __future__ import annotations

import pytest
import torch

from harness import devices
from harness.config import ConfigError, build_config

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_every_documented_spelling_is_accepted(value):
    assert build_config(None, {"train.device": value}).train.device == value


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:x", "", "cpu "])
def test_other_spellings_are_refused_naming_the_key(value):
    with pytest.raises(ConfigError) as e:
        build_config(None, {"train.device": value})
    assert "train.device" in str(e.value) and "auto, cpu, cuda, cuda:N or mps" in str(e.value)


def test_cpu_and_auto_resolve_on_this_machine():
    assert devices.resolve("cpu") == torch.device("cpu")
    assert devices.resolve("auto") == torch.device("cuda" if CUDA else "cpu")


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: the refusal of cuda is for machines without it")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(devices.DeviceError) as e:
        devices.resolve("cuda")
    assert str(e.value).startswith("train.device 'cuda': no CUDA device")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (none here)")
def test_cuda_resolves_and_a_missing_index_is_refused():
    # cuda without an index is the current device (cuda:LOCAL_RANK in a rank of a run over several processes)
    assert devices.resolve("cuda") == torch.device("cuda") == devices.resolve("auto")
    assert devices.resolve("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(devices.DeviceError):
        devices.resolve(f"cuda:{torch.cuda.device_count()}")


def test_devices_parse_and_pin_one_worker_each():
    assert devices.parse_devices(None) == []
    assert devices.parse_devices("0, 1,3") == ["0", "1", "3"]
    assert [devices.worker_env(["0", "1", "3"], k) for k in range(4)] == [
        {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}, {"CUDA_VISIBLE_DEVICES": "3"},
        {"CUDA_VISIBLE_DEVICES": "0"}]
    assert devices.worker_env([], 2) == {}
    for bad, says in (("a,b", "expected CUDA device indices"), ("0,0", "listed twice"), ("", "expected")):
        with pytest.raises(devices.DeviceError) as e:
            devices.parse_devices(bad)
        assert says in str(e.value) and str(e.value).startswith("--devices")


def test_describe_names_the_pinned_device(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.describe(torch.device("cpu")) == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert devices.describe(torch.device("cpu")) == "cpu (CUDA_VISIBLE_DEVICES=2)"


def test_a_worker_of_runs_over_several_processes_gets_a_group():
    """--procs-per-run N: worker k sees devices[k*N:(k+1)*N] (k modulo the groups); refusals name the option."""
    eight = [str(i) for i in range(8)]
    assert [devices.worker_env(eight, k, 4) for k in range(3)] == [
        {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}]
    assert devices.worker_env(["3", "1"], 0, 2) == {"CUDA_VISIBLE_DEVICES": "3,1"}
    assert devices.worker_env([], 1, 2) == {}
    devices.check_groups(eight, 4, 2)
    devices.check_groups(["0"], 1, 4)  # one process per run: workers may share a device, as before
    devices.check_groups([], 2, 3)  # the CPU: groups of processes, no devices to split
    for args, says in (((eight, 0, 1), "--procs-per-run: expected at least 1, got 0"),
                       ((eight[:6], 4, 1), "--devices: 6 device(s) do not split into groups of --procs-per-run 4"),
                       ((eight, 4, 3), "--devices: 3 worker(s) x --procs-per-run 4 need 12 devices, got 8")):
        with pytest.raises(devices.DeviceError) as e:
            devices.check_groups(*args)
        assert str(e.value) == says
