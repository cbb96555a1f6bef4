"""Initialisers shared by the model zoo (PyTorch's, as in the paper's code)."""

import keras


def conv_initializer():
    """Kaiming normal, fan_out, ReLU gain (torchvision ResNets), instead of Keras' glorot."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out",
                                              distribution="untruncated_normal")
