"""`ppo-harness ui` serves the store; headless Chromium sees the sweep and a metric chart."""

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
    """A sweep in the layout the runner writes: one parent, two children with metric histories."""
    store = Store(path)
    parent = store.start_run("ui-sweep", run_name="sweep-ui", tags={"sweep.role": "parent"})
    child_ids = []
    for seed in (1, 2):
        child = store.start_run("ui-sweep", run_name=f"cell0-seed{seed}", parent_run_id=parent.run_id,
                                tags={"sweep.role": "child", "seed": seed})
        for step in range(6):
            child.log_metrics({"eval/gold": 0.1 * step + 0.01 * seed, "episodes": 64.0 * step}, step=step)
        child.end()
        child_ids.append(child.run_id)
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
        assert base in first  # the command prints the URL
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
            page.goto(f"{base}/#/experiments/{exp_id}/runs", timeout=90_000)
            page.wait_for_selector("text=sweep-ui", timeout=90_000)
            assert page.locator("text=3 matching runs").count() == 1
            row = page.locator("[role=row]", has_text="sweep-ui")
            row.locator("[role=gridcell]").nth(1).locator("[role=img]").first.click(force=True, timeout=30_000)
            page.wait_for_selector("text=cell0-seed1", timeout=30_000)
            page.wait_for_selector("text=cell0-seed2", timeout=30_000)
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
