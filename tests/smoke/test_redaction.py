"""No password shows, whatever characters it holds: passwords are generated from every printable ASCII
character class (letters, digits, the space and each punctuation character on its own: quotes, '@', ':',
'/', '%', '#', '?' ...), put raw into URLs (as people type them, legal or not) and percent-encoded.

- ``redact`` / ``redact_text`` alone (no password remembered): none of them survives in a URL, in a
  message quoting the URL with '' or repr(), or in a one-slash typo of a scheme.
- The real CLI (``harness.cli.main``), for each password: refused tracking URIs and storages (a server
  that does not answer, a port out of range, a malformed scheme, a missing driver) and a sweep's dry run
  print none of them (stdout, stderr), create nothing in the working folder or in ``$HOME``.

A real MLflow server, a real PostgreSQL and the sweep's worker command lines are covered, with passwords
holding the same characters, by tests/smoke/test_secrets.py.
"""

from __future__ import annotations

import socket
import string
from urllib.parse import quote

import pytest

from harness import urls
from harness.cli import main
from harness.urls import redact, redact_text

SPEC = ("name: red\nbase:\n  train.iterations: 1\n  rollout.batch_size: 8\n  rollout.group_size: 2\n"
        "  ppo.minibatches: 2\ngrid: {kl.coef: [0.0, 0.1]}\nseeds: [0]\n")
CLASSES = {"lower": "k", "upper": "K", "digit": "7", "space": " ",
           **{f"punct-{ord(c):02x}": c for c in string.punctuation}}  # fmt: skip
PASSWORDS = {name: f"Pw{c}{c}Zx{i:02d}q" for i, (name, c) in enumerate(CLASSES.items())}


def forms(pw: str) -> list[str]:
    return [pw, quote(pw, safe=""), quote(pw)]


def leaks(text: str, pw: str) -> list[str]:
    return [f for f in forms(pw) if f in text]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing answers there


def test_every_printable_class_is_generated():
    chars = "".join(CLASSES.values())
    assert set(string.punctuation + " ") <= set(chars)
    for c in "'\" @:/%#?":
        assert any(c in pw for pw in PASSWORDS.values())


@pytest.mark.parametrize("name", PASSWORDS)
def test_redact_hides_the_password_whatever_it_holds(name, monkeypatch):
    monkeypatch.setattr(urls, "_SECRETS", set())  # the structural rules alone, nothing remembered
    pw = PASSWORDS[name]
    shapes = [f"postgresql://u:{pw}@127.0.0.1:5432/db", f"http://alice:{pw}@127.0.0.1:5000/x",
              f"postgresql+psycopg2://u:{pw}@db.internal/optuna?sslmode=require", f"postgresql:/u:{pw}@h/db",
              f"http://alice:{quote(pw, safe='')}@127.0.0.1:5000", f"mysql://u:{pw}@[::1]:3306/x"]  # fmt: skip
    for url in shapes:
        assert not leaks(redact(url), pw), (url, redact(url))
        for msg in (f"error: --storage '{url}': refused", f"error: --storage {url!r}: refused",
                    f'API request to {url} failed; see "https://docs.example/x"', f"{url} and {url}"):
            assert not leaks(redact_text(msg), pw), (msg, redact_text(msg))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    (tmp_path / "spec.yaml").write_text(SPEC)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PPO_HARNESS_CACHE", str(tmp_path / "cache"))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", PASSWORDS)
def test_the_cli_never_prints_a_password(name, sandbox, capsys):
    pw, spec, dead = PASSWORDS[name], str(sandbox / "spec.yaml"), closed_port()
    enc = quote(pw, safe="")
    cases = [  # (argv, exit code)
        (["train", "--tracking-uri", f"http://alice:{pw}@127.0.0.1:{dead}"], 2),
        (["train", "--tracking-uri", f"postgresql://u:{pw}@127.0.0.1:abc/db"], 2),
        (["train", "--tracking-uri", f"postgresql:/u:{pw}@127.0.0.1/db"], 2),
        (["report", "--experiment", "x", "--tracking-uri", f"http://:{pw}@127.0.0.1:{dead}"], 2),
        (["sweep", spec, "--storage", f"postgresql://u:{pw}@127.0.0.1:99999/db"], 2),
        (["sweep", spec, "--storage", f"postgresql:/postgres:{pw}@127.0.0.1/db", "--dry-run"], 2),
        (["sweep", spec, "--storage", f"mysql://u:{pw}@127.0.0.1/db"], 2),
        (["sweep", spec, "--storage", f"postgresql://u:{enc}@127.0.0.1:5432/db?sslpassword={enc}",
          "--tracking-uri", f"http://alice:{enc}@127.0.0.1:{dead}", "--dry-run"], 0),  # the plan is printed
        (["sweep", spec, "--storage", f"postgresql://u:{pw}@127.0.0.1:5432/db", "--tracking-uri",
          f"http://alice:{pw}@127.0.0.1:{dead}", "--dry-run"], None),  # raw '#', '/', '?' break the URL: 2
    ]
    for argv, want in cases:
        code, out, err = cli(argv, capsys)
        assert code == want or (want is None and code in (0, 2)), (argv, code, out, err)
        assert not leaks(out + err, pw), (argv, out, err)
        if code == 2:
            assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert list((sandbox / "cwd").iterdir()) == [] and list((sandbox / "home").iterdir()) == []
