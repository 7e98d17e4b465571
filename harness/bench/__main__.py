"""``python -m harness.bench IMPL OUT ...``: one benchmark child process (see harness.bench.child)."""

from harness.bench.child import main

if __name__ == "__main__":
    raise SystemExit(main())
