"""The bad-input promise, row by row: every malformed input to train, sweep, report, compare, bench
and ui exits 2 with exactly one line on stderr naming the key, option or path, prints nothing on
stdout, and creates nothing (no runs/, journal, mlflow.db, lock file or cache entry).

Each row runs the CLI's real entry point, ``harness.cli.main(argv)`` (what ``ppo-harness`` calls),
in-process: cwd a fresh empty folder, ``PPO_HARNESS_CACHE`` another, inputs in a third. A subprocess
per row would cost 2-4 s of imports; the rows in ``SUBPROCESS`` run again through the installed
``ppo-harness`` script or ``python -m harness.cli`` to show the process behaves the same (no stray
warning lines, the same exit code). Rows are independent (own folders), so they run in any order
and in parallel.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.cli import main

DIR = object()  # an empty folder
FIFO = object()  # a named pipe: opening it for reading would wait for a writer
STORE = object()  # a copy of a real MLflow store (runs/mlflow.db) holding one empty experiment, "empty"

# the tiniest run: if a row's validation ever let the work start, it would be short
TINY = ["--set", "train.iterations=1", "--set", "rollout.batch_size=8", "--set", "rollout.group_size=2",
        "--set", "ppo.minibatches=2", "--set", "ppo.epochs=1", "--set", "eval.prompts=8"]
CFG = "train:\n  iterations: 1\nrollout:\n  batch_size: 8\n  group_size: 2\nppo:\n  minibatches: 2\n  epochs: 1\n"
HEAD = ("name: bad\nbase:\n  train.iterations: 1\n  rollout.batch_size: 8\n  rollout.group_size: 2\n"
        "  ppo.minibatches: 2\n")
GOOD_SPEC = HEAD + "grid: {kl.coef: [0.0, 0.1]}\nseeds: [0]\n"
NOT_UTF8 = b"name: bad\n# caf\xe9 in latin-1\ngrid: {kl.coef: [0.1]}\nseeds: [0]\n"
# "billion laughs": 9 levels of 9 -> 387 million strings once anything walks it
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
BIG_GRID = HEAD + "grid:\n" + "".join(
    f"  {k}: [{', '.join(str(round(lo + i * step, 4)) for i in range(10))}]\n"
    for k, lo, step in (("kl.coef", 0.0, 0.01), ("ppo.clip_eps", 0.1, 0.01), ("ppo.lr", 0.0001, 0.0001),
                        ("ppo.vf_coef", 0.1, 0.01), ("ppo.entropy_coef", 0.0, 0.001),
                        ("advantage.lam", 0.9, 0.01), ("rollout.temperature", 0.5, 0.1))
) + "seeds: [0]\n"  # 10^7 cells
GPT2 = '{"model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 8, "vocab_size": 16, "n_positions": 32}'
EMPTY_SAFETENSORS = b"\x02" + b"\x00" * 7 + b"{}"  # a valid file holding no tensor
FILES = {  # present in every row's input folder
    "afile": "not a folder, not JSON\n",
    "emptydir": DIR,
    "nomodel": {"README.md": "no model in here\n"},
    "badconfig": {"config.json": "{not json", "model.safetensors": ""},
    "pipe": FIFO,
    "data.jsonl": '{"prompt": "a"}\n{"prompt": "b"}',  # a user's file: first line JSON, last line unterminated
}
LONG = "a" * 5000  # longer than a file name may be (ENAMETOOLONG)


@dataclass(frozen=True)
class Row:
    id: str
    argv: list[str]  # {in} is the input folder
    names: tuple[str, ...]  # each must appear in the error line
    files: dict[str, object] = field(default_factory=dict)  # extra inputs: text ({in} replaced), bytes, DIR, STORE
    isolate: bool = False  # run in a child process under a memory limit: unrefused, it would fill the machine


def row(id: str, argv: list[str], *names: str, isolate: bool = False, **files: object) -> Row:
    return Row(id, argv, names, {k.replace("__", "."): v for k, v in files.items()}, isolate)


def spec_row(id: str, body: str | bytes, *names: str, options: tuple[str, ...] = (), isolate: bool = False) -> Row:
    return row(id, ["sweep", "{in}/spec.yaml", *options], "spec.yaml", *names, isolate=isolate, spec__yaml=body)


def opt_row(id: str, options: tuple[str, ...], *names: str) -> Row:
    """A valid spec with a bad option: the line names the option (not the spec)."""
    return row(id, ["sweep", "{in}/spec.yaml", *options], *names, spec__yaml=GOOD_SPEC)


def cfg_row(id: str, body: str | bytes, *names: str, isolate: bool = False) -> Row:
    return row(id, ["train", "--config", "{in}/cfg.yaml"], *names, isolate=isolate, cfg__yaml=body)  # CFG is tiny


ROWS: list[Row] = [
    # ---- train: options and --set ----
    row("train-seed-float", ["train", "--seed", "1.5"], "'--seed'"),
    row("train-unknown-option", ["train", "--nope"], "--nope"),
    row("train-set-unknown-key", ["train", "--set", "ppo.nope=1"], "ppo.nope"),
    row("train-set-wrong-type", ["train", "--set", "ppo.epochs=two"], "ppo.epochs"),
    row("train-set-lr-inf", ["train", "--set", "ppo.lr=inf", *TINY], "ppo.lr"),
    row("train-set-lr-1e309", ["train", "--set", "ppo.lr=1e309", *TINY], "ppo.lr"),
    row("train-set-no-equals", ["train", "--set", "ppo.lr"], "ppo.lr"),
    row("train-set-unparsable", ["train", "--set", "ppo.lr=[1"], "ppo.lr"),
    row("train-set-invisible-key", ["train", "--set", "ppo.l\u200br=1"], "ppo.l\\u200br"),
    row("train-seed-2**70", ["train", "--seed", str(2**70), *TINY], "seed"),
    row("train-task-unknown", ["train", "--task", "chess"], "task.name"),
    row("train-impl-unknown", ["train", "--impl", "jax"], "impl"),
    row("train-trl-inexpressible", ["train", "--impl", "trl", "--set", "advantage.level=sequence", *TINY],
        "advantage.level"),
    row("train-gspo-token-clip", ["train", "--set", "ppo.ratio_level=sequence", *TINY], "ppo.clip_eps"),
    row("train-dual-clip-1", ["train", "--set", "ppo.dual_clip=1", *TINY], "ppo.dual_clip"),
    row("train-norm-length-wrong-agg", ["train", "--set", "loss.norm_length=8", *TINY], "loss.norm_length"),
    row("train-k3plus-in-reward", ["train", "--set", "kl.estimator=k3+", *TINY], "kl.estimator"),
    row("train-set-control-char", ["train", "--set", "task.name=a\x01b"], "task.name"),
    row("train-set-no-key", ["train", "--set", "=1"], "--set", "'=1'"),
    row("train-set-seed-base-60", ["train", "--set", "seed=1:20", *TINY], "seed", "1:20"),
    row("train-set-eval-every-underscore", ["train", "--set", "eval.every=1_0", *TINY], "eval.every"),
    # values that validated and then started enormous work, or broke the run at once (NaN, inf, a million threads)
    row("train-set-batch-size-1e12", ["train", "--set", "rollout.batch_size=1e12"], "rollout.batch_size"),
    row("train-set-eval-prompts-1e9", ["train", *TINY, "--set", "eval.prompts=1e9"], "eval.prompts"),
    row("train-set-rm-pairs-1e9", ["train", "--set", "model.rm_pairs=1e9", *TINY], "model.rm_pairs"),
    row("train-set-lr-1e300", ["train", "--set", "ppo.lr=1e300", *TINY], "ppo.lr"),
    row("train-set-temperature-1e-300", ["train", "--set", "rollout.temperature=1e-300", *TINY], "rollout.temperature"),
    row("train-set-eos-penalty-1e308", ["train", "--set", "train.missing_eos_penalty=-1e308", *TINY],
        "train.missing_eos_penalty"),
    row("train-set-threads-1e6", ["train", "--set", "train.threads=1000000", *TINY], "train.threads"),
    # ---- train: --config files ----
    row("train-config-missing", ["train", "--config", "{in}/missing.yaml"], "--config", "missing.yaml"),
    row("train-config-folder", ["train", "--config", "{in}/emptydir"], "--config", "emptydir"),
    row("train-config-invisible-path", ["train", "--config", "{in}/run\u200b.yaml"], "run\\u200b.yaml"),
    row("train-config-fifo", ["train", "--config", "{in}/pipe"], "--config", "pipe", "not a regular file"),
    row("train-config-long-path", ["train", "--config", "{in}/" + LONG], "--config"),
    row("train-policy-long-path", ["train", "--set", "model.policy=./" + LONG, *TINY], "model.policy"),
    row("train-reward-long-path", ["train", "--set", "model.reward=./" + LONG, *TINY], "model.reward"),
    cfg_row("train-config-not-utf8", b"ppo:\n  lr: 0.001\n# caf\xe9\n", "cfg.yaml"),
    cfg_row("train-config-duplicate-key", CFG.replace("  epochs: 1\n", "  epochs: 1\n  epochs: 2\n"),
            "cfg.yaml", "ppo.epochs"),
    cfg_row("train-config-alias-bomb", BOMB, "cfg.yaml", isolate=True),
    cfg_row("train-config-epochs-bool-in-list", CFG.replace("epochs: 1", "epochs: [true, 2]"), "ppo.epochs"),
    cfg_row("train-config-epochs-string-list", CFG.replace("epochs: 1", 'epochs: ["2"]'), "ppo.epochs"),
    cfg_row("train-config-epochs-bool", CFG.replace("epochs: 1", "epochs: true"), "ppo.epochs"),
    cfg_row("train-config-kl-inf", CFG + "kl:\n  coef: .inf\n", "kl.coef"),
    cfg_row("train-config-dotted-and-nested", CFG + "kl.coef: 0.1\nkl:\n  coef: 0.2\n", "kl.coef"),
    cfg_row("train-config-nul", CFG + "task:\n  name: a\x00b\n", "cfg.yaml", "U+0000"),
    cfg_row("train-config-null-key", CFG.replace("  epochs: 1\n", "  epochs: 1\n  ~: 2\n"), "cfg.yaml", "'ppo'"),
    cfg_row("train-config-not-a-mapping", "- 1\n- 2\n", "cfg.yaml"),
    cfg_row("train-config-unknown-section", CFG + "optim:\n  lr: 0.1\n", "optim"),
    # ---- train: models and stores ----
    row("train-policy-missing", ["train", "--set", "model.policy=./no/such/model"], "model.policy"),
    row("train-policy-folder-without-model", ["train", "--set", "model.policy={in}/nomodel", *TINY],
        "model.policy", "nomodel"),
    row("train-policy-bad-config-json", ["train", "--set", "model.policy={in}/badconfig", *TINY],
        "model.policy", "badconfig"),
    row("train-policy-a-file", ["train", "--set", "model.policy={in}/afile", *TINY], "model.policy", "afile"),
    row("train-policy-corrupt-safetensors", ["train", "--set", "model.policy={in}/m", *TINY], "model.policy",
        "model.safetensors", "corrupt header", m={"config.json": GPT2, "tokenizer.json": "{}",
                                                  "model.safetensors": b"\xff" * 8 + b"{}"}),
    row("train-policy-pickle-weights", ["train", "--set", "model.policy={in}/m", *TINY], "model.policy", "pickle",
        m={"config.json": GPT2, "tokenizer.json": "{}", "pytorch_model.bin": b"\x80\x04K\x01."}),
    row("train-policy-bad-tokenizer", ["train", "--set", "model.policy={in}/m", *TINY], "model.policy", "tokenizer",
        m={"config.json": GPT2, "tokenizer.json": "{not json", "model.safetensors": EMPTY_SAFETENSORS}),
    row("train-policy-hub-id-unknown", ["train", "--set", "model.policy=no-such-org/no-such-model", *TINY],
        "model.policy", "no-such-org/no-such-model"),
    row("train-reward-empty-folder", ["train", "--set", "model.reward={in}/emptydir", *TINY],
        "model.reward", "emptydir"),
    row("train-runs-dir-a-file", ["train", "--runs-dir", "{in}/afile", *TINY], "--runs-dir"),
    row("train-runs-dir-under-a-file", ["train", "--runs-dir", "{in}/afile/runs", *TINY], "--runs-dir"),
    row("train-tracking-uri-scheme", ["train", "--tracking-uri", "notascheme://x", *TINY], "--tracking-uri"),
    row("train-tracking-uri-driver", ["train", "--tracking-uri", "mysql://u@localhost/db", *TINY],
        "--tracking-uri"),
    row("train-tracking-uri-sqlite-folder", ["train", "--tracking-uri", "sqlite:///{in}/nodir/m.db", *TINY],
        "--tracking-uri"),
    row("train-tracking-uri-secret-redacted", ["train", "--tracking-uri", "mysql://u:hunter2@h/db", *TINY],
        "--tracking-uri", "u:***@h"),
    row("train-tracking-uri-unreachable", ["train", "--tracking-uri", "http://127.0.0.1:1", *TINY], "--tracking-uri",
        "does not answer"),
    row("train-tracking-uri-port-out-of-range", ["train", "--tracking-uri", "http://127.0.0.1:99999", *TINY],
        "--tracking-uri"),
    # ---- sweep: the spec file ----
    row("sweep-no-spec", ["sweep"], "'spec'"),
    row("sweep-spec-missing", ["sweep", "{in}/missing.yaml"], "missing.yaml"),
    row("sweep-spec-a-folder", ["sweep", "{in}/emptydir"], "emptydir"),
    row("sweep-spec-invisible-path", ["sweep", "{in}/q\u200b.yaml"], "q\\u200b.yaml"),
    row("sweep-spec-fifo", ["sweep", "{in}/pipe"], "SPEC", "pipe", "not a regular file"),
    row("sweep-spec-long-path", ["sweep", "{in}/" + LONG], "SPEC"),
    Row("sweep-spec-newline-in-path", ["sweep", "{in}/a\nb.yaml"], ("'", "a\\nb.yaml", "grid.kl.coeff"),
        {"a\nb.yaml": HEAD + "grid: {kl.coeff: [0.1]}\nseeds: [0]\n"}),
    spec_row("sweep-spec-not-utf8", NOT_UTF8),
    spec_row("sweep-duplicate-grid-key", HEAD + "grid:\n  kl.coef: [0.1]\n  kl.coef: [0.2]\nseeds: [0]\n",
             "grid.kl.coef"),
    spec_row("sweep-duplicate-top-key", GOOD_SPEC + "seeds: [1]\n", "seeds"),
    spec_row("sweep-alias-bomb", BOMB + GOOD_SPEC, isolate=True),
    spec_row("sweep-alias", HEAD + "grid:\n  kl.coef: &a [0.1, 0.2]\n  ppo.clip_eps: *a\nseeds: [0]\n"),
    spec_row("sweep-epochs-bool-in-list", HEAD + "grid: {ppo.epochs: [true, 2]}\nseeds: [0]\n", "grid.ppo.epochs"),
    spec_row("sweep-epochs-string-list", HEAD + 'grid: {ppo.epochs: ["2"]}\nseeds: [0]\n', "grid.ppo.epochs"),
    spec_row("sweep-dotted-and-nested", HEAD + "  ppo:\n    lr: 0.002\n  ppo.lr: 0.001\n"
             "grid: {kl.coef: [0.1]}\nseeds: [0]\n", "ppo.lr"),
    spec_row("sweep-spec-nul", GOOD_SPEC.replace("name: bad", "name: b\x00ad"), "line 1", "U+0000"),
    spec_row("sweep-seeds-base-60", HEAD + "grid: {kl.coef: [0.1]}\nseeds: [1:20]\n", "seeds"),
    spec_row("sweep-grid-device-absent", HEAD + "grid: {train.device: [cpu, 'cuda:99']}\nseeds: [0]\n",
             "grid.train.device", "cuda:99"),
    spec_row("sweep-grid-batch-size-huge", HEAD.replace("  rollout.batch_size: 8\n", "") +
             "grid: {rollout.batch_size: [8, 1000000000000]}\nseeds: [0]\n", "grid.rollout.batch_size"),
    spec_row("sweep-objective-metric-list", GOOD_SPEC + "objective: {metric: [eval/gold]}\n", "objective.metric"),
    spec_row("sweep-objective-metric-mapping", GOOD_SPEC + "objective: {metric: {a: 1}}\n", "objective.metric"),
    spec_row("sweep-grid-of-10^7-cells", BIG_GRID, "grid", isolate=True),
    spec_row("sweep-seed-2**70", HEAD + f"grid: {{kl.coef: [0.1]}}\nseeds: [{2**70}]\n", "seeds"),
    spec_row("sweep-kl-inf", HEAD + "  kl.coef: .inf\ngrid: {ppo.lr: [0.001]}\nseeds: [0]\n", "base.kl.coef"),
    spec_row("sweep-lr-nan", HEAD + "grid: {ppo.lr: [0.001, .nan]}\nseeds: [0]\n", "grid.ppo.lr"),
    spec_row("sweep-trl-inexpressible-cell", HEAD + "  impl: trl\ngrid: {advantage.level: [token, sequence]}\n"
             "seeds: [0]\n", "grid.advantage.level"),
    spec_row("sweep-unknown-top-key", GOOD_SPEC + "sweeps: 3\n", "sweeps"),
    spec_row("sweep-unknown-config-key", HEAD + "grid: {kl.coeff: [0.1, 0.2]}\nseeds: [0]\n", "grid.kl.coeff"),
    spec_row("sweep-policy-folder-in-base", HEAD + "  model.policy: {in}/nomodel\ngrid: {kl.coef: [0.1]}\n"
             "seeds: [0]\n", "base.model.policy", "nomodel"),
    spec_row("sweep-policy-folder-in-a-cell", HEAD + "grid: {model.policy: [tiny, '{in}/nomodel']}\nseeds: [0]\n",
             "grid.model.policy", "nomodel"),
    spec_row("sweep-reward-folder-in-a-cell", HEAD + "grid: {model.reward: [learned, '{in}/emptydir']}\n"
             "seeds: [0]\n", "grid.model.reward", "emptydir"),
    # ---- sweep: options ----
    opt_row("sweep-workers-0", ("--workers", "0"), "--workers"),
    opt_row("sweep-workers-abc", ("--workers", "abc"), "'--workers'"),
    opt_row("sweep-storage-a-folder", ("--storage", "{in}/emptydir"), "--storage"),
    opt_row("sweep-storage-driver-missing", ("--storage", "mysql://u@localhost/db"), "--storage"),
    opt_row("sweep-storage-unknown-dialect", ("--storage", "notadb://x"), "--storage"),
    opt_row("sweep-storage-under-a-file", ("--storage", "{in}/afile/j.journal"), "--storage"),
    opt_row("sweep-storage-not-a-journal", ("--storage", "{in}/afile"), "--storage"),
    opt_row("sweep-storage-fifo", ("--storage", "{in}/pipe"), "--storage", "not a regular file"),
    opt_row("sweep-storage-fifo-dry-run", ("--storage", "{in}/pipe", "--dry-run"), "--storage"),
    opt_row("sweep-storage-user-jsonl", ("--storage", "{in}/data.jsonl"), "--storage", "not an Optuna journal"),
    opt_row("sweep-storage-user-jsonl-dry-run", ("--storage", "{in}/data.jsonl", "--dry-run"), "--storage"),
    opt_row("sweep-storage-long-path", ("--storage", "{in}/" + LONG), "--storage"),
    opt_row("sweep-storage-malformed-scheme", ("--storage", "postgresql:/postgres:PW@127.0.0.1/db"), "--storage",
            "malformed"),
    opt_row("sweep-storage-port-out-of-range", ("--storage", "postgresql://u@127.0.0.1:99999/db"), "--storage",
            "port"),
    opt_row("sweep-tracking-uri-port-out-of-range", ("--tracking-uri", "http://127.0.0.1:99999"), "--tracking-uri"),
    opt_row("sweep-tracking-uri-unreachable", ("--tracking-uri", "http://127.0.0.1:1"), "--tracking-uri",
            "does not answer"),
    opt_row("sweep-runs-dir-a-file", ("--runs-dir", "{in}/afile"), "--runs-dir"),
    opt_row("sweep-tracking-uri-scheme", ("--tracking-uri", "notascheme://x"), "--tracking-uri"),
    # ---- report ----
    row("report-no-source", ["report"], "SPEC", "--experiment"),
    row("report-two-sources", ["report", "--experiment", "a", "--parent-run", "b"], "--experiment", "--parent-run"),
    row("report-no-store", ["report", "--experiment", "quick"], "mlflow.db"),
    row("report-runs-dir-a-file", ["report", "--experiment", "quick", "--runs-dir", "{in}/afile"], "afile"),
    row("report-unknown-experiment", ["report", "--experiment", "nope", "--runs-dir", "{in}/runs"], "'nope'",
        runs=STORE),
    row("report-experiment-without-runs", ["report", "--experiment", "empty", "--runs-dir", "{in}/runs"],
        "'empty'", runs=STORE),
    row("report-bad-parent-run-id", ["report", "--parent-run", "deadbeef", "--runs-dir", "{in}/runs"], "deadbeef",
        runs=STORE),
    row("report-unknown-style", ["report", "--experiment", "empty", "--style", "acl", "--runs-dir", "{in}/runs"],
        "--style", "acl", runs=STORE),
    row("report-style-without-value", ["report", "--style"], "--style"),
    row("report-spec-missing", ["report", "{in}/missing.yaml"], "missing.yaml"),
    row("report-spec-a-folder", ["report", "{in}/emptydir"], "emptydir"),
    row("report-spec-not-utf8", ["report", "{in}/spec.yaml", "--runs-dir", "{in}/runs"], "spec.yaml",
        spec__yaml=NOT_UTF8, runs=STORE),
    row("report-out-a-file", ["report", "--experiment", "empty", "--out", "{in}/afile", "--runs-dir", "{in}/runs"],
        "--out", runs=STORE),
    row("report-tracking-uri-scheme", ["report", "--experiment", "x", "--tracking-uri", "notascheme://x"],
        "--tracking-uri"),
    row("report-tracking-uri-unreachable", ["report", "--experiment", "x", "--tracking-uri", "http://127.0.0.1:1"],
        "--tracking-uri", "does not answer"),
    row("report-runs-dir-newline-in-path", ["report", "--experiment", "x", "--runs-dir", "{in}/r\nd"], "r\\nd"),
    # ---- compare ----
    row("compare-seeds-abc", ["compare", "--seeds", "abc"], "'--seeds'"),
    row("compare-seeds-0", ["compare", "--seeds", "0"], "--seeds"),
    row("compare-seeds-a-billion", ["compare", "--seeds", "1000000000"], "--seeds"),
    row("compare-set-impl", ["compare", "--set", "impl=custom", *TINY], "impl"),
    row("compare-set-seed", ["compare", "--set", "seed=3", *TINY], "seed"),
    row("compare-set-task-name", ["compare", "--set", "task.name=sort", *TINY], "task.name"),
    row("compare-task-unknown", ["compare", "--task", "chess"], "task.name"),
    row("compare-trl-inexpressible", ["compare", "--set", "advantage.level=sequence"], "advantage.level"),
    row("compare-set-lr-1e309", ["compare", "--set", "ppo.lr=1e309"], "ppo.lr"),
    row("compare-policy-folder-without-model", ["compare", "--set", "model.policy={in}/nomodel", *TINY],
        "model.policy"),
    row("compare-out-a-file", ["compare", "--out", "{in}/afile", "--seeds", "1", *TINY], "--out"),
    row("compare-runs-dir-a-file", ["compare", "--runs-dir", "{in}/afile", "--seeds", "1", *TINY], "--runs-dir"),
    row("compare-tracking-uri-scheme", ["compare", "--tracking-uri", "notascheme://x", "--seeds", "1", *TINY],
        "--tracking-uri"),
    # ---- bench ----
    row("bench-size-XL", ["bench", "--size", "XL"], "--size", "XL"),
    row("bench-threads-0", ["bench", "--threads", "0"], "--threads"),
    row("bench-threads-abc", ["bench", "--threads", "abc"], "'--threads'"),
    row("bench-iterations-0", ["bench", "--iterations", "0"], "--iterations"),
    row("bench-vs-unknown", ["bench", "--vs", "openrlhf"], "--vs"),
    row("bench-variant-unknown", ["bench", "--variant", "fp8"], "--variant"),
    row("bench-json-a-folder", ["bench", "--json", "{in}/emptydir", "--iterations", "1"], "--json"),
    row("bench-json-under-a-file", ["bench", "--json", "{in}/afile/b.json", "--iterations", "1"], "--json"),
    # ---- ui ----
    row("ui-port-abc", ["ui", "--port", "abc"], "'--port'"),
    row("ui-port-out-of-range", ["ui", "--port", "70000"], "--port"),
    row("ui-runs-dir-a-file", ["ui", "--runs-dir", "{in}/afile"], "--runs-dir"),
    # ---- the rest of the parser ----
    row("tasks-unknown-action", ["tasks", "nope"], "nope"),
    row("tasks-build-unknown-task", ["tasks", "build", "--task", "chess"], "chess"),
    row("tasks-list-with-task", ["tasks", "list", "--task", "chess"], "--task"),
    row("config-no-such-key", ["config", "no.such.key"], "no.such.key"),
    row("unknown-command", ["nosuchcommand"], "nosuchcommand"),
]
BY_ID = {r.id: r for r in ROWS}
# rows run again as real processes: (row id, how) with how "script" (.venv/bin/ppo-harness) or "module"
SUBPROCESS = [
    ("train-seed-float", "script"),
    ("train-config-alias-bomb", "script"),
    ("train-policy-folder-without-model", "script"),
    ("sweep-storage-a-folder", "script"),
    ("sweep-tracking-uri-scheme", "module"),
    ("report-unknown-experiment", "module"),
    ("compare-set-impl", "script"),
    ("bench-json-a-folder", "script"),
    ("ui-port-out-of-range", "module"),
    ("sweep-storage-user-jsonl-dry-run", "script"),
    ("train-set-control-char", "module"),
]


# ---- the sandbox ---------------------------------------------------------------------------------


@dataclass
class Sandbox:
    cwd: Path  # the process's working directory: must stay empty
    cache: Path  # PPO_HARNESS_CACHE: must stay empty
    inputs: Path  # what the row reads: must stay as it was
    home: Path  # HOME: must stay empty (no MLflow telemetry file, no matplotlib cache)


@pytest.fixture(scope="session")
def store_copy(tmp_path_factory) -> Path:
    """One real MLflow store (created once per session), copied into each row that needs one."""
    from harness.tracking import Store

    runs = tmp_path_factory.mktemp("store") / "runs"
    Store(runs).experiment_id("empty")
    return runs


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Sandbox:
    sb = Sandbox(tmp_path / "cwd", tmp_path / "cache", tmp_path / "in", tmp_path / "home")
    for d in (sb.cwd, sb.cache, sb.inputs, sb.home):
        d.mkdir()
    monkeypatch.chdir(sb.cwd)
    monkeypatch.setenv("PPO_HARNESS_CACHE", str(sb.cache))
    monkeypatch.setenv("HOME", str(sb.home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    return sb


def materialize(r: Row, sb: Sandbox, store: Path) -> list[str]:
    """Write the row's inputs; return its argv with {in} filled in."""

    def put(path: Path, content: object) -> None:
        if content is DIR:
            path.mkdir()
        elif content is FIFO:
            os.mkfifo(path)
        elif content is STORE:
            shutil.copytree(store, path)
        elif isinstance(content, dict):
            path.mkdir()
            for name, sub in content.items():
                put(path / name, sub)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(str(content).replace("{in}", str(sb.inputs)))

    for name, content in {**FILES, **r.files}.items():
        put(sb.inputs / name, content)
    return [a.replace("{in}", str(sb.inputs)) for a in r.argv]


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_refused(r: Row, sb: Sandbox, before: list[str], code, out: str, err: str) -> None:
    lines = err.splitlines()
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err[-3000:]}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err[-3000:]}"
    line = lines[0]
    assert line.startswith("error: "), line
    for name in r.names:
        assert name in line, f"{name!r} not named in: {line}"
    assert out == "", f"stdout: {out}"
    assert listing(sb.cwd) == [], "created in the working directory"
    assert listing(sb.cache) == [], "created in the model cache"
    assert listing(sb.home) == [], "created in $HOME"
    assert listing(sb.inputs) == before, "created among the inputs"


# ---- the tests ------------------------------------------------------------------------------------


def test_the_table_covers_every_command():
    assert len(ROWS) >= 60 and len(BY_ID) == len(ROWS)
    commands = {r.argv[0] for r in ROWS}
    assert {"train", "sweep", "report", "compare", "bench", "ui"} <= commands


def _limit_memory() -> None:  # an input that expands fails fast instead of filling the machine
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def run_row(r: Row, sb: Sandbox, store: Path, how: str, capsys=None) -> tuple[list[str], object, str, str]:
    """(inputs before, exit code, stdout, stderr) of one row run ``how``: "inprocess" (``main(argv)``),
    "script" (the installed ``ppo-harness``) or "module" (``python -m harness.cli``)."""
    argv = materialize(r, sb, store)
    before = listing(sb.inputs)
    if how == "inprocess":
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(argv)
        out, err = capsys.readouterr()
        return before, e.value.code, out, err
    script = Path(sys.executable).with_name("ppo-harness")
    if how == "script" and not script.exists():
        pytest.skip("no installed ppo-harness script next to this interpreter")
    cmd = [str(script)] if how == "script" else [sys.executable, "-m", "harness.cli"]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PPO_HARNESS_CACHE": str(sb.cache), "HOME": str(sb.home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(var, None)
    p = subprocess.run(cmd + argv, cwd=sb.cwd, env=env, capture_output=True, text=True, timeout=100,
                       preexec_fn=_limit_memory)
    return before, p.returncode, p.stdout, p.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("r", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_exits_2_with_one_line_and_creates_nothing(r, sandbox, store_copy, capsys):
    before, code, out, err = run_row(r, sandbox, store_copy, "module" if r.isolate else "inprocess", capsys)
    assert_refused(r, sandbox, before, code, out, err)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("rid, how", SUBPROCESS, ids=[f"{rid}-{how}" for rid, how in SUBPROCESS])
def test_the_installed_entry_point_behaves_the_same(rid, how, sandbox, store_copy):
    before, code, out, err = run_row(BY_ID[rid], sandbox, store_copy, how)
    assert_refused(BY_ID[rid], sandbox, before, code, out, err)


def test_main_turns_an_input_error_no_command_caught_into_one_line(sandbox, capsys, monkeypatch):
    """The safety net: a known bad-input class escaping a command is one line and 2, never a traceback."""
    from harness.config import ConfigError
    from harness.sweep import coordinator

    def refuse(*a, **k):
        raise ConfigError("config key 'ppo.lr': refused\nsecond line")

    monkeypatch.setattr(coordinator, "run_sweep", refuse)
    (sandbox.inputs / "spec.yaml").write_text(GOOD_SPEC)
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(sandbox.inputs / "spec.yaml")])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: config key 'ppo.lr': refused second line\n"


def test_a_bug_is_a_traceback_not_bad_input(sandbox, monkeypatch):
    """Any other exception is a bug: it propagates (the interpreter prints the traceback, exit 1)."""
    from harness.sweep import coordinator

    def bug(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(coordinator, "run_sweep", bug)
    (sandbox.inputs / "spec.yaml").write_text(GOOD_SPEC)
    with pytest.raises(ZeroDivisionError):
        main(["sweep", str(sandbox.inputs / "spec.yaml")])
