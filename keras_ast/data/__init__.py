"""Input pipelines: the embedded digits set, CIFAR-10/100 and ImageNet. Nothing downloads."""

from keras_ast.data.cifar import (
    augment_cifar,
    cifar_source,
    load_cifar,
    normalise_cifar,
    read_python_archive,
)
from keras_ast.data.digits import NUM_CLASSES as _DIGIT_CLASSES
from keras_ast.data.digits import digits_source, load_digits, load_digits_arrays
from keras_ast.data.imagenet import imagenet_source, load_imagenet
from keras_ast.data.info import DataNotFoundError, DatasetInfo
from keras_ast.data.stream import EpochSource

DATASETS = ("digits", "cifar10", "cifar100", "imagenet")


def load_source(name, data_dir=None, batch_size=128, seed=0):
    """(EpochSource of the training batches, test pipeline, DatasetInfo) for `name` in
    DATASETS: the resumable form of `load_dataset`'s training set (epoch e's batches depend
    only on (seed, e); see `keras_ast.data.stream`). The training set drops its last partial
    batch (one compiled step shape)."""
    if name == "digits":
        split = load_digits_arrays(seed=seed)
        source, test = digits_source(batch_size, seed=seed, drop_remainder=True)
        info = DatasetInfo("digits", _DIGIT_CLASSES, len(split.x_train), len(split.x_test),
                           (8, 8, 1))
        return source, test, info
    if name in ("cifar10", "cifar100"):
        return cifar_source(name, data_dir, batch_size=batch_size, seed=seed)
    if name == "imagenet":
        return imagenet_source(data_dir, batch_size=batch_size, seed=seed)
    raise ValueError(f"unknown data set {name!r}; use one of {DATASETS}")


def load_dataset(name, data_dir=None, batch_size=128, seed=0):
    """(train, test, DatasetInfo) for `name` in DATASETS; the training set drops its last
    partial batch (one compiled step shape) and is reshuffled every time it is iterated."""
    source, test, info = load_source(name, data_dir, batch_size, seed)
    return source.reshuffled(), test, info
