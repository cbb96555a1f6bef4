"""Model zoo: shapes, parameter and MAC counts against published figures, naming, init."""

import keras
import numpy as np
import pytest

from keras_ast import models


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def _macs(model):
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            h, w = layer.output.shape[1:3]
            total += h * w * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def test_wide_resnet32_matches_the_paper():
    model = models.get_model("wrn32")
    assert model.output_shape == (None, 10)
    assert abs(_macs(model) / 275.6e6 - 1) < 0.005  # 275.6 M MACs per image (DESIGN.md s. 8)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 1 + 3 * 5 * 2 + 2  # stem, 30 block convs, 2 shortcuts
    assert {c.filters for c in convs} == {32, 64, 128}


def test_resnet_parameter_counts():
    assert _trainable(models.get_model("resnet18")) == 11_173_962  # torchvision-style count
    resnet50 = models.get_model("resnet50")
    assert _trainable(resnet50) == 25_557_032
    assert resnet50.output_shape == (None, 1000)


@pytest.mark.parametrize("name", ["small_cnn", "wrn32", "resnet18", "resnet50"])
def test_naming_and_initialisers(name):
    model = models.get_model(name)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs[0].name == "stem_conv"
    assert model.layers[-1].name == "classifier"
    init = convs[1].kernel_initializer
    assert isinstance(init, keras.initializers.VarianceScaling)
    assert (init.scale, init.mode, init.distribution) == (2.0, "fan_out", "untruncated_normal")
    assert all(not c.use_bias for c in convs)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(bn.momentum == 0.9 for bn in bns)


def test_dense_layers_and_unknown_model():
    assert models.dense_layers("resnet50") == ("classifier",)
    assert models.dense_layers("wrn32") == ()
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        models.get_model("vgg")
