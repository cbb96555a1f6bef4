"""BatchNorm recalibration: moving statistics recomputed from data (one sub-net of an
`ASTModel`, or a plain Keras model).

Each sub-net's private BatchNorm copy (`SwitchableBatchNormalization`, row k of every
statistic) moves only on the steps that train sub-net k, 1/K of them, while the shared weights
keep changing under the other sub-nets; after training its moving mean and variance may lag
behind what the final weights produce. `recalibrate_batchnorm` replaces them by the plain
average, over a number of training batches, of the batch statistics that sub-net k's forward
pass produces in training mode (PyTorch's cumulative ``momentum=None``), as in Sup-tickets and
the BN re-estimation of "slimmable" networks. Only row k of the switchable BN layers changes:
other sub-nets' copies, shared BatchNorm layers (the stem's), kernels and masks stay as they
were.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_ast import compat
from keras_ast.layers import SwitchableBatchNormalization


def _batchnorm_layers(network):
    import keras

    layers = compat.flatten_layers(network)
    switchable, shared = [], []
    for layer in layers:
        if isinstance(layer, SwitchableBatchNormalization):
            switchable.append(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            shared.append(layer)
    return switchable, shared


def recalibrate_batchnorm(model, data, subnet: int | None = None, batches: int | None = None,
                          verbose: int = 0) -> int:
    """Recomputes BatchNorm moving statistics from `data`: sub-net `subnet`'s copy of an
    `ASTModel`, or every BatchNormalization layer of a plain Keras model (such as an exported
    sub-net or a `keras_ast.SupTickets` superposed model).

    The new moving mean (variance) is the plain average over the batches of the batch means
    (variances) that the forward pass computes in training mode: PyTorch's cumulative
    ``momentum=None``. The variances are Keras's (1/n, biased); PyTorch's ``update_bn``
    averages unbiased ones, larger by n / (n - 1) with n = batch x height x width values per
    channel.

    Args:
      model: a `keras_ast.ASTModel` (then `subnet` is required) or a plain `keras.Model`.
      data: a dataset (or iterable) of batches, ``x`` or ``(x, y[, sample_weight])``; use
        training images, normally without augmentation changes to what the deployed model sees.
      subnet: the sub-net of an `ASTModel` whose BN copy is recomputed (None for a plain model).
      batches: how many batches to average over (default: all of `data`).
      verbose: 1 prints the number of batches used.

    Returns:
      The number of batches averaged.

    Raises:
      ValueError: the model has no BatchNorm layer to recalibrate, `subnet` is missing, out of
        range or given for a plain model, `batches` < 1, or `data` yields no batch.
    """
    from keras_ast.model import ASTModel

    if batches is not None and batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    if isinstance(model, ASTModel):
        if subnet is None:
            raise ValueError("recalibrate_batchnorm needs subnet=... for an ASTModel")
        model._check_subnet(subnet)
        switchable, shared = _batchnorm_layers(model.network)
        if not switchable:
            raise ValueError(f"{model.name} has no per-sub-net BatchNorm layer to recalibrate")
        targets = [(layer, subnet) for layer in switchable]
    else:
        if subnet is not None:
            raise ValueError(f"subnet={subnet} is for an ASTModel; {model.name} is a plain "
                             "Keras model, whose BatchNorm layers are all recalibrated")
        plain, shared = _batchnorm_layers(model)
        targets, shared = [(layer, None) for layer in shared + plain], []
        if not targets:
            raise ValueError(f"{model.name} has no BatchNormalization layer to recalibrate")
    count = _average_statistics(model, targets, shared, data, subnet, batches)
    if verbose:
        which = "" if subnet is None else f"sub-net {subnet}'s "
        print(f"recalibrated {which}BatchNorm statistics over {count} batches")
    return count


def _average_statistics(model, targets, shared, data, subnet, batches):
    """Replaces each (layer, row) of `targets` by its average batch statistics over `data`;
    `shared` BN layers keep theirs. On failure every statistic is left as it was."""
    def read(variable, row):
        value = np.asarray(variable)
        return value if row is None else value[row]

    shared_state = [(v, np.asarray(v)) for layer in shared
                    for v in (layer.moving_mean, layer.moving_variance)]
    own_state = [(v, np.asarray(v)) for layer, _ in targets
                 for v in (layer.moving_mean, layer.moving_variance)]
    previous_subnet = None if subnet is None else int(np.asarray(model.eval_subnet))
    momenta = [layer.momentum for layer, _ in targets]
    sums = [[np.zeros(read(layer.moving_mean, row).shape, np.float64) for _ in range(2)]
            for layer, row in targets]
    count = 0
    try:
        if subnet is not None:
            model.set_subnet(subnet)
        for layer, _ in targets:
            layer.momentum = 0.0  # the statistic <- this batch's, read back after each batch

        @tf.function(reduce_retracing=True)
        def forward(x):
            model(x, training=True)

        for batch in data:
            if batches is not None and count >= batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            forward(x)
            for total, (layer, row) in zip(sums, targets):
                total[0] += read(layer.moving_mean, row).astype(np.float64)
                total[1] += read(layer.moving_variance, row).astype(np.float64)
            count += 1
        if count == 0:
            raise ValueError("data yields no batch to recalibrate with")
        for (mean, variance), (layer, row) in zip(sums, targets):
            for variable, value in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
                values = np.asarray(variable).copy()
                if row is None:
                    values[...] = value / count
                else:
                    values[row] = value / count
                variable.assign(values.astype(values.dtype))
        own_state = []
    finally:
        for variable, value in own_state:  # failed part-way: leave the statistics as they were
            variable.assign(value)
        for (layer, _), momentum in zip(targets, momenta):
            layer.momentum = momentum
        for variable, value in shared_state:  # shared BN layers keep their statistics
            variable.assign(value)
        if previous_subnet is not None:
            model.set_subnet(previous_subnet)
    return count
