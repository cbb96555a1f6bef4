"""Training cost side by side: dense fit, AST-GC, AST without GC, individual, joint.

Trains, in one process, the small CNN on the embedded digits data set five ways:
  dense       plain `keras.Model.fit` of the model (same optimizer)
  ast_gc      ASTModel, K sub-nets alternating, layer-wise gradient correction
  ast         the same without gradient correction
  individual  one sparse sub-net (K = 1, the middle sparsity), GraNet-style
  joint       S-Net style: all K sub-nets on every batch, summed losses, one optimizer step
  agent       ast_gc with AGENT (keras_ast.Agent, its per-epoch pass inside the timed epoch);
              its time over ast_gc's is printed beside the FLOPs ratio the accounting predicts
              (--noagent leaves it out)
All sparse runs use the same PruneRegrow schedule (mask updates every --update_frequency steps
per sub-net, gradual pruning until 68.75% of the run, as the launcher) and the same cosine
learning rate.

Timing is paired: each round trains one epoch of every configuration, in an order rotated from
round to round, so drifts in machine speed hit all alike. Round 0 (tracing, warm-up) is
excluded. An epoch's time runs from on_epoch_begin to on_epoch_end (mask updates included,
`fit`'s set-up not). Reported: the median over rounds of ms/step, and each ratio as the median
over rounds of the per-round ratio, with its interquartile range. Then training FLOPs (counted
from the masks during training) and the final test accuracy of every sub-net.

    python bench/train_cost.py                       # about 3 min on 2 CPU cores
    python bench/train_cost.py --width=32 --batch_size=32   # tiny steps: fixed costs dominate
    python bench/train_cost.py --width=32 --batch_size=32 --steps_per_execution=8
    python bench/train_cost.py --width=128 --epochs=40 --update_frequency=200
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_ast  # noqa: E402
from keras_ast.data import load_digits  # noqa: E402
from keras_ast.models import small_cnn  # noqa: E402
from timing import EpochTimer, paired_ratio  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("width", 64, "Width of the small CNN (parameters grow with its square).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("epochs", 31, "Epochs (= timing rounds) per configuration; the first is "
                     "a warm-up and not timed.")
flags.DEFINE_string("sparsities", "0.5,0.75,0.9", "Sub-net sparsities (K = their number).")
flags.DEFINE_float("lr", 0.05, "Peak learning rate (cosine decay over the run).")
flags.DEFINE_bool("jit_compile", False, "Compile the steps with XLA.")
flags.DEFINE_integer("steps_per_execution", 1,
                     "Training steps per compiled call (Keras' compile argument; 1 is Keras' "
                     "default). More removes per-call dispatch costs, for every configuration.")
flags.DEFINE_bool("agent", True, "Time AST-GC with AGENT too (the 'agent' row).")
flags.DEFINE_integer("update_frequency", 100,
                     "Steps between two mask updates of one sub-net (the paper: 1000 steps on "
                     "CIFAR). Each update ranks all prunable weights, so a small value shows "
                     "its cost.")

# Goals of the issue that asked for this benchmark: (numerator, denominator, bound).
GOALS = (("ast_gc", "individual", 1.05), ("ast_gc", "joint", 0.40), ("ast_gc", "ast", 1.03),
         ("ast_gc", "dense", 1.10))


def _compile(model, total_steps):
    model.compile(
        optimizer=keras_ast.SGD(keras.optimizers.schedules.CosineDecay(FLAGS.lr, total_steps),
                                momentum=0.9, l2=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=FLAGS.jit_compile,
        steps_per_execution=FLAGS.steps_per_execution,
    )
    return model


def build_configs(sparsities, total_steps):
    """{name: (compiled model, PruneRegrow or None)} for the five (six) configurations."""
    configs = {"dense": (_compile(small_cnn(width=FLAGS.width), total_steps), None)}
    middle = [sparsities[len(sparsities) // 2]]
    for name, subnets, gc, training in (
        ("ast_gc", sparsities, "layerwise", "alternating"),
        ("ast", sparsities, "off", "alternating"),
        ("individual", middle, "off", "alternating"),
        ("joint", sparsities, "off", "joint"),
    ) + ((("agent", sparsities, "layerwise", "alternating"),) if FLAGS.agent else ()):
        model = keras_ast.ASTModel.from_model(small_cnn(width=FLAGS.width), subnets, gc=gc,
                                              training=training, agent=name == "agent")
        K = len(subnets)
        prune = keras_ast.PruneRegrow(
            frequency=FLAGS.update_frequency,
            adjustment_period=FLAGS.update_frequency // (2 * K) if K > 1 else 0,
            end_step=round(0.6875 * total_steps), total_steps=total_steps,
        )
        configs[name] = (_compile(model, total_steps), prune)
    return configs


def main(argv):
    del argv
    keras.utils.set_random_seed(0)
    sparsities = [float(s) for s in FLAGS.sparsities.split(",")]
    if FLAGS.epochs < 3:
        raise app.UsageError("--epochs must be >= 3 (one warm-up round, then timed rounds)")
    train, test = load_digits(FLAGS.batch_size, drop_remainder=True)
    train = train.cache()
    steps = int(train.cardinality())
    total = steps * FLAGS.epochs
    configs = build_configs(sparsities, total)
    timers = {name: EpochTimer() for name in configs}
    names = list(configs)
    start = time.perf_counter()
    for epoch in range(FLAGS.epochs):
        shift = epoch % len(names)
        for name in names[shift:] + names[:shift]:
            model, prune = configs[name]
            callbacks = [timers[name]] + ([prune] if prune else [])
            if name == "agent":  # after the timer: the pass is inside the timed epoch
                callbacks.append(keras_ast.AgentPass(train))
            model.fit(train, epochs=epoch + 1, initial_epoch=epoch, callbacks=callbacks,
                      verbose=0)
        print(f"round {epoch + 1}/{FLAGS.epochs} ({time.perf_counter() - start:.0f} s): "
              + ", ".join(f"{n} {1000 * timers[n].times[-1] / steps:.1f}" for n in names)
              + " ms/step", file=sys.stderr, flush=True)
    times = {name: t.times[1:] for name, t in timers.items()}  # round 0 is the warm-up
    ms = {name: 1000 * statistics.median(t) / steps for name, t in times.items()}
    dense_flops = total * FLAGS.batch_size * configs["ast"][0].training_flops["dense_example"]
    print(f"small_cnn width={FLAGS.width} ({configs['dense'][0].count_params():,} parameters), "
          f"batch={FLAGS.batch_size}, {steps} steps/epoch, K={len(sparsities)} {sparsities} "
          f"(individual: {sparsities[len(sparsities) // 2]}), mask updates every "
          f"{FLAGS.update_frequency} steps per sub-net, {FLAGS.epochs - 1} timed rounds after "
          f"a warm-up, jit={FLAGS.jit_compile}, steps_per_execution={FLAGS.steps_per_execution}")
    print(f"{'config':<11} {'ms/step':>8} {'ms/epoch':>9} {'/indiv.':>8} {'/dense':>7} "
          f"{'train FLOPs':>12} {'/dense':>7}  test accuracy per sub-net")
    for name, (model, _) in configs.items():
        flops = model.training_flops["total"] if name != "dense" else dense_flops
        if name == "dense":
            accuracy = [float(model.evaluate(test, return_dict=True, verbose=0)["accuracy"])]
        else:
            accuracy = [r["accuracy"] for r in model.evaluate_subnets(test).values()]
        print(f"{name:<11} {ms[name]:8.2f} {ms[name] * steps:9.1f} "
              f"{paired_ratio(times, name, 'individual')[0]:8.3f} "
              f"{paired_ratio(times, name, 'dense')[0]:7.3f} "
              f"{flops:12.4g} {flops / dense_flops:7.3f}  "
              + " ".join(f"{100 * a:.2f}%" for a in accuracy))
    print("ratios: median of per-round ratios [interquartile range]")
    for numerator, denominator, bound in GOALS:
        median, low, high = paired_ratio(times, numerator, denominator)
        verdict = "met" if median <= bound else "MISSED"
        print(f"  {numerator} / {denominator} = {median:.3f} [{low:.3f}, {high:.3f}]  "
              f"(goal <= {bound:.2f}: {verdict})")
    if "agent" in configs:
        median, low, high = paired_ratio(times, "agent", "ast_gc")
        predicted = (configs["agent"][0].training_flops["total"]
                     / configs["ast_gc"][0].training_flops["total"])
        print(f"  agent / ast_gc = {median:.3f} [{low:.3f}, {high:.3f}] in time; "
              f"{predicted:.3f} in training FLOPs (the accounting's prediction)")


if __name__ == "__main__":
    app.run(main)
