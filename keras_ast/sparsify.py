"""Turn an ordinary functional/Sequential Keras model into one with K sub-net masks.

`sparsify` clones the model (``keras.models.clone_model``), replacing each prunable Conv2D,
Dense and DepthwiseConv2D by its sparse subclass (same config and weights, K all-ones masks),
and each BatchNormalization that directly follows a prunable layer by a
`SwitchableBatchNormalization` with K copies initialised from the original. By default every
such layer is prunable except the first convolution (the stem, kept dense with its shared BN)
and the layers named in `dense_layers`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import keras
import numpy as np

from keras_ast import compat
from keras_ast import layers as ast_layers

_CONV_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _plain_type(layer):
    for plain in ast_layers.SPARSE_EQUIVALENT:
        if type(layer) is plain:
            return plain
    return None


def default_prunable(model, dense_layers: Iterable[str] = ()) -> set[str]:
    """Names of the layers pruned by default: every Conv2D / DepthwiseConv2D / Dense except the
    first convolution in topological order (the stem) and those named in `dense_layers`."""
    dense = set(dense_layers)
    names, seen_stem = set(), False
    for layer in model.layers:
        if _plain_type(layer) is None:
            continue
        if isinstance(layer, _CONV_TYPES) and not seen_stem:
            seen_stem = True
            continue
        if layer.name not in dense:
            names.add(layer.name)
    return names


def _producer(layer):
    """The layer whose output feeds `layer` (None if not a single known producer)."""
    try:
        tensor = layer.input
    except (AttributeError, ValueError):
        return None
    return compat.producer(tensor)


def _resolve_prunable(model, prunable, dense_layers) -> set[str]:
    all_names = {layer.name for layer in model.layers}
    if prunable is None:
        names = default_prunable(model, dense_layers)
    elif isinstance(prunable, str):
        if prunable != "xnnpack":
            raise ValueError(f"prunable={prunable!r}: give layer names, a predicate, or "
                             "'xnnpack' (the 1x1 convolutions, keras_ast.xnnpack)")
        from keras_ast import xnnpack

        names = xnnpack.prunable_layers(model)
    elif callable(prunable):
        names = {layer.name for layer in model.layers if prunable(layer)}
    else:
        names = set(prunable)
        unknown = names - all_names
        if unknown:
            raise ValueError(f"prunable names {sorted(unknown)} are not layers of the model")
    unknown_dense = set(dense_layers) - all_names
    if unknown_dense:
        raise ValueError(f"dense_layers {sorted(unknown_dense)} are not layers of the model")
    names -= set(dense_layers)
    by_name = {layer.name: layer for layer in model.layers}
    unsupported = sorted(n for n in names if _plain_type(by_name[n]) is None)
    if unsupported:
        raise ValueError(
            f"layers {unsupported} cannot be pruned: only Conv2D, DepthwiseConv2D and Dense are "
            "supported"
        )
    if not names:
        raise ValueError(
            f"model {model.name!r} has no prunable layer (Conv2D, DepthwiseConv2D or Dense other "
            "than the stem and the dense_layers); nothing to sparsify"
        )
    return names


def _warn_dense_kernels(model, prunable_names, by_default, dense_layers):
    """With the default `prunable`: warns, naming them, about layers with a kernel that stay
    dense although nobody asked: types keras_ast cannot mask (Conv1D, Conv3D, SeparableConv2D,
    EinsumDense, subclasses, ...) and nested models, whose layers `sparsify` does not enter."""
    if not by_default:
        return  # the layers were chosen (naming an unsupported one is an error)
    left = []
    for layer in model.layers:
        if layer.name in prunable_names or layer.name in dense_layers:
            continue
        has_kernel = any("kernel" in w.path.split("/")[-1] for w in layer.weights)
        if isinstance(layer, keras.Model) and has_kernel:
            left.append(f"{layer.name} (nested model: not entered)")
        elif has_kernel and _plain_type(layer) is None:
            left.append(f"{layer.name} ({type(layer).__name__})")
    if left:
        warnings.warn(
            f"sparsify leaves these layers with kernels dense: {', '.join(left)}. keras_ast "
            "masks Conv2D, DepthwiseConv2D and Dense only (exact types); name them in "
            "dense_layers=[...] to silence this, or rebuild them as one of those types (a "
            "Conv1D is a Conv2D with a 1-pixel dimension) to prune them.",
            stacklevel=3,
        )


def sparsify(
    model: keras.Model,
    num_subnets: int,
    prunable: Iterable[str] | Callable[[keras.layers.Layer], bool] | str | None = None,
    dense_layers: Iterable[str] = (),
    switchable_bn: Iterable[str] | None = None,
) -> keras.Model:
    """Returns a clone of `model` whose prunable kernels carry `num_subnets` masks.

    Args:
      model: a built functional or Sequential Keras model (not modified).
      num_subnets: K >= 1.
      prunable: names of the layers to prune, or a predicate on layers, or "xnnpack" (the 1x1
        convolutions, which XNNPACK can run sparse: `keras_ast.xnnpack`); default: every
        Conv2D, DepthwiseConv2D and Dense except the stem (first convolution) and
        `dense_layers`.
      dense_layers: names of layers that stay dense (e.g. the ImageNet classifier).
      switchable_bn: names of the BatchNormalization layers that get K private copies; default:
        those whose input comes directly from a prunable layer.

    Returns:
      The sparse functional model, with the original weights and all-ones masks.
    """
    ast_layers._check_num_subnets(num_subnets)
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError("sparsify needs a built functional or Sequential keras.Model")
    prunable_names = _resolve_prunable(model, prunable, list(dense_layers))
    if switchable_bn is None:
        bn_names = {
            layer.name
            for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)
            and getattr(_producer(layer), "name", None) in prunable_names
        }
    else:
        bn_names = set(switchable_bn)

    slow_bn = sorted(
        layer.name for layer in model.layers
        if layer.name in bn_names and getattr(layer, "momentum", 0.0) > 0.95
    )
    if slow_bn and num_subnets > 1:
        warnings.warn(
            f"BatchNormalization layers {slow_bn} have momentum > 0.95: each private copy is "
            f"updated only every {num_subnets}th step, so its moving statistics lag "
            f"{num_subnets}x longer than usual and evaluation can be far off. Use momentum "
            "0.9 (PyTorch's 0.1).",
            stacklevel=2,
        )

    _warn_dense_kernels(model, prunable_names, prunable is None, set(dense_layers))

    def clone(layer):
        config = layer.get_config()
        if layer.name in prunable_names:
            return ast_layers.SPARSE_EQUIVALENT[_plain_type(layer)].from_config(
                {**config, "num_subnets": num_subnets}
            )
        if layer.name in bn_names:
            return ast_layers.SwitchableBatchNormalization.from_config(
                {**config, "num_subnets": num_subnets}
            )
        return layer.__class__.from_config(config)

    try:
        sparse = keras.models.clone_model(model, clone_function=clone)
    except ValueError as error:
        raise ValueError(
            f"sparsify supports functional and Sequential models only ({error})"
        ) from error
    _copy_weights(model, sparse, prunable_names, bn_names, num_subnets)
    return sparse


def _copy_weights(source, target, prunable_names, bn_names, num_subnets):
    targets = {layer.name: layer for layer in target.layers}
    for layer in source.layers:
        if not layer.weights:
            continue  # input layers are renamed by clone_model and hold nothing
        new = targets[layer.name]
        if layer.name in prunable_names:
            new.shared_kernel.assign(compat.raw_kernel(layer))
            if layer.use_bias:
                new.bias.assign(layer.bias)
        elif layer.name in bn_names:
            for name in ("gamma", "beta", "moving_mean", "moving_variance"):
                value = getattr(layer, name)
                if value is not None:
                    getattr(new, name).assign(np.tile(np.asarray(value)[None], (num_subnets, 1)))
        else:
            new.set_weights(layer.get_weights())

