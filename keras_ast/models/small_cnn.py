"""The small CNN used with the embedded 8x8 digits data set (the launcher's default)."""

from __future__ import annotations

import keras

from keras_ast.models.init import conv_initializer


def small_cnn(num_classes=10, input_shape=(8, 8, 1), width=32):
    """Stem 3x3 conv + BN + ReLU, three 3x3 conv + BN + ReLU blocks (width, 2w stride 2, 2w),
    global average pooling and a Dense classifier producing logits.

    The stem is named ``stem_conv`` / ``stem_bn``; the classifier ``classifier``.
    """

    def block(x, filters, strides, name):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                kernel_initializer=conv_initializer(), name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x)

    inputs = keras.Input(input_shape)
    x = block(inputs, width, 1, "stem")
    x = block(x, width, 1, "block1")
    x = block(x, 2 * width, 2, "block2")
    x = block(x, 2 * width, 1, "block3")
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name="small_cnn")
