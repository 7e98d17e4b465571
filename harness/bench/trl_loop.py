"""TRL's side of the benchmark: its own PPOTrainer loop on the workload, one timed row per iteration.

The PPOConfig is the baseline's own (``baselines.trl_ppo.trl_args``) of the equal-math RunConfig;
TRL keeps its own optimizer, scheduler and data collator, and nothing in its computation is changed.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from harness.bench.workload import (
    PROMPT_TOKENS,
    RESPONSE_TOKENS,
    make_models,
    make_prompts,
    make_tokenizer,
    run_config,
)

_TIMED = ("batch_generation", "forward", "get_reward")  # the trl.experimental.ppo.ppo_trainer names wrapped


def _fresh() -> dict[str, Any]:
    return {"generation": 0.0, "scoring": 0.0, "tokens": 0.0, "update_start": None}


@contextlib.contextmanager
def phase_clock(eos: int, pad: int) -> Iterator[dict[str, Any]]:
    """Time TRL's phases inside ``PPOTrainer.train()``; yields the clock, restores TRL's functions on exit.

    Why a patch at all: ``train()`` is one function with no hook between generation, scoring and
    the update, and the benchmark reports that split for both sides. Its loop calls three functions
    by their name in ``trl.experimental.ppo.ppo_trainer``, so for the duration of the block those
    names are bound to timing wrappers that call the originals with the same arguments and return
    their results unchanged:

    - ``batch_generation`` -> ``clock["generation"]`` seconds, and ``clock["tokens"]``: the generated
      tokens up to and including the first EOS (the custom core's count);
    - ``forward`` / ``get_reward`` under no_grad (ref logprobs, values, scores) -> ``clock["scoring"]``;
      the first grad-enabled call (a training forward) -> ``clock["update_start"]``.

    The caller reads and resets the clock once per iteration (``on_step_end``).
    """
    import torch
    import trl.experimental.ppo.ppo_trainer as T

    clock = _fresh()
    originals = {name: getattr(T, name) for name in _TIMED}

    def timed_generation(*a, **k):
        t0 = time.perf_counter()
        out = originals["batch_generation"](*a, **k)
        clock["generation"] += time.perf_counter() - t0
        responses = out[0][:, PROMPT_TOKENS:]
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

    T.batch_generation = timed_generation
    T.forward = timed_scoring(originals["forward"])
    T.get_reward = timed_scoring(originals["get_reward"])
    try:
        yield clock
    finally:
        for name, fn in originals.items():
            setattr(T, name, fn)


def _timer(clock: dict[str, Any], warmup: int, rows: list[dict[str, float]]):
    """A TrainerCallback appending one row per timed iteration (``on_step_end``) and resetting the clock."""
    from transformers import TrainerCallback

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
            clock.update(_fresh())

    return Timer()


def run_trl(size: str, iterations: int, warmup: int, threads: int, variant: str) -> dict[str, Any]:
    """``warmup + iterations`` iterations of TRL's PPOTrainer; the timed ones as rows (``run_custom``'s keys)."""
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl.experimental.ppo import PPOTrainer

    from baselines.trl_ppo import check_expressible, trl_args

    torch.set_num_threads(threads)
    tokenizer = make_tokenizer()
    prompts = make_prompts()
    policy, ref, reward, value = make_models(size, tokenizer)
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    assert all(len(r) == PROMPT_TOKENS for r in ids)
    cfg = run_config(warmup + iterations, threads, variant, impl="trl")
    check_expressible(cfg)  # the equal-math config is one TRL can express, by the baseline's own rules
    rows: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory() as out_dir,
        phase_clock(tokenizer.eos_token_id, tokenizer.pad_token_id) as clock,
    ):
        # trl_args as is: of its settings that differ from PPOConfig's defaults, max_grad_norm,
        # activation_checkpointing and logging_steps are not read by PPOTrainer.train() (it never clips,
        # never enables checkpointing, and logs every step whatever the strategy), so TRL runs the same work.
        trainer = PPOTrainer(
            args=trl_args(cfg, RESPONSE_TOKENS, out_dir),
            processing_class=tokenizer,
            model=policy,
            ref_model=ref,
            reward_model=reward,
            value_model=value,
            train_dataset=Dataset.from_dict({"input_ids": ids}),
            callbacks=[_timer(clock, warmup, rows)],
        )
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        torch.set_num_threads(threads)
        trainer.train()
    return {"rows": rows, "threads": torch.get_num_threads()}
