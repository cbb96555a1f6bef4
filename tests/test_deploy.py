"""keras_ast.deploy: one SavedModel for all sub-nets (shared weights once, packed masks) that
predicts bit for bit as each sub-net's own export, and is smaller than the K exports."""

import numpy as np
import pytest
import tensorflow as tf

import keras_ast
from conftest import compile_ast, tiny_cnn
from keras_ast import deploy
from keras_ast.export import export_subnet


def test_pack_unpack_roundtrip():
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 5, 7, 3)) < 0.3).astype(np.float32)  # 105 entries: not a multiple of 8
    packed = deploy.pack_masks(masks)
    assert packed.dtype == np.uint8 and packed.shape == (3, 14)
    for k in range(3):
        np.testing.assert_array_equal(
            deploy.unpack_mask(tf.constant(packed[k]), (5, 7, 3)).numpy(), masks[k])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import keras
    from keras_ast.data import load_digits_arrays

    keras.utils.set_random_seed(7)
    data = load_digits_arrays(seed=0)
    model = keras_ast.ASTModel.from_model(tiny_cnn(width=8), [0.5, 0.75, 0.9])
    compile_ast(model)
    model.fit(data.x_train[:512], data.y_train[:512], batch_size=64, epochs=4, verbose=0,
              callbacks=[keras_ast.PruneRegrow(frequency=4, adjustment_period=1, end_step=16)])
    return model, data, tmp_path_factory.mktemp("deploy")


def test_multi_export_predicts_as_each_subnet_export(trained):
    model, data, root = trained
    x = data.x_test[:50]
    deploy.export_multi(model, str(root / "multi"))
    multi = tf.saved_model.load(str(root / "multi"))
    for k in range(3):
        single = tf.saved_model.load(export_subnet(model, k, str(root / f"subnet_{k}")))
        expected = single.serve(x).numpy()
        np.testing.assert_array_equal(getattr(multi, f"serve_{k}")(x).numpy(), expected)
        np.testing.assert_array_equal(multi.serve(x, tf.constant(k)).numpy(), expected)
        np.testing.assert_allclose(expected, _predict(model, x, k), atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="out of range"):
        multi.serve(x, tf.constant(3))


def _predict(model, x, k):
    model.set_subnet(k)
    return model.predict(x, verbose=0)


def test_multi_export_stores_the_weights_once(trained):
    model, _, root = trained
    sizes = deploy.size_report(model, str(root / "sizes"))
    # three copies of the kernels against one plus three bit masks: well under half.
    assert sizes["multi"] < 0.6 * sizes["subnets_total"]
    kernels = sum(int(np.prod(layer.shared_kernel.shape)) for layer in model.sparse_layers)
    loaded = tf.saved_model.load(str(root / "sizes" / "multi"))
    stored = sum(int(np.prod(v.shape)) for v in loaded.shared)
    bits = sum(int(np.prod(v.shape)) for v in loaded.packed_masks)
    assert bits == sum(3 * -(-int(np.prod(layer.shared_kernel.shape)) // 8)
                       for layer in model.sparse_layers)
    assert stored < 3 * kernels  # the kernels once (plus 3 BN rows), not three times
