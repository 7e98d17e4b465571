"""Run under torchrun (2 ranks, gloo): one PPO learning step over 2 ranks against one process on the same rollout.

Every rank samples the same rollout (same seed), then rows of the second half are cut to 1-2 tokens, so rank 1
holds far fewer tokens than rank 0 (uneven token counts: every global statistic is checked against them).
Rank 0 first runs the single-process step on the whole batch (fresh models), then both ranks run the step on
their own halves (rank r: rows r*B/2 .. (r+1)*B/2, trimmed to their own width). Rank 0 writes, per case, the
metrics of both, the flat gradients after clipping and the parameters after the step, as JSON to argv[1].
"""

from __future__ import annotations

import json
import sys

import torch

from harness import dist
from harness.config import load_config
from harness.lm.rollout import make_score_fn
from harness.ppo import loop

BASE = ["train.iterations=2", "rollout.batch_size=8", "rollout.group_size=2", "ppo.minibatches=1", "ppo.epochs=2",
        "eval.prompts=8", "task.response_length=6", "model.rm_pairs=64", "train.threads=1"]
CASES = {
    "token-gae-whiten": [],
    "token-fp-shared-trunk": ["model.value_trunk=shared", "loss.agg=seq-mean-token-sum"],
    "token-micro": ["ppo.micro_batch_size=2", "kl.placement=loss", "kl.estimator=k3"],
    "seq-rloo": ["advantage.level=sequence", "advantage.baseline=rloo", "loss.agg=seq-mean-token-mean"],
    "seq-batch-mean-whiten": ["advantage.level=sequence", "advantage.baseline=batch_mean", "advantage.whiten=true"],
    "seq-reinforce-pp": ["advantage.level=sequence", "advantage.baseline=reinforce_pp", "loss.agg=token-sum",
                         "kl.target=0.5"],
    "token-probe": ["probe.every=1", "probe.microbatches=2"],
    # train.parallel=fsdp: the ranks' models sharded (FSDP2), against the same one process (whole models)
    "fsdp-token-gae-whiten": ["train.parallel=fsdp"],
    "fsdp-token-micro": ["train.parallel=fsdp", "ppo.micro_batch_size=2", "kl.placement=loss", "kl.estimator=k3"],
    "fsdp-seq-rloo": ["train.parallel=fsdp", "advantage.level=sequence", "advantage.baseline=rloo",
                      "loss.agg=seq-mean-token-mean"],
}


def models_for(cfg):
    from harness.warmstart.load import load_models

    return load_models(cfg)


@torch.inference_mode()
def uneven(ro):
    """Rows of the second half cut to 1 or 2 response tokens (everything after them zero)."""
    B = ro.size
    for b in range(B // 2, B):
        keep = 1 + b % 2
        ro.mask[b, keep:] = 0
        for t in (ro.logprobs, ro.entropy, ro.ref_logprobs, ro.values):
            if t is not None:
                t[b, keep:] = 0
        ro.response_ids[b, keep:] = 0
    return ro


def own(ro, w):
    """This rank's rows, trimmed to their own width."""
    n = ro.size // w.size
    part = ro.select(torch.arange(w.rank * n, (w.rank + 1) * n))
    width = int(part.mask.sum(1).max())
    for name in ("response_ids", "mask", "logprobs", "entropy", "ref_logprobs", "values"):
        if getattr(part, name) is not None:
            setattr(part, name, getattr(part, name)[:, :width].contiguous())
    return part


def whole(t):
    """A sharded (FSDP) tensor gathered whole on every rank; a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def step(cfg, ro, w, split=None):
    """The learning step (``loop.learn``) on fresh models; its metrics, clipped gradients and parameters."""
    models = models_for(cfg)
    st = loop.init_state(cfg, models, w)
    st.iteration = 1
    metrics = loop.learn(cfg, models, st, ro)
    out = {"metrics": {k: v for k, v in metrics.items() if not k.startswith("perf/")},
           "grads": torch.cat([whole(g).reshape(-1) for g in st.params.grads()]).tolist(),
           "params": torch.cat([whole(p.detach()).reshape(-1) for p in st.params.flat]).tolist()}
    if cfg.train.parallel == "fsdp":  # the share of the trainable weights this rank holds
        local = sum(p.to_local().numel() for p in st.params.flat)
        out["held"] = local / sum(p.numel() for p in st.params.flat)
    if split is not None:  # the single-process probe on the ranks' split of the same batch
        kl, batch, _ = loop._advantages(cfg, ro, cfg.kl.coef)
        fresh = models_for(cfg)
        st2 = loop.init_state(cfg, fresh, dist.World())
        st2.iteration = 1
        out["probe_split"] = loop._probe(cfg, fresh, st2, loop._mask_truncated(cfg, batch), split=split)
    st.close()
    return out


def main() -> None:
    torch.set_num_threads(1)
    w = dist.init("cpu", 60)
    results = {}
    for name, extra in CASES.items():
        cfg = load_config(None, BASE + extra)
        one = load_config(None, BASE + [e for e in extra if e != "train.parallel=fsdp"])  # one process: whole models
        models = models_for(one)
        st = loop.init_state(one, models, dist.World())
        ro, _ = loop._rollout(one, models, st, make_score_fn(models.reward, models.task.gold), None)
        ro = uneven(ro)
        single = None
        if w.main:
            split = torch.arange(ro.size).view(w.size, -1) if cfg.probe.every else None
            single = step(one, ro.select(torch.arange(ro.size)), dist.World(), split)
        torch.distributed.barrier()
        ranks = step(cfg, own(ro, w), w)
        if w.main:
            results[name] = {"single": single, "ranks": ranks,
                             "tokens": [float(ro.mask[: ro.size // 2].sum()), float(ro.mask[ro.size // 2 :].sum())]}
    if w.main:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)
    dist.close()


if __name__ == "__main__":
    main()
