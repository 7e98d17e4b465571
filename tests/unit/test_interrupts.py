"""A SIGTERM is never lost: one whose KeyboardInterrupt a garbage-collection callback drops is raised again."""

from __future__ import annotations

import os
import signal
import sys
import time
import weakref

import pytest

from harness import interrupts


class _Thing:
    pass


def _dropped_sigterm() -> None:
    """A SIGTERM that lands while a weakref callback runs: Python prints its exception and drops it."""
    thing = _Thing()

    def callback(ref):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here, inside the callback

    ref = weakref.ref(thing, callback)
    del thing
    assert ref() is None


def test_a_stop_dropped_by_a_gc_callback_is_raised_again(monkeypatch):
    monkeypatch.setattr(interrupts, "AGAIN_S", 0.3)
    dropped: list[type] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt), interrupts.stopping(KeyboardInterrupt):
        _dropped_sigterm()
        while time.monotonic() - t0 < 10:  # the work going on, deaf to the first stop
            time.sleep(0.01)
    assert time.monotonic() - t0 < 5  # raised again within AGAIN_S, not after the work
    assert dropped == [KeyboardInterrupt]  # the first one was dropped ("Exception ignored in ...")
    assert signal.getsignal(signal.SIGTERM) is not None and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_stop_acted_on_is_not_raised_again(monkeypatch):
    monkeypatch.setattr(interrupts, "AGAIN_S", 0.3)
    old = signal.getsignal(signal.SIGTERM)
    with interrupts.stopping(KeyboardInterrupt):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            interrupts.acted_on()  # the cleanup begins
        time.sleep(1.0)  # three AGAIN_S: nothing raised into the cleanup
    assert signal.getsignal(signal.SIGTERM) is old
