"""recalibrate_batchnorm: the mean of the sub-net's batch statistics, nothing else touched."""

import keras
import numpy as np
import pytest

import keras_ast
from keras_ast.batchnorm import recalibrate_batchnorm
from keras_ast.layers import SwitchableBatchNormalization

from conftest import compile_ast, random_masks, tiny_cnn


def _model():
    model = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.8], gc="off")
    random_masks(model, seed=3)
    compile_ast(model)
    return model


def _state(model):
    return {v.path: np.asarray(v).copy() for v in model.variables}


def test_recalibration_is_the_mean_of_batch_statistics(digits):
    model = _model()
    model.fit(digits.x_train[:128], digits.y_train[:128], batch_size=32, epochs=1, verbose=0)
    batches = [digits.x_train[i:i + 32] for i in range(0, 96, 32)]
    before = _state(model)
    # Independently: the input of each switchable BN under sub-net 1 in training mode (the
    # earlier layers normalise with batch statistics, as in the recalibration pass).
    model.set_subnet(1)
    switchable = [layer for layer in model.network.layers
                  if isinstance(layer, SwitchableBatchNormalization)]
    probe = keras.Model(model.network.inputs[0], [layer.input for layer in switchable])
    expected = [[0.0, 0.0] for _ in switchable]
    for x in batches:
        for slot, value in zip(expected, probe(x, training=True)):
            value = np.asarray(value, np.float64)
            slot[0] += value.mean(axis=(0, 1, 2)) / len(batches)
            slot[1] += value.var(axis=(0, 1, 2)) / len(batches)
    for variable, value in before.items():  # the probe's side effects undone
        next(v for v in model.variables if v.path == variable).assign(value)
    model.set_subnet(0)
    before = _state(model)

    used = recalibrate_batchnorm(model, batches + batches, subnet=1, batches=3)
    assert used == 3
    after = _state(model)
    for layer, (mean, variance) in zip(switchable, expected):
        np.testing.assert_allclose(np.asarray(layer.moving_mean[1]), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(layer.moving_variance[1]), variance, rtol=1e-4,
                                   atol=1e-5)
        # Sub-net 0's copy is untouched.
        np.testing.assert_array_equal(np.asarray(layer.moving_mean[0]),
                                      before[layer.moving_mean.path][0])
        np.testing.assert_array_equal(np.asarray(layer.moving_variance[0]),
                                      before[layer.moving_variance.path][0])
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    assert changed == {layer.moving_mean.path for layer in switchable} | {
        layer.moving_variance.path for layer in switchable}  # nothing else (stem BN, kernels)
    assert int(np.asarray(model.eval_subnet)) == 0  # the chosen sub-net is restored
    assert [layer.momentum for layer in switchable] == [0.9] * len(switchable)


def test_recalibration_errors_leave_the_model_as_it_was(digits):
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match="no batch"):
        recalibrate_batchnorm(model, [], subnet=0)
    with pytest.raises(ValueError, match="batches must be >= 1"):
        recalibrate_batchnorm(model, [digits.x_train[:8]], subnet=0, batches=0)

    def failing():
        yield digits.x_train[:16]
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        recalibrate_batchnorm(model, failing(), subnet=1)
    after = _state(model)
    assert all(np.array_equal(before[p], after[p]) for p in before)
