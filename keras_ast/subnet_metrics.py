"""Training metrics of each sub-net, kept apart: `SubnetMetrics`.

In alternating training each step trains one sub-net, so Keras' ``loss`` and compiled metrics
(``accuracy``, ...) of an epoch mix all K sub-nets. `SubnetMetrics` keeps, for every sub-net k,
its own loss tracker and its own copy of every compiled metric, updated only on the steps that
train sub-net k (in joint training every step trains all K, so every copy updates every step).
Its result is ``{"loss_k": ..., "<metric>_k": ...}``, which `ASTModel` adds to the training logs.

The active sub-net is a tensor inside the compiled step: the update is a ``switch`` on it, so
one copy's metric ops run per step (no retracing, the same work as Keras' own metric update).
"""

from __future__ import annotations

import functools

import keras
from keras import ops

from keras_ast import compat


def _fresh(spec):
    """A copy of a ``compile(metrics=...)`` spec with new metric objects (no shared state)."""
    def copy(item):
        if isinstance(item, keras.metrics.Metric):
            return item.__class__.from_config(item.get_config())
        return item  # a name or a function: CompileMetrics wraps it in a new metric

    return keras.tree.map_structure(copy, spec)


class SubnetMetrics(keras.metrics.Metric):
    """Loss and compiled metrics of each of `num_subnets` sub-nets, updated only on its steps.

    `ASTModel` owns one (``model.subnet_metrics``); the compiled-metric copies are built by
    `build_like` when Keras builds the model's own compiled metrics.
    """

    def __init__(self, num_subnets, name="subnet_metrics"):
        super().__init__(name=name)
        self.num_subnets = int(num_subnets)
        self.losses = [keras.metrics.Mean(name=f"loss_{k}") for k in range(self.num_subnets)]
        self.compiled = []  # one CompileMetrics per sub-net once built
        self._source = None  # the model's CompileMetrics they copy

    def build_like(self, compile_metrics, y_true, y_pred):
        """Makes and builds K copies of the model's `CompileMetrics` (no-op once done for it)."""
        if compile_metrics is self._source:
            return
        self._source = compile_metrics
        self.compiled = []
        if compile_metrics is None:
            return
        for _ in range(self.num_subnets):
            metrics, weighted = compat.user_metrics(compile_metrics)
            copy = compat.compile_metrics_class()(
                _fresh(metrics),
                _fresh(weighted),
                output_names=compile_metrics.output_names,
            )
            copy.build(y_true, y_pred)
            self.compiled.append(copy)

    def update_state(self, subnet, loss, loss_weight, y_true, y_pred, sample_weight=None):
        """Adds one step of sub-net `subnet` (a Python int or a scalar int tensor).

        `loss` and `loss_weight` are what the model's ``loss`` tracker receives; `y_true`,
        `y_pred` and `sample_weight` what its compiled metrics receive.
        """
        def update(k):
            self.losses[k].update_state(loss, sample_weight=loss_weight)
            if self.compiled:
                self.compiled[k].update_state(y_true, y_pred, sample_weight=sample_weight)
            return ops.zeros((), "int32")

        if isinstance(subnet, int):
            update(subnet)
        else:
            ops.switch(subnet, [functools.partial(update, k) for k in range(self.num_subnets)])

    def reset_state(self):
        for metric in self.losses + self.compiled:
            metric.reset_state()

    def result(self):
        results = {}
        for k in range(self.num_subnets):
            results[f"loss_{k}"] = self.losses[k].result()
            if self.compiled:
                results.update({f"{name}_{k}": value
                                for name, value in self.compiled[k].result().items()})
        return results

    @property
    def variables(self):
        return [v for metric in self.losses + self.compiled for v in metric.variables]

    def get_config(self):
        return {"num_subnets": self.num_subnets, "name": self.name}
