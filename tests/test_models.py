"""Model zoo: shapes, parameter and MAC counts against published figures, naming, init."""

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_ast import compat, models  # noqa: E402

NAMES = ("small_cnn", "wrn32", "resnet18", "resnet20", "resnet50", "mobilenet", "mobilenet_v2")


@functools.lru_cache(maxsize=None)
def _default(name):
    """Each model at its default arguments, built once for the whole file (ResNet-50 ~2 s)."""
    return models.get_model(name)


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def _convs(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def _macs(model):
    """Multiply-accumulates per image: sum over Conv2D and Dense of output positions * kernel
    size (kh * kw * cin * cout, or cin * cout)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            h, w = layer.output.shape[1:3]
            total += h * w * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def _producer(layer):
    return compat.producer(layer.input)


def test_registry():
    assert tuple(models.MODELS) == NAMES
    assert models.MODELS["wrn32"] is models.wide_resnet32
    assert models.MODELS["resnet18"] is models.resnet18_cifar
    assert models.MODELS["resnet50"] is models.resnet50
    assert models.MODELS["resnet20"] is models.resnet20
    assert models.MODELS["small_cnn"] is models.small_cnn
    assert models.MODELS["mobilenet"] is models.mobilenet
    assert models.MODELS["mobilenet_v2"] is models.mobilenet_v2


@pytest.mark.parametrize("name,shape,classes", [
    ("small_cnn", (8, 8, 1), 10), ("wrn32", (32, 32, 3), 10),
    ("resnet18", (32, 32, 3), 10), ("resnet20", (32, 32, 3), 10),
    ("resnet50", (224, 224, 3), 1000), ("mobilenet", (32, 32, 3), 10),
    ("mobilenet_v2", (32, 32, 3), 10),
])
def test_default_shapes(name, shape, classes):
    model = _default(name)
    assert isinstance(model, keras.Model)
    assert model.input_shape == (None, *shape)
    assert model.output_shape == (None, classes)


@pytest.mark.parametrize("name,shape", [
    ("small_cnn", (8, 8, 1)), ("wrn32", (32, 32, 3)), ("resnet18", (32, 32, 3)),
    ("resnet20", (28, 28, 1)), ("resnet50", (64, 64, 3)),
])
def test_forward_with_other_classes_and_input(name, shape):
    model = models.get_model(name, num_classes=7, input_shape=shape)
    logits = model(np.random.default_rng(0).normal(size=(2, *shape)).astype("float32"))
    assert tuple(logits.shape) == (2, 7)
    assert np.all(np.isfinite(np.asarray(logits)))


def test_wide_resnet32_matches_the_paper():
    model = _default("wrn32")
    assert abs(_macs(model) / 275.6e6 - 1) < 0.005  # 275.6 M MACs per image (docs/design.md s. 8)
    convs = _convs(model)
    assert len(convs) == 1 + 3 * 5 * 2 + 2  # stem, 30 block convs, 2 shortcuts
    assert {c.filters for c in convs} == {32, 64, 128}
    assert [c.name for c in convs if c.kernel_size == (1, 1)] == [
        "stage2_block1_shortcut", "stage3_block1_shortcut"]
    # stem 864 + 32 BN; stage 1: 5 x (2 x 9,216 + 128); stage 2: 18,432 + 36,864 + 2,048 + 384,
    # then 4 x (2 x 36,864 + 256); stage 3: 73,728 + 147,456 + 8,192 + 768, then
    # 4 x (2 x 147,456 + 512); classifier 1,290.
    assert _trainable(model) == 1_860_522
    assert models.wide_resnet32(num_classes=100).output_shape == (None, 100)


def _resnet20_macs_by_hand(m):
    """ResNet-20 MACs per 32x32 image, layer by layer, widths round(16 m), round(32 m),
    round(64 m): stem; 6 convs at 32x32; stage 2 and 3: a stride-2 conv, 5 convs and a 1x1
    shortcut at 16x16 / 8x8; the classifier."""
    a, b, c = (round(w * m) for w in (16, 32, 64))
    return (32 * 32 * 9 * 3 * a + 6 * 32 * 32 * 9 * a * a
            + 16 * 16 * (9 * a * b + 5 * 9 * b * b + a * b)
            + 8 * 8 * (9 * b * c + 5 * 9 * c * c + b * c) + c * 10)


@pytest.mark.parametrize("multiplier", [1.0, 0.5, 0.25, 2.0])
def test_resnet20_macs_and_parameters(multiplier):
    from keras_ast import cost

    model = models.resnet20(width_multiplier=multiplier)
    assert _macs(model) == _resnet20_macs_by_hand(multiplier)
    assert cost.model_macs(model) == _resnet20_macs_by_hand(multiplier)
    convs = _convs(model)
    assert len(convs) == 1 + 3 * 3 * 2 + 2  # stem, 18 block convs, 2 shortcuts
    assert {conv.filters for conv in convs} == {round(w * multiplier) for w in (16, 32, 64)}
    if multiplier == 1.0:
        # The option-A ResNet-20 (He et al.): 40.55 M MACs; + 262,144 in the 1x1 shortcuts.
        assert _macs(model) == 40_551_040 + 16 * 16 * 16 * 32 + 8 * 8 * 32 * 64
        assert _trainable(model) == 272_474
    with pytest.raises(ValueError, match="width_multiplier must be > 0"):
        models.resnet20(width_multiplier=0)


def test_resnet_parameter_and_mac_counts():
    assert _trainable(_default("resnet18")) == 11_173_962  # torchvision-style count, CIFAR
    assert _trainable(_default("resnet50")) == 25_557_032  # torchvision resnet50
    assert abs(_macs(_default("resnet50")) / 4.09e9 - 1) < 0.005  # torchvision: 4.09 GMACs
    assert abs(_macs(_default("resnet18")) / 0.556e9 - 1) < 0.005


def test_resnet50_is_v1_5():
    model = _default("resnet50")
    assert model.get_layer("stage2_block1_conv1").strides == (1, 1)
    assert model.get_layer("stage2_block1_conv2").strides == (2, 2)  # stride on the 3x3 conv
    assert model.get_layer("stem_conv").kernel_size == (7, 7)
    assert model.get_layer("stem_pool").output.shape[1:] == (56, 56, 64)
    assert len(_convs(model)) == 1 + 3 * 16 + 4
    gammas = np.asarray(model.get_layer("stage1_block1_conv3_bn").gamma)
    assert np.all(gammas == 1.0)  # no zero-init of the last BN by default
    zero = models.resnet50(num_classes=10, input_shape=(64, 64, 3), zero_init_residual=True)
    assert np.all(np.asarray(zero.get_layer("stage4_block3_conv3_bn").gamma) == 0.0)
    assert np.all(np.asarray(zero.get_layer("stage4_block3_conv2_bn").gamma) == 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_stem_is_the_first_conv(name):
    model = _default(name)
    assert _convs(model)[0].name == "stem_conv"  # model.layers is in topological order
    stem = model.get_layer("stem_conv")
    # Only non-conv layers (at most a padding) lie between the input and the stem.
    layer = _producer(stem)
    while not isinstance(layer, keras.layers.InputLayer):
        assert isinstance(layer, keras.layers.ZeroPadding2D)
        layer = _producer(layer)
    assert _producer(model.get_layer("stem_bn")) is stem
    assert isinstance(model.get_layer("stem_bn"), keras.layers.BatchNormalization)


@pytest.mark.parametrize("name", NAMES)
def test_layers_initialisers_and_classifier(name):
    model = _default(name)
    for conv in _convs(model):
        init = conv.kernel_initializer
        assert isinstance(init, keras.initializers.VarianceScaling), conv.name
        assert (init.scale, init.mode, init.distribution) == (
            2.0, "fan_out", "untruncated_normal"), conv.name
        assert not conv.use_bias, conv.name
    for bn in (layer for layer in model.layers
               if isinstance(layer, keras.layers.BatchNormalization)):
        assert (bn.momentum, bn.epsilon) == (0.9, 1e-5), bn.name
    head = model.layers[-1]
    assert head.name == "classifier" and type(head) is keras.layers.Dense
    assert head.use_bias and head.activation is keras.activations.linear  # logits
    dense = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == ["classifier"]


def test_conv_kernels_have_fan_out_variance():
    kernel = np.asarray(_default("resnet18").get_layer("stage4_block2_conv1").kernel)
    fan_out = 3 * 3 * 512
    assert abs(kernel.std() / np.sqrt(2.0 / fan_out) - 1) < 0.02


def test_strided_convs_pad_like_pytorch():
    """Strided k x k convs (k > 1) pad k // 2 on every side, as PyTorch, not Keras' "same"."""
    for name in ("wrn32", "resnet20", "resnet50", "small_cnn"):
        for conv in _convs(_default(name)):
            if conv.strides != (1, 1) and conv.kernel_size != (1, 1):
                pad = _producer(conv)
                assert conv.padding == "valid", conv.name
                assert isinstance(pad, keras.layers.ZeroPadding2D), conv.name
                k = conv.kernel_size[0] // 2
                assert tuple(map(tuple, pad.padding)) == ((k, k), (k, k)), conv.name
            else:
                assert conv.padding == "same" or conv.kernel_size == (1, 1), conv.name


def test_dense_layers_and_unknown_model():
    assert models.dense_layers("resnet50") == ("classifier",)
    for name in ("wrn32", "resnet18", "resnet20", "small_cnn"):
        assert models.dense_layers(name) == ()
    with pytest.raises(ValueError, match="unknown model 'vgg'.*resnet18"):
        models.get_model("vgg")
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        models.dense_layers("vgg")
