"""Model zoo: plain Keras functional models that `keras_ast.sparsify` turns into AST models.

Every model names its stem conv ``stem_conv`` and its classifier ``classifier`` (logits).
"""

from keras_ast.models import resnet_cifar, resnet_imagenet, small_cnn as _small_cnn
from keras_ast.models.resnet_cifar import resnet18_cifar, wide_resnet32
from keras_ast.models.resnet_imagenet import resnet50
from keras_ast.models.small_cnn import small_cnn

MODELS = {
    "small_cnn": small_cnn,
    "wrn32": wide_resnet32,
    "resnet18": resnet18_cifar,
    "resnet50": resnet50,
}
_DENSE = {
    "small_cnn": _small_cnn.DENSE_LAYERS,
    "wrn32": resnet_cifar.DENSE_LAYERS,
    "resnet18": resnet_cifar.DENSE_LAYERS,
    "resnet50": resnet_imagenet.DENSE_LAYERS,
}


def _check(name):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; use one of {sorted(MODELS)}")


def get_model(name, **kwargs):
    """Builds the model registered as `name` (keyword arguments go to its builder)."""
    _check(name)
    return MODELS[name](**kwargs)


def dense_layers(name):
    """Names of the layers of model `name` that stay dense besides the stem."""
    _check(name)
    return _DENSE[name]
