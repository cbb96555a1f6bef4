"""Image-folder data sets: ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (or ``val/``).

The layout `keras.utils.image_dataset_from_directory` reads and users keep their own images in:
one folder per class, labels in sorted folder-name order (the training split's folders define
the classes). JPEG, PNG, BMP and GIF files are decoded once into memory (uint8), so training
uses the same resumable, seeded `EpochSource` as the other in-memory sets: epoch e's batches
and augmentation draws depend only on (seed, e), and a killed run resumes bit-exactly.

Training images get CIFAR-style augmentation when they are small (pad 1/8 of the side, random
crop, horizontal flip; on by default up to 64x64 pixels, see `image_folder_source`), and every
image is normalised per channel with the mean and standard deviation of the training split.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from keras_ast.data.info import DataNotFoundError, DatasetInfo
from keras_ast.data.stream import in_memory_source

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TEST_SPLITS = ("test", "val")
SMALL_IMAGE = 64  # augmentation defaults on up to this side length (CIFAR-style)


class ImageFolderError(ValueError):
    """An image folder is not usable as a data set; the message names the path at fault."""


def _class_folders(split_dir):
    """Sub-folders of a split, sorted; hidden ones (".ipynb_checkpoints", ...) are no class."""
    return sorted(entry.name for entry in os.scandir(split_dir)
                  if entry.is_dir() and not entry.name.startswith("."))


def _image_files(class_dir):
    return sorted(entry.path for entry in os.scandir(class_dir)
                  if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS))


def list_image_folder(data_dir: str):
    """The files and labels of an image folder, checked.

    Returns:
      (class_names, (train_files, train_labels), (test_files, test_labels), test_split): file
      lists sorted by class then name, labels int32 indices into `class_names` (the training
      split's class folders in sorted order); test_split is "test" or "val".

    Raises:
      DataNotFoundError: `data_dir`, its ``train/`` or both ``test/`` and ``val/`` are missing.
      ImageFolderError: a class folder holds no image file, a class of the test split is not a
        class of the training split, or ``train/`` has no class folder.
    """
    data_dir = os.path.expanduser(os.fspath(data_dir))
    if not os.path.isdir(data_dir):
        raise DataNotFoundError(f"image folder {data_dir} does not exist")
    train_dir = os.path.join(data_dir, "train")
    if not os.path.isdir(train_dir):
        raise DataNotFoundError(
            f"image folder {data_dir} has no train split: expected {train_dir}/<class>/<image> "
            "(one folder per class) and test/ (or val/) beside it")
    test_split = next((s for s in TEST_SPLITS if os.path.isdir(os.path.join(data_dir, s))), None)
    if test_split is None:
        raise DataNotFoundError(
            f"image folder {data_dir} has no test split: expected "
            f"{os.path.join(data_dir, 'test')}/<class>/<image> (or val/ instead of test/)")
    class_names = _class_folders(train_dir)
    if not class_names:
        raise ImageFolderError(f"{train_dir} holds no class folder (expected "
                               f"{train_dir}/<class>/<image>)")
    test_dir = os.path.join(data_dir, test_split)
    unknown = sorted(set(_class_folders(test_dir)) - set(class_names))
    if unknown:
        raise ImageFolderError(
            f"{test_dir} has class folder(s) {unknown} that {train_dir} does not have: labels "
            "come from the training split's folders, so every test class must be there too")
    splits = []
    for split_dir in (train_dir, test_dir):
        files, labels = [], []
        for label, name in enumerate(class_names):
            class_dir = os.path.join(split_dir, name)
            if not os.path.isdir(class_dir):
                continue  # a class missing from the test split: allowed
            found = _image_files(class_dir)
            if not found:
                raise ImageFolderError(
                    f"class folder {class_dir} holds no image file "
                    f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add its images")
            files += found
            labels += [label] * len(found)
        splits.append((files, np.asarray(labels, np.int32)))
    return class_names, splits[0], splits[1], test_split


def decode_bytes(data, channels=0):
    """Decodes an encoded image (JPEG, PNG, BMP, GIF's first frame) to uint8 [H, W, C].

    JPEGs use libjpeg's accurate integer DCT (as PIL and keras' image loading do); TensorFlow's
    default fast DCT shifts CIFAR-10's red and blue channel means by about 0.005.
    """
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=channels, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=channels, expand_animations=False))


def _decode_one(path, channels):
    """Decodes one file in eager mode; raises ImageFolderError naming it when it cannot."""
    try:
        data = tf.io.read_file(path)
    except (tf.errors.OpError, OSError) as error:
        raise ImageFolderError(f"cannot read image file {path}: {error}") from None
    try:
        return decode_bytes(data, channels).numpy()
    except tf.errors.OpError:
        raise ImageFolderError(f"image file {path} is corrupt or not an image "
                               f"({', '.join(IMAGE_EXTENSIONS)})") from None


def _first_bad_file(files, channels):
    for path in files:
        _decode_one(path, channels)  # raises, naming the file
    return None


def decode_images(files, image_size=None, channels=None):
    """Decodes `files` into one uint8 array [N, H, W, C].

    Args:
      files: image paths (JPEG, PNG, BMP, first frame of a GIF).
      image_size: (height, width) to resize every image to (bilinear); None keeps the files'
        size, which must then be the same for all.
      channels: 1 or 3 (3 converts grey images to RGB and 1 RGB to grey); None takes the first
        file's.

    Raises:
      ImageFolderError: a file cannot be read or decoded, or sizes differ and no `image_size`.
    """
    if not files:
        return np.zeros((0, *(image_size or (0, 0)), channels or 3), np.uint8)
    if channels is None:
        channels = int(_decode_one(files[0], 0).shape[-1])
        channels = {4: 3, 2: 1}.get(channels, channels)  # drop an alpha channel

    def decode(path):
        image = decode_bytes(tf.io.read_file(path), channels)
        if image_size is not None:
            image = tf.image.resize(image, image_size, method="bilinear")
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return image

    dataset = tf.data.Dataset.from_tensor_slices(list(files)).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    images = []
    try:
        for image in dataset.as_numpy_iterator():
            images.append(image)
    except tf.errors.OpError:
        _first_bad_file(files, channels)  # name the file that failed
        raise
    shapes = {}
    for path, image in zip(files, images):
        shapes.setdefault(image.shape, path)
        if len(shapes) > 1:
            (shape_a, path_a), (shape_b, path_b) = list(shapes.items())[:2]
            raise ImageFolderError(
                f"images differ in size: {path_a} is {shape_a[0]}x{shape_a[1]}, {path_b} is "
                f"{shape_b[0]}x{shape_b[1]}; pass image_size (--image_size=H,W) to resize all")
    return np.stack(images)


def read_image_folder(data_dir: str, image_size=None, channels=None):
    """((x_train, y_train), (x_test, y_test), class_names) of an image folder: uint8 images
    [N, H, W, C] and int32 labels (see `list_image_folder` and `decode_images`)."""
    class_names, (train_files, y_train), (test_files, y_test), _ = list_image_folder(data_dir)
    x_train = decode_images(train_files, image_size, channels)
    x_test = decode_images(test_files, image_size, channels or int(x_train.shape[-1]))
    if x_test.size and x_test.shape[1:] != x_train.shape[1:]:
        raise ImageFolderError(
            f"test images are {x_test.shape[1]}x{x_test.shape[2]} but training images "
            f"{x_train.shape[1]}x{x_train.shape[2]} in {data_dir}; pass image_size "
            "(--image_size=H,W) to resize all")
    return (x_train, y_train), (x_test, y_test), class_names


def channel_mean_std(images):
    """Per-channel mean and standard deviation of uint8 images [N, H, W, C], in [0, 1]."""
    pixels = images.reshape(-1, images.shape[-1])
    mean = np.zeros(pixels.shape[-1])
    square = np.zeros(pixels.shape[-1])
    for start in range(0, len(pixels), 1 << 22):  # float64 sums in chunks (memory)
        chunk = pixels[start:start + (1 << 22)].astype(np.float64) / 255.0
        mean += chunk.sum(0)
        square += (chunk ** 2).sum(0)
    mean /= len(pixels)
    std = np.sqrt(np.maximum(square / len(pixels) - mean ** 2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def take_per_class(x, y, count: int, seed: int = 0):
    """A class-balanced subset: `count` examples in all, ``count // C`` of each of the C
    classes present (plus one for the first ``count % C`` classes), drawn with a seeded
    permutation; the order of `x` is kept. Raises ValueError when a class has too few."""
    classes = np.unique(y)
    per_class, extra = divmod(int(count), len(classes))
    rng = np.random.default_rng(seed)
    keep = []
    for i, c in enumerate(classes):
        rows = np.flatnonzero(y == c)
        want = per_class + (i < extra)
        if want > len(rows):
            raise ValueError(f"a subset of {count} needs {want} examples of class {c}, which "
                             f"has {len(rows)}")
        keep.append(np.sort(rng.permutation(rows)[:want]))
    keep = np.sort(np.concatenate(keep))
    return x[keep], y[keep]


def augment_small_images(images, key):
    """CIFAR-style augmentation of a uint8 batch: pad by 1/8 of the side (4 px at 32x32),
    random crop, random horizontal flip (stateless, from `key`)."""
    from keras_ast.data.cifar import augment_cifar

    pad = max(1, int(images.shape[1]) // 8)
    return augment_cifar(images, key, pad=pad)


def normalised(images, mean, std):
    """uint8 images -> float32 ``(x / 255 - mean) / std`` per channel."""
    return (tf.cast(images, tf.float32) / 255.0 - tf.constant(mean, tf.float32)) / tf.constant(
        std, tf.float32)


def arrays_source(name, train, test, num_classes, batch_size=128, seed=0, augment=False,
                  drop_remainder=True):
    """(EpochSource, test pipeline, DatasetInfo) over in-memory uint8 arrays: per-channel
    normalisation from the training split, optional `augment_small_images` on the training
    batches. Shared by the image-folder and Fashion-MNIST sets."""
    (x_train, y_train), (x_test, y_test) = train, test
    mean, std = channel_mean_std(x_train)

    def transform(batch, key):
        x, y = batch
        return normalised(augment_small_images(x, key) if augment else x, mean, std), y

    source = in_memory_source((x_train, y_train), batch_size, seed, transform=transform,
                              drop_remainder=drop_remainder)
    test_ds = (tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(batch_size)
               .map(lambda x, y: (normalised(x, mean, std), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .prefetch(tf.data.AUTOTUNE))
    info = DatasetInfo(name, num_classes, len(x_train), len(x_test), tuple(x_train.shape[1:]))
    return source, test_ds, info


def image_folder_source(data_dir: str, batch_size: int = 128, seed: int = 0, image_size=None,
                        augment=None, train_subset=None, drop_remainder: bool = True):
    """(EpochSource of the training batches, test pipeline, DatasetInfo) of an image folder.

    Args:
      data_dir: holds ``train/<class>/*`` and ``test/<class>/*`` (or ``val/``).
      batch_size: global batch size (both splits).
      seed: data order and augmentation seed.
      image_size: (height, width) to resize to; None when all images have one size.
      augment: pad-crop + flip on the training images; None: on when both sides are at most
        64 pixels (CIFAR-style augmentation is for small images).
      train_subset: train on a class-balanced subset of this many images (`take_per_class`,
        always drawn with seed 0, so runs with different seeds train on the same images);
        None: all.
      drop_remainder: drop the last partial training batch (one compiled step shape).

    Raises:
      DataNotFoundError, ImageFolderError: see `list_image_folder` and `decode_images`.
    """
    train, test, class_names = read_image_folder(data_dir, image_size)
    if train_subset is not None:
        train = take_per_class(*train, train_subset, seed=0)
    if augment is None:
        augment = max(train[0].shape[1:3]) <= SMALL_IMAGE
    return arrays_source("image_folder", train, test, len(class_names), batch_size, seed,
                         augment, drop_remainder)
