"""The TensorFlow-only parts of the training step: the backward pass, the sum over replicas
and the Keras-version workarounds of `ASTModel` (the rest of the step, `keras_ast.step`, uses
`keras.ops` only; tf.distribute helpers live in `keras_ast.distribute`)."""

from __future__ import annotations

import tensorflow as tf
from keras import ops

from keras_ast import compat, distribute
from keras_ast import layers as ast_layers


def forward_backward(model, x, y, sample_weight, subnet, variables):
    """Forward pass of the active sub-net (recording each sparse layer's ``W * m``) and one
    backward pass. Returns (y_pred, gradients of `variables`, records, gradients of the
    recorded products: the dense dL/d(W*m))."""
    with tf.GradientTape() as tape, ast_layers.recording_masked_kernels() as records:
        y_pred, loss = model._loss(x, y, sample_weight, training=True, subnet=subnet)
        loss = model.optimizer.scale_loss(loss)
    products = [product for _, product, _ in records]
    grads = tape.gradient(loss, list(variables) + products)
    return y_pred, grads[:len(variables)], records, grads[len(variables):]


def stateless_gradients(model, values, subnet, x, y, sample_weight, gradients=True):
    """Loss of sub-net `subnet` on a batch with the trainable variables replaced by `values`
    (one tensor or variable each, in ``model.trainable_variables`` order: their values are
    read once), and its gradients with respect to
    them (None when `gradients` is False). Runs in a ``keras.StatelessScope``: nothing the
    forward pass assigns (BatchNorm moving statistics, metrics) reaches the model (AGENT's
    snapshot passes, keras_ast/agent.py)."""
    import keras

    values = [tf.identity(getattr(v, "value", v)) for v in values]  # tensors, not variables
    mapping = list(zip(model.trainable_variables, values))
    mapping.append((model.active_subnet, ops.cast(subnet, model.active_subnet.dtype)))
    with tf.GradientTape() as tape:
        tape.watch(values)
        with keras.StatelessScope(state_mapping=mapping):
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                      training=True)
    if not gradients:
        return loss, None
    grads = tape.gradient(loss, values)
    return loss, [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                  for g in grads]


def stateless_dense_gradients(model, subnet, x, y, sample_weight=None):
    """Sub-net `subnet`'s dense kernel gradients dL/d(W*m_k) on a batch, one per sparse layer
    (every entry, as a regrowth by gradient reads them), from a forward pass in training mode
    inside a ``keras.StatelessScope``: no BatchNorm statistic or metric of the model moves."""
    import keras

    mapping = [(model.active_subnet, ops.cast(subnet, model.active_subnet.dtype))]
    with tf.GradientTape() as tape, ast_layers.recording_masked_kernels() as records:
        with keras.StatelessScope(state_mapping=mapping):
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                      training=True)
    grads = tape.gradient(loss, [product for _, product, _ in records])
    return [dense for _, dense in model._recorded(subnet, records, grads)]


def function(fn):
    """`fn` compiled as a tf.function (for the model's own loops, such as AGENT's pass)."""
    return tf.function(fn)


def global_kernel_gradients(regularized, kernel_grads, masks, dense, batch):
    """Under tf.distribute: the dense kernel gradients and the batch size summed over the
    replicas (one all-reduce), so the mask update, gradient correction and FLOPs count see
    the global batch on every replica. The kernels' gradients are then ``dense * m`` (the
    same as the per-replica ones summed, since m is 0/1), plus, for a kernel with a
    regularizer (`regularized`: layer indices), its reduced extra term. Returns (kernel
    gradients, dense, global batch, {layer index: reduced extra term})."""
    extra = [i for i in regularized if kernel_grads[i] is not None]
    local = dense + [ops.cast(kernel_grads[i], dense[i].dtype) - dense[i] * masks[i]
                     for i in extra]
    reduced = distribute.all_reduce_sum(local + [ops.cast(batch, "float32")])
    dense, extras = reduced[:len(dense)], dict(zip(extra, reduced[len(dense):-1]))
    grads = [d * m + extras[i] if i in extras else d * m
             for i, (d, m) in enumerate(zip(dense, masks))]
    return grads, dense, reduced[-1], extras


def all_finite(tensors):
    """Bool scalar: every entry of every tensor is finite; under tf.distribute, on every
    replica (one all-reduce of a flag), so all replicas take the same branch."""
    flags = [ops.all(ops.isfinite(t)) for t in tensors]
    finite = ops.all(ops.stack(flags)) if flags else ops.convert_to_tensor(True)
    if distribute.replicas_in_sync() > 1:
        bad = distribute.all_reduce_sum([ops.cast(ops.logical_not(finite), "float32")])[0]
        finite = bad == 0
    return finite


def snapshot(variables):
    """The variables' values now, as tensors that later assignments do not change."""
    return [tf.identity(getattr(v, "value", v)) for v in variables]


def inner_optimizer(optimizer):
    """The optimizer a `keras.optimizers.LossScaleOptimizer` (mixed precision) wraps, else
    `optimizer` itself."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def restore_if(condition, variables, saved):
    """Puts `saved` (a `snapshot`) back into `variables` when the scalar bool `condition`
    holds. Under tf.distribute an assignment to an aggregated variable synchronises the
    replicas, which cannot happen inside a ``cond``: there every variable is assigned
    ``where(condition, saved, current)`` (one synchronisation per variable and step)."""
    if not tf.distribute.has_strategy():
        assign_if(condition, list(zip(variables, saved)))
        return
    for variable, value in zip(variables, saved):
        variable.assign(ops.where(condition, ops.cast(value, variable.dtype), variable.value))


def assign_if(condition, pairs):
    """Assigns each (variable, value) of `pairs` when the scalar bool `condition` holds."""
    def assign():
        for variable, value in pairs:
            variable.assign(ops.cast(value, variable.dtype))
        return tf.constant(True)

    tf.cond(condition, assign, lambda: tf.constant(False))


class TrainerWorkarounds(compat.SymbolicBuildHook):
    """Mixed into `ASTModel` before `keras.Model`: checks and Keras 3.15 workarounds around
    the compiled train function."""

    def make_train_function(self, force=False):
        signature = None if self.updater is None else self.updater.signature()
        if signature != self._traced_updater:
            force = True
            self._traced_updater = signature
        if getattr(self, "agent", None) is not None:
            if self.distribute_strategy.num_replicas_in_sync > 1 or \
                    inner_optimizer(self.optimizer) is not self.optimizer:
                raise ValueError(
                    "AGENT (agent=...) runs on one device without loss scaling for now: "
                    "tf.distribute with several replicas and mixed precision are not supported")
        if self.jit_compile and distribute.refuses_jit(self.distribute_strategy):
            raise ValueError(
                f"jit_compile=True does not work under {type(self.distribute_strategy).__name__} "
                "with Keras 3 (XLA cannot place the mirrored variables); compile with "
                "jit_compile=False"
            )
        # Create the optimizer slots now, so the first compiled step does not trace twice.
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        return super().make_train_function(force=force)

    def symbolic_build_batch(self, iterator):
        # Keras 3.15 builds the metrics under tf.distribute from the first batch reduced with
        # strategy.reduce("MEAN", (x, y)), which fails under MultiWorkerMirroredStrategy (a
        # tuple is no DistributedValues) and costs a collective: one replica's share of the
        # batch has the shapes the build needs (compat.SymbolicBuildHook).
        strategy = compat.model_strategy(self)
        if strategy is None:
            return None
        for _, _, it in iterator:
            return tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
        return None
