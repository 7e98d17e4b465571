"""The one parser: usage errors are one line naming the option, exit 2; --help exits 0."""

import pytest

from harness.cli import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("argv, names", [
    (["train", "--seed", "1.5"], "'--seed'"),
    (["train", "--nope"], "--nope"),
    (["compare", "--seeds", "abc"], "'--seeds'"),
    (["ui", "--port", "abc"], "'--port'"),
    (["sweep"], "'spec'"),
    (["report", "--style"], "--style"),
    (["nosuchcommand"], "nosuchcommand"),
])
def test_a_usage_error_is_one_line_naming_the_option(argv, names, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], err
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("command", ["train", "sweep", "report", "reproduce", "compare", "bench", "ui", "tasks", "config"])
def test_every_command_has_help(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0 and "Usage: ppo-harness " + command in " ".join(out.split())
