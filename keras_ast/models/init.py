"""Building blocks shared by the model zoo, with PyTorch's conventions (as the paper's code):
convolutions Kaiming-normal fan_out (not Keras' glorot), BN momentum 0.1 in PyTorch terms,
and PyTorch's symmetric zero padding."""

import keras

BN_MOMENTUM = 0.9  # PyTorch's momentum=0.1; each sub-net's BN copy updates every K-th step
BN_EPSILON = 1e-5  # PyTorch's default (Keras' is 1e-3)


def conv_initializer():
    """Kaiming normal, fan_out, ReLU gain (torchvision ResNets)."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out",
                                              distribution="untruncated_normal")


def batch_norm(x, name, gamma_initializer="ones"):
    """BatchNormalization with PyTorch's defaults (momentum 0.1 there, epsilon 1e-5)."""
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                           gamma_initializer=gamma_initializer, name=name)(x)


def conv(x, filters, kernel_size, strides, name):
    """Conv2D without bias named `name`, padded like PyTorch's ``padding=kernel_size // 2``.

    Keras' ``padding="same"`` pads a strided convolution on the bottom/right only, which shifts
    the sampling grid by one pixel against PyTorch; strided convolutions therefore get an
    explicit symmetric ``ZeroPadding2D`` (``{name}_pad``) and ``padding="valid"``.
    """
    padding = "same"
    if strides != 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                               use_bias=False, kernel_initializer=conv_initializer(),
                               name=name)(x)


def conv_bn(x, filters, kernel_size, strides, name, relu=True, bn_name=None,
            gamma_initializer="ones"):
    """`conv` (named `name`) + BatchNormalization (`bn_name`, default ``{name}_bn``)
    (+ ReLU ``{name}_relu``)."""
    x = conv(x, filters, kernel_size, strides, name)
    x = batch_norm(x, bn_name or f"{name}_bn", gamma_initializer)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def classifier(x, num_classes):
    """The Dense classifier named ``classifier`` (logits, no softmax), with PyTorch's default
    Linear initialisation: kernel and bias uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / x.shape[-1] ** 0.5
    return keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in",
                                                              distribution="uniform"),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound),
        name="classifier",
    )(x)
