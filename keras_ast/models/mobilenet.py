"""A MobileNet-style CIFAR network whose 1x1 convolutions XNNPACK can run sparse."""

from __future__ import annotations

import keras

from keras_ast.models.init import BN_EPSILON, BN_MOMENTUM, classifier, conv_bn

DENSE_LAYERS = ()

# (pointwise filters, depthwise stride) of the blocks after the stem (MobileNet v1's widths).
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1))


def _depthwise(x, strides, name):
    """3x3 depthwise + BN + ReLU, padded symmetrically (ZeroPadding2D + 'valid') when
    strided, as XNNPACK's sparse inference requires."""
    padding = "same"
    if strides != 1:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        padding = "valid"
    x = keras.layers.DepthwiseConv2D(3, strides=strides, padding=padding, use_bias=False,
                                     name=name)(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                        name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def mobilenet(num_classes=10, input_shape=(32, 32, 3), width_multiplier=1.0):
    """MobileNet v1 for small images: a 3x3 stride-2 stem (``stem_conv``: ZeroPadding2D(1) and
    a 'valid' convolution, + ``stem_bn`` + ReLU), seven blocks of 3x3 depthwise + BN + ReLU and
    1x1 convolution (``block<i>_pw``) + BN + ReLU (widths 64-512 times `width_multiplier`,
    three of them strided), global average pooling and a Dense ``classifier``.

    Its layout is what XNNPACK's sparse inference accepts (`keras_ast.xnnpack.check`), so with
    ``prunable="xnnpack"`` (the 1x1 convolutions, 94 % of the weights at width 1) and more than
    2/3 sparsity an exported sub-net qualifies. 0.55 M parameters and 5.7 M MACs at width 1 on
    32x32 inputs.
    """
    def width(filters):
        return max(8, int(round(filters * width_multiplier / 8)) * 8)

    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, width(32), 3, 2, "stem_conv", bn_name="stem_bn")
    for i, (filters, strides) in enumerate(BLOCKS, start=1):
        x = _depthwise(x, strides, f"block{i}_dw")
        x = conv_bn(x, width(filters), 1, 1, f"block{i}_pw")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, classifier(x, num_classes), name="mobilenet")

