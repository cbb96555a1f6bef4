"""Schedules against hand-computed values."""

import math

import numpy as np
import pytest
from keras import ops

from keras_ast import schedules


def test_cubic_sparsity_values():
    s = schedules.CubicSparsity(0.0, 0.9, begin_step=0, end_step=400, frequency=100)
    expected = [0.9 * (1 - (1 - p) ** 3) for p in (0.0, 0.25, 0.5, 0.75, 1.0, 1.0)]
    got = [float(s.sparsity(step)) for step in (0, 100, 250, 300, 400, 1000)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert s.final_update == 400
    assert float(s.sparsity(99)) == 0.0


def test_cubic_sparsity_with_offset_and_initial():
    s = schedules.CubicSparsity(0.5, 0.9, begin_step=10, end_step=210, frequency=50, offset=7)
    assert s.first_update == 17 and s.final_update == 217
    assert math.isclose(float(s.sparsity(67)), 0.9 + (0.5 - 0.9) * 0.75**3, rel_tol=1e-6)
    assert not bool(s.is_due(16)) and bool(s.is_due(17)) and not bool(s.is_due(18))


def test_is_due_window_catches_each_update_exactly_once():
    s = schedules.CubicSparsity(0.0, 0.5, begin_step=0, end_step=100, frequency=10, offset=4)
    K = 3
    for k in range(K):
        # Steps where sub-net k is active; each scheduled time is caught exactly once.
        due = [t for t in range(k, 200, K) if bool(s.is_due(t, window=K))]
        scheduled = list(range(4, 198 - K, 10))
        assert len(due) >= len(scheduled)
        for T, t in zip(scheduled, due):
            assert T <= t < T + K


def test_cosine_decay():
    r = schedules.CosineDecay(0.5, 0.005, decay_steps=100)
    assert math.isclose(float(r(0)), 0.5, rel_tol=1e-6)
    assert math.isclose(float(r(50)), 0.005 + 0.495 * 0.5, rel_tol=1e-6)
    assert math.isclose(float(r(100)), 0.005, rel_tol=1e-5)
    assert math.isclose(float(r(500)), 0.005, rel_tol=1e-5)
    assert schedules.CosineDecay.from_config(r.get_config()).get_config() == r.get_config()


def test_schedules_work_on_tensors():
    s = schedules.CubicSparsity(0.0, 0.8, 0, 100, 10)
    assert math.isclose(float(s.sparsity(ops.convert_to_tensor(50))),
                        0.8 * (1 - 0.5**3), rel_tol=1e-6)


def test_staggered_schedules_and_collisions():
    sch = schedules.staggered_schedules(0.0, [0.5, 0.7, 0.9], 0, 100, 30, 10)
    assert [s.offset for s in sch] == [0, 10, 20]
    with pytest.raises(ValueError, match="adjustment_period"):
        schedules.staggered_schedules(0.0, [0.5, 0.9], 0, 100, 30, 0)
    with pytest.raises(ValueError, match="frequency 20 is too short"):
        schedules.staggered_schedules(0.0, [0.5, 0.7, 0.9], 0, 100, 20, 10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(initial_sparsity=0.0, final_sparsity=1.0), "final_sparsity"),
    (dict(initial_sparsity=-0.1, final_sparsity=0.5), "initial_sparsity"),
    (dict(initial_sparsity=0.6, final_sparsity=0.5), "must be >="),
])
def test_cubic_sparsity_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        schedules.CubicSparsity(begin_step=0, end_step=10, frequency=1, **kwargs)


def test_get_config_roundtrip():
    s = schedules.CubicSparsity(0.1, 0.9, 5, 50, 7, offset=3)
    assert repr(schedules.CubicSparsity.from_config(s.get_config())) == repr(s)


def test_constant_sparsity_updates_stop_at_end_step():
    s = schedules.ConstantSparsity(0.8, begin_step=10, end_step=40, frequency=10, offset=3)
    due = [t for t in range(100) if bool(s.is_due(t))]
    assert due == [13, 23, 33, 43]  # j * 10 <= 40 - 10
    assert s.last_update == 43 and s.final_update == 13
    assert all(math.isclose(float(s.sparsity(t)), 0.8, rel_tol=1e-6) for t in (0, 13, 99))
    # With a window of K = 3, each scheduled update is caught once, the last one included.
    caught = [t for t in range(1, 100, 3) if bool(s.is_due(t, window=3))]
    assert caught == [13, 25, 34, 43]
    assert repr(schedules.ConstantSparsity.from_config(s.get_config())) == repr(s)
    offsets = [c.offset for c in schedules.staggered_constant_sparsities([0.5, 0.9], 0, 50, 10, 4)]
    assert offsets == [0, 4]
