"""Training cost side by side: dense fit, AST-GC, AST without GC, individual, joint.

Runs, in one process and interleaved epoch by epoch (so machine noise hits all alike):
  dense       plain `keras.Model.fit` of the model
  ast_gc      ASTModel, K sub-nets alternating, layer-wise gradient correction
  ast         the same without gradient correction
  individual  one sparse sub-net (K = 1, the middle sparsity), GraNet-style
  joint       S-Net style: all K sub-nets on every batch, summed losses
All sparse runs use the same PruneRegrow schedule. The first epoch of each (tracing, warm-up)
is excluded; times are medians over the remaining epochs of epoch wall time (between
on_epoch_begin and on_epoch_end, so `fit`'s set-up is not counted). Prints ms/step, ms/epoch,
ratios to individual and to dense, training FLOPs (counted from the masks) and final accuracy.

    python bench/train_cost.py                # small CNN on the embedded digits, ~3 min
    python bench/train_cost.py --width=64 --repeats=10 --update_frequency=1000
"""

from __future__ import annotations

import math
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_ast  # noqa: E402
from keras_ast.data import load_digits  # noqa: E402
from keras_ast.models import small_cnn  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("width", 32, "Width of the small CNN.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("repeats", 6, "Timed epochs per configuration (after one warm-up epoch).")
flags.DEFINE_string("sparsities", "0.5,0.75,0.9", "Sub-net sparsities (K = their number).")
flags.DEFINE_bool("jit_compile", False, "Compile the steps with XLA.")
flags.DEFINE_integer("update_frequency", 100,
                     "Steps between two mask updates of one sub-net (the paper: 1000 steps, "
                     "~2.5 CIFAR epochs; 100 is ~2.4 digits epochs). Each update sorts all "
                     "prunable weights, so a small value shows its cost.")


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of each epoch, between on_epoch_begin and on_epoch_end."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def _compile(model, lr):
    model.compile(
        optimizer=keras_ast.SGD(lr, momentum=0.9, l2=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=FLAGS.jit_compile,
    )
    return model


def main(argv):
    del argv
    keras.utils.set_random_seed(0)
    sparsities = [float(s) for s in FLAGS.sparsities.split(",")]
    train, test = load_digits(FLAGS.batch_size, drop_remainder=True)
    train = train.cache()
    steps = sum(1 for _ in train)
    epochs = FLAGS.repeats + 1
    total = steps * epochs
    frequency = FLAGS.update_frequency
    K = len(sparsities)
    # The last (final-sparsity) update must fall inside the run; shorten the period if not.
    if math.ceil((total // 2) / frequency) * frequency + (K - 1) * (frequency // (2 * K)) + K \
            >= total:
        frequency = max(4 * K, total // 4)
    configs = {
        "dense": (_compile(small_cnn(width=FLAGS.width), 0.05), None),
    }
    middle = [sparsities[len(sparsities) // 2]]
    for name, subnets, gc, training in (
        ("ast_gc", sparsities, "layerwise", "alternating"),
        ("ast", sparsities, "off", "alternating"),
        ("individual", middle, "off", "alternating"),
        ("joint", sparsities, "off", "joint"),
    ):
        model = keras_ast.ASTModel.from_model(small_cnn(width=FLAGS.width), subnets, gc=gc,
                                              training=training)
        prune = keras_ast.PruneRegrow(
            frequency=frequency,
            adjustment_period=frequency // (2 * len(subnets)) if len(subnets) > 1 else 0,
            end_step=total // 2, total_steps=total,
        )
        configs[name] = (_compile(model, 0.05), prune)
    timers = {name: EpochTimer() for name in configs}
    for epoch in range(epochs):
        for name, (model, prune) in configs.items():
            callbacks = [timers[name]] + ([prune] if prune else [])
            model.fit(train, epochs=epoch + 1, initial_epoch=epoch, callbacks=callbacks,
                      verbose=0)
    ms = {name: 1000 * statistics.median(t.times[1:]) / steps for name, t in timers.items()}
    dense_flops = total * FLAGS.batch_size * configs["ast"][0].training_flops["dense_example"]
    print(f"small_cnn width={FLAGS.width}, batch={FLAGS.batch_size}, {steps} steps/epoch, "
          f"K={len(sparsities)} {sparsities} (individual: {middle[0]}), mask updates every "
          f"{frequency} steps per sub-net, median of {FLAGS.repeats} epochs after a warm-up, "
          f"jit={FLAGS.jit_compile}")
    print(f"{'config':<11} {'ms/step':>8} {'ms/epoch':>9} {'/indiv.':>8} {'/dense':>7} "
          f"{'train FLOPs':>12} {'/dense':>7}  test accuracy per sub-net")
    for name, (model, _) in configs.items():
        flops = model.training_flops["total"] if name != "dense" else dense_flops
        if name == "dense":
            accuracy = [model.evaluate(test, return_dict=True, verbose=0)["accuracy"]]
        else:
            accuracy = [r["accuracy"] for r in model.evaluate_subnets(test).values()]
        print(f"{name:<11} {ms[name]:8.2f} {ms[name] * steps:9.1f} "
              f"{ms[name] / ms['individual']:8.3f} {ms[name] / ms['dense']:7.3f} "
              f"{flops:12.4g} {flops / dense_flops:7.3f}  "
              + " ".join(f"{100 * a:.2f}%" for a in accuracy))
    print(f"AST-GC / individual = {ms['ast_gc'] / ms['individual']:.3f} (goal <= 1.05); "
          f"AST-GC / joint = {ms['ast_gc'] / ms['joint']:.3f} (goal <= 0.40); "
          f"AST-GC / AST = {ms['ast_gc'] / ms['ast']:.3f} (goal <= 1.03); "
          f"AST-GC / dense = {ms['ast_gc'] / ms['dense']:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    app.run(main)
