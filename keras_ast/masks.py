"""Pure mask math (keras.ops, no state): exact top-count selection, global magnitude pruning,
layer-wise death and regrowth, nesting of masks, random initial masks.

Masks are float tensors of 0s and 1s with the kernel's shape. Every selection is by *rank*
(a full sort), not by a threshold value, so the number of kept entries is exact even when
scores tie, and shapes stay static (works under XLA).
"""

from __future__ import annotations

import math

from keras import ops


def _flat(tensors):
    return ops.concatenate([ops.reshape(t, (-1,)) for t in tensors], axis=0)


def _unflat(flat, like):
    out, start = [], 0
    for t in like:
        size = math.prod(t.shape)
        out.append(ops.reshape(flat[start:start + size], t.shape))
        start += size
    return out


def top_count(scores, count):
    """0/1 float mask of the `count` largest entries of `scores` (any shape; exact count).

    Ties are broken by position, so exactly ``min(count, size)`` entries are selected.
    `count` may be a scalar tensor.
    """
    flat = ops.reshape(scores, (-1,))
    size = flat.shape[0]
    order = ops.argsort(-flat)  # position of the largest first
    rank = ops.scatter(ops.expand_dims(order, 1), ops.arange(size, dtype="int32"), (size,))
    keep = ops.cast(rank < ops.cast(count, "int32"), scores.dtype)
    return ops.reshape(keep, scores.shape)


def count_to_keep(density, total):
    """round(density * total) as an int32 scalar."""
    return ops.cast(ops.round(ops.cast(density, "float32") * float(total)), "int32")


def _masked_scores(values, mask, fill):
    return ops.where(mask > 0.5, values, ops.full_like(values, fill))


def global_magnitude_prune(weights, masks, density):
    """Keeps the round(density * N) largest-|w| active entries over all kernels together.

    Only entries active in `masks` can be kept (pruning never regrows), so the result keeps
    ``min(round(density * N), active)`` entries; N is the total size of all kernels. Returns
    the new list of masks. Layer-wise densities come out different, as in GraNet.
    """
    scores = _flat([_masked_scores(ops.abs(w), m, -1.0) for w, m in zip(weights, masks)])
    active = ops.cast(ops.sum(_flat(masks)), "int32")
    keep = ops.minimum(count_to_keep(density, scores.shape[0]), active)
    return _unflat(top_count(scores, keep), masks)


def death_regrow(weight, mask, gradient, ratio):
    """Removes floor(ratio * active) smallest-|w| active entries of one kernel and regrows as
    many inactive ones with the largest |gradient| (the dense gradient, so any entry can come
    back, including one just removed). The layer's number of active entries is unchanged.
    """
    active = ops.sum(mask)
    changed = ops.cast(ops.floor(ops.cast(ratio, mask.dtype) * active), "int32")
    survivors = top_count(
        _masked_scores(ops.abs(weight), mask, -1.0), ops.cast(active, "int32") - changed
    )
    grown = top_count(_masked_scores(ops.abs(gradient), 1.0 - survivors, -1.0), changed)
    return survivors + grown


def nest_within(weights, children, parents):
    """Makes `children` a subset of `parents` while keeping its total count.

    Entries of the child inside the parent stay; lost ones are replaced by the largest-|w|
    parent entries not yet in the child (globally over all kernels). An already nested child
    is returned unchanged.
    """
    inf = float("inf")
    scores = _flat([
        ops.where(c * p > 0.5, ops.full_like(w, inf), _masked_scores(ops.abs(w), p, -1.0))
        for w, c, p in zip(weights, children, parents)
    ])
    count = ops.minimum(ops.cast(ops.sum(_flat(children)), "int32"),
                        ops.cast(ops.sum(_flat(parents)), "int32"))
    return _unflat(top_count(scores, count), children)


def random_mask(shape, density, seed, dtype="float32"):
    """A uniformly random 0/1 mask with exactly round(density * size) ones."""
    from keras import random

    size = math.prod(shape)
    scores = random.uniform((size,), seed=seed)
    return ops.cast(ops.reshape(top_count(scores, count_to_keep(density, size)), shape), dtype)


def sparsity(masks):
    """Fraction of zeros over all the given masks together (a Python float)."""
    total = sum(math.prod(m.shape) for m in masks)
    ones = sum(float(ops.convert_to_numpy(ops.sum(m))) for m in masks)
    return 1.0 - ones / total
