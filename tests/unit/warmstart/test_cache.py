"""The model cache and the reward head on disk: private folders, fresh build dirs, heads that cannot run code."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from harness.models.loading import HEAD_FILE, LEGACY_HEAD_FILE, load_classifier, read_head, save_classifier
from harness.models.types import ModelError
from harness.warmstart import artifacts
from harness.warmstart.cache import _cached, check_cache_dir

SHIPPED_RM = artifacts.ROOT / "sort" / "rm" / "rm"


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _rm_copy(tmp_path: Path) -> Path:
    """The shipped sort RM's model files without its head."""
    d = tmp_path / "rm"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(SHIPPED_RM / name, d / name)
    return d


def test_the_payload_is_live(tmp_path):
    # the planted files below really run code when unpickled without weights_only
    marker = tmp_path / "marker"
    torch.save({"weight": Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("planted", [LEGACY_HEAD_FILE, HEAD_FILE])
def test_a_planted_pickle_head_is_refused_without_running(tmp_path, monkeypatch, planted):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # asks torch to unpickle anything it can
    d = _rm_copy(tmp_path)
    marker = tmp_path / "marker"
    torch.save({"weight": Payload(marker), "bias": torch.zeros(1)}, d / planted)
    with pytest.raises(ModelError) as e:
        load_classifier(d)
    assert not marker.exists(), "the planted payload ran"
    msg = str(e.value)
    assert "\n" not in msg and str(d / planted) in msg and msg.startswith("reward head ")


def test_a_plain_pickle_at_the_legacy_path_is_refused_too(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    d = _rm_copy(tmp_path)
    marker = tmp_path / "marker"
    (d / LEGACY_HEAD_FILE).write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(ModelError, match="refused"):
        read_head(d)
    assert not marker.exists()


def test_the_shipped_legacy_head_still_loads_with_the_variable_set(monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    state = read_head(SHIPPED_RM)
    assert set(state) == {"weight", "bias"} and state["weight"].shape[0] == 1
    model = load_classifier(SHIPPED_RM)
    torch.testing.assert_close(model.score.weight.detach(), state["weight"])
    torch.testing.assert_close(model.score.bias.detach(), state["bias"])


def test_new_builds_write_the_head_as_safetensors(tmp_path):
    model = load_classifier(SHIPPED_RM)
    save_classifier(model, tmp_path / "out")
    assert (tmp_path / "out" / HEAD_FILE).is_file() and not (tmp_path / "out" / LEGACY_HEAD_FILE).exists()
    again = load_classifier(tmp_path / "out")
    torch.testing.assert_close(again.score.weight, model.score.weight)
    torch.testing.assert_close(again.score.bias, model.score.bias)


def test_a_head_that_is_not_weight_and_bias_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(1, 4), "extra": torch.zeros(2)}, str(tmp_path / HEAD_FILE))
    with pytest.raises(ModelError, match="expected the tensors weight"):
        read_head(tmp_path)


# ---- the cache folders -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, who", [(0o775, "its group"), (0o777, "everyone"), (0o757, "everyone")])
def test_a_cache_others_can_write_is_refused_naming_it_and_the_fix(tmp_path, monkeypatch, mode, who):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(mode)
    monkeypatch.setenv("PPO_HARNESS_CACHE", str(root))
    with pytest.raises(ModelError) as e:
        check_cache_dir()
    msg = str(e.value)
    assert f"'{root}'" in msg and f"writable by {who}" in msg and "chmod go-w" in msg and "\n" not in msg
    with pytest.raises(ModelError, match="writable by"):  # and nothing is built there
        _cached(root / "t" / "x", {}, lambda tmp: pytest.fail("built in a shared cache"))
    root.chmod(0o755)
    assert check_cache_dir() == root


def test_the_run_checks_refuse_a_shared_cache_before_any_run(tmp_path, monkeypatch):
    from harness.config import build_config
    from harness.warmstart.load import validate_model_keys

    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o777)
    monkeypatch.setenv("PPO_HARNESS_CACHE", str(root))
    validate_model_keys(build_config(None, {}))  # the shipped models: the cache is not read
    with pytest.raises(ModelError, match="writable by everyone"):
        validate_model_keys(build_config(None, {"model.rm_pairs": 64}))  # a local build: it is


def test_a_build_goes_to_a_fresh_private_dir_beside_its_destination(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_HARNESS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cache" / "task" / "rm-abc"
    seen = []

    def build(tmp: Path) -> dict:
        seen.append(tmp)
        assert tmp.parent == out.parent and tmp.name != f"{out.name}.tmp{os.getpid()}"
        assert tmp.stat().st_mode & 0o077 == 0
        (tmp / "w.bin").write_bytes(b"x")
        return {"n": 1}

    assert _cached(out, {"k": 1}, build) == out
    assert (out / "w.bin").read_bytes() == b"x" and (out / "done.json").is_file()
    assert not seen[0].exists()
    for d in (tmp_path / "cache", out.parent):
        assert d.stat().st_mode & 0o077 == 0  # made private


def test_a_failed_build_leaves_no_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_HARNESS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cache" / "task" / "rm-abc"

    def build(tmp: Path) -> dict:
        (tmp / "half").write_bytes(b"x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _cached(out, {}, build)
    assert sorted(p.name for p in out.parent.iterdir()) == ["rm-abc.lock"]


def test_the_sft_recipe_is_sized_to_the_data_for_an_own_model_and_fixed_for_presets():
    from harness.warmstart.sft import SFT_RECIPE, sft_recipe

    assert sft_recipe(None) == SFT_RECIPE  # the presets' (their shipped artifacts' keys hash it)
    assert sft_recipe(9)["steps"] == 50  # at least 50
    assert sft_recipe(2000)["steps"] == 94 and sft_recipe(2000)["warmup"] == 4  # ceil(3 * 2000 / 64), a twentieth
    assert sft_recipe(100_000)["steps"] == 600  # at most the presets' 600
