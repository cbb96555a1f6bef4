"""The embedded default data set: scikit-learn's bundled 8x8 handwritten digits.

1,797 real 8x8 grey-scale images of the digits 0-9 (UCI "optdigits" test set), shipped inside
scikit-learn, so it needs no download. It is small enough to train several sparse sub-nets in
about a minute on two CPU cores, which makes it the default data set of the launcher and tests.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


@dataclasses.dataclass(frozen=True)
class DigitsSplit:
    """Normalised digits arrays: images [N, 8, 8, 1] float32, labels [N] int32."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_arrays(test_fraction: float = 0.25, seed: int = 0) -> DigitsSplit:
    """Returns a stratified, seeded train/test split of the digits, scaled to [0, 1].

    Args:
      test_fraction: share of images held out for testing, in (0, 1).
      seed: seed of the split (the same seed always gives the same split).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return DigitsSplit(x_train, y_train, x_test, y_test)


def digits_source(batch_size: int = 64, test_fraction: float = 0.25, seed: int = 0,
                  drop_remainder: bool = False):
    """(EpochSource of the training batches, test pipeline): epoch e of the training set is
    a permutation that depends only on (seed, e), so a resumed run sees the same batches."""
    from keras_ast.data.stream import in_memory_source

    split = load_digits_arrays(test_fraction, seed)
    source = in_memory_source((split.x_train, split.y_train), batch_size, seed,
                              drop_remainder=drop_remainder)
    test = (
        tf.data.Dataset.from_tensor_slices((split.x_test, split.y_test))
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    return source, test


def load_digits(
    batch_size: int = 64,
    test_fraction: float = 0.25,
    seed: int = 0,
    drop_remainder: bool = False,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Returns (train, test) `tf.data` pipelines of (image, label) batches.

    The training set is shuffled with `seed` every epoch (a new order each time it is
    iterated); the test set is not. For a resumable order use `digits_source`.
    """
    source, test = digits_source(batch_size, test_fraction, seed, drop_remainder)
    return source.reshuffled(), test
