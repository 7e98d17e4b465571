"""The one strict YAML loader: every YAML file a user hands the project (run configs, ablation
specs) and every ``--set`` value is read through ``read_yaml`` / ``loads``.

On top of ``yaml.SafeLoader`` it refuses, with one ``YAMLInputError`` naming the file and the
key or line, what would otherwise pass silently or blow up later:

- bytes that are not UTF-8 (``not UTF-8 text (byte 0xff at offset 12)``) and files over 1 MB;
- a key given twice in one mapping (PyYAML keeps the last one);
- aliases (``*name``) and merge keys (``<<``): an alias bomb ("billion laughs") expands to
  gigabytes once flattened, and a config never needs either;
- tags other than the JSON-like ones (``!!binary``, ``!!set``, ``!custom`` ...);
- documents of more than 100,000 nodes or nested deeper than 64 levels.

Numbers follow YAML 1.2 (the core schema), so a scalar means what a person reads: ``010`` is 10
(YAML 1.1: octal 8), ``1:20`` and ``1_000`` are strings (YAML 1.1: the base-60 number 80 and 1000;
a number key then refuses them by name), ``0b11`` is a string, ``0o17`` and ``0x1f`` are octal and
hex, ``1e-4`` (an exponent without a dot, a string in YAML 1.1) is a float, and ``2024-01-01``
stays a string instead of a ``datetime.date``. Booleans and null resolve as ``yaml.safe_load`` does.
A control character or NUL anywhere in the text is refused with its position.

Layer 0: imports only yaml, the standard library and ``harness.errors``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness.errors import InputError

MAX_BYTES = 1_000_000
MAX_NODES = 100_000
MAX_DEPTH = 64

_TAG = "tag:yaml.org,2002:"
_ALLOWED_TAGS = frozenset(_TAG + t for t in ("str", "int", "float", "bool", "null", "seq", "map"))


class YAMLInputError(InputError):
    """A YAML input refused: ``str(e)`` is ``<source>: <detail>``, one line.

    ``problem`` is the refusal without its location, ``key`` the dotted path of the offending key
    (``grid.kl.coef``, ``grid.zip[0]``) when there is one, ``line`` its 1-based line, and
    ``yaml_error`` the parser's own error when the text is not YAML at all.
    """

    def __init__(self, source: str, problem: str, *, key: str | None = None, line: int | None = None,
                 yaml_error: yaml.YAMLError | None = None):
        self.source, self.problem, self.key, self.line, self.yaml_error = source, problem, key, line, yaml_error
        self.detail = problem + (f" (line {line})" if line else "")
        super().__init__(f"{source}: {self.detail}")


def show_key(key: Any, quote: bool = True) -> str:
    """A key as a message prints it: ``'kl.coef'`` (or bare with quote=False); a key with spaces,
    quotes, control, invisible or non-ASCII characters as ``ascii()`` (``'kl.coef\\u200b'``)."""
    if not isinstance(key, str):
        return repr(key)
    if key and all(c.isascii() and c.isprintable() and not c.isspace() and c not in "'\"\\" for c in key):
        return f"'{key}'" if quote else key
    return ascii(key)


def read_yaml(path: str | Path, *, max_bytes: int = MAX_BYTES) -> Any:
    """Parse one YAML file strictly (see the module docstring); raises ``YAMLInputError``."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise YAMLInputError(source, "no such file") from None
    except OSError as e:
        raise YAMLInputError(source, f"cannot read ({e.strerror or type(e).__name__})") from None
    if len(raw) > max_bytes:
        raise YAMLInputError(source, f"larger than {max_bytes:,} bytes (the limit for a YAML config or spec)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YAMLInputError(source, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    return loads(text, source)


def loads(text: str, source: str = "<string>", *, max_bytes: int = MAX_BYTES) -> Any:
    """Parse one YAML document from a string strictly; raises ``YAMLInputError``."""
    if len(text) > max_bytes:
        raise YAMLInputError(source, f"larger than {max_bytes:,} characters (the limit for a YAML input)")
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader checks every character here: inside the try
        node = loader.get_single_node()
        if node is None:
            return None
        loader.check_tree(node)
        return loader.construct_document(node)
    except _Refused as r:
        raise YAMLInputError(source, r.problem, key=r.key, line=r.line) from None
    except yaml.reader.ReaderError as e:  # a control character or NUL: no mark, a position
        pos = e.position if isinstance(e.position, int) else 0
        code = e.character if isinstance(e.character, int) else ord(str(e.character)[:1] or "\0")
        raise YAMLInputError(source, f"control character U+{code:04X} at offset {pos} (YAML text may not hold it)",
                             line=text.count("\n", 0, pos) + 1) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        line = mark.line + 1 if mark is not None else None
        raise YAMLInputError(source, f"not valid YAML: {problem}", line=line, yaml_error=e) from None
    finally:
        if loader is not None:
            loader.dispose()


# ---- the loader ---------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, problem: str, node_or_mark: Any = None, key: str | None = None):
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        self.problem, self.key = problem, key or None
        self.line = mark.line + 1 if mark is not None else None


# YAML 1.2 core-schema numbers: no base 60, no '_', no 0b, a leading 0 is decimal, '0o' is octal, and
# an exponent needs no dot (1e-4: a string in YAML 1.1).
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_NUMBER_TAGS = (_TAG + "timestamp", _TAG + "int", _TAG + "float")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader minus aliases, merge keys, timestamps and exotic tags; counted and depth-capped."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in _NUMBER_TAGS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_yaml_int(self, node: ScalarNode) -> int:
        text = self.construct_scalar(node)  # matched _INT: decimal (a leading 0 too), 0o octal, 0x hex
        return int(text[2:], 8 if text[1] == "o" else 16) if text[:2] in ("0o", "0x") else int(text, 10)

    def __init__(self, stream: str):
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"YAML aliases (*{event.anchor}) are not supported", event.start_mark)
        event = self.peek_event()
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES:,} YAML nodes (the limit for a config or spec)", event.start_mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def check_tree(self, node: Node, path: tuple[Any, ...] = ()) -> None:
        """Tags, keys and duplicates of the composed tree, before anything is constructed."""
        if node.tag == _TAG + "value":  # a plain '=' (YAML 1.1's value key): just the text
            node.tag = _TAG + "str"
        if node.tag not in _ALLOWED_TAGS:
            raise _Refused(f"YAML tag {_short_tag(node.tag)} is not supported", node, _dotted(path))
        if isinstance(node, ScalarNode):
            try:
                self.construct_object(node)  # cached: construct_document reuses it
            except (ValueError, TypeError, KeyError, OverflowError):
                raise _Refused(f"cannot read {node.value[:40]!r} as {_short_tag(node.tag)}", node, _dotted(path)) from None
        elif isinstance(node, SequenceNode):
            for i, child in enumerate(node.value):
                self.check_tree(child, (*path, _Index(i)))
        elif isinstance(node, MappingNode):
            self._check_mapping(node, path)

    def _check_mapping(self, node: MappingNode, path: tuple[Any, ...]) -> None:
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                raise _Refused("YAML merge keys (<<) are not supported", key_node)
            if not isinstance(key_node, ScalarNode):
                raise _Refused("a mapping key must be a plain value, not a list or mapping", key_node, _dotted(path))
            self.check_tree(key_node, path)
            key = self.construct_object(key_node)
            if key is None:
                raise _Refused(f"a key is null ({key_node.value or 'empty'!r}) under {show_key(_dotted(path) or '(top level)')}"
                               if path else f"a top-level key is null ({key_node.value or 'empty'!r})",
                               key_node, _dotted(path))
            where = _dotted((*path, key))
            if key in seen:
                raise _Refused(f"duplicate key {show_key(where)}", key_node, where)
            seen.add(key)
            self.check_tree(value_node, (*path, key))


class _Index(int):
    """A list position in a key path (``grid.zip[0]``), apart from an integer mapping key."""


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{int(p)}]" if isinstance(p, _Index) else (f".{p}" if out else str(p))
    return out


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


_StrictLoader.add_implicit_resolver(_TAG + "int", _INT, list("-+0123456789"))
_StrictLoader.add_implicit_resolver(_TAG + "float", _FLOAT, list("-+0123456789."))
_StrictLoader.add_constructor(_TAG + "int", _StrictLoader.construct_yaml_int)
