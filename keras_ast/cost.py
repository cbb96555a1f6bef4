"""Training cost in FLOPs (docs/design.md section 8).

FLOPs of a training step = batch x 3 x sum over layers of (2 x MACs_l x density_l): forward
plus backward is 3x the forward, a multiply-accumulate is 2 FLOPs, and density_l is the
fraction of layer l's kernel that the active sub-net uses (1 for dense layers). Conv2D,
DepthwiseConv2D and Dense layers are counted; BatchNorm, activations and pooling are not.
`ASTModel` accumulates this per step from the actual masks (`ASTModel.training_flops`).
"""

from __future__ import annotations

import math

import keras

FORWARD_BACKWARD = 3
FLOPS_PER_MAC = 2


def layer_macs(layer) -> int:
    """Multiply-accumulates of one example through `layer` at full density (0 if not counted).

    Conv: output positions x kh x kw x (cin / groups) x cout; depthwise: positions x kh x kw x
    cin x multiplier; Dense: positions (all but the last input axis) x units x inputs.
    """
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
        kernel = _kernel(layer)
        positions = math.prod(layer.output.shape[1:-1])
        return positions * math.prod(kernel.shape)
    return 0


def _kernel(layer):
    from keras_ast.layers import MaskedKernelMixin

    if isinstance(layer, MaskedKernelMixin):
        return layer.shared_kernel
    kernel = getattr(layer, "_kernel", None)
    return layer.kernel if kernel is None else kernel


def model_macs(model) -> int:
    """Dense MACs of one example through `model` (a functional / Sequential model)."""
    return sum(layer_macs(layer) for layer in model._flatten_layers(include_self=False))


def step_flops(batch, dense_macs, sparse_macs, densities):
    """FLOPs of one training step: batch x 3 x 2 x (dense MACs + sum of MACs_l x density_l)."""
    used = dense_macs + sum(m * d for m, d in zip(sparse_macs, densities))
    return batch * FORWARD_BACKWARD * FLOPS_PER_MAC * used


def dense_training_flops(model, examples) -> float:
    """FLOPs of training `model` dense on `examples` examples (steps x batch)."""
    return float(examples) * FORWARD_BACKWARD * FLOPS_PER_MAC * model_macs(model)
