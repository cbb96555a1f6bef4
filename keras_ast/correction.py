"""Gradient correction (GC), docs/design.md section 3.

For the i-th sub-net of an inner group (i = t mod K >= 1), g is its gradient and h the gradient
applied at the previous iteration (the previous sub-net). If g.h < 0, g is projected onto the
normal plane of h: ``g <- g - (g.h / ||h||^2) h``; otherwise it is left alone. The first
sub-net of each group (i = 0) is never corrected.

keras_ast projects with ``h_k = m_k * h``, the part of h on the active sub-net's connections.
g lives on m_k, so ``g.h = g.h_k``: the conflict test is the paper's. Projecting on h_k instead of
h removes the conflicting component completely while the corrected gradient stays inside the
sub-net (projecting on h and then re-masking would leave part of the conflict). With identical
masks (or K sub-nets sharing connections) it is exactly the paper's formula.

Scopes: ``layerwise`` (each prunable kernel on its own, as the authors' code) or ``global`` (one
vector over all prunable kernels). A zero reference gives no correction and no NaN.

Note: the authors' public code stores the current gradient as h before projecting, so there
g.h = ||g||^2 >= 0 and GC never fires. Here it does; `GCStats.conflict` measures how often.
"""

from __future__ import annotations

import dataclasses

from keras import ops

SCOPES = ("off", "layerwise", "global")
REFERENCES = ("corrected", "raw")


def check_mode(scope, reference="corrected"):
    """Raises ValueError naming the bad value if `scope` or `reference` is unknown."""
    if scope not in SCOPES:
        raise ValueError(f"unknown gradient-correction scope {scope!r}; use one of {SCOPES}")
    if reference not in REFERENCES:
        raise ValueError(
            f"unknown gradient-correction reference {reference!r}; use one of {REFERENCES}"
        )


@dataclasses.dataclass
class GCStats:
    """Per-step statistics: share of conflicting (corrected) kernels or vectors, in [0, 1], the
    cosine between g and h (mean over kernels for layerwise), and how many of the inner products
    g.h (one per kernel for layerwise, one for global) were negative and positive."""

    conflict: object
    cosine: object
    negative: object = None
    positive: object = None


def project(grads, refs, scope="layerwise", enabled=True, masks=None):
    """Gradient correction of `grads` against `refs` (lists of same-shaped tensors).

    Args:
      grads: the current sub-net's gradients (already restricted to its masks).
      refs: the reference gradients h (the previous step's).
      scope: "layerwise" or "global".
      enabled: a bool or scalar bool tensor; when false the gradients pass unchanged and no
        work is done (a ``cond``: the first sub-net of each group costs nothing extra).
      masks: the current sub-net's masks m_k; the projection uses ``h_k = m_k * h``. None if
        `refs` are already restricted.

    Returns:
      (corrected gradients, GCStats); the statistics are float32 scalars, 0 when not enabled.
    """
    if scope not in ("layerwise", "global"):
        raise ValueError(f"scope must be 'layerwise' or 'global', got {scope!r}")
    grads, refs = list(grads), list(refs)
    if isinstance(enabled, bool):
        if not enabled:
            return grads, GCStats(*[ops.zeros((), "float32")] * 4)
        corrected, stats = _project(grads, refs, masks, scope)
        return corrected, GCStats(*stats)
    count = len(grads)

    def on():
        corrected, stats = _project(grads, refs, masks, scope)
        return corrected + list(stats)

    def off():
        return grads + [ops.zeros((), "float32")] * 4

    outputs = ops.cond(ops.convert_to_tensor(enabled), on, off)
    return list(outputs[:count]), GCStats(*outputs[count:])


def _project(grads, refs, masks, scope):
    if masks is not None:
        refs = [h * ops.cast(m, h.dtype) for h, m in zip(refs, masks)]
    # sum(a * b), not ops.vdot: on CPU vdot becomes a [1, n] x [n, 1] matrix product; the inner
    # products of the small CNN's kernels take 1.5-1.7x as long (python bench/step_parts.py).
    dots = [ops.sum(g * h) for g, h in zip(grads, refs)]
    ref_norms = [ops.sum(ops.square(h)) for h in refs]
    grad_norms = [ops.sum(ops.square(g)) for g in grads]
    if scope == "global":
        dots, ref_norms, grad_norms = [sum(dots)], [sum(ref_norms)], [sum(grad_norms)]
    dots, ref_norms, grad_norms = (ops.stack(v) for v in (dots, ref_norms, grad_norms))
    conflict = dots < 0
    # dot < 0 implies ||h|| > 0; the where keeps 0/0 out of every branch.
    safe_norms = ops.where(ref_norms > 0, ref_norms, ops.ones_like(ref_norms))
    coefs = ops.where(conflict, dots / safe_norms, ops.zeros_like(dots))
    if scope == "global":
        corrected = [g - coefs[0] * h for g, h in zip(grads, refs)]
    else:
        corrected = [g - coefs[i] * h for i, (g, h) in enumerate(zip(grads, refs))]
    denom = ops.sqrt(ref_norms * grad_norms)
    cosines = ops.where(denom > 0, dots / ops.where(denom > 0, denom, 1.0), 0.0)
    conflict = ops.cast(conflict, "float32")
    stats = (ops.mean(conflict), ops.cast(ops.mean(cosines), "float32"), ops.sum(conflict),
             ops.sum(ops.cast(dots > 0, "float32")))
    return corrected, stats
