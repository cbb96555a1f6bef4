"""`PruneRegrow`: the user's handle on prune-and-regrow in ``model.fit(callbacks=[...])``.

The mask updates themselves belong to the model: they run inside its compiled training step
(`keras_ast.step.ast_step`), done by its updater (`keras_ast.updaters`). `PruneRegrow` gives the
model an updater for one fit (GraNet built from its arguments, or the `updater` passed) or,
when the model already owns one (``compile(updater=...)``), uses that one. Either way it then
only prepares and observes: before the first step it has the updater check its schedules
against the run's length (`keras_ast.ScheduleError` before any step if they cannot work) and
draw the initial masks (at step 0); at each epoch end it adds each sub-net's measured sparsity
(``sparsity_k``) and the current regrow ratio (``regrow_ratio``) to the logs, so they show in
the progress bar, in ``History`` and in a TensorBoard callback placed after it.
"""

from __future__ import annotations

import keras

from keras_ast.updaters import GraNet, MaskUpdater, ScheduleError  # noqa: F401 (re-export)
from keras_ast.updaters import get as get_updater


class PruneRegrow(keras.callbacks.Callback):
    """Prune-and-regrow of every sub-net's masks during ``fit``.

    ``PruneRegrow(frequency=1000, adjustment_period=100, ...)`` trains with a `GraNet` updater
    made from those arguments (see `keras_ast.updaters.GraNet` for them all);
    ``PruneRegrow(updater=...)`` with any updater (an instance, a registry name or a
    `keras_ast.updaters.serialize` dict); ``PruneRegrow()`` on a model that owns an updater
    observes that one. Attributes of the updater (``schedules``, ``mode``, ...) read through.

    Args:
      updater: a `keras_ast.updaters.MaskUpdater`, a name or a serialized dict; default a
        `GraNet` made from `**config` (or the model's own updater when `config` is empty).
      verbose: 1 prints each sub-net's sparsity at the end of every epoch; default the
        updater's `verbose`.
      **config: `GraNet` arguments (only without `updater`).
    """

    def __init__(self, updater=None, verbose=None, **config):
        super().__init__()
        if updater is not None and config:
            raise ValueError(f"PruneRegrow takes an updater or GraNet arguments, not both: "
                             f"got updater={updater!r} and {sorted(config)}")
        self._follows_model = updater is None and not config
        if updater is None:
            if verbose is not None:
                config["verbose"] = verbose
            updater = GraNet(**config)
        self.updater = get_updater(updater)
        self._verbose = verbose

    def __getattr__(self, name):  # the updater's attributes read through
        if name == "updater" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.updater, name)

    @property
    def verbose(self):
        return self.updater.verbose if self._verbose is None else self._verbose

    # ------------------------------------------------------------------------- keras hooks
    def set_model(self, model):
        from keras_ast.model import ASTModel

        if not isinstance(model, ASTModel):
            raise TypeError(f"PruneRegrow needs a keras_ast.ASTModel, got {type(model).__name__}")
        owned = model.updater if model.owns_updater else None
        if owned is not None and owned is not self.updater:
            if not self._follows_model:
                raise ValueError(
                    f"the model already owns a mask updater ({type(owned).__name__}, given to "
                    "compile or the constructor); fit it without another updater (a plain "
                    "PruneRegrow() observes the model's)"
                )
            self.updater = owned
        super().set_model(model)
        self.updater.set_model(model)
        if owned is None:
            model.set_updater(self.updater, owned=False)  # the model's for this fit

    def set_params(self, params):
        super().set_params(params)
        self.updater.configure(self.updater.planned_steps(params))

    def on_train_begin(self, logs=None):
        if int(self.model.iteration.numpy()) == 0:
            self.updater.initial_masks()

    def on_train_end(self, logs=None):
        if not self.model.owns_updater:  # given for this fit only
            self.model.set_updater(None)

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        values = {k: model.subnet_sparsity(k) for k in range(model.num_subnets)}
        if logs is not None:
            logs.update({f"sparsity_{k}": v for k, v in values.items()})
            logs["regrow_ratio"] = self.updater.current_regrow_ratio()
        if self.verbose:
            patterns = model.nm_patterns
            text = ", ".join(
                f"sub-net {k}{'' if patterns is None else f' ({patterns[k]})'}: "
                f"{100 * v:.2f}% (target {100 * model.sparsities[k]:.1f}%)"
                for k, v in values.items()
            )
            print(f"Epoch {epoch + 1} sparsity: {text}")

    # -------------------------------------------------------------------------- config
    def get_config(self):
        """The updater's config (GraNet's arguments for ``PruneRegrow(**config)``), with
        ``"updater"`` set to its registry name for any other updater."""
        from keras_ast import updaters

        if type(self.updater) is GraNet:
            return self.updater.get_config()
        return {"updater": updaters.serialize(self.updater), "verbose": self._verbose}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
