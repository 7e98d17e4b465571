"""Tokenizer, tiny LMs, SFT warm start, proxy reward model, value model; cached on disk.

The pipeline is the real one at toy scale: SFT on the task corpus -> sample
preference pairs from the SFT policy -> label them with the gold reward (with
label noise) -> Bradley-Terry reward model (Gao et al. 2022's gold/proxy setup)
-> PPO. Everything built is cached under a key hashing what made it.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness import artifacts
from harness.config import RunConfig
from harness.ppo import rollout as R
from harness.tasks import Task, get_task


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


_quiet_transformers()

CACHE_VERSION = 4  # bump when the build recipe changes (4: the RM key names its SFT by key, not by folder)

# Built-in presets: GPT-2 architecture, dropout off (N implementation details: no dropout in RL).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_embd=128, n_head=4),
    "small": dict(n_layer=4, n_embd=256, n_head=4),
}
SFT_RECIPE = dict(steps=600, batch=64, lr=3e-3, warmup=30)  # tiny: ~20 s on 2 cores
RM_RECIPE = dict(epochs=3, batch=64, lr=1e-3)


class ModelError(ValueError):
    """A model that cannot be built or loaded; one line naming the key or path."""


def cache_root() -> Path:
    return Path(os.environ.get("PPO_HARNESS_CACHE", Path.home() / ".cache" / "ppo-harness"))


@dataclass
class Models:
    task: Task
    tokenizer: Any
    policy: nn.Module  # trainable, initialised from SFT
    ref: nn.Module  # frozen SFT copy
    reward: nn.Module | None  # frozen proxy reward model (None when optimising gold)
    value: nn.Module | None  # trainable value model (sequence classifier, per-token head use)
    source: str  # where the weights came from (cache dir or HF name)
    provenance: dict[str, str] | None = None  # MLflow tags: shipped or local build, version, checksums


class SharedTrunkValue(nn.Module):
    """V(s) as a scalar head on the policy's own trunk (``model.value_trunk=shared``).

    Looks like a sequence-classification model to the rollout (``config``, the trunk under
    ``base_model_prefix``, ``score``), so values are read the same way; the PPO update reads
    them off the policy's forward instead (``rollout.policy_forward(value_head=...)``).
    ``head_parameters`` are its own; the trunk's belong to the policy.
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.config = policy.config
        self.base_model_prefix = policy.base_model_prefix
        setattr(self, policy.base_model_prefix, getattr(policy, policy.base_model_prefix))
        self.score = nn.Linear(policy.config.hidden_size, 1, bias=False)
        nn.init.zeros_(self.score.weight)  # V = 0 at the start: no signal from an untrained head

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.score.parameters())


# ---- tokenizer ----------------------------------------------------------------------------------

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def build_tokenizer(words: list[str]):
    """Word-level tokenizer over the task's words, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )


# ---- building blocks ---------------------------------------------------------------------------


def gpt2_config(arch: dict[str, int], tokenizer):
    """A GPT-2 config for ``tokenizer`` with dropout off; ``arch`` gives n_layer, n_embd, n_head, n_positions."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tokenizer),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        activation_function="gelu_new",
        **arch,
    )


def no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def _encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention, loss_mask) right-padded; the loss covers completion + EOS."""
    rows, masks = [], []
    for p, c in pairs:
        pi = tokenizer.encode(p, add_special_tokens=False)
        ci = tokenizer.encode(c, add_special_tokens=False) + [tokenizer.eos_token_id]
        rows.append(pi + ci)
        masks.append([0] * len(pi) + [1] * len(ci))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    lm = torch.zeros_like(ids)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        lm[i, : len(m)] = torch.tensor(m)
    return ids, attn, lm


def sft(model: nn.Module, tokenizer, corpus: tuple[tuple[str, str], ...], seed: int, progress=None) -> dict:
    """Supervised warm start on (prompt, completion) pairs; loss on completion tokens only."""
    g = torch.Generator().manual_seed(seed)
    ids, attn, lm = _encode_pairs(tokenizer, list(corpus))
    steps, bs, lr, warm = SFT_RECIPE["steps"], SFT_RECIPE["batch"], SFT_RECIPE["lr"], SFT_RECIPE["warmup"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - s / steps))
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, ids.shape[0], (bs,), generator=g)
        x, a, m = ids[idx], attn[idx], lm[idx]
        logits = model(input_ids=x, attention_mask=a, use_cache=False).logits[:, :-1]  # (b, L-1, V)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
        mm = m[:, 1:].reshape(-1).float()
        loss = (nll * mm).sum() / mm.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress:
            progress(f"SFT step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    return {"sft_loss": sum(losses[-50:]) / 50}


def preference_pairs(policy, tokenizer, task: Task, n_pairs: int, response_length: int, noise: float, seed: int):
    """Two SFT samples per prompt, labelled by the gold reward; ties dropped, labels flipped w.p. noise."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    chosen, rejected = [], []
    while len(chosen) < n_pairs:
        prompts = [rng.choice(task.train_prompts) for _ in range(256)]
        batch = [p for p in prompts for _ in range(2)]
        pids, pmask = R.encode_prompts(tokenizer, batch)
        rids, mask, has_eos, _, _ = R.sample(
            policy, pids, pmask, response_length, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id, g
        )
        texts = R.decode(tokenizer, rids, mask, tokenizer.eos_token_id)
        gold = task.gold(batch, texts, has_eos.tolist())
        for i in range(0, len(batch), 2):
            # a response that never stops is worse than any that does (the harness penalises it too)
            ga = gold[i] if bool(has_eos[i]) else task.gold_range[0] - 1
            gb = gold[i + 1] if bool(has_eos[i + 1]) else task.gold_range[0] - 1
            if ga == gb:
                continue
            win, lose = (i, i + 1) if ga > gb else (i + 1, i)
            if rng.random() < noise:
                win, lose = lose, win
            chosen.append((batch[win], rids[win], mask[win]))
            rejected.append((batch[lose], rids[lose], mask[lose]))
    return chosen[:n_pairs], rejected[:n_pairs]


def _stack(tokenizer, items):
    prompts = [p for p, _, _ in items]
    pids, pmask = R.encode_prompts(tokenizer, prompts)
    rids = torch.stack([r for _, r, _ in items])
    mask = torch.stack([m for _, _, m in items])
    return pids, pmask, rids, mask


def train_reward_model(rm: nn.Module, tokenizer, chosen, rejected, seed: int, progress=None) -> dict:
    """Bradley-Terry: -log sigmoid(r(chosen) - r(rejected)); then normalise scores on SFT samples."""
    g = torch.Generator().manual_seed(seed)
    n = len(chosen)
    n_val = max(16, n // 10)
    perm = torch.randperm(n, generator=g).tolist()
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    opt = torch.optim.AdamW(rm.parameters(), lr=RM_RECIPE["lr"], weight_decay=0.01)
    bs = RM_RECIPE["batch"]
    rm.train()
    for epoch in range(RM_RECIPE["epochs"]):
        order = [tr_idx[i] for i in torch.randperm(len(tr_idx), generator=g).tolist()]
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            rc = R.sequence_scores(rm, *_stack(tokenizer, [chosen[i] for i in idx]))
            rr = R.sequence_scores(rm, *_stack(tokenizer, [rejected[i] for i in idx]))
            loss = -F.logsigmoid(rc - rr).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
            opt.step()
            if progress:
                progress(f"reward model epoch {epoch + 1}/{RM_RECIPE['epochs']} loss {loss.item():.3f}")
    rm.eval()
    with torch.no_grad():
        rc = R.sequence_scores(rm, *_stack(tokenizer, [chosen[i] for i in val_idx]))
        rr = R.sequence_scores(rm, *_stack(tokenizer, [rejected[i] for i in val_idx]))
        acc = (rc > rr).float().mean().item()
        # N implementation details: normalise the RM so SFT samples score mean 0, std 1
        both = torch.cat([rc, rr])
        mean, std = both.mean(), both.std().clamp(min=1e-6)
        head = nn.Linear(rm.score.in_features, 1, bias=True)
        head.weight.copy_(rm.score.weight / std)
        head.bias.fill_(float(-mean / std))
        rm.score = head
    return {"rm_val_accuracy": acc, "rm_raw_mean": float(mean), "rm_raw_std": float(std)}


# ---- save / load -------------------------------------------------------------------------------


def _save_classifier(model: nn.Module, path: Path) -> None:
    model.save_pretrained(path)
    torch.save(model.score.state_dict(), path / "score_head.pt")


def _load_classifier(path: Path) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    head_file = path / "score_head.pt"
    if head_file.exists():
        state = torch.load(head_file, map_location="cpu")
        head = nn.Linear(state["weight"].shape[1], 1, bias="bias" in state)
        head.load_state_dict(state)
        model.score = head
    return no_dropout(model).eval()


@contextlib.contextmanager
def _locked(path: Path):
    """An inter-process lock so concurrent sweep workers build a model once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_preset(name: str) -> bool:
    return name in PRESETS


def _response_length(cfg: RunConfig, task: Task) -> int:
    return cfg.task.response_length or task.response_length


def _cached(out: Path, parts: dict, build) -> Path:
    """Build into ``out`` once: a lock across processes, a temp dir, an atomic rename.

    ``build(tmp)`` writes the artifacts into ``tmp`` and returns stats for done.json.
    """
    if (out / "done.json").exists():
        return out
    with _locked(out.with_suffix(".lock")):
        if (out / "done.json").exists():
            return out
        t0 = time.time()
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        stats = build(tmp)
        (tmp / "done.json").write_text(json.dumps({"key": _key(parts), **parts, **stats, "build_s": time.time() - t0},
                                                  default=str))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def sft_parts(cfg: RunConfig, task: Task) -> dict[str, Any]:
    """What makes the SFT policy of a run: its cache key (and the shipped artifact's) hashes this."""
    name = cfg.model.policy
    return {"v": CACHE_VERSION, "task": task.name, "policy": name, "sft": SFT_RECIPE,
            "preset": PRESETS.get(name), "corpus": _key({"sft": task.sft_corpus, "vocab": task.words()})}


def rm_parts(cfg: RunConfig, task: Task) -> dict[str, Any]:
    """What makes the proxy RM of a run: its SFT policy's key, the pairs, label noise, length and recipe."""
    return {"v": CACHE_VERSION, "sft": _key(sft_parts(cfg, task)), "pairs": cfg.model.rm_pairs,
            "noise": cfg.model.rm_label_noise, "len": _response_length(cfg, task), "rm": RM_RECIPE}


def build_sft(cfg: RunConfig, task: Task, progress=None, use_shipped: bool = True) -> Path:
    """Tokenizer + SFT policy for (task, policy): shipped (verified), or built and cached; returns the directory."""
    name = cfg.model.policy
    parts = sft_parts(cfg, task)
    if use_shipped and (found := artifacts.shipped(task.name, "sft", _key(parts))) is not None:
        return found

    def build(tmp: Path) -> dict:
        torch.manual_seed(0)
        if _is_preset(name):
            tokenizer = build_tokenizer(task.words())
            from transformers import GPT2LMHeadModel

            n_pos = 32 + _max_prompt_tokens(tokenizer, task) + max(64, task.response_length)
            model = GPT2LMHeadModel(gpt2_config({**PRESETS[name], "n_positions": n_pos}, tokenizer))
        else:
            tokenizer, model = load_pretrained_lm(name)
        stats = sft(no_dropout(model), tokenizer, task.sft_corpus, seed=0, progress=progress)
        model.save_pretrained(tmp / "policy")
        tokenizer.save_pretrained(tmp / "tokenizer")
        return stats

    return _cached(cache_root() / task.name / f"sft-{_safe(name)}-{_key(parts)}", parts, build)


def build_reward_model(cfg: RunConfig, task: Task, sft_dir: Path, progress=None, use_shipped: bool = True) -> Path:
    """Proxy RM trained on gold-labelled SFT preference pairs: shipped (verified), or built and cached."""
    parts = rm_parts(cfg, task)
    if use_shipped and (found := artifacts.shipped(task.name, "rm", _key(parts))) is not None:
        return found

    def build(tmp: Path) -> dict:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(sft_dir / "tokenizer")
        policy = _load_lm(sft_dir / "policy")
        chosen, rejected = preference_pairs(
            policy, tokenizer, task, cfg.model.rm_pairs, _response_length(cfg, task), cfg.model.rm_label_noise, seed=0
        )
        torch.manual_seed(0)
        rm = AutoModelForSequenceClassification.from_pretrained(sft_dir / "policy", num_labels=1)
        rm.config.pad_token_id = tokenizer.pad_token_id
        stats = train_reward_model(no_dropout(rm), tokenizer, chosen, rejected, seed=0, progress=progress)
        _save_classifier(rm, tmp / "rm")
        return stats

    return _cached(cache_root() / task.name / f"rm-{_key(parts)}", parts, build)


def _max_prompt_tokens(tokenizer, task: Task) -> int:
    return max(len(tokenizer.encode(p, add_special_tokens=False)) for p in task.train_prompts + task.eval_prompts)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-40:]


def _load_lm(path: Path) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return no_dropout(AutoModelForCausalLM.from_pretrained(path)).eval()


def load_pretrained_lm(name: str):
    """A Hugging Face causal LM + tokenizer by name or path; one-line error when unavailable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name)
    except Exception as e:  # offline, missing path, wrong format
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model.policy '{name}': cannot load ({first[:160]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer, model


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or Path(name).exists()


def validate_model_keys(cfg: RunConfig) -> None:
    """Cheap checks before anything is logged: model.policy / model.reward exist.

    A local path must exist; ``org/name`` is taken as a Hugging Face hub id and is
    resolved when the models load.
    """
    p = cfg.model.policy
    if not _is_preset(p) and _looks_local(p) and not Path(p).expanduser().exists():
        raise ModelError(f"model.policy '{p}': not a built-in preset ({', '.join(PRESETS)}) nor an existing path")
    r = cfg.model.reward
    if r not in ("learned", "gold") and _looks_local(r) and not Path(r).expanduser().exists():
        raise ModelError(f"model.reward '{r}': not 'learned', 'gold' or an existing model path")
    # shipped artifacts this run would use are verified now, before anything is logged
    task = get_task(cfg.task.name)
    try:
        artifacts.shipped(task.name, "sft", _key(sft_parts(cfg, task)))
        if r == "learned":
            artifacts.shipped(task.name, "rm", _key(rm_parts(cfg, task)))
    except artifacts.ArtifactError as e:
        raise ModelError(str(e)) from None


def load_models(cfg: RunConfig, progress=None) -> Models:
    """Everything one run needs, built or loaded from the cache."""
    validate_model_keys(cfg)
    task = get_task(cfg.task.name)
    sft_dir = build_sft(cfg, task, progress)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sft_dir / "tokenizer")
    tokenizer.padding_side = "left"
    policy = _load_lm(sft_dir / "policy")
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    reward: nn.Module | None
    if cfg.model.reward == "gold":
        reward = None
    elif cfg.model.reward == "learned":
        rm_dir = build_reward_model(cfg, task, sft_dir, progress)
        reward = _load_classifier(rm_dir / "rm")
    else:
        try:
            reward = _load_classifier(Path(cfg.model.reward))
        except Exception as e:
            raise ModelError(f"model.reward '{cfg.model.reward}': cannot load ({str(e).splitlines()[0][:160]})") from None
    if reward is not None:
        reward.requires_grad_(False)
    value = None
    needs_value = cfg.advantage.level == "token" or cfg.advantage.baseline == "value"
    if needs_value and cfg.model.value_trunk == "shared":
        value = SharedTrunkValue(policy)
    elif needs_value:
        if cfg.model.value_init == "reward" and reward is not None:
            value = copy.deepcopy(reward)
        else:
            from transformers import AutoModelForSequenceClassification

            value = AutoModelForSequenceClassification.from_pretrained(sft_dir / "policy", num_labels=1)
            value = no_dropout(value)
            nn.init.zeros_(value.score.weight)
        value.requires_grad_(True)
        value.train()
    policy.train()
    tags = artifacts.provenance(task.name, "sft", sft_dir)
    if cfg.model.reward == "learned":
        tags.update(artifacts.provenance(task.name, "rm", rm_dir))
    return Models(task=task, tokenizer=tokenizer, policy=policy, ref=ref, reward=reward, value=value,
                  source=str(sft_dir), provenance=tags)
