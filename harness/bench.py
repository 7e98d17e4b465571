"""``ppo-harness bench``: the custom PPO core against TRL's PPOTrainer on one synthetic workload.

Both implementations run the same equal-math PPO iteration (token level, separate
value / ref / reward models, k1 KL in the reward, advantage whitening, clipped
policy and value losses, no missing-EOS penalty, no gradient clipping) on the
same random-initialised GPT-2 models, each in its own fresh subprocess so that
peak RSS is per implementation. Warm-up iterations are excluded from every figure.

Workloads: S = GPT-2 2 layers x 64 wide x 2 heads; M = 4 x 256 x 4;
n_positions 128 for both; a character vocabulary (26 letters + pad, EOS, unk);
prompts of 16 tokens, responses of up to 32, a rollout batch of 32, 4 PPO
epochs x 4 minibatches, fp32, ``torch.set_num_threads(threads)``.

``--variant`` benchmarks a switch that changes the math (``VARIANTS``: a value head on
the policy's trunk, bf16 autocast) apart from the equal-math figure; the table and the
JSON say which variant ran. TRL keeps its own loop (bf16 where the variant has it).

FLOPs are counted analytically and identically for both sides: the useful work of
one iteration on the tokens that exist (the prompt and each response up to its EOS,
from that implementation's own mean response length l; padding and recomputation
not counted)::

    F_fwd(model, n_tokens) = 2 * N * n_tokens      N = matmul parameters: the
                                                   transformer blocks + the output head
                                                   (LM head V x d, or the 1 x d score head)
    generation   F_fwd(policy, B * (P + l - 1))    the KV cache feeds each token once
    scoring      F_fwd(ref | value | reward, B * (P + l)) each
    update       epochs * 3 * (F_fwd(policy) + F_fwd(value)) over B * (P + l)   (fwd + bwd = 3x;
                 no F_fwd(value) with a shared value trunk)

Embedding look-ups, attention scores (4 * n_layer * L * d per token: ~12% on S,
~3% on M), norms and the optimiser are not counted, so the achieved GFLOP/s is a
lower bound. The share of peak divides it by the best fp32 matmul rate on the same
threads, measured in the same run: the best of a few 2048^2 products through
PyTorch's own ``torch.matmul`` (MKL on x86) and through oneDNN (``gemm.linear``),
whichever kernel is faster on this processor.

TRL's time split comes from timing its own module functions (``batch_generation``
for generation; the no-grad ``forward`` and ``get_reward`` calls for scoring +
ref / value forwards; first training forward to ``on_step_end`` for the update);
nothing in its computation is changed. Known difference: TRL treats a sampled pad
token as the end of the response (its pad-as-mask convention); the compute is the
same either way.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, int]] = {
    "S": dict(n_layer=2, n_embd=64, n_head=2, n_positions=128),
    "M": dict(n_layer=4, n_embd=256, n_head=4, n_positions=128),
}
BATCH = 32  # completions per iteration
PROMPT_TOKENS = 16
RESPONSE_TOKENS = 32
EPOCHS = 4
MINIBATCHES = 4
N_PROMPTS = 256  # distinct prompts; TRL's dataloader drops the last partial batch
CHARS = "abcdefghijklmnopqrstuvwxyz"  # + <pad>, <eos>, <unk> = a vocabulary of 29
LR = 3e-6  # TRL's default; small enough that the policies (and response lengths) barely drift in a bench run
SEED = 0
IMPLS = ("custom", "trl")

# Switches that change the math, benchmarked apart from the equal-math figure: variant -> the custom
# core's config overrides. TRL runs its equal-math loop, with bf16 autocast (PPOConfig(bf16=True))
# wherever the variant has it, so the only difference left is the one the variant names.
VARIANTS: dict[str, dict[str, str]] = {
    "equal": {},
    "shared-trunk": {"model.value_trunk": "shared"},
    "bf16": {"train.autocast": "bf16"},
    "shared-trunk+bf16": {"model.value_trunk": "shared", "train.autocast": "bf16"},
}


# ---- the workload ------------------------------------------------------------------------------


def make_tokenizer():
    from harness.models.tokenizer import build_tokenizer

    return build_tokenizer(list(CHARS))


def make_prompts(n: int = N_PROMPTS, seed: int = SEED) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(CHARS) for _ in range(PROMPT_TOKENS)) for _ in range(n)]


def make_task(prompts: list[str]):
    from harness.tasks.base import Task

    return Task(
        name="bench",
        description="synthetic benchmark workload: random character prompts",
        train_prompts=tuple(prompts),
        eval_prompts=tuple(prompts[:BATCH]),
        sft_corpus=(),
        gold_fn=lambda prompt, completion, ended: float(len(completion.split())),  # trivial: the length
        response_length=RESPONSE_TOKENS,
        gold_range=(0.0, float(RESPONSE_TOKENS)),
        vocabulary=tuple(CHARS),
    )


def gpt2_config(size: str, tokenizer):
    from harness.models.presets import gpt2_config as preset_config

    return preset_config(SIZES[size], tokenizer)


def make_models(size: str, tokenizer, seed: int = SEED):
    """(policy, ref, reward, value): random GPT-2s of one size; ref a frozen policy copy,
    value a trainable copy of the frozen reward model (TRL's usual initialisation)."""
    import torch
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    from harness.models.presets import no_dropout

    config = gpt2_config(size, tokenizer)
    torch.manual_seed(seed)
    policy = no_dropout(GPT2LMHeadModel(config))
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    cls_config = copy.deepcopy(config)
    cls_config.num_labels = 1
    reward = no_dropout(GPT2ForSequenceClassification(cls_config))
    reward.eval().requires_grad_(False)
    value = copy.deepcopy(reward).requires_grad_(True).train()
    return policy, ref, reward, value


def matmul_params(size: str, vocab: int) -> tuple[int, int]:
    """(LM, classifier) parameters that take part in matmuls: blocks + output head."""
    d, n = SIZES[size]["n_embd"], SIZES[size]["n_layer"]
    # per block: qkv 3d^2+3d, proj d^2+d, fc 4d^2+4d, fc_proj 4d^2+d  (biases counted, norms not)
    block = 12 * d * d + 9 * d
    return n * block + vocab * d, n * block + d


def flops_per_iteration(
    size: str, vocab: int, response_tokens: float = RESPONSE_TOKENS, shared_trunk: bool = False
) -> dict[str, float]:
    """Useful FLOPs of one iteration whose completions average ``response_tokens`` tokens
    (with ``shared_trunk`` the update trains one trunk for both losses)."""
    n_lm, n_cls = matmul_params(size, vocab)
    seq = BATCH * (PROMPT_TOKENS + response_tokens)
    gen = 2 * n_lm * BATCH * (PROMPT_TOKENS + response_tokens - 1)
    score = 2 * (n_lm + 2 * n_cls) * seq  # ref (LM) + value + reward (classifiers)
    update = EPOCHS * 3 * 2 * (n_lm + (0 if shared_trunk else n_cls)) * seq
    return {"generation": float(gen), "scoring": float(score), "update": float(update), "total": float(gen + score + update)}


FLOP_FORMULA = (
    "2*N*tokens per forward (N = matmul params: blocks + output head), x3 for forward+backward; "
    "over the tokens that exist (l = the implementation's mean response length, EOS included): "
    "generation B*(P+l-1) tokens (KV cache), ref/value/reward B*(P+l) each, "
    "update epochs*3*(policy+value) over B*(P+l); attention scores, norms, optimiser not counted"
)


def custom_config(n_iterations: int, threads: int, variant: str = "equal"):
    """The equal-math RunConfig (TRL PPOTrainer semantics), plus the variant's switches."""
    from harness.config import build_config

    return build_config(
        None,
        {
            "task.name": "sort",  # any registered name; the bench passes its own Task object
            "task.response_length": RESPONSE_TOKENS,
            "rollout.batch_size": BATCH,
            "rollout.group_size": 1,
            "rollout.temperature": 1.0,
            "ppo.epochs": EPOCHS,
            "ppo.minibatches": MINIBATCHES,
            "ppo.lr": LR,
            "ppo.lr_decay": True,  # TRL: linear schedule over the run
            "ppo.adam_eps": 1e-5,
            "ppo.max_grad_norm": None,  # TRL's PPO loop does not clip gradients
            "ppo.vf_coef": 0.1,
            "ppo.value_clip": 0.2,
            "ppo.clip_eps": 0.2,
            "ppo.entropy_coef": 0.0,
            "kl.coef": 0.05,
            "kl.estimator": "k1",
            "kl.placement": "reward",
            "advantage.level": "token",
            "advantage.gamma": 1.0,
            "advantage.lam": 0.95,
            "advantage.whiten": True,
            "loss.agg": "token-mean",
            "train.iterations": n_iterations,
            "train.missing_eos_penalty": None,
            "train.threads": threads,
            "seed": SEED,
            **VARIANTS[variant],
        },
    )


# ---- one implementation, in a child process ------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _run_custom(size: str, iterations: int, warmup: int, threads: int, variant: str) -> dict[str, Any]:
    import torch

    from harness.lm.rollout import make_score_fn
    from harness.models.types import Models, SharedTrunkValue
    from harness.ppo.loop import init_state, ppo_iteration

    torch.set_num_threads(threads)
    tokenizer = make_tokenizer()
    task = make_task(make_prompts())
    policy, ref, reward, value = make_models(size, tokenizer)
    cfg = custom_config(warmup + iterations, threads, variant)
    if cfg.model.value_trunk == "shared":
        value = SharedTrunkValue(policy)
    models = Models(task=task, tokenizer=tokenizer, policy=policy, ref=ref, reward=reward, value=value, source="bench")
    st = init_state(cfg, models)
    score_fn = make_score_fn(models.reward, task.gold)
    rows = []
    for i in range(warmup + iterations):
        timings: dict[str, float] = {}
        t0, c0 = time.perf_counter(), time.process_time()
        m = ppo_iteration(cfg, models, st, score_fn, timings=timings)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if i >= warmup:
            rows.append(
                {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "generation_s": timings["generate_s"],
                    "scoring_s": timings["score_s"],
                    "update_s": m["perf/update_s"],
                    "tokens": m["response/length"] * BATCH,
                    "kl": m["objective/kl"],
                }
            )
    return {"rows": rows, "threads": torch.get_num_threads()}


def _run_trl(size: str, iterations: int, warmup: int, threads: int, variant: str) -> dict[str, Any]:
    import torch
    import trl.experimental.ppo.ppo_trainer as T
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(threads)
    tokenizer = make_tokenizer()
    prompts = make_prompts()
    policy, ref, reward, value = make_models(size, tokenizer)
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    assert all(len(r) == PROMPT_TOKENS for r in ids)
    dataset = Dataset.from_dict({"input_ids": ids})

    # Time TRL's own phases by wrapping its module-level functions (results unchanged).
    clock = {"generation": 0.0, "scoring": 0.0, "tokens": 0.0, "update_start": None}
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def timed_generation(*a, **k):
        t0 = time.perf_counter()
        out = orig_generation(*a, **k)
        clock["generation"] += time.perf_counter() - t0
        responses = out[0][:, PROMPT_TOKENS:]
        # generated tokens: up to and including the first EOS (the custom core's count)
        is_eos = responses == eos
        after = (is_eos.cumsum(1) - is_eos.long()) > 0
        clock["tokens"] += float((~after & (responses != pad) | is_eos).sum())
        return out

    def timed_scoring(fn):
        def inner(*a, **k):
            if torch.is_grad_enabled():  # a training forward: the update has begun
                if clock["update_start"] is None:
                    clock["update_start"] = time.perf_counter()
                return fn(*a, **k)
            t0 = time.perf_counter()
            out = fn(*a, **k)
            clock["scoring"] += time.perf_counter() - t0
            return out

        return inner

    orig_generation = T.batch_generation
    T.batch_generation = timed_generation
    T.forward = timed_scoring(T.forward)
    T.get_reward = timed_scoring(T.get_reward)

    rows: list[dict[str, float]] = []

    class Timer(TrainerCallback):
        def __init__(self):
            self.last, self.last_cpu = 0.0, 0.0

        def on_train_begin(self, args, state, control, **kw):
            self.last, self.last_cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            now, cpu = time.perf_counter(), time.process_time()
            if state.global_step > warmup:
                rows.append(
                    {
                        "wall_s": now - self.last,
                        "cpu_s": cpu - self.last_cpu,
                        "generation_s": clock["generation"],
                        "scoring_s": clock["scoring"],
                        "update_s": now - clock["update_start"],
                        "tokens": clock["tokens"],
                        "kl": float("nan"),
                    }
                )
            self.last, self.last_cpu = now, cpu
            clock.update(generation=0.0, scoring=0.0, tokens=0.0, update_start=None)

    with tempfile.TemporaryDirectory() as out_dir:
        args = PPOConfig(
            output_dir=out_dir,
            total_episodes=(warmup + iterations) * BATCH,
            per_device_train_batch_size=BATCH,  # batch 32 = one micro-batch per ...
            gradient_accumulation_steps=1,
            num_mini_batches=MINIBATCHES,  # ... 4 minibatches of 8, one optimiser step each
            num_ppo_epochs=EPOCHS,
            local_rollout_forward_batch_size=BATCH,
            response_length=RESPONSE_TOKENS,
            stop_token="eos",
            temperature=1.0,
            missing_eos_penalty=None,
            kl_coef=0.05,
            kl_estimator="k1",
            cliprange=0.2,
            cliprange_value=0.2,
            vf_coef=0.1,
            gamma=1.0,
            lam=0.95,
            whiten_rewards=False,
            learning_rate=LR,
            adam_epsilon=1e-5,
            lr_scheduler_type="linear",
            num_sample_generations=0,
            use_cpu=True,
            bf16=VARIANTS[variant].get("train.autocast") == "bf16",
            fp16=False,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            seed=SEED,
        )
        trainer = PPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=policy,
            ref_model=ref,
            reward_model=reward,
            value_model=value,
            train_dataset=dataset,
            callbacks=[Timer()],
        )
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        torch.set_num_threads(threads)
        trainer.train()
    return {"rows": rows, "threads": torch.get_num_threads()}


def run_child(impl: str, size: str, iterations: int, warmup: int, threads: int, variant: str) -> dict[str, Any]:
    """One implementation in this (fresh) process; per-iteration rows + peak RSS."""
    run = _run_custom if impl == "custom" else _run_trl
    out = run(size, iterations, warmup, threads, variant)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _spawn(impl: str, size: str, iterations: int, warmup: int, threads: int, variant: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "child.json"
        cmd = [sys.executable, "-m", "harness.bench", "--size", size, "--iterations", str(iterations),
               "--warmup", str(warmup), "--threads", str(threads), "--variant", variant,
               "--child", impl, "--child-out", str(path)]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise RuntimeError(f"bench child '{impl}' failed (exit {proc.returncode}):\n" + "\n".join(tail))
        return json.loads(path.read_text())


# ---- measurement and summary ---------------------------------------------------------------------


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best of ``repeats`` timed fp32 n x n products on ``threads`` threads, in GFLOP/s, per kernel:
    ``torch.matmul`` (PyTorch's BLAS) and oneDNN (``gemm.linear``, where the build has it)."""
    import torch

    from harness.fast import gemm

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    kernels = {"torch_matmul": lambda: torch.matmul(a, b)}
    if gemm.available():
        kernels["onednn"] = lambda: gemm.linear(a, b)
    out = {}
    for name, fn in kernels.items():
        fn()  # warm-up (and oneDNN's kernel generation)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = 2 * n**3 / best / 1e9
    return out


def summarise(child: dict[str, Any], size: str, vocab: int, peak: float, shared_trunk: bool = False) -> dict[str, Any]:
    """Per-iteration rows -> rates, time split (seconds per iteration and shares), FLOP rates."""
    rows = child["rows"]
    wall = sum(r["wall_s"] for r in rows)
    n = len(rows)
    split = {k: sum(r[f"{k}_s"] for r in rows) / n for k in ("generation", "scoring", "update")}
    per_it = wall / n
    split["other"] = max(0.0, per_it - sum(split.values()))
    mean_len = sum(r["tokens"] for r in rows) / n / BATCH
    flops = flops_per_iteration(size, vocab, mean_len, shared_trunk)
    gflops = flops["total"] * n / wall / 1e9
    return {
        "iterations": n,
        "iterations_per_s": n / wall,
        "seconds_per_iteration": per_it,
        # CPU seconds of the whole process per iteration: robust to a loaded machine at 1 thread
        "cpu_seconds_per_iteration": sum(r["cpu_s"] for r in rows) / n,
        "generated_tokens_per_s": sum(r["tokens"] for r in rows) / wall,
        "mean_response_tokens": mean_len,
        "flops_per_iteration": flops,
        "time_s": split,
        "time_share": {k: v / per_it for k, v in split.items()},
        "peak_rss_mb": child["peak_rss_mb"],
        "gflops": gflops,
        "peak_share": gflops / peak,
        "threads": child["threads"],
        "iteration_s": [r["wall_s"] for r in rows],
    }


def _median_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat with the median iterations/s (a real run, not a mix of runs)."""
    ordered = sorted(results, key=lambda r: r["iterations_per_s"])
    return ordered[(len(ordered) - 1) // 2]


ENV_KEYS = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "MKL_NUM_THREADS", "LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_")
RATIO_KEYS = ("iterations_per_s", "generated_tokens_per_s", "gflops", "peak_rss_mb")


def benchmark(
    size: str, iterations: int, warmup: int, threads: int, vs_trl: bool, repeats: int = 1, variant: str = "equal"
) -> dict[str, Any]:
    """Run the children (interleaved custom / trl per repeat) and summarise; the JSON document."""
    import torch
    import transformers
    import trl

    vocab = len(make_tokenizer())
    impls = ["custom", "trl"] if vs_trl else ["custom"]
    runs: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
    load_before = os.getloadavg()
    peaks = [matmul_peak_gflops(threads)]
    for _ in range(repeats):
        for impl in impls:
            child = _spawn(impl, size, iterations, warmup, threads, variant)
            peaks.append(matmul_peak_gflops(threads))
            runs[impl].append(child)
    by_kernel = {k: max(p[k] for p in peaks) for k in peaks[0]}
    peak = max(by_kernel.values())
    results = {}
    for impl in impls:
        shared = impl == "custom" and VARIANTS[variant].get("model.value_trunk") == "shared"
        summaries = [summarise(c, size, vocab, peak, shared) for c in runs[impl]]
        results[impl] = _median_result(summaries)
        results[impl]["repeats_iterations_per_s"] = sorted(r["iterations_per_s"] for r in summaries)
    n_lm, n_cls = matmul_params(size, vocab)
    doc: dict[str, Any] = {
        "size": size,
        "variant": {
            "name": variant,
            "equal_math": variant == "equal",
            "custom_overrides": VARIANTS[variant],
            "trl_bf16": VARIANTS[variant].get("train.autocast") == "bf16",
        },
        "workload": {
            **SIZES[size],
            "vocab": vocab,
            "batch": BATCH,
            "prompt_tokens": PROMPT_TOKENS,
            "response_tokens": RESPONSE_TOKENS,
            "epochs": EPOCHS,
            "minibatches": MINIBATCHES,
            "dtype": "float32",
            "threads": threads,
            "iterations": iterations,
            "warmup": warmup,
            "repeats": repeats,
            "matmul_params_lm": n_lm,
            "matmul_params_classifier": n_cls,
        },
        "flops_per_iteration": flops_per_iteration(size, vocab),  # at the full response length
        "flop_formula": FLOP_FORMULA,
        "matmul_peak_gflops": peak,
        "matmul_peak_by_kernel": by_kernel,
        "results": results,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        # a busy machine slows both sides unevenly (2-thread OpenMP teams suffer most): say how busy it was
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1m_before": load_before[0],
            "loadavg_1m_after": os.getloadavg()[0],
            "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
        },
    }
    if vs_trl:
        c, t = results["custom"], results["trl"]
        doc["ratio_custom_over_trl"] = {k: c[k] / t[k] for k in RATIO_KEYS}
        # TRL's CPU seconds per iteration over custom's: the speed-up in work done, robust to a busy machine
        doc["ratio_custom_over_trl"]["cpu_time_speedup"] = t["cpu_seconds_per_iteration"] / c["cpu_seconds_per_iteration"]
    return doc


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    res = doc["results"]
    impls = list(res)
    w = doc["workload"]
    table = Table(
        title=f"ppo-harness bench {doc['size']}: GPT-2 {w['n_layer']}x{w['n_embd']}, batch {w['batch']}, "
        f"{w['epochs']}x{w['minibatches']} PPO, {w['threads']} threads, fp32 matmul peak "
        + " / ".join(f"{k} {v:.0f}" for k, v in doc["matmul_peak_by_kernel"].items())
        + " GFLOP/s"
        + ("" if doc["variant"]["equal_math"] else f"\nvariant {doc['variant']['name']} "
           f"({', '.join(f'{k}={v}' for k, v in doc['variant']['custom_overrides'].items())}): "
           "changes the math, not the equal-math figure")
    )
    table.add_column("metric")
    for impl in impls:
        table.add_column(impl, justify="right")
    if "ratio_custom_over_trl" in doc:
        table.add_column("custom / trl", justify="right")
    ratio = doc.get("ratio_custom_over_trl", {})

    def row(label: str, key: str | None, fmt: str, getter) -> None:
        cells = [fmt.format(getter(res[i])) for i in impls]
        if ratio:
            cells.append(f"{ratio[key]:.2f}x" if key in ratio else "")
        table.add_row(label, *cells)

    row("iterations/s", "iterations_per_s", "{:.2f}", lambda r: r["iterations_per_s"])
    row("generated tokens/s", "generated_tokens_per_s", "{:,.0f}", lambda r: r["generated_tokens_per_s"])
    row("  mean response tokens", None, "{:.1f}", lambda r: r["mean_response_tokens"])
    for part in ("generation", "scoring", "update", "other"):
        row(
            f"  {part} s/it (share)" if part != "scoring" else "  scoring+ref/value s/it (share)",
            None,
            "{}",
            lambda r, p=part: f"{r['time_s'][p]:.3f} ({r['time_share'][p]:.0%})",
        )
    row("CPU s/it (all threads)", "cpu_time_speedup", "{:.3f}", lambda r: r["cpu_seconds_per_iteration"])
    row("peak RSS MB", "peak_rss_mb", "{:.0f}", lambda r: r["peak_rss_mb"])
    row("GFLOP/s", "gflops", "{:.1f}", lambda r: r["gflops"])
    row("share of matmul peak", None, "{:.1%}", lambda r: r["peak_share"])
    Console().print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ppo-harness bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="S")
    p.add_argument("--vs", choices=["trl"], default=None, help="also run TRL's PPOTrainer on the same workload")
    p.add_argument("--iterations", type=int, default=5, help="timed iterations per implementation")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--repeats", type=int, default=1, help="fresh runs per implementation, interleaved; median reported")
    p.add_argument("--threads", type=int, default=2, help="torch threads (match the cores per worker)")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    p.add_argument("--variant", choices=list(VARIANTS), default="equal",
                   help="equal math (default), or switches that change it, reported apart: "
                   + "; ".join(f"{k}: {', '.join(f'{a}={b}' for a, b in v.items())}" for k, v in VARIANTS.items() if v))
    p.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.iterations < 1 or a.warmup < 0 or a.repeats < 1 or a.threads < 1:
        p.error("--iterations, --repeats and --threads must be >= 1, --warmup >= 0")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.child:
        out = run_child(a.child, a.size, a.iterations, a.warmup, a.threads, a.variant)
        a.child_out.write_text(json.dumps(out))
        return 0
    try:
        doc = benchmark(a.size, a.iterations, a.warmup, a.threads, a.vs == "trl", a.repeats, a.variant)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_table(doc)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
