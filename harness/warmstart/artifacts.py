"""The shipped task artifacts: the canonical SFT policy and proxy reward model of each built-in task.

Kernels differ between machines (oneDNN vs MKL, AVX2 vs AVX-512, thread counts), so models built
locally differ too, and so would every number measured on them. The default SFT policy and
proxy RM of each built-in task therefore ship with the package under ``harness/shipped/``:

    shipped/manifest.json              version, recipe keys, builder's package versions, SHA-256 per file
    shipped/<task>/sft/{policy,tokenizer}/...
    shipped/<task>/rm/rm/...

A build is identified by the cache key of what made it (``harness.warmstart.cache.sft_parts`` /
``rm_parts``: preset, recipe, corpus, pairs, label noise, response length). When a run's key
equals a shipped one, the shipped files are used, after their checksums are verified (a
corrupted or edited file is refused with one line naming it); any other key (another
``model.rm_pairs``, ``model.rm_label_noise``, preset or a Hugging Face model) is built locally
and cached as before, and tagged as a local build. ``ppo-harness tasks build`` regenerates the
shipped files with the project's own code (replacing them, so history holds one copy per
release), ``ppo-harness tasks verify`` checks an installation.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.schema import Tag, artifact_tags

# PPO_HARNESS_SHIPPED points at another shipped tree (tests of a corrupted copy; a lab's own release)
ROOT = Path(os.environ.get("PPO_HARNESS_SHIPPED") or Path(__file__).resolve().parents[1] / "shipped")
MANIFEST = "manifest.json"
VERSION = "1"  # bump when the shipped artifacts are rebuilt with a different recipe


class ArtifactError(InputError):
    """A shipped artifact is missing or does not match its manifest; one line naming the file."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(root: Path | None = None) -> dict[str, Any] | None:
    """The manifest, or None when nothing is shipped (a source tree before ``tasks build``)."""
    path = (root or ROOT) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"shipped artifact '{path}': unreadable manifest ({e})") from None


def _entry(task: str, kind: str, root: Path | None) -> dict[str, Any] | None:
    m = read_manifest(root)
    return None if m is None else m.get("artifacts", {}).get(f"{task}/{kind}")


def verify_entry(entry: dict[str, Any], root: Path | None = None) -> None:
    """Every file of one artifact exists and has its manifest checksum; ArtifactError naming the first that does not."""
    root = root or ROOT
    for rel, want in sorted(entry["files"].items()):
        path = root / rel
        if not path.is_file():
            raise ArtifactError(f"shipped artifact '{path}': missing")
        if sha256(path) != want:
            raise ArtifactError(f"shipped artifact '{path}': checksum mismatch (corrupted or edited; "
                                "reinstall, or rebuild with `ppo-harness tasks build`)")  # fmt: skip


@functools.cache
def _verified(task: str, kind: str, key: str, root: Path, stamp: float) -> Path | None:
    entry = _entry(task, kind, root)
    if entry is None or entry["key"] != key:
        return None
    verify_entry(entry, root)
    return root / entry["dir"]


def shipped(task: str, kind: str, key: str, root: Path | None = None) -> Path | None:
    """The verified shipped directory of ``kind`` ("sft" | "rm") for ``task`` when its key is ``key``, else None."""
    root = root or ROOT
    path = root / MANIFEST
    stamp = path.stat().st_mtime_ns if path.is_file() else 0.0
    return _verified(task, kind, key, root, stamp)


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def weights_digest(directory: Path, patterns: tuple[str, ...] = WEIGHT_FILES) -> str:
    """A model folder's content hash (16 hex digits) over its weight files, "none" when it has none."""
    weights = sorted({w for pat in patterns for w in directory.rglob(pat) if w.is_file()})
    return hashlib.sha256("".join(sha256(w) for w in weights).encode()).hexdigest()[:16] if weights else "none"


def provenance(task: str, kind: str, directory: Path, root: Path | None = None) -> dict[str, str]:
    """MLflow tags naming what one artifact is: shipped (version + checksum) or a local build (its checksum)."""
    root = root or ROOT
    digest = weights_digest(directory, ("model.safetensors",))
    is_shipped = directory.resolve().is_relative_to(root.resolve())
    source_tag, checksum_tag = artifact_tags(kind)
    tags = {source_tag: "shipped" if is_shipped else "local build", checksum_tag: digest}
    if is_shipped:
        tags[Tag.ARTIFACTS_VERSION] = str((read_manifest(root) or {}).get("version", "?"))
    return tags


def verify_all(root: Path | None = None) -> list[tuple[str, str]]:
    """(artifact, 'ok' or the problem) for every manifest entry; plus stray files not in the manifest."""
    root = root or ROOT
    m = read_manifest(root)
    if m is None:
        return [("manifest", f"no {root / MANIFEST}")]
    out = []
    listed: set[str] = set()
    for name, entry in sorted(m.get("artifacts", {}).items()):
        listed |= set(entry["files"])
        try:
            verify_entry(entry, root)
            out.append((name, "ok"))
        except ArtifactError as e:
            out.append((name, str(e)))
    stray = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST
                   and str(p.relative_to(root)) not in listed)  # fmt: skip
    out += [(s, "not in the manifest") for s in stray]
    return out


def write_artifact(task: str, kind: str, key: str, parts: dict, built: Path, root: Path | None = None) -> dict[str, Any]:
    """Copy a built directory into the shipped tree (replacing what was there) and return its manifest entry."""
    root = root or ROOT
    rel_dir = f"{task}/{kind}"
    dest = root / rel_dir
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(built, dest, ignore=shutil.ignore_patterns("*.lock"))
    files = {str(p.relative_to(root)): sha256(p) for p in sorted(dest.rglob("*")) if p.is_file()}
    return {"dir": rel_dir, "key": key, "parts": json.loads(json.dumps(parts, default=str)), "files": files}


def write_manifest(entries: dict[str, dict[str, Any]], recipe: dict[str, Any], root: Path | None = None) -> Path:
    import platform

    import torch
    import transformers

    root = root or ROOT

    manifest = {
        "version": VERSION,
        "recipe": recipe,
        "built_with": {"torch": torch.__version__, "transformers": transformers.__version__,
                       "python": platform.python_version(), "machine": platform.machine()},  # fmt: skip
        "artifacts": entries,
    }
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _verified.cache_clear()
    return path
