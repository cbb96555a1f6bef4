"""Where keras_ast, the AST paper and the authors' released code differ: one option each.

Every difference is a constructor argument of `ASTModel` (model options) or of `PruneRegrow`
(mask-update options), with keras_ast's choice as the default. `preset("authors_code")`
returns the arguments that reproduce the authors' code's choices, less its bugs (its gradient
correction stores the current gradient as the reference before projecting, so it never fires;
here it works)::

    options = keras_ast.fidelity.preset("authors_code")
    model = keras_ast.ASTModel.from_model(net, [0.9, 0.95, 0.98], **options.model)
    model.fit(data, callbacks=[keras_ast.PruneRegrow(frequency=1000, **options.updater)])

The README's table "keras_ast / paper / authors' code" gives the reason for each default.
"""

from __future__ import annotations

import dataclasses

from keras_ast.updaters import FIDELITY_OPTIONS
from keras_ast.model import GC_PROJECTIONS, INACTIVE_BN


@dataclasses.dataclass(frozen=True)
class Preset:
    """Keyword arguments for `ASTModel` / `ASTModel.from_model` (`model`) and for
    `PruneRegrow` (`updater`)."""

    model: dict
    updater: dict


MODEL_OPTIONS = {"inactive_bn": (INACTIVE_BN, "frozen"),
                 "gc_projection": (GC_PROJECTIONS, "masked")}
UPDATER_OPTIONS = dict(FIDELITY_OPTIONS)

PRESETS = {
    "default": Preset(
        model={name: default for name, (_, default) in MODEL_OPTIONS.items()},
        updater={name: default for name, (_, default) in UPDATER_OPTIONS.items()},
    ),
    "authors_code": Preset(
        model={"inactive_bn": "zero_grad", "gc_projection": "full"},
        updater={"ranking": "all", "regrow_gradient": "masked", "offset_unit": "subnet",
                 "initial_density": "erk", "nm_regrowth": "group"},
    ),
}


def preset(name: str) -> Preset:
    """The named `Preset`: "default" (keras_ast's choices) or "authors_code"."""
    if name not in PRESETS:
        raise ValueError(f"unknown fidelity preset {name!r}; use one of {sorted(PRESETS)}")
    found = PRESETS[name]
    return Preset(dict(found.model), dict(found.updater))


__all__ = ["MODEL_OPTIONS", "PRESETS", "Preset", "UPDATER_OPTIONS", "preset"]
