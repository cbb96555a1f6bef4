"""Image-folder and Fashion-MNIST inputs on files generated here; the real data sets when the
workspace's shared data folder is there (skipped, with the reason, in a user's clone)."""

import gzip
import os
import struct
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_ast import data
from keras_ast.data import fashion_mnist, image_folder
from keras_ast.data.image_folder import ImageFolderError
from keras_ast.data.info import DataNotFoundError

# Class folder names whose sorted order differs from the order they are created in.
CLASSES = ["zebra", "Ant", "cat10", "cat2"]
SORTED = sorted(CLASSES)  # ['Ant', 'cat10', 'cat2', 'zebra']: labels 0..3


def _image(label, index, size=12):
    """An RGB image that names its label and index: channel 0 = 40 * label, channel 1 =
    index, channel 2 a gradient."""
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = 40 * label
    image[..., 1] = index
    image[..., 2] = np.arange(size)[None, :] * 10
    return image


def make_folder(root, counts=None, test_split="test", size=12, extensions=("png", "jpg")):
    """DIR/{train,test}/<class>/NNN.(png|jpg), alternating formats; returns {split: {class:
    [images written]}}. PNG files are lossless, so their decoded pixels are known exactly."""
    counts = counts or {"train": 6, test_split: 3}
    written = {}
    for split, count in counts.items():
        written[split] = {}
        for name in CLASSES:
            label = SORTED.index(name)
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            written[split][name] = []
            for i in range(count):
                ext = extensions[i % len(extensions)]
                image = _image(label, i, size)
                Image.fromarray(image).save(os.path.join(folder, f"{i:03d}.{ext}"))
                written[split][name].append((ext, image))
    return written


def test_counts_labels_and_sorted_class_order(tmp_path):
    written = make_folder(tmp_path)
    os.makedirs(tmp_path / "train" / ".ipynb_checkpoints")  # hidden: not a class
    names, (train_files, y_train), (test_files, y_test), split = image_folder.list_image_folder(
        str(tmp_path))
    assert names == SORTED and split == "test"
    assert len(train_files) == 24 and len(test_files) == 12
    assert np.bincount(y_train).tolist() == [6, 6, 6, 6]
    for path, label in zip(train_files, y_train):
        assert os.path.basename(os.path.dirname(path)) == SORTED[label]
    (x_train, y_train), (x_test, y_test), names = image_folder.read_image_folder(str(tmp_path))
    assert x_train.shape == (24, 12, 12, 3) and x_train.dtype == np.uint8
    assert x_test.shape == (12, 12, 12, 3)
    for row, (path, label) in enumerate(zip(train_files, y_train)):
        index = int(os.path.basename(path)[:3])
        ext, image = written["train"][SORTED[label]][index]
        if ext == "png":
            np.testing.assert_array_equal(x_train[row], image)  # lossless: exact
        else:  # JPEG: close, and the label channel still readable
            assert np.abs(x_train[row].astype(int) - image).mean() < 4
        assert round(x_train[row, ..., 0].mean() / 40) == label


def test_val_split_grey_images_and_resize(tmp_path):
    make_folder(tmp_path, counts={"train": 4, "val": 2}, test_split="val")
    names, _, (test_files, _), split = image_folder.list_image_folder(str(tmp_path))
    assert split == "val" and len(test_files) == 8
    (x_train, _), (x_test, _), _ = image_folder.read_image_folder(str(tmp_path),
                                                                  image_size=(8, 10))
    assert x_train.shape == (16, 8, 10, 3) and x_test.shape == (8, 8, 10, 3)
    (grey, _), _, _ = image_folder.read_image_folder(str(tmp_path), channels=1)
    assert grey.shape == (16, 12, 12, 1)


def test_source_normalisation_augmentation_and_info(tmp_path):
    make_folder(tmp_path)
    source, test, info = data.load_source("image_folder", str(tmp_path), batch_size=8, seed=3)
    assert (info.num_classes, info.num_train, info.num_test, info.image_shape) == (
        4, 24, 12, (12, 12, 3))
    assert source.steps_per_epoch == 3
    (x_train, _), (x_test, y_test), _ = image_folder.read_image_folder(str(tmp_path))
    mean = x_train.reshape(-1, 3).mean(0) / 255
    std = (x_train.reshape(-1, 3) / 255).std(0)
    xs, ys = zip(*test)
    expected = (x_test / 255.0 - mean) / np.maximum(std, 1e-3)
    np.testing.assert_allclose(np.concatenate(xs), expected, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate(ys), y_test)
    # Small images: pad-crop + flip on by default, so some training batch differs from the
    # plain normalised images of the same rows; with augment=False none does.
    plain, _, _ = data.load_source("image_folder", str(tmp_path), batch_size=8, seed=3,
                                   augment=False)
    changed = [not np.allclose(a[0], b[0]) for a, b in zip(source.epochs(0, 1),
                                                          plain.epochs(0, 1))]
    assert any(changed)
    # Above 64 pixels augmentation is off unless asked for.
    big, _, _ = data.load_source("image_folder", str(tmp_path), batch_size=8,
                                 image_size=(72, 72))
    plain_big, _, _ = data.load_source("image_folder", str(tmp_path), batch_size=8,
                                       image_size=(72, 72), augment=False)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(big.epochs(0, 1),
                                                           plain_big.epochs(0, 1)))


def test_resume_equals_uninterrupted_order(tmp_path):
    make_folder(tmp_path, counts={"train": 10, "test": 2})
    source, _, _ = data.load_source("image_folder", str(tmp_path), batch_size=4, seed=7)
    steps = source.steps_per_epoch  # 40 images -> 10 batches
    whole = list(source.epochs(0, 3))
    resumed = list(source.epochs(1, 3, skip=4))  # killed after 4 batches of epoch 1
    assert len(whole) == 3 * steps and len(resumed) == 2 * steps - 4
    for a, b in zip(whole[steps + 4:], resumed):
        np.testing.assert_array_equal(a[0], b[0])  # augmentation draws included
        np.testing.assert_array_equal(a[1], b[1])
    again = list(data.load_source("image_folder", str(tmp_path), batch_size=4, seed=7)[0]
                 .epochs(0, 1))
    for a, b in zip(whole[:steps], again):
        np.testing.assert_array_equal(a[0], b[0])
    labels = np.concatenate([b[1] for b in whole[:steps]])
    assert sorted(labels.tolist()) == sorted(np.repeat(np.arange(4), 10).tolist())


def test_subset_is_class_balanced_and_the_same_for_every_seed(tmp_path):
    make_folder(tmp_path, counts={"train": 10, "test": 2})
    a, _, info = data.load_source("image_folder", str(tmp_path), batch_size=2, seed=0,
                                  train_subset=10)
    b, _, _ = data.load_source("image_folder", str(tmp_path), batch_size=2, seed=5,
                               train_subset=10)
    assert info.num_train == 10

    def images(source):
        batches = list(data.load_source("image_folder", str(tmp_path), batch_size=2,
                                        augment=False, train_subset=10, seed=source)[0]
                       .epochs(0, 1))
        rows = np.concatenate([x for x, _ in batches]).reshape(10, -1)
        labels = np.concatenate([y for _, y in batches])
        return sorted(map(tuple, np.round(rows, 4).tolist())), np.bincount(labels)

    rows_0, counts_0 = images(0)
    rows_5, _ = images(5)
    assert rows_0 == rows_5  # same images, in another order
    assert counts_0.tolist() == [3, 3, 2, 2]  # 10 over 4 classes
    assert a.steps_per_epoch == b.steps_per_epoch == 5
    with pytest.raises(ValueError, match="needs 11 examples of class"):
        image_folder.take_per_class(np.zeros(8), np.array([0, 0, 0, 0, 1, 1, 1, 1]), 22)


def test_errors_name_the_path(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        image_folder.list_image_folder(str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "test" / "a")
    with pytest.raises(DataNotFoundError, match=f"no train split: expected {tmp_path}/train"):
        image_folder.list_image_folder(str(tmp_path))

    root = tmp_path / "no_test"
    make_folder(root, counts={"train": 2})
    with pytest.raises(DataNotFoundError, match="no test split"):
        image_folder.list_image_folder(str(root))

    root = tmp_path / "empty_class"
    make_folder(root)
    os.makedirs(root / "train" / "empty")
    (root / "train" / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(ImageFolderError, match=f"class folder {root}/train/empty holds no image"):
        image_folder.list_image_folder(str(root))

    root = tmp_path / "extra_test_class"
    make_folder(root)
    os.makedirs(root / "test" / "newclass")
    with pytest.raises(ImageFolderError, match=r"test has class folder\(s\) \['newclass'\]"):
        image_folder.list_image_folder(str(root))

    root = tmp_path / "corrupt"
    make_folder(root)
    bad = root / "train" / "cat2" / "001.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ImageFolderError, match=f"image file {bad} is corrupt"):
        image_folder.read_image_folder(str(root))

    root = tmp_path / "sizes"
    make_folder(root)
    Image.fromarray(_image(0, 0, size=16)).save(root / "train" / "Ant" / "999.png")
    with pytest.raises(ImageFolderError, match="images differ in size: .* pass image_size"):
        image_folder.read_image_folder(str(root))
    (x, _), _, _ = image_folder.read_image_folder(str(root), image_size=(12, 12))
    assert x.shape[1:] == (12, 12, 3)


def _write_idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_fashion(root, gz, n_train=40, n_test=10):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28)),
              "y_train": np.arange(n_train) % 10,
              "x_test": rng.integers(0, 256, (n_test, 28, 28)), "y_test": np.arange(n_test) % 10}
    os.makedirs(root, exist_ok=True)
    for key, stem in fashion_mnist.FILES.items():
        _write_idx(root / stem, arrays[key], gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_files(tmp_path, gz):
    arrays = make_fashion(tmp_path, gz)
    (x_train, y_train), (x_test, y_test) = fashion_mnist.read_fashion_mnist(str(tmp_path))
    np.testing.assert_array_equal(x_train[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(y_train, arrays["y_train"])
    np.testing.assert_array_equal(x_test[..., 0], arrays["x_test"])
    assert x_train.shape == (40, 28, 28, 1) and y_test.dtype == np.int32
    source, test, info = data.load_source("fashion_mnist", str(tmp_path), batch_size=8)
    assert (info.num_classes, info.num_train, info.num_test, info.image_shape) == (
        10, 40, 10, (28, 28, 1))
    # No augmentation by default: an epoch holds exactly the normalised training images.
    mean, std = x_train.mean() / 255, (x_train / 255).std()
    rows = np.concatenate([x for x, _ in source.epochs(0, 1)])
    expected = (x_train / 255 - mean) / std
    np.testing.assert_allclose(np.sort(rows.reshape(40, -1).sum(1)),
                               np.sort(expected.reshape(40, -1).sum(1)), rtol=1e-4, atol=1e-2)
    assert sum(len(y) for _, y in test) == 10


def test_fashion_mnist_errors(tmp_path):
    missing = tmp_path / "missing"
    make_fashion(missing, gz=True)
    os.remove(missing / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte.* not found in"):
        fashion_mnist.read_fashion_mnist(str(missing))
    bad = tmp_path / "bad"
    make_fashion(bad, gz=False)
    (bad / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    with pytest.raises(fashion_mnist.IdxFormatError, match="train-images-idx3-ubyte: header"):
        fashion_mnist.read_fashion_mnist(str(bad))
    (bad / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x08\x03")
    with pytest.raises(fashion_mnist.IdxFormatError, match="bad magic"):
        fashion_mnist.read_fashion_mnist(str(bad))
    mismatched = tmp_path / "mismatched"
    make_fashion(mismatched, gz=True)
    _write_idx(mismatched / "train-labels-idx1-ubyte", np.zeros(39), gz=True)
    with pytest.raises(fashion_mnist.IdxFormatError, match="do not match"):
        fashion_mnist.read_fashion_mnist(str(mismatched))


# --- The real data sets, where this workspace has them ------------------------------------
REAL = os.environ.get("KERAS_AST_REAL_DATA", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))
CIFAR_TAR = os.path.join(REAL, "cifar10-jpeg", "cifar10-jpeg.tar.gz")


@pytest.mark.skipif(not os.path.isfile(CIFAR_TAR),
                    reason=f"the real CIFAR-10 (JPEG q75 copy) archive is not at {CIFAR_TAR} "
                           "(set KERAS_AST_REAL_DATA to the folder holding cifar10-jpeg/)")
def test_real_cifar10_jpeg_copy(tmp_path):
    with tarfile.open(CIFAR_TAR) as tar:
        tar.extractall(tmp_path, filter="data")
    root = str(tmp_path / "cifar10-jpeg")
    (x_train, y_train), (x_test, y_test), names = image_folder.read_image_folder(root)
    assert names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                     "ship", "truck"]
    assert x_train.shape == (50000, 32, 32, 3) and x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(y_train).tolist() == [5000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    mean, _ = image_folder.channel_mean_std(x_train)
    np.testing.assert_allclose(mean, (0.4914, 0.4822, 0.4465), atol=1e-3)  # CIFAR-10's


@pytest.mark.skipif(not os.path.isdir(os.path.join(REAL, "fashion-mnist")),
                    reason=f"the real Fashion-MNIST files are not in {REAL}/fashion-mnist")
def test_real_fashion_mnist():
    (x_train, y_train), (x_test, y_test) = fashion_mnist.read_fashion_mnist(
        os.path.join(REAL, "fashion-mnist"))
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10


def test_decode_uses_the_accurate_jpeg_dct(tmp_path):
    image = _image(2, 50, size=16)
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=75)
    decoded = image_folder.decode_bytes(tf.io.read_file(str(tmp_path / "a.jpg")), 3).numpy()
    np.testing.assert_array_equal(decoded, np.asarray(Image.open(tmp_path / "a.jpg")))
