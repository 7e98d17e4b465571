"""``python -m harness``: the ``ppo-harness`` command (what ``torchrun ... -m harness train ...`` runs)."""

from harness.cli import main

main()
