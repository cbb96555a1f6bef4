"""The compiled AST step against a hand-written reference loop, and its invariants."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ast
from conftest import compile_ast, random_masks, tiny_cnn


def _batches(x, y, batch):
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]


def reference_run(model, batches, gc, lr):
    """AST-GC written out by hand: masked forward, masked gradient, GC, plain SGD."""
    K = model.num_subnets
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables
    kernels = {id(layer.shared_kernel): layer for layer in model.sparse_layers}
    h = {id(layer.shared_kernel): np.zeros(layer.shared_kernel.shape, "float32")
         for layer in model.sparse_layers}
    conflicts = 0
    for t, (x, y) in enumerate(batches):
        k = t % K
        model.active_subnet.assign(k)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model.network(x, training=True))
        grads = [np.asarray(tf.convert_to_tensor(g)) for g in tape.gradient(loss, variables)]
        masked = {}
        for v, g in zip(variables, grads):
            if id(v) in kernels:
                masked[id(v)] = g * np.asarray(kernels[id(v)].masks[k])
        if gc != "off" and k > 0:
            refs = {i: h[i] * np.asarray(kernels[i].masks[k]) for i in masked}
            if gc == "layerwise":
                for i, g in masked.items():
                    d = float(np.sum(g * refs[i]))
                    if d < 0:
                        conflicts += 1
                        masked[i] = g - d / float(np.sum(refs[i] ** 2)) * refs[i]
            else:
                d = sum(float(np.sum(masked[i] * refs[i])) for i in masked)
                n = sum(float(np.sum(refs[i] ** 2)) for i in masked)
                if d < 0:
                    conflicts += 1
                    masked = {i: g - d / n * refs[i] for i, g in masked.items()}
        h = {i: g.copy() for i, g in masked.items()}
        for v, g in zip(variables, grads):
            v.assign(np.asarray(v) - lr * masked.get(id(v), g))
    return conflicts


@pytest.mark.parametrize("gc", ["off", "layerwise", "global"])
def test_fit_equals_hand_written_ast_gc(digits_batches, gc):
    x, y = digits_batches
    plain = tiny_cnn()
    models = []
    for _ in range(2):
        model = keras_ast.ASTModel.from_model(plain, [0.3, 0.6, 0.8], gc=gc)
        random_masks(model, seed=7)
        models.append(model)
    fitted, manual = models
    compile_ast(fitted, lr=0.1, momentum=0.0)
    history = fitted.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    conflicts = reference_run(manual, _batches(x, y, 32), gc, lr=0.1)
    for a, b in zip(fitted.network.weights, manual.network.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, err_msg=a.path)
    if gc != "off":
        assert conflicts > 0, "the test data should contain conflicting steps"
        assert history.history["gc_conflict"][0] > 0
        # The in-step counts agree with the hand-written loop's (steps of sub-nets 1 and 2).
        stats = fitted.gradient_statistics()
        assert sum(s["negative"] for s in stats.values()) == conflicts
        per_step = 1 if gc == "global" else len(fitted.sparse_layers)
        for i, s in stats.items():
            steps = len(range(i, len(x) // 32, 3))
            assert s["steps"] == steps and s["products"] == steps * per_step
            assert s["negative"] + s["positive"] == s["products"]  # no exact zeros here
    assert int(fitted.iteration.numpy()) == len(x) // 32


def test_gc_off_equals_k1_code_path_and_first_subnet_never_corrected(digits_batches):
    """Steps of sub-net 0 (the first of each group) are plain SGD even with GC on."""
    x, y = digits_batches
    plain = tiny_cnn()
    on = keras_ast.ASTModel.from_model(plain, [0.3, 0.6], gc="layerwise")
    off = keras_ast.ASTModel.from_model(plain, [0.3, 0.6], gc="off")
    for m in (on, off):
        random_masks(m, seed=3)
        compile_ast(m, lr=0.1, momentum=0.0)
        # Only the first batch: one step of sub-net 0, with a stale (zero) reference.
        m.fit(x[:32], y[:32], batch_size=32, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(on.network.weights, off.network.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The reference now holds sub-net 0's (masked) gradient, non-zero.
    assert any(np.abs(np.asarray(r)).sum() > 0 for r in on.gc_refs)


def test_pruned_weights_get_no_gradient_and_shared_kernel_is_not_zeroed(digits_batches):
    x, y = digits_batches
    model = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.8], gc="layerwise")
    random_masks(model, seed=1)
    compile_ast(model, lr=0.1, momentum=0.0, l2=0.0)
    for step in range(4):
        before = [np.asarray(layer.shared_kernel) for layer in model.sparse_layers]
        k = int(model.iteration.numpy()) % 2
        model.fit(x[step * 32:(step + 1) * 32], y[step * 32:(step + 1) * 32], batch_size=32,
                  epochs=1, shuffle=False, verbose=0)
        for layer, old in zip(model.sparse_layers, before):
            mask = np.asarray(layer.masks[k]) > 0
            new = np.asarray(layer.shared_kernel)
            np.testing.assert_array_equal(new[~mask], old[~mask])  # untouched by sub-net k
            assert np.any(new[mask] != old[mask])
            other = np.asarray(layer.masks[1 - k]) > 0
            # Entries used only by the other sub-net keep their (non-zero) values.
            assert np.all(new[other & ~mask] != 0)


def test_other_subnets_bn_copies_untouched_with_momentum_and_l2(digits_batches):
    x, y = digits_batches
    model = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.8])
    compile_ast(model, lr=0.1, momentum=0.9, l2=5e-4)
    bn = model.network.get_layer("bn1")
    for step in range(4):
        before = [np.asarray(v) for v in bn.weights]
        k = int(model.iteration.numpy()) % 2
        model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)
        for old, v in zip(before, bn.weights):
            np.testing.assert_array_equal(np.asarray(v)[1 - k], old[1 - k], err_msg=v.path)
            assert np.any(np.asarray(v)[k] != old[k]), v.path


def test_coupled_l2_matches_formula():
    v = keras.Variable(np.array([1.0, -2.0], "float32"))
    opt = keras_ast.SGD(0.1, momentum=0.9, l2=0.5)
    opt.build([v])
    g = np.array([0.2, 0.4], "float32")
    opt.apply([g], [v])
    step1 = -0.1 * (g + 0.5 * np.array([1.0, -2.0]))
    np.testing.assert_allclose(np.asarray(v), [1.0, -2.0] + step1, rtol=1e-6)
    w1 = np.asarray(v).copy()
    opt.apply([g], [v])
    step2 = 0.9 * step1 - 0.1 * (g + 0.5 * w1)
    np.testing.assert_allclose(np.asarray(v), w1 + step2, rtol=1e-6)


def test_no_retracing_across_steps_subnets_and_mask_updates(digits):
    model = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.7, 0.9])
    compile_ast(model)
    traces = []
    original = model.train_step

    def counted(data):
        with tf.init_scope():  # read the counter eagerly, at trace time
            traces.append(int(model.iteration.numpy()))
        return original(data)

    model.train_step = counted
    prune = keras_ast.PruneRegrow(frequency=6, adjustment_period=2, end_step=30)
    x, y = digits.x_train[:384], digits.y_train[:384]
    model.fit(x, y, batch_size=32, epochs=4, callbacks=[prune], verbose=0)
    # tf.function traces a second time only when the first trace created variables (Keras
    # builds the compiled metrics lazily); both happen before step 0 runs. After that, 48
    # steps, 3 sub-nets and 12 mask updates add no trace.
    assert 1 <= len(traces) <= 2 and set(traces) == {0}, traces
    assert int(model.iteration.numpy()) == 48
    assert all(abs(model.subnet_sparsity(k) - s) < 1e-3 for k, s in enumerate(model.sparsities))


def test_steps_per_execution_gives_the_same_run(digits):
    """Several steps per compiled call (Keras' steps_per_execution): the sub-net choice, the
    mask updates and GC live in the step itself, so the run is the same as one step per call."""
    x, y = digits.x_train[:384], digits.y_train[:384]
    plain = tiny_cnn()
    runs = []
    for steps_per_execution in (1, 4):
        keras.utils.set_random_seed(7)
        model = keras_ast.ASTModel.from_model(plain, [0.5, 0.7, 0.9])
        model.compile(optimizer=keras_ast.SGD(0.05, momentum=0.9, l2=5e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      steps_per_execution=steps_per_execution)
        prune = keras_ast.PruneRegrow(frequency=6, adjustment_period=2, end_step=30)
        model.fit(x, y, batch_size=32, epochs=3, shuffle=False, callbacks=[prune], verbose=0)
        runs.append(model)
    assert int(runs[1].iteration.numpy()) == 36
    for a, b in zip(runs[0].weights, runs[1].weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=a.path)


def test_kernel_regularizer_still_acts_on_a_mask_update_step(digits_batches):
    """On a step that updates the masks, the kernel gradient is re-masked with the new mask;
    a kernel regularizer's term (it does not pass through W*m) must survive that: with
    momentum 0, entries outside the new mask move by exactly -lr * 2c W (L2(c))."""
    x, y = digits_batches
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv",
                            kernel_regularizer=keras.regularizers.L2(0.01))(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    plain = keras.Model(inputs, keras.layers.Dense(10, name="classifier")(h))
    model = compile_ast(keras_ast.ASTModel.from_model(plain, [0.6]), lr=0.1, momentum=0.0)
    # Random initial masks at 40 %, then an update at step 0 (death and regrowth change them).
    prune = keras_ast.PruneRegrow(frequency=4, adjustment_period=0, end_step=4,
                                  initial_sparsity=0.4, total_steps=16)
    layer = model.network.get_layer("conv")
    before = {}

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            before["kernel"] = np.asarray(layer.shared_kernel).copy()
            before["mask"] = np.asarray(layer.masks[0]).copy()

    model.fit(x[:32], y[:32], batch_size=32, epochs=1, shuffle=False, verbose=0,
              callbacks=[prune, Snapshot()])
    new_mask = np.asarray(layer.masks[0]) > 0
    assert np.any(new_mask != (before["mask"] > 0)), "the step should have changed the mask"
    outside = ~new_mask
    np.testing.assert_allclose(np.asarray(layer.shared_kernel)[outside],
                               before["kernel"][outside] * (1 - 0.1 * 2 * 0.01), rtol=1e-6)
