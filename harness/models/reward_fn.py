"""A reward given as Python code: ``model.reward=package.module:function``.

The function takes the prompts and the completions (lists of strings, the completion's EOS
stripped) and returns one finite number per completion::

    def my_reward(prompts: list[str], completions: list[str]) -> list[float]: ...

It is imported and tried on two of the task's prompts before a run exists, so a function that
cannot be imported, is not callable, raises (``sys.exit`` included: the user code failed, not the
harness), returns anything but a sequence (list, tuple, 1-D array or tensor) of finite real numbers of
the batch's length (a string, a dict, ``10**400``, ``"0.5"``) or takes longer than ``TIMEOUT_S`` is
refused with one line naming ``model.reward`` (exit 2) and nothing is logged. ``model.gold`` given as a
function is tried the same way. During training every call is checked the same way and bounded by
``TIMEOUT_S`` per batch (``PPO_HARNESS_REWARD_TIMEOUT_S`` overrides it): the run fails, naming the key. During training it is the
optimised reward in place of a reward model; the task's gold reward stays the held-out measure
(eval/gold), as with a proxy reward model. A completion that emitted no EOS still gets
``train.missing_eos_penalty`` in place of its score, as for every reward.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import numbers
import os
import re
import signal
import threading
from collections.abc import Callable, Mapping, Sequence

from harness.models.types import ModelError

# package.module:function (dotted module path, one attribute name)
SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")

GoldLike = Callable[[Sequence[str], Sequence[str], Sequence[bool]], list[float]]
# seconds a reward function may take for one batch: a function that hangs (a sleep, a network call that
# never returns) would otherwise hold the run, and a sweep's worker, forever
TIMEOUT_S = float(os.environ.get("PPO_HARNESS_REWARD_TIMEOUT_S", "300"))


class _TimedOut(Exception):
    pass


@contextlib.contextmanager
def _time_bound(seconds: float):
    """Raise _TimedOut in this thread after ``seconds`` (SIGALRM: the main thread only; elsewhere unbounded)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def alarm(signum, frame):
        raise _TimedOut

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def is_callable_spec(value: str) -> bool:
    """``package.module:function``, as opposed to 'learned', 'gold' or a model path."""
    return bool(SPEC.match(value))


def load_reward_fn(spec: str, key: str = "model.reward") -> GoldLike:
    """The function ``spec`` names, wrapped to the gold reward's signature ``(prompts, completions, ended)``
    with its output checked on every call (ModelError naming ``model.reward``)."""
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        raise ModelError(f"{key} '{spec}': cannot import module '{e.name}'") from None
    except AttributeError:
        raise ModelError(f"{key} '{spec}': module '{module}' has no attribute '{name}'") from None
    except (Exception, SystemExit) as e:  # the module itself failed to import (sys.exit at import too)
        raise ModelError(f"{key} '{spec}': importing '{module}' failed ({_first_line(e)})") from None
    if not callable(fn):
        raise ModelError(f"{key} '{spec}': {type(fn).__name__} is not callable")

    def reward(prompts: Sequence[str], completions: Sequence[str], ended: Sequence[bool] = ()) -> list[float]:
        try:
            with _time_bound(TIMEOUT_S):
                out = fn(list(prompts), list(completions))
        except _TimedOut:
            raise ModelError(f"{key} '{spec}': took longer than {TIMEOUT_S:g}s for a batch of {len(completions)} "
                             "(PPO_HARNESS_REWARD_TIMEOUT_S sets the bound)") from None
        except (Exception, SystemExit) as e:  # sys.exit in user code is that code failing
            raise ModelError(f"{key} '{spec}': raised {_first_line(e)}") from None
        return check_scores(spec, out, len(completions), key)

    reward.__name__ = f"reward_fn[{spec}]"
    return reward


def check_scores(spec: str, out, n: int, key: str = "model.reward") -> list[float]:
    """``out`` as n finite floats, or ModelError saying what it was: a sequence (list, tuple, 1-D numpy array
    or torch tensor) of real numbers; a string (its characters), a mapping (its keys), a set (no order) or
    a string inside the sequence is refused, not read as numbers."""
    if hasattr(out, "tolist") and callable(out.tolist) and getattr(out, "ndim", 1) == 1:
        out = out.tolist()  # numpy array, torch tensor
    if isinstance(out, str | bytes | bytearray | Mapping) or not isinstance(out, Sequence):
        raise ModelError(f"{key} '{spec}': returned {type(out).__name__}, expected a list of {n} numbers")
    if len(out) != n:
        raise ModelError(f"{key} '{spec}': returned {len(out)} scores for {n} completions")
    out = [x.item() if getattr(x, "ndim", None) == 0 and hasattr(x, "item") else x for x in out]  # 0-d tensors
    wrong = next((x for x in out if not isinstance(x, numbers.Real)), None)
    if wrong is not None:
        raise ModelError(f"{key} '{spec}': returned a {type(wrong).__name__} ({str(wrong)[:40]!r}) among the "
                         "scores, expected real numbers")
    try:
        scores = [float(x) for x in out]
    except OverflowError:
        raise ModelError(f"{key} '{spec}': returned a number too large for a float (beyond 1.8e308)") from None
    bad = [s for s in scores if not math.isfinite(s)]
    if bad:
        raise ModelError(f"{key} '{spec}': returned a non-finite score ({bad[0]})")
    return scores


def try_reward_fn(spec: str, prompts: Sequence[str], key: str = "model.reward") -> GoldLike:
    """Load the function and call it once on two prompts (an empty and a one-word completion)."""
    fn = load_reward_fn(spec, key)
    sample = list(prompts[:2]) or ["", ""]
    fn(sample, ["", "ok"][: len(sample)], [True] * len(sample))
    return fn


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__


def text_reward_fn(model, tokenizer, name: str, key: str = "model.reward") -> GoldLike:
    """A sequence-classification reward model with a tokenizer of its own, as a function of the text.

    The policy's completion is decoded (EOS stripped) and re-tokenised with the reward model's
    tokenizer as the pair (prompt, completion), the reward-model convention (e.g. OpenAssistant's
    DeBERTa RMs); the score is the model's own forward, logits[:, 0], under inference mode. Used
    whenever ``model.reward``'s vocabulary differs from the policy's (``same_vocabulary``).
    """
    import torch

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id  # decoder RMs find their last token by it
    tokenizer.padding_side = "right"
    device = next(model.parameters()).device

    def reward(prompts: Sequence[str], completions: Sequence[str], ended: Sequence[bool] = ()) -> list[float]:
        batch = tokenizer(list(prompts), list(completions), padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        return check_scores(name, logits[:, 0].float().cpu().tolist(), len(completions), key)

    reward.__name__ = f"reward_model[{name}]"
    return reward


def same_vocabulary(a, b) -> bool:
    """Two tokenizers map every token to the same id (then token ids can be shared without re-tokenising)."""
    return a.get_vocab() == b.get_vocab()
