"""URLs and names made safe to show: credentials masked, names checked before they become folders.

Layer 0, the standard library only. ``redact`` is what every URL goes through before it is
printed, logged, written to a file, set as an MLflow tag or param, or put in an error message
(the tracking URI, the Optuna storage URL); ``redact_text`` does the same to every URL inside a
message (an exception raised by a client library). ``safe_name`` is the one rule for a name that
becomes a path component (a sweep spec's name, an MLflow experiment).
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.errors import InputError

MASK = "***"
HIDDEN = "<url hidden: not parsable>"  # what redact returns when it cannot take a URL apart

# query / fragment / key=value parameters whose value is a secret (names compared lower-cased):
# exact names, and any name containing one of the fragments
SECRET_NAMES = frozenset({
    "password", "passwd", "pwd", "pass", "sslpassword", "token", "access_token", "refresh_token", "id_token",
    "auth", "auth_token", "authorization", "api_key", "apikey", "key", "secret", "client_secret", "sig",
    "signature", "sas", "credential", "credentials", "private_key", "session_token",
})  # fmt: skip
SECRET_FRAGMENTS = ("password", "passwd", "secret", "token", "api_key", "apikey", "signature", "credential",
                    "private_key", "access_key")  # fmt: skip

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_LOOSE_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:/*")  # 'postgresql:/u:pw@h', 'postgresql:u:pw@h': typos
# in a message: where a URL (or a one-slash typo of one) begins
_URL_START = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*:/+")
_PARAM = re.compile(r"(^|[&;])([^=&;]*)=([^&;]*)")
_KEYWORD = re.compile(r"(?i)\b([A-Za-z_][A-Za-z0-9_.\-]*)(\s*=\s*)('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,]+)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

NAME_RULE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME = re.compile(NAME_RULE)
NAME_HELP = "expected letters, digits, '-', '_' or '.' (at most 64, the first a letter or digit)"


def is_secret(name: str) -> bool:
    """A parameter name whose value must never be shown (``password``, ``sslpassword``, ``token``, ...)."""
    n = name.strip().lower()
    return n in SECRET_NAMES or any(f in n for f in SECRET_FRAGMENTS)


def redact(url: object) -> str:
    """``url`` with its password and secret parameters masked; never raises.

    ``scheme://user:password@host/...`` -> ``scheme://user:***@host/...``: the userinfo ends at
    the *last* ``@`` of the authority, so a password holding ``@``, ``/`` or ``?`` is masked
    whole; the username stays. Query and fragment parameters named as secrets (``password``,
    ``token``, ``access_token``, ``api_key``, ``sslpassword``, ... in any case) get ``***`` as
    value. A string without ``://`` (a journal file path, a libpq ``key=value`` string) keeps
    everything but the values of secret keys. What cannot be taken apart (control characters,
    an object whose ``str`` fails) comes back as a placeholder, never as itself.
    """
    if url is None:
        return ""
    try:
        if isinstance(url, bytes | bytearray):
            url = bytes(url).decode("utf-8", "replace")
        text = url if isinstance(url, str) else str(url)
        if _CONTROL.search(text):
            return HIDDEN
        m = _SCHEME.match(text)
        if m is None:
            loose = _LOOSE_SCHEME.match(text)
            if loose is not None and "@" in text and ":" in text[loose.end():]:  # a URL with a malformed scheme
                return loose.group(0) + _redact_rest(text[loose.end():])
            return _mask_keywords(text)
        return m.group(0) + _redact_rest(text[m.end():])
    except Exception:  # a str() that raises, or anything unforeseen: show nothing of it
        return HIDDEN


def _redact_rest(rest: str) -> str:
    """Everything after ``scheme://``: userinfo masked, then the secret query / fragment values."""
    userinfo, tail = _split_userinfo(rest)
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        userinfo = user + (":" + MASK if colon else "")
    path, hash_, fragment = tail.partition("#")
    base, q, query = path.partition("?")
    out = base + (q + _mask_params(query) if q else "") + (hash_ + _mask_params(fragment) if hash_ else "")
    return out if userinfo is None else f"{userinfo}@{out}"


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """(userinfo or None, the rest) of what follows ``scheme://``: the userinfo ends at the last ``@``
    before the query / fragment (or of all, after a ``user:`` without a ``/``: a password holding ``?``)."""
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, cut)
    if at < 0:  # a password holding '?' or '#': the last '@' of all, after a 'user:' without a '/'
        last, colon = rest.rfind("@"), rest.find(":")
        at = last if 0 <= colon < last and "/" not in rest[:colon] else -1
    return (rest[:at], rest[at + 1:]) if at >= 0 else (None, rest)


def _mask_params(params: str) -> str:
    from urllib.parse import unquote_plus

    return _PARAM.sub(lambda m: m.group(1) + m.group(2) + "=" + (MASK if is_secret(unquote_plus(m.group(2))) else m.group(3)),
                      params)  # fmt: skip


def _mask_keywords(text: str) -> str:
    """``password=secret`` (libpq keyword strings, ``key=value`` lists) -> ``password=***``."""
    return _KEYWORD.sub(lambda m: m.group(1) + m.group(2) + (MASK if is_secret(m.group(1)) else m.group(3)), text)


def malformed_scheme(value: str) -> str | None:
    """The scheme of a value that looks like a URL but is not ``scheme://...`` (``postgresql:/u:pw@h/db``,
    ``postgresql:u@h``): what was meant cannot be known, so it is refused, never read as a path. ``file:``
    URIs (``file:/x`` is one) and one-letter schemes (a drive letter) are not flagged."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]+):(?!//)", value)
    return m.group(1) if m and m.group(1).lower() != "file" else None


def redact_text(text: object) -> str:
    """A message with every URL in it redacted (``redact``), and every password the process was handed in
    a URL (``remember_secrets``) masked wherever it appears; never raises.

    In free text a password may hold quotes, spaces, ``@``, ``/``: after ``scheme://user:`` everything up
    to the last ``@`` before the next URL (or the end of the line) is masked, so an odd password is
    hidden whole and, at worst, some text after it too."""
    try:
        s = text if isinstance(text, str) else str(text)
        s = "\n".join(_mask_userinfo_in_line(line) for line in s.split("\n"))
        s = _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), s)
        for secret in sorted(_SECRETS, key=len, reverse=True):
            s = s.replace(secret, MASK)
        return s
    except Exception:
        return HIDDEN


_USER = re.compile(r"[^\s:/@'\"<>`]*")


def _mask_userinfo_in_line(line: str) -> str:
    starts = [m.end() for m in _URL_START.finditer(line)]
    if not starts:
        return line
    out, pos = [], 0
    for i, begin in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(line)  # this URL's region: up to the next one
        user = _USER.match(line, begin).end()
        at = line.rfind("@", user, end)
        if user < end and line[user] == ":" and at > user:
            out.append(line[pos:user + 1] + MASK)
            pos = at
    return "".join(out) + line[pos:]


# ---- passwords this process was handed -------------------------------------------------------------

_SECRETS: set[str] = set()
MIN_REMEMBERED = 3  # shorter passwords are masked where they sit in a URL only (masking 'pw' everywhere garbles text)


def remember_secrets(value: object) -> None:
    """Remember the password (and secret parameters) of a URL-like ``value`` (a command-line argument, an
    environment variable), so ``redact_text`` masks them wherever they turn up later: raw, percent-encoded
    and -decoded, and as ``repr`` would escape them. Never raises."""
    from urllib.parse import quote, unquote

    try:
        text = value if isinstance(value, str) else str(value)
        if text.startswith("--") and "=" in text:  # --storage=URL
            text = text.split("=", 1)[1]
        found = []
        loose = _LOOSE_SCHEME.match(text)
        if loose is not None:
            userinfo, _ = _split_userinfo(text[loose.end():])
            user, colon, password = (userinfo or "").partition(":")
            if colon:
                found.append(password)
        found += [m.group(3) for m in _KEYWORD.finditer(text) if is_secret(m.group(1))]
        found += [m.group(3) for m in _PARAM.finditer(text.partition("?")[2]) if is_secret(m.group(2))]
        for secret in found:
            for form in (secret, unquote(secret), quote(secret, safe=""), quote(secret), repr(secret)[1:-1]):
                if len(form) >= MIN_REMEMBERED:
                    _SECRETS.add(form)
    except Exception:
        pass


# ---- names that become path components ---------------------------------------------------------------


class UnsafeName(InputError):
    """A name that cannot be a folder (``..``, ``a/b``, empty, too long): ``what 'name': expected ...``."""


def safe_name(name: object, what: str) -> str:
    """``name`` when it matches ``NAME`` (so it is one path component, never ``.``/``..``), else UnsafeName."""
    if not isinstance(name, str) or not NAME.match(name):
        raise UnsafeName(f"{what} {name!r}: {NAME_HELP}; it names a folder")
    return name


def inside(root: str | Path, *parts: str) -> Path:
    """``root / parts`` resolved, refused (UnsafeName) when it lands outside ``root`` resolved."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base):
        raise UnsafeName(f"path {'/'.join(parts)!r}: leaves {base}")
    return path
