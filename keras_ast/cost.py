"""Training cost in FLOPs (docs/design.md section 8; docs/benchmarks.md, "Training cost").

One training example through a layer costs three matrix products of MACs_l each: the forward
pass, the gradient with respect to the layer's input, and the gradient with respect to its
kernel. With sub-net k's mask, each uses the fraction d_l of the kernel (the layer's density; 1
for dense layers). On a step where sub-net k's mask update needs the *dense* gradient (RigL,
GraNet regrowth), the kernel gradient is computed for every entry: MACs_l instead of d_l MACs_l
(as RigL counts it, Evci et al. 2020). A multiply-accumulate is 2 FLOPs:

    FLOPs(step) = 2 x batch x sum_l MACs_l x (3 d_l)                ordinary step
                = 2 x batch x sum_l MACs_l x (2 d_l + 1)            mask-update step

Layers with MACs: Conv1D / Conv2D / Conv3D (and their transposes), DepthwiseConv1D / 2D,
SeparableConv1D / 2D, Dense and EinsumDense, in the model and in nested models. BatchNorm,
activations and pooling are not counted (nor are Embedding look-ups); `uncounted_layers` names
any other layer with a kernel (an RNN, MultiHeadAttention, a wrapper), and `ASTModel` warns
about them once.
`ASTModel` accumulates the cost per step from the masks it used (`ASTModel.training_flops`).
"""

from __future__ import annotations

import math

import keras

from keras_ast import compat

FORWARD_BACKWARD = 3
FLOPS_PER_MAC = 2

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
              keras.layers.Conv3DTranspose)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
# Kernels without multiply-accumulates per example (a table look-up).
_NO_MACS = (keras.layers.Embedding,)


def _positions(layer, tensor):
    """Spatial positions of `tensor` (all axes but batch and channels)."""
    shape = tensor.shape
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return math.prod(shape[2:])
    return math.prod(shape[1:-1])


def _einsum_macs(layer):
    """Output entries per example x the size of every index the kernel is summed over."""
    equation = layer.equation.replace(" ", "")
    inputs, output = equation.split("->")
    _, kernel_spec = inputs.split(",")
    summed = [size for letter, size in zip(kernel_spec, layer.kernel.shape)
              if letter not in output]
    return math.prod(layer.output.shape[1:]) * math.prod(summed)


def layer_macs(layer) -> int:
    """Multiply-accumulates of one example through `layer` at full density (0 if the layer
    has none, or is of a type not counted: see `uncounted_layers`).

    Conv: output positions x kernel size (kernel: (*k, cin / groups, cout)); transposed conv:
    input positions x kernel size; depthwise: output positions x kernel size; separable: output
    positions x (depthwise + pointwise kernel sizes); Dense: positions (all but the last axis)
    x units x inputs; EinsumDense: output entries x the summed kernel indices.
    """
    if isinstance(layer, _TRANSPOSE):
        return _positions(layer, layer.input) * math.prod(layer.kernel.shape)
    if isinstance(layer, _SEPARABLE):
        return _positions(layer, layer.output) * (
            math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape))
    if isinstance(layer, _CONV + _DEPTHWISE):
        return _positions(layer, layer.output) * math.prod(_kernel(layer).shape)
    if isinstance(layer, keras.layers.Dense):
        return math.prod(layer.output.shape[1:-1]) * math.prod(_kernel(layer).shape)
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_macs(layer)
    return 0


def _counted(layer):
    return isinstance(layer, _TRANSPOSE + _SEPARABLE + _CONV + _DEPTHWISE + _NO_MACS
                      + (keras.layers.Dense, keras.layers.EinsumDense))


def _kernel(layer):
    from keras_ast.layers import MaskedKernelMixin

    if isinstance(layer, MaskedKernelMixin):
        return layer.shared_kernel
    return compat.raw_kernel(layer)


def _top_layers(model):
    """The model's layers, entering nested models (not other layers' sub-layers)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _top_layers(layer)
        else:
            yield layer


def uncounted_layers(model):
    """'name (type)' of every layer whose multiply-accumulates `layer_macs` does not count: a
    layer of another type with a kernel (a weight named ``*kernel*``, its own or a
    sub-layer's: an RNN, MultiHeadAttention, a wrapper such as TimeDistributed, a custom
    layer)."""
    names = []
    for layer in _top_layers(model):
        if not _counted(layer) and any(
                "kernel" in w.path.split("/")[-1] for w in layer.weights):
            names.append(f"{layer.name} ({type(layer).__name__})")
    return names


def model_macs(model) -> int:
    """Dense MACs of one example through `model` (a functional / Sequential model)."""
    return sum(layer_macs(layer) for layer in _top_layers(model))


def step_flops(batch, dense_macs, sparse_macs, densities, dense_backward=False):
    """FLOPs of one training step (module docstring).

    Args:
      batch: examples in the step.
      dense_macs: MACs per example of the layers that are not pruned.
      sparse_macs / densities: MACs per example of each pruned layer at full density, and the
        fraction of its kernel the step's sub-net uses.
      dense_backward: the step computes the dense kernel gradient (a mask update that regrows
        by gradient): the kernel-gradient product of each pruned layer costs its full MACs.
    """
    used = dense_macs + sum(m * d for m, d in zip(sparse_macs, densities))
    if dense_backward is False:
        return batch * FORWARD_BACKWARD * FLOPS_PER_MAC * used
    full = dense_macs + sum(sparse_macs)
    extra = full - used  # the kernel gradient over every entry instead of the used ones
    if dense_backward is not True:  # a bool tensor
        from keras import ops

        extra = ops.where(dense_backward, extra, ops.zeros_like(extra))
    return batch * FLOPS_PER_MAC * (FORWARD_BACKWARD * used + extra)


def dense_training_flops(model, examples) -> float:
    """FLOPs of training `model` dense on `examples` examples (steps x batch)."""
    return float(examples) * FORWARD_BACKWARD * FLOPS_PER_MAC * model_macs(model)
