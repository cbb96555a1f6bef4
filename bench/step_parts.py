"""Where the time of a sparse training step goes: the parts `bench/train_cost.py` cannot
separate, each measured side by side in one run.

1. Mask update: one `PruneRegrow` update (global magnitude pruning, then per-layer death and
   regrowth) of one sub-net of a K = 3 `ASTModel`, with the exact-count selection done by
   keras_ast's radix select (`keras_ast.masks.top_count`) and by a full argsort (the
   implementation it replaced), on the small CNN at --widths and on WRN-32; plus what the
   updates cost per training step when each of K sub-nets updates every F steps.
2. Gradient correction: one corrected step (half of the kernels conflicting) of
   `keras_ast.correction.project` on tensors shaped like the prunable kernels of the small CNN
   at --gc_width: as keras_ast runs it, XLA-compiled, and with a per-kernel ``cond`` that skips
   the projection of non-conflicting kernels; and the inner products alone, ``sum(g * h)``
   (keras_ast) against ``ops.vdot``.
3. Fixed cost of a Keras step: ms per step of a dense ``fit`` of the small CNN at several batch
   sizes, fitted by a line ``fixed + per_example * batch``, with ``steps_per_execution`` 1 and
   --steps_per_execution; the difference of the fixed parts is Keras' per-call dispatch.

Variants are timed alternately within each repetition (order rotated), so drifts in machine
speed hit all alike; reported are medians and, for pairs, the median of per-repetition ratios.

    python bench/step_parts.py                  # about 3 minutes on 2 CPU cores
    python bench/step_parts.py --nowrn32 --repeats=10
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from keras import ops  # noqa: E402

import keras_ast  # noqa: E402
from keras_ast import correction, masks, models  # noqa: E402
from keras_ast.data import load_digits  # noqa: E402
from timing import EpochTimer, paired_ratio  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("widths", ["32", "64"], "Small-CNN widths for the mask-update and step parts.")
flags.DEFINE_bool("wrn32", True, "Also time a mask update of WRN-32 (1.85 M prunable weights).")
flags.DEFINE_integer("repeats", 20, "Timed repetitions of each variant (after a warm-up).")
flags.DEFINE_integer("gc_width", 64, "Small-CNN width whose kernels the GC part uses.")
flags.DEFINE_list("batch_sizes", ["16", "32", "64", "128"], "Batch sizes of the step part.")
flags.DEFINE_integer("steps_per_execution", 8, "The step part's second steps_per_execution.")
flags.DEFINE_integer("step_epochs", 6, "Timed epochs per configuration in the step part.")

SPARSITIES = (0.5, 0.75, 0.9)


def _median_ms(seconds):
    return 1000 * statistics.median(seconds)


def _alternate(variants, repeats):
    """{name: [seconds per call]} for `variants` ({name: zero-argument callable}), one warm-up
    call each, then `repeats` rounds in a rotated order."""
    names = list(variants)
    for name in names:
        variants[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _progress(text):
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ mask update
def argsort_top_count(scores, count):
    """The selection `masks.top_count` replaced: rank every entry by a full argsort."""
    flat = ops.reshape(scores, (-1,))
    size = flat.shape[0]
    order = ops.argsort(-flat)
    rank = ops.scatter(ops.expand_dims(order, 1), ops.arange(size, dtype="int32"), (size,))
    return ops.reshape(ops.cast(rank < ops.cast(count, "int32"), scores.dtype), scores.shape)


def _mask_update(model, selection):
    """A compiled mask update of sub-net 1 (mid-ramp) with `selection` as masks.top_count."""
    prune = keras_ast.PruneRegrow(frequency=1000, adjustment_period=100)
    prune.set_model(model)
    prune.configure(total_steps=16000)
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.normal(size=layer.shared_kernel.shape).astype("float32"))
             for layer in model.sparse_layers]
    step = tf.constant(5001, tf.int64)  # sub-net 1's update at 5001: sparsity on the ramp
    subnet = tf.constant(1, tf.int32)
    original = masks.top_count

    @tf.function
    def update():
        masks.top_count = selection  # read while tracing (the first call below)
        try:
            prune.update(model, step, subnet, grads)
        finally:
            masks.top_count = original

    return update


def bench_mask_updates(repeats):
    cases = [(f"small_cnn width {w}", "small_cnn", {"width": int(w)}) for w in FLAGS.widths]
    if FLAGS.wrn32:
        cases.append(("wrn32", "wrn32", {}))
    print("1. mask update of one sub-net (K = 3, PruneRegrow.update compiled), ms per update")
    print(f"   {'model':<20} {'prunable':>10} {'radix':>8} {'argsort':>8} {'argsort/radix':>14}"
          f" {'per step, F=100':>16} {'F=1000':>7}")
    for label, name, kwargs in cases:
        _progress(f"mask update: {label}")
        model = keras_ast.ASTModel.from_model(models.get_model(name, **kwargs), SPARSITIES,
                                              dense_layers=models.dense_layers(name))
        weights = sum(int(np.prod(layer.shared_kernel.shape)) for layer in model.sparse_layers)
        variants = {"radix": _mask_update(model, masks.top_count),
                    "argsort": _mask_update(model, argsort_top_count)}
        count = repeats if weights < 1_000_000 else max(3, repeats // 4)
        times = _alternate(variants, count)
        radix = _median_ms(times["radix"])
        ratio = paired_ratio(times, "argsort", "radix")[0]
        K = len(SPARSITIES)  # K sub-nets, each updating once per F steps
        print(f"   {label:<20} {weights:>10,} {radix:8.1f} {_median_ms(times['argsort']):8.1f} "
              f"{ratio:14.2f} {K * radix / 100:13.3f} ms {K * radix / 1000:7.3f}")


# ---------------------------------------------------------------------- gradient correction
def project_with_cond(grads, refs, kernel_masks):
    """`correction.project` (layer-wise, same statistics) with a ``cond`` per kernel that skips
    the projection of a non-conflicting kernel instead of multiplying it by a zero coefficient."""
    out, dots, cosines = [], [], []
    for g, h, m in zip(grads, refs, kernel_masks):
        h = h * m
        dot, ref_norm, grad_norm = ops.sum(g * h), ops.sum(h * h), ops.sum(g * g)
        out.append(ops.cond(dot < 0, lambda g=g, h=h, dot=dot, n=ref_norm: g - dot / n * h,
                            lambda g=g: g))
        dots.append(dot)
        cosines.append(dot / ops.sqrt(ref_norm * grad_norm))
    dots = ops.stack(dots)
    negative = ops.cast(dots < 0, "float32")
    return out + [ops.mean(negative), ops.mean(ops.stack(cosines)), ops.sum(negative),
                  ops.sum(ops.cast(dots > 0, "float32"))]


def bench_gradient_correction(repeats):
    network = keras_ast.sparsify(models.small_cnn(width=FLAGS.gc_width), len(SPARSITIES))
    shapes = [tuple(layer.shared_kernel.shape) for layer in network.layers
              if isinstance(layer, keras_ast.layers.MaskedKernelMixin)]
    rng = np.random.default_rng(0)
    kernel_masks = [tf.constant((rng.random(s) < 0.5).astype("float32")) for s in shapes]
    grads = [tf.constant(rng.normal(size=s).astype("float32")) * m
             for s, m in zip(shapes, kernel_masks)]
    # Every other kernel conflicts (g.h < 0); in the default launcher run 41 % of the inner
    # products were negative.
    refs = [(-g if i % 2 == 0 else g) + tf.constant(0.1 * rng.normal(size=g.shape), "float32")
            for i, g in enumerate(grads)]
    weights = sum(int(np.prod(s)) for s in shapes)

    def project(jit):
        def corrected():
            out, stats = correction.project(grads, refs, "layerwise", masks=kernel_masks)
            return out + [stats.conflict, stats.cosine, stats.negative, stats.positive]

        return tf.function(corrected, jit_compile=jit)

    with_cond = tf.function(lambda: project_with_cond(grads, refs, kernel_masks))
    dots_sum = tf.function(lambda: [ops.sum(g * h) for g, h in zip(grads, refs)])
    dots_vdot = tf.function(lambda: [ops.vdot(g, h) for g, h in zip(grads, refs)])
    _progress("gradient correction")
    times = _alternate({"keras_ast": project(False), "xla": project(True),
                        "per-kernel cond": with_cond, "dots sum(g*h)": dots_sum,
                        "dots vdot": dots_vdot}, repeats * 10)
    print(f"\n2. gradient correction of one step, half of the kernels conflicting: "
          f"{len(shapes)} prunable kernels, {weights:,} weights (small_cnn width "
          f"{FLAGS.gc_width}); the dots are the inner products alone")
    for name, seconds in times.items():
        print(f"   {name:<18} {_median_ms(seconds):7.3f} ms  "
              f"(/keras_ast {paired_ratio(times, name, 'keras_ast')[0]:.2f})")


# ------------------------------------------------------------------------- fixed step cost
def _dense_model(width, steps_per_execution):
    model = models.small_cnn(width=width)
    model.compile(optimizer=keras_ast.SGD(0.05, momentum=0.9, l2=5e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)
    return model


def bench_step_cost(epochs):
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    configs = {}
    for width in (int(w) for w in FLAGS.widths):
        for spe in (1, FLAGS.steps_per_execution):
            for batch in batch_sizes:
                train, _ = load_digits(batch, drop_remainder=True)
                configs[(width, spe, batch)] = (_dense_model(width, spe), train.cache(),
                                                EpochTimer())
    names = list(configs)
    for epoch in range(epochs + 1):  # epoch 0: tracing and warm-up, not counted
        _progress(f"step cost: round {epoch + 1}/{epochs + 1}")
        shift = epoch % len(names)
        for key in names[shift:] + names[:shift]:
            model, train, timer = configs[key]
            model.fit(train, epochs=epoch + 1, initial_epoch=epoch, callbacks=[timer],
                      verbose=0)
    print("\n3. dense fit step of the small CNN: ms per step = fixed + per example * batch "
          "(least squares over batch sizes " + ", ".join(map(str, batch_sizes)) + ")")
    fixed = {}
    for width in (int(w) for w in FLAGS.widths):
        for spe in (1, FLAGS.steps_per_execution):
            ms = []
            for batch in batch_sizes:
                _, train, timer = configs[(width, spe, batch)]
                ms.append(1000 * statistics.median(timer.times[1:]) / int(train.cardinality()))
            slope, intercept = np.polyfit(batch_sizes, ms, 1)
            fixed[(width, spe)] = intercept
            print(f"   width {width:>3}, steps_per_execution {spe}: fixed {intercept:5.2f} ms + "
                  f"{slope:.4f} ms per example   (measured: "
                  + ", ".join(f"{b}: {m:.2f}" for b, m in zip(batch_sizes, ms)) + " ms)")
        dispatch = fixed[(width, 1)] - fixed[(width, FLAGS.steps_per_execution)]
        print(f"   width {width:>3}: per-call dispatch (fixed part at steps_per_execution 1 "
              f"minus {FLAGS.steps_per_execution}) {dispatch:.2f} ms")


def main(argv):
    del argv
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    bench_mask_updates(FLAGS.repeats)
    bench_gradient_correction(FLAGS.repeats)
    bench_step_cost(FLAGS.step_epochs)
    _progress(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
