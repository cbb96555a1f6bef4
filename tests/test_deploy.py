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


def test_keras_file_stores_masks_as_bits_and_loads_them_back(trained):
    import keras

    model, data, root = trained
    path = str(root / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(model.sparse_layers, loaded.sparse_layers):
        np.testing.assert_array_equal(np.asarray(a.masks), np.asarray(b.masks))
        np.testing.assert_array_equal(np.asarray(a.shared_kernel), np.asarray(b.shared_kernel))
    x = data.x_test[:20]
    for k in range(3):
        np.testing.assert_array_equal(_predict(model, x, k), _predict(loaded, x, k))
    # the file holds each sparse layer's masks as bits: uint8 [3, ceil(size / 8)].
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(path) as z:
        h5 = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
        found = []
        h5.visititems(lambda name, obj: found.append(obj.shape) if isinstance(
            obj, h5py.Dataset) and obj.dtype == np.uint8 else None)
    assert sorted(found) == sorted((3, -(-int(np.prod(layer.shared_kernel.shape)) // 8))
                                   for layer in model.sparse_layers)


def test_masks_saved_as_floats_by_older_versions_still_load(trained):
    model, _, _ = trained
    layer = model.sparse_layers[0]
    masks = np.asarray(layer.masks).copy()
    store = {str(i): np.asarray(v) for i, v in enumerate(layer._own_variables())}
    assert store[str(len(store) - 1)].dtype == np.float32  # the old format: 0/1 floats
    layer.masks.assign(np.zeros_like(masks))
    layer.load_own_variables(store)
    np.testing.assert_array_equal(np.asarray(layer.masks), masks)


def test_pack_masks_refuses_values_other_than_0_and_1():
    from keras_ast.layers import pack_masks, unpack_masks

    with pytest.raises(ValueError, match="only 0 and 1"):
        pack_masks(np.full((2, 3), 0.5, np.float32))
    with pytest.raises(ValueError, match="do not fit"):
        unpack_masks(np.zeros((2, 1), np.uint8), (3, 3))


def test_multi_export_loads_and_runs_without_keras_ast(trained):
    import subprocess
    import sys

    model, data, root = trained
    path = str(root / "multi_plain")
    deploy.export_multi(model, path)
    np.save(root / "x.npy", data.x_test[:8])
    singles = [tf.saved_model.load(export_subnet(model, k, str(root / f"plain_{k}")))
               for k in range(3)]  # kept alive while their functions run
    expected = [single.serve(data.x_test[:8]).numpy() for single in singles]
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({path!r})\n"
        f"x = np.load({str(root / 'x.npy')!r})\n"
        "out = [m.serve(x, tf.constant(k)).numpy() for k in range(3)]\n"
        "assert not any(n.startswith('keras_ast') for n in sys.modules), 'keras_ast imported'\n"
        f"np.save({str(root / 'out.npy')!r}, np.stack(out))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=str(root))
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(root / "out.npy")
    for k in range(3):
        np.testing.assert_allclose(out[k], expected[k], atol=1e-6)


def test_save_keras_drops_the_optimizer_and_predicts_the_same(trained):
    import keras

    model, data, root = trained
    path = deploy.save_keras(model, str(root / "deploy.keras"))
    model.save(root / "full.keras")
    assert (root / "deploy.keras").stat().st_size < (root / "full.keras").stat().st_size
    loaded = keras.models.load_model(path)
    x = data.x_test[:10]
    for k in range(3):
        np.testing.assert_array_equal(_predict(model, x, k), _predict(loaded, x, k))
