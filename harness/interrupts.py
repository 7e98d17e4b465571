"""A stop signal that is never lost: SIGTERM as an exception in the main thread, raised again until acted on.

Python runs a signal handler in the main thread between bytecodes, and an exception it raises there is
printed and dropped ("Exception ignored in ...") when the main thread is inside a garbage-collection
callback at that moment (a ``weakref`` callback, a ``__del__``: SQLAlchemy's and the models' caches have
them). A one-shot SIGTERM (``timeout``, a batch scheduler, torchrun stopping a rank) would then be lost
and the process would run on. So ``stopping`` raises the stop and arms a timer: until ``acted_on`` says
the cleanup has begun (or the block ends), SIGALRM raises it again every ``AGAIN_S`` seconds.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["AGAIN_S", "acted_on", "stopping"]

AGAIN_S = 3.0  # longer than the unwinding before the cleanup (lock releases, a build folder removed)
_PENDING: list[Callable[[], BaseException] | None] = [None]  # the stop to raise again, until acted on


def acted_on() -> None:
    """The stop reached the code that handles it (a run's cleanup has begun): no more raising it again."""
    if _PENDING[0] is not None:
        _PENDING[0] = None
        signal.setitimer(signal.ITIMER_REAL, 0)


@contextlib.contextmanager
def stopping(make: Callable[[], BaseException]) -> Iterator[None]:
    """SIGTERM raises ``make()`` in the main thread for the block, again every AGAIN_S seconds until
    ``acted_on``. Outside the main thread: nothing installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        _PENDING[0] = make
        signal.setitimer(signal.ITIMER_REAL, AGAIN_S)
        raise make()

    def again(signum, frame):
        if _PENDING[0] is not None:  # the first one was dropped where it landed
            stop(signum, frame)

    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, stop), signal.SIGALRM: signal.signal(signal.SIGALRM, again)}
    try:
        yield
    finally:
        acted_on()
        for s, h in old.items():
            signal.signal(s, h)
