"""CIFAR ResNets: the paper's wide ResNet-32, the standard CIFAR ResNet-18 and a ResNet-20 with
a width multiplier (small enough to train on two CPU cores)."""

from __future__ import annotations

import keras

from keras_ast.models.init import classifier, conv_bn

DENSE_LAYERS = ()  # on CIFAR the classifier is prunable too (docs/design.md section 4)


def basic_block(x, filters, strides, name):
    """A BasicBlock: 3x3 conv + BN + ReLU, 3x3 conv + BN, plus the shortcut, then ReLU.

    The shortcut is the identity, or a 1x1 conv (``{name}_shortcut``) + BN when the stride or
    the width changes. The stride sits on the first 3x3 conv.
    """
    shortcut = x
    y = conv_bn(x, filters, 3, strides, f"{name}_conv1", relu=True)
    y = conv_bn(y, filters, 3, 1, f"{name}_conv2", relu=False)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, strides, f"{name}_shortcut", relu=False)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _cifar_resnet(name, num_classes, input_shape, stem_width, widths, blocks_per_stage):
    """3x3 stem conv + BN + ReLU (no max-pool), stages of BasicBlocks (stride 2 at the first
    block of every stage after the first), global average pooling, Dense classifier."""
    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, stem_width, 3, 1, "stem_conv", relu=True, bn_name="stem_bn")
    for stage, (width, blocks) in enumerate(zip(widths, blocks_per_stage)):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = basic_block(x, width, strides, f"stage{stage + 1}_block{block + 1}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, classifier(x, num_classes), name=name)


def wide_resnet32(num_classes=10, input_shape=(32, 32, 3), widths=(32, 64, 128),
                  blocks_per_stage=5):
    """The paper's wide ResNet-32 (docs/design.md section 9).

    3x3 stem conv (``stem_conv``, widths[0]) + BN (``stem_bn``) + ReLU, three stages of
    `blocks_per_stage` BasicBlocks (widths 32/64/128, stride 2 at stages 2 and 3 with 1x1
    conv + BN shortcuts there), global average pooling, Dense classifier producing logits.
    1,860,522 trainable parameters and ~275.6 M MACs per 32x32 image at 10 classes.
    """
    return _cifar_resnet("wide_resnet32", num_classes, input_shape, widths[0], widths,
                         [blocks_per_stage] * len(widths))


def resnet18_cifar(num_classes=10, input_shape=(32, 32, 3)):
    """The standard CIFAR ResNet-18: 3x3 stem conv 64 (``stem_conv``) + BN (``stem_bn``) +
    ReLU (no max-pool), stages 64/128/256/512 of 2 BasicBlocks each, global average pooling,
    Dense classifier producing logits (11,173,962 parameters at 10 classes)."""
    return _cifar_resnet("resnet18_cifar", num_classes, input_shape, 64, (64, 128, 256, 512),
                         (2, 2, 2, 2))


def resnet20(num_classes=10, input_shape=(32, 32, 3), width_multiplier=1.0):
    """A CIFAR ResNet-20 (He et al. 2016) with a width multiplier, sized for CPU benchmarks.

    3x3 stem conv (``stem_conv``) + BN (``stem_bn``) + ReLU, three stages of 3 BasicBlocks with
    widths ``round(16 m) / round(32 m) / round(64 m)`` (m = `width_multiplier`), stride 2 at
    stages 2 and 3 with 1x1 conv + BN shortcuts there (option B, as the wide ResNet-32, so the
    shortcuts are prunable), global average pooling, Dense classifier producing logits.
    At m = 1 and 10 classes: 272,474 trainable parameters and 40,813,184 MACs per 32x32 image
    (the option-A ResNet-20's 40.55 M plus 262,144 in the two 1x1 shortcuts); at m = 0.5:
    68,786 parameters and 10,314,048 MACs (about 1/27 of the wide ResNet-32).
    """
    if width_multiplier <= 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
    widths = tuple(max(1, round(w * width_multiplier)) for w in (16, 32, 64))
    return _cifar_resnet("resnet20", num_classes, input_shape, widths[0], widths, (3, 3, 3))
