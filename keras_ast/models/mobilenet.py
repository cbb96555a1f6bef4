"""MobileNet-style CIFAR networks (v1 and v2) whose 1x1 convolutions XNNPACK can run sparse."""

from __future__ import annotations

import keras

from keras_ast.models.init import (BN_EPSILON, BN_MOMENTUM, classifier, conv_bn,
                                   conv_initializer)

DENSE_LAYERS = ()

# (pointwise filters, depthwise stride) of the blocks after the stem (MobileNet v1's widths).
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1))


def _depthwise(x, strides, name, relu=keras.layers.ReLU):
    """3x3 depthwise + BN + ReLU (or `relu`), padded symmetrically (ZeroPadding2D + 'valid') when
    strided, as XNNPACK's sparse inference requires."""
    padding = "same"
    if strides != 1:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        padding = "valid"
    x = keras.layers.DepthwiseConv2D(3, strides=strides, padding=padding, use_bias=False,
                                     depthwise_initializer=conv_initializer(), name=name)(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                        name=f"{name}_bn")(x)
    return relu(name=f"{name}_relu")(x)


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



# (expansion t, output channels c, repeats n, first stride s) of MobileNetV2, CIFAR variant:
# the ImageNet table with the first two strides set to 1 for 32x32 inputs after a stride-2 stem.
V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))


def _relu6(name):
    return keras.layers.ReLU(6.0, name=name)


def mobilenet_v2(num_classes=10, input_shape=(32, 32, 3), width_multiplier=1.0):
    """MobileNetV2 for small images: a 3x3 stride-2 stem (``stem_conv``: ZeroPadding2D(1) and a
    'valid' convolution, + ``stem_bn`` + ReLU6), inverted residual blocks (1x1 expansion
    ``<b>_expand`` + BN + ReLU6, 3x3 depthwise + BN + ReLU6, linear 1x1 projection
    ``<b>_project`` + BN, and an Add when shape allows), a final 1x1 convolution
    (``head_conv``, 1280 channels at width 1), global average pooling and a Dense
    ``classifier``. Widths follow `width_multiplier` (rounded to multiples of 8).

    Every layer is of a kind XNNPACK's sparse inference accepts, so with ``prunable="xnnpack"``
    (the 1x1 convolutions: 95 % of the weights at width 1, 91 % at 0.5) and more than 2/3
    sparsity an exported sub-net qualifies (`keras_ast.xnnpack.check`). On 32x32 inputs:
    2.27 M parameters and 22.0 M MACs at width 1; 0.72 M and 7.0 M at width 0.5.
    """
    def width(filters):
        return max(8, int(round(filters * width_multiplier / 8)) * 8)

    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, width(32), 3, 2, "stem_conv", bn_name="stem_bn", relu=False)
    x = _relu6("stem_relu")(x)
    block = 0
    for t, c, n, s in V2_BLOCKS:
        for i in range(n):
            block += 1
            name, strides, channels = f"block{block}", (s if i == 0 else 1), x.shape[-1]
            y = x
            if t != 1:
                y = conv_bn(y, channels * t, 1, 1, f"{name}_expand", relu=False)
                y = _relu6(f"{name}_expand_relu")(y)
            y = _depthwise(y, strides, f"{name}_dw", relu=lambda name: _relu6(name))
            y = conv_bn(y, width(c), 1, 1, f"{name}_project", relu=False)
            x = keras.layers.Add(name=f"{name}_add")([x, y]) if (
                strides == 1 and channels == width(c)) else y
    x = conv_bn(x, width(1280) if width_multiplier > 1 else 1280, 1, 1, "head_conv", relu=False)
    x = _relu6("head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, classifier(x, num_classes), name="mobilenet_v2")
