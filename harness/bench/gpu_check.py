"""``python -m harness.bench.gpu_check``: the one GPU check, prepared to run unattended in under 8 minutes.

It builds a ~100M-parameter Llama-architecture policy locally (random init, the default task's tokenizer,
``save_pretrained`` into a temporary folder: nothing is downloaded), then trains the default sentiment task
for a few iterations with it, in bf16, with the custom core (``custom``: whole models; ``custom-fsdp``: the
same run with ``train.parallel=fsdp``, FSDP2 on one GPU) and with ``impl=trl``, each in its own process, and prints per implementation the tokens per second of the rollout + update and
``torch.cuda.max_memory_allocated``. ``--nproc-per-node N`` runs the custom core over N GPUs as well.
``--tiny --device cpu`` is the same path on a 2-layer model, which is how it is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # hidden, layers, heads, MLP width
    "100m": (768, 12, 12, 2048),
    "tiny": (64, 2, 4, 128),
}


def build_llama(folder: Path, size: str) -> int:
    """A random-init Llama with the sentiment task's tokenizer saved into ``folder``; its parameter count."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import harness

    tokenizer = AutoTokenizer.from_pretrained(Path(harness.__file__).parent / "shipped" / "sentiment" / "sft" / "tokenizer")
    hidden, layers, heads, mlp = SIZES[size]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=mlp,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def child(impl: str, folder: str, device: str, iterations: int, nproc: int, runs: str) -> dict:
    """One training run in its own process; tokens/s from its perf/* metrics, peak memory from torch."""
    rm = Path(__file__).resolve().parents[1] / "shipped" / "sentiment" / "rm" / "rm"  # the task's proxy RM, as shipped
    sets = {"model.policy": folder, "model.sft": "none", "model.reward": str(rm), "impl": impl.removesuffix("-fsdp"),
            "train.parallel": "fsdp" if impl.endswith("-fsdp") else "ddp", "train.iterations": iterations,
            "train.device": device, "train.dtype": "bf16" if device != "cpu" else "fp32", "eval.every": iterations,
            "eval.prompts": 16, "rollout.batch_size": 64}
    args = [sys.executable, "-m", "harness", "train", "--runs-dir", runs, "--quiet", "--experiment", "gpu-check"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    if nproc > 1:
        args += ["--nproc-per-node", str(nproc)]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"impl": impl, "nproc": nproc, "error": proc.stderr.strip().splitlines()[-1:]}
    from harness.tracking import Store

    store = Store(runs)
    run = max(store.find_runs("gpu-check"), key=lambda r: r.info.start_time)
    m = run.data.metrics
    return {"impl": impl, "nproc": nproc, "wall_s": round(wall, 1), "tokens_per_s": m.get("perf/tokens_per_s"),
            "max_memory_gb": m.get("perf/max_memory_gb"), "eval/gold": m.get("eval/gold")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a 2-layer model (the CPU test of this script)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--nproc-per-node", type=int, default=1, help="also run the custom core over N GPUs")
    p.add_argument("--impls", default="custom,custom-fsdp,trl", help="custom, custom-fsdp (FSDP2), trl")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp) / "llama"
        n = build_llama(folder, "tiny" if a.tiny else "100m")
        print(json.dumps({"model": "llama", "parameters": n}), flush=True)
        for impl in a.impls.split(","):
            print(json.dumps(child(impl, str(folder), a.device, a.iterations, 1, tmp)), flush=True)
        if a.nproc_per_node > 1:
            print(json.dumps(child("custom", str(folder), a.device, a.iterations, a.nproc_per_node, tmp)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
