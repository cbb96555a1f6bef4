"""Layer densities of a sparse sub-net: uniform, Erdos-Renyi-Kernel (ERK) or a custom map.

``"uniform"``: every layer at the target density. ``"erk"`` (as in RigL): density_l = eps *
sum(shape_l) / prod(shape_l), eps chosen so the non-zero count matches the target; a layer that
would exceed density 1 is made dense and eps re-solved for the rest, until none exceeds 1. A
dict ``{layer name: density}`` sets each layer. Per-layer counts are exact integers: uniform
and ERK apportion ``round((1 - s) * N)`` non-zeros (N: all prunable kernel entries) by largest
remainder, so the sub-net's overall sparsity is exact; a dict gives ``round(density * size)``.
"""

from __future__ import annotations

import collections
import math

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


def check_distribution(distribution):
    items = distribution if isinstance(distribution, (list, tuple)) else [distribution]
    for item in items:
        if not isinstance(item, dict) and item not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown layer-density distribution {item!r}; use one of "
                f"{', '.join(DISTRIBUTIONS)}, a dict {{layer name: density}} or a list of "
                "them (one per sub-net)"
            )
