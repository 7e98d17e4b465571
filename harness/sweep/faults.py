"""What a sweep survives: outages of its stores, torn journal records, stop signals.

Transient errors (connection refused / reset, SQLAlchemy ``OperationalError``, Optuna's
``StorageInternalError``, MLflow REST 5xx and connection errors, sqlite 'database is locked', a full
disk) are retried with backoff for ``OUTAGE_S`` seconds in all (``retry``); beyond that ``Outage``
says in one line what failed, for how long and the last error. A worker asks ``tracking_problem``
before it claims a trial, so it never starts a run that MLflow (or a full runs dir) cannot take.

A journal is recognised by its records before anything touches it (``check_journal``): a file whose
first record is not Optuna's create-study record, a symbolic link or anything but a regular file is
refused in one line and never modified; every write opens the file itself (``O_NOFOLLOW``). A
JournalStorage file whose last record was cut (a process killed mid-write, a full disk) is
truncated to its last complete record before it is opened (``repair_journal``), under the
journal's own lock, the cut bytes kept in ``<journal>.torn-<time>``; every append heals such a
tail first and undoes a write that failed half-way (``journal_backend``), so a torn record never
grows into a line that no reader can parse.

``StopRequest``: SIGINT / SIGTERM as one KeyboardInterrupt, never lost: a worker raises it again
until its cleanup has begun (a first one swallowed by ``Exception ignored in ...`` does not eat the
coordinator's SIGTERM), the coordinator raises it once and defers every later signal until its
cleanup is done.

Standard library only at import time: ``python -m harness.sweep`` installs its handler first.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness.errors import InputError, describe
from harness.urls import redact, redact_text

OUTAGE_S = float(os.environ.get("PPO_HARNESS_OUTAGE_S", "60"))  # how long transient errors are retried
STOPPING_S = 5.0  # ... while a process is stopping anyway (its cleanup must not outlast the kill deadline)
MIN_FREE_BYTES = 1 << 20  # a runs dir with less free space cannot take a run

_TRANSIENT_TYPES = frozenset({
    "StorageInternalError", "OperationalError", "InterfaceError", "DisconnectionError", "ConnectionError",
    "ConnectionRefusedError", "ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError", "TimeoutError",
    "MaxRetryError", "NewConnectionError", "ProtocolError", "RemoteDisconnected", "ReadTimeout", "ConnectTimeout",
    "ReadTimeoutError", "ConnectTimeoutError",
})  # fmt: skip
_TRANSIENT_TEXT = re.compile(
    r"(?i)connection refused|connection reset|could not connect|server closed the connection|terminating connection"
    r"|database is locked|database or disk is full|no space left|max retries exceeded|too many 5\d\d error"
    r"|error code 5\d\d|temporarily unavailable|timed out|failed to establish a new connection|broken pipe"
    r"|remote end closed|connection (?:is |was )?closed|connection aborted"
)
_PERMANENT_TEXT = re.compile(r"(?i)no such (?:table|column)|syntax error|authentication failed|permission denied")


# ---- transient errors ------------------------------------------------------------------------------


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in out and len(out) < 20:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def is_transient(e: BaseException) -> bool:
    """An error a store raises while it is unreachable or busy (worth retrying), not a bug or a bad input."""
    chain = _chain(e)
    text = " | ".join(str(x) for x in chain)
    if _PERMANENT_TEXT.search(text):
        return False
    for x in chain:
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if {c.__name__ for c in type(x).__mro__} & _TRANSIENT_TYPES:
            return True
    return bool(_TRANSIENT_TEXT.search(text))


def one_line(e: BaseException, n: int = 300) -> str:
    """``Type: first line`` of an error (``harness.errors.describe``; of its root cause after its own type),
    URLs redacted."""
    chain = _chain(e)
    causes = [x for x in chain[1:] if str(x).strip()]  # the deepest one that says something
    text = f"{type(e).__name__}: {describe(causes[-1])}" if causes else describe(e)  # wrappers' words: boilerplate
    return redact_text(text)[:n]


class Outage(Exception):
    """A store stayed unreachable past the retry budget: ``<what> unreachable for <s>s (<last error>)``."""

    def __init__(self, what: str, error: str, seconds: float):
        super().__init__(f"{what} unreachable for {seconds:.0f}s ({error})")
        self.what, self.error, self.seconds = what, error, seconds


def retry(what: str, fn, *args, budget: float | None = None, **kwargs):
    """``fn(*args, **kwargs)``, retried with backoff on transient errors for ``budget`` (``OUTAGE_S``)
    seconds in all; then ``Outage``. Other errors pass through at once. ``what`` names the store."""
    budget = OUTAGE_S if budget is None else budget
    t0, delay, said = time.monotonic(), 0.5, False
    while True:
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            if not is_transient(e):
                raise
            waited = time.monotonic() - t0
            if waited >= budget:
                raise Outage(what, one_line(e), waited) from None
            if not said:
                print(f"{what}: {one_line(e)}; retrying for up to {budget:.0f}s", file=sys.stderr, flush=True)
                said = True
            time.sleep(min(delay, max(0.05, budget - waited)))
            delay = min(delay * 2, 5.0)
            continue
        if said:
            print(f"{what}: reachable again after {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
        return result


def quiet_store_logs() -> None:
    """MLflow's SQL store logs a whole traceback for every OperationalError ('database is locked', a full
    disk) before raising it; the sweep retries those and says so in one line, so that log stays off."""
    import logging

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


# ---- can the tracking store take a run? ------------------------------------------------------------


def tracking_problem(uri: str | None, runs_dir: str | Path) -> str | None:
    """Why a run cannot start now (the MLflow server does not answer, the runs dir is full); None if it can."""
    try:
        free = shutil.disk_usage(runs_dir).free
    except OSError:
        free = None
    if free is not None and free < MIN_FREE_BYTES:
        return f"no space left under {runs_dir} ({free} bytes free)"
    if not uri or not uri.startswith(("http://", "https://")):
        return None
    return http_problem(uri)


def http_problem(uri: str) -> str | None:
    """A tracking server that answers at all (any status below 500) is reachable."""
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(url, timeout=3):  # noqa: S310 - http(s) only, checked above
            return None
    except urllib.error.HTTPError as e:
        return None if e.code < 500 else f"the MLflow server {redact(uri)} answers HTTP {e.code}"
    except Exception as e:  # URLError, timeouts, resets
        return f"the MLflow server {redact(uri)} does not answer ({one_line(e)})"


# ---- torn journal records ----------------------------------------------------------------------------


class NotAJournal(InputError):
    """A journal path the harness will not write to (a user's file, a link, a FIFO): the problem, one line."""


# the first bytes of Optuna's first record, create-study (its own writer's spacing and the compact one here)
_JOURNAL_HEADS = (b'{"op_code":0,"worker_id":', b'{"op_code": 0, "worker_id":')


def check_journal(path: str) -> None:
    """Raise ``NotAJournal`` unless ``path`` is missing, empty, or a regular file whose first record is
    Optuna's create-study record (a cut first record: its opening bytes). Reads the first line only,
    through no link; nothing is written."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise NotAJournal(e.strerror or type(e).__name__) from None
    if stat.S_ISLNK(st.st_mode):
        raise NotAJournal("a symbolic link; the harness never writes through one (give the journal file itself)")
    if not stat.S_ISREG(st.st_mode):
        raise NotAJournal("not a regular file (a journal is a file the harness writes)")
    if st.st_size == 0:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            head = f.readline(1 << 20)
    except OSError as e:
        raise NotAJournal(f"cannot read it ({e.strerror or type(e).__name__})") from None
    if head.endswith(b"\n"):
        try:
            rec = json.loads(head)
        except ValueError:
            rec = None
        ok = (isinstance(rec, dict) and rec.get("op_code") == 0 and isinstance(rec.get("worker_id"), str)
              and isinstance(rec.get("study_name"), str))
    else:  # the file's only record, cut
        ok = head.startswith(_JOURNAL_HEADS)
    if not ok:
        raise NotAJournal("exists and is not an Optuna journal (its first record is not Optuna's create-study "
                          "record); the harness never writes to a file it did not create")


def _open_nofollow(path: str, flags: int) -> int:
    """``os.open`` of the file itself: a symbolic link in its place is an error (ELOOP), never followed."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o644)


def _truncate(path: str, size: int) -> None:
    fd = _open_nofollow(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)



def _good_length(path: str, full: bool) -> int:
    """Bytes of ``path`` up to its last complete, parsable record (only the tail is read unless ``full``)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if full:
            good = 0
            for line in f:
                if not line.endswith(b"\n") or not _parses(line):
                    break
                good += len(line)
            return good
        start = max(0, size - (1 << 20))
        f.seek(start)
        data = f.read()
    end = data.rfind(b"\n") + 1  # a tail after the last newline is a cut record
    while end > 0:  # complete lines that do not parse (a record appended onto a cut one) go too
        begin = data.rfind(b"\n", 0, end - 1) + 1
        if begin == 0 and start > 0:
            return _good_length(path, full=True)  # a line begun before the window: read it all
        if _parses(data[begin:end]):
            return start + end
        end = begin
    return start + end if start == 0 else _good_length(path, full=True)


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def _cut(path: str, full: bool = False) -> str | None:
    """Truncate a torn tail (the caller holds the journal's lock); the note saying so, or None."""
    size = os.path.getsize(path)
    good = _good_length(path, full)
    if good >= size:
        return None
    copy = f"{path}.torn-{time.strftime('%Y%m%dT%H%M%S')}"
    k = 1
    while os.path.exists(copy):
        copy, k = f"{path}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{k}", k + 1
    with os.fdopen(_open_nofollow(path, os.O_RDONLY), "rb") as f:
        f.seek(good)
        cut = f.read()
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(cut)
    _truncate(path, good)
    note = (f"journal {path}: {'a' if full else 'its last'} record was cut (a process killed mid-write or a "
            f"full disk); truncated to the last complete record before it, the {len(cut)} bytes cut kept in {copy}")
    print(note, file=sys.stderr, flush=True)
    return note


def torn_tail(path: str) -> bool:
    """A quick look without the lock: the file does not end in a newline, or its last line does not parse."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return False
    if size == 0:
        return False
    return _good_length(path, full=False) < size


def repair_journal(path: str, full: bool = False) -> str | None:
    """Cut a torn last record (``full``: everything from the first unparsable line) under the journal's lock;
    a file that is not a journal (``check_journal``) raises ``NotAJournal`` and is left as it is."""
    check_journal(path)
    if not full and not torn_tail(path):
        return None
    with journal_locked(path):
        return _cut(path, full)


@contextlib.contextmanager
def journal_locked(path: str, grace_s: float = 30.0):
    """The lock ``JournalFileBackend`` appends under (the symlink ``<journal>.lock``, Optuna's protocol), with
    stop signals held while it is held: a Ctrl-C landing between taking it and giving it back (Optuna's
    own ``acquire(); try:`` has that gap) left it held by no one, and every process waited out its grace
    period. While waiting for it a stop request is acted on at once (nothing is held yet). A lock
    unchanged for ``grace_s`` (its holder was killed) is taken over, as Optuna does."""
    import uuid

    lock = path + ".lock"
    with signals_held():
        delay, mtime, since = 0.001, None, time.monotonic()
        while True:
            try:
                os.symlink(path, lock)
                break
            except FileExistsError:
                pass
            deliver_held()  # not holding anything yet: a stop request may interrupt the wait
            try:
                now_mtime = os.lstat(lock).st_mtime
            except OSError:
                continue
            if now_mtime != mtime:
                mtime, since = now_mtime, time.monotonic()
            elif time.monotonic() - since > grace_s:
                print(f"journal {path}: taking over its lock, unchanged for {grace_s:.0f}s (its holder died)",
                      file=sys.stderr, flush=True)
                _unlink_lock(lock, uuid.uuid4().hex)
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        try:
            yield
        finally:
            _unlink_lock(lock, uuid.uuid4().hex)


def _unlink_lock(lock: str, tag: str) -> None:
    """Optuna's release: rename, then unlink (so a concurrent take-over never removes a fresh lock)."""
    moved = f"{lock}{tag}.rename"
    try:
        os.rename(lock, moved)
        os.unlink(moved)
    except OSError:
        pass


_BACKEND: Any = None


def journal_backend(path: str):
    """A ``JournalFileBackend`` whose appends heal a torn tail first, never leave half a record, and hold
    the journal's lock with stop signals held (``journal_locked``)."""
    global _BACKEND
    if _BACKEND is None:
        from optuna.storages.journal import JournalFileBackend

        class HealingJournalBackend(JournalFileBackend):
            def __init__(self, file_path: str):
                self._path = file_path
                check_journal(file_path)
                os.close(_open_nofollow(file_path, os.O_WRONLY | os.O_CREAT))  # created here, through no link
                super().__init__(file_path)

            def append_logs(self, logs: list[dict[str, Any]]) -> None:
                data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
                with journal_locked(self._path):
                    if _ends_torn(self._path):
                        _cut(self._path)
                    size = os.path.getsize(self._path)
                    try:
                        with os.fdopen(_open_nofollow(self._path, os.O_WRONLY | os.O_APPEND), "ab") as f:
                            f.write(data)
                            f.flush()
                            os.fsync(f.fileno())
                    except OSError:  # a full disk: undo the half-written record, then let retry() retry
                        with contextlib.suppress(OSError):
                            _truncate(self._path, size)
                        raise

        _BACKEND = HealingJournalBackend
    return _BACKEND(path)


def _ends_torn(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


# ---- stop signals -----------------------------------------------------------------------------------


class StopRequest:
    """SIGINT / SIGTERM -> KeyboardInterrupt in the main thread, never lost.

    ``latch=False`` (a worker): every signal raises until ``acknowledge`` (the cleanup has begun), so
    a first KeyboardInterrupt swallowed somewhere does not make the worker deaf to the next SIGTERM.
    ``latch=True`` (the coordinator): the first signal raises, later ones only say the cleanup is
    under way. ``check()`` raises a request that was received but never acted on.
    """

    def __init__(self, latch: bool = False):
        self.latch = latch
        self.signals = 0
        self.stopping = False

    def install(self) -> dict[int, Any]:
        """Become the SIGINT and SIGTERM handler (main thread only); returns the old handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def restore(old: dict[int, Any]) -> None:
        for s, h in old.items():
            signal.signal(s, h)

    def __call__(self, signum, frame) -> None:
        if _HELD_DEPTH[0] > 0:  # inside signals_held(): acted on when the block ends
            _HELD.append((self, signum))
            return
        self.take(signum)

    def take(self, signum: int) -> None:
        self.signals += 1
        if self.stopping or (self.latch and self.signals > 1):
            if self.latch and self.signals == 2:
                print("stopping: finishing the cleanup first (in-flight runs are being marked KILLED)",
                      file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt for a stop request not acted on yet (one swallowed where it landed)."""
        if self.signals and not self.stopping:
            raise KeyboardInterrupt

    def acknowledge(self) -> None:
        """The cleanup has begun: later signals are recorded, not raised."""
        self.stopping = True


STOP = StopRequest()  # a worker process's (``python -m harness.sweep`` installs it first)

_HELD_DEPTH = [0]  # nesting of signals_held() in the main thread
_HELD: list[tuple[StopRequest, int]] = []  # stop signals received meanwhile


@contextlib.contextmanager
def signals_held():
    """A ``StopRequest``'s signals wait until the block ends (main thread; other threads never see them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _HELD_DEPTH[0] += 1
    try:
        yield
    finally:
        _HELD_DEPTH[0] -= 1
        if _HELD_DEPTH[0] == 0:
            deliver_held()


def deliver_held() -> None:
    """Act on the stop signals held so far (may raise KeyboardInterrupt): call only where nothing is held."""
    while _HELD:
        handler, signum = _HELD.pop(0)
        handler.take(signum)


def forget_handled_interrupt() -> None:
    """Let ``sys.exit``'s code stand after a KeyboardInterrupt that was caught and handled.

    CPython (3.11, 3.12): a KeyboardInterrupt that propagates out of a string ``eval`` / ``exec`` sets a
    process-wide flag, and ``python -m`` then ends by SIGINT (exit status -2) whatever code ``sys.exit`` gave.
    ``collections.namedtuple`` runs such an ``eval``, so a Ctrl-C during any import can set it. Evaluating a
    string resets the flag. Call it just before exiting with 130.
    """
    eval("None")


class TolerantStream:
    """A worker's stdout / stderr (its log file): a write that fails (a full disk) is dropped, never raised."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
