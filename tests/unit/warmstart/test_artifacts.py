"""The shipped task artifacts: they match their manifest, load by default without a build, and a
corrupted file is refused by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from harness.config import build_config
from harness.models.types import ModelError
from harness.tasks import get_task, list_tasks
from harness.warmstart import artifacts
from harness.warmstart.cache import cache_key as _key
from harness.warmstart.cache import rm_parts, sft_parts
from harness.warmstart.load import load_models, validate_model_keys
from tests.conftest import ROOT


def test_the_manifest_matches_every_shipped_file_and_lists_them_all():
    results = artifacts.verify_all()
    assert results and all(state == "ok" for _, state in results), results
    m = artifacts.read_manifest()
    assert set(m["artifacts"]) == {f"{t}/{k}" for t in list_tasks() for k in ("sft", "rm")}
    assert m["built_with"]["torch"] and m["recipe"]["sft"]["steps"] > 0


def test_the_shipped_keys_are_those_of_the_default_config():
    # a recipe change without `ppo-harness tasks build` would silently fall back to local builds
    m = artifacts.read_manifest()
    for name in list_tasks():
        cfg, task = build_config(None, {"task.name": name}), get_task(name)
        assert m["artifacts"][f"{name}/sft"]["key"] == _key(sft_parts(cfg, task)), name
        assert m["artifacts"][f"{name}/rm"]["key"] == _key(rm_parts(cfg, task)), name


def test_the_shipped_files_stay_small():
    total = sum(p.stat().st_size for p in artifacts.ROOT.rglob("*") if p.is_file())
    assert total < 15e6, total


def test_default_config_loads_the_shipped_models_without_building(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_HARNESS_CACHE", str(tmp_path / "cache"))
    m = load_models(build_config(None, {}))
    assert not (tmp_path / "cache").exists()  # nothing was built
    assert m.provenance["artifacts.sft"] == "shipped" and m.provenance["artifacts.rm"] == "shipped"
    assert m.provenance["artifacts.version"] == artifacts.read_manifest()["version"]
    other = build_config(None, {"model.rm_pairs": 64, "task.response_length": 6})
    assert artifacts.shipped("sentiment", "rm", _key(rm_parts(other, get_task("sentiment")))) is None


def _corrupt_copy(tmp_path):
    root = tmp_path / "shipped"
    shutil.copytree(artifacts.ROOT, root)
    target = root / "sentiment" / "rm" / "rm" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    target.write_bytes(bytes(data))
    return root, target


def test_a_flipped_byte_is_refused_by_name(tmp_path):
    root, target = _corrupt_copy(tmp_path)
    cfg, task = build_config(None, {}), get_task("sentiment")
    assert artifacts.shipped("sentiment", "sft", _key(sft_parts(cfg, task)), root) is not None  # untouched
    with pytest.raises(artifacts.ArtifactError, match="checksum mismatch") as e:
        artifacts.shipped("sentiment", "rm", _key(rm_parts(cfg, task)), root)
    assert str(target) in str(e.value) and "\n" not in str(e.value)
    bad = dict(artifacts.verify_all(root))
    assert "checksum mismatch" in bad["sentiment/rm"] and bad["sentiment/sft"] == "ok"


def test_the_cli_refuses_a_corrupted_artifact_before_any_run(tmp_path):
    root, target = _corrupt_copy(tmp_path)
    env = {**os.environ, "PPO_HARNESS_SHIPPED": str(root)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "harness.cli", *a], cwd=tmp_path, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    r = run("train", "--task", "sentiment", "--runs-dir", str(tmp_path / "runs"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert str(target) in r.stderr and "checksum mismatch" in r.stderr
    assert not (tmp_path / "runs").exists()  # no run, no store
    v = run("tasks", "verify")
    assert v.returncode == 1 and "sentiment/rm" in v.stdout and "checksum mismatch" in v.stdout


def test_validate_model_keys_verifies_only_what_the_run_uses(tmp_path, monkeypatch):
    root, _ = _corrupt_copy(tmp_path)
    monkeypatch.setattr(artifacts, "ROOT", root)
    with pytest.raises(ModelError, match="checksum mismatch"):
        validate_model_keys(build_config(None, {}))
    validate_model_keys(build_config(None, {"model.reward": "gold"}))  # the RM is not used: fine


def test_the_package_data_ships_the_artifacts():
    text = (ROOT / "pyproject.toml").read_text()
    assert "shipped/manifest.json" in text


def test_tasks_build_writes_a_verified_tree_and_replaces_what_was_there(tmp_path):
    from harness.warmstart.build import build_shipped

    root = tmp_path / "shipped"
    stale = root / "length" / "sft" / "policy" / "stale.bin"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    path = build_shipped(["length"], root=root)
    assert path == root / "manifest.json" and not stale.exists()
    assert dict(artifacts.verify_all(root)) == {"length/sft": "ok", "length/rm": "ok"}
    cfg, task = build_config(None, {"task.name": "length"}), get_task("length")
    assert artifacts.shipped("length", "rm", _key(rm_parts(cfg, task)), root) == root / "length" / "rm"
