"""The trained policy as a Hugging Face model folder: ``save_pretrained``, its tokenizer, a model card.

``save_run_policy`` is the end of a run with ``train.save_policy`` (into ``<runs-dir>/policies/<run id>/``,
and the MLflow artifact folder ``policy/`` with ``train.log_model``); ``export_run`` is
``ppo-harness export RUN_ID DIR``: that saved folder copied, or else the policy of the run's newest
checkpoint (``train.checkpoint_every``) rebuilt and saved. Either loads with
``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)``.
"""

from __future__ import annotations

import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from harness import checkpoint
from harness.config import RunConfig, load_config
from harness.errors import InputError

__all__ = ["ExportError", "export_run", "finish_run", "model_card", "policy_folder", "save_policy", "save_run_policy"]


class ExportError(InputError):
    """A run that cannot be exported (one line naming the run id or the folder)."""


def policy_folder(runs_dir: str | Path, run_id: str) -> Path:
    """Where ``train.save_policy`` puts a run's policy: ``<runs-dir>/policies/<run id>``."""
    return Path(runs_dir) / "policies" / run_id


def harness_version() -> str:
    try:
        return version("ppo-harness")
    except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
        return "unknown"


def model_card(cfg: RunConfig, run_id: str, final: dict[str, float], iteration: int | None = None) -> str:
    """README.md of an exported policy: what trained it (config, seed, harness version, run id), how it scored."""
    evals = {k: v for k, v in sorted(final.items()) if k.startswith("eval/")}
    lines = [
        "---", "library_name: transformers", "tags: [ppo-harness, rlhf, ppo]", "---", "",
        f"# Policy of run {run_id}", "",
        f"Trained by ppo-harness {harness_version()} (impl {cfg.impl}, task {cfg.task.prompts or cfg.task.name}, "
        f"seed {cfg.seed}) from `{cfg.model.policy}`.", "",
        f"- MLflow run id: `{run_id}`",
        f"- iterations: {iteration if iteration is not None else cfg.train.iterations} of {cfg.train.iterations}",
        f"- seed: {cfg.seed}", "",
        "## Final evaluation", "",
    ]
    lines += [f"- {k}: {v:.6g}" for k, v in evals.items()] or ["- (none logged)"]
    lines += ["", "## Config", "", "```yaml", cfg.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)


def save_policy(policy: Any, tokenizer: Any, folder: Path, card: str) -> Path:
    """``policy.save_pretrained`` + ``tokenizer.save_pretrained`` + README.md into ``folder`` (written
    beside it, then renamed: a kill leaves no half folder)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = policy
    if hasattr(policy, "merge_and_unload"):  # a PEFT (LoRA) policy: exported with its adapters merged in
        import copy

        model = copy.deepcopy(policy).merge_and_unload()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(card)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def save_run_policy(cfg: RunConfig, models: Any, logger: Any, final: dict[str, float]) -> Path:
    """End of a run with ``train.save_policy``: the policy into ``<runs-dir>/policies/<run id>/`` (and the
    artifact folder ``policy/`` when ``train.log_model``)."""
    folder = save_policy(models.policy, models.tokenizer, policy_folder(logger.store.runs_dir, logger.run_id),
                         model_card(cfg, logger.run_id, final))
    if cfg.train.log_model:
        logger.log_folder(folder, "policy")
    return folder


def finish_run(cfg: RunConfig, models: Any, logger: Any, result: Any) -> Any:
    """The end of every implementation's run: the policy saved when ``train.save_policy``; ``result`` back."""
    if cfg.train.save_policy:
        save_run_policy(cfg, models, logger, result.final)
    return result


def export_run(store: Any, run_id: str, dest: Path) -> Path:
    """``ppo-harness export``: the run's saved policy, else its newest checkpoint's, as a model folder at ``dest``."""
    saved = policy_folder(store.runs_dir, run_id)
    if saved.is_dir():
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(saved, dest)
        return dest
    ckpt = checkpoint.latest(checkpoint.run_folder(store.runs_dir, run_id))
    if ckpt is None:
        raise ExportError(
            f"run '{run_id}': no saved policy and no checkpoint under {store.runs_dir} "
            "(train it with train.save_policy=true or train.checkpoint_every > 0)"
        )
    from harness.warmstart.load import load_models

    cfg = load_config(ckpt / "config.yaml")
    models = load_models(cfg)
    checkpoint.load_policy(models.policy, ckpt)
    summary = store.run_summary(run_id)
    final = dict(store.get_run(run_id).data.metrics) if summary is not None else {}
    iteration = int(ckpt.name.split("-")[-1])
    return save_policy(models.policy, models.tokenizer, dest, model_card(cfg, run_id, final, iteration))
