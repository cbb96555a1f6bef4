"""`GraNet`: gradual pruning plus prune-and-regrow for every sub-net (GraNet backbone,
docs/design.md section 4): keras_ast's default updater, and its `Nested` and `NM` variants.

The mask updates run inside the compiled training step (a ``cond`` that is false on most
steps), after the gradients and before masking, gradient correction and the optimizer step,
using the active sub-net's dense gradient for regrowth. The schedules (which step, what
sparsity, what regrow ratio) are small Python objects evaluated in the graph, so the step
never retraces.

Update timing: sub-net k's j-th update is scheduled at ``begin_step + k * adjustment_period +
j * frequency`` and carried out at the first step at or after that where sub-net k is the
active one (it runs every K-th step), so its own fresh gradient drives regrowth.

Each update of sub-net k:
  A. gradual pruning: keep the round((1 - s) N) largest-|W| active weights over all prunable
     kernels (global magnitude, s from the cubic schedule; no-op once s is reached);
  B. death and regrowth in each layer: drop the fraction r of its active weights with the
     smallest |W|, regrow as many inactive ones with the largest dense |gradient|. r decays by
     cosine from 0.5 to 0.005 over the run. A regrown weight keeps its current shared value
     (it may be in use, and trained, by another sub-net); nothing is zeroed.

No layer is emptied: global ranking at high sparsity can rank every weight of a layer below the
cut, which disconnects the network. Each layer keeps at least ``max(1, ceil(min_layer_density
* size))`` of its largest-|W| weights (default 0.5 %, `masks.layer_floors`) inside the same
total count; ``min_layer_density=0`` turns the floor off.

Modes: ``nondisjoint`` (default): every sub-net prunes and regrows on its own.
``subset``: sparser masks are subsets of the next denser one. Sub-net 0 does A and B; sub-net
k > 0 keeps the round((1 - s_k) N) largest-|W| weights of sub-net k-1's mask (no regrowth of its
own). After any update, every sparser mask is re-nested in its parent (entries still inside
stay; lost ones are replaced by the largest-|W| parent entries), so masks nest at all times.

N:M sub-nets (``ASTModel(..., nm=[...])``): the same update times, but each update of sub-net
k runs `keras_ast.nm.update_masks` with its pattern: the fraction of N:M-sparse groups follows
the cubic ramp 0 -> 1 (`schedules.CubicGroupFraction`), groups are chosen by magnitude score,
and death/regrowth (ratio r) happens inside the N:M-sparse groups, keeping every group's count.
N:M sub-nets start dense (``initial_sparsity=0``) and prune independently ("nondisjoint").
"""

from __future__ import annotations

import numpy as np
from keras import ops

from keras_ast import masks as mask_lib
from keras_ast import nm as nm_lib
from keras_ast import schedules
from keras_ast.updaters.base import MaskUpdater, ScheduleError, as_ratio_schedule, ratio_config
from keras_ast.updaters.densities import layer_densities

MODES = ("nondisjoint", "subset")
# Fidelity options (README "keras_ast / paper / authors' code"): {option: (values, default)}.
FIDELITY_OPTIONS = {
    "ranking": (("active", "all"), "active"),
    "regrow_gradient": (("dense", "masked"), "dense"),
    "offset_unit": (("global", "subnet"), "global"),
    "initial_density": (("uniform", "erk"), "uniform"),
    "nm_regrowth": (("element", "group"), "element"),
}


def check_fidelity(**options):
    """{option: value} after checking each against `FIDELITY_OPTIONS` (ValueError naming it)."""
    for name, value in options.items():
        values, _ = FIDELITY_OPTIONS[name]
        if value not in values:
            raise ValueError(f"unknown {name} {value!r}; use one of {values}")
    return dict(options)


class GraNet(MaskUpdater):
    """Gradual pruning plus prune-and-regrow of every sub-net's masks (module docstring).

    Args:
      frequency: iterations between two updates of one sub-net (F; paper: 1000 on CIFAR).
      adjustment_period: iterations between the updates of consecutive sub-nets (paper: 100
        on CIFAR, 400 on ImageNet). Needs ``(K - 1) * adjustment_period < frequency`` so two
        sub-nets are never scheduled at the same step.
      begin_step: iteration of the first update (start of the gradual pruning).
      end_step: iteration where the gradual pruning reaches the final sparsities; default
        ``round(0.6875 * total steps)`` (the paper's epoch 110 of 160).
      initial_sparsity: s_i; > 0 starts every sub-net from a random mask at that sparsity
        (each layer uniformly), drawn at the first step of training.
      mode: "nondisjoint" or "subset".
      regrow_ratio: a `schedules.CosineDecay`, or (initial, final) decayed over the run.
      total_steps: the run's total number of iterations; default epochs * steps per epoch
        from ``fit`` (needed when the data set has no known length).
      seed: seed of the random initial masks.
      verbose: 1 makes `keras_ast.PruneRegrow` print each sub-net's sparsity every epoch.
      ranking: step A ranks the sub-net's "active" weights (default: pruning never
        re-activates a weight) or "all" shared weights, as the authors' code does (a weight
        inactive in this sub-net but large in the shared kernel may come back).
      regrow_gradient: step B regrows by the "dense" gradient dL/d(W*m) (default: any inactive
        weight can come back) or the "masked" one (the authors' code: zero outside the mask, so
        only just-dropped weights can return).
      offset_unit: `adjustment_period` counts "global" iterations (default) or each sub-net's
        own steps, "subnet" (the authors' code: sub-net k starts k * period * K iterations
        later).
      initial_density: with `initial_sparsity` > 0, each layer starts at that sparsity
        ("uniform", default) or with ERK layer densities ("erk", the authors' code's default).
      min_layer_density: the floor of the module docstring: every layer keeps at least
        ``max(1, ceil(min_layer_density * size))`` weights under global ranking (0: no floor,
        a layer may be emptied). Refused if the floors do not fit in the sparsest sub-net.
      nm_regrowth: N:M sub-nets: "element" (default: N:M-sparse groups chosen over all
        kernels, death/regrowth of entries inside them) or "group" (the paper's section 4.3:
        each layer's round(f G_l) groups with the smallest summed |W| are N:M-sparse, each
        keeping its largest |W|; no element regrowth).
    """

    name = "granet"

    def __init__(self, frequency=1000, adjustment_period=100, begin_step=0, end_step=None,
                 initial_sparsity=0.0, mode="nondisjoint", regrow_ratio=(0.5, 0.005),
                 total_steps=None, seed=0, verbose=0, ranking="active", regrow_gradient="dense",
                 offset_unit="global", initial_density="uniform", nm_regrowth="element",
                 min_layer_density=0.005):
        super().__init__(total_steps=total_steps, seed=seed, verbose=verbose)
        if mode not in MODES:
            raise ValueError(f"unknown prune-regrow mode {mode!r}; use one of {MODES}")
        self.fidelity = check_fidelity(ranking=ranking, regrow_gradient=regrow_gradient,
                                       offset_unit=offset_unit, initial_density=initial_density,
                                       nm_regrowth=nm_regrowth)
        self._set_timing(frequency, adjustment_period, begin_step, end_step)
        if not 0.0 <= initial_sparsity < 1.0:
            raise ValueError(f"initial_sparsity must be in [0, 1), got {initial_sparsity!r}")
        self.initial_sparsity = float(initial_sparsity)
        if not 0.0 <= min_layer_density < 1.0:
            raise ValueError(f"min_layer_density must be in [0, 1), got {min_layer_density!r}")
        self.min_layer_density = float(min_layer_density)
        self.floors = None
        self.mode = mode
        self.regrow_ratio = regrow_ratio

    @property
    def needs_dense_gradient(self):
        """Regrowth by the dense gradient needs it; by the masked one (the authors' code) not."""
        return self.fidelity["regrow_gradient"] == "dense"

    # ------------------------------------------------------------------------- configuration
    def _configure(self, total_steps):
        model = self.model
        end_step = self.end_step
        if end_step is None:
            end_step = max(self.begin_step + 1, round(0.6875 * total_steps))
        period = self.adjustment_period
        if self.fidelity["offset_unit"] == "subnet":
            period *= model.num_subnets
        if model.nm_patterns is not None:
            self._check_nm_settings()
            self.schedules = schedules.staggered_group_fractions(
                model.num_subnets, self.begin_step, end_step, self.frequency, period)
        else:
            self.schedules = schedules.staggered_schedules(
                self.initial_sparsity, model.sparsities, self.begin_step, end_step,
                self.frequency, period)
        if self.initial_sparsity > model.sparsities[0]:
            raise ValueError(
                f"initial_sparsity {self.initial_sparsity} exceeds the densest sub-net's target "
                f"{model.sparsities[0]}"
            )
        self.ratio_schedule = as_ratio_schedule(self.regrow_ratio, total_steps)
        self._configure_floors()
        K = model.num_subnets
        for k, schedule in enumerate(self.schedules):
            # The update is carried out at the first step >= T where sub-net k is active.
            last = schedule.final_update
            last += (k - last) % K
            if last >= total_steps:
                raise ScheduleError(
                    f"sub-net {k} would reach its final sparsity {model.sparsities[k]} only at "
                    f"step {last}, but training has {total_steps} steps (0..{total_steps - 1}); "
                    f"lower end_step ({end_step}), frequency ({self.frequency}) or "
                    f"adjustment_period ({self.adjustment_period}), or train longer"
                )

    def _configure_floors(self):
        """Per-layer floors (`masks.layer_floors`), checked against the sparsest sub-net."""
        sizes = [int(np.prod(layer.shared_kernel.shape)) for layer in self.model.sparse_layers]
        self.floors = mask_lib.layer_floors(sizes, self.min_layer_density)
        if self.floors is None or self.model.nm_patterns is not None:
            return
        keep = round((1.0 - max(self.model.sparsities)) * sum(sizes))
        if sum(self.floors) > keep:
            raise ValueError(
                f"min_layer_density={self.min_layer_density} keeps at least {sum(self.floors)} "
                f"weights over {len(sizes)} layers, more than the {keep} of the sparsest sub-net "
                f"({max(self.model.sparsities)}); lower min_layer_density (0 turns it off)"
            )

    def _check_nm_settings(self):
        patterns = ", ".join(map(str, self.model.nm_patterns))
        if self.initial_sparsity > 0.0:
            raise ValueError(
                f"N:M sub-nets ({patterns}) start dense and ramp to their pattern; "
                f"initial_sparsity must be 0, got {self.initial_sparsity}"
            )
        if self.mode != "nondisjoint":
            raise ValueError(
                f"N:M sub-nets ({patterns}) support mode='nondisjoint' only, got {self.mode!r}"
            )

    def get_config(self):
        """The constructor arguments: ``type(self).from_config(self.get_config())`` makes an
        equal updater (a `schedules.CosineDecay` regrow ratio is stored as its config)."""
        return {
            "frequency": self.frequency,
            "adjustment_period": self.adjustment_period,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "initial_sparsity": self.initial_sparsity,
            "mode": self.mode,
            "regrow_ratio": ratio_config(self.regrow_ratio),
            "total_steps": self.total_steps,
            "seed": self.seed,
            "verbose": self.verbose,
            "min_layer_density": self.min_layer_density,
            **self.fidelity,
        }

    def initial_masks(self):
        """With `initial_sparsity` > 0: random masks at that sparsity (per layer uniform, or
        ERK with ``initial_density="erk"``); subset mode: one mask for all sub-nets."""
        if self.initial_sparsity <= 0.0:
            return
        rng = np.random.default_rng(self.seed)
        density = 1.0 - self.initial_sparsity
        K = self.model.num_subnets
        counts = None
        if self.fidelity["initial_density"] == "erk":
            counts = layer_densities(self.model.sparse_layers, self.initial_sparsity, "erk")
        for i, layer in enumerate(self.model.sparse_layers):
            shape = tuple(layer.shared_kernel.shape)
            size = int(np.prod(shape))
            keep = int(round(density * size)) if counts is None else counts[layer.name].count
            if self.floors is not None:  # never start a layer empty
                keep = max(keep, min(self.floors[i], size))
            rows = []
            for k in range(K):
                if k == 0 or self.mode == "nondisjoint":
                    row = np.zeros(size, dtype="float32")
                    row[rng.permutation(size)[:keep]] = 1.0
                rows.append(row.reshape(shape))  # subset mode: one random mask for all
            layer.masks.assign(np.stack(rows))

    # -------------------------------------------------------------- in-graph mask update
    def new_masks(self, step, subnet, weights, rows, dense_grads):
        """Sub-net `subnet`'s update at `step` (a pure function of tensors): prunes and regrows
        its masks from the shared kernels `weights` and the dense gradients of its kernels.
        `rows`: every sub-net's masks, [K, *kernel] per layer. Returns the new rows (in subset
        mode, sparser sub-nets are re-nested too)."""
        model = self.model
        K = model.num_subnets
        grads = [ops.cast(g, w.dtype) for g, w in zip(dense_grads, weights)]
        current = [ops.cast(ops.take(r, subnet, axis=0), w.dtype) for r, w in zip(rows, weights)]
        rows = [[ops.cast(r[j], w.dtype) for j in range(K)] for r, w in zip(rows, weights)]
        # The schedules' value at this step: the sparsity, or for N:M the fraction of groups.
        target = ops.take(ops.stack([s.sparsity(step) for s in self.schedules]), subnet)
        ratio = self.ratio_schedule(step)
        if self.fidelity["regrow_gradient"] == "masked":
            grads = [g * m for g, m in zip(grads, current)]
        if model.nm_patterns is not None:
            # One branch per sub-net: each pattern has its own (static) group shape.
            level = self.fidelity["nm_regrowth"]
            branches = [
                lambda p=p: nm_lib.update_masks(weights, current, grads, p, target, ratio,
                                                regrowth=level)
                for p in model.nm_patterns
            ]
            new = ops.switch(subnet, branches)
        else:
            new = self._unstructured_masks(subnet, weights, current, grads, target, ratio, rows)
        for i in range(len(weights)):
            for j in range(K):
                rows[i][j] = ops.where(subnet == j, new[i], rows[i][j])
        if self.mode == "subset":
            for j in range(1, K):
                nested = mask_lib.nest_within(
                    weights, [r[j] for r in rows], [r[j - 1] for r in rows], self.floors
                )
                for i in range(len(weights)):
                    rows[i][j] = ops.where(subnet < j, nested[i], rows[i][j])
        return [ops.stack(layer_rows) for layer_rows in rows]

    def _unstructured_masks(self, subnet, weights, current, grads, sparsity, ratio, rows):
        """Steps A (global magnitude, to `sparsity`) and B (death/regrow) of the module
        docstring for sub-net `subnet` (in subset mode, k > 0 prunes within its parent)."""
        density = 1.0 - sparsity
        ranked = current
        if self.fidelity["ranking"] == "all":
            ranked = [ops.ones_like(m) for m in current]
        pruned = mask_lib.global_magnitude_prune(weights, ranked, density, self.floors)
        new = [mask_lib.death_regrow(w, m, g, ratio) for w, m, g in zip(weights, pruned, grads)]
        if self.mode == "subset" and len(rows[0]) > 1:
            parent = [ops.take(ops.stack(r), ops.maximum(subnet - 1, 0), axis=0) for r in rows]
            within = mask_lib.global_magnitude_prune(weights, parent, density, self.floors)
            new = [ops.where(subnet > 0, b, a) for a, b in zip(new, within)]
        return new


class Nested(GraNet):
    """`GraNet` with sparser masks nested in denser ones (``mode="subset"``)."""

    name = "nested"

    def __init__(self, **config):
        mode = config.pop("mode", "subset")
        if mode != "subset":
            raise ValueError(f"updater 'nested' is GraNet(mode='subset'); got mode={mode!r}")
        super().__init__(mode="subset", **config)


class NM(GraNet):
    """`GraNet` on N:M structured sub-nets (``ASTModel(..., nm=[...])``; `GraNet` does the same
    there): refuses a model with unstructured sub-nets."""

    name = "nm"

    def _configure(self, total_steps):
        if self.model.nm_patterns is None:
            raise ValueError("the 'nm' updater needs N:M sub-nets: build the model with "
                             "ASTModel(..., nm=[...])")
        super()._configure(total_steps)
