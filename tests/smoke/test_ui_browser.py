"""`ppo-harness ui` serves the store; headless Chromium opens the printed address and sees the training-runs
view: the sweep's parent with its children (short names), the key metric columns, and a metric chart."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.tracking import Store
from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(os.environ.get("PPO_HARNESS_TEST_ARTIFACTS", ROOT / ".cache" / "test-artifacts"))


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium; .ci/run does it as root)")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep_store(path: Path) -> tuple[str, str, str]:
    """A sweep in the layout the runner writes: one parent (its axes, its best cell mean), two children
    named as the runner names them, with metric histories and their axis as a param."""
    from harness.sweep.spec import run_name

    store = Store(path)
    parent = store.start_run("ui-sweep", run_name="ui-sweep-0123abcd",
                             tags={"sweep.role": "parent", "sweep.axes": '["ppo.clip_eps"]'})
    child_ids = []
    for seed in (1, 2):
        values = {"ppo.clip_eps": 0.3}
        child = store.start_run("ui-sweep", run_name=run_name(values, seed), parent_run_id=parent.run_id,
                                tags={"sweep.role": "child", "seed": seed}, params={**values, "seed": seed})
        for step in range(6):
            child.log_metrics({"eval/gold": 0.1 * step + 0.01 * seed, "eval/kl": 0.02 * step,
                               "episodes": 64.0 * step}, step=step)
        child.end()
        child_ids.append(child.run_id)
    parent.log_metrics({"sweep/best": 0.515, "sweep/done": 2}, step=2)
    parent.end()
    return store.experiment_id("ui-sweep"), parent.run_id, child_ids[0]


@pytest.mark.slow
def test_mlflow_ui_shows_the_sweep_and_renders_a_chart(tmp_path):
    sync_playwright = _browser_or_skip()
    exp_id, _, child_id = _sweep_store(tmp_path / "runs")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "ui", "--runs-dir", str(tmp_path / "runs"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        first = proc.stdout.readline()
        assert base in first  # the command prints the URL: the experiment's training-runs view, its shared view
        url = first.split()[first.split().index(next(w for w in first.split() if w.startswith(base)))]
        assert url.startswith(f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=")
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "mlflow ui exited"
            assert time.time() < deadline, "mlflow ui did not come up in 180 s"
            time.sleep(1)
        SHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url, timeout=90_000)  # what a user opens: the printed address
            page.wait_for_selector("[role=row] >> text=ui-sweep-0123abcd", timeout=90_000)
            assert page.locator("text=3 matching runs").count() == 1
            assert page.locator("text=Model training").count() >= 1 and page.locator("text=Sort: sweep/best").count() == 1
            page.wait_for_selector("text=clip0.3-s1", timeout=30_000)  # the children, by their short names
            page.wait_for_selector("text=clip0.3-s2", timeout=30_000)
            heads = set(page.locator("[role=columnheader]").all_inner_texts())
            assert {"eval/gold", "eval/kl", "episodes", "sweep/best"} <= heads, heads  # key metric columns shown
            page.screenshot(path=str(SHOTS / "mlflow-ui-sweep.png"))
            page.goto(f"{base}/#/experiments/{exp_id}/runs/{child_id}/model-metrics", timeout=90_000)
            page.wait_for_selector(".js-plotly-plot svg.main-svg", timeout=60_000)
            assert page.locator("text=gold").count() >= 1
            page.screenshot(path=str(SHOTS / "mlflow-ui-chart.png"))
            browser.close()
        assert (SHOTS / "mlflow-ui-chart.png").stat().st_size > 10_000
        print(f"screenshots: {SHOTS}")
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
