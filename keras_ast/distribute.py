"""tf.distribute support: strategies, the gradient all-reduce of the AST step, BatchNorm sync.

Under ``MirroredStrategy`` / ``MultiWorkerMirroredStrategy`` each replica computes the gradient
of its share of the global batch (Keras scales each replica's loss by 1 / replicas, so the sum
over replicas is the gradient of the global batch mean). Keras itself sums the gradients inside
``optimizer.apply``, too late for AST: gradient correction and the mask updates (regrowth by
dense gradient) must see the *global* gradient, or a 2-replica run would not equal a 1-replica
run with the same global batch, and the replicas' masks could drift apart. So `ASTModel`
all-reduces once in its train step (`all_reduce_sum`) and then applies the reduced gradients
with `applying_reduced_gradients`, which keeps the optimizer from summing them again: the
gradients cross the devices once, as in plain Keras.

Variables that every replica updates with the same value from the same (global) inputs, the
masks and the gradient-correction references, use ``aggregation="none"``: each replica writes
its own copy, with no synchronisation (a synchronised write cannot sit inside the ``cond`` of
the mask update, and would copy every kernel-sized reference between devices at every step).
They stay identical because their inputs are (tests/test_distribute.py compares the copies).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading

import tensorflow as tf

from keras_ast import compat

DISTRIBUTIONS = ("none", "mirrored", "multi_worker")


def replicas_in_sync() -> int:
    """Number of replicas the current replica context sums over (1 outside tf.distribute)."""
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context
        return tf.distribute.get_strategy().num_replicas_in_sync
    return context.num_replicas_in_sync


def all_reduce_sum(values):
    """Sums a list of tensors over all replicas (one batched all-reduce); identity with one
    replica. Must be called in replica context (e.g. in ``train_step``), outside any ``cond``."""
    values = list(values)
    if not values or replicas_in_sync() == 1:
        return values
    return list(tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, values))


_APPLYING = threading.local()  # per thread: MirroredStrategy runs each replica in a thread


def _install_bypass(optimizer):
    """Wraps the optimizer's gradient all-reduce so that it can be skipped per thread."""
    reduce = compat.gradient_all_reduce(optimizer)
    if reduce is None:
        raise RuntimeError(
            f"{type(optimizer).__name__} has no gradient all-reduce keras_ast can bypass: this "
            "Keras version reduces gradients differently; keras_ast supports tf.distribute "
            "with the TensorFlow backend of Keras 3.x"
        )
    if getattr(optimizer, "_keras_ast_bypass", False):
        return

    def all_reduce_sum_gradients(grads_and_vars):
        if getattr(_APPLYING, "reduced", False):
            return list(grads_and_vars)
        return reduce(grads_and_vars)

    compat.set_gradient_all_reduce(optimizer, all_reduce_sum_gradients)
    # object.__setattr__: not an attribute that Keras or tf.Module should track.
    object.__setattr__(optimizer, "_keras_ast_bypass", True)


@contextlib.contextmanager
def applying_reduced_gradients(optimizer, reduced=True):
    """Within the block, ``optimizer.apply`` takes its gradients as already summed over the
    replicas and applies them as they are (with `reduced` False it does nothing).

    Keras (3.x, TensorFlow backend) sums gradients in the optimizer's
    ``_all_reduce_sum_gradients``; on `optimizer` (and on the inner optimizer of a
    ``LossScaleOptimizer``) that method is wrapped once so the current thread can skip it
    while tracing the step. Raises RuntimeError if this Keras has no such method (the
    reduction would otherwise happen twice).
    """
    if not reduced:
        yield
        return
    for target in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        if target is not None:
            _install_bypass(target)
    previous = getattr(_APPLYING, "reduced", False)
    _APPLYING.reduced = True
    try:
        yield
    finally:
        _APPLYING.reduced = previous


def multi_worker(strategy=None) -> bool:
    """True under a MultiWorkerMirroredStrategy whose cluster has more than one worker."""
    strategy = strategy or tf.distribute.get_strategy()
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and compat.in_multi_worker_mode(strategy))


def step_logs(logs):
    """A train / test step's logs in the form Keras can average over the replicas.

    Keras 3.15 averages the logs of a step with ``strategy.reduce("MEAN", value, axis=0)``
    under a multi-worker strategy, which fails for scalars; there each value becomes a
    1-element vector, which that reduce turns back into the scalar mean over all replicas.
    Elsewhere the logs are returned unchanged.
    """
    if not multi_worker():
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


def kernel_regularized(layer) -> bool:
    """Whether a sparse layer's shared kernel has a regularizer (its gradient then has a part
    that does not come through the masked product and is reduced separately)."""
    return any(getattr(layer, name, None) is not None
               for name in ("kernel_regularizer", "depthwise_regularizer"))


def refuses_jit(strategy) -> bool:
    """True for the strategies where Keras 3's XLA-compiled step fails (docs/design.md s. 11)."""
    return isinstance(strategy, (tf.distribute.MirroredStrategy,
                                 tf.distribute.MultiWorkerMirroredStrategy))


def set_synchronized_batchnorm(model, synchronized=True) -> int:
    """Makes every BatchNormalization of `model` (plain and switchable) compute its batch
    statistics over the global batch (all replicas; ``synchronized=True``) or per replica.

    Returns the number of BatchNormalization layers changed. Call it before the first step.
    """
    import keras

    count = 0
    for layer in compat.flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = bool(synchronized)
            count += 1
    return count


def make_strategy(distribution="none", devices=None):
    """The `tf.distribute.Strategy` for `distribution`:

    - "none": the default strategy (one device);
    - "mirrored": `MirroredStrategy` over `devices` (default: all GPUs, else the CPU);
    - "multi_worker": `MultiWorkerMirroredStrategy`; the cluster comes from the TF_CONFIG
      environment variable (each worker runs the same program with its own task index).
    """
    if distribution == "none":
        return tf.distribute.get_strategy()
    if distribution == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if distribution == "multi_worker":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise ValueError("distribution 'multi_worker' needs the TF_CONFIG environment "
                             "variable (cluster and task), see docs/distributed.md")
        try:
            json.loads(config)
        except ValueError as error:
            raise ValueError(f"TF_CONFIG is not valid JSON: {config!r}") from error
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown distribution {distribution!r}; use one of {DISTRIBUTIONS}")


def is_chief(strategy=None) -> bool:
    """True on the worker that writes checkpoints and results: the only process without a
    cluster, else the "chief" task or, when the cluster has none, worker 0 (TF's convention)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type = resolver.task_type
    if task_type == "chief":
        return True
    return task_type == "worker" and int(resolver.task_id or 0) == 0 and (
        "chief" not in resolver.cluster_spec().as_dict())
