"""The AST step over tensors: open `ast_step` first to read the algorithm.

`ASTModel.train_step` (keras_ast/model.py) runs the forward and backward pass of sub-net k
(TensorFlow's GradientTape, `keras_ast.tf_engine`), sums the gradients over the replicas under
tf.distribute, calls `ast_step` with plain tensors, and then assigns what it returns (new
masks, new gradient-correction references, counters) to the model's variables and applies the
gradients with the optimizer. `ast_step` itself reads and writes no variable and uses
`keras.ops` only:

1. If sub-net k's mask update is due, the updater prunes and regrows its masks from the shared
   weights and the dense gradients dL/d(W*m_k), and the kernel gradients are re-masked with
   the new m_k (``dense * m_k``, plus a kernel regularizer's own term).
2. FLOPs of the step, from the masks its forward and backward pass used, with the kernel
   gradient over every entry when the update regrows by the dense gradient (keras_ast/cost.py).
3. Gradient correction against the previous sub-net's gradient h (all but the first sub-net
   of each group of K steps): if g.h < 0, ``g <- g - (g.h / ||h||^2) h`` with h restricted to
   m_k (``gc_projection="masked"``) or the full h (``"full"``, the paper's Eq. 5).
4. The new reference is the gradient applied (``gc_reference="corrected"``) or the one before
   correction (``"raw"``).

A step whose gradients are not all finite (`finite` false) changes no mask and no reference
and adds nothing to the gradient-correction counts; the model skips its optimizer update and
counts it (``nonfinite_steps``).
"""

from __future__ import annotations

import dataclasses

from keras import ops

from keras_ast import correction, cost

# Columns of a step's gradient-correction counts (`StepResult.gc_row`) and of
# `ASTModel.gc_statistics` (row i: the steps of sub-net i, corrected against i - 1).
GC_COLUMNS = ("steps", "corrected_steps", "products", "negative", "positive", "cosine_sum")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What `ast_step` needs to know about the model (static: fixed for a trace).

    updater: the mask updater (`PruneRegrow` or a `keras_ast.updaters` class), or None.
    window: how often a sub-net runs (K when alternating, 1 in joint training).
    gc: "off", "layerwise" or "global"; gc_reference: "corrected" or "raw";
    gc_projection: "masked" or "full".
    dense_macs / sparse_macs: MACs of the dense part and of each sparse layer (cost.py).
    """

    num_subnets: int
    updater: object
    window: int
    gc: str
    gc_reference: str
    gc_projection: str
    dense_macs: float
    sparse_macs: tuple


@dataclasses.dataclass
class StepResult:
    """What `ast_step` returns (tensors).

    grads: the kernel gradients to apply, one per sparse layer.
    masks: sub-net k's masks after the step's update (one per sparse layer).
    rows: every sub-net's masks after the update ([K, *kernel] per layer), or None when
      there is no updater; `updated` says whether they changed.
    refs: the new gradient-correction references, or None without GC.
    flops: FLOPs of the step (float64 scalar).
    finite: the step's `finite` flag (bool scalar).
    gc_row: float64 [len(GC_COLUMNS)] counts of this step (zeros without GC).
    gc_stats: `correction.GCStats` of this step, or None without GC.
    """

    grads: list
    masks: list
    rows: list | None
    updated: object
    refs: list | None
    flops: object
    gc_row: object
    gc_stats: object
    finite: object


def step_flops(config, batch, densities, dense_backward=False):
    """`cost.step_flops` of a pass of `batch` examples through the model `config` describes,
    with the pruned layers at `densities`."""
    return cost.step_flops(ops.cast(batch, "float64"), float(config.dense_macs),
                           [float(m) for m in config.sparse_macs], densities, dense_backward)


def ast_step(config, grads, dense, extras, masks, rows, weights, refs, step, subnet, batch,
             finite=True, agent_terms=None):
    """One AST step of sub-net `subnet` on tensors (module docstring, steps 1-4).

    Args:
      config: a `StepConfig`.
      grads: dL/dW of each sparse layer's kernel (already restricted to m_k: the gradient
        of W * m_k with respect to W), plus its regularizer's term.
      dense: dL/d(W*m_k) of each sparse layer (every entry: regrowth scores).
      extras: {layer index: regularizer term} (to add back after re-masking).
      masks: sub-net k's masks used in the forward pass.
      rows: every sub-net's masks ([K, *kernel] per layer) and weights: the shared kernels;
        read by the updater only.
      refs: the gradient-correction references h (the previous step's gradients).
      step, subnet: int scalars; batch: the (global) batch size.
      finite: bool scalar, false if any gradient of the step is inf or NaN.
      agent_terms: AGENT's correction c (mu~_k - q) of each kernel (keras_ast/agent.py), or
        None: added to the kernel gradients restricted to the masks after the update, before
        gradient correction; its snapshot pass is added to the FLOPs.

    Returns:
      A `StepResult`.
    """
    updater = config.updater
    finite = ops.convert_to_tensor(finite)
    new_rows, updated = None, ops.convert_to_tensor(False)
    densities = [ops.cast(ops.mean(m), "float64") for m in masks]  # the masks the pass used
    if updater is not None:
        count = len(masks)
        updated = ops.logical_and(updater.is_due(step, subnet, window=config.window), finite)

        def update():
            new = updater.new_masks(step, subnet, weights, rows, dense)
            mine = [ops.cast(ops.take(r, subnet, axis=0), d.dtype) for r, d in zip(new, dense)]
            regrown = [d * m + extras[j] if j in extras else d * m
                       for j, (d, m) in enumerate(zip(dense, mine))]
            return [ops.cast(r, row.dtype) for r, row in zip(new, rows)] + mine + regrown

        outputs = ops.cond(updated, update, lambda: list(rows) + list(masks) + list(grads))
        new_rows = list(outputs[:count])
        masks = list(outputs[count:2 * count])
        grads = list(outputs[2 * count:])
    dense_backward = False
    if updater is not None and updater.needs_dense_gradient:
        dense_backward = updated
    flops = step_flops(config, batch, densities, dense_backward)
    if agent_terms is not None:  # AGENT (before GC): g~ = g + c (mu~_k - q) on m_k
        grads = [g + ops.cast(t, g.dtype) * ops.cast(m, g.dtype)
                 for g, t, m in zip(grads, agent_terms, masks)]
        # q: one more forward and backward pass at the snapshot
        flops = flops + step_flops(config, batch, densities)
    new_refs, gc_stats = None, None
    gc_row = ops.zeros((len(GC_COLUMNS),), "float64")
    if config.gc != "off" and config.num_subnets > 1:
        refs = [ops.cast(h, g.dtype) for h, g in zip(refs, grads)]
        enabled = ops.logical_and(subnet > 0, finite)
        corrected, gc_stats = correction.project(
            grads, refs, config.gc, enabled=enabled,
            masks=masks if config.gc_projection == "masked" else None)
        weight = ops.cast(enabled, "float32")
        products = 1 if config.gc == "global" else len(grads)
        gc_row = ops.cast(ops.stack([weight, ops.cast(gc_stats.negative > 0, "float32"),
                                     weight * products, gc_stats.negative, gc_stats.positive,
                                     gc_stats.cosine]), "float64")
        new_refs = corrected if config.gc_reference == "corrected" else grads
        new_refs = [ops.where(finite, n, h) for n, h in zip(new_refs, refs)]
        grads = corrected
    return StepResult(grads=grads, masks=masks, rows=new_rows, updated=updated, refs=new_refs,
                      flops=flops, gc_row=gc_row, gc_stats=gc_stats, finite=finite)
