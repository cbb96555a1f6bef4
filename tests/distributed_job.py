"""Short AST trainings under tf.distribute, run as subprocesses by tests/test_distribute.py.

Logical CPU devices must be configured before TensorFlow initialises its devices, and a
multi-worker cluster needs one process per worker, so these runs cannot share the pytest
process. Each named configuration (CONFIGS) is trained in turn and written to
``<out>_<config>.npz``: the final variables (by path), the logged metrics, the training
FLOPs, the sparsities and the largest difference between the replicas' copies of any variable.

    python tests/distributed_job.py --strategy=one --out=DIR/one --configs=ast,bn,joint
    python tests/distributed_job.py --strategy=mirrored --out=DIR/mirrored   # 2 logical CPUs
    TF_CONFIG=... python tests/distributed_job.py --strategy=multi_worker --out=DIR/worker0
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

STEPS = 12
GLOBAL_BATCH = 32
SPARSITIES = (0.5, 0.8)
# name: (BatchNorm, mask updates, training). "ast": no BatchNorm, AST-GC with mask updates at
# steps 0, 3, 4, 7, 8, 11 and an L2-regularised kernel; "bn": synchronised BatchNorm, GC, no
# mask update; "joint": joint training with mask updates; "nan": BatchNorm, GC and mask updates,
# with one NaN pixel in the second half of batch 3 (replica 1's share with 2 replicas), a step
# whose mask update, GC and optimizer update must be skipped on every replica.
CONFIGS = {"ast": (False, True, "alternating"), "bn": (True, False, "alternating"),
           "joint": (False, True, "joint"), "nan": (True, True, "alternating")}
NAN_STEP = 3


def tiny_net(bn: bool):
    """Stem conv, two prunable convs (BN after each with `bn`), GAP, Dense classifier.

    tanh, not ReLU: the runs differ in float summation order (about 1e-7 per step), and a ReLU
    pre-activation that lies that close to zero flips, changing one unit's gradient by about
    1e-4 (observed in the joint run at step 4 with ReLU: 2.3e-4 after 12 steps, on one CPU but
    not another). A smooth activation keeps the comparison about the distribution code."""
    import keras

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(inputs)
    x = keras.layers.Activation("tanh")(x)
    for i, (filters, stride) in enumerate(((16, 2), (16, 1))):
        regularizer = keras.regularizers.L2(1e-3) if i == 1 else None
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=not bn,
                                kernel_regularizer=regularizer, name=f"conv{i + 1}")(x)
        if bn:
            x = keras.layers.BatchNormalization(momentum=0.9, synchronized=True,
                                                name=f"bn{i + 1}")(x)
        x = keras.layers.Activation("tanh")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="classifier")(x))


def train(strategy, config: str):
    """STEPS steps of configuration `config` (K = 2) on the first STEPS global batches of the
    digits, in order."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_ast
    from keras_ast.data import load_digits_arrays

    bn, prune, training = CONFIGS[config]
    keras.backend.clear_session()
    keras.config.disable_traceback_filtering()
    keras.utils.set_random_seed(7)
    split = load_digits_arrays(seed=0)
    n = STEPS * GLOBAL_BATCH
    images = split.x_train[:n].copy()
    if config == "nan":
        images[NAN_STEP * GLOBAL_BATCH + GLOBAL_BATCH * 3 // 4, 4, 4, 0] = np.nan
    data = tf.data.Dataset.from_tensor_slices((images, split.y_train[:n]))
    data = data.batch(GLOBAL_BATCH, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = data.with_options(options)
    with strategy.scope():
        model = keras_ast.ASTModel.from_model(
            tiny_net(bn), SPARSITIES, training=training,
            gc="layerwise" if training == "alternating" else "off")
        model.compile(optimizer=keras_ast.SGD(0.1, momentum=0.9, l2=5e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    if prune:
        prune = keras_ast.PruneRegrow(frequency=4, adjustment_period=2, end_step=6,
                                      total_steps=STEPS)
    callbacks = [prune] if prune else []
    history = model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
    result = {f"var:{v.path}": np.asarray(v) for v in model.variables}
    result.update({f"opt:{v.path}": np.asarray(v) for v in model.optimizer.variables})
    for name, values in history.history.items():
        result[f"log:{name}"] = np.asarray(values)
    result["train_flops"] = np.asarray(model.train_flops)
    result["nonfinite_steps"] = np.asarray(model.nonfinite_steps)
    result["sparsity"] = np.asarray([model.subnet_sparsity(k) for k in range(len(SPARSITIES))])
    result["replicas"] = np.asarray(strategy.num_replicas_in_sync)
    # Largest difference between the replicas' copies of any variable (0 on one device).
    spread = 0.0
    for v in list(model.variables) + list(model.optimizer.variables):
        copies = [np.asarray(c) for c in getattr(v.value, "values", [v.value])]
        spread = max([spread] + [float(np.max(np.abs(c - copies[0]), initial=0.0))
                                 for c in copies[1:]])
    result["replica_spread"] = np.asarray(spread)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--strategy", choices=("one", "mirrored", "multi_worker"),
                        required=True)
    parser.add_argument("--out", required=True, help="output prefix")
    parser.add_argument("--configs", default="ast", help=f"comma-separated, of {list(CONFIGS)}")
    args = parser.parse_args(argv)
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    if args.strategy == "mirrored":
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif args.strategy == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()  # no strategy: plain one-device training
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for config in args.configs.split(","):
        result = train(strategy, config)
        path = f"{args.out}_{config}.npz"
        np.savez(path + ".tmp.npz", **result)
        os.replace(path + ".tmp.npz", path)


if __name__ == "__main__":
    main()
