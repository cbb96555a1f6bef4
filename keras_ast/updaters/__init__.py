"""Mask updaters: one engine for GraNet (AST's default), nested and N:M sub-nets, RigL, SET
and static sparse training, for one model (K = 1) or K alternating sub-nets.

The shape of JaxPruner's algorithms and tfmot's schedules: a small base class (`MaskUpdater`,
`base.py`) with tiny subclasses per algorithm and schedule objects (`keras_ast.schedules`).
The model owns its updater::

    model.compile(optimizer=..., loss=..., updater=keras_ast.updaters.get("rigl", frequency=100))
    model.fit(train, epochs=...)                       # or, for one fit:
    model.fit(train, epochs=..., callbacks=[keras_ast.PruneRegrow(updater=rigl)])

Updaters (`get(name, **config)`):
  granet  `GraNet`: gradual magnitude pruning + death/regrowth, each sub-net on its own
          (``keras_ast.PruneRegrow(**config)`` builds one).
  nested  `Nested`: GraNet with sparser masks nested in denser ones (``mode="subset"``).
  nm      `NM`: GraNet on N:M structured sub-nets (``ASTModel(..., nm=[...])``).
  rigl    `RigL`, set `SET`, static `Static` (`drop_grow.py`): masks start at the target
          sparsity from a layer-density distribution (`densities.py`: uniform, ERK or a dict)
          and every layer keeps its count.

With K = 1 every updater is plain single-model sparse training.
"""

from __future__ import annotations

from keras_ast.updaters.base import MaskUpdater, ScheduleError
from keras_ast.updaters.densities import (
    DISTRIBUTIONS,
    LayerDensity,
    erk_densities,
    layer_densities,
)
from keras_ast.updaters.drop_grow import SET, DropAndGrow, RigL, Static, random_scores
from keras_ast.updaters.granet import FIDELITY_OPTIONS, NM, GraNet, Nested

UPDATERS = ("granet", "nested", "nm", "rigl", "set", "static")
_CLASSES = {"granet": GraNet, "nested": Nested, "nm": NM, "rigl": RigL, "set": SET,
            "static": Static}


def get(identifier, **config):
    """An updater by name: ``get("rigl", frequency=100, distribution="erk")``.

    `identifier` is one of `UPDATERS`, a `serialize` dict ({"name", "config"}) or an updater
    (returned as is when no `config` is given); `config` (keyword arguments of the class) is
    added to / overrides the dict's.
    """
    if isinstance(identifier, MaskUpdater):
        if config:
            raise ValueError("give either an updater or a name with its config, not both")
        return identifier
    if isinstance(identifier, dict):
        config = {**identifier.get("config", {}), **config}
        identifier = identifier.get("name")
    name = identifier.lower() if isinstance(identifier, str) else identifier
    if name not in _CLASSES:
        raise ValueError(f"unknown updater {identifier!r}; use one of {', '.join(UPDATERS)}")
    if name == "granet" and config.get("mode", "nondisjoint") != "nondisjoint":
        raise ValueError(f"updater 'granet' is GraNet(mode='nondisjoint'); got "
                         f"mode={config['mode']!r} (mode='subset' is 'nested')")
    regrow = config.get("regrow_ratio")
    if isinstance(regrow, list):
        config["regrow_ratio"] = tuple(regrow)
    return _CLASSES[name](**config)


def name_of(updater):
    """The registry name of an updater."""
    if not isinstance(updater, MaskUpdater):
        raise TypeError(f"not a mask updater: {type(updater).__name__}")
    if type(updater) is GraNet and updater.mode == "subset":
        return "nested"
    return updater.name


def serialize(updater):
    """{"name": registry name, "config": get_config()}: ``get(serialize(u))`` remakes `u`."""
    return {"name": name_of(updater), "config": updater.get_config()}


__all__ = [
    "DISTRIBUTIONS", "DropAndGrow", "FIDELITY_OPTIONS", "GraNet", "LayerDensity",
    "MaskUpdater", "NM", "Nested", "RigL", "SET", "ScheduleError", "Static", "UPDATERS",
    "erk_densities", "get", "layer_densities", "name_of", "random_scores", "serialize",
]
