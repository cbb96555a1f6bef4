"""ASTModel: construction errors, forward equivalence, masks after training, saving, XLA."""

import warnings

import keras
import numpy as np
import pytest

import keras_ast
from conftest import compile_ast, random_masks, tiny_cnn
from keras_ast import layers as ast_layers


# ----------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize("sparsities, match", [
    ([0.5, 1.0], r"\[0, 1\), got 1.0"),
    ([-0.1, 0.5], r"\[0, 1\), got -0.1"),
    ([0.5, 0.5, 0.9], "strictly increasing"),
    ([0.9, 0.5], "strictly increasing"),
    ([], "at least one sub-net"),
])
def test_bad_sparsities(sparsities, match):
    with pytest.raises(ValueError, match=match):
        keras_ast.ASTModel.from_model(tiny_cnn(), sparsities)


def test_bad_gc_mode_and_subnet_count():
    with pytest.raises(ValueError, match="'projective'"):
        keras_ast.ASTModel.from_model(tiny_cnn(), [0.5], gc="projective")
    with pytest.raises(ValueError, match="num_subnets must be an integer >= 1, got 0"):
        keras_ast.sparsify(tiny_cnn(), 0)


def test_no_prunable_layer():
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Conv2D(4, 3)(inputs)  # only a stem
    with pytest.raises(ValueError, match="no prunable layer"):
        keras_ast.ASTModel.from_model(keras.Model(inputs, outputs), [0.5])
    with pytest.raises(ValueError, match=r"\['nope'\] are not layers"):
        keras_ast.sparsify(tiny_cnn(), 2, dense_layers=["nope"])


def test_update_collision_and_too_short_run_fail_before_training(digits_batches):
    x, y = digits_batches
    model = compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.7, 0.9]))
    with pytest.raises(ValueError, match="adjustment_period"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[keras_ast.PruneRegrow(frequency=4, adjustment_period=0)])
    with pytest.raises(ValueError, match="frequency 4 is too short"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[keras_ast.PruneRegrow(frequency=4, adjustment_period=2)])
    with pytest.raises(ValueError, match="would reach its final sparsity"):
        model.fit(x, y, epochs=1, batch_size=32, verbose=0,
                  callbacks=[keras_ast.PruneRegrow(frequency=6, adjustment_period=2,
                                                   end_step=12)])
    assert int(model.iteration.numpy()) == 0  # nothing ran
    with pytest.raises(ValueError, match="'random'"):
        keras_ast.PruneRegrow(mode="random")
    with pytest.raises(ValueError, match=r"subnet must be an integer in \[0, 3\), got 3"):
        model.set_subnet(3)


# ----------------------------------------------------------------------------- structure
def test_sparsify_structure():
    model = keras_ast.ASTModel.from_model(tiny_cnn(depthwise=True), [0.5, 0.9])
    net = model.network
    assert type(net.get_layer("stem_conv")) is keras.layers.Conv2D  # the stem stays dense
    assert type(net.get_layer("stem_bn")) is keras.layers.BatchNormalization  # shared BN
    assert isinstance(net.get_layer("conv1"), keras_ast.SparseConv2D)
    assert isinstance(net.get_layer("dw"), keras_ast.SparseDepthwiseConv2D)
    assert isinstance(net.get_layer("classifier"), keras_ast.SparseDense)
    assert isinstance(net.get_layer("bn1"), keras_ast.SwitchableBatchNormalization)
    assert type(net.get_layer("bn2")) is keras_ast.SwitchableBatchNormalization
    assert net.get_layer("conv1").masks.shape == (2, 3, 3, 8, 16)
    dense_head = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5], dense_layers=["classifier"])
    assert type(dense_head.network.get_layer("classifier")) is keras.layers.Dense


def test_slow_bn_momentum_warns():
    with pytest.warns(UserWarning, match="momentum > 0.95"):
        keras_ast.sparsify(tiny_cnn(bn_momentum=0.99), 3)


def _plain_subnet(model, plain, k):
    """A plain Keras model with kernels W * m_k and BN copy k, written out by hand."""
    reference = keras.models.clone_model(plain)
    for layer in reference.layers:
        if not layer.weights:
            continue
        source = model.network.get_layer(layer.name)
        if isinstance(source, ast_layers.MaskedKernelMixin):
            values = [np.asarray(source.shared_kernel) * np.asarray(source.masks[k])]
            values += [np.asarray(source.bias)] if source.use_bias else []
        elif isinstance(source, ast_layers.SwitchableBatchNormalization):
            values = [np.asarray(v)[k] for v in source.weights]
        else:
            values = source.get_weights()
        layer.set_weights(values)
    return reference


def test_forward_equals_plain_model_with_masked_kernels(digits_batches):
    x, y = digits_batches
    plain = tiny_cnn(depthwise=True)
    model = compile_ast(keras_ast.ASTModel.from_model(plain, [0.3, 0.6, 0.9]))
    random_masks(model, seed=5, density=0.4)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # BN copies diverge
    for k in range(3):
        reference = _plain_subnet(model, plain, k)
        model.set_subnet(k)
        np.testing.assert_allclose(
            model.predict(x[:64], verbose=0), reference.predict(x[:64], verbose=0), atol=1e-5
        )
        np.testing.assert_allclose(  # training mode: batch statistics
            np.asarray(model(x[:64], training=True)),
            np.asarray(reference(x[:64], training=True)), atol=1e-5,
        )


# ------------------------------------------------------------------- masks after training
def _train(digits, mode, sparsities=(0.5, 0.75, 0.9), epochs=6, **kwargs):
    model = compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(), list(sparsities), **kwargs))
    prune = keras_ast.PruneRegrow(frequency=12, adjustment_period=4, end_step=120, mode=mode)
    history = model.fit(digits.x_train[:1024], digits.y_train[:1024], batch_size=32,
                        epochs=epochs, callbacks=[prune], verbose=0)
    return model, history


@pytest.fixture(scope="module")
def nondisjoint(digits):
    keras.utils.set_random_seed(1)
    return _train(digits, "nondisjoint")


def test_trained_masks_hit_targets(nondisjoint):
    model, history = nondisjoint
    for k, target in enumerate(model.sparsities):
        assert abs(model.subnet_sparsity(k) - target) < 1e-3
        assert abs(history.history[f"sparsity_{k}"][-1] - target) < 1e-3
        assert 0 < model.overall_sparsity(k) < target  # stem, BN and biases stay dense
    assert "stem_conv" not in [layer.name for layer in model.sparse_layers]
    per_layer = model.layer_sparsities(2)
    assert len(set(round(v, 3) for v in per_layer.values())) > 1  # global, not uniform


def test_nondisjoint_masks_differ_and_gc_fires(nondisjoint):
    model, history = nondisjoint
    for layer in model.sparse_layers:
        m = np.asarray(layer.masks) > 0
        for a in range(3):
            for b in range(a + 1, 3):
                assert np.logical_xor(m[a], m[b]).sum() > 0
    # The measured share of conflicting (corrected) kernels at steps with i >= 1.
    conflict = history.history["gc_conflict"]
    print("gc_conflict per epoch:", [round(c, 3) for c in conflict])
    assert 0.0 < max(conflict) <= 1.0


def test_subset_masks_nest_exactly(digits):
    model, _ = _train(digits, "subset")
    for k, target in enumerate(model.sparsities):
        assert abs(model.subnet_sparsity(k) - target) < 1e-3
    for layer in model.sparse_layers:
        m = np.asarray(layer.masks)
        assert np.all(m[1] <= m[0]) and np.all(m[2] <= m[1]), layer.name


def test_initial_sparsity_starts_from_random_masks(digits):
    model = compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(), [0.6, 0.8]))
    prune = keras_ast.PruneRegrow(frequency=10, adjustment_period=5, begin_step=40,
                                  end_step=80, initial_sparsity=0.5, total_steps=200)
    model.fit(digits.x_train[:64], digits.y_train[:64], batch_size=32, epochs=1,
              callbacks=[prune], verbose=0)  # 2 steps: before any scheduled update
    assert abs(model.subnet_sparsity(0) - 0.5) < 2e-3
    assert abs(model.subnet_sparsity(1) - 0.5) < 2e-3


# ------------------------------------------------------------------------------- saving
def test_keras_save_roundtrip(nondisjoint, digits, tmp_path):
    model, _ = nondisjoint
    path = tmp_path / "ast.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_ast.ASTModel)
    assert loaded.sparsities == model.sparsities and loaded.gc == model.gc
    assert int(loaded.iteration.numpy()) == int(model.iteration.numpy()) > 0
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    assert isinstance(loaded.optimizer, keras_ast.SGD)  # compiled state comes back too
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    for k in range(3):
        model.set_subnet(k)
        loaded.set_subnet(k)
        np.testing.assert_allclose(loaded.predict(digits.x_test[:64], verbose=0),
                                   model.predict(digits.x_test[:64], verbose=0), atol=1e-6)


# -------------------------------------------------------------------------------- XLA
def test_jit_compile_true(digits):
    model = compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.8]), jit_compile=True)
    prune = keras_ast.PruneRegrow(frequency=8, adjustment_period=3, end_step=24)
    model.fit(digits.x_train[:512], digits.y_train[:512], batch_size=32, epochs=3,
              callbacks=[prune], verbose=0)
    for k, target in enumerate(model.sparsities):
        assert abs(model.subnet_sparsity(k) - target) < 1e-3
    results = model.evaluate_subnets(digits.x_test, digits.y_test)
    assert set(results) == {0, 1} and all(np.isfinite(r["loss"]) for r in results.values())
    # Python floats on every supported Keras (3.12's evaluate returns tensors): JSON-ready.
    assert all(type(v) is float for r in results.values() for v in r.values())


def test_sparsify_warns_about_layers_with_kernels_it_leaves_dense():
    inputs = keras.Input((16, 3))
    x = keras.layers.Conv1D(4, 3, name="c1d")(inputs)
    x = keras.layers.Reshape((14, 1, 4))(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    x = keras.layers.SeparableConv2D(4, 3, padding="same", name="sep")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))
    with pytest.warns(UserWarning, match=r"dense: c1d \(Conv1D\), sep \(SeparableConv2D\)\."):
        keras_ast.sparsify(model, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_ast.sparsify(model, 2, dense_layers=["c1d", "sep"])  # named: no warning
        keras_ast.sparsify(model, 2, prunable=["conv", "fc"])  # chosen: no warning


def test_sparse_layers_refuse_lora_and_quantization():
    model = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5])
    layer = model.network.get_layer("conv1")
    with pytest.raises(ValueError, match="'conv1' is sparse.*LoRA"):
        layer.enable_lora(4)
    with pytest.raises(ValueError, match="is sparse.*quantiz"):
        model.network.quantize("int8")
