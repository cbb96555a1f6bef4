"""Input pipelines on small data sets built here in the exact on-disk formats; never downloads.

CIFAR: the python-version archive (.tar.gz and extracted folder) and a tfds-prepared copy.
ImageNet: a tiny pair of ILSVRC tars prepared by tfds into a temporary data dir.
Image values encode labels, so label/image pairing can be checked after shuffling.
"""

import importlib.resources
import io
import os
import pickle
import sys
import tarfile
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from keras_ast import data
from keras_ast.data import imagenet

MEAN_STD = {
    "cifar10": (np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])),
    "cifar100": (np.array([0.5071, 0.4865, 0.4409]), np.array([0.2673, 0.2564, 0.2762])),
}
TRAIN_OFFSET, TEST_OFFSET = 1, 2


def _values(labels, offset):
    """[N, 3] per-channel pixel values of images that name their label: label*20+offset+5c."""
    return np.asarray(labels)[:, None] * 20 + offset + 5 * np.arange(3)[None]


def _images(labels, offset):
    """[N, 3072] uint8 rows, CHW-major as CIFAR stores them, each channel constant."""
    return np.repeat(_values(labels, offset).astype(np.uint8), 1024, axis=1)


def _expected(labels, offset, name):
    mean, std = MEAN_STD[name]
    return (_values(labels, offset) / 255.0 - mean) / std  # [N, 3]


def _cifar_files(name):
    if name == "cifar10":  # 2 data batches of 20 (+ 3 small ones: the format has 5) + test
        key = b"labels"
        sizes = {1: 20, 2: 20, 3: 8, 4: 4, 5: 4}  # 56 images
        files = {f"data_batch_{i}": [(i + j) % 10 for j in range(n)] for i, n in sizes.items()}
        files["test_batch"] = list(range(10))
        return "cifar-10-batches-py", "cifar-10-python.tar.gz", key, files
    # Labels < 12 keep the pixel values (label*20+offset+5c) under 256.
    files = {"train": [(7 * j) % 12 for j in range(40)], "test": [0, 5, 11, 6, 3]}
    return "cifar-100-python", "cifar-100-python.tar.gz", b"fine_labels", files


def _payload(labels, offset, key):
    return pickle.dumps({b"data": _images(labels, offset), key: list(labels),
                         b"batch_label": b"fake"})


def write_cifar(root, name, archive):
    """Writes a small fake CIFAR in the python format under `root` (archive or folder)."""
    folder, tar_name, key, files = _cifar_files(name)
    offset = {m: TEST_OFFSET if "test" in m else TRAIN_OFFSET for m in files}
    if archive:
        with tarfile.open(os.path.join(root, tar_name), "w:gz") as tar:
            for member in reversed(list(files)):  # out of order, as the real archives are
                payload = _payload(files[member], offset[member], key)
                info = tarfile.TarInfo(f"{folder}/{member}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    else:
        os.makedirs(os.path.join(root, folder))
        for member, labels in files.items():
            with open(os.path.join(root, folder, member), "wb") as f:
                f.write(_payload(labels, offset[member], key))
    train = [y for m, ys in files.items() if "test" not in m for y in ys]
    test = [y for m, ys in files.items() if "test" in m for y in ys]
    return train, test


def _check_train_image(image, label, name):
    """Content pixels carry the label's values; only a <= 4 px border may be zero padding."""
    mean, std = MEAN_STD[name]
    content = _expected([label], TRAIN_OFFSET, name)[0]
    pad = (0.0 - mean) / std  # normalised black
    is_content = np.isclose(image, content, atol=1e-5).all(-1)
    is_pad = np.isclose(image, pad, atol=1e-5).all(-1)
    assert (is_content | is_pad).all()
    assert is_content[4:28, 4:28].all()  # a shift of at most 4 px never reaches the centre
    rows, cols = np.nonzero(is_content)
    assert rows.max() - rows.min() + 1 >= 28 and cols.max() - cols.min() + 1 >= 28


@pytest.mark.parametrize("archive", [True, False], ids=["tar.gz", "folder"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_shapes_dtypes_labels_normalisation(tmp_path, name, archive):
    train_labels, test_labels = write_cifar(str(tmp_path), name, archive)
    train, test, info = data.load_cifar(name, str(tmp_path), batch_size=8, seed=1)
    assert info == data.DatasetInfo(name, 10 if name == "cifar10" else 100,
                                    len(train_labels), len(test_labels), (32, 32, 3))
    assert train.element_spec[0].dtype == tf.float32 and train.element_spec[1].dtype == tf.int32
    assert train.element_spec[0].shape.as_list() == [8, 32, 32, 3]  # drop_remainder
    assert int(train.cardinality()) == len(train_labels) // 8

    # Test set: file order, last partial batch kept, each image normalised per channel.
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in test])
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape[1:] == (32, 32, 3)
    np.testing.assert_array_equal(y, test_labels)
    expected = _expected(y, TEST_OFFSET, name)
    x64 = x.astype(np.float64)  # float32 sums over 1024 pixels would add ~1e-5 of rounding
    np.testing.assert_allclose(x64.mean(axis=(1, 2)), expected, atol=1e-5)  # per channel
    np.testing.assert_allclose(x64.std(axis=(1, 2)), 0.0, atol=1e-5)  # constant image
    np.testing.assert_allclose(x, np.broadcast_to(expected[:, None, None], x.shape), atol=1e-5)

    # Train: shuffled, augmented, and every image still carries its own label's values.
    seen = []
    for xb, yb in train:
        for image, label in zip(xb.numpy(), yb.numpy()):
            _check_train_image(image, label, name)
            seen.append(int(label))
    assert sorted(seen) == sorted(train_labels)  # 56 / 40 images: whole batches of 8
    assert seen != train_labels  # shuffled


def test_python_format_is_chw_row_major(tmp_path):
    """A non-constant image comes back as NHWC exactly (layout and channel order)."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    hwc = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    chw_rows = hwc.transpose(0, 3, 1, 2).reshape(3, 3072)
    for member in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / member, "wb") as f:
            pickle.dump({b"data": chw_rows, b"labels": [3, 1, 4]}, f)
    (x_train, y_train), (x_test, y_test) = data.read_python_archive("cifar10", str(tmp_path))
    assert x_train.shape == (15, 32, 32, 3) and y_train.dtype == np.int32
    np.testing.assert_array_equal(x_test, hwc)
    np.testing.assert_array_equal(y_test, [3, 1, 4])
    # data_dir may also be the extracted folder itself.
    _, (x_again, _) = data.read_python_archive("cifar10", str(folder))
    np.testing.assert_array_equal(x_again, hwc)
    _, test, _ = data.load_cifar("cifar10", str(tmp_path), batch_size=3)
    x = next(iter(test))[0].numpy()
    mean, std = MEAN_STD["cifar10"]
    np.testing.assert_allclose(x, (hwc / 255.0 - mean) / std, atol=1e-5)


def test_augment_cifar_crops_within_4px_and_flips():
    image = tf.reshape(tf.range(32 * 32 * 3, dtype=tf.float32), (32, 32, 3))
    padded = np.pad(image.numpy(), [[4, 4], [4, 4], [0, 0]])
    seed = tf.constant([3, 4], tf.int64)
    np.testing.assert_array_equal(data.augment_cifar(image, seed), data.augment_cifar(image, seed))
    outs = [data.augment_cifar(image, tf.constant([s, 0], tf.int64)).numpy() for s in range(40)]
    draws = []
    for out in outs:
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        # The output is a 32x32 window of the padded image (shift <= 4 px), maybe mirrored.
        found = [(dy, dx, flip) for flip in (False, True) for dy in range(9) for dx in range(9)
                 if np.array_equal(out[:, ::-1] if flip else out, padded[dy:dy + 32, dx:dx + 32])]
        assert len(found) == 1, "output is not a pad-4 crop of the (mirrored) image"
        draws.append(found[0])
    flips = sum(flip for _, _, flip in draws)
    assert 5 < flips < 35  # both happen
    assert len({(dy, dx) for dy, dx, _ in draws}) > 15  # offsets vary over [0, 8]^2
    # Flip mirrors: with the same crop, the flipped output is the unflipped one reversed.
    dy, dx, flip = draws[0]
    window = padded[dy:dy + 32, dx:dx + 32]
    np.testing.assert_array_equal(outs[0], window[:, ::-1] if flip else window)


def test_augment_cifar_batch_draws_per_image():
    images = tf.cast(tf.reshape(tf.range(16 * 32 * 32 * 3) % 251, (16, 32, 32, 3)), tf.uint8)
    out = data.augment_cifar(images, tf.constant([1, 2], tf.int32)).numpy()
    assert out.shape == (16, 32, 32, 3) and out.dtype == np.uint8
    draws = set()
    for src, res in zip(images.numpy(), out):
        padded = np.pad(src, [[4, 4], [4, 4], [0, 0]])
        found = [(dy, dx, f) for f in (False, True) for dy in range(9) for dx in range(9)
                 if np.array_equal(res[:, ::-1] if f else res, padded[dy:dy + 32, dx:dx + 32])]
        assert found
        draws.add(found[0])
    assert len(draws) > 4  # not one draw for the whole batch


def test_augment_changes_train_batches_but_not_order(tmp_path):
    write_cifar(str(tmp_path), "cifar10", archive=True)
    plain, _, _ = data.load_cifar("cifar10", str(tmp_path), batch_size=8, seed=3, augment=False)
    aug, _, _ = data.load_cifar("cifar10", str(tmp_path), batch_size=8, seed=3, augment=True)
    plain, aug = list(plain), list(aug)
    for (xp, yp), (xa, ya) in zip(plain, aug):
        np.testing.assert_array_equal(yp, ya)  # the shuffle does not depend on `augment`
        xp = xp.numpy()
        np.testing.assert_allclose(xp, np.broadcast_to(xp[:, :1, :1], xp.shape))  # untouched
    x_plain = np.concatenate([x for x, _ in plain])
    x_aug = np.concatenate([x for x, _ in aug])
    assert not np.allclose(x_plain, x_aug)
    np.testing.assert_allclose(x_plain[:, 4:28, 4:28], x_aug[:, 4:28, 4:28], atol=1e-6)


def test_same_seed_same_stream_new_draws_each_epoch(tmp_path):
    write_cifar(str(tmp_path), "cifar10", archive=False)

    def epoch(ds):
        return [(x.numpy(), y.numpy()) for x, y in ds]

    first, _, _ = data.load_cifar("cifar10", str(tmp_path), batch_size=10, seed=5)
    second, _, _ = data.load_cifar("cifar10", str(tmp_path), batch_size=10, seed=5)
    other, _, _ = data.load_cifar("cifar10", str(tmp_path), batch_size=10, seed=6)
    e1, e1_again, e_other = epoch(first), epoch(second), epoch(other)
    for (xa, ya), (xb, yb) in zip(e1, e1_again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(e1, e_other))
    e2 = epoch(first)  # reshuffled and re-augmented
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(e1, e2))


def test_missing_data_says_what_to_put_where(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="put cifar-100-python.tar.gz") as err:
        data.load_cifar("cifar100", str(tmp_path))
    assert str(tmp_path) in str(err.value) and "tfds build cifar100" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        data.load_cifar("cifar10", None)
    with pytest.raises(FileNotFoundError, match="not found in"):
        data.load_cifar("cifar10", str(tmp_path / "nowhere"))
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="data_batch_1 is missing"):
        data.load_cifar("cifar10", str(tmp_path))
    write_cifar(str(tmp_path), "cifar10", archive=True)  # the archive beside it is used
    assert data.load_cifar("cifar10", str(tmp_path))[2].num_train == 56
    with pytest.raises(ValueError, match="unknown CIFAR"):
        data.load_cifar("cifar1000", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar") as err:
        data.load_imagenet(str(tmp_path))
    assert "ILSVRC2012_img_val.tar" in str(err.value)
    assert "python -m keras_ast.data.imagenet" in str(err.value)
    with pytest.raises(FileNotFoundError, match="cannot prepare ImageNet"):
        data.load_imagenet(str(tmp_path), prepare=True, manual_dir=str(tmp_path / "manual"))


def test_load_dataset_dispatch(tmp_path):
    train, test, info = data.load_dataset("digits", batch_size=50)
    x, y = next(iter(train))
    assert x.shape == (50, 8, 8, 1) and y.dtype == tf.int32
    assert info.num_classes == 10 and info.image_shape == (8, 8, 1)
    assert info.num_train + info.num_test == 1797
    assert float(tf.reduce_max(x)) <= 1.0
    write_cifar(str(tmp_path), "cifar100", archive=True)
    train, _, info = data.load_dataset("cifar100", data_dir=str(tmp_path), batch_size=4)
    assert info.num_classes == 100 and next(iter(train))[0].shape == (4, 32, 32, 3)
    with pytest.raises(ValueError, match="unknown data set 'mnist'.*cifar10"):
        data.load_dataset("mnist")


# ---- tensorflow-datasets sources, prepared offline from local files --------------------------

@pytest.fixture
def tfds_prepare_env(monkeypatch):
    """tfds' preparation (not its reading) imports importlib_resources, which this image may
    lack; the standard library module has the same API."""
    try:
        import importlib_resources  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "importlib_resources", importlib.resources)
    import tensorflow_datasets as tfds

    return tfds


def test_cifar_from_prepared_tfds(tmp_path, tfds_prepare_env):
    tfds = tfds_prepare_env
    binary = tmp_path / "extracted" / "cifar-10-batches-bin"
    binary.mkdir(parents=True)
    (binary / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    labels = {f"data_batch_{i}.bin": [(i + j) % 10 for j in range(4)] for i in range(1, 6)}
    labels["test_batch.bin"] = [3, 1, 4, 1, 5]
    for fname, ys in labels.items():  # binary format: 1 label byte + 3072 CHW bytes
        offset = TEST_OFFSET if "test" in fname else TRAIN_OFFSET
        rows = np.concatenate([np.array(ys, np.uint8)[:, None], _images(ys, offset)], axis=1)
        (binary / fname).write_bytes(rows.tobytes())
    tfds_dir = str(tmp_path / "tfds")
    builder = tfds.builder("cifar10", data_dir=tfds_dir)
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           lambda self, url: str(tmp_path / "extracted")):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))

    train, test, info = data.load_cifar("cifar10", tfds_dir, batch_size=4, seed=0)
    assert (info.num_train, info.num_test, info.num_classes) == (20, 5, 10)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in test])
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert y.dtype == np.int32 and sorted(y) == [1, 1, 3, 4, 5]
    np.testing.assert_allclose(x.astype(np.float64).mean(axis=(1, 2)),
                               _expected(y, TEST_OFFSET, "cifar10"), atol=1e-5)
    for xb, yb in train:
        for image, label in zip(xb.numpy(), yb.numpy()):
            _check_train_image(image, label, "cifar10")


def _jpeg(height, width, value):
    return tf.io.encode_jpeg(tf.fill([height, width, 3], tf.constant(value, tf.uint8)),
                             quality=100).numpy()


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_imagenet_archives(manual):
    """Fake ILSVRC2012 archives in `manual`: two synsets x 4 train JPEGs (value 50 / 150),
    3 validation JPEGs."""
    manual.mkdir(parents=True, exist_ok=True)
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as train_tar:
        for label, synset in enumerate(["n01440764", "n01443537"]):  # tfds labels 0 and 1
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as sub:
                for i in range(4):
                    _add(sub, f"{synset}_{i}.JPEG", _jpeg(40 + 10 * i, 60, 50 + 100 * label))
            _add(train_tar, f"{synset}.tar", buf.getvalue())
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as val_tar:
        for i in range(1, 4):
            _add(val_tar, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(300, 200 + 40 * i, 30 * i))


def test_imagenet_prepare_load_and_shard(tmp_path, tfds_prepare_env):
    """The fake archives prepared by tfds, read back, sharded, and as a resumable source."""
    manual = tmp_path / "manual"
    write_imagenet_archives(manual)
    data_dir = str(tmp_path / "tfds")
    train, val, info = data.load_imagenet(data_dir, batch_size=2, seed=0, prepare=True,
                                          manual_dir=str(manual))
    assert info == data.DatasetInfo("imagenet", 1000, 8, 3, (224, 224, 3))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    assert int(train.cardinality()) == 4
    for x, y in train:
        x, y = x.numpy(), y.numpy()
        assert x.shape == (2, 224, 224, 3) and x.dtype == np.float32 and y.dtype == np.int32
        expected = ((50 + 100 * y)[:, None] / 255.0 - mean) / std  # the crop keeps the value
        np.testing.assert_allclose(x.mean(axis=(1, 2)), expected, atol=0.05)
    x, y = zip(*[(x.numpy(), y.numpy()) for x, y in val])
    assert np.concatenate(x).shape == (3, 224, 224, 3)

    # Prepared: read again without preparing; per-pipeline shard and per-replica batch.
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                         num_replicas_in_sync=2)
    train, val, _ = data.load_imagenet(data_dir, batch_size=4, input_context=context)
    assert [x.shape[0] for x, _ in train] == [2, 2]  # 4 of the 8 images, batches of 4 / 2
    assert sum(int(x.shape[0]) for x, _ in val) == 1  # validation images 2 (of 1, 2, 3)

    # Resumable order: epoch e depends only on (seed, e); a resumed epoch skips records.
    source, _, _ = data.imagenet_source(data_dir, batch_size=2, seed=3)
    assert source.steps_per_epoch == 4 and source.shards_input

    def batches(dataset):
        return [(x.numpy(), y.numpy()) for x, y in dataset]

    full = batches(source.epochs(0, 2))
    assert len(full) == 8
    for e in range(2):  # every epoch sees the 8 images once
        assert sorted(np.concatenate([y for _, y in full[4 * e:4 * e + 4]])) == [0] * 4 + [1] * 4
    for (xa, ya), (xb, yb) in zip(full[5:], batches(source.epochs(1, 2, skip=1))):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)  # same crops and flips
    per_pipeline = batches(source.epochs(0, 1, input_context=context))
    assert [x.shape[0] for x, _ in per_pipeline] == [1, 1, 1, 1]  # 4 steps, 1 image/replica


def test_imagenet_preprocessing_on_encoded_and_decoded_images():
    image = tf.fill([120, 90, 3], tf.constant(200, tf.uint8))
    encoded = tf.constant(_jpeg(120, 90, 200))
    seed = tf.constant([7, 8], tf.int64)
    expected = (200 / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    for source in (image, encoded):
        out = imagenet.preprocess_train(source, seed)
        assert out.shape == (224, 224, 3) and out.dtype == tf.float32
        np.testing.assert_allclose(out.numpy().mean(axis=(0, 1)), expected, atol=0.03)
        np.testing.assert_array_equal(out, imagenet.preprocess_train(source, seed))
        evaluated = imagenet.preprocess_eval(source)
        assert evaluated.shape == (224, 224, 3)
        np.testing.assert_allclose(evaluated.numpy().mean(axis=(0, 1)), expected, atol=0.03)
    # Eval is the centre 224 of the shorter-side-256 resize: a 100 px left band is cut off.
    marked = np.zeros((256, 512, 3), np.uint8)
    marked[:, :100] = 255
    out = imagenet.preprocess_eval(tf.constant(marked)).numpy()
    black = (0.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out, np.broadcast_to(black, out.shape), atol=1e-5)
