"""Building blocks shared by the model zoo, with PyTorch's initialisers (as the paper's code):
convolutions Kaiming-normal fan_out (not Keras' glorot), BN momentum 0.1 in PyTorch terms."""

import keras

BN_MOMENTUM = 0.9  # PyTorch's momentum=0.1; each sub-net's BN copy updates every K-th step
BN_EPSILON = 1e-5


def conv_initializer():
    """Kaiming normal, fan_out, ReLU gain (torchvision ResNets)."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out",
                                              distribution="untruncated_normal")


def conv_bn(x, filters, kernel_size, strides, name, relu=True):
    """Conv2D (no bias, named `name`) + BatchNormalization (``{name}_bn``) (+ ReLU)."""
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                            use_bias=False, kernel_initializer=conv_initializer(),
                            name=name)(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                        name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def classifier(x, num_classes):
    """The Dense classifier named ``classifier`` (logits), PyTorch's default Linear init."""
    init = keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")
    return keras.layers.Dense(num_classes, kernel_initializer=init,
                              bias_initializer=keras.initializers.RandomUniform(
                                  -1.0 / x.shape[-1] ** 0.5, 1.0 / x.shape[-1] ** 0.5),
                              name="classifier")(x)
