"""AGENT (keras_ast/agent.py): the hand-computed cases of its specification (tau arithmetic,
the first-epoch identity, the corrected gradient, unbiasedness with frozen weights, c = 0 equal
to training without AGENT, the snapshot refresh leaving BatchNorm alone, masking), its FLOPs, and
a NumPy re-implementation of the official code's update rule on a 2-layer MLP."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ast
from conftest import compile_ast, tiny_cnn
from keras_ast import agent as agent_lib
from keras_ast import step as step_lib
from keras_ast import tf_engine


def _batches(x, y, batch=32):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


# ----------------------------------------------------------------------------- arithmetic
def test_tau_arithmetic_by_hand():
    """L_cur = [1, 2, 3], L_prev = [2, 4, 6]: Cov = 2, Var = 4 (ddof 1), tau_cur = 0.5;
    from tau^ = 0.1: 0.7 * 0.1 + 0.3 * 0.5 = 0.22, c = 0.1 * 0.22 = 0.022."""
    tau_cur = agent_lib.tau_estimate([1, 2, 3], [2, 4, 6])
    assert tau_cur == pytest.approx(0.5)
    tau = agent_lib.updated_tau(0.1, tau_cur, 0.3)
    assert tau == pytest.approx(0.22)
    assert keras_ast.Agent().gamma * tau == pytest.approx(0.022)
    # undefined estimates leave tau^ alone
    assert agent_lib.tau_estimate([1], [2]) is None
    assert agent_lib.tau_estimate([1, 2], [3, 3]) is None
    assert agent_lib.updated_tau(0.1, None, 0.3) == 0.1
    with pytest.raises(ValueError, match="alpha must be in"):
        keras_ast.Agent(alpha=0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        keras_ast.Agent(gamma=-1)


def test_corrected_gradient_by_hand():
    """g = [1, 0], q = [.5, .5], mu~ = [.2, .2], c = 0.022: g~ = g + c (mu~ - q) =
    [0.9934, -0.0066]; restricted to m = [1, 0]: [0.9934, 0]."""
    config = step_lib.StepConfig(num_subnets=1, updater=None, window=1, gc="off",
                                 gc_reference="corrected", gc_projection="masked",
                                 dense_macs=0.0, sparse_macs=(2.0,))
    g = tf.constant([1.0, 0.0])
    term = 0.022 * (tf.constant([0.2, 0.2]) - tf.constant([0.5, 0.5]))
    for mask, expected in (([1.0, 1.0], [0.9934, -0.0066]), ([1.0, 0.0], [0.9934, 0.0])):
        m = tf.constant(mask)
        result = step_lib.ast_step(config, [g * m], [g], {}, [m], [m[None]], [g], [],
                                   tf.constant(0, "int64"), tf.constant(0), tf.constant(4.0),
                                   agent_terms=[term])
        np.testing.assert_allclose(result.grads[0], expected, atol=1e-7)
        # FLOPs: the step (3 x 2 x 2 MACs x density) plus the snapshot pass (the same again)
        assert float(result.flops) == pytest.approx(2 * 4 * 3 * 2 * 2 * np.mean(mask))


# ------------------------------------------------------------------------ on the model
def _agent_model(sparsities=(0.5,), agent=True, width=8):
    return compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(width=width), list(sparsities),
                                                     agent=agent), momentum=0.0)


def test_first_epoch_identity_and_snapshot_refresh_leave_batchnorm_alone(digits_batches):
    """The first pass compares the model with itself: tau_cur = 1, tau^ = 0.7 * 0.1 + 0.3 =
    0.37, c = 0.037. Afterwards the snapshot equals the live weights, and the pass changed no
    BatchNorm moving statistic and no weight."""
    x, y = digits_batches
    model = _agent_model((0.5, 0.8))
    before = {v.path: np.array(v) for v in model.network.variables}
    result = model.agent_epoch_pass(_batches(x, y))
    assert result["batches"] == 8
    assert result["tau_cur"] == pytest.approx(1.0, abs=1e-6)
    assert result["tau"] == pytest.approx(0.37, abs=1e-6)
    assert float(model.agent_coef.numpy()) == pytest.approx(0.037, abs=1e-7)
    after = {v.path: np.array(v) for v in model.network.variables}
    for path, value in before.items():  # BN moving statistics included
        np.testing.assert_array_equal(value, after[path], err_msg=path)
    for snapshot, variable in zip(model.agent_snapshot, model.trainable_variables):
        np.testing.assert_array_equal(np.array(snapshot), np.array(variable))
    assert int(model.agent_passes.numpy()) == 1


def test_unbiased_over_an_epoch_with_frozen_weights(digits_batches):
    """With the weights at the snapshot (no step between the pass and the corrections), q_b =
    g_b, so every corrected gradient is the convex combination (1 - c) g_b + c mu~, and the
    corrections of the N batches sum to zero: sum_b g~_b = sum_b g_b."""
    x, y = digits_batches
    model = _agent_model((0.0,))  # K = 1
    model.agent_epoch_pass(_batches(x, y))
    model.agent_coef.assign(0.3)  # any c
    c = 0.3
    variables = model.trainable_variables
    total, mu = None, [np.array(m)[0] for m in model.agent_mu]
    for xb, yb in _batches(x, y):
        terms = [np.array(t) for t in model._agent_terms(tf.constant(0), xb, yb, None)]
        _, g = tf_engine.stateless_gradients(model, variables, tf.constant(0), xb, yb,
                                                       None)
        for t, gi, m in zip(terms, g, mu):
            np.testing.assert_allclose(np.array(gi) + t, (1 - c) * np.array(gi) + c * m,
                                       atol=1e-6)
        total = terms if total is None else [a + b for a, b in zip(total, terms)]
    for t in total:
        np.testing.assert_allclose(t, 0.0, atol=1e-6)


def _fit(agent, x, y, epochs=3, callbacks=()):
    keras.utils.set_random_seed(3)
    model = compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.8], agent=agent),
                        momentum=0.9, l2=5e-4)
    prune = keras_ast.PruneRegrow(frequency=8, adjustment_period=3, end_step=16)
    extra = [keras_ast.AgentPass(_batches(x, y))] if agent is not None else []
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=False,
                        callbacks=[prune, *extra, *callbacks])
    return model, history


def test_c_zero_is_training_without_agent_bit_for_bit(digits_batches):
    """gamma = 0: the passes run, c stays 0, and every weight, mask and optimizer slot equals
    the run without AGENT bit for bit (AST-GC, K = 2, mask updates, momentum, L2)."""
    x, y = digits_batches
    plain, _ = _fit(None, x, y)
    zero, history = _fit(keras_ast.Agent(gamma=0.0), x, y)
    assert history.history["agent_coef"] == [0.0, 0.0, 0.0]
    assert history.history["agent_tau"][0] == pytest.approx(0.37, abs=1e-6)
    plain_values = {v.path: np.array(v) for v in plain.network.variables}
    zero_values = {v.path: np.array(v) for v in zero.network.variables}
    assert plain_values.keys() == zero_values.keys()
    for path, value in plain_values.items():
        np.testing.assert_array_equal(value, zero_values[path], err_msg=path)
    for a, b in zip(plain.optimizer.variables, zero.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=a.path)


def test_agent_flops_are_ten_thirds_of_the_baseline_with_fixed_masks(digits_batches):
    """With masks that do not change (no updater), each step of AGENT costs two passes of the
    step and each batch of the epoch pass 4/3 of one: (2 + 4/3) = 10/3 of the baseline."""
    x, y = digits_batches
    results = []
    for agent in (None, True):
        keras.utils.set_random_seed(3)
        model = _agent_model((0.5,), agent=agent)
        extra = [keras_ast.AgentPass(_batches(x, y))] if agent else []
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False, callbacks=extra)
        results.append(model.training_flops["total"])
    assert results[1] / results[0] == pytest.approx(10 / 3, rel=1e-9)


def test_corrections_stay_inside_the_subnet_mask(digits_batches):
    """Plain SGD (no momentum, no L2), a large c: a kernel entry outside both sub-nets' masks
    never changes, with AGENT as without."""
    x, y = digits_batches
    model = _agent_model((0.5, 0.8), agent=keras_ast.Agent(gamma=5.0))
    rng = np.random.default_rng(0)
    for layer in model.sparse_layers:
        layer.masks.assign((rng.random(layer.masks.shape) < 0.4).astype("float32"))
    unused = {layer.name: np.array(layer.masks).max(axis=0) == 0 for layer in model.sparse_layers}
    before = {layer.name: np.array(layer.shared_kernel) for layer in model.sparse_layers}
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False,
              callbacks=[keras_ast.AgentPass(_batches(x, y))])
    assert float(model.agent_coef.numpy()) > 0.5
    for layer in model.sparse_layers:
        after = np.array(layer.shared_kernel)
        np.testing.assert_array_equal(after[unused[layer.name]],
                                      before[layer.name][unused[layer.name]])
        assert not np.array_equal(after, before[layer.name])


def test_agent_refuses_loss_scaling_and_a_fit_without_its_pass(digits_batches):
    x, y = digits_batches
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _agent_model((0.5,))
        with pytest.raises(ValueError, match="AGENT .* mixed precision are not supported"):
            model.fit(x, y, batch_size=32, epochs=1, verbose=0,
                      callbacks=[keras_ast.AgentPass(_batches(x, y))])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = _agent_model((0.5,))
    with pytest.raises(ValueError, match="needs keras_ast.AgentPass"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)


# ------------------------------------------------------------ NumPy re-implementation
def _numpy_agent(params, x, y, lr, epochs, batch, alpha=0.3, gamma=0.1, tau0=0.1):
    """The official code's rule (A-RigL's main.py / train_helper.SGD.step) for a 2-layer ReLU
    MLP with mean softmax cross-entropy, plain SGD, K = 1, fixed batches."""
    def loss_and_grads(p, xb, yb):
        w1, b1, w2, b2 = p
        z = xb @ w1 + b1
        h = np.maximum(z, 0.0)
        logits = h @ w2 + b2
        logits = logits - logits.max(axis=1, keepdims=True)
        prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        n = len(xb)
        loss = -np.mean(np.log(prob[np.arange(n), yb]))
        d = prob.copy()
        d[np.arange(n), yb] -= 1.0
        d /= n
        gw2, gb2 = h.T @ d, d.sum(axis=0)
        dh = (d @ w2.T) * (z > 0)
        return loss, [xb.T @ dh, dh.sum(axis=0), gw2, gb2]

    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
    snapshot, tau = [p.copy() for p in params], tau0
    for _ in range(epochs):
        current, previous, mu = [], [], [np.zeros_like(p) for p in params]
        for xb, yb in batches:  # the first loop
            loss, g = loss_and_grads(params, xb, yb)
            current.append(loss)
            previous.append(loss_and_grads(snapshot, xb, yb)[0])
            mu = [m + gi for m, gi in zip(mu, g)]
        mu = [m / len(batches) for m in mu]
        tau_cur = np.cov(current, previous, ddof=1)[0, 1] / np.var(previous, ddof=1)
        tau = (1 - alpha) * tau + alpha * tau_cur
        c = gamma * tau
        snapshot = [p.copy() for p in params]
        for xb, yb in batches:
            _, g = loss_and_grads(params, xb, yb)
            _, q = loss_and_grads(snapshot, xb, yb)
            params = [p - lr * (gi + c * (m - qi)) for p, gi, m, qi in zip(params, g, mu, q)]
    return params, tau


def test_matches_a_numpy_reimplementation_over_three_epochs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = rng.integers(0, 3, size=48).astype("int32")
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(5, activation="relu", name="h")(inputs)
    network = keras.Model(inputs, keras.layers.Dense(3, name="out")(hidden))
    model = keras_ast.ASTModel.from_model(network, [0.0], agent=keras_ast.Agent(gamma=0.5))
    model.compile(optimizer=keras_ast.SGD(0.2, momentum=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    params = [np.array(v, np.float64) for v in model.trainable_variables]
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False,
              callbacks=[keras_ast.AgentPass(_batches(x, y, 16))])
    expected, tau = _numpy_agent(params, x.astype(np.float64), y, 0.2, 3, 16, gamma=0.5)
    for variable, value in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(np.array(variable), value, atol=1e-5, err_msg=variable.path)
    assert float(model.agent_tau.numpy()) == pytest.approx(tau, abs=1e-5)


# --------------------------------------------------------------------------- resume
def _resumable(directory, kill_at=None):
    from keras_ast import checkpoint
    from keras_ast.data import load_digits_arrays
    from keras_ast.data.stream import in_memory_source
    from test_resume import _KillAt

    keras.backend.clear_session()
    keras.utils.set_random_seed(5)
    split = load_digits_arrays(seed=0)
    source = in_memory_source((split.x_train[:512], split.y_train[:512]), 64, seed=9)
    model = compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.8], agent=True),
                        l2=5e-4)
    backup = checkpoint.BackupAndRestore(directory, save_every=3, verbose=0)
    callbacks = [keras_ast.PruneRegrow(frequency=6, adjustment_period=3, end_step=12),
                 keras_ast.AgentPass(lambda epoch: source.epochs(epoch, epoch + 1))]
    if kill_at:
        callbacks.append(_KillAt(kill_at))
    start, _ = checkpoint.resume_fit(model, source, 3, backup, callbacks=callbacks, verbose=0)
    return model, start


def test_a_killed_run_with_agent_resumes_bit_exactly(tmp_path):
    """Killed in epoch 2 after its pass; resumed from step 12 (the snapshot, mean gradients,
    tau and the pass count come back with the checkpoint, so the pass is not repeated): every
    variable equals the uninterrupted run's."""
    from test_resume import _Kill, _variables

    expected, _ = _resumable(tmp_path / "ref")
    with pytest.raises(_Kill):
        _resumable(tmp_path / "run", kill_at=13)
    resumed, start = _resumable(tmp_path / "run")
    assert start == 12
    assert int(resumed.agent_passes.numpy()) == 3
    a, b = _variables(expected), _variables(resumed)
    assert any("agent_snapshot" in p for p in a) and any("agent_mu" in p for p in a)
    for path in a:
        np.testing.assert_array_equal(b[path], a[path], err_msg=path)


def test_agent_is_kept_in_keras_files(tmp_path, digits_batches):
    x, y = digits_batches
    model = _agent_model((0.5,), agent=keras_ast.Agent(alpha=0.5, gamma=0.2, tau0=0.3))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False,
              callbacks=[keras_ast.AgentPass(_batches(x, y))])
    model.save(tmp_path / "agent.keras")
    loaded = keras.saving.load_model(tmp_path / "agent.keras")
    assert loaded.agent.get_config() == {"alpha": 0.5, "gamma": 0.2, "tau0": 0.3}
    assert float(loaded.agent_tau.numpy()) == pytest.approx(float(model.agent_tau.numpy()))
    for a, b in zip(model.agent_snapshot, loaded.agent_snapshot):
        np.testing.assert_array_equal(np.array(a), np.array(b))
