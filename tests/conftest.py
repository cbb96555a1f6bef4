"""Shared test helpers: quiet TensorFlow, seeded runs, tiny models on the real digits data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_ast  # noqa: E402
from keras_ast.data import load_digits_arrays  # noqa: E402


def tiny_cnn(width=8, bn_momentum=0.9, depthwise=False, num_classes=10):
    """Stem conv + BN, two (or three) pruned conv + BN blocks, GAP, Dense classifier."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="stem_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", use_bias=False,
                            name="conv1")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    if depthwise:
        x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(2 * width, 3, padding="same", use_bias=True, name="conv2")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="bn2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name="tiny_cnn")


def compile_ast(model, lr=0.05, momentum=0.9, l2=0.0, jit_compile=False):
    model.compile(
        optimizer=keras_ast.SGD(lr, momentum=momentum, l2=l2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


@pytest.fixture(scope="session")
def digits():
    return load_digits_arrays(seed=0)


@pytest.fixture
def digits_batches(digits):
    """(x, y) of the first 256 training images: 4 batches of 64, no remainder."""
    return digits.x_train[:256], digits.y_train[:256]


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()


def random_masks(model, seed=0, density=0.5):
    """Assigns independent random masks (exact density per layer) to every sub-net."""
    rng = np.random.default_rng(seed)
    for layer in model.sparse_layers:
        shape = layer.masks.shape
        masks = (rng.random(shape) < density).astype("float32")
        layer.masks.assign(masks)
