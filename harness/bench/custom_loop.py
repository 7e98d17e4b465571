"""The custom core's side of the benchmark: ``ppo_iteration`` on the workload, one timed row per iteration."""

from __future__ import annotations

import time
from typing import Any

from harness.bench.workload import BATCH, make_models, make_prompts, make_task, make_tokenizer, run_config


def run_custom(size: str, iterations: int, warmup: int, threads: int, variant: str) -> dict[str, Any]:
    """``warmup + iterations`` PPO iterations; the timed ones as rows of wall / CPU seconds, the
    rollout's generate / score split, the update time and the generated tokens."""
    import torch

    from harness.lm.rollout import make_score_fn
    from harness.models.types import Models, SharedTrunkValue
    from harness.ppo.loop import init_state, ppo_iteration

    torch.set_num_threads(threads)
    tokenizer = make_tokenizer()
    task = make_task(make_prompts())
    policy, ref, reward, value = make_models(size, tokenizer)
    cfg = run_config(warmup + iterations, threads, variant, impl="custom")
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
