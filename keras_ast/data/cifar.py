"""CIFAR-10 / CIFAR-100 input pipelines (pad-4 random crop, flip, per-channel normalisation).

Sources, in order: the standard python-version archive in `data_dir`
(``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, read directly, no extraction) or its
extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``, either inside `data_dir` or
`data_dir` itself; a complete folder is read first, as it needs no decompression); else a
tensorflow-datasets copy already prepared under `data_dir`
(``tfds build cifar10 --data_dir DIR``). Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np
import tensorflow as tf

from keras_ast.data.info import DataNotFoundError, DatasetInfo

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_SHAPE = (32, 32, 3)
PAD = 4

_SPECS = {
    "cifar10": dict(
        title="CIFAR-10", archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
        label_key=b"labels", num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": dict(
        title="CIFAR-100", archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        train=["train"], test=["test"], label_key=b"fine_labels", num_classes=100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    ),
}


def _spec(name):
    if name not in _SPECS:
        raise ValueError(f"unknown CIFAR data set {name!r}; use one of {sorted(_SPECS)}")
    return _SPECS[name]


def cifar_mean_std(name: str) -> tuple[tuple, tuple]:
    """The standard per-channel (mean, std) of `name` ("cifar10" or "cifar100"), in [0, 1]."""
    spec = _spec(name)
    return spec["mean"], spec["std"]


def _decode(batch, label_key):
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images.transpose(0, 2, 3, 1), np.asarray(batch[label_key], dtype=np.int32)


def _splits(spec, loaded):
    """((x_train, y_train), (x_test, y_test)) from {member: decoded batch}."""
    def concat(members):
        parts = [loaded[m] for m in members]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return concat(spec["train"]), concat(spec["test"])


def _read_folder(spec, folder):
    loaded = {}
    for member in spec["train"] + spec["test"]:
        path = os.path.join(folder, member)
        if not os.path.isfile(path):
            raise DataNotFoundError(
                f"{spec['title']} folder {folder} is incomplete: {member} is missing (it "
                f"should hold {', '.join(spec['train'] + spec['test'])}); replace it with a "
                f"fresh {spec['archive']} from {URL}")
        with open(path, "rb") as f:
            loaded[member] = _decode(pickle.load(f, encoding="bytes"), spec["label_key"])
    return _splits(spec, loaded)


def _read_archive(spec, archive):
    # One sequential pass: the real archives store the batches out of order, and seeking
    # backwards in a .tar.gz restarts the decompression.
    wanted = {f"{spec['folder']}/{m}": m for m in spec["train"] + spec["test"]}
    loaded = {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            key = wanted.get(member.name.lstrip("./"))
            if key is not None and member.isfile():
                loaded[key] = _decode(pickle.load(tar.extractfile(member), encoding="bytes"),
                                      spec["label_key"])
    missing = sorted(set(wanted.values()) - set(loaded))
    if missing:
        raise DataNotFoundError(
            f"{archive} is not the python version of {spec['title']}: {missing} missing under "
            f"{spec['folder']}/; get {spec['archive']} from {URL}")
    return _splits(spec, loaded)


def read_python_archive(name: str, data_dir: str):
    """Reads the python-version CIFAR files found in `data_dir`.

    Looks for the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) in
    `data_dir` or `data_dir` being that folder itself (used when complete), then the archive
    (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``) in `data_dir`, read directly.

    Raises:
      DataNotFoundError: an extracted folder is incomplete (and there is no archive) or the
        archive lacks a batch.

    Returns:
      ((x_train, y_train), (x_test, y_test)): images uint8 [N, 32, 32, 3] (NHWC), labels int32
      [N] (the fine labels for CIFAR-100); or None when none of those is there.
    """
    spec = _spec(name)
    archive = os.path.join(data_dir, spec["archive"])
    members = spec["train"] + spec["test"]
    for folder in (os.path.join(data_dir, spec["folder"]), data_dir):
        if all(os.path.isfile(os.path.join(folder, m)) for m in members):
            return _read_folder(spec, folder)  # complete and already extracted: fastest
    if os.path.isfile(archive):
        return _read_archive(spec, archive)
    for folder in (os.path.join(data_dir, spec["folder"]), data_dir):
        if any(os.path.isfile(os.path.join(folder, m)) for m in members) or (
                folder != data_dir and os.path.isdir(folder)):
            return _read_folder(spec, folder)  # incomplete: raises, naming what is missing
    return None


def _read_tfds(name, data_dir):
    """The arrays of a tfds copy already prepared under `data_dir`, or None (never downloads)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception:  # noqa: BLE001 - no readable tfds copy here means "not found"
        return None
    if not prepared:
        return None
    splits = tfds.as_numpy(builder.as_dataset(split=["train", "test"], batch_size=-1,
                                              as_supervised=True))
    return tuple((np.asarray(x, np.uint8), np.asarray(y, np.int32)) for x, y in splits)


def _not_found(name, data_dir):
    spec = _spec(name)
    where = data_dir if data_dir else "DIR"
    head = (f"{spec['title']} not found in {data_dir}" if data_dir
            else f"{spec['title']} needs data_dir (none was given)")
    return DataNotFoundError(
        f"{head}: put {spec['archive']} (the python version, from {URL}) or its extracted "
        f"{spec['folder']}/ in {where}, or prepare it with tfds "
        f"(tfds build {name} --data_dir {where}); nothing is downloaded")


def augment_cifar(image, seed, pad: int = PAD):
    """Random crop of the image zero-padded by `pad` pixels (same size out), then a random
    horizontal flip (probability 1/2).

    Args:
      image: one image [H, W, C] or a batch [B, H, W, C], any dtype (uint8 before
        normalisation in the pipelines, so the padding is black).
      seed: shape-[2] int32/int64 tensor. Stateless: the same seed and input always give the
        same output; each image of a batch draws its own crop offset and flip.
      pad: the zero padding (crop offsets are uniform in [0, 2 * pad]).

    Returns:
      The augmented image(s), same shape and dtype as `image`.
    """
    image = tf.convert_to_tensor(image)
    single = image.shape.rank == 3
    images = image[None] if single else image
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    offset_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    offsets = tf.random.stateless_uniform([batch, 2], offset_seed, minval=0,
                                          maxval=2 * pad + 1, dtype=tf.int32)
    flips = tf.random.stateless_uniform([batch], flip_seed) < 0.5
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = offsets[:, :1] + tf.range(height)[None]  # [B, H]
    cols = offsets[:, 1:] + tf.range(width)[None]  # [B, W]
    cols = tf.where(flips[:, None], tf.reverse(cols, [1]), cols)  # the flip of the crop
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    out = tf.gather(out, cols, axis=2, batch_dims=1)
    out = tf.ensure_shape(out, images.shape)
    return out[0] if single else out


def normalise_cifar(image, name: str = "cifar10"):
    """uint8 (or 0-255 float) images -> float32 (x / 255 - mean) / std, per channel."""
    mean, std = cifar_mean_std(name)
    return (tf.cast(image, tf.float32) / 255.0 - tf.constant(mean)) / tf.constant(std)


def cifar_source(name: str = "cifar10", data_dir: str | None = None, batch_size: int = 128,
                 seed: int = 0, augment: bool = True, drop_remainder: bool = True):
    """(EpochSource of the training batches, test pipeline, DatasetInfo) of CIFAR-10/100.

    Epoch e of the training set is a permutation that depends only on (seed, e), and batch j
    of it is augmented with the stateless key (seed, e, j), so a resumed run sees exactly the
    batches an uninterrupted run would. See `load_cifar` for the rest.
    """
    from keras_ast.data.stream import in_memory_source

    spec = _spec(name)
    arrays = None
    if data_dir:
        data_dir = os.path.expanduser(os.fspath(data_dir))
        if os.path.isdir(data_dir):
            arrays = read_python_archive(name, data_dir) or _read_tfds(name, data_dir)
    if arrays is None:
        raise _not_found(name, data_dir)
    (x_train, y_train), (x_test, y_test) = arrays

    def transform(batch, key):
        x, y = batch
        return normalise_cifar(augment_cifar(x, key) if augment else x, name), y

    source = in_memory_source((x_train, y_train), batch_size, seed, transform=transform,
                              drop_remainder=drop_remainder)
    test = (tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(batch_size)
            .map(lambda x, y: (normalise_cifar(x, name), y), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))
    info = DatasetInfo(name, spec["num_classes"], len(x_train), len(x_test), IMAGE_SHAPE)
    return source, test, info


def load_cifar(name: str = "cifar10", data_dir: str | None = None, batch_size: int = 128,
               seed: int = 0, augment: bool = True, drop_remainder: bool = True):
    """CIFAR-10 / CIFAR-100 as `tf.data` pipelines.

    Train: shuffled over the whole set (seeded, reshuffled every epoch), batched, augmented
    with `augment_cifar` (pad-4 random crop + flip, per image; new draws every epoch),
    normalised per channel with the standard mean/std, prefetched. Test: normalised only,
    in file order, last partial batch kept. Images float32 [B, 32, 32, 3], labels int32 [B].
    The same `seed` gives the same stream. For a resumable order use `cifar_source`.

    Args:
      name: "cifar10" or "cifar100" (fine labels).
      data_dir: folder holding the python-version archive, its extracted folder, or a
        prepared tfds copy (see the module docstring). Nothing is downloaded.
      batch_size: images per batch (both splits).
      seed: shuffle and augmentation seed.
      augment: crop + flip the training images.
      drop_remainder: drop the last partial training batch (one step shape).

    Returns:
      (train_ds, test_ds, DatasetInfo).

    Raises:
      DataNotFoundError (a FileNotFoundError): nothing usable in `data_dir`; the message
        says which file to put where.
      ValueError: unknown `name`.
    """
    source, test, info = cifar_source(name, data_dir, batch_size, seed, augment,
                                      drop_remainder)
    return source.reshuffled(), test, info
