"""The machine's fp32 matmul peak on the benchmark's threads: the denominator of the share of peak."""

from __future__ import annotations

import time


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
