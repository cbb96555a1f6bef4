"""`keras_ast.step.ast_step` on hand-computed tensors, and the model owning its updater."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ast
from conftest import compile_ast, tiny_cnn
from keras_ast import step as step_lib
from keras_ast import updaters


def _config(updater=None, gc="layerwise", projection="masked"):
    return step_lib.StepConfig(num_subnets=2, updater=updater, window=2, gc=gc,
                               gc_reference="corrected", gc_projection=projection,
                               dense_macs=10.0, sparse_macs=(4.0,))


def _call(config, subnet, g, h, mask, batch=8.0):
    g, h, mask = (tf.constant(np.asarray(v, "float32")) for v in (g, h, mask))
    rows = tf.stack([mask, mask])
    return step_lib.ast_step(config, [g], [g], {}, [mask], [rows], [tf.ones_like(g)], [h],
                             tf.constant(1, "int64"), tf.constant(subnet), tf.constant(batch))


def test_gradient_correction_by_hand():
    """g = (1, -1, 0), h = (-1, 0, 5), m = (1, 1, 0): masked h_k = (-1, 0, 0), g.h = -1 < 0,
    g' = g - (-1 / 1) h_k = (0, -1, 0). With the full h: ||h||^2 = 26, g' = g + h / 26."""
    g, h, m = [1.0, -1.0, 0.0], [-1.0, 0.0, 5.0], [1.0, 1.0, 0.0]
    result = _call(_config(), 1, g, h, m)
    np.testing.assert_allclose(result.grads[0], [0.0, -1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(result.refs[0], [0.0, -1.0, 0.0], atol=1e-7)  # "corrected"
    # steps, corrected_steps, products, negative, positive, cosine sum (-1 / (sqrt 2 * 1)).
    np.testing.assert_allclose(result.gc_row, [1, 1, 1, 1, 0, -1 / math.sqrt(2)], rtol=1e-6)
    full = _call(_config(projection="full"), 1, g, h, m)
    np.testing.assert_allclose(full.grads[0], np.array(g) + np.array(h) / 26.0, rtol=1e-6)
    # FLOPs: batch 8 x 3 (forward + backward) x 2 x (10 dense + 4 x density 2/3) MACs.
    np.testing.assert_allclose(float(result.flops), 8 * 3 * 2 * (10 + 4 * 2 / 3))
    # The first sub-net of a group is not corrected; nothing is counted.
    first = _call(_config(), 0, g, h, m)
    np.testing.assert_array_equal(first.grads[0], g)
    np.testing.assert_array_equal(first.gc_row, np.zeros(6))
    # Without an updater there are no new masks; without GC, no references.
    assert result.rows is None and not bool(result.updated)
    assert _call(_config(gc="off"), 1, g, h, m).refs is None


class _DueUpdater:
    """A test double: an update is due at every step; it empties sub-net 1's mask."""

    def __init__(self, needs_dense_gradient):
        self.needs_dense_gradient = needs_dense_gradient

    def is_due(self, step, subnet, window):
        return tf.constant(True)

    def new_masks(self, step, subnet, weights, rows, dense_grads):
        return [tf.stack([r[0], tf.zeros_like(r[1])]) for r in rows]


def test_flops_of_a_mask_update_step_count_the_dense_kernel_gradient():
    """Per example, an ordinary step costs 3 x 2 x (10 + 4 d) FLOPs; a step whose update reads
    the dense gradient computes the kernel gradient over all 4 MACs of the pruned layer:
    2 x (3 x (10 + 4 d) + 4 (1 - d)), with d the density of the masks the pass used (2/3),
    not of the new masks (0)."""
    g, h, m = [1.0, -1.0, 0.0], [-1.0, 0.0, 5.0], [1.0, 1.0, 0.0]
    used = 10 + 4 * 2 / 3
    dense = _call(_config(updater=_DueUpdater(True)), 1, g, h, m)
    assert bool(dense.updated)
    np.testing.assert_array_equal(dense.masks[0], [0, 0, 0])
    np.testing.assert_allclose(float(dense.flops), 8 * 2 * (3 * used + 4 * (1 - 2 / 3)))
    masked = _call(_config(updater=_DueUpdater(False)), 1, g, h, m)
    np.testing.assert_allclose(float(masked.flops), 8 * 2 * 3 * used)
    assert updaters.GraNet().needs_dense_gradient and updaters.RigL().needs_dense_gradient
    assert not updaters.GraNet(regrow_gradient="masked").needs_dense_gradient
    assert not updaters.SET().needs_dense_gradient and not updaters.Static().needs_dense_gradient


def test_ast_step_touches_no_variable():
    """ast_step under a tf.function creates and writes no variable (the model assigns)."""
    traced = tf.function(lambda: _call(_config(), 1, [1.0, -1.0], [-1.0, 0.0], [1.0, 1.0]).grads)
    graph = traced.get_concrete_function().graph
    ops = {op.type for op in graph.get_operations()}
    assert not ops & {"AssignVariableOp", "AssignAddVariableOp", "VarHandleOp"}, ops


def test_model_owns_an_updater_from_compile_and_keeps_it_in_keras_files(tmp_path,
                                                                         digits_batches):
    x, y = digits_batches
    model = keras_ast.ASTModel.from_model(tiny_cnn(width=8), [0.5, 0.8])
    compile_ast(model)
    static = updaters.get("static", distribution="erk", seed=3)
    model.compile(optimizer=keras_ast.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  updater=static)
    assert model.updater is static
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # no callback: the model's updater
    np.testing.assert_allclose([model.subnet_sparsity(k) for k in range(2)], [0.5, 0.8],
                               atol=1e-3)
    assert model.updater is static  # still the model's after fit
    with pytest.raises(ValueError, match="already owns a mask updater"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[keras_ast.PruneRegrow(frequency=4)])
    path = tmp_path / "owned.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.updater, updaters.Static)
    assert updaters.serialize(loaded.updater) == updaters.serialize(static)
    # A PruneRegrow given to fit is the model's for that fit only.
    other = compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(width=8), [0.5]))
    other.fit(x, y, batch_size=64, epochs=2, verbose=0,
              callbacks=[keras_ast.PruneRegrow(frequency=4, adjustment_period=0, end_step=4)])
    assert other.updater is None
    assert other.get_config()["updater"] is None
    with pytest.raises(TypeError, match="updater must be"):
        other.set_updater(42)
