"""``ppo-harness reproduce``: published claims run as ordinary sweeps, measured, and given a verdict.

A claim (``reports.claims.CLAIMS``) is a shipped spec under ``ablations/claims/``; reproducing it runs
that spec through the sweep runner (``harness.sweep.coordinator.run_sweep``: resumable, one MLflow
child run per (cell, seed)), writes the sweep's ordinary report (with its claims section) under
``<out>/<claim>/``, and measures the claim's parts with their 95% intervals and verdicts. ``--seeds N``
runs the same spec with seeds 0..N-1, written as ``<runs-dir>/claims/<claim>-s<N>.yaml`` under its own
name (``claim-<claim>-s<N>``), so it never collides with the shipped study. All claims reproduced in one
call land in ``<out>/claims.{md,csv}`` with the wall time of each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import yaml

from harness.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, InputError
from harness.sweep.coordinator import run_sweep
from harness.sweep.spec import SpecError, load_spec
from harness.sweep.study import SweepEnd
from harness.tracking import Store
from harness.yamlio import read_yaml
from reports import claims as C
from reports.collect import collect
from reports.render import CLAIMS_NOTE, markdown_table
from reports.report import build_report

MAX_SEEDS = 1000


def check_claim(name: str) -> C.Claim:
    """The claim called ``name``; InputError naming CLAIM with a suggestion otherwise."""
    if name not in C.CLAIMS:
        raise InputError(f"CLAIM '{name}': no such claim{C.did_you_mean(name)}; `ppo-harness reproduce --list` "
                         "lists them")
    return C.CLAIMS[name]


def check_seeds(seeds: int | None) -> None:
    if seeds is not None and not 2 <= seeds <= MAX_SEEDS:
        raise InputError(f"--seeds: expected 2 to {MAX_SEEDS} (an interval needs 2 seeds), got {seeds}")


def check_own_spec(spec: Path, names: list[str] | None) -> None:
    """``--spec`` needs one CLAIM, and a valid spec whose grid has every axis of that claim's shipped spec."""
    if not names:
        raise InputError("--spec: name the CLAIM it is a variant of")
    try:
        own = load_spec(spec)
    except SpecError as e:
        raise InputError(f"--spec {spec}: {e}") from None
    shipped = load_spec(C.CLAIMS[names[0]].spec)
    missing = [a for a in shipped.axes if a not in own.axes]
    if missing:
        raise InputError(f"--spec {spec}: its grid lacks {', '.join(missing)}, an axis of claim '{names[0]}'")


def listing() -> str:
    """One block per claim: name, paper, the claim, its runs and the wall time its header records."""
    lines = []
    for c in C.CLAIMS.values():
        spec = load_spec(c.spec)
        head = C.header(c.spec)
        lines += [
            f"{c.name}",
            f"  paper     {c.paper}",
            f"  claim     {c.statement}",
            f"  runs      {spec.n_configs} cells x {len(spec.seeds)} seeds = {spec.n_runs} "
            f"({spec.base.get('task.name', 'sentiment')} task)",
            f"  cost      {head.get('wall time', 'not measured')}",
        ]
    return "\n".join(lines)


def seeded_spec(claim: C.Claim, seeds: int | None, runs_dir: Path, spec: Path | None = None) -> Path:
    """The spec to run: the shipped one (or ``spec``), or a copy with seeds 0..N-1 under its own name."""
    spec = spec or claim.spec
    if seeds is None:
        return spec
    data = read_yaml(spec)
    data["name"] = f"{data['name']}-s{seeds}"
    data["seeds"] = list(range(seeds))
    path = runs_dir / "claims" / f"{claim.name}-s{seeds}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {claim.name} ({claim.paper}) at {seeds} seeds: written by ppo-harness reproduce from {spec}\n"
    path.write_text(text + yaml.safe_dump(data, sort_keys=False))
    return path


def _wall(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s"


def reproduce(names: list[str], seeds: int | None, workers: int, runs_dir: Path, tracking_uri: str | None,
              out: Path, echo: Callable[[str], None] = print, spec: Path | None = None) -> int:
    """Run, report and judge each claim in turn; prints and writes the claims table. Returns the exit code
    (the sweep's, when one did not finish: a rerun resumes it)."""
    store = Store(runs_dir, tracking_uri)
    results: list[C.PartResult] = []
    wall: dict[str, str] = {}
    for name in names:
        claim = C.CLAIMS[name]
        path = seeded_spec(claim, seeds, runs_dir, spec)
        echo(f"claim    {claim.name}: {claim.statement} ({claim.paper})")
        t0 = time.monotonic()
        end = run_sweep(path, workers=workers, tracking_uri=tracking_uri, runs_dir=runs_dir)
        if end is not SweepEnd.DONE:  # failed or unstarted runs, or interrupted: a rerun resumes
            return EXIT_INTERRUPTED if end is SweepEnd.INTERRUPTED else EXIT_FAILED
        wall[name] = _wall(time.monotonic() - t0)
        sweep = collect(store, spec=path)
        results += C.evaluate(claim, sweep.runs, sweep.curves)
        md = build_report(path, out_dir=out / claim.name, store=store, claim=claim.name)
        echo(f"report   {md}  (sweep wall time {wall[name]})")
    shown = C.table(results, wall)
    out.mkdir(parents=True, exist_ok=True)
    C.table(results, wall, numbers=True).to_csv(out / "claims.csv", index=False)
    (out / "claims.md").write_text(f"# Claims\n\n{CLAIMS_NOTE}\n\n{markdown_table(shown)}")
    echo("")
    echo(markdown_table(shown.drop(columns=["paper"])))
    echo(f"saved    {out / 'claims.md'}, {out / 'claims.csv'}")
    return EXIT_OK


__all__ = ["check_claim", "check_seeds", "listing", "reproduce", "seeded_spec"]
