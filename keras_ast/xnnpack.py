"""XNNPACK sparse inference: which layers to prune, and whether an exported network qualifies.

XNNPACK (LiteRT's default CPU delegate) can run the 1x1 convolutions of a MobileNet-style
network with sparse weights, the only case in which a LiteRT file's sparse encoding
(`keras_ast.litert`) buys speed. The conditions, as tfmot's ``PruneForLatencyOnXNNPack``
policy and XNNPACK's documentation state them (and as `check` tests them):

- the file stores the kernels sparse (`keras_ast.litert.convert(..., sparse=True)`);
- the network starts with ``ZeroPadding2D(1)`` then a 3x3, stride-2, ``padding="valid"``
  Conv2D on 3 input channels, and every path ends at a GlobalAveragePooling2D (what follows it
  is not constrained);
- in between only: 1x1 stride-1 Conv2D; DepthwiseConv2D 3x3 or 5x5, multiplier 1, no
  dilation, "same" at stride 1 or "valid" after a ZeroPadding2D; Add, Multiply, ZeroPadding2D,
  BatchNormalization, ReLU / LeakyReLU / ELU / Dropout, bilinear UpSampling2D, and Activation
  relu, relu6, leaky_relu, elu or sigmoid;
- more than 2/3 of all 1x1 convolution weights, counted together, are zero;
- float32, and the CPU is ARM or x86 without AVX: XNNPACK skips its sparse path on x86 CPUs
  with AVX (almost every desktop and server x86), where the encoded file is only smaller.

``keras_ast.sparsify(model, K, prunable="xnnpack")`` (and ``ASTModel.from_model``) prunes just
the 1x1 convolutions (`prunable_layers`).
"""

from __future__ import annotations

import dataclasses
import platform

import keras
import numpy as np

from keras_ast import compat

_ACTIVATIONS = {"relu", "relu6", "leaky_relu", "elu", "sigmoid"}
_FREE = (keras.layers.Add, keras.layers.Multiply, keras.layers.ZeroPadding2D,
         keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.LeakyReLU,
         keras.layers.ELU, keras.layers.Dropout, keras.layers.InputLayer)
SPARSITY_NEEDED = 2.0 / 3.0


def _is_1x1(layer):
    return type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1)


def prunable_layers(model) -> set[str]:
    """Names of the layers XNNPACK can run sparse: the Conv2D layers with a 1x1 kernel
    (``sparsify(..., prunable="xnnpack")``)."""
    return {layer.name for layer in model.layers if _is_1x1(layer)}


@dataclasses.dataclass
class Report:
    """`check`'s verdict: `qualifies` for XNNPACK sparse inference (on a CPU that uses it),
    the `reasons` it does not, the zero fraction of the 1x1 kernels together, and whether this
    machine's CPU would use the sparse path at all (`cpu_uses_sparse`, with `cpu_note`)."""

    qualifies: bool
    reasons: list
    sparsity_1x1: float
    cpu_uses_sparse: bool
    cpu_note: str

    def __str__(self):
        head = ("qualifies for XNNPACK sparse inference" if self.qualifies else
                "does not qualify for XNNPACK sparse inference: " + "; ".join(self.reasons))
        return f"{head} (1x1 kernels {100 * self.sparsity_1x1:.1f}% zeros). {self.cpu_note}"


def _layer_problem(layer, parents):
    """Why `layer` may not sit between the stem and the pooling (None if it may)."""
    name = f"{layer.name} ({type(layer).__name__})"
    if _is_1x1(layer):
        if tuple(layer.strides) != (1, 1) or tuple(layer.dilation_rate) != (1, 1) or \
                layer.groups != 1:
            return f"{name}: a 1x1 convolution must have stride 1, no dilation, groups 1"
        return None
    if type(layer) is keras.layers.DepthwiseConv2D:
        if tuple(layer.kernel_size) not in ((3, 3), (5, 5)) or layer.depth_multiplier != 1 or \
                tuple(layer.dilation_rate) != (1, 1):
            return f"{name}: depthwise must be 3x3 or 5x5, multiplier 1, no dilation"
        stride = tuple(layer.strides)
        if layer.padding == "same" and stride == (1, 1):
            return None
        if layer.padding == "valid" and stride in ((1, 1), (2, 2)) and parents and all(
                isinstance(p, keras.layers.ZeroPadding2D) for p in parents):
            return None
        return f"{name}: depthwise must be 'same' at stride 1 or 'valid' after ZeroPadding2D"
    if type(layer) is keras.layers.Conv2D:
        return f"{name}: only 1x1 convolutions (and the stem) are supported"
    if isinstance(layer, _FREE):
        return None
    if isinstance(layer, keras.layers.UpSampling2D):
        return None if layer.interpolation == "bilinear" else f"{name}: only bilinear upsampling"
    if isinstance(layer, keras.layers.Activation):
        activation = getattr(layer.activation, "__name__", str(layer.activation))
        return None if activation in _ACTIVATIONS else f"{name}: activation {activation}"
    return f"{name}: not supported by XNNPACK's sparse inference"


def _is_stem(layer, parents):
    return (type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (3, 3)
            and tuple(layer.strides) == (2, 2) and layer.padding == "valid"
            and int(layer.input.shape[-1]) == 3 and len(parents) == 1
            and isinstance(parents[0], keras.layers.ZeroPadding2D)
            and tuple(map(tuple, parents[0].padding)) == ((1, 1), (1, 1)))


def cpu_uses_sparse_inference():
    """(whether XNNPACK on this CPU takes its sparse path, a note saying why)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return True, f"This CPU ({machine}) can use it."
    try:
        with open("/proc/cpuinfo") as f:
            avx = " avx" in f.read()
    except OSError:
        avx = True  # unknown: assume a modern x86
    if avx:
        return False, ("This x86 CPU has AVX, so XNNPACK will not use its sparse path here: "
                       "the file is smaller, not faster.")
    return True, "This x86 CPU has no AVX: XNNPACK can use it."


def check(model) -> Report:
    """Whether a plain Keras network (e.g. `keras_ast.export.subnet_model(model, k)`) qualifies
    for XNNPACK sparse inference once converted with sparse encoding (module docstring)."""
    if not isinstance(model, keras.Model) or not model.layers:
        raise TypeError(f"expected a functional keras.Model, got {type(model).__name__}")
    reasons = []
    downstream, stems, pools = set(), 0, 0
    for layer in model.layers:
        parents = compat.parent_layers(layer)
        if any(id(p) in downstream for p in parents):
            downstream.add(id(layer))  # after a global pooling: unconstrained
            continue
        if isinstance(layer, keras.layers.GlobalAveragePooling2D):
            downstream.add(id(layer))
            pools += 1
            continue
        if not stems and type(layer) is keras.layers.Conv2D:
            if _is_stem(layer, parents):
                stems += 1
                continue
            reasons.append(f"the first convolution {layer.name} must be ZeroPadding2D(1) then "
                           "a 3x3 stride-2 'valid' Conv2D on 3 channels")
            stems += 1
            continue
        problem = _layer_problem(layer, parents)
        if problem:
            reasons.append(problem)
    if not pools:
        reasons.append("no GlobalAveragePooling2D ends the convolutional part")
    kernels = [np.asarray(layer.kernel) for layer in model.layers if _is_1x1(layer)]
    size = sum(k.size for k in kernels)
    sparsity = sum(int((k == 0).sum()) for k in kernels) / size if size else 0.0
    if not kernels:
        reasons.append("no 1x1 convolution")
    elif sparsity <= SPARSITY_NEEDED:
        reasons.append(f"the 1x1 kernels are {100 * sparsity:.1f}% zeros, XNNPACK needs more "
                       "than 66.7%")
    uses, note = cpu_uses_sparse_inference()
    return Report(not reasons, reasons, sparsity, uses, note)
