"""Gradient correction on hand-made gradients."""

import numpy as np
import pytest
from keras import ops

from keras_ast import correction


def np_(x):
    return ops.convert_to_numpy(x)


def test_projection_matches_formula_layerwise():
    g1, h1 = np.array([1.0, 2.0, -1.0], "float32"), np.array([-1.0, 0.0, 1.0], "float32")
    g2, h2 = np.array([[1.0, 1.0]], "float32"), np.array([[1.0, 0.0]], "float32")  # no conflict
    (c1, c2), stats = correction.project([g1, g2], [h1, h2], "layerwise")
    # g1.h1 = -2 < 0: g1 - (-2 / 2) h1 = [0, 2, 0]
    np.testing.assert_allclose(np_(c1), [0.0, 2.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(np_(c2), g2)
    assert abs(float(np.dot(np_(c1), h1))) < 1e-6
    assert float(stats.conflict) == 0.5
    assert (float(stats.negative), float(stats.positive)) == (1.0, 1.0)
    expected_cos = np.mean([-2 / np.sqrt(6 * 2), 1 / np.sqrt(2)])
    assert abs(float(stats.cosine) - expected_cos) < 1e-6


def test_projection_matches_formula_global():
    g1, h1 = np.array([1.0, 2.0, -1.0], "float32"), np.array([-1.0, 0.0, 1.0], "float32")
    g2, h2 = np.array([[1.0, 1.0]], "float32"), np.array([[1.0, 0.0]], "float32")
    (c1, c2), stats = correction.project([g1, g2], [h1, h2], "global")
    dot, norm = -2.0 + 1.0, 2.0 + 1.0  # one vector over both kernels
    np.testing.assert_allclose(np_(c1), g1 - dot / norm * h1, rtol=1e-6)
    np.testing.assert_allclose(np_(c2), g2 - dot / norm * h2, rtol=1e-6)
    total = np.dot(np_(c1), h1) + np.sum(np_(c2) * h2)
    assert abs(total) < 1e-6
    assert float(stats.conflict) == 1.0
    assert (float(stats.negative), float(stats.positive)) == (1.0, 0.0)  # one global product


def test_disabled_leaves_gradients_unchanged():
    g, h = np.array([1.0, -1.0], "float32"), np.array([-1.0, 1.0], "float32")
    (c,), stats = correction.project([g], [h], "layerwise", enabled=False)
    np.testing.assert_array_equal(np_(c), g)
    (c,), _ = correction.project([g], [h], "layerwise", enabled=ops.convert_to_tensor(False))
    np.testing.assert_array_equal(np_(c), g)


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_zero_reference_gives_no_nan(scope):
    g, h = np.array([1.0, -1.0], "float32"), np.zeros(2, "float32")
    (c,), stats = correction.project([g], [h], scope)
    np.testing.assert_array_equal(np_(c), g)
    assert np.isfinite(float(stats.cosine)) and float(stats.conflict) == 0.0


def test_unknown_modes():
    with pytest.raises(ValueError, match="'sideways'"):
        correction.check_mode("sideways")
    with pytest.raises(ValueError, match="'old'"):
        correction.check_mode("layerwise", "old")
