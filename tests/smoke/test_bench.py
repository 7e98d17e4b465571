"""`ppo-harness bench` end to end: both implementations, every JSON field, sane values, option errors.

A benchmark, not a timed test: nothing here asserts a speed.
"""

from __future__ import annotations

import json
import math

import pytest

from harness.bench import run as bench_run
from harness.bench.workload import flops_per_iteration
from tests.conftest import ROOT, run_cli

IMPL_FIELDS = (
    "iterations", "iterations_per_s", "seconds_per_iteration", "cpu_seconds_per_iteration",
    "generated_tokens_per_s", "time_s", "time_share", "peak_rss_mb", "gflops", "peak_share", "threads",
    "iteration_s", "repeats_iterations_per_s", "mean_response_tokens", "flops_per_iteration",
)
PARTS = ("generation", "scoring", "update", "other")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _bench(tmp_path, *args: str) -> tuple[str, dict]:
    """``ppo-harness bench --size S --threads 1 ARGS --json``: (stdout, the JSON document).
    One thread keeps the run short and steady on a busy 2-core machine; the bench's default is 2."""
    out = tmp_path / "out.json"
    r = run_cli("bench", "--size", "S", "--threads", "1", *args, "--json", str(out), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_bench_small_vs_trl_writes_every_field(tmp_path):
    stdout, doc = _bench(tmp_path, "--iterations", "2", "--vs", "trl")
    assert "iterations/s" in stdout and "custom / trl" in stdout  # the printed table
    assert doc["size"] == "S"
    w = doc["workload"]
    assert (w["n_layer"], w["n_embd"], w["n_head"]) == (2, 64, 2)
    assert (w["batch"], w["prompt_tokens"], w["response_tokens"], w["epochs"], w["minibatches"]) == (32, 16, 32, 4, 4)
    assert w["iterations"] == 2 and w["threads"] == 1 and 25 <= w["vocab"] <= 40
    flops = doc["flops_per_iteration"]
    assert all(_positive(flops[k]) for k in ("generation", "scoring", "update", "total"))
    assert flops["total"] == pytest.approx(flops["generation"] + flops["scoring"] + flops["update"])
    assert "2*N*tokens" in doc["flop_formula"]
    assert _positive(doc["matmul_peak_gflops"])
    kernels = doc["matmul_peak_by_kernel"]
    assert "torch_matmul" in kernels and all(_positive(v) for v in kernels.values())
    assert doc["matmul_peak_gflops"] == max(kernels.values())
    assert doc["variant"]["name"] == "equal" and doc["variant"]["equal_math"] is True

    assert set(doc["results"]) == {"custom", "trl"}
    for impl, res in doc["results"].items():
        for key in IMPL_FIELDS:
            assert key in res, (impl, key)
        assert res["iterations"] == 2 and len(res["iteration_s"]) == 2
        for key in ("iterations_per_s", "seconds_per_iteration", "cpu_seconds_per_iteration",
                    "generated_tokens_per_s", "peak_rss_mb", "gflops"):
            assert _positive(res[key]), (impl, key, res[key])
        assert res["iterations_per_s"] == pytest.approx(1 / res["seconds_per_iteration"])
        assert 1 <= res["mean_response_tokens"] <= 32
        assert res["generated_tokens_per_s"] == pytest.approx(res["mean_response_tokens"] * 32 * res["iterations_per_s"])
        assert 0 < res["peak_share"] <= 1, (impl, res["peak_share"])
        assert set(res["time_s"]) == set(PARTS) and set(res["time_share"]) == set(PARTS)
        assert all(res["time_s"][p] >= 0 and 0 <= res["time_share"][p] <= 1 for p in PARTS), (impl, res["time_share"])
        assert res["time_s"]["generation"] > 0 and res["time_s"]["update"] > 0 and res["time_s"]["scoring"] > 0
        assert sum(res["time_share"].values()) == pytest.approx(1.0, abs=0.02)
        assert 50 < res["peak_rss_mb"] < 8000  # MB, of that implementation's own process
        assert res["threads"] == 1

    ratio = doc["ratio_custom_over_trl"]
    for key in ("iterations_per_s", "generated_tokens_per_s", "gflops", "peak_rss_mb", "cpu_time_speedup"):
        assert _positive(ratio[key]), key
    c, t = doc["results"]["custom"], doc["results"]["trl"]
    assert ratio["iterations_per_s"] == pytest.approx(c["iterations_per_s"] / t["iterations_per_s"])
    assert doc["versions"]["trl"].startswith("1.12")


@pytest.mark.slow
def test_bench_variant_is_reported_apart_from_equal_math(tmp_path):
    stdout, doc = _bench(tmp_path, "--iterations", "1", "--variant", "shared-trunk")
    assert "changes the math" in stdout
    assert doc["variant"] == {"name": "shared-trunk", "equal_math": False,
                              "custom_overrides": {"model.value_trunk": "shared"}, "trl_bf16": False}
    assert set(doc["results"]) == {"custom"} and "ratio_custom_over_trl" not in doc
    res = doc["results"]["custom"]
    # one trunk trained, not two: the update's useful FLOPs are the policy's alone
    vocab, length = doc["workload"]["vocab"], res["mean_response_tokens"]
    assert res["flops_per_iteration"] == pytest.approx(flops_per_iteration("S", vocab, length, shared_trunk=True))
    assert res["flops_per_iteration"]["update"] < flops_per_iteration("S", vocab, length)["update"]
    assert 0 < res["peak_share"] <= 1 and res["iterations_per_s"] > 0


@pytest.mark.parametrize("options, message", [
    ({"threads": 0}, "--threads must be >= 1"),
    ({"iterations": 0}, "--iterations must be >= 1"),
    ({"repeats": 0}, "--repeats must be >= 1"),
    ({"warmup": -1}, "--warmup must be >= 0"),
    ({"size": "XL"}, "--size 'XL': expected one of M, S"),
    ({"vs": "openrlhf"}, "--vs 'openrlhf': expected one of trl"),
    ({"variant": "fp8"}, "--variant 'fp8': expected one of equal, shared-trunk, bf16, shared-trunk+bf16"),
])
def test_bench_refuses_a_bad_option_before_any_work(tmp_path, monkeypatch, capsys, options, message):
    """One line on stderr, exit 2, no child spawned, no peak measured, no JSON written."""
    def no_work(*a, **k):
        raise AssertionError("benchmark work started")

    monkeypatch.setattr(bench_run, "measure", no_work)
    monkeypatch.setattr(bench_run, "matmul_peak_gflops", no_work)
    out = tmp_path / "out.json"
    with pytest.raises(bench_run.BenchInputError) as e:
        bench_run.run_bench(**options, json=out)
    assert str(e.value) == message and e.value.exit_code == 2
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    assert not out.exists()


def test_bench_cli_threads_zero_is_an_error():
    """``--threads 0`` was once dropped (the default ran); now one line and exit 2."""
    r = run_cli("bench", "--threads", "0", cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == "error: --threads must be >= 1" and r.stdout == ""
