"""A Ctrl-C that was caught and handled keeps the exit code 130 under ``python -m`` (CPython's flag quirk)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

MODULE = """
import sys
sys.path.insert(0, {root!r})
from harness.sweep.faults import forget_handled_interrupt

def boom():
    raise KeyboardInterrupt

try:
    eval("boom()")  # as collections.namedtuple does during an import interrupted by Ctrl-C
except KeyboardInterrupt:
    pass
if {forget}:
    forget_handled_interrupt()
sys.exit(130)
"""


@pytest.mark.parametrize(("forget", "status"), [(False, -2), (True, 130)])
def test_a_handled_interrupt_keeps_the_exit_code_of_python_m(tmp_path, forget, status):
    root = str(Path(__file__).resolve().parents[3])
    (tmp_path / "interrupted_module.py").write_text(MODULE.format(root=root, forget=forget))
    out = subprocess.run([sys.executable, "-m", "interrupted_module"], cwd=tmp_path, capture_output=True, text=True)
    if not forget and out.returncode == 130:
        pytest.skip(f"this Python ({sys.version.split()[0]}) does not end by SIGINT after a handled interrupt")
    # without the reset CPython ends the process by SIGINT (-2) although sys.exit said 130
    assert out.returncode == status, out.stderr
