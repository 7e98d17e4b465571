"""harness/ppo/update.py: the side thread's ownership and life, the LR schedule, the stats' schema keys.

The update's math through the real loop (epochs, minibatches, clipping, early stop, every loss term)
is checked by hand in test_options.py; here the pieces around it.
"""

from __future__ import annotations

import pytest
import torch

import harness.ppo.update as U
from harness.schema import METRICS


@pytest.fixture
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def test_no_module_level_executor():
    assert not [k for k, v in vars(U).items() if isinstance(v, U.ThreadPoolExecutor)]


def test_side_thread_splits_the_threads_and_restores_them(two_threads):
    side = U.SideThread()
    with side.split(True) as ex:
        assert ex is not None and torch.get_num_threads() == 1  # 2 - 2 // 2 here, 2 // 2 there
        assert ex.submit(torch.get_num_threads).result() == 1
    assert torch.get_num_threads() == 2
    with side.split(True) as again:
        assert again is ex  # one executor, reused by every iteration
    side.close()
    side.close()  # idempotent


def test_side_thread_is_none_when_disabled_or_on_one_thread(two_threads):
    side = U.SideThread()
    with side.split(False) as ex:
        assert ex is None and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    with side.split(True) as ex:
        assert ex is None
    assert side._executor is None  # never started


def test_each_owner_has_its_own_executor_and_close_ends_it(two_threads):
    a, b = U.SideThread(), U.SideThread()
    with a.split(True) as ea:
        ea.submit(lambda: None).result()
    with b.split(True) as eb:
        eb.submit(lambda: None).result()
    assert ea is not eb
    threads = list(ea._threads)
    a.close()
    for th in threads:
        th.join(timeout=10)
    assert threads and not any(th.is_alive() for th in threads)
    with b.split(True) as eb2:  # closing a leaves b's running
        assert eb2 is eb and eb.submit(lambda: 7).result() == 7
    b.close()
    with pytest.raises(RuntimeError):
        eb.submit(lambda: None)  # shut down


def test_a_dropped_owner_shuts_its_executor_down(two_threads):
    import gc

    side = U.SideThread()
    with side.split(True) as ex:
        ex.submit(lambda: None).result()
    del side
    gc.collect()
    with pytest.raises(RuntimeError):
        ex.submit(lambda: None)


@pytest.mark.parametrize("enabled, expected", [(True, [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]), (False, [1.0] * 6)])
def test_linear_decay_by_hand(enabled, expected):
    from harness.algos.schedules import lr_factor, scheduler_kind

    f = lr_factor(scheduler_kind(None, enabled), 4)
    assert [f(i) for i in range(6)] == expected


def test_update_stats_metrics_are_schema_keys_and_value_keys_only_with_a_value_model():
    with_value = U.UpdateStats(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, early_stop=False, steps=2, seconds=0.0)
    m = with_value.metrics()
    assert m == {"policy/approxkl_avg": 0.1, "policy/clipfrac_avg": 0.2, "loss/policy_avg": 0.3, "grad/norm": 0.4,
                 "loss/value_avg": 0.5, "val/clipfrac_avg": 0.6, "grad/value_norm": 0.7}
    assert set(m) <= set(METRICS)
    without = U.UpdateStats(0.1, 0.2, 0.3, 0.4, None, None, None, early_stop=True, steps=1, seconds=0.0)
    assert set(without.metrics()) == {"policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "grad/norm"}


def test_check_names_the_statistic_and_the_iteration():
    U.check("loss/policy", torch.tensor(1.0), 3)
    with pytest.raises(U.NonFiniteError, match=r"loss/value became nan at iteration 7"):
        U.check("loss/value", torch.tensor(float("nan")), 7)
    from harness.ppo.loop import NonFiniteError
    from harness.run import NonFiniteError as from_run

    assert NonFiniteError is U.NonFiniteError is from_run  # one class wherever it is imported from
