"""ResNet-50 for ImageNet (bottleneck v1.5: the stride sits on the 3x3 conv), as torchvision."""

from __future__ import annotations

import keras

from keras_ast.models.init import classifier, conv_bn

DENSE_LAYERS = ("classifier",)  # on ImageNet the classifier stays dense (docs/design.md s. 4)


def bottleneck(x, filters, strides, name, zero_init_residual=False):
    """1x1 (filters) -> 3x3 (filters, stride) -> 1x1 (4 x filters), each + BN; a 1x1 conv + BN
    shortcut when the shape changes; ReLU after the sum.

    The last BN's gamma starts at 1 by default (torchvision's default,
    ``zero_init_residual=False``); `zero_init_residual=True` starts it at 0 so each block
    begins as the identity (Goyal et al. 2017).
    """
    shortcut = x
    y = conv_bn(x, filters, 1, 1, f"{name}_conv1")
    y = conv_bn(y, filters, 3, strides, f"{name}_conv2")
    y = conv_bn(y, 4 * filters, 1, 1, f"{name}_conv3", relu=False,
                gamma_initializer="zeros" if zero_init_residual else "ones")
    if strides != 1 or x.shape[-1] != 4 * filters:
        shortcut = conv_bn(x, 4 * filters, 1, strides, f"{name}_shortcut", relu=False)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def resnet50(num_classes=1000, input_shape=(224, 224, 3), zero_init_residual=False):
    """ResNet-50 v1.5: 7x7/2 stem conv (``stem_conv``) + BN (``stem_bn``) + ReLU + 3x3/2
    max-pool, stages of 3/4/6/3 bottlenecks (widths 64/128/256/512, x4 expansion, stride 2 on
    the 3x3 conv of each stage's first block from stage 2 on), global average pooling, Dense
    classifier producing logits (25,557,032 parameters at 1000 classes).

    Args:
      num_classes: outputs of the classifier.
      input_shape: fixed (height, width, channels) of the input.
      zero_init_residual: start the last BN gamma of every bottleneck at 0 (default: 1).
    """
    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, 64, 7, 2, "stem_conv", bn_name="stem_bn")
    # Zero padding equals PyTorch's -inf padding here: the inputs are ReLU outputs (>= 0).
    x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = bottleneck(x, filters, strides, f"stage{stage + 1}_block{block + 1}",
                           zero_init_residual)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, classifier(x, num_classes), name="resnet50")
