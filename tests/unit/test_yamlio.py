"""harness.yamlio: the one strict YAML loader. Each refusal is one line naming the file and the key
or line; what ``yaml.safe_load`` read right is read the same."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from harness import yamlio
from harness.yamlio import MAX_BYTES, MAX_DEPTH, MAX_NODES, YAMLInputError, loads, read_yaml, show_key

ROOT = Path(__file__).resolve().parents[2]
# "billion laughs": 9 levels of 9 -> 387 million strings once anything walks it
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))


def refused(text: str | bytes, tmp_path) -> YAMLInputError:
    p = tmp_path / "in.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(YAMLInputError) as e:
        read_yaml(p)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{p}: ")
    return e.value


# ---- refusals -------------------------------------------------------------------------------------


def test_not_utf8_names_the_byte_and_its_offset(tmp_path):
    body = b"name: t\n# caf\xe9 in latin-1\n"
    e = refused(body, tmp_path)
    assert str(e) == f"{tmp_path / 'in.yaml'}: not UTF-8 text (byte 0xe9 at offset {body.index(0xE9)})"
    assert refused(b"\xff\xfea\x00:\x00", tmp_path).problem == "not UTF-8 text (byte 0xff at offset 0)"  # UTF-16


def test_a_duplicate_key_is_refused_with_its_dotted_path_and_line(tmp_path):
    e = refused("ppo:\n  lr: 0.1\nkl:\n  coef: 0.1\n  target: 1\n  horizon: 3\n  coef: 0.2\n", tmp_path)
    assert str(e) == f"{tmp_path / 'in.yaml'}: duplicate key 'kl.coef' (line 7)"
    assert (e.key, e.line) == ("kl.coef", 7)
    assert refused("kl.coef: 1\nkl.coef: 2\n", tmp_path).detail == "duplicate key 'kl.coef' (line 2)"
    e = refused("grid:\n  zip:\n    - {kl.coef: [1], kl.coef: [2]}\n", tmp_path)
    assert e.detail == "duplicate key 'grid.zip[0].kl.coef' (line 3)"
    assert refused("seeds: [0]\nname: a\nseeds: [1]\n", tmp_path).key == "seeds"


def test_aliases_are_refused_before_anything_expands(tmp_path):
    e = refused("a: &x [1, 2]\nb: *x\n", tmp_path)
    assert e.detail == "YAML aliases (*x) are not supported (line 2)"
    e = refused(BOMB, tmp_path)  # refused at the first alias: nothing is built
    assert e.detail == "YAML aliases (*a) are not supported (line 2)"
    assert refused("a: {<<: {b: 1}, c: 2}\n", tmp_path).detail == "YAML merge keys (<<) are not supported (line 1)"


@pytest.mark.parametrize("text, tag", [("a: !!binary aGVsbG8=\n", "!!binary"), ("a: !!set {x, y}\n", "!!set"),
                                       ("a: !!timestamp 2024-01-01\n", "!!timestamp"), ("a: !foo 1\n", "!foo"),
                                       ("a: !!python/object:os.system x\n", "!!python/object:os.system")])
def test_tags_beyond_json_types_are_refused(text, tag, tmp_path):
    e = refused(text, tmp_path)
    assert e.detail == f"YAML tag {tag} is not supported (line 1)" and e.key == "a"


def test_size_nodes_and_depth_are_capped(tmp_path):
    e = refused("a: " + "x" * MAX_BYTES + "\n", tmp_path)
    assert e.problem.startswith(f"larger than {MAX_BYTES:,} bytes")
    e = refused("[" + "0," * MAX_NODES + "]\n", tmp_path)
    assert e.problem.startswith(f"more than {MAX_NODES:,} YAML nodes")
    e = refused("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n", tmp_path)
    assert e.problem == f"nested deeper than {MAX_DEPTH} levels"
    assert loads("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)) is not None  # deep enough is fine


def test_unparseable_yaml_keeps_the_parsers_words_and_line(tmp_path):
    e = refused("name: t\ngrid: [unclosed\n", tmp_path)
    assert e.yaml_error is not None and e.problem.startswith("not valid YAML: ") and e.line == 3
    assert refused("--- 1\n--- 2\n", tmp_path).problem.startswith("not valid YAML")  # one document
    assert refused("a: !!int abc\n", tmp_path).detail == "cannot read 'abc' as !!int (line 1)"
    assert refused("? [a, b]\n: 1\n", tmp_path).problem.startswith("a mapping key must be a plain value")


def test_unreadable_and_missing(tmp_path):
    with pytest.raises(YAMLInputError, match="no such file"):
        read_yaml(tmp_path / "absent.yaml")
    with pytest.raises(YAMLInputError, match="cannot read"):
        read_yaml(tmp_path)  # a folder


# ---- what is read -----------------------------------------------------------------------------------


def test_scalars_mean_what_a_person_reads():
    d = loads("a: 1e-4\nb: 2E+5\nc: '1e-4'\nd: 2024-01-01\ne: '2'\nf: 2\ng: 0.5\nh: yes\ni: null\nj: .inf\nk: =\n")
    assert d == {"a": 1e-4, "b": 2e5, "c": "1e-4", "d": "2024-01-01", "e": "2", "f": 2, "g": 0.5, "h": True,
                 "i": None, "j": float("inf"), "k": "="}
    assert loads("\ufeffa: 1\n") == {"a": 1}  # a UTF-8 byte-order mark is fine
    assert loads("") is None and loads("[1, 2]") == [1, 2]


@pytest.mark.parametrize("text, value", [
    ("010", 10), ("-010", -10), ("08", 8), ("0o17", 15), ("0x1f", 31), ("+5", 5), ("1.", 1.0), (".5", 0.5),
    ("1:20", "1:20"), ("1:20:30.5", "1:20:30.5"), ("1_000", "1_000"), ("0b11", "0b11"), ("1_0.5", "1_0.5"),
])  # fmt: skip
def test_numbers_follow_yaml_1_2(text, value):
    """YAML 1.1 read 010 as octal 8 and 1:20 as the base-60 number 80: a seed of 80 for '1:20'."""
    got = loads(text)
    assert got == value and type(got) is type(value)
    assert loads(f"[{text}]") == [value]


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x07", "\x1b", "\x7f"])
def test_a_control_character_is_one_line_with_its_offset_and_line(char, tmp_path):
    body = f"name: t\nbase:\n  task.name: a{char}b\n"
    e = refused(body, tmp_path)
    assert e.problem == f"control character U+{ord(char):04X} at offset {body.index(char)} (YAML text may not hold it)"
    assert e.line == 3
    with pytest.raises(YAMLInputError) as e2:
        loads(f"a{char}b", "--set task.name")
    assert str(e2.value).startswith("--set task.name: control character") and "\n" not in str(e2.value)


def test_a_null_key_is_refused_where_it_is(tmp_path):
    assert refused("ppo:\n  ~: 1\n", tmp_path).detail == "a key is null ('~') under 'ppo' (line 2)"
    assert refused("null: 1\n", tmp_path).detail == "a top-level key is null ('null') (line 1)"


def test_every_shipped_spec_reads_as_safe_load_reads_it():
    files = sorted((ROOT / "ablations").glob("*.yaml"))
    assert files
    for f in files:
        assert read_yaml(f) == yaml.safe_load(f.read_text()), f.name


def test_show_key_makes_odd_characters_visible():
    assert show_key("kl.coef") == "'kl.coef'" and show_key("kl.coef", quote=False) == "kl.coef"
    assert show_key("kl.coef\u200b") == "'kl.coef\\u200b'" == show_key("kl.coef\u200b", quote=False)
    assert show_key("kl.co\u0435f") == "'kl.co\\u0435f'"  # a Cyrillic e
    assert show_key("a b") == "'a b'" and show_key("a\tb") == "'a\\tb'" and show_key(1) == "1"


def test_layer_0_imports_only_yaml_the_standard_library_and_the_error_vocabulary():
    tree = ast.parse(Path(yamlio.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    harness = {m for m in names if m.split(".")[0] == "harness"}
    assert harness <= {"harness.errors"}, harness  # the bottom of the house, itself standard library only
    roots = {m.split(".")[0] for m in names - harness}
    assert roots <= {"__future__", "re", "pathlib", "typing", "yaml"}, roots
