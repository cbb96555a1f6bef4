"""Mask updaters: RigL, SET and static sparse training on the AST engine.

The shape of JaxPruner's algorithms and tfmot's pruning callbacks: one small base class,
`MaskUpdater`, that draws the initial masks from a layer-density distribution and runs one
mask update over tensors inside the compiled step; per-algorithm subclasses only say how to
score the weights to drop and the weights to grow. They are `PruneRegrow` callbacks (the same
hook into `ASTModel`, the same update timing: sub-net k's j-th update is scheduled at
``begin_step + k * adjustment_period + j * frequency`` and runs at the first step at or after it
where sub-net k is active), so any of them goes wherever `PruneRegrow` goes::

    model.fit(train, epochs=..., callbacks=[keras_ast.updaters.get("rigl", frequency=100)])

With K = 1 this is plain single-model sparse training; with K > 1 every sub-net has its own
masks, at its own sparsity, updated at its own staggered times.

Layer densities (`layer_densities`): ``"uniform"`` (every layer at the target density),
``"erk"`` (Erdos-Renyi-Kernel, as in RigL: density_l = eps * sum(shape_l) / prod(shape_l), eps
chosen so the non-zero count matches the target; a layer that would exceed density 1 is made
dense and eps re-solved for the rest, until none exceeds 1), or a dict ``{layer name:
density}``. Per-layer counts are exact integers: uniform and ERK apportion
``round((1 - s) * N)`` non-zeros (N: all prunable kernel entries) by largest remainder, so the
sub-net's overall sparsity is exact; a dict gives ``round(density * size)`` per layer.

Updaters (`get(name, **config)`):
  granet  today's `PruneRegrow` (gradual magnitude pruning + death/regrowth, nondisjoint).
  nested  `PruneRegrow(mode="subset")`: sparser masks nested in denser ones.
  rigl    `RigL`: masks start at the target sparsity (from the distribution) and keep every
          layer's count; each update drops the fraction r of a layer's active weights with the
          smallest |W| and grows as many inactive ones (inactive before the update, so not the
          just-dropped ones) with the largest dense |gradient|. r decays by cosine from 0.3 to 0
          at `end_step` (default 75% of training), after which the masks stay fixed.
  set     `SET`: the same, but grows uniformly at random among the inactive weights
          (stateless: hashed from (seed, layer, step, position), so a resumed run draws the
          same, with or without XLA).
  static  `Static`: the initial masks, never changed (static sparse training).

A regrown weight keeps its current value of the shared kernel (it may be in use by another
sub-net), as in `PruneRegrow`; RigL's paper zeroes it (with K = 1 the value is whatever the
weight had when it was last dropped, decayed by weight decay and momentum since).
"""

from __future__ import annotations

import collections
import math

import numpy as np
from keras import ops

from keras_ast import masks as mask_lib
from keras_ast import schedules
from keras_ast.callbacks import PruneRegrow, ScheduleError, _as_ratio_schedule

DISTRIBUTIONS = ("uniform", "erk")

LayerDensity = collections.namedtuple("LayerDensity", ["density", "count", "size"])


# ------------------------------------------------------------------------ layer densities
def _shapes(layers):
    """{layer name: kernel shape} of sparse layers (or of (name, shape) pairs)."""
    shapes = {}
    for layer in layers:
        if isinstance(layer, tuple):
            name, shape = layer
        else:
            name, shape = layer.name, layer.shared_kernel.shape
        shapes[name] = tuple(int(d) for d in shape)
    return shapes


def erk_densities(shapes, density):
    """Erdos-Renyi-Kernel densities {name: density} for kernels `shapes` ({name: shape}) at
    overall `density` (RigL's ``get_sparsities(..., "erdos_renyi_kernel")``).

    density_l = eps * sum(shape_l) / prod(shape_l) with eps such that sum_l density_l * size_l
    = density * N. While the largest density exceeds 1, the layers with the largest raw ratio
    are made dense (density 1) and eps is solved again for the others.
    """
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / sizes[name] for name, shape in shapes.items()}
    budget = density * sum(sizes.values())
    dense = set()
    eps = 0.0
    while len(dense) < len(shapes):
        free = [name for name in shapes if name not in dense]
        eps = (budget - sum(sizes[n] for n in dense)) / sum(raw[n] * sizes[n] for n in free)
        top = max(raw[n] for n in free)
        if eps * top <= 1.0:
            break
        dense.update(n for n in free if raw[n] == top)
    return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}


def _apportion(reals, sizes, total):
    """Integers close to `reals` (each in [0, size]) summing to `total`: floors, then one more
    for the largest fractional parts (ties: the earlier layer)."""
    counts = [min(max(int(math.floor(r)), 0), s) for r, s in zip(reals, sizes)]
    order = sorted(range(len(reals)), key=lambda i: (-(reals[i] - counts[i]), i))
    missing = total - sum(counts)
    for i in order:
        if missing <= 0:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
            missing -= 1
    return counts


def layer_densities(layers, sparsity=None, distribution="uniform"):
    """Per-layer densities and exact non-zero counts of one sub-net.

    Args:
      layers: the sparse layers (``ASTModel.sparse_layers``: each has ``name`` and
        ``shared_kernel``), or (name, kernel shape) pairs.
      sparsity: the sub-net's target sparsity over all of them (not used with a dict).
      distribution: "uniform", "erk" or {layer name: density in (0, 1]} naming every layer.

    Returns:
      {layer name: LayerDensity(density, count, size)} in layer order. For "uniform" and "erk"
      the counts sum to exactly ``round((1 - sparsity) * N)``; a dict gives
      ``round(density * size)``.
    """
    shapes = _shapes(layers)
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    if isinstance(distribution, dict):
        names = set(distribution)
        if names != set(shapes):
            raise ValueError(
                f"a custom layer-density dict must name every prunable layer: missing "
                f"{sorted(set(shapes) - names)}, unknown {sorted(names - set(shapes))}"
            )
        result = {}
        for name in shapes:
            d = float(distribution[name])
            if not 0.0 < d <= 1.0:
                raise ValueError(f"density of layer {name!r} must be in (0, 1], got {d!r}")
            result[name] = LayerDensity(d, int(round(d * sizes[name])), sizes[name])
        return result
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown layer-density distribution {distribution!r}; use one of "
            f"{', '.join(DISTRIBUTIONS)} or a dict {{layer name: density}}"
        )
    if sparsity is None or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    density = 1.0 - float(sparsity)
    if distribution == "uniform":
        densities = {name: density for name in shapes}
    else:
        densities = erk_densities(shapes, density)
    names = list(shapes)
    total = int(round(density * sum(sizes.values())))
    counts = _apportion([densities[n] * sizes[n] for n in names], [sizes[n] for n in names],
                        total)
    return {n: LayerDensity(densities[n], c, sizes[n]) for n, c in zip(names, counts)}


def _check_distribution(distribution):
    items = distribution if isinstance(distribution, (list, tuple)) else [distribution]
    for item in items:
        if not isinstance(item, dict) and item not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown layer-density distribution {item!r}; use one of "
                f"{', '.join(DISTRIBUTIONS)}, a dict {{layer name: density}} or a list of "
                "them (one per sub-net)"
            )


# ------------------------------------------------------------------------------ updaters
class MaskUpdater(PruneRegrow):
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
        _check_distribution(distribution)
        if isinstance(drop_fraction, (int, float)):
            drop_fraction = (float(drop_fraction), float(drop_fraction))
        super().__init__(frequency=frequency, adjustment_period=adjustment_period,
                         begin_step=begin_step, end_step=end_step, initial_sparsity=0.0,
                         mode="nondisjoint", regrow_ratio=drop_fraction,
                         total_steps=total_steps, seed=seed, verbose=verbose)
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
        self.ratio_schedule = _as_ratio_schedule(self.regrow_ratio, end_step)
        self.budgets = [
            layer_densities(model.sparse_layers, s, self.subnet_distribution(k, K))
            for k, s in enumerate(model.sparsities)
        ]
        self.total_steps_planned = total_steps

    def get_config(self):
        ratio = self.regrow_ratio
        if isinstance(ratio, schedules.CosineDecay):
            ratio = ratio.get_config()
        elif not isinstance(ratio, dict):
            ratio = tuple(float(r) for r in ratio)
        distribution = self.distribution
        if isinstance(distribution, tuple):
            distribution = list(distribution)
        return {
            "frequency": self.frequency,
            "adjustment_period": self.adjustment_period,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "distribution": distribution,
            "drop_fraction": ratio,
            "total_steps": self.total_steps,
            "seed": self.seed,
            "verbose": self.verbose,
        }

    def signature(self):
        return (type(self).__name__, self.seed, *super().signature())

    # --------------------------------------------------------------- initial masks
    def on_train_begin(self, logs=None):
        if int(self.model.iteration.numpy()) == 0:
            self.initial_masks()

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


class RigL(MaskUpdater):
    """RigL (Evci et al. 2020): drop the smallest |W|, grow the largest dense |gradient|."""

    name = "rigl"

    def drop_scores(self, weight, mask, gradient, step, layer_index):
        return ops.abs(weight)

    def grow_scores(self, weight, mask, gradient, step, layer_index):
        return ops.abs(gradient)


class SET(MaskUpdater):
    """SET (Mocanu et al. 2018): drop the smallest |W|, grow uniformly at random."""

    name = "set"

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


class Static(MaskUpdater):
    """Static sparse training: the initial masks from the distribution, never updated."""

    name = "static"

    def __init__(self, distribution="uniform", seed=0, verbose=0, total_steps=None):
        super().__init__(distribution=distribution, drop_fraction=0.0, total_steps=total_steps,
                         seed=seed, verbose=verbose)

    def _configure(self, total_steps):
        model = self.model
        if model.nm_patterns is not None:
            raise ValueError("the 'static' updater makes unstructured masks; N:M sub-nets need "
                             "the granet updater")
        K = model.num_subnets
        self.schedules = []
        self.ratio_schedule = schedules.CosineDecay(0.0, 0.0, 1)
        self.budgets = [
            layer_densities(model.sparse_layers, s, self.subnet_distribution(k, K))
            for k, s in enumerate(model.sparsities)
        ]
        self.total_steps_planned = total_steps

    def _planned_steps(self, params):
        steps, epochs = params.get("steps"), params.get("epochs")
        if self.total_steps is not None:
            return int(self.total_steps)
        return int(steps or 0) * int(epochs or 0)

    def get_config(self):
        return {"distribution": self.distribution, "seed": self.seed, "verbose": self.verbose,
                "total_steps": self.total_steps}

    def is_due(self, step, subnet, window):
        return ops.convert_to_tensor(False)

    def new_masks(self, step, subnet, weights, rows, dense_grads):
        return list(rows)


# ------------------------------------------------------------------------------ registry
UPDATERS = ("granet", "nested", "rigl", "set", "static")
_CLASSES = {"rigl": RigL, "set": SET, "static": Static}
_PRUNE_REGROW_MODES = {"granet": "nondisjoint", "nested": "subset"}


def get(identifier, **config):
    """An updater callback by name: ``get("rigl", frequency=100, distribution="erk")``.

    `identifier` is one of `UPDATERS` or a `serialize` dict ({"name", "config"}); `config`
    (keyword arguments of the class) is added to / overrides the dict's. "granet" is
    ``PruneRegrow(**config)`` (today's default), "nested" ``PruneRegrow(mode="subset",
    **config)``.
    """
    if isinstance(identifier, dict):
        config = {**identifier.get("config", {}), **config}
        identifier = identifier.get("name")
    name = identifier.lower() if isinstance(identifier, str) else identifier
    if name in _PRUNE_REGROW_MODES:
        mode = _PRUNE_REGROW_MODES[name]
        if config.get("mode", mode) != mode:
            raise ValueError(f"updater {name!r} is PruneRegrow(mode={mode!r}); got "
                             f"mode={config['mode']!r}")
        regrow = config.get("regrow_ratio")
        if isinstance(regrow, list):
            config["regrow_ratio"] = tuple(regrow)
        return PruneRegrow(**{**config, "mode": mode})
    if name not in _CLASSES:
        raise ValueError(f"unknown updater {identifier!r}; use one of {', '.join(UPDATERS)}")
    return _CLASSES[name](**config)


def name_of(updater):
    """The registry name of an updater callback."""
    if isinstance(updater, MaskUpdater):
        return updater.name
    if isinstance(updater, PruneRegrow):
        return {v: k for k, v in _PRUNE_REGROW_MODES.items()}[updater.mode]
    raise TypeError(f"not a mask updater: {type(updater).__name__}")


def serialize(updater):
    """{"name": registry name, "config": get_config()}: ``get(serialize(u))`` remakes `u`."""
    return {"name": name_of(updater), "config": updater.get_config()}


__all__ = [
    "DISTRIBUTIONS", "LayerDensity", "MaskUpdater", "PruneRegrow", "RigL", "SET", "ScheduleError", "Static",
    "UPDATERS", "erk_densities", "get", "layer_densities", "name_of", "serialize",
]
