"""Fashion-MNIST from its four idx files (gzipped or raw), read from disk; nothing downloads.

The files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``) are looked for in
`data_dir`, by default `DEFAULT_DIR` (where Debian's ``dataset-fashion-mnist`` package puts
them) when that exists.

Augmentation is off by default: Fashion-MNIST results are usually reported without it, the
garments are centred at a fixed scale, so crops mostly cut off the item's outline, and the
figures then compare with the published ones. ``augment=True`` turns on the same pad-crop and
flip as for small image folders (pad 3 px at 28x28).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from keras_ast.data.image_folder import arrays_source, take_per_class
from keras_ast.data.info import DataNotFoundError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
_UBYTE = 0x08


class IdxFormatError(ValueError):
    """An idx file is malformed; the message names the file."""


def read_idx(path: str) -> np.ndarray:
    """Reads one idx file of unsigned bytes (gzipped when its name ends in .gz).

    Format: two zero bytes, a type byte (0x08 = unsigned byte), a byte with the number of
    dimensions, then each dimension as a big-endian uint32, then the data.

    Raises:
      IdxFormatError: bad magic, another type than unsigned bytes, or a size that does not
        match the header.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise IdxFormatError(f"cannot read idx file {path}: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IdxFormatError(f"{path} is not an idx file (bad magic number)")
    if raw[2] != _UBYTE:
        raise IdxFormatError(f"{path}: idx type 0x{raw[2]:02x}, expected unsigned bytes (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path} is truncated (header of {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise IdxFormatError(f"{path}: header says {shape} = {int(np.prod(shape))} bytes of "
                             f"data, the file has {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find(data_dir, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    raise DataNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {data_dir}: put the four idx files "
        f"({', '.join(FILES.values())}, gzipped or not) there, or install Debian's "
        f"dataset-fashion-mnist (into {DEFAULT_DIR}); nothing is downloaded")


def resolve_dir(data_dir=None) -> str:
    """`data_dir`, or `DEFAULT_DIR` when none is given and it exists."""
    if data_dir:
        return os.path.expanduser(os.fspath(data_dir))
    if os.path.isdir(DEFAULT_DIR):
        return DEFAULT_DIR
    raise DataNotFoundError(
        f"Fashion-MNIST needs data_dir (none given, and {DEFAULT_DIR} does not exist): a "
        f"folder with {', '.join(FILES.values())} (.gz or raw)")


def read_fashion_mnist(data_dir=None):
    """((x_train, y_train), (x_test, y_test)): uint8 images [N, 28, 28, 1], int32 labels.

    Raises:
      DataNotFoundError: a file is missing. IdxFormatError: a file is malformed, or images
        and labels differ in count.
    """
    data_dir = resolve_dir(data_dir)
    arrays = {key: read_idx(_find(data_dir, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise IdxFormatError(
                f"Fashion-MNIST {split} split in {data_dir}: images {x.shape} and labels "
                f"{y.shape} do not match (expected [N, 28, 28] and [N])")
    return ((arrays["x_train"][..., None], arrays["y_train"].astype(np.int32)),
            (arrays["x_test"][..., None], arrays["y_test"].astype(np.int32)))


def fashion_mnist_source(data_dir=None, batch_size: int = 128, seed: int = 0,
                         augment: bool = False, train_subset=None,
                         drop_remainder: bool = True):
    """(EpochSource of the training batches, test pipeline, DatasetInfo) of Fashion-MNIST:
    per-channel normalisation from the training split, resumable seeded order, no
    augmentation unless `augment` (see the module docstring). `train_subset`: a
    class-balanced subset of that many training images (drawn with seed 0)."""
    train, test = read_fashion_mnist(data_dir)
    if train_subset is not None:
        train = take_per_class(*train, train_subset, seed=0)
    return arrays_source("fashion_mnist", train, test, len(CLASS_NAMES), batch_size, seed,
                         augment, drop_remainder)
