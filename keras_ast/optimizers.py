"""SGD with momentum and coupled L2 weight decay, aware of per-sub-net variables.

The paper trains with SGD, momentum 0.9 and *coupled* L2 weight decay (``wd * w`` added to the
gradient before momentum, as PyTorch's ``SGD(weight_decay=...)``). Keras' own ``weight_decay``
argument is decoupled (AdamW style), so this subclass adds the coupled form as ``l2``.

Variables that hold one row per sub-net (the private BatchNorm copies, shape [K, C]) are
updated in the active sub-net's row only: the other rows keep their values *and* their momentum,
exactly as PyTorch skips parameters whose gradient is None. `ASTModel` selects the row around
each ``apply`` with :meth:`SGD.updating_rows`. With any other Keras optimizer the inactive rows
simply receive a zero gradient (then momentum and weight decay still move them).
"""

from __future__ import annotations

import contextlib

import keras
from keras import ops

from keras_ast import compat


@keras.saving.register_keras_serializable(package="keras_ast")
class SGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` plus coupled L2 weight decay and per-sub-net row updates.

    Args:
      learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
      momentum: momentum in [0, 1].
      nesterov: whether to use Nesterov momentum.
      l2: coupled L2 weight decay coefficient (``gradient += l2 * variable``), >= 0. Variables
        excluded with `exclude_from_weight_decay` are not decayed.
      **kwargs: other `keras.optimizers.Optimizer` arguments.
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=False, l2=0.0, name="ast_sgd",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=float(momentum),
                         nesterov=nesterov, name=name, **kwargs)
        if not l2 >= 0.0:
            raise ValueError(f"l2 must be >= 0, got {l2!r}")
        self.l2 = float(l2)
        self._row_selection = {}
        self._skip = None

    @contextlib.contextmanager
    def updating_rows(self, variables, row, num_rows):
        """Within the block, `variables` ([num_rows, ...]) are updated in row `row` only."""
        previous = self._row_selection
        self._row_selection = {compat.variable_key(self, v): (row, num_rows) for v in variables}
        try:
            yield
        finally:
            self._row_selection = previous

    @contextlib.contextmanager
    def skipping(self, skip):
        """Within the block, `skip` (a bool scalar tensor) true leaves every variable and
        momentum as it is (a step with non-finite gradients); the iteration count still
        advances."""
        previous = self._skip
        self._skip = skip
        try:
            yield
        finally:
            self._skip = previous

    def _decays(self, variable):
        return self.l2 > 0.0 and compat.uses_weight_decay(self, variable)

    def update_step(self, gradient, variable, learning_rate):
        selection = self._row_selection.get(compat.variable_key(self, variable))
        if not self._decays(variable) and selection is None and self._skip is None:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        learning_rate = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        if self._decays(variable):
            gradient = gradient + ops.cast(self.l2, dtype) * variable
        step = -learning_rate * gradient
        momentum = ops.cast(self.momentum, dtype)
        if self.momentum != 0:
            m = self.momentums[compat.variable_index(self, variable)]
            new_m = m * momentum + step
            step = new_m * momentum + step if self.nesterov else new_m
        if selection is not None:
            row, num_rows = selection
            shape = (num_rows,) + (1,) * (len(variable.shape) - 1)
            active = ops.reshape(ops.one_hot(row, num_rows, dtype=dtype), shape) > 0
            step = ops.where(active, step, ops.zeros_like(step))
            if self.momentum != 0:
                new_m = ops.where(active, new_m, m)
        if self._skip is not None:
            step = ops.where(self._skip, ops.zeros_like(step), step)
            if self.momentum != 0:
                new_m = ops.where(self._skip, m, new_m)
        if self.momentum != 0:
            self.assign(m, new_m)
        self.assign_add(variable, step)

    def get_config(self):
        config = super().get_config()
        config["l2"] = self.l2
        return config
