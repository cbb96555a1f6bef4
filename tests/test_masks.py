"""Mask math against hand-computed selections."""

import numpy as np
from keras import ops

from keras_ast import masks


def np_(x):
    return ops.convert_to_numpy(x)


def test_top_count_is_exact_with_ties():
    scores = np.array([[3.0, 1.0, 3.0], [3.0, 0.0, 2.0]], dtype="float32")
    for count in range(7):
        kept = np_(masks.top_count(scores, count))
        assert kept.sum() == count
    kept = np_(masks.top_count(scores, 2))
    assert set(scores[kept > 0]) == {3.0}  # two of the three tied 3s, nothing else


def _top_count_oracle(scores, count):
    """The definition: a stable descending sort, the first `count` positions."""
    flat = scores.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    keep = np.zeros(flat.size, dtype="float32")
    keep[order[:max(0, min(count, flat.size))]] = 1.0
    return keep.reshape(scores.shape)


def test_top_count_equals_a_stable_sort_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    # (No subnormals: TensorFlow flushes them to zero on CPU.)
    pool = np.array([-np.inf, -2.0, -1.0, -1e-30, -0.0, 0.0, 2e-38, 0.5, 1.0, 3.0, np.inf],
                    dtype="float32")
    for trial in range(150):
        shape = tuple(int(d) for d in rng.integers(1, 9, size=int(rng.integers(1, 4))))
        if trial % 3 == 0:
            scores = rng.choice(pool, size=shape)  # many exact ties, signed zeros, infinities
        elif trial % 3 == 1:
            scores = rng.normal(size=shape) * 10.0 ** rng.integers(-30, 30)
        else:
            scores = np.round(rng.normal(size=shape), 1)  # a few ties
        scores = scores.astype("float32")
        count = int(rng.integers(-1, scores.size + 2))  # out-of-range counts are clipped
        expected = _top_count_oracle(scores, count)
        got = np_(masks.top_count(scores, ops.convert_to_tensor(count, "int32")))
        np.testing.assert_array_equal(got, expected, err_msg=f"{scores}, count {count}")


def test_top_count_large_kernel_keeps_exactly_count():
    rng = np.random.default_rng(1)
    # 300 k entries where a third of them tie at 0: the cut falls inside the tie.
    scores = np.abs(rng.normal(size=(3, 3, 128, 260))).astype("float32")
    scores.reshape(-1)[rng.random(scores.size) < 0.33] = 0.0
    count = int((scores > 0).sum()) + 1234
    got = np_(masks.top_count(scores, count))
    np.testing.assert_array_equal(got, _top_count_oracle(scores, count))


def test_global_magnitude_prune_keeps_largest_active_over_all_kernels():
    w1 = np.array([0.1, -0.9, 0.5, 0.05], dtype="float32")
    w2 = np.array([[0.7, -0.2], [0.3, 0.8]], dtype="float32")
    m1 = np.array([1, 1, 1, 0], dtype="float32")  # 0.05 is inactive: may never come back
    m2 = np.ones((2, 2), dtype="float32")
    # density 0.5 of 8 weights -> keep 4: |w| 0.9, 0.8, 0.7, 0.5
    new1, new2 = masks.global_magnitude_prune([w1, w2], [m1, m2], 0.5)
    np.testing.assert_array_equal(np_(new1), [0, 1, 1, 0])
    np.testing.assert_array_equal(np_(new2), [[1, 0], [0, 1]])


def test_global_magnitude_prune_never_regrows():
    w = np.array([5.0, 4.0, 3.0, 2.0], dtype="float32")
    m = np.array([0, 0, 1, 1], dtype="float32")
    (new,) = masks.global_magnitude_prune([w], [m], 0.75)  # asks for 3, only 2 active
    np.testing.assert_array_equal(np_(new), m)


def test_death_regrow_hand_example():
    w = np.array([0.9, 0.1, 0.5, 0.2, 0.0, 0.0], dtype="float32")
    m = np.array([1, 1, 1, 1, 0, 0], dtype="float32")
    g = np.array([0.0, 0.0, 0.0, 0.0, 0.3, 0.7], dtype="float32")
    # ratio 0.5 of 4 active -> drop 2 smallest |w| (0.1, 0.2), grow 2 largest |g| among the rest
    new = np_(masks.death_regrow(w, m, g, 0.5))
    np.testing.assert_array_equal(new, [1, 0, 1, 0, 1, 1])
    # a dropped weight with a large dense gradient can come straight back
    g2 = np.array([0.0, 0.9, 0.0, 0.0, 0.3, 0.1], dtype="float32")
    new2 = np_(masks.death_regrow(w, m, g2, 0.5))
    np.testing.assert_array_equal(new2, [1, 1, 1, 0, 1, 0])
    assert new.sum() == m.sum() == new2.sum()


def test_death_regrow_ratio_zero_is_identity():
    rng = np.random.default_rng(0)
    w, g = rng.normal(size=(3, 3, 4, 5)).astype("float32"), rng.normal(size=(3, 3, 4, 5))
    m = (rng.random((3, 3, 4, 5)) < 0.3).astype("float32")
    np.testing.assert_array_equal(np_(masks.death_regrow(w, m, g.astype("float32"), 0.0)), m)


def test_nest_within_keeps_count_and_inside_entries():
    w = np.array([0.1, 0.9, 0.8, 0.3, 0.5, 0.2], dtype="float32")
    parent = np.array([1, 1, 0, 1, 1, 0], dtype="float32")
    child = np.array([1, 0, 1, 0, 0, 0], dtype="float32")  # entry 2 is outside the parent
    (new,) = masks.nest_within([w], [child], [parent])
    new = np_(new)
    assert new.sum() == 2
    assert new[0] == 1  # inside entries stay
    np.testing.assert_array_equal(new, [1, 1, 0, 0, 0, 0])  # replaced by the largest parent |w|
    assert np.all(new <= parent)
    (same,) = masks.nest_within([w], [np.array([0, 1, 0, 1, 0, 0], "float32")], [parent])
    np.testing.assert_array_equal(np_(same), [0, 1, 0, 1, 0, 0])


def test_random_mask_exact_density():
    m = np_(masks.random_mask((10, 10), 0.37, seed=3))
    assert m.sum() == 37


def test_layer_floors():
    assert masks.layer_floors([1000, 50, 3], 0.005) == [5, 1, 1]
    assert masks.layer_floors([1000, 50], 0.0) is None


def test_global_magnitude_prune_floors_keep_a_layer_it_would_empty():
    big = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], dtype="float32")
    small = np.array([0.01, -0.03, 0.02, 0.0], dtype="float32")  # all below every |big|
    ones = [np.ones(6, "float32"), np.ones(4, "float32")]
    # density 0.3 of 10 -> keep 3: without a floor the small layer is emptied
    a, b = masks.global_magnitude_prune([big, small], ones, 0.3)
    np.testing.assert_array_equal(np_(b), [0, 0, 0, 0])
    # floors [1, 2]: the small layer keeps its 2 largest |w| (0.03, 0.02); the total stays 3
    a, b = masks.global_magnitude_prune([big, small], ones, 0.3, floors=[1, 2])
    np.testing.assert_array_equal(np_(b), [0, 1, 1, 0])
    np.testing.assert_array_equal(np_(a), [1, 0, 0, 0, 0, 0])
    # a floor larger than a layer's active entries keeps those only (never regrows)
    a, b = masks.global_magnitude_prune(
        [big, small], [np.ones(6, "float32"), np.array([0, 0, 0, 1], "float32")], 0.3,
        floors=[1, 3])
    np.testing.assert_array_equal(np_(b), [0, 0, 0, 1])
    assert np_(a).sum() == 2


def test_nest_within_floors_keep_a_child_layer_non_empty():
    w1 = np.array([0.9, 0.8, 0.7], dtype="float32")
    w2 = np.array([0.01, 0.02, 0.03], dtype="float32")
    parent1, parent2 = np.ones(3, "float32"), np.array([1, 1, 0], "float32")
    child1 = np.array([1, 1, 0], "float32")
    child2 = np.array([0, 0, 1], "float32")  # its only entry is outside the parent
    n1, n2 = masks.nest_within([w1, w2], [child1, child2], [parent1, parent2])
    np.testing.assert_array_equal(np_(n2), [0, 0, 0])  # replaced by 0.7 of the first layer
    n1, n2 = masks.nest_within([w1, w2], [child1, child2], [parent1, parent2], floors=[1, 1])
    np.testing.assert_array_equal(np_(n2), [0, 1, 0])  # the largest parent entry of layer 2
    np.testing.assert_array_equal(np_(n1), [1, 1, 0])
