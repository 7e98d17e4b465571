import os
import subprocess
import sys

import pytest

from harness.locks import locked


def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "x.lock"
    link.symlink_to(target)
    with pytest.raises(OSError):
        with locked(link):
            pass
    assert target.read_text() == "keep me"


def test_an_existing_lock_file_is_not_truncated_and_a_new_one_is_private(tmp_path):
    old = tmp_path / "old.lock"
    old.write_text("content")
    with locked(old):
        pass
    assert old.read_text() == "content"
    new = tmp_path / "sub" / "new.lock"
    with locked(new):
        pass
    assert (os.stat(new).st_mode & 0o777) == 0o600


def test_the_lock_excludes_another_process(tmp_path):
    path = tmp_path / "l.lock"
    probe = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")
    with locked(path):
        held = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True)
    free = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True)
    assert held.returncode != 0 and free.returncode == 0
