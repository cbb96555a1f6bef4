"""N:M structured sparsity: the notation, the grouping layout, the mask update and a checker.

**Notation.** keras_ast counts *zeros*, as the AST paper does: the pattern ``N:M``
(``NMPattern(zeros=N, group=M)``) has N zeros in every group of M consecutive weights, so 2:4,
3:4, 7:8 and 15:16 are 50, 75, 87.5 and 93.75 % sparse. NVIDIA's notation counts the
*non-zeros* (its "2:4" is also ours, its "1:4" is our 3:4); text is therefore only parsed with
the counting named: ``parse_nm("1:4", counts="nonzeros") == NMPattern(zeros=3, group=4)``.
Every printed pattern (``str(p)``, summaries, tables) is in the zeros notation.

**Groups.** M consecutive *input* channels at a fixed position of every other axis, which is
the axis before the last one in all three Keras kernel layouts: Conv2D ``(kh, kw, in, out)``
(groups along ``in`` at fixed kh, kw, out: the layout sparse tensor cores accelerate), Dense
``(in, out)`` (along ``in`` at fixed out), DepthwiseConv2D ``(kh, kw, in, multiplier)`` (along
``in`` at fixed kh, kw, multiplier; a depthwise conv does not sum over ``in``, so this is for
uniformity and gives no tensor-core speed-up).

**Input dimension not divisible by M.** The last group of each row is short (r < M channels)
and may keep at most ``min(r, M - N)`` non-zeros: the kernel zero-padded to a multiple of M
(what a sparse-tensor-core kernel pads to anyway) then satisfies N:M exactly, and the layer is
still pruned (to a little less than N/M). `ASTModel` warns once, naming such layers.

**Mask update** (`update_masks`, one sub-net, run by `PruneRegrow` at that sub-net's staggered
update times). A fraction f of all groups of all prunable kernels together is N:M-sparse, f
following the cubic ramp 0 -> 1 of `schedules.CubicGroupFraction`; the others are dense:
  1. group choice by score: the round(f G) groups with the smallest mean |W| of the shared
     kernel (the summed magnitude over the group divided by its size, which orders full groups
     as the sum does and does not favour a short last group) are N:M-sparse, chosen afresh at
     every update over all kernels together (like GraNet's global magnitude pruning), so a
     group may also turn dense again: prune-and-regrow at the group level;
  2. each N:M-sparse group keeps its (M - N) largest-|W| entries among those active in the
     sub-net's current mask (a group that was dense just gets pruned by magnitude);
  3. death and regrowth inside the groups: in each layer, the fraction r (the cosine-decaying
     regrow ratio) of the active entries of its N:M-sparse groups with the smallest |W| die,
     and each group regrows as many as it lost, by the largest dense |gradient| among its
     other entries (a just-removed one may come back), so every group keeps exactly M - N
     non-zeros. The result is written into the mask variable.
Every selection is by rank (ties go to the lower position), so counts are exact.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import keras
import numpy as np
from keras import ops

from keras_ast import masks as mask_lib

COUNTS = ("zeros", "nonzeros")


@dataclasses.dataclass(frozen=True)
class NMPattern:
    """N:M sparsity in the zeros notation: `zeros` zeros in every group of `group` weights.

    ``NMPattern(zeros=2, group=4)`` is "2:4", 50 % sparse (2 of every 4 consecutive input
    channels are zero). Needs ``group >= 2`` and ``1 <= zeros < group``.
    """

    zeros: int
    group: int

    def __post_init__(self):
        for name in ("zeros", "group"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"NMPattern {name} must be an integer, got {value!r}")
        if self.group < 2:
            raise ValueError(f"an N:M group needs M >= 2 weights, got M={self.group}")
        if not 1 <= self.zeros < self.group:
            raise ValueError(
                f"an N:M pattern needs 1 <= N < M zeros per group, got {self.zeros} zeros "
                f"of {self.group} ({self.zeros}:{self.group}, zeros notation)"
            )
        object.__setattr__(self, "zeros", int(self.zeros))
        object.__setattr__(self, "group", int(self.group))

    @property
    def nonzeros(self) -> int:
        """Non-zeros per group, M - N (NVIDIA's N)."""
        return self.group - self.zeros

    @property
    def sparsity(self) -> float:
        """N / M."""
        return self.zeros / self.group

    def __str__(self):
        return f"{self.zeros}:{self.group}"

    def get_config(self):
        return {"zeros": self.zeros, "group": self.group}


def parse_nm(text: str, *, counts: str) -> NMPattern:
    """Reads one pattern "N:M"; `counts` ("zeros" or "nonzeros", required) says what N counts.

    ``parse_nm("2:4", counts="zeros")`` (the paper's notation) and ``parse_nm("2:4",
    counts="nonzeros")`` (NVIDIA's) are both 50 %; ``parse_nm("3:4", counts="zeros") ==
    parse_nm("1:4", counts="nonzeros")`` is 75 %.
    """
    if counts not in COUNTS:
        raise ValueError(f"counts must be 'zeros' or 'nonzeros', got {counts!r}")
    parts = str(text).strip().split(":")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"an N:M pattern looks like '2:4', got {text!r}") from None
    if m < 2 or not 1 <= n < m:
        raise ValueError(
            f"pattern {text!r} ({counts} notation): need M >= 2 and 1 <= N < M (N {counts} in "
            "every group of M)"
        )
    return NMPattern(zeros=n if counts == "zeros" else m - n, group=m)


def parse_nm_list(texts, *, counts: str) -> tuple[NMPattern, ...]:
    """Reads one pattern per sub-net from "2:4,3:4" or ["2:4", "3:4"] (see `parse_nm`).

    The patterns must be strictly increasing in sparsity (densest sub-net first), as the
    sub-nets' target sparsities are.
    """
    if isinstance(texts, str):
        texts = texts.split(",")
    return check_patterns([parse_nm(t, counts=counts) for t in texts])


def check_patterns(patterns) -> tuple[NMPattern, ...]:
    """Validates a list of `NMPattern` (or their configs): non-empty, strictly increasing in
    sparsity. Strings are refused, since "N:M" alone does not say what N counts."""
    if isinstance(patterns, (str, NMPattern)):
        patterns = [patterns]
    result = []
    for p in patterns:
        if isinstance(p, str):
            raise TypeError(
                f"N:M pattern {p!r} is ambiguous (zeros or non-zeros?): pass "
                f"keras_ast.parse_nm({p!r}, counts='zeros') (the paper's notation) or "
                "counts='nonzeros' (NVIDIA's), or NMPattern(zeros=..., group=...)"
            )
        result.append(p if isinstance(p, NMPattern) else NMPattern(**p))
    if not result:
        raise ValueError("N:M patterns must name at least one sub-net, got none")
    for a, b in zip(result, result[1:]):
        if not a.sparsity < b.sparsity:
            raise ValueError(
                f"N:M patterns must be strictly increasing in sparsity (densest sub-net first), "
                f"got {[str(p) for p in result]} (zeros notation: "
                f"{[f'{100 * p.sparsity:g}%' for p in result]})"
            )
    return tuple(result)


def resolve_targets(sparsities, nm):
    """(sparsities, patterns or None) from `ASTModel`'s arguments: N:M sub-nets target
    sparsity N/M; given both, they must agree (as in a saved config)."""
    if nm is None:
        if sparsities is None:
            raise ValueError("give the sub-nets' sparsities=[...] or their N:M patterns nm=[...]")
        return sparsities, None
    patterns = check_patterns(nm)
    implied = [p.sparsity for p in patterns]
    if sparsities is not None and [float(s) for s in sparsities] != implied:
        raise ValueError(
            f"sparsities {list(sparsities)} disagree with the N:M patterns "
            f"{[str(p) for p in patterns]} (sparsities {implied}); give only nm=[...] (mixing "
            "unstructured and N:M sub-nets is not supported)"
        )
    return implied, patterns


# ------------------------------------------------------------------------------ group layout
def _swap_last_two(ndim):
    return list(range(ndim - 2)) + [ndim - 1, ndim - 2]


def to_groups(kernel, group, fill=0.0):
    """[G, group] view of a kernel: the input-channel axis (the one before the last) is moved
    last, padded with `fill` to a multiple of `group` and cut into groups. Rows run over the
    other axes in row-major order, then over the groups along the input channels."""
    kernel = ops.convert_to_tensor(kernel)
    ndim = len(kernel.shape)
    if ndim < 2:
        raise ValueError(f"an N:M kernel needs at least 2 axes, got shape {kernel.shape}")
    x = ops.transpose(kernel, _swap_last_two(ndim))
    pad = -x.shape[-1] % group
    if pad:
        x = ops.pad(x, [[0, 0]] * (ndim - 1) + [[0, pad]], constant_values=fill)
    return ops.reshape(x, (-1, group))


def from_groups(groups, shape):
    """Inverse of `to_groups` for a kernel of `shape` (padding dropped)."""
    shape = tuple(shape)
    channels = shape[-2]
    padded = channels + (-channels % groups.shape[-1])
    x = ops.reshape(groups, shape[:-2] + (shape[-1], padded))[..., :channels]
    return ops.transpose(x, _swap_last_two(len(shape)))


def group_count(shape, group) -> int:
    """Number of groups of `group` input channels in a kernel of `shape` (short ones count)."""
    return math.prod(shape[:-2]) * shape[-1] * math.ceil(shape[-2] / group)


def short_group_layers(layers, patterns):
    """{layer name: (input channels, [M, ...])} for the layers whose input-channel count is not
    a multiple of some pattern's M."""
    result = {}
    for layer in layers:
        channels = layer.shared_kernel.shape[-2]
        bad = sorted({p.group for p in patterns if channels % p.group})
        if bad:
            result[layer.name] = (channels, bad)
    return result


def warn_short_groups(layers, patterns):
    """One warning naming the layers whose last group of input channels is short."""
    short = short_group_layers(layers, patterns)
    if short:
        text = "; ".join(f"{name} ({c} input channels, M={', '.join(map(str, ms))})"
                         for name, (c, ms) in short.items())
        warnings.warn(
            f"N:M sub-nets: the input channels of layers {text} are not a multiple of M: the "
            "last group of each row is short (r < M channels) and keeps at most min(r, M - N) "
            "non-zeros, so the kernel zero-padded to a multiple of M satisfies N:M; these "
            "layers end a little less sparse than N/M.",
            stacklevel=3,
        )


# ------------------------------------------------------------------------------- mask update
def rank_in_groups(scores):
    """Rank of every entry of [G, M] `scores` within its row (0 = largest; among equal scores
    the lower position ranks first, as a stable descending sort)."""
    order = ops.top_k(scores, k=scores.shape[-1], sorted=True)[1]  # TF: ties -> lower index
    return ops.argsort(order, axis=-1)  # the inverse permutation


def _per_group(count):
    return ops.expand_dims(ops.cast(count, "int32"), -1)


def update_masks(weights, masks, grads, pattern, fraction, ratio, regrowth="element"):
    """One N:M update of one sub-net's masks (module docstring, steps 1-3).

    Args:
      weights: the shared kernels, one per prunable layer.
      masks: the sub-net's current 0/1 masks (same shapes).
      grads: dense gradients dL/d(W*m) of the kernels (for regrowth).
      pattern: the sub-net's `NMPattern`.
      fraction: share of all groups to make N:M-sparse (scalar in [0, 1]).
      ratio: death/regrow ratio r (scalar in [0, 1]).
      regrowth: "element" (steps 1-3 above) or "group" (the paper's section 4.3: in each
        layer the round(fraction * G_l) groups with the smallest mean |W| are N:M-sparse and
        keep their (M - N) largest-|W| entries, whatever the current mask; groups are pruned
        and regrown whole, no entry is regrown by gradient; `masks`, `grads` and `ratio` are
        not used).

    Returns:
      The new masks: in the round(fraction * G) N:M-sparse groups exactly ``min(r, M - N)``
      ones (r = the group's real size), all ones in the other groups.
    """
    m, keep = pattern.group, pattern.nonzeros
    magnitude = [to_groups(ops.abs(w), m) for w in weights]
    real = [to_groups(ops.ones_like(w), m) for w in weights]
    sizes = [ops.sum(r, axis=-1) for r in real]
    if regrowth == "group":
        return _group_level_masks(weights, masks, pattern, fraction, magnitude, real, sizes)
    if regrowth != "element":
        raise ValueError(f"regrowth must be 'element' or 'group', got {regrowth!r}")
    scores = ops.concatenate([ops.sum(a, axis=-1) / s for a, s in zip(magnitude, sizes)], 0)
    chosen = mask_lib.top_count(-scores, mask_lib.count_to_keep(fraction, scores.shape[0]))
    new, start = [], 0
    for w, mask, grad, a, r, size in zip(weights, masks, grads, magnitude, real, sizes):
        count = a.shape[0]
        sparse = ops.expand_dims(chosen[start:start + count], -1) > 0.5
        start += count
        filler = r - 2.0  # -1 on real entries, -2 on the padding: ranked after any |value|
        active = to_groups(mask, m) > 0.5
        limit = _per_group(ops.minimum(size, float(keep)))
        pruned = ops.cast(rank_in_groups(ops.where(active, a, filler)) < limit, a.dtype)
        alive = ops.where(sparse, pruned, ops.zeros_like(pruned))
        living = ops.cast(ops.sum(alive), "int32")
        dying = ops.cast(ops.floor(ops.cast(ratio, a.dtype) * ops.cast(living, a.dtype)), "int32")
        survivors = mask_lib.top_count(ops.where(alive > 0.5, a, filler), living - dying)
        lost = _per_group(ops.sum(alive - survivors, axis=-1))
        regrow_scores = ops.where(survivors > 0.5, filler,
                                  ops.where(r > 0.5, to_groups(ops.abs(grad), m), filler))
        grown = ops.cast(rank_in_groups(regrow_scores) < lost, a.dtype)
        groups = ops.where(sparse, survivors + grown, r)
        new.append(ops.cast(from_groups(groups, w.shape), mask.dtype))
    return new


def _group_level_masks(weights, masks, pattern, fraction, magnitude, real, sizes):
    """`update_masks` with regrowth="group": per layer, by group score, magnitude inside."""
    keep = pattern.nonzeros
    new = []
    for w, mask, a, r, size in zip(weights, masks, magnitude, real, sizes):
        chosen = mask_lib.top_count(-ops.sum(a, axis=-1) / size,
                                    mask_lib.count_to_keep(fraction, a.shape[0]))
        sparse = ops.expand_dims(chosen, -1) > 0.5
        limit = _per_group(ops.minimum(size, float(keep)))
        kept = ops.cast(rank_in_groups(ops.where(r > 0.5, a, r - 2.0)) < limit, a.dtype)
        groups = ops.where(sparse, kept, r)
        new.append(ops.cast(from_groups(groups, w.shape), mask.dtype))
    return new


def sparse_group_fraction(masks, pattern) -> float:
    """Share of the groups of the given masks (numpy or tensors) that hold exactly N zeros (the
    N:M-sparse ones, for kernels whose input channels are a multiple of M)."""
    zeros = np.concatenate([
        ops.convert_to_numpy(pattern.group - ops.sum(to_groups(m, pattern.group), -1))
        for m in masks
    ])
    return float(np.mean(zeros == pattern.zeros))


# ----------------------------------------------------------------------------------- checker
@dataclasses.dataclass(frozen=True)
class NMCheck:
    """Result of `check_nm` for one kernel: `satisfied` iff no group has more than M - N
    non-zeros (a short last group: more than min(r, M - N))."""

    satisfied: bool
    groups: int
    violating_groups: int


def check_kernel(kernel, pattern: NMPattern) -> NMCheck:
    """Checks one kernel (any Keras layout: input channels on the axis before the last)."""
    kernel = np.asarray(kernel)
    # float32 0/1 (exact counts): an int32 transpose goes through oneDNN, which logs an
    # error-level line on CPUs without AVX-512 before falling back.
    groups = ops.convert_to_numpy(to_groups((kernel != 0).astype("float32"), pattern.group))
    size = ops.convert_to_numpy(to_groups(np.ones(kernel.shape, "float32"), pattern.group))
    allowed = np.minimum(size.sum(-1), pattern.nonzeros)
    violating = int((groups.sum(-1) > allowed).sum())
    return NMCheck(violating == 0, int(groups.shape[0]), violating)


def _kernels(target, layers):
    """{layer name: kernel array} of a Keras model or a SavedModel directory."""
    if hasattr(target, "sparse_layers"):
        raise TypeError("check_nm takes a plain model: use "
                        "keras_ast.export.subnet_model(model, k) for sub-net k of an ASTModel")
    if isinstance(target, keras.Model):
        names = layers or [layer.name for layer in target.layers
                           if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense,
                                                 keras.layers.DepthwiseConv2D))]
        found = {layer.name: layer for layer in target.layers}
        missing = sorted(set(names) - set(found))
        if missing:
            raise ValueError(f"model {target.name!r} has no layers {missing}")
        return {name: ops.convert_to_numpy(found[name].kernel) for name in names}
    import tensorflow as tf

    loaded = tf.saved_model.load(str(target))
    stored = {v.name[:-len("/kernel:0")]: v for v in loaded.variables
              if v.name.endswith("/kernel:0") and len(v.shape) >= 2}
    names = layers or sorted(stored)
    missing = sorted(set(names) - set(stored))
    if missing:
        raise ValueError(f"{target} has no kernels for layers {missing}; it has {sorted(stored)}")
    return {name: np.asarray(stored[name]) for name in names}


def check_nm(target, pattern: NMPattern, layers=None):
    """Checks the N:M pattern: per layer, does every group of M input channels hold at most
    M - N non-zeros (at least N zeros)?

    Args:
      target: a kernel (array), a plain Keras model (e.g. `export.subnet_model`) or the path of
        a SavedModel (its stored ``<layer>/kernel`` variables are read).
      pattern: an `NMPattern`.
      layers: layer names to check; default every Conv2D / DepthwiseConv2D / Dense kernel
        (including the dense stem, which then fails).

    Returns:
      An `NMCheck` for a kernel, else ``{layer name: NMCheck}``.
    """
    if not isinstance(pattern, NMPattern):
        raise TypeError(f"pattern must be an NMPattern (see parse_nm), got {pattern!r}")
    if isinstance(target, (str, os.PathLike, keras.Model)):
        return {name: check_kernel(k, pattern) for name, k in _kernels(target, layers).items()}
    return check_kernel(ops.convert_to_numpy(target), pattern)
