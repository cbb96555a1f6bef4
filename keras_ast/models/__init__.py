"""Model zoo: plain Keras functional models that `keras_ast.sparsify` turns into AST models.

Every model names its stem conv ``stem_conv`` (the first Conv2D, which stays dense) and its BN
``stem_bn``, and ends in a Dense ``classifier`` producing logits. Convolutions have no bias and
PyTorch's Kaiming-normal fan_out initialiser; BatchNorm uses momentum 0.9 and epsilon 1e-5
(PyTorch's defaults).

- `small_cnn`: four 3x3 convs for the 8x8 digits (the launcher's default).
- `wide_resnet32`: the paper's CIFAR wide ResNet-32 (widths 32/64/128, ~275.6 M MACs).
- `resnet18_cifar`: the standard CIFAR ResNet-18 (11.17 M parameters).
- `resnet20`: CIFAR ResNet-20 with a width multiplier (40.8 M MACs at 1, 10.3 M at 0.5), small
  enough to benchmark on two CPU cores.
- `mobilenet`: MobileNet v1 for small images (0.55 M parameters, 5.7 M MACs at width 1), and
  `mobilenet_v2` (inverted residuals; 2.27 M parameters, 22 M MACs at width 1), both laid out
  for XNNPACK's sparse inference (prune them with ``prunable="xnnpack"``).
- `resnet50`: ImageNet ResNet-50 v1.5 (25.56 M parameters; its classifier stays dense).

`get_model(name, **kwargs)` builds one by its `MODELS` name; `dense_layers(name)` gives the
layer names to keep dense besides the stem (pass them to `sparsify(..., dense_layers=...)`).
"""

from keras_ast.models import mobilenet as _mobilenet_module
from keras_ast.models import resnet_cifar, resnet_imagenet
from keras_ast.models import small_cnn as _small_cnn_module
from keras_ast.models.resnet_cifar import resnet18_cifar, resnet20, wide_resnet32
from keras_ast.models.mobilenet import mobilenet, mobilenet_v2
from keras_ast.models.resnet_imagenet import resnet50
from keras_ast.models.small_cnn import small_cnn

__all__ = ["MODELS", "dense_layers", "get_model", "mobilenet", "mobilenet_v2",
           "resnet18_cifar", "resnet20", "resnet50",
           "small_cnn", "wide_resnet32"]

MODELS = {
    "small_cnn": small_cnn,
    "wrn32": wide_resnet32,
    "resnet18": resnet18_cifar,
    "resnet20": resnet20,
    "resnet50": resnet50,
    "mobilenet": mobilenet,
    "mobilenet_v2": mobilenet_v2,
}
_DENSE = {
    "small_cnn": _small_cnn_module.DENSE_LAYERS,
    "wrn32": resnet_cifar.DENSE_LAYERS,
    "resnet18": resnet_cifar.DENSE_LAYERS,
    "resnet20": resnet_cifar.DENSE_LAYERS,
    "resnet50": resnet_imagenet.DENSE_LAYERS,
    "mobilenet": _mobilenet_module.DENSE_LAYERS,
    "mobilenet_v2": _mobilenet_module.DENSE_LAYERS,
}


def _check(name):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; use one of {', '.join(sorted(MODELS))}")


def get_model(name, **kwargs):
    """Builds the model registered as `name` in `MODELS`.

    Args:
      name: one of ``small_cnn``, ``wrn32``, ``resnet18``, ``resnet20``, ``resnet50``,
        ``mobilenet``, ``mobilenet_v2``.
      **kwargs: passed to the builder (``num_classes``, ``input_shape``, ...).

    Raises:
      ValueError: `name` is not a registered model (the message lists the valid names).
    """
    _check(name)
    return MODELS[name](**kwargs)


def dense_layers(name):
    """Names of the layers of model `name` that stay dense besides the stem (a tuple)."""
    _check(name)
    return tuple(_DENSE[name])
