"""A tiny real sweep, then `ppo-harness report`: every file exists and parses, numbers match MLflow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import trim_mean

from harness.tracking import Store
from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    spec = root / "tiny.yaml"
    spec.write_text(
        "# a tiny sweep: KL coefficient x advantage level, 2 seeds\n"
        + yaml.safe_dump(
            {
                "name": "e2e-tiny",
                "base": {**TINY, "probe.every": 1, "probe.microbatches": 2},
                "grid": {"kl.coef": [0.0, 0.2], "advantage.level": ["token", "sequence"]},
                "seeds": [0, 1],
            },
            sort_keys=False,
        )
    )
    runs = root / "runs"
    r = run_cli("sweep", str(spec), "--workers", "2", "--runs-dir", str(runs), cwd=root, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = root / "report"
    r = run_cli("report", str(spec), "--runs-dir", str(runs), "--out", str(out), cwd=root, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return Store(runs), out


def test_figures_are_valid_pdf_and_png(reported):
    _, out = reported
    pdfs = sorted((out / "figures").glob("*.pdf"))
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pdfs) >= 4 and len(pdfs) == len(pngs)
    for pdf in pdfs:
        data = pdf.read_bytes()
        assert data.startswith(b"%PDF") and b"/Type3" not in data
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    for png in pngs:
        assert png.name in md  # every figure is shown in the report
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")


def test_table_numbers_equal_mlflow(reported):
    store, out = reported
    table = pd.read_csv(out / "tables" / "final_by_factor.csv")
    runs = store.search_runs(experiments=["e2e-tiny"])
    children = runs[(runs["tags.sweep.role"] == "child") & (runs["status"] == "FINISHED")]
    assert len(children) == 8
    for level in (0.0, 0.2):
        rows = children[children["params.kl.coef"].astype(float) == level]
        for metric in ("eval/gold", "eval/kl"):
            expect = trim_mean(rows[f"metrics.{metric}"].to_numpy(), 0.25)
            kl_rows = table[(table["factor"] == "kl.coef") & (table["metric"] == metric)]
            got = kl_rows[kl_rows["level"].astype(float) == level]
            assert len(got) == 1
            np.testing.assert_allclose(got["iqm"].iloc[0], expect, rtol=1e-9)
    tex = (out / "tables" / "final_by_factor.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex
    md = (out / "tables" / "final_by_factor.md").read_text().strip().splitlines()
    assert md[1].startswith("|") and set(md[1]) <= set("|-: ")


def test_report_is_logged_to_the_parent_run(reported):
    store, _ = reported
    runs = store.search_runs(experiments=["e2e-tiny"])
    parent = runs[runs["tags.sweep.role"] == "parent"]
    assert len(parent) == 1
    paths = {a.path for a in store.client.list_artifacts(parent["run_id"].iloc[0], "report")}
    assert any(p.endswith("report.md") for p in paths)
