"""Sweeps: an ablation spec (YAML) run as an Optuna study, one MLflow child run per (cell, seed).

``ppo-harness sweep SPEC`` calls ``harness.sweep.coordinator.run_sweep``. The coordinator
validates the spec, opens the study named ``<name>-<hash8>``, reconciles what earlier
invocations left behind, enqueues every (cell, seed) that is not done yet, starts N worker
processes (``python -m harness.sweep --worker -``, the payload on stdin) and shows progress; it replaces
dead workers, rides out store outages and waits for trials other coordinators run (``faults``). Workers claim
enqueued trials, run them with ``harness.run.execute`` and tell Optuna the objective.

Optuna is the queue: a (cell, seed) is one trial, enqueued with ``study.enqueue_trial`` and
claimed atomically (WAITING -> RUNNING, the storage refuses a second claimer). The sampler never
decides what a grid runs, so a FAIL is never mistaken for done.

Modules (this file imports none of them: ``import harness.sweep.spec`` pulls in no Optuna):
  spec         the spec: YAML -> a validated, hashed AblationSpec; the one cell label (cell_label)
  study        the protocol: storage URL and storage, the study, (cell, seed) slots, trial owners,
               user attrs, exit codes
  coordinator  run_sweep (the library entry point), the Coordinator, reconcile, enqueue_missing,
               ensure_parent
  plan         the dry run: print_plan
  worker       the worker process: claim, run, heartbeat, record finished MLflow runs (worker_main,
               worker_command, payload_bytes)
  group        a trial over N processes (--procs-per-run): the worker rank 0, N - 1 followers (Group,
               follower_main)
  faults       what a sweep survives: retry / Outage, tracking_problem, journal repair and healing
               appends, StopRequest (signals)
  __main__     the hidden worker and follower entry point and the worker's payload parser
  summary      per-cell summary rows and their CSV / Markdown / text tables, best_cell
  display      the live progress Display, its Snapshot, fmt_s

MLflow (tag names: ``harness.schema.Tag``): experiment = spec name; one parent run per study
(tags sweep.role=parent, sweep.name, sweep.hash, sweep.study, sweep.axes, sweep.sampler,
sweep.seeds, sweep.runs, sweep.objective, sweep.direction, sweep.storage, sweep.done,
sweep.failed; artifacts spec/<file>, summary.csv, summary.md); one child per (cell, seed) (tags
sweep.role=child, sweep.name, sweep.hash, sweep.study, sweep.cell, seed, optuna.study,
optuna.trial, axis.<key>, sweep.worker; failure.reason and sweep.pruned when it did not finish).
Optuna trial and study user attrs: ``harness.schema.Attr`` (see ``harness.sweep.study``).

Exit codes: 0 every (cell, seed) done; 1 some failed or are missing, or the sweep stopped (a store
unreachable past its retries, too many dead workers): rerun to retry / resume;
2 a bad spec or a refused study; 130 interrupted.
"""
