"""CIFAR pipelines on small archives in the exact python format, built here; digits; errors."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from keras_ast import data

C10_MEAN, C10_STD = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])


def _images(labels, offset):
    """Image i is constant: value (label*20 + offset) in every pixel, so it names its label."""
    values = (np.asarray(labels) * 20 + offset).astype(np.uint8)
    return np.repeat(values[:, None], 3072, axis=1)  # [N, 3072] as CIFAR stores it (CHW)


def _batch(labels, offset, key):
    return {b"data": _images(labels, offset), key: list(labels)}


def _write_cifar(root, name, archive):
    if name == "cifar10":
        folder, key = "cifar-10-batches-py", b"labels"
        files = {f"data_batch_{i}": _batch([i % 10, (i + 3) % 10] * 5, 1, key)
                 for i in range(1, 6)}
        files["test_batch"] = _batch(list(range(10)), 2, key)
        tar_name = "cifar-10-python.tar.gz"
    else:
        folder, key = "cifar-100-python", b"fine_labels"
        files = {"train": _batch([i % 12 for i in range(40)], 1, key),
                 "test": _batch(list(range(12)), 2, key)}
        tar_name = "cifar-100-python.tar.gz"
    if archive:
        with tarfile.open(os.path.join(root, tar_name), "w:gz") as tar:
            for member, content in files.items():
                payload = pickle.dumps(content)
                info = tarfile.TarInfo(f"{folder}/{member}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    else:
        os.makedirs(os.path.join(root, folder))
        for member, content in files.items():
            with open(os.path.join(root, folder, member), "wb") as f:
                pickle.dump(content, f)


@pytest.mark.parametrize("archive", [True, False])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pipeline_shapes_labels_normalisation(tmp_path, name, archive):
    _write_cifar(str(tmp_path), name, archive)
    train, test, info = data.load_cifar(name, str(tmp_path), batch_size=8, seed=1)
    assert info.num_train == 50 if name == "cifar10" else 40
    mean, std = (C10_MEAN, C10_STD) if name == "cifar10" else (
        np.array([0.5071, 0.4865, 0.4409]), np.array([0.2673, 0.2564, 0.2762]))
    for x, y in test:
        x, y = x.numpy(), y.numpy()
        assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape[1:] == (32, 32, 3)
        expected = ((y * 20 + 2)[:, None, None, None] / 255.0 - mean) / std
        np.testing.assert_allclose(x, np.broadcast_to(expected, x.shape), rtol=1e-5, atol=1e-5)
    batches = list(train)
    assert all(xb.shape == (8, 32, 32, 3) for xb, _ in batches)  # drop_remainder
    for xb, yb in batches:
        for image, label in zip(xb.numpy(), yb.numpy()):
            # Padding zeros (normalised) may enter from the border; the rest is the label's.
            content = ((label * 20 + 1) / 255.0 - mean) / std
            pad = (0.0 - mean) / std
            close = np.isclose(image, content, atol=1e-5) | np.isclose(image, pad, atol=1e-5)
            assert close.all()
            centre = image[4:28, 4:28]  # at most 4 px shift: the centre is always content
            assert np.allclose(centre, np.broadcast_to(content, centre.shape), atol=1e-5)


def test_augmentation_crop_flip_and_seeding():
    image = tf.reshape(tf.range(32 * 32 * 3, dtype=tf.float32), (32, 32, 3))
    seed = tf.constant([3, 4], tf.int64)
    a, b = data.augment_cifar(image, seed), data.augment_cifar(image, seed)
    np.testing.assert_array_equal(a, b)  # the same seed gives the same result
    outs = [data.augment_cifar(image, tf.constant([s, 0], tf.int64)).numpy() for s in range(40)]
    flipped = 0
    for out in outs:
        # Find the crop offset: the output is a window of the padded (maybe mirrored) image.
        padded = np.pad(image.numpy(), [[4, 4], [4, 4], [0, 0]])
        found = [(dy, dx, flip) for flip in (False, True) for dy in range(9) for dx in range(9)
                 if np.array_equal((out[:, ::-1] if flip else out),
                                   padded[dy:dy + 32, dx:dx + 32])]
        assert found, "output is not a pad-4 crop of the (flipped) image"
        flipped += found[0][2]
    assert 0 < flipped < 40  # both flipped and unflipped happen
    assert len({o.tobytes() for o in outs}) > 20  # crops vary


def test_same_seed_same_stream_and_epochs_differ(tmp_path):
    _write_cifar(str(tmp_path), "cifar10", archive=True)
    first, _, _ = data.load_cifar("cifar10", str(tmp_path), batch_size=10, seed=5)
    second, _, _ = data.load_cifar("cifar10", str(tmp_path), batch_size=10, seed=5)
    epoch1 = [x.numpy() for x, _ in first]
    np.testing.assert_array_equal(epoch1[0], next(iter(second))[0].numpy())
    epoch2 = [x.numpy() for x, _ in first]
    assert not all(np.array_equal(a, b) for a, b in zip(epoch1, epoch2))


def test_missing_data_says_what_to_put_where(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="cifar-100-python.tar.gz"):
        data.load_cifar("cifar100", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar"):
        data.load_imagenet(str(tmp_path))


def test_load_dataset_digits_and_unknown():
    train, test, info = data.load_dataset("digits", batch_size=50)
    x, y = next(iter(train))
    assert x.shape == (50, 8, 8, 1) and info.num_classes == 10
    assert info.num_train + info.num_test == 1797
    assert float(tf.reduce_max(x)) <= 1.0
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        data.load_dataset("mnist")
