"""BatchNorm recalibration of one sub-net: its moving statistics recomputed from data.

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


def _batchnorm_layers(model):
    import keras

    layers = compat.flatten_layers(model.network)
    switchable, shared = [], []
    for layer in layers:
        if isinstance(layer, SwitchableBatchNormalization):
            switchable.append(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            shared.append(layer)
    return switchable, shared


def recalibrate_batchnorm(model, data, subnet: int, batches: int | None = None,
                          verbose: int = 0) -> int:
    """Recomputes sub-net `subnet`'s BatchNorm moving statistics from `data`.

    Args:
      model: a `keras_ast.ASTModel`.
      data: a dataset (or iterable) of batches, ``x`` or ``(x, y[, sample_weight])``; use
        training images, normally without augmentation changes to what the deployed model sees.
      subnet: the sub-net whose BN copy is recomputed.
      batches: how many batches to average over (default: all of `data`).
      verbose: 1 prints the number of batches used.

    Returns:
      The number of batches averaged.

    Raises:
      ValueError: `model` has no switchable BatchNorm, `subnet` is out of range, `batches` < 1,
        or `data` yields no batch.
    """
    model._check_subnet(subnet)
    if batches is not None and batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    switchable, shared = _batchnorm_layers(model)
    if not switchable:
        raise ValueError(f"{model.name} has no per-sub-net BatchNorm layer to recalibrate")
    # Restored at the end: shared BN layers always, this sub-net's rows if anything fails.
    shared_state = [(v, np.asarray(v)) for layer in shared
                    for v in (layer.moving_mean, layer.moving_variance)]
    own_state = [(v, np.asarray(v)) for layer in switchable
                 for v in (layer.moving_mean, layer.moving_variance)]
    previous_subnet = int(np.asarray(model.eval_subnet))
    momenta = [layer.momentum for layer in switchable]
    sums = [[np.zeros(layer.moving_mean.shape[1:], np.float64) for _ in range(2)]
            for layer in switchable]
    count = 0
    try:
        model.set_subnet(subnet)
        for layer in switchable:
            layer.momentum = 0.0  # row k <- this batch's statistic, read back after each batch

        @tf.function(reduce_retracing=True)
        def forward(x):
            model(x, training=True)

        for batch in data:
            if batches is not None and count >= batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            forward(x)
            for total, layer in zip(sums, switchable):
                total[0] += np.asarray(layer.moving_mean[subnet], np.float64)
                total[1] += np.asarray(layer.moving_variance[subnet], np.float64)
            count += 1
        if count == 0:
            raise ValueError("data yields no batch to recalibrate with")
        for (mean, variance), layer in zip(sums, switchable):
            for variable, value in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
                rows = np.asarray(variable)
                rows[subnet] = value / count
                variable.assign(rows.astype(rows.dtype))
        own_state = []
    finally:
        for variable, value in own_state:  # failed part-way: leave the statistics as they were
            variable.assign(value)
        for layer, momentum in zip(switchable, momenta):
            layer.momentum = momentum
        for variable, value in shared_state:  # shared BN layers keep their statistics
            variable.assign(value)
        model.set_subnet(previous_subnet)
    if verbose:
        print(f"recalibrated sub-net {subnet}'s BatchNorm statistics over {count} batches")
    return count
