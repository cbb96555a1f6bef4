"""Never silently wrong: a step with non-finite gradients is skipped whole (no mask update, no
GC reference, no statistic, no optimizer update) and counted; mixed_float16 trains AST-GC."""

import keras
import numpy as np
import pytest

import keras_ast
from conftest import compile_ast, tiny_cnn


class _Snapshots(keras.callbacks.Callback):
    """Variables (weights, masks, GC references, optimizer slots) after every step."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def _snap(self):
        model = self.model
        variables = list(model.variables) + list(model.optimizer.variables)
        return {v.path: np.array(v) for v in variables}

    def on_train_begin(self, logs=None):
        self.steps.append(self._snap())

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(self._snap())


def _assert_only_counters_moved(before, after):
    """Between two snapshots only the counters moved: the step counter, the active sub-net, the
    optimizer's iteration, nonfinite_steps and the FLOPs / examples trained (the work was
    done)."""
    changed = sorted(k for k in before
                     if not np.array_equal(before[k], after[k], equal_nan=True))
    assert set(changed) <= {"ast_model/iteration", "ast_model/active_subnet", "ast_sgd/iteration",
                            "ast_model/train_flops", "ast_model/train_examples",
                            "ast_model/nonfinite_steps"}, changed


def test_a_step_with_nan_gradients_changes_nothing_and_is_counted(digits_batches):
    x, y = digits_batches
    x = x.copy()
    x[2 * 32 + 5, 3, 3, 0] = np.nan  # batch 2 of 8 (batch size 32): steps 2 and 10
    model = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.7, 0.9])
    compile_ast(model, momentum=0.9, l2=5e-4)
    # K = 3, frequency 6, shifts 0 / 1 / 2: sub-net 2's first update is due at step 2.
    prune = keras_ast.PruneRegrow(frequency=6, adjustment_period=1, end_step=12)
    snaps = _Snapshots()
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False,
                        callbacks=[prune, snaps])
    _assert_only_counters_moved(snaps.steps[2], snaps.steps[3])  # around step 2
    assert int(model.nonfinite_steps.numpy()) == 2
    for path, value in snaps.steps[-1].items():
        assert np.all(np.isfinite(value)), path
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["nonfinite_steps"] == [1, 2]
    # Sub-net 2's update due at step 2 was skipped (not made up later: the next one, at step
    # 8, targets the schedule's sparsity at that step anyway).
    masks = [s["conv1/masks"][2] for s in snaps.steps]  # steps[i]: before step i
    assert np.array_equal(masks[2], masks[3]) and not np.array_equal(masks[8], masks[9])
    # 8 steps per epoch: the NaN batch is step 2 (sub-net 2) and step 10 (sub-net 1); each
    # ran 5 times, and the skipped step is not counted.
    stats = model.gradient_statistics()
    assert stats[1]["steps"] == 4 and stats[2]["steps"] == 4


def test_mixed_float16_trains_ast_gc(digits_batches):
    x, y = digits_batches
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.8])
        compile_ast(model)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        snaps = _Snapshots()
        history = model.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False,
                            callbacks=[keras_ast.PruneRegrow(frequency=8, adjustment_period=4,
                                                             end_step=12), snaps])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    np.testing.assert_allclose([model.subnet_sparsity(k) for k in range(2)], [0.5, 0.8],
                               atol=1e-3)
    assert model.gradient_statistics()[1]["steps"] > 0
    # The BN copy of the sub-net not trained keeps its values (frozen, as in float32): step
    # 5 trains sub-net 1, so sub-net 0's row of bn1/gamma does not move.
    gamma = [p for p in snaps.steps[0] if p.endswith("bn1/gamma")][0]
    assert np.array_equal(snaps.steps[5][gamma][0], snaps.steps[6][gamma][0])
    assert not np.array_equal(snaps.steps[5][gamma][1], snaps.steps[6][gamma][1])


class _PoisonSubnet(keras.layers.Layer):
    """Multiplies its input by inf when sub-net `subnet` runs at step `step` (the model's
    counters are given after the ASTModel exists): only that sub-net's pass turns non-finite."""

    def __init__(self, subnet, step, **kwargs):
        super().__init__(**kwargs)
        self.target = (subnet, step)
        self.counters = None

    def call(self, x):
        if self.counters is None:
            return x
        active, iteration = self.counters()
        bad = keras.ops.logical_and(active == self.target[0], iteration == self.target[1])
        return x * keras.ops.where(bad, float("inf"), 1.0)  # (where(bad, x * inf, x) has a
        # NaN gradient on every step: 0 * inf in the branch not taken)


def test_joint_training_one_nonfinite_subnet_stops_every_subnets_update(digits_batches):
    """Joint training runs all K sub-nets in one step. At step 6 sub-net 0's mask update is due
    and only sub-net 2's pass is non-finite: the step changes no mask of any sub-net (sub-net
    0's update is skipped too) and no weight, and is counted once."""
    x, y = digits_batches
    base = tiny_cnn()
    poison = _PoisonSubnet(2, 6, name="poison")
    network = keras.Model(base.input, poison(base.output))
    model = keras_ast.ASTModel.from_model(network, [0.5, 0.7, 0.9], training="joint", gc="off")
    model.network.get_layer("poison").counters = lambda: (
        model.active_subnet.value, keras.ops.cast(model.iteration.value, "int32"))
    compile_ast(model, momentum=0.9, l2=5e-4)
    # Shifts 0 / 1 / 2, frequency 6: sub-net 0 updates at steps 0, 6, 12, ...
    prune = keras_ast.PruneRegrow(frequency=6, adjustment_period=1, end_step=12)
    snaps = _Snapshots()
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False, callbacks=[prune, snaps])
    _assert_only_counters_moved(snaps.steps[6], snaps.steps[7])  # around step 6
    assert int(model.nonfinite_steps.numpy()) == 1
    # Sub-net 0's masks do change at its next update (step 12), so step 6's was due.
    masks = [s["conv1/masks"][0] for s in snaps.steps]
    assert not np.array_equal(masks[12], masks[13])
