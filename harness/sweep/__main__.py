"""``python -m harness.sweep --worker <json>``: one worker process, started by the coordinator.

Hidden: people start sweeps with ``ppo-harness sweep SPEC``. The payload is the JSON that
``harness.sweep.worker.worker_command`` writes; this parser is the only one the sweep keeps.
"""

from __future__ import annotations

import argparse
import json
import sys

from harness.sweep.worker import worker_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.sweep",
        description="Internal: one sweep worker process (start sweeps with `ppo-harness sweep SPEC`).",
    )
    p.add_argument("--worker", required=True, metavar="JSON", help="the worker payload, written by the coordinator")
    args = p.parse_args(argv)
    return worker_main(json.loads(args.worker))


if __name__ == "__main__":
    sys.exit(main())
