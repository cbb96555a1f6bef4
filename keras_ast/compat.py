"""Every private Keras / TensorFlow API keras_ast uses, in this one module, and the check that
the installed Keras is one keras_ast was tested with.

keras_ast needs a few things Keras does not expose publicly: the model's layers including
nested ones, the raw kernel of a Dense layer (its ``kernel`` property adds a LoRA term), the
compiled-metric container, the loss tracker, the optimizer's variable keys and its gradient
all-reduce (to skip a second all-reduce of gradients keras_ast already summed), and one
training-loop hook. Each is a function or class here, so a new Keras release breaks this module
only, and `check_keras` turns that into one clear error at import.

Tested: Keras `TESTED` (the oldest and the newest of the range pyproject.toml allows; run the
tests on both with ``.ci/keras_versions``). Importing keras_ast with a Keras outside
[`MINIMUM`, `BELOW`) raises ImportError; set ``KERAS_AST_ANY_KERAS=1`` to try another version at
your own risk (the attribute check still runs).
"""

from __future__ import annotations

import os

import keras

MINIMUM = (3, 12)  # tensorflow-cpu 2.21 itself needs keras >= 3.12
BELOW = (3, 16)
TESTED = ("3.12.4", "3.15.1")

# Private attributes keras_ast reads or overrides: (owner, attribute).
_REQUIRED = (
    (keras.Model, "_flatten_layers"),
    (keras.Model, "_maybe_symbolic_build"),
    (keras.optimizers.Optimizer, "_var_key"),
    (keras.optimizers.Optimizer, "_get_variable_index"),
    (keras.optimizers.Optimizer, "_use_weight_decay"),
)


def _version(text):
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_keras(version=None, environ=None):
    """Raises ImportError, naming the supported range, for a Keras version keras_ast was not
    tested with (unless ``KERAS_AST_ANY_KERAS=1``) or one missing a private API it needs."""
    version = keras.__version__ if version is None else version
    environ = os.environ if environ is None else environ
    supported = (f"keras>={MINIMUM[0]}.{MINIMUM[1]},<{BELOW[0]}.{BELOW[1]} "
                 f"(tested: {', '.join(TESTED)})")
    if not MINIMUM <= _version(version) < BELOW and environ.get("KERAS_AST_ANY_KERAS") != "1":
        raise ImportError(
            f"keras_ast supports {supported}; Keras {version} is installed. Install a supported "
            "version (pip install -e . does), or set KERAS_AST_ANY_KERAS=1 to try this one "
            "at your own risk")
    missing = [f"{owner.__name__}.{name}" for owner, name in _REQUIRED
               if not hasattr(owner, name)]
    if missing:
        raise ImportError(
            f"Keras {version} lacks {', '.join(missing)}, which keras_ast needs "
            f"(keras_ast/compat.py); keras_ast supports {supported}")


check_keras()


# ------------------------------------------------------------------------------ layers
# Where Keras' Conv and Dense layers keep their kernel variable (their ``call`` reads the
# ``kernel`` property, which keras_ast's sparse layers override with the masked view).
KERNEL_ATTRIBUTE = "_kernel"


def flatten_layers(model):
    """Every layer inside `model`, nested ones included (not `model` itself)."""
    return list(model._flatten_layers(include_self=False))


def producer(tensor):
    """The layer (operation) that produced the symbolic `tensor`, or None."""
    try:
        history = tensor._keras_history
    except (AttributeError, ValueError):
        return None
    return history[0] if history else None


def parent_layers(layer):
    """The layers (operations) whose outputs feed `layer` in a functional model."""
    return [p.operation for node in layer._inbound_nodes for p in node.parent_nodes]


def raw_kernel(layer):
    """A layer's kernel variable itself (Dense's and Conv's ``kernel`` property adds the LoRA
    term when LoRA is enabled)."""
    kernel = getattr(layer, KERNEL_ATTRIBUTE, None)
    return layer.kernel if kernel is None else kernel


# ---------------------------------------------------------------- model and training loop
def compile_metrics(model):
    """The model's compiled-metric container (Keras' CompileMetrics), or None."""
    return model._compile_metrics


def loss_tracker(model):
    """The Mean metric behind the ``loss`` Keras logs."""
    return model._loss_tracker


def compile_metrics_class():
    """Keras' CompileMetrics (it resolves "accuracy" to the right accuracy metric)."""
    from keras.src.trainers.compile_utils import CompileMetrics

    return CompileMetrics


def user_metrics(container):
    """(metrics, weighted_metrics) as given to ``compile`` for a CompileMetrics."""
    return container._user_metrics, container._user_weighted_metrics


def set_initial_epoch(model, epoch):
    """Makes ``fit`` start at `epoch` (None: as asked), as Keras' BackupAndRestore does."""
    model._initial_epoch = epoch


def model_strategy(model):
    """The tf.distribute strategy the model was created under (None if none)."""
    return model._distribute_strategy


class SymbolicBuildHook:
    """Mixin for a keras.Model: Keras builds the compiled metrics before the first step from a
    batch (``_maybe_symbolic_build``); `symbolic_build_batch(iterator)` may supply that batch
    instead of the iterator (None keeps Keras' way)."""

    def symbolic_build_batch(self, iterator):
        return None

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            batch = self.symbolic_build_batch(iterator)
            if batch is not None:
                iterator, data_batch = None, batch
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


# ---------------------------------------------------------------------------- optimizer
def variable_key(optimizer, variable):
    """The key the optimizer stores per-variable state under."""
    return optimizer._var_key(variable)


def variable_index(optimizer, variable):
    """Index of `variable` in the optimizer's slot lists (``optimizer.momentums``, ...)."""
    return optimizer._get_variable_index(variable)


def uses_weight_decay(optimizer, variable):
    """Whether the optimizer's weight decay applies to `variable` (exclusions honoured)."""
    return optimizer._use_weight_decay(variable)


def gradient_all_reduce(optimizer):
    """The optimizer's all-reduce of (gradient, variable) pairs under tf.distribute, or None
    if this Keras has none."""
    return getattr(optimizer, "_all_reduce_sum_gradients", None)


def set_gradient_all_reduce(optimizer, function):
    """Replaces the optimizer's gradient all-reduce (not tracked as an attribute)."""
    object.__setattr__(optimizer, "_all_reduce_sum_gradients", function)


def in_multi_worker_mode(strategy):
    """Whether a MultiWorkerMirroredStrategy spans more than one worker (TensorFlow)."""
    return strategy.extended._in_multi_worker_mode()


def learning_rate_schedule(optimizer):
    """The `LearningRateSchedule` an optimizer was built with (None for a constant rate): its
    public ``learning_rate`` returns only the current value."""
    schedule = getattr(optimizer, "_learning_rate", None)
    return schedule if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule) \
        else None
