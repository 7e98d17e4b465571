"""One registry style for the whole house: a typed, ordered name -> entry map.

Each registry holds one kind of entry (an implementation, a task factory, a figure, an option value with
its properties); an entry that names code does so with a lazy ``"module:object"`` target (a string is not
an import: ``load`` imports it when it is used, so a registry never pulls the loops, TRL or matplotlib
in). A name registered twice is a bug (ValueError at import); an unknown name is bad input
(``UnknownName``, one line with the registered names and the closest one). The lm-evaluation-harness
``api/registry.py`` idiom.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from harness.errors import InputError

__all__ = ["Registry", "UnknownName", "load", "suggest"]

T = TypeVar("T")


class UnknownName(InputError):
    """A name no entry of the registry has: ``unknown <what> 'name'; expected one of (...)``, with the
    closest registered name when one is close."""


def suggest(name: str, names: tuple[str, ...] | list[str]) -> str:
    """' (did you mean X?)' for the registered name closest to ``name``, else ''."""
    close = difflib.get_close_matches(str(name), list(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def load(target: str) -> Any:
    """The object a ``"module:object"`` target names (its module imported now)."""
    module, _, name = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split(".") if name else ():
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """An ordered ``name -> T`` map, filled once at import time (``add`` or a subclass's decorator)."""

    def __init__(self, what: str) -> None:
        self.what = what  # "implementation", "policy loss mode": how messages name an entry
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name registered twice is a bug (ValueError)."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(f"unknown {self.what} {name!r}; expected one of {self.names()}"
                              f"{suggest(name, self.names())}", problem=f"unknown {self.what}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()
