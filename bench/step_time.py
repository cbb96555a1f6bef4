"""Wall time per training step: AST-GC (K sub-nets) vs the same model trained dense.

Runs, in one process and interleaved epoch by epoch (so machine noise hits all alike):
  dense    plain `keras.Model.fit` of the model
  ast_gc   ASTModel, K sub-nets, layer-wise gradient correction, PruneRegrow attached
  ast      the same without gradient correction
The first epoch of each (tracing, warm-up) is excluded; the figure is the median over the
remaining epochs of epoch wall time / steps, timed by a callback between on_epoch_begin and
on_epoch_end (so `fit`'s own set-up is not counted). Prints ms/step and ratios to dense.

    python bench/step_time.py                 # small CNN on the embedded digits, ~2 min
    python bench/step_time.py --width=64 --repeats=8
"""

from __future__ import annotations

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
    train, _ = load_digits(FLAGS.batch_size, drop_remainder=True)
    train = train.cache()
    steps = sum(1 for _ in train)
    epochs = FLAGS.repeats + 1
    total = steps * epochs
    frequency = FLAGS.update_frequency
    configs = {
        "dense": (_compile(small_cnn(width=FLAGS.width), 0.05), None),
    }
    for name, gc in (("ast_gc", "layerwise"), ("ast", "off")):
        model = keras_ast.ASTModel.from_model(small_cnn(width=FLAGS.width), sparsities, gc=gc)
        prune = keras_ast.PruneRegrow(
            frequency=frequency, adjustment_period=frequency // (2 * len(sparsities)),
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
    print(f"small_cnn width={FLAGS.width}, batch={FLAGS.batch_size}, {steps} steps/epoch, "
          f"K={len(sparsities)}, mask updates every {frequency} steps per sub-net, median of "
          f"{FLAGS.repeats} epochs, jit={FLAGS.jit_compile}")
    print(f"{'config':<8} {'ms/step':>8} {'/ dense':>8}")
    for name, value in ms.items():
        print(f"{name:<8} {value:8.2f} {value / ms['dense']:8.3f}")
    print(f"ast_gc / ast = {ms['ast_gc'] / ms['ast']:.3f}")


if __name__ == "__main__":
    app.run(main)
