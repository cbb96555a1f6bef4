"""Export one sub-net as a plain Keras model or a TensorFlow SavedModel.

The exported model has only stock Keras layers: every sparse layer becomes its plain Keras
class with kernel ``W * m_k`` (so its kernels hold real zeros), every switchable BatchNorm
becomes a plain BatchNormalization with copy k. It needs keras_ast neither to load nor to run.

For N:M sub-nets, `export_subnet` checks the folded kernels against the sub-net's pattern
(`check_nm`, also importable from here) and refuses to write an export that breaks it.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from keras_ast import layers as ast_layers
from keras_ast.atomic import atomic_output
from keras_ast.nm import check_nm

_PLAIN = {sparse: plain for plain, sparse in ast_layers.SPARSE_EQUIVALENT.items()}
_PLAIN[ast_layers.SwitchableBatchNormalization] = keras.layers.BatchNormalization


def subnet_model(model, subnet: int) -> keras.Model:
    """A plain functional Keras model equal to sub-net `subnet` of `model` (an ASTModel)."""
    model._check_subnet(subnet)

    def clone(layer):
        config = layer.get_config()
        plain = _PLAIN.get(type(layer))
        if plain is None:
            return layer.__class__.from_config(config)
        config.pop("num_subnets")
        return plain.from_config(config)

    network = keras.models.clone_model(model.network, clone_function=clone)
    for layer in network.layers:
        if not layer.weights:
            continue
        source = model.network.get_layer(layer.name)
        if isinstance(source, ast_layers.MaskedKernelMixin):
            values = [np.asarray(source.shared_kernel) * np.asarray(source.masks[subnet])]
            if source.use_bias:
                values.append(np.asarray(source.bias))
        elif isinstance(source, ast_layers.SwitchableBatchNormalization):
            values = [np.asarray(v)[subnet] for v in source.weights]
        else:
            values = source.get_weights()
        layer.set_weights(values)
    return keras.Model(network.input, network.output, name=f"{model.network.name}_subnet{subnet}")


def dense_model(model) -> keras.Model:
    """The plain network with the shared kernels unmasked (and sub-net 0's BatchNorm copy):
    the dense reference a deployment's size and latency are compared with."""
    plain = subnet_model(model, 0)
    for layer in model.sparse_layers:
        plain.get_layer(layer.name).kernel.assign(np.asarray(layer.shared_kernel))
    return plain


def export_subnet(model, subnet: int, path: str) -> str:
    """Writes sub-net `subnet` as a SavedModel at `path` and returns the path.

    The SavedModel has a ``serve`` endpoint (keep the loaded object alive:
    ``loaded = tf.saved_model.load(path); loaded.serve(x)``). Its kernels are ``W * m_k``, as
    sparse as the sub-net. It is written under a temporary name and renamed, so a crash never
    leaves a half-written export at `path`.

    Raises:
      ValueError: `model` has N:M sub-nets and a prunable kernel of sub-net `subnet` breaks its
        pattern (nothing is written then).
    """
    plain = subnet_model(model, subnet)
    if model.nm_patterns is not None:
        pattern = model.nm_patterns[subnet]
        results = check_nm(plain, pattern, layers=[layer.name for layer in model.sparse_layers])
        bad = {name: r.violating_groups for name, r in results.items() if not r.satisfied}
        if bad:
            raise ValueError(
                f"sub-net {subnet}'s kernels break its {pattern} pattern (zeros notation) in "
                f"{len(bad)} layers (violating groups: {bad}); nothing was exported to {path}"
            )
    with atomic_output(path) as tmp:
        plain.export(tmp, verbose=False)
    return path


def export_subnets(model, directory: str, subnets=None) -> list[str]:
    """Writes one SavedModel per sub-net to ``directory/subnet_<k>/``; returns the paths."""
    subnets = range(model.num_subnets) if subnets is None else subnets
    os.makedirs(directory, exist_ok=True)
    return [export_subnet(model, k, os.path.join(directory, f"subnet_{k}")) for k in subnets]


def saved_model_sparsity(path: str, layer_names) -> float:
    """Fraction of exact zeros over the kernels of `layer_names` in the SavedModel at `path`.

    Reads the stored variables (``<layer>/kernel``), not the in-memory model.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    wanted = {f"{name}/kernel:0" for name in layer_names}
    kernels = [np.asarray(v) for v in loaded.variables if v.name in wanted]
    if len(kernels) != len(wanted):
        found = sorted(v.name for v in loaded.variables)
        raise ValueError(f"{path} lacks some kernels of {sorted(wanted)}; it has {found}")
    zeros = sum(int((k == 0).sum()) for k in kernels)
    return zeros / sum(k.size for k in kernels)
