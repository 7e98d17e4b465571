"""The error vocabulary, at the bottom of the house: bad input, the exit codes, one line per error.

Bad input (an unknown key, an impossible value, a missing file, a bad option) raises an ``InputError``
(or a class derived from it) naming the key, option or path and the problem; the CLI turns every one of
them into one line on stderr and ``EXIT_INPUT``, by class, never by matching names or messages. A bug
is any other exception: its traceback. Library functions raise these or return results; only the CLI
(and the sweep's worker processes, whose exit status is their protocol) turns them into exit codes.
"""

from __future__ import annotations

__all__ = ["EXIT_FAILED", "EXIT_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "InputError", "describe", "first_line"]

EXIT_OK = 0
EXIT_FAILED = 1  # the work itself failed (a run, a child, a disk): its one line says why
EXIT_INPUT = 2  # bad input, refused before anything was written
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM (128 + SIGINT, the shell's convention)


class InputError(ValueError):
    """Bad input: ``str(e)`` is one line naming it; ``key`` is the config key, option or path it concerns
    (None when the message names it otherwise), ``problem`` the refusal without the name. A ValueError, so
    code that validates with ``except ValueError`` keeps working."""

    exit_code = EXIT_INPUT
    key: str | None = None
    problem: str | None = None

    def __init__(self, message: str | None = None, *, key: str | None = None, problem: str | None = None):
        if message is None:
            message = f"{key}: {problem}" if key else (problem or "")
        super().__init__(message)
        if key is not None:
            self.key = key
        if problem is not None:
            self.problem = problem


def first_line(message: object) -> str:
    """The first line of a message that says something (an exception's ``str()``), runs of whitespace made
    one space; '' for an empty one."""
    for line in str(message).splitlines():
        if line.strip():
            return " ".join(line.split())
    return ""


def describe(e: BaseException) -> str:
    """``Type: first line`` of an exception (``Type`` alone when it says nothing)."""
    text = first_line(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
