"""The small CNN used with the embedded 8x8 digits data set (the launcher's default)."""

from __future__ import annotations

import keras

from keras_ast.models.init import classifier, conv_bn

DENSE_LAYERS = ()


def small_cnn(num_classes=10, input_shape=(8, 8, 1), width=32):
    """Stem 3x3 conv + BN + ReLU, three 3x3 conv + BN + ReLU blocks (width, 2w stride 2, 2w),
    global average pooling and a Dense classifier producing logits (``classifier``)."""
    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, width, 3, 1, "stem_conv")
    x = conv_bn(x, width, 3, 1, "block1_conv")
    x = conv_bn(x, 2 * width, 3, 2, "block2_conv")
    x = conv_bn(x, 2 * width, 3, 1, "block3_conv")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, classifier(x, num_classes), name="small_cnn")
