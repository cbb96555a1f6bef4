"""Mask updaters (keras_ast.updaters): layer densities by hand, exact counts, RigL / SET
selections, Static, fits with K=1 and K=3, the registry and the granet default."""

import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras_ast
from keras_ast import updaters
from conftest import compile_ast, tiny_cnn

# tiny_cnn's prunable kernels (the stem stays dense).
SHAPES = {"conv1": (3, 3, 8, 16), "conv2": (3, 3, 16, 16), "classifier": (16, 10)}
SIZES = {name: math.prod(shape) for name, shape in SHAPES.items()}  # 1152, 2304, 160
TOTAL = sum(SIZES.values())  # 3616


def _model(sparsities):
    return compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(), sparsities=sparsities))


def _configured(updater, sparsities, total_steps=100):
    model = _model(sparsities)
    updater.set_model(model)
    updater.configure(total_steps)
    return model, updater


# ------------------------------------------------------------------------ layer densities
def test_erk_caps_a_layer_at_density_one_and_resolves_the_rest_by_hand():
    # raw = sum(shape) / prod(shape): 30/1152, 38/2304, 26/160.
    # Density 0.2: budget 0.2 * 3616 = 723.2; eps = 723.2 / (30 + 38 + 26) = 7.694 gives the
    # classifier 7.694 * 26/160 = 1.25 > 1: it is made dense, then
    # eps = (723.2 - 160) / (30 + 38) = 8.282..., conv1 = eps * 30/1152, conv2 = eps * 38/2304.
    got = updaters.erk_densities(SHAPES, 0.2)
    assert 723.2 / (30 + 38 + 26) * 26 / 160 > 1.0
    eps = (723.2 - 160) / (30 + 38)
    assert got["classifier"] == 1.0
    assert got["conv1"] == pytest.approx(eps * 30 / 1152, rel=1e-12)
    assert got["conv2"] == pytest.approx(eps * 38 / 2304, rel=1e-12)
    assert sum(got[n] * SIZES[n] for n in SHAPES) == pytest.approx(723.2, rel=1e-12)


def test_erk_without_capping_by_hand():
    # Density 0.05: eps = 180.8 / 94 = 1.923; the largest density is 1.923 * 26/160 < 1.
    got = updaters.erk_densities(SHAPES, 0.05)
    eps = 0.05 * TOTAL / (30 + 38 + 26)
    assert eps * 26 / 160 < 1.0
    expected = {"conv1": eps * 30 / 1152, "conv2": eps * 38 / 2304, "classifier": eps * 26 / 160}
    for name in SHAPES:
        assert got[name] == pytest.approx(expected[name], rel=1e-12)


def test_erk_iterates_until_no_layer_exceeds_one():
    # A tiny kernel with a huge ratio and a mid one: the first round caps the tiny one, the
    # second round the mid one; the big one takes the rest.
    shapes = {"big": (64, 64), "mid": (4, 30), "tiny": (2, 2)}
    got = updaters.erk_densities(shapes, 0.3)
    budget = 0.3 * (4096 + 120 + 4)
    assert got["tiny"] == 1.0 and got["mid"] == 1.0
    assert got["big"] == pytest.approx((budget - 124) / 4096, rel=1e-12)
    # (check the hand reasoning: after capping "tiny" alone, "mid" would exceed 1)
    eps = (budget - 4) / (128 + 34)
    assert eps * 34 / 120 > 1.0


def test_layer_densities_on_the_model_erk_and_uniform_counts_are_exact():
    model = _model([0.8])
    erk = updaters.layer_densities(model.sparse_layers, 0.8, "erk")
    assert list(erk) == list(SHAPES)
    assert erk["classifier"] == updaters.LayerDensity(1.0, 160, 160)
    assert sum(v.count for v in erk.values()) == round(0.2 * TOTAL)  # 723
    for name, v in erk.items():
        assert v.size == SIZES[name]
        assert v.count in (math.floor(v.density * v.size), math.ceil(v.density * v.size))
    for s in (0.0, 0.5, 0.8, 0.9, 0.99):
        uniform = updaters.layer_densities(model.sparse_layers, s, "uniform")
        assert sum(v.count for v in uniform.values()) == round((1 - s) * TOTAL)
        for name, v in uniform.items():
            assert v.density == pytest.approx(1 - s)
            assert abs(v.count - (1 - s) * SIZES[name]) < 1.0


def test_custom_density_dict():
    densities = {"conv1": 0.25, "conv2": 0.1, "classifier": 1.0}
    got = updaters.layer_densities(list(SHAPES.items()), None, densities)
    assert {n: v.count for n, v in got.items()} == {"conv1": 288, "conv2": 230, "classifier": 160}
    with pytest.raises(ValueError, match="missing \\['classifier'\\]"):
        updaters.layer_densities(list(SHAPES.items()), None, {"conv1": 0.5, "conv2": 0.5})
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        updaters.layer_densities(list(SHAPES.items()), None, {**densities, "conv1": 0.0})
    with pytest.raises(ValueError, match="unknown layer-density distribution 'er'"):
        updaters.layer_densities(list(SHAPES.items()), 0.5, "er")


def test_initial_masks_follow_the_distribution_per_subnet():
    sparsities = [0.5, 0.7, 0.9]
    model, rigl = _configured(updaters.RigL(frequency=6, distribution="erk", seed=3),
                              sparsities)
    rigl.initial_masks()
    for k, s in enumerate(sparsities):
        budget = updaters.layer_densities(model.sparse_layers, s, "erk")
        masks = model.masks(k)
        assert {n: int(m.sum()) for n, m in masks.items()} == {
            n: v.count for n, v in budget.items()}
        assert sum(m.sum() for m in masks.values()) == round((1 - s) * TOTAL)
    # Seeded: the same seed draws the same masks, another seed others.
    first = model.masks(2)
    rigl.initial_masks()
    assert all(np.array_equal(first[n], m) for n, m in model.masks(2).items())
    rigl.seed = 4
    rigl.initial_masks()
    assert not all(np.array_equal(first[n], m) for n, m in model.masks(2).items())


def test_a_density_dict_needs_one_per_subnet_when_k_is_more_than_one():
    densities = {"conv1": 0.25, "conv2": 0.1, "classifier": 1.0}
    with pytest.raises(ValueError, match="list of dicts"):
        _configured(updaters.Static(distribution=densities), [0.5, 0.9])
    model, static = _configured(updaters.Static(distribution=[densities, "erk"]), [0.5, 0.9])
    static.initial_masks()
    assert int(model.masks(0)["conv2"].sum()) == 230


# ------------------------------------------------------------------- RigL / SET selections
def _random_layer(rng, shape=(6, 8), active=20):
    size = math.prod(shape)
    weight = rng.normal(size=shape).astype("float32")
    mask = np.zeros(size, "float32")
    mask[rng.permutation(size)[:active]] = 1.0
    # All different magnitudes, so the expected selection is unique.
    gradient = (rng.permutation(size).astype("float32") - size / 2).reshape(shape)
    return weight, mask.reshape(shape), gradient


def test_rigl_drops_the_smallest_weights_and_grows_the_largest_gradients_among_inactive():
    rng = np.random.default_rng(0)
    rigl = updaters.RigL()
    for fraction in (0.0, 0.1, 0.3, 0.5, 1.0):
        weight, mask, gradient = _random_layer(rng)
        # Make the gradient largest on the active entries: they must not be "regrown".
        gradient = np.where(mask > 0, 1000.0 + np.abs(gradient), gradient).astype("float32")
        new = ops.convert_to_numpy(rigl.update_mask(weight, mask, gradient, fraction, 0, 0))
        n = math.floor(fraction * 20)
        active = np.flatnonzero(mask.reshape(-1))
        inactive = np.flatnonzero(mask.reshape(-1) == 0)
        dropped = active[np.argsort(np.abs(weight.reshape(-1)[active]))[:n]]
        grown = inactive[np.argsort(-np.abs(gradient.reshape(-1)[inactive]))[:n]]
        expected = mask.reshape(-1).copy()
        expected[dropped] = 0.0
        expected[grown] = 1.0
        np.testing.assert_array_equal(new.reshape(-1), expected, err_msg=f"fraction {fraction}")
        assert new.sum() == 20


def test_drop_and_grow_never_exceeds_the_inactive_entries():
    # 40 of 48 active, fraction 0.5: only 8 inactive entries can grow, so only 8 are dropped.
    rng = np.random.default_rng(1)
    weight, mask, gradient = _random_layer(rng, active=40)
    for updater in (updaters.RigL(), updaters.SET()):
        new = ops.convert_to_numpy(updater.update_mask(weight, mask, gradient, 0.5, 7, 0))
        assert new.sum() == 40 and set(np.unique(new)) <= {0.0, 1.0}
        assert ((new > 0) & (mask == 0)).sum() == 8


def test_rigl_update_changes_only_the_active_subnet_with_its_dense_gradient():
    sparsities = [0.5, 0.7, 0.9]
    model, rigl = _configured(updaters.RigL(frequency=6, drop_fraction=0.3), sparsities)
    rigl.initial_masks()
    before = [model.masks(k) for k in range(3)]
    rng = np.random.default_rng(2)
    grads = [rng.normal(size=layer.shared_kernel.shape).astype("float32")
             for layer in model.sparse_layers]
    rigl.update(model, ops.convert_to_tensor(4, "int64"), ops.convert_to_tensor(1, "int32"),
                grads)
    after = [model.masks(k) for k in range(3)]
    for k in (0, 2):
        assert all(np.array_equal(before[k][n], after[k][n]) for n in before[k])
    for layer, grad in zip(model.sparse_layers, grads):
        w = ops.convert_to_numpy(layer.shared_kernel)
        expected = ops.convert_to_numpy(rigl.update_mask(w, before[1][layer.name], grad, 0.3,
                                                         4, 0))
        np.testing.assert_array_equal(after[1][layer.name], expected)
        assert after[1][layer.name].sum() == before[1][layer.name].sum()
        assert not np.array_equal(after[1][layer.name], before[1][layer.name])


def test_set_grows_uniformly_among_inactive_entries():
    """Chi-square over 400 updates of one layer: 20 inactive entries, 10 grown each time."""
    rng = np.random.default_rng(3)
    weight, mask, gradient = _random_layer(rng, shape=(5, 8), active=20)
    set_ = updaters.SET(seed=5)
    update = tf.function(set_.update_mask)
    inactive = mask.reshape(-1) == 0
    counts = np.zeros(mask.size)
    draws = 400
    for step in range(draws):
        new = ops.convert_to_numpy(update(weight, mask, gradient, 0.5,
                                          ops.convert_to_tensor(step, "int64"), 0)).reshape(-1)
        grown = (new > 0) & inactive
        assert grown.sum() == 10 and new.sum() == 20
        counts += grown
    assert counts[~inactive].sum() == 0  # only inactive entries grow (not the just dropped)
    expected = draws * 10 / 20
    chi2 = float(((counts[inactive] - expected) ** 2 / expected).sum())
    # 19 degrees of freedom (finite-population sampling only makes it smaller): the 0.1%
    # upper quantile is 43.8.
    assert chi2 < 43.8, chi2
    # Stateless: the same (seed, layer, step) draws the same, another step something else.
    a = ops.convert_to_numpy(update(weight, mask, gradient, 0.5, 7, 0))
    b = ops.convert_to_numpy(update(weight, mask, gradient, 0.5, 7, 0))
    c = ops.convert_to_numpy(update(weight, mask, gradient, 0.5, 8, 0))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_set_random_scores_are_uniform_and_the_same_under_xla():
    scores = ops.convert_to_numpy(updaters.random_scores((100, 100), 3, 1, 12345))
    assert 0.0 <= scores.min() and scores.max() < 1.0
    counts = np.histogram(scores, bins=20, range=(0.0, 1.0))[0]
    chi2 = float(((counts - 500.0) ** 2 / 500.0).sum())
    assert chi2 < 43.8, chi2  # 19 degrees of freedom, 0.1% upper quantile
    xla = tf.function(lambda step: updaters.random_scores((100, 100), 3, 1, step),
                      jit_compile=True)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(xla(tf.constant(12345, tf.int64))), scores)
    other = [ops.convert_to_numpy(updaters.random_scores((100, 100), *args))
             for args in ((4, 1, 12345), (3, 2, 12345), (3, 1, 12346), (3, 1, 2**32 + 12345))]
    for o in other:
        assert not np.array_equal(o, scores)
        assert abs(np.corrcoef(o.ravel(), scores.ravel())[0, 1]) < 0.05


# ------------------------------------------------------------------------------ training
class _MaskLog(keras.callbacks.Callback):
    """Every sub-net's masks after every training step."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def on_train_batch_end(self, batch, logs=None):
        self.masks.append([self.model.masks(k) for k in range(self.model.num_subnets)])


def _fit(name, sparsities, digits_batches, epochs=4, **config):
    x, y = digits_batches
    model = _model(sparsities)
    updater = updaters.get(name, **config)
    log = _MaskLog()
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, shuffle=False,
              callbacks=[keras_ast.PruneRegrow(updater), log])
    return model, updater, log


TIMING = {"granet": dict(frequency=6, adjustment_period=2, end_step=6),
          "nested": dict(frequency=6, adjustment_period=2, end_step=6),
          "rigl": dict(frequency=3, adjustment_period=1, distribution="erk"),
          "set": dict(frequency=3, adjustment_period=1),
          "static": dict(distribution="erk")}


@pytest.mark.parametrize("name", sorted(TIMING))
@pytest.mark.parametrize("sparsities", [[0.8], [0.5, 0.7, 0.9]], ids=["K1", "K3"])
def test_fit_with_each_updater(name, sparsities, digits_batches):
    model, updater, log = _fit(name, sparsities, digits_batches, **TIMING[name])
    assert model.iteration.numpy() == 16
    for k, s in enumerate(sparsities):
        assert model.subnet_sparsity(k) == pytest.approx(s, abs=1e-3)
    if name in ("granet", "nested"):
        return
    # Every layer of every sub-net keeps its initial count after every step, and each sub-net
    # is at its target exactly (to the one weight round() decides).
    for k, s in enumerate(sparsities):
        counts = {n: v.count for n, v in updater.budgets[k].items()}
        assert sum(counts.values()) == round((1 - s) * TOTAL)
        for step_masks in log.masks:
            assert {n: int(m.sum()) for n, m in step_masks[k].items()} == counts
        changed = [not np.array_equal(a[k]["conv2"], b[k]["conv2"])
                   for a, b in zip(log.masks, log.masks[1:])]
        if name == "static":
            assert not any(changed)
        else:
            assert any(changed)


def test_rigl_updates_stop_at_end_step_and_happen_only_when_due(digits_batches):
    # K = 3, frequency 6, shifts 0/2/4, end_step 8: sub-net k updates at its first step >= T in
    # {0, 6} + 2k (j * 6 <= 8), i.e. sub-net 0 at 0, 6; 1 at 4, 10; 2 at 5, 11; never after.
    # (A constant drop fraction: the default cosine decay reaches 0 at end_step.)
    model, _, log = _fit("rigl", [0.5, 0.7, 0.9], digits_batches, frequency=6,
                         adjustment_period=2, end_step=8, drop_fraction=0.3)
    masks = [model.masks(k) for k in range(3)]  # (masks before step 0 are the initial ones)
    changes = {k: [t for t in range(1, 16)
                   if not all(np.array_equal(log.masks[t][k][n], log.masks[t - 1][k][n])
                              for n in masks[k])]
               for k in range(3)}
    assert changes == {0: [6], 1: [4, 10], 2: [5, 11]}


@pytest.mark.parametrize("name", ["rigl", "set"])
def test_a_fit_in_two_parts_equals_one_fit(name, digits_batches):
    """Resuming (a second fit continuing the step counter) draws the same masks as one fit:
    the updaters keep no state outside the model."""
    x, y = digits_batches
    config = dict(frequency=3, adjustment_period=1, total_steps=16, seed=5)
    results = []
    for parts in ([(0, 4)], [(0, 2), (2, 4)]):
        keras.utils.set_random_seed(1234)
        model = _model([0.5, 0.7, 0.9])
        for begin, end in parts:  # a fresh callback each time, as after a restart
            model.fit(x, y, batch_size=64, initial_epoch=begin, epochs=end, verbose=0,
                      shuffle=False,
                      callbacks=[keras_ast.PruneRegrow(updaters.get(name, **config))])
        results.append([model.masks(k) for k in range(3)])
    for a, b in zip(*results):
        assert all(np.array_equal(a[n], b[n]) for n in a)


def test_static_masks_never_change_and_are_the_initial_ones(digits_batches):
    model, static, log = _fit("static", [0.5, 0.9], digits_batches, seed=7)
    first = log.masks[0]
    for step_masks in log.masks:
        for k in range(2):
            assert all(np.array_equal(first[k][n], m) for n, m in step_masks[k].items())
    again = updaters.Static(seed=7)
    again.set_model(model)
    again.configure(16)
    again.initial_masks()
    for k in range(2):
        assert all(np.array_equal(first[k][n], m) for n, m in model.masks(k).items())


def test_granet_is_prune_regrow_bit_for_bit(digits_batches):
    x, y = digits_batches
    config = dict(frequency=6, adjustment_period=2, end_step=6, initial_sparsity=0.3, seed=11)
    results = []
    for make in (lambda: keras_ast.PruneRegrow(**config),
                 lambda: keras_ast.PruneRegrow(updaters.get("granet", **config))):
        keras.utils.set_random_seed(1234)
        model = _model([0.5, 0.7, 0.9])
        model.fit(x, y, batch_size=64, epochs=3, verbose=0, shuffle=False, callbacks=[make()])
        results.append(([model.masks(k) for k in range(3)],
                        [ops.convert_to_numpy(v) for v in model.trainable_variables]))
    (masks_a, weights_a), (masks_b, weights_b) = results
    for a, b in zip(masks_a, masks_b):
        assert all(np.array_equal(a[n], b[n]) for n in a)
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------- emptied layers
@pytest.mark.parametrize("mode", ["nondisjoint", "subset"])
def test_granet_never_empties_a_layer_under_global_ranking(mode):
    """The classifier's weights are scaled far below the convs': global magnitude ranking at
    97 % would drop all of them (min_layer_density=0); the default floor keeps
    max(1, ceil(0.5 % of 160)) = 1 with the total unchanged; a bigger floor keeps more."""
    results = {}
    for floor in (0.0, 0.005, 0.02):
        keras.utils.set_random_seed(1234)
        model, updater = _configured(
            updaters.GraNet(frequency=10, adjustment_period=2, end_step=1, mode=mode,
                            min_layer_density=floor), [0.9, 0.97])
        classifier = model.get_layer("classifier")
        classifier.shared_kernel.assign(classifier.shared_kernel * 1e-4)
        grads = [ops.ones_like(layer.shared_kernel) for layer in model.sparse_layers]
        for k in range(2):
            updater.update(model, 15, k, grads)  # update j=1: the final sparsity
        counts = {k: {n: int(m.sum()) for n, m in model.masks(k).items()} for k in range(2)}
        for k, sparsity in enumerate([0.9, 0.97]):
            assert sum(counts[k].values()) == round((1 - sparsity) * TOTAL)
        results[floor] = counts
    assert results[0.0][1]["classifier"] == 0
    assert results[0.005][1]["classifier"] == 1
    assert results[0.02][1]["classifier"] == 4  # ceil(0.02 * 160)
    assert all(c >= math.ceil(0.02 * SIZES[n]) for n, c in results[0.02][1].items())


def test_floors_that_do_not_fit_the_sparsest_subnet_are_refused():
    with pytest.raises(keras_ast.ScheduleError,
                       match=r"min_layer_density=0.5 keeps at least 1808 weights over 3 layers, "
                             r"more than the 362 of the sparsest sub-net \(0.9\)"):
        _configured(updaters.GraNet(min_layer_density=0.5), [0.5, 0.9])
    with pytest.raises(ValueError, match=r"min_layer_density must be in \[0, 1\)"):
        updaters.GraNet(min_layer_density=1.0)


def test_drop_and_grow_refuses_a_distribution_that_empties_a_layer():
    with pytest.raises(keras_ast.ScheduleError,
                       match="sub-net 0 .0.5. would have no weight at all in layer.s. classifier"):
        _configured(updaters.RigL(distribution={"conv1": 0.5, "conv2": 0.5,
                                                "classifier": 0.001}), [0.5])


# ------------------------------------------------------------------------------ registry
def test_registry_names_and_errors():
    assert type(updaters.get("granet")) is updaters.GraNet
    assert type(keras_ast.PruneRegrow().updater) is updaters.GraNet
    assert updaters.get("granet").mode == "nondisjoint"
    assert updaters.get("nested").mode == "subset"
    assert type(updaters.get("nested")) is updaters.Nested
    assert type(updaters.get("nm")) is updaters.NM
    assert type(updaters.get("RigL")) is updaters.RigL
    assert type(updaters.get("set")) is updaters.SET
    assert type(updaters.get("static")) is updaters.Static
    with pytest.raises(ValueError, match="unknown updater 'snip'; use one of granet, nested, "
                                         "nm, rigl, set, static"):
        updaters.get("snip")
    with pytest.raises(ValueError, match="mode='subset'"):
        updaters.get("granet", mode="subset")
    with pytest.raises(TypeError):
        updaters.get("static", frequency=10)
    with pytest.raises(ValueError, match="unknown layer-density distribution 'ERK'"):
        updaters.get("rigl", distribution="ERK")


@pytest.mark.parametrize("name, config", [
    ("granet", dict(frequency=50, adjustment_period=5, initial_sparsity=0.2, seed=3)),
    ("nested", dict(regrow_ratio=keras_ast.CosineDecay(0.4, 0.01, 100))),
    ("rigl", dict(frequency=7, distribution="erk", drop_fraction=(0.5, 0.1), end_step=90)),
    ("set", dict(seed=9, drop_fraction=keras_ast.CosineDecay(0.2, 0.0, 50))),
    ("static", dict(distribution=[{"a": 0.5}, "erk"], seed=2)),
])
def test_get_config_round_trip(name, config):
    updater = updaters.get(name, **config)
    config_out = updater.get_config()
    again = updaters.get(updaters.serialize(updater))
    assert updaters.name_of(again) == name and type(again) is type(updater)
    assert again.get_config() == config_out
    assert type(updater).from_config(config_out).get_config() == config_out


def test_rigl_refuses_nm_subnets():
    model = compile_ast(keras_ast.ASTModel.from_model(
        tiny_cnn(), nm=keras_ast.parse_nm_list("2:4", counts="zeros")))
    rigl = updaters.RigL(frequency=4)
    rigl.set_model(model)
    with pytest.raises(keras_ast.ScheduleError, match="need the granet updater"):
        rigl.configure(100)
    nm_updater = updaters.get("nm", frequency=4, adjustment_period=1)
    nm_updater.set_model(model)
    nm_updater.configure(100)  # N:M sub-nets: fine
    nm_updater.set_model(_model([0.5]))
    with pytest.raises(keras_ast.ScheduleError, match="needs N:M sub-nets"):
        nm_updater.configure(100)


# ------------------------------------------------------------------------------ launcher
def _flags(**overrides):
    import types

    values = dict(epochs=10, update_frequency=None, adjustment_period=None,
                  prune_end_epoch=None, prune_start_epoch=0.0, initial_sparsity=0.0,
                  prune_mode="nondisjoint", seed=0, updater="granet", density="uniform")
    values.update(overrides)
    return types.SimpleNamespace(**values)


def test_launcher_default_is_todays_prune_regrow():
    from launch import runner

    # Today's construction (before --updater): frequency max(4K, steps per epoch), shift
    # frequency // (2K), pruning until 68.75% of the epochs.
    expected = keras_ast.PruneRegrow(frequency=42, adjustment_period=7, begin_step=0,
                                     end_step=288, initial_sparsity=0.0, mode="nondisjoint",
                                     total_steps=420, seed=0, verbose=1).get_config()
    flags = _flags()
    del flags.updater  # a flags object from before --updater
    for flags in (flags, _flags()):
        callback = runner._prune_callback(flags, 3, 42)
        assert type(callback) is keras_ast.PruneRegrow
        assert callback.get_config() == expected
    nested = runner._prune_callback(_flags(prune_mode="subset"), 3, 42)
    assert nested.get_config() == {**expected, "mode": "subset"}
    assert runner._prune_callback(_flags(updater="nested"), 3, 42).get_config() == \
        nested.get_config()
    assert runner.updater_name(_flags(prune_mode="subset")) == "nested"
    rigl = runner._prune_callback(_flags(updater="rigl", density="erk"), 3, 42)
    assert type(rigl) is keras_ast.PruneRegrow and type(rigl.updater) is updaters.RigL
    assert rigl.updater.get_config() == {**updaters.RigL().get_config(), "frequency": 42,
                                 "adjustment_period": 7, "distribution": "erk",
                                 "total_steps": 420, "verbose": 1}
    static = runner._prune_callback(_flags(updater="static"), 1, 42)
    assert type(static.updater) is updaters.Static and static.total_steps == 420


def _launch(*args, timeout=300):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "launch.train", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--updater=rigl", "--density=random"], "unknown --density='random'"),
    (["--density=erk"], "--density applies to --updater=rigl, set or static, not granet"),
    (["--updater=set", "--prune_mode=subset"], "--prune_mode=subset is --updater=nested"),
    (["--updater=nested", "--prune_mode=nondisjoint"], "contradicts it"),
    (["--updater=rigl", "--initial_sparsity=0.5"], "leave out --initial_sparsity"),
    (["--updater=static", "--mode=dense"], "--mode=dense trains the plain model"),
    (["--updater=set", "--nm=2:4", "--nm_counts=zeros"], "--nm sub-nets need --updater=granet"),
])
def test_launcher_updater_flag_checks(args, message):
    from launch import train

    train.FLAGS.unparse_flags()
    try:
        train.FLAGS(["train", *args])
        with pytest.raises(train.FlagError, match=re.escape(message)):
            train.check_updater_flags()
    finally:
        train.FLAGS.unparse_flags()


def test_launcher_bad_updater_fails_with_one_line(tmp_path):
    result = _launch("--updater=snip", f"--output_dir={tmp_path}/out", timeout=120)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "unknown --updater='snip'; use one of granet, nested, rigl, set, static" in lines[0]
    assert not (tmp_path / "out").exists()


def test_launcher_runs_rigl_with_erk(tmp_path):
    import json

    result = _launch("--updater=rigl", "--density=erk", "--sparsities=0.5,0.9", "--epochs=2",
                     "--update_frequency=10", "--noexport", "--notensorboard",
                     "--eval_every=0", "--verbose=0", f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["updater"] == "rigl:erk"
    for entry in summary["subnets"]:
        assert entry["measured_sparsity"] == pytest.approx(entry["target_sparsity"], abs=1e-3)


def test_readme_updater_example_runs():
    """The K=1 RigL example of docs/updaters.md, 2 epochs instead of 30."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "updaters.md").read_text()
    match = re.search(r"# Sparse training beyond AST \(updaters\)\n.*?```python\n(.*?)```",
                      text, re.S)
    assert match, "docs/updaters.md lost its updater example"
    code = match.group(1)
    assert "epochs=30" in code
    scope = {}
    exec(compile(code.replace("epochs=30", "epochs=2"), "docs/updaters.md", "exec"), scope)
    model, rigl = scope["model"], scope["rigl"]
    assert type(rigl) is updaters.RigL
    assert model.subnet_sparsity(0) == pytest.approx(0.9, abs=1e-3)
    budget = rigl.budgets[0]
    assert {n: int(m.sum()) for n, m in model.masks(0).items()} == {
        n: v.count for n, v in budget.items()}
