"""CIFAR-10 / CIFAR-100 input pipelines (pad-4 random crop, flip, per-channel normalisation).

Sources, in order: the standard python-version archive in `data_dir`
(``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, read directly) or its extracted
folder (``cifar-10-batches-py`` / ``cifar-100-python``); else a tensorflow-datasets copy
already prepared under `data_dir`. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np
import tensorflow as tf

from keras_ast.data.info import DataNotFoundError, DatasetInfo

_SPECS = {
    "cifar10": dict(
        archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
        label_key=b"labels", num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": dict(
        archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        train=["train"], test=["test"], label_key=b"fine_labels", num_classes=100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    ),
}


def _spec(name):
    if name not in _SPECS:
        raise ValueError(f"unknown CIFAR data set {name!r}; use one of {sorted(_SPECS)}")
    return _SPECS[name]


def _decode(batch, label_key):
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images.transpose(0, 2, 3, 1), np.asarray(batch[label_key], dtype=np.int32)


def _concat(parts):
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_python_archive(name, data_dir):
    """Returns ((x_train, y_train), (x_test, y_test)) as uint8 NHWC / int32 arrays, or None
    if `data_dir` has neither the archive nor the extracted folder."""
    spec = _spec(name)
    folder = os.path.join(data_dir, spec["folder"])
    archive = os.path.join(data_dir, spec["archive"])
    if os.path.isdir(folder):
        def load(member):
            with open(os.path.join(folder, member), "rb") as f:
                return _decode(pickle.load(f, encoding="bytes"), spec["label_key"])
        return _concat([load(m) for m in spec["train"]]), _concat([load(m) for m in spec["test"]])
    if os.path.isfile(archive):
        with tarfile.open(archive, "r:gz") as tar:
            def load(member):
                f = tar.extractfile(f"{spec['folder']}/{member}")
                return _decode(pickle.load(f, encoding="bytes"), spec["label_key"])
            return (_concat([load(m) for m in spec["train"]]),
                    _concat([load(m) for m in spec["test"]]))
    return None


def _read_tfds(name, data_dir):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            return None
        splits = tfds.as_numpy(builder.as_dataset(batch_size=-1, as_supervised=True))
    except Exception:  # noqa: BLE001 - any tfds failure means "not prepared here"
        return None
    return tuple((x, y.astype(np.int32)) for x, y in (splits["train"], splits["test"]))


def augment_cifar(image, seed):
    """Random 32x32 crop of the image zero-padded by 4 pixels, then a random horizontal flip.

    `seed` is a shape-[2] int tensor (stateless ops: the same seed gives the same result).
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


def load_cifar(name="cifar10", data_dir=None, batch_size=128, seed=0, augment=True,
               drop_remainder=True):
    """CIFAR-10/100 as ((train, test) tf.data pipelines, DatasetInfo).

    Train: shuffled (seeded, reshuffled each epoch), augmented with `augment_cifar`, normalised
    per channel; test: normalised only. Images float32 NHWC, labels int32.

    Raises:
      DataNotFoundError: with a message naming the file to put where.
    """
    spec = _spec(name)
    arrays = None
    if data_dir and os.path.isdir(data_dir):
        arrays = read_python_archive(name, data_dir) or _read_tfds(name, data_dir)
    if arrays is None:
        raise DataNotFoundError(
            f"{name.upper().replace('CIFAR', 'CIFAR-')} not found in {data_dir!r}: put "
            f"{spec['archive']} (the python version from https://www.cs.toronto.edu/~kriz/"
            f"cifar.html) or its extracted {spec['folder']}/ there, or prepare it with "
            f"tfds (tfds build {name} --data_dir {data_dir})"
        )
    (x_train, y_train), (x_test, y_test) = arrays
    mean = tf.constant(spec["mean"], tf.float32)
    std = tf.constant(spec["std"], tf.float32)

    def normalise(image):
        return (tf.cast(image, tf.float32) / 255.0 - mean) / std

    train = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
        len(x_train), seed=seed, reshuffle_each_iteration=True)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        train = tf.data.Dataset.zip((train, seeds)).map(
            lambda xy, s: (augment_cifar(xy[0], s), xy[1]), num_parallel_calls=tf.data.AUTOTUNE)
    train = (train.map(lambda x, y: (normalise(x), y), num_parallel_calls=tf.data.AUTOTUNE)
             .batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE))
    test = (tf.data.Dataset.from_tensor_slices((x_test, y_test))
            .map(lambda x, y: (normalise(x), y), num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    info = DatasetInfo(name, spec["num_classes"], len(x_train), len(x_test), (32, 32, 3))
    return train, test, info
