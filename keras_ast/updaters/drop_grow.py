"""Drop-and-grow updaters that keep every layer's count: `RigL`, `SET` and `Static`.

Each sub-net starts at its target sparsity, with masks drawn from a layer-density
distribution (`keras_ast.updaters.densities`); each update drops the fraction r of a layer's
active weights with the lowest drop score and grows as many inactive ones (inactive before the
update, so not the just-dropped ones) with the highest grow score. r decays by cosine from 0.3
to 0 at `end_step` (default 75 % of training), after which the masks stay fixed. Sub-net k's
j-th update is scheduled at ``begin_step + k * adjustment_period + j * frequency`` and runs at
the first step at or after it where sub-net k is active.

  RigL    drop the smallest |W|, grow the largest dense |gradient| (Evci et al. 2020).
  SET     drop the smallest |W|, grow uniformly at random (Mocanu et al. 2018); stateless:
          hashed from (seed, layer, step, position), so a resumed run draws the same, with or
          without XLA.
  Static  the initial masks, never changed.

A regrown weight keeps its current value of the shared kernel (it may be in use by another
sub-net), as in `GraNet`; RigL's paper zeroes it (with K = 1 the value is whatever the weight
had when it was last dropped, decayed by weight decay and momentum since).
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from keras_ast import masks as mask_lib
from keras_ast import schedules
from keras_ast.updaters.base import MaskUpdater, as_ratio_schedule, ratio_config
from keras_ast.updaters.densities import check_distribution, layer_densities


class DropAndGrow(MaskUpdater):
    """Base class: masks drawn from a layer-density distribution, then drop-and-grow updates
    that keep every layer's count (subclasses: `RigL`, `SET`, `Static`).

    Args:
      frequency: iterations between two updates of one sub-net.
      adjustment_period: iterations between the updates of consecutive sub-nets (K > 1);
        default ``frequency // K``. Needs ``(K - 1) * adjustment_period < frequency``.
      begin_step: iteration of the first update of sub-net 0.
      end_step: no update is scheduled after ``end_step`` (+ the sub-net's shift); default
        ``round(0.75 * total steps)``. The drop fraction decays to its final value there.
      distribution: "uniform", "erk", {layer name: density}, or a list of one of these per
        sub-net (a dict needs a list when K > 1: each sub-net has its own sparsity).
      drop_fraction: a `schedules.CosineDecay`, (initial, final) decayed by cosine from step 0
        to `end_step`, or one number (constant).
      total_steps: the run's total iterations; default epochs * steps per epoch from ``fit``.
      seed: seed of the initial masks (and of SET's random growth).
      verbose: 1 prints each sub-net's sparsity at the end of every epoch.

    Subclasses define `drop_scores` and `grow_scores`.
    """

    name = None  # the registry name

    def __init__(self, frequency=100, adjustment_period=None, begin_step=0, end_step=None,
                 distribution="uniform", drop_fraction=(0.3, 0.0), total_steps=None, seed=0,
                 verbose=0):
        check_distribution(distribution)
        if isinstance(drop_fraction, (int, float)):
            drop_fraction = (float(drop_fraction), float(drop_fraction))
        super().__init__(total_steps=total_steps, seed=seed, verbose=verbose)
        self._set_timing(frequency, adjustment_period, begin_step, end_step)
        self.regrow_ratio = drop_fraction
        self.distribution = distribution
        self.budgets = None

    @property
    def drop_fraction(self):
        return self.regrow_ratio

    # ----------------------------------------------------------------- configuration
    def subnet_distribution(self, k, num_subnets):
        """The layer-density distribution of sub-net k."""
        if isinstance(self.distribution, (list, tuple)):
            if len(self.distribution) != num_subnets:
                raise ValueError(
                    f"{len(self.distribution)} layer-density distributions for "
                    f"{num_subnets} sub-nets; give one per sub-net"
                )
            return self.distribution[k]
        if isinstance(self.distribution, dict) and num_subnets > 1:
            raise ValueError(
                f"one layer-density dict for {num_subnets} sub-nets of different sparsities; "
                "give a list of dicts, one per sub-net"
            )
        return self.distribution

    def _configure(self, total_steps):
        model = self.model
        if model.nm_patterns is not None:
            raise ValueError(
                f"the {self.name!r} updater makes unstructured masks; N:M sub-nets "
                f"({', '.join(map(str, model.nm_patterns))}) need the granet updater"
            )
        K = model.num_subnets
        end_step = self.end_step
        if end_step is None:
            end_step = max(self.begin_step + 1, round(0.75 * total_steps))
        period = self.adjustment_period
        if period is None:
            period = max(1, self.frequency // K)
        self.schedules = schedules.staggered_constant_sparsities(
            model.sparsities, self.begin_step, end_step, self.frequency, period)
        self.ratio_schedule = as_ratio_schedule(self.regrow_ratio, end_step)
        self._set_budgets()

    def _set_budgets(self):
        """Every sub-net's per-layer counts; refuses a layer left with no weight at all (it
        would disconnect the network)."""
        model = self.model
        K = model.num_subnets
        self.budgets = [
            layer_densities(model.sparse_layers, s, self.subnet_distribution(k, K))
            for k, s in enumerate(model.sparsities)
        ]
        for k, budget in enumerate(self.budgets):
            empty = [name for name, b in budget.items() if b.count == 0]
            if empty:
                raise ValueError(
                    f"sub-net {k} ({model.sparsities[k]}) would have no weight at all in "
                    f"layer(s) {', '.join(empty)}; use distribution='erk', a lower sparsity, "
                    "or a dict with a larger density for them"
                )

    def get_config(self):
        distribution = self.distribution
        if isinstance(distribution, tuple):
            distribution = list(distribution)
        return {
            "frequency": self.frequency,
            "adjustment_period": self.adjustment_period,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "distribution": distribution,
            "drop_fraction": ratio_config(self.regrow_ratio),
            "total_steps": self.total_steps,
            "seed": self.seed,
            "verbose": self.verbose,
        }

    # --------------------------------------------------------------- initial masks
    def initial_masks(self):
        """Assigns every sub-net random masks with its distribution's exact per-layer counts
        (a numpy generator seeded with `seed`: layer by layer, sub-net by sub-net)."""
        rng = np.random.default_rng(self.seed)
        for layer in self.model.sparse_layers:
            shape = tuple(layer.shared_kernel.shape)
            size = math.prod(shape)
            rows = []
            for budget in self.budgets:
                row = np.zeros(size, dtype="float32")
                row[rng.permutation(size)[:budget[layer.name].count]] = 1.0
                rows.append(row.reshape(shape))
            layer.masks.assign(np.stack(rows))

    # ------------------------------------------------------------ in-graph update
    def drop_scores(self, weight, mask, gradient, step, layer_index):
        """Scores of the active entries: the lowest are dropped (same shape as `weight`)."""
        raise NotImplementedError

    def grow_scores(self, weight, mask, gradient, step, layer_index):
        """Scores of the inactive entries: the highest are grown (same shape as `weight`)."""
        raise NotImplementedError

    def update_mask(self, weight, mask, gradient, fraction, step, layer_index):
        """One layer's new mask: drop floor(fraction * active) active entries with the lowest
        `drop_scores`, grow as many entries inactive before the update with the highest
        `grow_scores` (at most as many as there are). The count is unchanged."""
        inf = float("inf")
        size = math.prod(mask.shape)
        active_f = ops.sum(mask)
        active = ops.cast(active_f, "int32")
        changed = ops.cast(ops.floor(ops.cast(fraction, mask.dtype) * active_f), "int32")
        changed = ops.minimum(changed, size - active)
        on = mask > 0.5
        keep = ops.cast(self.drop_scores(weight, mask, gradient, step, layer_index), "float32")
        survivors = mask_lib.top_count(ops.where(on, keep, ops.full_like(keep, -inf)),
                                       active - changed)
        grow = ops.cast(self.grow_scores(weight, mask, gradient, step, layer_index), "float32")
        grown = mask_lib.top_count(ops.where(on, ops.full_like(grow, -inf), grow), changed)
        return ops.cast(survivors + grown, mask.dtype)

    def new_masks(self, step, subnet, weights, rows, dense_grads):
        """Drops and grows sub-net `subnet`'s masks (a pure function of tensors; `rows`: every
        sub-net's masks, [K, *kernel] per layer). Returns the new rows."""
        fraction = self.ratio_schedule(step)
        new_rows = []
        for i, (weight, row, grad) in enumerate(zip(weights, rows, dense_grads)):
            K = row.shape[0]
            mask = ops.cast(ops.take(row, subnet, axis=0), weight.dtype)
            new = self.update_mask(weight, mask, ops.cast(grad, weight.dtype), fraction, step, i)
            chosen = ops.reshape(ops.equal(ops.arange(K, dtype="int32"), subnet),
                                 (K,) + (1,) * len(mask.shape))
            new_rows.append(ops.where(chosen, ops.cast(new, row.dtype)[None], row))
        return new_rows


class RigL(DropAndGrow):
    """RigL (Evci et al. 2020): drop the smallest |W|, grow the largest dense |gradient|."""

    name = "rigl"

    def drop_scores(self, weight, mask, gradient, step, layer_index):
        return ops.abs(weight)

    def grow_scores(self, weight, mask, gradient, step, layer_index):
        return ops.abs(gradient)


class SET(DropAndGrow):
    """SET (Mocanu et al. 2018): drop the smallest |W|, grow uniformly at random."""

    name = "set"
    needs_dense_gradient = False  # random growth

    def drop_scores(self, weight, mask, gradient, step, layer_index):
        return ops.abs(weight)

    def grow_scores(self, weight, mask, gradient, step, layer_index):
        # Stateless: the numbers depend on (seed, layer, step, position) only, so a resumed
        # run (or a retrace) draws the same, with or without XLA.
        return random_scores(tuple(weight.shape), self.seed, layer_index, step)


_M32 = 0xFFFFFFFF


def _mix32(x):
    """A 32-bit integer hash (two xor-shift-multiply rounds) of int64 values in [0, 2^32);
    the products stay below 2^63, so nothing overflows."""
    for _ in range(2):
        x = ops.bitwise_and(ops.bitwise_xor(x, ops.right_shift(x, 16)) * 0x45D9F3B, _M32)
    return ops.bitwise_xor(x, ops.right_shift(x, 16))


def random_scores(shape, seed, layer_index, step):
    """Uniform [0, 1) float32 numbers (multiples of 2^-24) that are a hash of (seed, layer,
    step, position): the same in every run, retrace, resumed run and with or without XLA
    (TensorFlow's stateless random ops give other numbers under XLA)."""
    step = ops.cast(step, "int64")
    key = _mix32(ops.convert_to_tensor((int(seed) * 1_000_003 + int(layer_index)) & _M32,
                                       "int64"))
    key = _mix32(ops.bitwise_xor(key, ops.bitwise_and(step, _M32)))
    key = _mix32(ops.bitwise_xor(key, ops.bitwise_and(ops.right_shift(step, 32), _M32)))
    index = ops.arange(math.prod(shape), dtype="int64")
    bits = _mix32(ops.bitwise_and(index * 0x9E3779B + key, _M32))
    values = ops.cast(ops.right_shift(bits, 8), "float32") * (1.0 / (1 << 24))
    return ops.reshape(values, shape)


class Static(DropAndGrow):
    """Static sparse training: the initial masks from the distribution, never updated."""

    name = "static"
    needs_dense_gradient = False  # never updates

    def __init__(self, distribution="uniform", seed=0, verbose=0, total_steps=None):
        super().__init__(distribution=distribution, drop_fraction=0.0, total_steps=total_steps,
                         seed=seed, verbose=verbose)

    def _configure(self, total_steps):
        model = self.model
        if model.nm_patterns is not None:
            raise ValueError("the 'static' updater makes unstructured masks; N:M sub-nets need "
                             "the granet updater")
        self.schedules = []
        self.ratio_schedule = schedules.CosineDecay(0.0, 0.0, 1)
        self._set_budgets()

    def planned_steps(self, params):  # fixed masks: the run's length does not matter
        steps, epochs = params.get("steps"), params.get("epochs")
        if self.total_steps is not None:
            return int(self.total_steps)
        return int(steps or 0) * int(epochs or 0)

    def get_config(self):
        return {"distribution": self.distribution, "seed": self.seed, "verbose": self.verbose,
                "total_steps": self.total_steps}

    def new_masks(self, step, subnet, weights, rows, dense_grads):
        return list(rows)
