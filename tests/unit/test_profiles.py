"""Each implementation's default profile (harness/profiles.py), as ``ppo-harness train`` applies it: the keys
the user left unset take the trainer's defaults (its TRL config class's), a key the user set is kept (and
refused when the trainer cannot express it)."""

from __future__ import annotations

import pytest

from harness.config import build_config
from harness.impls import check_expressible
from harness.profiles import PROFILES, applied, as_overrides, user_keys
from tests.conftest import main_exit

TRL_DEFAULTS = {  # the TRL config attribute each profile key stands for -> the harness key and its value
    "trl-grpo": {"num_generations": ("rollout.group_size", 8), "num_iterations": ("ppo.epochs", 1),
                 "beta": ("kl.coef", 0.0), "steps_per_generation": ("ppo.minibatches", 1)},
    "trl-rloo": {"num_generations": ("rollout.group_size", 2), "num_iterations": ("ppo.epochs", 1),
                 "beta": ("kl.coef", 0.05), "steps_per_generation": ("ppo.minibatches", 1),
                 "normalize_advantages": ("advantage.whiten", False)},
    "trl": {"num_mini_batches": ("ppo.minibatches", 1), "num_ppo_epochs": ("ppo.epochs", 4),
            "kl_coef": ("kl.coef", 0.05), "vf_coef": ("ppo.vf_coef", 0.1), "cliprange": ("ppo.clip_eps", 0.2)},
}


def _trl_config(impl: str):
    import trl
    from trl.experimental.ppo import PPOConfig

    cls = {"trl": PPOConfig, "trl-grpo": trl.GRPOConfig, "trl-rloo": trl.RLOOConfig}[impl]
    return cls(output_dir="/tmp/unused", use_cpu=True, bf16=False)


@pytest.mark.parametrize("impl", ["trl", "trl-grpo", "trl-rloo"])
def test_the_default_config_with_the_profile_is_expressible_and_is_trls_default(impl):

    cfg = build_config(overrides=[*as_overrides(PROFILES[impl]), f"impl={impl}"])
    check_expressible(cfg)  # the default config runs
    trl_cfg, flat = _trl_config(impl), cfg.flat()
    for attr, (key, value) in TRL_DEFAULTS[impl].items():
        assert getattr(trl_cfg, attr) == value, attr  # the profile's value is TRL's own default
        assert flat[key] == value, key


def test_user_set_keys_are_never_replaced(tmp_path):
    yaml_data = {"ppo": {"epochs": 2}, "kl.coef": 0.3}
    user = user_keys(yaml_data, ["rollout.group_size=4"])
    assert user == {"ppo.epochs", "kl.coef", "rollout.group_size"}
    got = applied("trl-rloo", user)
    assert not set(got) & user and got["advantage.level"] == "sequence" and got["ppo.minibatches"] == 1
    assert applied("custom", set()) == {}


def test_train_refuses_an_inexpressible_value_the_user_set(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # through the entry point main(argv), in this process
    code, _, err = main_exit(capsys, "train", "--impl", "trl-rloo", "--set", "ppo.epochs=4",
                             "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and "'ppo.epochs'" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("impl: trl-grpo\nadvantage:\n  level: token\n")
    code, _, err = main_exit(capsys, "train", "--config", str(cfg_file), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and "'advantage.level'" in err, err
