"""A synthetic but schema-correct sweep: the same tags, params and metric keys the sweep runner logs.

``fake_sweep`` describes runs as plain data; ``write_sweep`` puts them into a real MLflow store
through ``harness.tracking.Store``; ``tidy_frames`` builds the frames ``reports.collect`` returns,
without MLflow, for the fast plotting and rendering tests.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from reports import overopt

AXES = ["ppo.clip_eps", "kl.coef", "rollout.batch_size", "advantage.level"]
EVAL_KEYS = ("eval/gold", "eval/proxy", "eval/kl", "response/length")
GRAD_KEYS = ("grad/variance", "grad/signal", "grad/rel_variance", "grad/noise_scale", "grad/sample_variance",
             "grad/batch_variance", "grad/cosine", "grad/mean_norm")  # fmt: skip
MICROBATCHES = 4  # probe.microbatches of the fake runs


@dataclass
class FakeRun:
    tags: dict
    params: dict
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    status: str = "FINISHED"


def fake_sweep(
    seeds: int = 2,
    iterations: int = 10,
    eval_every: int = 5,
    probe_every: int = 2,
    clip=(0.1, 0.2),
    kl=(0.02, 0.1),
    batch=(16, 32),
    levels=("token", "sequence"),
    trl_cells: int = 2,
    failed: int = 1,
    seed: int = 0,
) -> list[FakeRun]:
    """Runs of a grid sweep, logging every key of the gradient-noise probe (harness/ppo/variance.py).

    Per-completion gradient variance tr(Sigma) is ~3x larger at token level than at sequence
    level and independent of the batch size B, so tr(Sigma)/B falls as 1/B; the signal |G|^2 is
    clearly positive at sequence level and noise around 0 at token level (unresolved there).
    """
    rng = np.random.default_rng(seed)
    runs = []
    cells = list(itertools.product(clip, kl, batch, levels))
    impl_cells = [(c, "custom") for c in cells] + [(c, "trl") for c in cells[:trl_cells]]
    for (eps, coef, bs, level), impl in impl_cells:
        for s in range(seeds):
            axis = {"ppo.clip_eps": eps, "kl.coef": coef, "rollout.batch_size": bs, "advantage.level": level}
            tags = {f"axis.{k}": v for k, v in axis.items()}
            tags.update(
                {
                    "sweep.role": "child",
                    "seed": s,
                    "impl": impl,
                    "task": "sentiment",
                    "advantage.level": level,
                }
            )
            params = {
                **axis,
                "advantage.baseline": "rloo",
                "seed": s,
                "impl": impl,
                "task.name": "sentiment",
                "ppo.epochs": 4,
                "eval.every": eval_every,
                "probe.every": probe_every,
                "probe.microbatches": MICROBATCHES,
                "train.iterations": iterations,
            }
            run = FakeRun(tags, params)
            noise = rng.normal(0, 0.03)
            sigma_base = (3.0 if level == "token" else 1.0) * 40.0 * np.exp(rng.normal(0, 0.2))
            for t in range(iterations + 1):
                ep = t * bs
                klv = (0.05 / (coef + 0.02)) * t / iterations * (1.3 if eps > 0.15 else 1.0)
                m = {
                    "episodes": ep,
                    "objective/scores": 0.2 + 0.05 * t,
                    "policy/clipfrac_avg": 0.05 + eps * 0.3 + 0.01 * rng.normal(),
                    "policy/approxkl_avg": 0.01 + 0.002 * t,
                    "objective/entropy": 2.0 - 0.05 * t + 0.02 * rng.normal(),
                    "loss/policy_avg": -0.01 * t,
                    "perf/tokens_per_s": (1500.0 if impl == "custom" else 900.0) * (1 + 0.05 * rng.normal()),
                }
                if t % eval_every == 0 or t == iterations:
                    m["eval/kl"] = klv
                    m["eval/gold"] = (
                        0.3
                        + 0.4 * (1 - np.exp(-ep / 150))
                        - 0.3 * max(0.0, klv - 1.0)
                        + (0.05 if level == "sequence" else 0.0)
                        + noise
                        + 0.01 * rng.normal()
                    )
                    m["eval/proxy"] = 0.5 + 1.2 * np.sqrt(klv) + 0.02 * rng.normal()
                    m["response/length"] = 20 + t + rng.normal()
                if probe_every and t % probe_every == 0:
                    m.update(probe_metrics(sigma_base * np.exp(rng.normal(0, 0.1)), bs, level, rng))
                run.history[t] = m
            runs.append(run)
    for i in range(failed):
        bad = FakeRun(
            dict(runs[i].tags), dict(runs[i].params), {0: dict(runs[i].history[0])}, status="FAILED"
        )
        runs.append(bad)
    return runs


def probe_metrics(sample_variance: float, batch: int, level: str, rng) -> dict[str, float]:
    """One probe's keys, consistent with each other: tr(Sigma) given, b = B / K, the rest derived."""
    b = batch / MICROBATCHES
    signal = rng.normal(2.0, 0.3) if level == "sequence" else rng.normal(0.0, 0.5)
    var_mb = sample_variance / b  # tr(Cov_mb)
    nan = float("nan")
    return {
        "grad/variance": var_mb,
        "grad/signal": signal,
        "grad/rel_variance": var_mb / signal if signal > 0 else nan,
        "grad/noise_scale": b * var_mb / signal if signal > 0 else nan,
        "grad/sample_variance": sample_variance,
        "grad/batch_variance": sample_variance / batch,
        "grad/cosine": 0.1,
        "grad/mean_norm": float(np.sqrt(max(signal + var_mb / MICROBATCHES, 0.0))),
    }


def write_sweep(store, name: str, runs: list[FakeRun], axes=AXES) -> str:
    """Parent + children in a real MLflow store, as the sweep runner writes them; returns the parent id."""
    parent = store.start_run(
        name,
        run_name=f"sweep-{name}",
        tags={
            "sweep.role": "parent",
            "sweep.name": name,
            "sweep.hash": "abc123",
            "sweep.axes": json.dumps(axes),
        },
    )
    for i, r in enumerate(runs):
        child = store.start_run(
            name, run_name=f"child-{i}", tags=r.tags, params=r.params, parent_run_id=parent.run_id
        )
        for step, metrics in r.history.items():
            child.log_metrics(metrics, step=step)
        child.end(r.status)
    parent.end("FINISHED")
    return parent.run_id


def tidy_frames(runs: list[FakeRun], axes=AXES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (runs, curves) frames of reports.collect, built directly (FINISHED runs only)."""
    rows, curves = [], []
    for i, r in enumerate(x for x in runs if x.status == "FINISHED"):
        row = {
            "run_id": f"run{i:03d}",
            "seed": r.params["seed"],
            "impl": r.params["impl"],
            "task": "sentiment",
        }
        for k in [*axes, "advantage.baseline"]:
            row[k] = r.params[k]
        row["advantage"] = (
            "token" if row["advantage.level"] == "token" else f"sequence/{row['advantage.baseline']}"
        )
        row["cell"] = ", ".join(f"{k}={row[k]}" for k in axes)
        last = {}
        for t in sorted(r.history):
            last.update(r.history[t])
        row.update(last)
        rows.append(row)
        ids = {
            k: v
            for k, v in row.items()
            if k in ("run_id", "seed", "impl", "task", "advantage", "cell", *axes)
        }
        for t, m in sorted(r.history.items()):
            for key, v in m.items():
                if key != "episodes":
                    curves.append(
                        {**ids, "step": t, "episodes": float(m["episodes"]), "metric": key, "value": v}
                    )
    return pd.DataFrame(rows), pd.DataFrame(curves)


@pytest.fixture(scope="session")
def sweep_runs() -> list[FakeRun]:
    return fake_sweep()


@pytest.fixture(scope="session")
def frames(sweep_runs) -> tuple[pd.DataFrame, pd.DataFrame]:
    return tidy_frames(sweep_runs)


# ---- an over-optimisation sweep (reports.overopt, figures 3 and 8) ---------------------------------

# alpha = 1, beta = 0.5: d* = exp(1 / 0.5 - 1) = e, KL* = e^2; beta = 0.35: KL* = exp(2 (1 / 0.35 - 1))
TRUE = {512: (1.0, 0.5), 4096: (1.0, 0.35)}
KL_MAX = {0.0: 90.0, 0.05: 30.0, 0.2: 4.0}  # the KL each kl.coef level reaches at the last evaluation
EVERY = 5


def gao_sweep(true=None, coefs=(0.0, 0.05, 0.2), seeds=3, evals=15, noise=0.002, spread=0.01, seed=0):
    """(runs, curves) of an rm_pairs x kl.coef x seed sweep whose gold gain is d (alpha - beta ln d).

    Each seed perturbs alpha and beta slightly (seed-to-seed spread); KL grows linearly to the
    coefficient's ``KL_MAX`` and is slightly negative at step 0 (an estimate's noise, clipped at 0).
    A run's onset is the first evaluation at which gold has fallen for two consecutive evaluations
    while the proxy rose (the harness's rule); it is logged as eval/overopt_onset_kl there.
    """
    true = TRUE if true is None else true
    rng = np.random.default_rng(seed)
    rows, curves = [], []
    for (rm, (alpha, beta)), s in itertools.product(true.items(), range(seeds)):
        a_s, b_s = alpha + rng.normal(0, spread), beta + rng.normal(0, spread / 2)
        for coef in coefs:
            rid = f"rm{rm}-c{coef:g}-s{s}"
            kl = KL_MAX[coef] * np.arange(evals + 1) / evals
            kl[0] = -0.002
            d = np.sqrt(np.maximum(kl, 0))
            with np.errstate(divide="ignore", invalid="ignore"):
                gain = np.where(d > 0, d * (a_s - b_s * np.log(d)), 0.0)
            gold = 0.3 + gain + rng.normal(0, noise, d.size)
            proxy = 0.1 + 0.8 * d + rng.normal(0, noise, d.size)
            falls = [
                i for i in range(2, d.size) if gold[i] < gold[i - 1] < gold[i - 2] and proxy[i] > proxy[i - 2]
            ]
            onset = falls[0] if falls else None
            row = {"run_id": rid, "seed": s, "model.rm_pairs": rm, "kl.coef": coef, "rollout.batch_size": 16,
                   "impl": "custom", "cell": f"model.rm_pairs={rm}, kl.coef={coef:g}",
                   "episodes": evals * EVERY * 16.0, "eval/gold": gold[-1], "eval/proxy": proxy[-1],
                   "eval/kl": kl[-1]}  # fmt: skip
            for i in range(d.size):
                for metric, v in (("eval/gold", gold[i]), ("eval/proxy", proxy[i]), ("eval/kl", kl[i])):
                    curves.append((rid, i * EVERY, i * EVERY * 16.0, metric, v, rm, coef, s))
            if onset is not None:
                row[overopt.ONSET] = kl[onset]
                curves.append(
                    (rid, onset * EVERY, onset * EVERY * 16.0, overopt.ONSET, kl[onset], rm, coef, s)
                )
            rows.append(row)
    cols = ["run_id", "step", "episodes", "metric", "value", "model.rm_pairs", "kl.coef", "seed"]
    return pd.DataFrame(rows), pd.DataFrame(curves, columns=cols)


@pytest.fixture(scope="module")
def sweep3():
    """The Gao et al. sweep of reports.overopt's tests: 2 RM sizes x 3 kl.coef x 3 seeds."""
    return gao_sweep(seeds=3)
