"""The option registries (harness/algos/registry.py) and the config agree name for name; what each value cannot
combine with is refused in one line naming the key; the TRL baselines refuse every value they cannot express."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

import baselines.trl_grpo as trl_grpo
import baselines.trl_ppo as trl_ppo
import baselines.trl_rloo as trl_rloo
from harness.algos.aggregations import AGGREGATIONS
from harness.algos.estimators import BASELINES
from harness.algos.kl_estimators import KL_ESTIMATORS
from harness.algos.losses import POLICY_LOSSES
from harness.algos.offpolicy import CORRECTIONS
from harness.algos.ratio_levels import RATIO_LEVELS
from harness.algos.registry import Registry
from harness.config import (
    AdvantageConfig,
    ConfigError,
    KLConfig,
    LossConfig,
    PPOConfig,
    RolloutConfig,
    build_config,
    describe,
)
from tests.conftest import ROOT

KEYS = [("ppo.loss_mode", PPOConfig, "loss_mode", POLICY_LOSSES),
        ("rollout.correction", RolloutConfig, "correction", CORRECTIONS),
        ("advantage.baseline", AdvantageConfig, "baseline", BASELINES),
        ("kl.estimator", KLConfig, "estimator", KL_ESTIMATORS),
        ("loss.agg", LossConfig, "agg", AGGREGATIONS),
        ("ppo.ratio_level", PPOConfig, "ratio_level", RATIO_LEVELS)]
ALL = [POLICY_LOSSES, CORRECTIONS, BASELINES, KL_ESTIMATORS, AGGREGATIONS, RATIO_LEVELS]


def _valid_with(key: str, name: str) -> dict:
    """The other keys a registered value needs to make a valid config (the rules of harness.config)."""
    if key == "advantage.baseline":
        return {"advantage.level": "sequence"}
    if key == "ppo.loss_mode" and name == "geo_mean":
        return {"loss.agg": "seq-mean-token-mean"}
    if key == "kl.estimator" and KL_ESTIMATORS[name].props["loss_gradient"] is not None:
        return {"kl.placement": "loss"}
    if key == "ppo.ratio_level" and RATIO_LEVELS[name].props["max_clip"] is not None:
        return {"ppo.clip_eps": RATIO_LEVELS[name].props["max_clip"]}
    return {}


@pytest.mark.parametrize("key, section, field, registry", KEYS)
def test_config_values_are_the_registry_names(key, section, field, registry):
    """The config key accepts exactly the registered names, and `ppo-harness config` lists each with its peers'
    names (catches a value registered but not accepted, accepted but not registered, or undocumented)."""
    allowed = get_args(section.model_fields[field].annotation)
    assert tuple(allowed) == registry.names()
    doc = {d.key: d for d in describe()}[key]
    for name in registry.names():
        assert name in doc.type.split(" | ")
        assert name in doc.description
        build_config(None, {key: name, **_valid_with(key, name)})
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config(None, {key: "not_registered"})


def test_correction_levels_are_the_ratio_levels_that_take_a_correction():
    """rollout.correction_level accepts exactly the ratio levels registered with correction=True; every rollout
    correction's levels are among them and ``offpolicy.importance_ratio`` computes each (catches a level added to
    one list and not the other, or accepted by the config and unknown to the correction's ratio)."""
    from harness.algos.offpolicy import importance_ratio

    levels = tuple(n for n, e in RATIO_LEVELS.items() if e.props["correction"])
    assert levels and tuple(get_args(RolloutConfig.model_fields["correction_level"].annotation)) == levels
    doc = {d.key: d for d in describe()}["rollout.correction_level"]
    old, mu, mask = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]]), torch.ones(1, 2)
    for name in levels:
        assert name in doc.type.split(" | ")
        build_config(None, {"rollout.correction_level": name})
        assert torch.isfinite(importance_ratio(old, mu, mask, name)).all()
    for name, e in CORRECTIONS.items():
        assert set(e.props["levels"]) <= set(levels), name
    for name in set(RATIO_LEVELS.names()) - set(levels):
        with pytest.raises(ConfigError, match=r"rollout\.correction_level"):
            build_config(None, {"rollout.correction_level": name})
        with pytest.raises(ValueError, match="unknown correction level"):
            importance_ratio(old, mu, mask, name)


@pytest.mark.parametrize("registry", ALL)
def test_every_entry_cites_a_paper_and_the_readme_names_it(registry):
    readme = (ROOT / "README.md").read_text()
    for name in registry.names():
        e = registry[name]
        assert e.paper and callable(e.fn)
        assert f"`{name}`" in readme, name


def test_the_registries_import_without_torch_and_math_dispatches_through_them():
    """harness.config reads the registries: importing them must not import torch (the sweep spec's import
    checks the same from above); math's KL, aggregation and ratio functions are the registered ones."""
    import subprocess
    import sys

    from harness.algos import math

    code = ("import sys, harness.algos.losses, harness.algos.estimators, harness.algos.offpolicy, harness.algos.kl_estimators, "
            "harness.algos.aggregations, harness.algos.ratio_levels, harness.config; "
            "assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
    assert math.KL_ESTIMATORS is KL_ESTIMATORS and math.AGGREGATIONS is AGGREGATIONS
    assert math.RATIO_LEVELS is RATIO_LEVELS
    assert POLICY_LOSSES["vanilla"].props["ratio_levels"] == RATIO_LEVELS.names()


def test_registry_refuses_a_second_registration_and_names_unknown_values():
    r = Registry("thing")
    r.register("a", paper="p")(lambda: None)
    with pytest.raises(ValueError, match="registered twice"):
        r.register("a", paper="p")(lambda: None)
    with pytest.raises(ValueError, match="unknown thing 'b'"):
        r["b"]


def test_every_loss_mode_runs_on_a_small_batch_and_returns_the_common_stats():
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.2, -9.0]], requires_grad=True)
    old, adv = lp.detach() + 0.1, torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    for name in POLICY_LOSSES.names():
        agg = "seq-mean-token-mean" if name == "geo_mean" else "token-mean"
        loss, st = POLICY_LOSSES[name].fn(lp, old, adv, mask, clip_eps=0.2, agg=agg)
        assert torch.isfinite(loss)
        assert {"approxkl", "clipfrac", "clipfrac_low", "clipfrac_high", "ratio_mean"} <= set(st), name


REFUSED = [
    ({"ppo.loss_mode": "cispo", "ppo.ratio_level": "sequence", "ppo.clip_eps": 0.001}, "ppo.ratio_level"),
    ({"ppo.loss_mode": "sapo", "ppo.clip_eps_high": 0.28}, "ppo.clip_eps_high"),
    ({"ppo.loss_mode": "kl_cov", "ppo.clip_eps_high": 0.28}, "ppo.clip_eps_high"),
    ({"ppo.loss_mode": "cispo", "ppo.dual_clip": 3.0}, "ppo.dual_clip"),
    ({"ppo.loss_mode": "geo_mean"}, "loss.agg"),
    ({"ppo.sapo_tau_pos": 2.0}, "ppo.sapo_tau_pos"),
    ({"ppo.loss_mode": "kl_cov", "ppo.clip_cov_lb": 0.0}, "ppo.clip_cov_lb"),
    ({"ppo.loss_mode": "sapo", "ppo.cov_ratio": 0.1}, "ppo.cov_ratio"),
    ({"rollout.correction": "icepop", "rollout.correction_level": "sequence"}, "rollout.correction_level"),
    ({"rollout.is_threshold": 2.0}, "rollout.is_threshold"),
    ({"rollout.correction": "tis", "rollout.is_threshold": 2.0, "rollout.is_threshold_low": 3.0},
     "rollout.is_threshold_low"),
    ({"rollout.filter_groups": True, "rollout.group_size": 1, "advantage.baseline": "none"}, "rollout.filter_groups"),
    ({"train.overlong_buffer": 10, "task.response_length": 6}, "train.overlong_buffer"),
    ({"advantage.level": "sequence", "advantage.baseline": "reinforce_pp_baseline", "rollout.group_size": 1},
     "advantage.baseline"),
    ({"rollout.staleness": -1}, "rollout.staleness"),
]


@pytest.mark.parametrize("over, key", REFUSED)
def test_impossible_combinations_are_refused_naming_the_key(over, key):
    """One line, the key named (the CLI turns ConfigError into `error: ...`, exit 2: tests/smoke/test_menu_cli.py)."""
    with pytest.raises(ConfigError) as e:
        build_config(None, over)
    assert e.value.key == key and "\n" not in str(e.value)


MENU = [({"ppo.loss_mode": "sapo"}, "ppo.loss_mode"), ({"rollout.staleness": 2}, "rollout.staleness"),
        ({"rollout.correction": "tis"}, "rollout.correction"), ({"rollout.filter_groups": True}, "rollout.filter_groups"),
        ({"train.overlong_buffer": 4}, "train.overlong_buffer")]
GROUP_OK = {"advantage.level": "sequence", "advantage.baseline": "group_norm", "advantage.whiten": False,
            "kl.placement": "loss", "kl.estimator": "k3", "loss.agg": "seq-mean-token-mean"}
RLOO_OK = {"advantage.level": "sequence", "advantage.baseline": "rloo", "ppo.epochs": 1, "ppo.minibatches": 1,
           "loss.agg": "seq-mean-token-sum"}


@pytest.mark.parametrize("over, key", MENU)
@pytest.mark.parametrize("module, base", [(trl_ppo, {}), (trl_grpo, GROUP_OK), (trl_rloo, RLOO_OK)])
def test_trl_baselines_refuse_the_menu_by_key(module, base, over, key):
    """Each TRL baseline accepts the base config and refuses each new value naming its key (catches a value
    silently run as something TRL does not do)."""
    module.check_expressible(build_config(None, base))
    with pytest.raises(ValueError) as e:
        module.check_expressible(build_config(None, {**base, **over}))
    assert getattr(e.value, "key", None) == key, str(e.value)
