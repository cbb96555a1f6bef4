"""`ASTModel`: K sparse sub-nets of one network, trained alternately with gradient correction.

One training step (`train_step`), all inside the compiled function:

1. k = iteration mod K selects the sub-net (an int variable read by every sparse layer, so
   switching never retraces; works with ``jit_compile`` True or False).
2. Forward with W * m_k and BN copy k; loss. One backward pass (`tf_engine.forward_backward`)
   gives the gradient with respect to each shared kernel W, which is ``dL/d(W*m_k) * m_k``
   (restricted to the sub-net), and with respect to each product W*m_k, the dense gradient
   (every entry). Under tf.distribute the kernels' gradients are summed over the replicas here.
3. `keras_ast.step.ast_step` (keras.ops only, no variable): the model's updater's mask update
   if due, FLOPs, gradient correction. Its results are assigned to the model's variables.
4. ``optimizer.apply``; BN copies of other sub-nets are left alone with `keras_ast.SGD`
   (``inactive_bn="frozen"``) or get a zero gradient (``"zero_grad"``).

Monitoring (all cheap, inside the step): sub-net k's own loss and compiled metrics
(``loss_k``, ``<metric>_k``, `SubnetMetrics`), its training FLOPs and examples, and for k >= 1
the gradient-correction counts (`gradient_statistics`).

Entries of the shared kernel outside m_k get no gradient from sub-net k; the shared momentum
and (coupled) weight decay still act on them, since they belong to the shared weights, not to
one sub-net (with momentum 0 and no weight decay, a step of sub-net k leaves them unchanged).
The shared kernel is never zeroed.

Under tf.distribute (MirroredStrategy, MultiWorkerMirroredStrategy) the step sums the
gradients over the replicas itself, once, before step 3, so the mask update and GC see the
global batch's gradient on every replica, and step 4 applies them without a second reduction
(keras_ast/distribute.py). A 2-replica run equals a 1-replica run with the same global batch.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import keras
from keras import ops

from keras_ast import agent as agent_lib
from keras_ast import compat, correction, cost, distribute, tf_engine, updaters
from keras_ast import step as step_lib
from keras_ast import layers as ast_layers
from keras_ast import nm as nm_lib
from keras_ast import sparsify as sparsify_lib
from keras_ast.optimizers import SGD
from keras_ast.subnet_metrics import SubnetMetrics


TRAINING_MODES = ("alternating", "joint")
INACTIVE_BN = ("frozen", "zero_grad")
GC_PROJECTIONS = ("masked", "full")
GC_COLUMNS = step_lib.GC_COLUMNS  # columns of `ASTModel.gc_statistics`


def check_fidelity(inactive_bn, gc_projection):
    """Raises ValueError naming a bad `inactive_bn` or `gc_projection`."""
    if inactive_bn not in INACTIVE_BN:
        raise ValueError(f"unknown inactive_bn {inactive_bn!r}; use one of {INACTIVE_BN}")
    if gc_projection not in GC_PROJECTIONS:
        raise ValueError(f"unknown gc_projection {gc_projection!r}; use one of {GC_PROJECTIONS}")


def check_sparsities(sparsities) -> tuple[float, ...]:
    """Validates target sparsities: a non-empty, strictly increasing list in [0, 1)."""
    try:
        values = tuple(float(s) for s in sparsities)
    except TypeError as error:
        raise ValueError(f"sparsities must be a list of numbers, got {sparsities!r}") from error
    if not values:
        raise ValueError("sparsities must name at least one sub-net (K >= 1), got none")
    for s in values:
        if not 0.0 <= s < 1.0:
            raise ValueError(f"every sparsity must be in [0, 1), got {s!r} in {list(values)}")
    for a, b in zip(values, values[1:]):
        if not a < b:
            raise ValueError(
                f"sparsities must be strictly increasing (densest sub-net first), got "
                f"{list(values)}"
            )
    return values


@keras.saving.register_keras_serializable(package="keras_ast")
class ASTModel(tf_engine.TrainerWorkarounds, keras.Model):
    """K sparse sub-nets sharing one set of weights, trained by alternating steps.

    Build it with :meth:`from_model` from an ordinary Keras model, compile it as usual and
    train with ``fit(..., callbacks=[keras_ast.PruneRegrow(...)])``.

    Args:
      network: a model made by `keras_ast.sparsify` with ``K = len(sparsities)`` sub-nets.
      sparsities: target sparsity of each sub-net over the prunable kernels, strictly
        increasing (sub-net 0 is the densest), each in [0, 1). May be left out when `nm` is
        given.
      gc: gradient correction scope: "layerwise" (default), "global" or "off".
      gc_reference: "corrected" (default: h is the gradient actually applied at the previous
        step) or "raw" (h is the previous gradient before its own correction).
      training: "alternating" (AST: step t trains sub-net t mod K; with K = 1 this is plain
        GraNet-style individual sparse training) or "joint" (S-Net style baseline: every step
        runs all K sub-nets on the batch, sums their losses and takes one optimizer step; no GC).
      nm: N:M structured sub-nets instead of unstructured ones: one `keras_ast.NMPattern` per
        sub-net (zeros notation, e.g. ``keras_ast.parse_nm_list("2:4,3:4", counts="zeros")``),
        strictly increasing in sparsity; sub-net k then targets sparsity N/M, and
        `PruneRegrow` ramps it to the pattern (`keras_ast.nm`). All sub-nets are N:M or none.
      inactive_bn: the BN copies of the sub-nets not trained this step: "frozen" (default:
        with `keras_ast.SGD` they do not move at all) or "zero_grad" (they receive a zero
        gradient, so momentum and weight decay still move them: what the authors' PyTorch code
        does). Any other optimizer gives "zero_grad" behaviour.
      gc_projection: gradient correction projects onto "masked" ``m_k * h`` (default: the
        conflict is removed completely and the gradient stays inside sub-net k) or onto the
        "full" h, as the paper's Eq. 5 writes it (the corrected gradient then has entries
        outside m_k, which change weights sub-net k does not use).
      updater: a mask updater for the model to own (`keras_ast.updaters`; see
        `set_updater`), also accepted by `compile`. Without one, masks change only while a
        `keras_ast.PruneRegrow` is among ``fit``'s callbacks.
      agent: AGENT's adaptive gradient correction (`keras_ast.Agent`, True for its defaults,
        or None): every step adds ``c (mu~_k - q)`` to sub-net k's gradient, with q the
        gradient of the same batch at the epoch's snapshot; ``fit`` then needs a
        `keras_ast.AgentPass` callback for the per-epoch pass (docs/agent.md).
    """

    def __init__(self, network, sparsities=None, gc="layerwise", gc_reference="corrected",
                 training="alternating", nm=None, inactive_bn="frozen", gc_projection="masked",
                 updater=None, agent=None, **kwargs):
        super().__init__(**kwargs)
        check_fidelity(inactive_bn, gc_projection)
        self.inactive_bn = inactive_bn
        self.gc_projection = gc_projection
        sparsities, self.nm_patterns = nm_lib.resolve_targets(sparsities, nm)
        self.sparsities = check_sparsities(sparsities)
        correction.check_mode(gc, gc_reference)
        if training not in TRAINING_MODES:
            raise ValueError(f"unknown training {training!r}; use one of {TRAINING_MODES}")
        if training == "joint" and gc != "off" and len(self.sparsities) > 1:
            raise ValueError(
                f"gradient correction (gc={gc!r}) is for alternating training; joint training "
                "sums all sub-nets' gradients in one step: use gc='off'"
            )
        self.training_mode = training
        self.num_subnets = len(self.sparsities)
        self.gc = gc
        self.gc_reference = gc_reference
        self.network = network
        subnet_layers = [
            layer for layer in compat.flatten_layers(network)
            if isinstance(layer, ast_layers.SubnetLayerMixin)
        ]
        self.sparse_layers = [
            layer for layer in subnet_layers if isinstance(layer, ast_layers.MaskedKernelMixin)
        ]
        if not self.sparse_layers:
            raise ValueError(
                f"network {network.name!r} has no prunable layer; build it with "
                "keras_ast.sparsify (or ASTModel.from_model)"
            )
        for layer in subnet_layers:
            if layer.num_subnets != self.num_subnets:
                raise ValueError(
                    f"layer {layer.name!r} has {layer.num_subnets} sub-nets but "
                    f"{self.num_subnets} sparsities were given"
                )
        if self.nm_patterns is not None:
            nm_lib.warn_short_groups(self.sparse_layers, self.nm_patterns)
        self.iteration = self.add_weight(
            name="iteration", shape=(), dtype="int64", initializer="zeros", trainable=False,
            aggregation="only_first_replica",
        )
        self.active_subnet = self.add_weight(
            name="active_subnet", shape=(), dtype="int32", initializer="zeros", trainable=False,
            aggregation="only_first_replica",
        )
        self.eval_subnet = self.add_weight(
            name="eval_subnet", shape=(), dtype="int32", initializer="zeros", trainable=False,
            aggregation="only_first_replica",
        )
        index = ast_layers.SubnetIndex(self.active_subnet, self.num_subnets)
        for layer in subnet_layers:
            layer.attach_subnet_index(index)
        self.gc_refs = []
        if self.uses_gc:
            # aggregation "none": every replica stores the same global gradient (distribute.py).
            self.gc_refs = [
                self.add_weight(
                    name=f"gc_ref_{i}", shape=layer.shared_kernel.shape, initializer="zeros",
                    trainable=False, aggregation="none",
                )
                for i, layer in enumerate(self.sparse_layers)
            ]
        # Training cost: FLOPs spent while each sub-net was trained (cost.py), from the masks.
        self.train_flops = self.add_weight(
            name="train_flops", shape=(self.num_subnets,), dtype="float64",
            initializer="zeros", trainable=False, aggregation="only_first_replica",
        )
        self.train_examples = self.add_weight(
            name="train_examples", shape=(self.num_subnets,), dtype="float64",
            initializer="zeros", trainable=False, aggregation="only_first_replica",
        )
        self._sparse_macs = [cost.layer_macs(layer) for layer in self.sparse_layers]
        self._dense_macs = cost.model_macs(network) - sum(self._sparse_macs)
        uncounted = cost.uncounted_layers(network)
        if uncounted:
            warnings.warn(
                "training FLOPs (ASTModel.training_flops) leave out the multiply-accumulates of "
                f"{', '.join(uncounted)}: keras_ast/cost.py counts convolutions, Dense and "
                "EinsumDense layers only", stacklevel=2)
        self.gc_conflict_tracker = keras.metrics.Mean(name="gc_conflict")
        self.gc_cosine_tracker = keras.metrics.Mean(name="gc_cosine")
        # Gradient-correction counts since training began, one row per sub-net (GC_COLUMNS).
        self.gc_statistics = self.add_weight(
            name="gc_statistics", shape=(self.num_subnets, len(GC_COLUMNS)), dtype="float64",
            initializer="zeros", trainable=False, aggregation="only_first_replica",
        )
        # Steps whose gradients were not all finite (skipped: no update of anything).
        self.nonfinite_steps = self.add_weight(
            name="nonfinite_steps", shape=(), dtype="int64", initializer="zeros",
            trainable=False, aggregation="only_first_replica",
        )
        # loss_k and <metric>_k: each sub-net's training metrics, from its own steps only.
        self.subnet_metrics = SubnetMetrics(self.num_subnets)
        self._updater = None
        self._owns_updater = False
        self._traced_updater = None
        self.agent = agent_lib.get(agent)
        if self.agent is not None:
            self._build_agent_state()
        self.built = True
        if updater is not None:
            self.set_updater(updater)

    @classmethod
    def from_model(cls, model, sparsities=None, prunable=None, dense_layers=(),
                   switchable_bn=None, gc="layerwise", gc_reference="corrected",
                   training="alternating", nm=None, **kwargs):
        """Makes an ASTModel from an ordinary functional or Sequential Keras model.

        See `keras_ast.sparsify` for `prunable`, `dense_layers` and `switchable_bn`; the other
        arguments are the constructor's (give `sparsities` or `nm`). `model` itself is not
        modified.
        """
        sparsities, nm = nm_lib.resolve_targets(sparsities, nm)
        sparsities = check_sparsities(sparsities)
        correction.check_mode(gc, gc_reference)
        network = sparsify_lib.sparsify(
            model, len(sparsities), prunable=prunable, dense_layers=dense_layers,
            switchable_bn=switchable_bn,
        )
        return cls(network, sparsities, gc=gc, gc_reference=gc_reference, training=training,
                   nm=nm, **kwargs)

    # ----------------------------------------------------------------------------- properties
    @property
    def uses_gc(self):
        return self.gc != "off" and self.num_subnets > 1

    @property
    def per_subnet_variables(self):
        """Trainable variables with one row per sub-net (the private BN copies)."""
        return [
            v for layer in compat.flatten_layers(self.network)
            if isinstance(layer, ast_layers.SwitchableBatchNormalization)
            for v in layer.trainable_variables
        ]

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    # ------------------------------------------------------------------------- sub-net choice
    @property
    def training_flops(self):
        """{sub-net k: FLOPs spent on steps that trained k, "total": their sum, "dense_step":
        FLOPs of one dense training example} (docs/design.md section 8)."""
        per_subnet = [float(v) for v in ops.convert_to_numpy(self.train_flops)]
        result = {k: v for k, v in enumerate(per_subnet)}
        result["total"] = sum(per_subnet)
        result["dense_example"] = float(cost.FORWARD_BACKWARD * cost.FLOPS_PER_MAC * (
            self._dense_macs + sum(self._sparse_macs)))
        return result

    @property
    def training_examples(self):
        """[examples trained by sub-net k, for each k] (joint training: every example, K times)."""
        return [float(v) for v in ops.convert_to_numpy(self.train_examples)]

    def gradient_statistics(self):
        """Gradient-correction counts since training began: ``{i: {column: value}}`` for every
        sub-net i >= 1, over its steps (each corrected against the previous sub-net, i - 1).

        Columns: ``steps``; ``corrected_steps`` (steps where the gradient was changed: some
        kernel, or the global vector, had g.h < 0); ``products`` (inner products g.h computed:
        one per prunable kernel and step for ``gc="layerwise"``, one per step for "global");
        ``negative`` / ``positive`` (how many of them were < 0 / > 0); ``cosine_sum`` (sum over
        the steps of the step's cosine between g and h, mean over kernels for layerwise).
        All zero when gradient correction is off.
        """
        table = ops.convert_to_numpy(self.gc_statistics)
        return {i: {c: float(v) for c, v in zip(GC_COLUMNS, table[i])}
                for i in range(1, self.num_subnets)}

    def _check_subnet(self, subnet):
        if not isinstance(subnet, int) or not 0 <= subnet < self.num_subnets:
            raise ValueError(
                f"subnet must be an integer in [0, {self.num_subnets}), got {subnet!r}"
            )
        return subnet

    def set_subnet(self, subnet):
        """Selects the sub-net used by ``evaluate``, ``predict`` and direct calls."""
        self._check_subnet(subnet)
        self.eval_subnet.assign(subnet)
        self.active_subnet.assign(subnet)

    def masks(self, subnet):
        """{layer name: numpy 0/1 mask} of `subnet`."""
        self._check_subnet(subnet)
        return {layer.name: ops.convert_to_numpy(layer.masks[subnet]) for layer in
                self.sparse_layers}

    def layer_sparsities(self, subnet):
        """{layer name: fraction of zeros in `subnet`'s mask}."""
        return {name: 1.0 - float(m.mean()) for name, m in self.masks(subnet).items()}

    def subnet_sparsity(self, subnet):
        """Sparsity of `subnet` over all prunable kernels together (the reported figure)."""
        masks = self.masks(subnet).values()
        total = sum(m.size for m in masks)
        return 1.0 - sum(float(m.sum()) for m in masks) / total

    def overall_sparsity(self, subnet):
        """Sparsity of `subnet` over all its trainable weights (stem, biases and its own BN copy
        count as dense)."""
        zeros = sum(m.size - float(m.sum()) for m in self.masks(subnet).values())
        per_subnet = {id(v) for v in self.per_subnet_variables}
        total = sum(
            math.prod(v.shape) // (self.num_subnets if id(v) in per_subnet else 1)
            for v in self.network.trainable_variables
        )
        return zeros / total

    # ---------------------------------------------------------------------------- training
    @property
    def updater(self):
        """The mask updater the training step runs (a `keras_ast.updaters.MaskUpdater`), or
        None (fixed masks)."""
        return self._updater

    @property
    def owns_updater(self):
        """True if the updater was given to the constructor or `compile` (kept in ``.keras``
        files, used by every ``fit``); False for one lent by a `PruneRegrow` for one fit."""
        return self._owns_updater and self._updater is not None

    def set_updater(self, updater, owned=True):
        """Makes `updater` (a `keras_ast.updaters.MaskUpdater`, a registry name or a serialized
        dict; None for fixed masks) the model's mask updater; the next compiled step runs it.
        `owned=False`: for one fit (what `PruneRegrow` does)."""
        if updater is not None:
            if not isinstance(updater, (str, dict, updaters.MaskUpdater)):
                raise TypeError(f"updater must be a keras_ast.updaters.MaskUpdater, a name or a "
                                f"serialized dict, got {type(updater).__name__}")
            updater = updaters.get(updater)
            updater.set_model(self)
        self._updater = updater
        self._owns_updater = owned and updater is not None

    def compile(self, *args, updater=None, **kwargs):
        """`keras.Model.compile`, plus `updater`: a mask updater for the model to own (see
        `set_updater`; ``fit`` then needs no `PruneRegrow` callback)."""
        if updater is not None:
            self.set_updater(updater)
        return super().compile(*args, **kwargs)

    def fit(self, *args, callbacks=None, **kwargs):
        # An updater the model owns is prepared and logged by a PruneRegrow observing it.
        from keras_ast.callbacks import PruneRegrow

        # An updater among the callbacks is lent for this fit, as PruneRegrow(updater).
        callbacks = [PruneRegrow(c) if isinstance(c, updaters.MaskUpdater) else c
                     for c in (callbacks or [])]
        if self.owns_updater and not any(isinstance(c, PruneRegrow) for c in callbacks):
            callbacks.insert(0, PruneRegrow())
        if self.agent is not None and not any(isinstance(c, agent_lib.AgentPass)
                                              for c in callbacks):
            raise ValueError("a model built with agent=... needs keras_ast.AgentPass(data) "
                             "among fit's callbacks (the per-epoch pass; without it c stays 0 "
                             "and AGENT does nothing)")
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def compile_from_config(self, config):
        # Keras skips a custom `compile` when loading a .keras file unless this is overridden;
        # the updater is restored by `from_config`, not here.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # --------------------------------------------------------------------------- AGENT
    def _build_agent_state(self):
        """AGENT's state (keras_ast/agent.py), in the model's variables so checkpoints and
        .keras files keep it: the snapshot w~ of every trainable variable, each sub-net's mean
        gradient mu~_k at the snapshot, tau^, c and the number of passes made."""
        trainables = self.network.trainable_variables
        K = self.num_subnets
        self.agent_snapshot = [
            self.add_weight(name=f"agent_snapshot_{i}", shape=v.shape, dtype=v.dtype,
                            initializer="zeros", trainable=False)
            for i, v in enumerate(trainables)]
        self.agent_mu = [
            self.add_weight(name=f"agent_mu_{i}", shape=(K,) + tuple(v.shape), dtype=v.dtype,
                            initializer="zeros", trainable=False)
            for i, v in enumerate(trainables)]
        self.agent_tau = self.add_weight(
            name="agent_tau", shape=(), dtype="float32", trainable=False,
            initializer=keras.initializers.Constant(self.agent.tau0))
        self.agent_coef = self.add_weight(name="agent_coef", shape=(), dtype="float32",
                                          initializer="zeros", trainable=False)
        self.agent_passes = self.add_weight(name="agent_passes", shape=(), dtype="int64",
                                            initializer="zeros", trainable=False)
        self._agent_batch = None

    def _agent_terms(self, subnet, x, y, sample_weight):
        """c (mu~_k - q) for every trainable variable (q: the batch's gradient at the snapshot)."""
        _, q = tf_engine.stateless_gradients(self, self.agent_snapshot, subnet, x, y,
                                             sample_weight)
        coef = ops.convert_to_tensor(self.agent_coef)
        return [ops.cast(coef, mu.dtype) * (ops.take(mu, subnet, axis=0)
                                            - (ops.zeros_like(s) if g is None else g))
                for mu, s, g in zip(self.agent_mu, self.agent_snapshot, q)]

    def agent_epoch_pass(self, data):
        """AGENT's pass at the start of an epoch (keras_ast/agent.py): over the batches of
        `data` (batch b as sub-net b mod K), the loss at the current weights and at the
        snapshot and the mean gradient per sub-net; then tau^, c and the snapshot. The live
        model's BatchNorm statistics and metrics are not touched. Its FLOPs (one forward and
        backward plus one forward per batch) are added to ``training_flops``. Returns
        {"tau_cur", "tau", "coef", "batches"}."""
        if self.agent is None:
            raise ValueError("agent_epoch_pass needs ASTModel(..., agent=...)")
        if int(self.agent_passes.numpy()) == 0:  # first epoch: the snapshot is the model
            self._agent_take_snapshot()
        for mu in self.agent_mu:
            mu.assign(ops.zeros_like(mu))
        if self._agent_batch is None:
            self._agent_batch = tf_engine.function(self._agent_batch_step)
        K = self.num_subnets
        counts, current, previous = [0] * K, [], []
        for b, batch in enumerate(data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
            k = b % K
            loss_now, loss_snapshot = self._agent_batch(x, y, sample_weight,
                                                        ops.convert_to_tensor(k, "int32"))
            counts[k] += 1
            current.append(float(loss_now))
            previous.append(float(loss_snapshot))
        for mu in self.agent_mu:
            shape = (K,) + (1,) * (len(mu.shape) - 1)
            mu.assign(mu / ops.reshape(ops.convert_to_tensor(
                [max(c, 1) for c in counts], mu.dtype), shape))
        tau_cur = agent_lib.tau_estimate(current, previous)
        tau = agent_lib.updated_tau(float(self.agent_tau.numpy()), tau_cur, self.agent.alpha)
        self.agent_tau.assign(tau)
        self.agent_coef.assign(self.agent.gamma * tau)
        self._agent_take_snapshot()
        self.agent_passes.assign_add(1)
        return {"tau_cur": tau_cur, "tau": tau, "coef": self.agent.gamma * tau,
                "batches": len(current)}

    def _agent_take_snapshot(self):
        for s, v in zip(self.agent_snapshot, self.trainable_variables):
            s.assign(v)

    def _agent_batch_step(self, x, y, sample_weight, subnet):
        loss_now, grads = tf_engine.stateless_gradients(
            self, self.trainable_variables, subnet, x, y, sample_weight)
        loss_snapshot, _ = tf_engine.stateless_gradients(
            self, self.agent_snapshot, subnet, x, y, sample_weight, gradients=False)
        one_hot = ops.one_hot(subnet, self.num_subnets, dtype="float32")
        for mu, g in zip(self.agent_mu, grads):
            if g is not None:
                shape = (self.num_subnets,) + (1,) * len(g.shape)
                mu.assign_add(ops.reshape(ops.cast(one_hot, mu.dtype), shape) * g[None])
        densities = [ops.cast(ops.mean(ops.take(layer.masks, subnet, axis=0)), "float64")
                     for layer in self.sparse_layers]
        flops = step_lib.step_flops(self._step_config(), ops.shape(keras.tree.flatten(x)[0])[0],
                                    densities)
        # forward + backward (3 forward-equivalents) and one forward: 4/3 of a step
        self.train_flops.assign_add(ops.cast(one_hot, "float64") * flops * (4.0 / 3.0))
        return loss_now, loss_snapshot

    def _step_config(self):
        return step_lib.StepConfig(
            num_subnets=self.num_subnets, updater=self._updater,
            window=1 if self.training_mode == "joint" else self.num_subnets, gc=self.gc,
            gc_reference=self.gc_reference, gc_projection=self.gc_projection,
            dense_macs=float(self._dense_macs), sparse_macs=tuple(self._sparse_macs))

    def _loss(self, x, y, sample_weight, training, subnet=None):
        y_pred = self(x, training=training)
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                 training=training)
        batch = ops.shape(keras.tree.flatten(x)[0])[0]
        replicas = distribute.replicas_in_sync()
        # A non-finite loss (a skipped step) adds nothing to the loss averages.
        finite = ops.isfinite(loss)
        tracked = ops.where(finite, loss * replicas, ops.zeros_like(loss))
        weight = ops.cast(batch, "float32") * ops.cast(finite, "float32")
        compat.loss_tracker(self).update_state(tracked, sample_weight=weight)
        if subnet is not None:  # training: sub-net `subnet`'s own loss and metrics
            self.subnet_metrics.update_state(subnet, tracked, weight, y, y_pred, sample_weight)
        return y_pred, loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Keras builds its compiled metrics here first (symbolically, before any step): build
        # the per-sub-net copies at the same time.
        self.subnet_metrics.build_like(compat.compile_metrics(self), y, y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _training_only_metrics(self):
        return (self.gc_conflict_tracker, self.gc_cosine_tracker, self.subnet_metrics)

    def train_step(self, data):
        """Sub-net ``iteration mod K`` (all K in joint training): gradients
        (`tf_engine.forward_backward`), `step.ast_step`, variable updates, optimizer step."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        step = ops.convert_to_tensor(self.iteration)
        variables = self.trainable_variables
        if self.training_mode == "joint":
            subnets = list(range(self.num_subnets))  # all of them, every step
        else:
            subnets = [ops.cast(step % self.num_subnets, "int32")]
        position = {id(v): i for i, v in enumerate(variables)}
        kernel_ids = [position[id(layer.shared_kernel)] for layer in self.sparse_layers]
        kernels = set(kernel_ids)
        config = self._step_config()
        total, all_finite = None, None
        # State the forward pass updates (BatchNorm moving statistics), restored if the step
        # turns out non-finite.
        masks_ids = {id(layer.masks) for layer in self.sparse_layers}
        forward_state = [v for v in self.network.non_trainable_variables
                         if id(v) not in masks_ids]
        saved_state = tf_engine.snapshot(forward_state)
        # Forward and backward pass of each sub-net (all K in joint training), then one
        # finiteness flag for the whole step: a non-finite sub-net stops every sub-net's mask
        # update, reference and statistics of the step, not only its own.
        passes = []
        for subnet in subnets:
            self.active_subnet.assign(subnet)
            y_pred, grads, records, product_grads = tf_engine.forward_backward(
                self, x, y, sample_weight, subnet, variables)
            masks, dense = (list(t) for t in zip(*self._recorded(subnet, records,
                                                                   product_grads)))
            agent_terms = None
            if self.agent is not None:  # AGENT, before GC: c (mu~_k - q) (keras_ast/agent.py)
                terms = self._agent_terms(subnet, x, y, sample_weight)
                agent_terms = [terms[i] for i in kernel_ids]
                grads = [g if g is None or i in kernels else g + ops.cast(terms[i], g.dtype)
                         for i, g in enumerate(grads)]
            batch = ops.shape(keras.tree.flatten(x)[0])[0]
            kernel_grads, dense, extras, batch = self._kernel_gradients(
                [grads[i] for i in kernel_ids], masks, dense, batch)
            finite = tf_engine.all_finite(
                [g for i, g in enumerate(grads) if g is not None and i not in kernels]
                + kernel_grads + dense + (agent_terms or []))
            all_finite = finite if all_finite is None else ops.logical_and(all_finite, finite)
            logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
            passes.append((subnet, grads, kernel_grads, dense, extras, masks, batch,
                           agent_terms))
        for subnet, grads, kernel_grads, dense, extras, masks, batch, agent_terms in passes:
            result = step_lib.ast_step(
                config, kernel_grads, dense, extras, masks,
                [ops.convert_to_tensor(layer.masks) for layer in self.sparse_layers],
                [ops.convert_to_tensor(layer.shared_kernel) for layer in self.sparse_layers],
                [ops.convert_to_tensor(ref) for ref in self.gc_refs], step, subnet, batch,
                finite=all_finite, agent_terms=agent_terms)
            self._record_step(result, subnet, batch)
            grads = list(grads)
            for i, g in zip(kernel_ids, result.grads):
                grads[i] = g
            # Joint training: the gradient of the summed losses is the sum of the gradients.
            total = grads if total is None else [
                a if b is None else b if a is None else ops.add(a, b) for a, b in zip(total, grads)
            ]
        reduced = distribute.replicas_in_sync() > 1
        if reduced:  # the kernels' gradients are already global (_kernel_gradients)
            rest = [i for i, g in enumerate(total) if g is not None and i not in kernels]
            for i, g in zip(rest, distribute.all_reduce_sum([total[i] for i in rest])):
                total[i] = g
        skipped = ops.logical_not(all_finite)
        self.nonfinite_steps.assign_add(ops.cast(skipped, "int64"))
        tf_engine.restore_if(skipped, forward_state, saved_state)
        sgd = tf_engine.inner_optimizer(self.optimizer)  # under a LossScaleOptimizer too
        if not isinstance(sgd, SGD):  # no skip mechanism: a zero step (moments still decay)
            total = [None if g is None else ops.where(all_finite, g, ops.zeros_like(g))
                     for g in total]
        with contextlib.ExitStack() as stack:
            stack.enter_context(distribute.applying_reduced_gradients(self.optimizer, reduced))
            if isinstance(sgd, SGD):
                stack.enter_context(sgd.skipping(skipped))
                if self.training_mode == "alternating" and self.inactive_bn == "frozen":
                    stack.enter_context(sgd.updating_rows(
                        self.per_subnet_variables, subnets[0], self.num_subnets))
            self.optimizer.apply(total, variables)
        self.iteration.assign_add(1)
        logs = {**logs, "nonfinite_steps": self.nonfinite_steps}
        return distribute.step_logs(logs)

    def _kernel_gradients(self, grads, masks, dense, batch):
        """(kernel gradients dL/dW, dense gradients, {layer index: regularizer term}, batch),
        summed over the replicas under tf.distribute."""
        regularized = [j for j, layer in enumerate(self.sparse_layers)
                       if distribute.kernel_regularized(layer)]
        if distribute.replicas_in_sync() > 1:
            grads, dense, batch, extras = tf_engine.global_kernel_gradients(
                regularized, grads, masks, dense, batch)
            return grads, dense, extras, batch
        # dL/dW = dL/d(W*m) * m: already restricted to the sub-net's connections, plus, for a
        # kernel with a regularizer, that term (it does not pass through W*m).
        grads = [d * m if g is None else ops.cast(g, d.dtype)
                 for g, d, m in zip(grads, dense, masks)]
        extras = {j: grads[j] - dense[j] * masks[j] for j in regularized}
        return grads, dense, extras, batch

    def _record_step(self, result, subnet, batch):
        """Writes what `ast_step` returned into the model's variables."""
        if result.rows is not None:
            tf_engine.assign_if(result.updated, list(zip(
                [layer.masks for layer in self.sparse_layers], result.rows)))
        for ref, value in zip(self.gc_refs, result.refs or []):
            ref.assign(ops.cast(value, ref.dtype))
        one_hot = ops.one_hot(subnet, self.num_subnets, dtype="float64")
        self.train_flops.assign_add(one_hot * result.flops)
        self.train_examples.assign_add(one_hot * ops.cast(batch, "float64"))
        if result.gc_stats is not None:
            weight = ops.cast(ops.logical_and(subnet > 0, result.finite), "float32")
            self.gc_conflict_tracker.update_state(result.gc_stats.conflict, sample_weight=weight)
            self.gc_cosine_tracker.update_state(result.gc_stats.cosine, sample_weight=weight)
            self.gc_statistics.assign_add(one_hot[:, None] * result.gc_row[None, :])

    def _recorded(self, subnet, records, product_grads):
        """Per sparse layer: (mask used in the forward, dense gradient dL/d(W*m)) from the
        records of one forward pass (a layer called twice sums its gradients)."""
        masks, dense = {}, {}
        for (layer, product, mask), grad in zip(records, product_grads):
            key = id(layer)
            grad = ops.zeros_like(product) if grad is None else grad
            masks.setdefault(key, mask)
            dense[key] = grad if key not in dense else dense[key] + grad
        result = []
        for layer in self.sparse_layers:
            kernel = layer.shared_kernel
            if id(layer) in masks:  # cast to the variable's dtype (mixed precision)
                mask, grad = masks[id(layer)], dense[id(layer)]
            else:  # not used by this forward pass: no gradient at all
                mask, grad = layer.mask_for(subnet), ops.zeros(kernel.shape, kernel.dtype)
            result.append((ops.cast(mask, kernel.dtype), ops.cast(grad, kernel.dtype)))
        return result

    # -------------------------------------------------------------------------- evaluation
    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self.active_subnet.assign(self.eval_subnet)
        y_pred, _ = self._loss(x, y, sample_weight, training=False)
        self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        # Gradient-correction statistics and per-sub-net training metrics are training-only.
        skip = self._training_only_metrics()
        logs = {}
        for metric in self.metrics:
            if not any(metric is m for m in skip):
                result = metric.result()
                logs.update(result if isinstance(result, dict) else {metric.name: result})
        return distribute.step_logs(logs)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        self.active_subnet.assign(self.eval_subnet)
        return self(x, training=False)

    def evaluate_subnets(self, x=None, y=None, subnets=None, **kwargs):
        """Evaluates each sub-net (all by default) and returns ``{k: {metric: value}}`` with
        Python floats (``evaluate`` returns tensors in some Keras versions, 3.12 among them).

        Extra keyword arguments go to ``evaluate``. The selected sub-net is restored after.
        """
        subnets = range(self.num_subnets) if subnets is None else subnets
        previous = int(self.eval_subnet.numpy())
        kwargs.setdefault("verbose", 0)
        results = {}
        try:
            for k in subnets:
                self.set_subnet(self._check_subnet(k))
                logs = self.evaluate(x, y, return_dict=True, **kwargs)
                results[k] = {name: float(value) for name, value in logs.items()}
        finally:
            self.set_subnet(previous)
        return results

    def get_config(self):
        return {
            "name": self.name,
            "network": keras.saving.serialize_keras_object(self.network),
            "sparsities": list(self.sparsities),
            "gc": self.gc,
            "gc_reference": self.gc_reference,
            "training": self.training_mode,
            "nm": None if self.nm_patterns is None else [p.get_config()
                                                         for p in self.nm_patterns],
            "inactive_bn": self.inactive_bn,
            "gc_projection": self.gc_projection,
            "updater": updaters.serialize(self._updater) if self.owns_updater else None,
            "agent": None if self.agent is None else self.agent.get_config(),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(
            config.pop("network"), custom_objects=custom_objects
        )
        return cls(network, **config)
