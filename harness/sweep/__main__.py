"""``python -m harness.sweep --worker -``: one worker process, started by the coordinator; ``--follower CONFIG``:
a rank other than 0 of a trial over several processes, started by its worker (``harness.sweep.group``).

Hidden: people start sweeps with ``ppo-harness sweep SPEC``. The payload is the JSON that
``harness.sweep.worker.payload_bytes`` writes, read from stdin (``-``): never from the command line,
which ``ps`` shows to every local user (the payload holds the storage URL and the tracking URI). A
JSON string in place of ``-`` is still read, for running a worker by hand. This parser is the only
one the sweep keeps.

The coordinator starts it with SIGINT / SIGTERM blocked; its handler (``faults.STOP``) is installed
before anything else is imported and only then are they unblocked, so a Ctrl-C or the coordinator's
SIGTERM in the worker's first second, even during the interpreter's own start-up, is never lost.
"""

from __future__ import annotations

if __name__ == "__main__":  # first thing: a stop request from here on becomes a KeyboardInterrupt
    import faulthandler
    import signal

    from harness.sweep.faults import STOP

    STOP.install()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 <worker>: its stacks, in its log

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from harness.sweep.faults import STOP, TolerantStream
    from harness.sweep.study import EXIT_INTERRUPTED, EXIT_USAGE

    sys.stdout, sys.stderr = TolerantStream(sys.stdout), TolerantStream(sys.stderr)  # a full disk stops no worker

    p = argparse.ArgumentParser(
        prog="python -m harness.sweep",
        description="Internal: one sweep worker process (start sweeps with `ppo-harness sweep SPEC`).",
    )
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--worker", metavar="-",
                      help="'-': read the worker payload (JSON, written by the coordinator) from stdin")
    role.add_argument("--follower", metavar="CONFIG",
                      help="a rank other than 0 of a trial over several processes (harness.sweep.group)")
    args = p.parse_args(argv)
    if args.follower is not None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # its worker's SIGTERM ends it at once, even inside a collective
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        from harness.sweep.group import follower_main

        return follower_main(args.follower)
    try:
        # started with these blocked (by the coordinator): a stop request that came meanwhile lands here
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        raw = sys.stdin.read() if args.worker == "-" else args.worker
        try:
            payload = json.loads(raw)
        except ValueError:
            print("worker: no valid payload on stdin (the coordinator writes it)", file=sys.stderr)
            return EXIT_USAGE
        from harness.sweep.worker import worker_main

        return worker_main(payload)
    except KeyboardInterrupt:  # before worker_main took over (reading the payload, importing)
        STOP.acknowledge()
        print("worker: interrupted while starting", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    code = main()
    if code == 130:  # interrupted: without this, an interrupt seen during an import can make the status -2
        from harness.sweep.faults import forget_handled_interrupt

        forget_handled_interrupt()
    sys.exit(code)
