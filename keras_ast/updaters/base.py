"""`MaskUpdater`: what every mask-update algorithm shares (JaxPruner's shape: a small base
class, tiny per-algorithm subclasses, schedule objects).

An updater belongs to an `ASTModel` (``compile(updater=...)``, or for one fit through
`keras_ast.PruneRegrow`). Before training, `configure(total_steps)` builds its schedules (one
per sub-net: when it updates and to which sparsity) and checks them; `initial_masks()` draws
the masks training starts from. Inside the compiled step `keras_ast.step.ast_step` asks
`is_due(step, subnet, window)` and, when due, `new_masks(...)`: a pure function of tensors
returning every sub-net's new masks, which the model assigns. Subclasses implement
`_configure`, `new_masks`, `get_config` and, if they start sparse, `initial_masks`.
"""

from __future__ import annotations

from keras import ops

from keras_ast import schedules


class ScheduleError(ValueError):
    """An updater schedule that cannot work for the run (raised before training starts)."""


def as_ratio_schedule(ratio, total_steps):
    """A `schedules.CosineDecay` from one, from its config dict, or from (initial, final)
    decayed over `total_steps`."""
    if isinstance(ratio, schedules.CosineDecay):
        return ratio
    if isinstance(ratio, dict):  # a CosineDecay's get_config()
        return schedules.CosineDecay.from_config(ratio)
    initial, final = ratio
    return schedules.CosineDecay(initial, final, max(int(total_steps), 1))


def ratio_config(ratio):
    """`ratio` (a CosineDecay, its config or a pair) as JSON-friendly config."""
    if isinstance(ratio, schedules.CosineDecay):
        return ratio.get_config()
    if isinstance(ratio, dict):
        return ratio
    return tuple(float(r) for r in ratio)


class MaskUpdater:
    """Base class of the mask updaters (`GraNet`, `RigL`, `SET`, `Static`, ...).

    Args:
      total_steps: the run's total iterations; default epochs * steps per epoch from ``fit``.
      seed: seed of the initial masks (and of any random choice).
      verbose: 1 makes `keras_ast.PruneRegrow` print each sub-net's sparsity every epoch.
    """

    name = None  # the registry name
    # Whether an update reads the dense gradient dL/d(W*m) of every entry: a step that makes
    # one then costs a dense kernel-gradient product (keras_ast/cost.py).
    needs_dense_gradient = True

    def __init__(self, total_steps=None, seed=0, verbose=0):
        self.total_steps = total_steps
        self.seed = seed
        self.verbose = verbose
        # No update is due from this step on, and the schedules are built for a run that ends
        # there (set by `keras_ast.SupTickets` to pause the updates during its cycles).
        self.stop_step = None
        self.model = None
        self.schedules = None
        self.ratio_schedule = None
        self.total_steps_planned = None

    def _set_timing(self, frequency, adjustment_period, begin_step, end_step):
        """Checks and stores the update timing shared by the scheduled updaters."""
        if not (isinstance(frequency, int) and frequency >= 1):
            raise ValueError(f"frequency must be an integer >= 1, got {frequency!r}")
        if end_step is not None and not end_step > begin_step >= 0:
            raise ValueError(
                f"need 0 <= begin_step < end_step, got begin_step={begin_step}, "
                f"end_step={end_step}"
            )
        self.frequency = frequency
        self.adjustment_period = adjustment_period
        self.begin_step = int(begin_step)
        self.end_step = end_step

    # ------------------------------------------------------------------------- configuration
    def set_model(self, model):
        """Binds the updater to `model` (an `ASTModel`): its layers, sub-nets and sparsities."""
        from keras_ast.model import ASTModel

        if not isinstance(model, ASTModel):
            raise TypeError(
                f"{type(self).__name__} needs a keras_ast.ASTModel, got {type(model).__name__}")
        self.model = model

    def planned_steps(self, params):
        """The run's length from ``fit``'s callback params (or `total_steps`)."""
        if self.total_steps is not None:
            return int(self.total_steps)
        steps, epochs = params.get("steps"), params.get("epochs")
        if not steps or not epochs:
            raise ValueError(
                f"{type(self).__name__} cannot tell how long training is (the data set has no "
                "known length); pass total_steps=... (and end_step=...)"
            )
        return int(steps) * int(epochs)

    def configure(self, total_steps):
        """Builds and checks the schedules for a run of `total_steps` iterations.

        Raises `ScheduleError` (a ValueError; ``fit`` calls this before any training step) if a
        sub-net could not reach its final sparsity within the run, if the timing would make two
        sub-nets update together, or if a schedule argument is out of range. With a
        `stop_step` the schedules are built for a run of ``min(total_steps, stop_step)`` steps.
        """
        steps = total_steps
        if self.stop_step is not None:
            steps = min(int(total_steps), int(self.stop_step))
        try:
            self._configure(steps)
        except ScheduleError:
            raise
        except ValueError as error:
            raise ScheduleError(str(error)) from None
        self.total_steps_planned = total_steps

    def _configure(self, total_steps):
        raise NotImplementedError

    def initial_masks(self):
        """Assigns the masks training starts from (called at step 0; default: leaves the
        model's masks as they are, all ones for a new model)."""

    # --------------------------------------------------------------------- inside the step
    def is_due(self, step, subnet, window):
        """Scalar bool tensor: is sub-net `subnet`'s mask update due at `step`?

        `window` is how often the sub-net runs (K when alternating, 1 in joint training): an
        update scheduled at T is carried out at its first step >= T.
        """
        if not self.schedules:
            return ops.convert_to_tensor(False)
        due = ops.take(
            ops.stack([s.is_due(step, window=window) for s in self.schedules]), subnet
        )
        if self.stop_step is None:
            return due
        return ops.logical_and(due, ops.cast(step, "int64") < int(self.stop_step))

    def new_masks(self, step, subnet, weights, rows, dense_grads):
        """Sub-net `subnet`'s mask update at `step`, a pure function of tensors.

        Args:
          weights: the shared kernels, one per sparse layer.
          rows: every sub-net's masks, [K, *kernel] per sparse layer.
          dense_grads: dL/d(W*m_k) of each kernel (every entry).

        Returns:
          The new rows ([K, *kernel] per layer).
        """
        raise NotImplementedError

    def update(self, model, step, subnet, dense_grads):
        """Runs `new_masks` on `model`'s variables and assigns the result (for tests and
        benchmarks; the training step calls `new_masks` and assigns itself)."""
        layers = model.sparse_layers
        new = self.new_masks(step, subnet,
                             [ops.convert_to_tensor(layer.shared_kernel) for layer in layers],
                             [ops.convert_to_tensor(layer.masks) for layer in layers],
                             dense_grads)
        for layer, rows in zip(layers, new):
            layer.masks.assign(ops.cast(rows, layer.masks.dtype))

    def current_regrow_ratio(self, step=None):
        """The drop / regrow fraction at `step` (default: the last step trained)."""
        if self.ratio_schedule is None:
            return 0.0
        if step is None:
            step = max(int(self.model.iteration.numpy()) - 1, 0)
        return float(ops.convert_to_numpy(self.ratio_schedule(step)))

    def signature(self):
        """What the compiled step depends on (a new value forces a new trace)."""
        return (
            type(self).__name__,
            self.stop_step,
            repr(sorted(self.get_config().items())),
            tuple(repr(s) for s in self.schedules or ()),
            repr(self.ratio_schedule),
        )

    # --------------------------------------------------------------------------- config
    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)
