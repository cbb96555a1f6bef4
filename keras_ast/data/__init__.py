"""Input pipelines: the embedded digits set, image folders, Fashion-MNIST, CIFAR-10/100 and
ImageNet. Nothing downloads."""

from keras_ast.data.cifar import (
    augment_cifar,
    cifar_source,
    load_cifar,
    normalise_cifar,
    read_python_archive,
)
from keras_ast.data.digits import NUM_CLASSES as _DIGIT_CLASSES
from keras_ast.data.digits import digits_source, load_digits, load_digits_arrays
from keras_ast.data.fashion_mnist import fashion_mnist_source, read_fashion_mnist
from keras_ast.data.image_folder import (
    ImageFolderError,
    image_folder_source,
    read_image_folder,
    take_per_class,
)
from keras_ast.data.imagenet import imagenet_source, load_imagenet
from keras_ast.data.info import DataNotFoundError, DatasetInfo
from keras_ast.data.stream import EpochSource

DATASETS = ("digits", "image_folder", "fashion_mnist", "cifar10", "cifar100", "imagenet")


def load_source(name, data_dir=None, batch_size=128, seed=0, image_size=None, augment=None,
                train_subset=None):
    """(EpochSource of the training batches, test pipeline, DatasetInfo) for `name` in
    DATASETS: the resumable form of `load_dataset`'s training set (epoch e's batches depend
    only on (seed, e); see `keras_ast.data.stream`). The training set drops its last partial
    batch (one compiled step shape).

    `image_size` (height, width) and `augment` (None: the set's default) apply to
    ``image_folder`` (both) and ``fashion_mnist`` (`augment` only); `train_subset` (a
    class-balanced subset of that many training images, the same for every seed) to both.
    """
    if name not in ("image_folder", "fashion_mnist") and (
            image_size is not None or augment is not None or train_subset is not None):
        raise ValueError(f"image_size, augment and train_subset apply to image_folder and "
                         f"fashion_mnist, not to {name!r}")
    if name == "image_folder":
        if not data_dir:
            raise DataNotFoundError("image_folder needs data_dir (DIR/train/<class>/*, "
                                    "DIR/test/<class>/*)")
        return image_folder_source(data_dir, batch_size, seed, image_size=image_size,
                                   augment=augment, train_subset=train_subset)
    if name == "fashion_mnist":
        return fashion_mnist_source(data_dir, batch_size, seed, augment=bool(augment),
                                    train_subset=train_subset)
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


def load_dataset(name, data_dir=None, batch_size=128, seed=0, **kwargs):
    """(train, test, DatasetInfo) for `name` in DATASETS; the training set drops its last
    partial batch (one compiled step shape) and is reshuffled every time it is iterated.
    `kwargs`: `load_source`'s image_size, augment, train_subset."""
    source, test, info = load_source(name, data_dir, batch_size, seed, **kwargs)
    return source.reshuffled(), test, info
