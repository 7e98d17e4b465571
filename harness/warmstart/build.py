"""``ppo-harness tasks build``: rebuild the shipped artifacts of the built-in tasks with the project's own code.

Each task's default SFT policy and proxy RM are built from scratch in a temporary cache (never
from an existing one), copied into ``harness/shipped/`` replacing the previous files, and the
manifest is rewritten with the recipe, the builder's package versions and every file's SHA-256.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.config import build_config
from harness.models.presets import PRESETS
from harness.tasks import builtin_tasks, get_task
from harness.warmstart import artifacts
from harness.warmstart.cache import CACHE_VERSION, build_reward_model, build_sft, rm_parts, sft_parts
from harness.warmstart.cache import cache_key as _key
from harness.warmstart.reward_model import RM_RECIPE
from harness.warmstart.sft import SFT_RECIPE


def build_shipped(
    tasks: Sequence[str] | None = None, root: Path | None = None, progress: Callable[[str], None] | None = None
) -> Path:
    """Rebuild ``tasks`` (default: every built-in task) into ``root``; returns the manifest's path."""
    names = list(tasks or builtin_tasks())
    root = root or artifacts.ROOT
    old = artifacts.read_manifest(root) if (root / artifacts.MANIFEST).is_file() else None
    entries = {k: v for k, v in (old or {}).get("artifacts", {}).items() if k.split("/")[0] not in names}
    root.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("PPO_HARNESS_CACHE")
    with tempfile.TemporaryDirectory(prefix="ppo-harness-build-") as tmp:
        os.environ["PPO_HARNESS_CACHE"] = tmp
        try:
            for name in names:
                cfg, task = build_config(None, {"task.name": name}), get_task(name)
                if progress:
                    progress(f"{name}: SFT policy")
                sft_dir = build_sft(cfg, task, progress, use_shipped=False)
                sp = sft_parts(cfg, task)
                entries[f"{name}/sft"] = artifacts.write_artifact(name, "sft", _key(sp), sp, sft_dir, root)
                if progress:
                    progress(f"{name}: proxy reward model")
                rm_dir = build_reward_model(cfg, task, sft_dir, progress, use_shipped=False)
                rp = rm_parts(cfg, task)
                entries[f"{name}/rm"] = artifacts.write_artifact(name, "rm", _key(rp), rp, rm_dir, root)
        finally:
            if saved is None:
                os.environ.pop("PPO_HARNESS_CACHE", None)
            else:
                os.environ["PPO_HARNESS_CACHE"] = saved
    recipe = {"cache_version": CACHE_VERSION, "presets": PRESETS, "sft": SFT_RECIPE, "rm": RM_RECIPE}
    return artifacts.write_manifest(entries, recipe, root)
