"""ResNet-50 for ImageNet (bottleneck v1.5: the stride sits on the 3x3 conv)."""

from __future__ import annotations

import keras

from keras_ast.models.init import BN_EPSILON, BN_MOMENTUM, classifier, conv_bn, conv_initializer

DENSE_LAYERS = ("classifier",)  # on ImageNet the classifier stays dense (DESIGN.md s. 4)


def bottleneck(x, filters, strides, name):
    """1x1 (filters) -> 3x3 (filters, stride) -> 1x1 (4 x filters), each + BN; a 1x1 conv + BN
    shortcut when the shape changes. The last BN's gamma starts at 1 (no zero-init), as
    torchvision's default."""
    shortcut = x
    y = conv_bn(x, filters, 1, 1, f"{name}_conv1")
    y = conv_bn(y, filters, 3, strides, f"{name}_conv2")
    y = conv_bn(y, 4 * filters, 1, 1, f"{name}_conv3", relu=False)
    if strides != 1 or x.shape[-1] != 4 * filters:
        shortcut = conv_bn(x, 4 * filters, 1, strides, f"{name}_shortcut", relu=False)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def resnet50(num_classes=1000, input_shape=(224, 224, 3)):
    """ResNet-50: 7x7/2 stem conv + BN + ReLU + 3x3/2 max-pool, stages of 3/4/6/3 bottlenecks
    (64/128/256/512 x 4), global average pooling, Dense classifier (25.56 M parameters)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.ZeroPadding2D(3, name="stem_pad")(inputs)
    x = keras.layers.Conv2D(64, 7, strides=2, use_bias=False, name="stem_conv",
                            kernel_initializer=conv_initializer())(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                        name="stem_conv_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = bottleneck(x, filters, strides, f"stage{stage + 1}_block{block + 1}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, classifier(x, num_classes), name="resnet50")
