"""Fidelity options (keras_ast.fidelity): each option's two behaviours differ exactly as the
README's table "keras_ast / paper / authors' code" says, and the preset round-trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ast
from conftest import compile_ast, random_masks, tiny_cnn
from keras_ast import correction, fidelity, nm
from keras_ast.updaters import layer_densities


def _dense_model(kernel, sparsities=(0.5,), **kwargs):
    """One prunable Dense layer "fc" (no bias) holding `kernel`."""
    inputs = keras.Input((kernel.shape[0],))
    plain = keras.Model(inputs, keras.layers.Dense(kernel.shape[1], use_bias=False,
                                                   name="fc")(inputs))
    model = keras_ast.ASTModel.from_model(plain, list(sparsities), **kwargs)
    model.network.get_layer("fc").shared_kernel.assign(kernel)
    return model


def _update(model, pruner, step, grad, subnet=0, total_steps=100):
    """Runs one mask update of `subnet` at `step` with dense gradient `grad`."""
    pruner.set_model(model)
    pruner.configure(total_steps=total_steps)
    pruner.update(model, tf.constant(step, "int64"), tf.constant(subnet), [tf.constant(grad)])
    return model.masks(subnet)["fc"]


# An 8x1 kernel: |W| = 8, 7, ..., 1 from the top.
W = np.arange(8, 0, -1, dtype="float32").reshape(8, 1)


@pytest.mark.parametrize("ranking", ["active", "all"])
def test_ranking_domain(ranking):
    """The mask keeps rows 2..7 (|W| 6..1); the update prunes to 50 % (4 of 8) without
    death/regrowth. "active" ranks the 6 active rows (keeps |W| 6, 5, 4, 3); "all" ranks all 8
    shared weights and brings back the two largest, inactive ones (|W| 8, 7)."""
    model = _dense_model(W, sparsities=(0.5,))
    model.network.get_layer("fc").masks.assign(
        np.array([0, 0, 1, 1, 1, 1, 1, 1], "float32").reshape(1, 8, 1))
    pruner = keras_ast.PruneRegrow(frequency=10, adjustment_period=0, end_step=10,
                                   regrow_ratio=(0.0, 0.0), ranking=ranking)
    mask = _update(model, pruner, 10, np.zeros((8, 1), "float32"))[:, 0]
    expected = [0, 0, 1, 1, 1, 1, 0, 0] if ranking == "active" else [1, 1, 1, 1, 0, 0, 0, 0]
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("regrow_gradient", ["dense", "masked"])
def test_regrow_gradient(regrow_gradient):
    """Active rows 0..3 (at 50 %, no pruning to do), ratio ~0.5 -> 2 deaths (|W| 5, 6: rows 3
    and 2). The dense gradient is largest on never-active rows 6, 7: "dense" regrows them;
    "masked" zeroes the gradient outside the mask, so only the two just-dropped rows have a
    non-zero score and come back."""
    model = _dense_model(W, sparsities=(0.5,))
    model.network.get_layer("fc").masks.assign(
        np.array([1, 1, 1, 1, 0, 0, 0, 0], "float32").reshape(1, 8, 1))
    pruner = keras_ast.PruneRegrow(frequency=10, adjustment_period=0, end_step=10,
                                   regrow_ratio=(0.5, 0.5), regrow_gradient=regrow_gradient)
    grad = np.array([0.1, 0.1, 0.2, 0.2, 0, 0, 9, 8], "float32").reshape(8, 1)
    mask = _update(model, pruner, 10, grad)[:, 0]
    expected = [1, 1, 0, 0, 0, 0, 1, 1] if regrow_gradient == "dense" else [1, 1, 1, 1, 0, 0, 0, 0]
    np.testing.assert_array_equal(mask, expected)


def test_offset_unit_counts_global_or_own_steps():
    model = _dense_model(np.ones((8, 4), "float32"), sparsities=(0.5, 0.7, 0.9))
    first = {}
    for unit in ("global", "subnet"):
        pruner = keras_ast.PruneRegrow(frequency=100, adjustment_period=10, begin_step=5,
                                       end_step=500, offset_unit=unit)
        pruner.set_model(model)
        pruner.configure(total_steps=1000)
        first[unit] = [s.first_update for s in pruner.schedules]
    assert first == {"global": [5, 15, 25], "subnet": [5, 35, 65]}


@pytest.mark.parametrize("initial_density", ["uniform", "erk"])
def test_initial_density(initial_density):
    model = keras_ast.ASTModel.from_model(tiny_cnn(width=8), [0.9, 0.95])
    pruner = keras_ast.PruneRegrow(initial_sparsity=0.8, initial_density=initial_density)
    pruner.set_model(model)
    pruner.initial_masks()
    if initial_density == "erk":
        expected = {n: d.count for n, d in layer_densities(model.sparse_layers, 0.8,
                                                           "erk").items()}
        # ERK differs from uniform on this model (the small classifier is denser).
        assert len({d.density for d in layer_densities(model.sparse_layers, 0.8,
                                                       "erk").values()}) > 1
    else:
        expected = {layer.name: round(0.2 * layer.masks.shape[1:].num_elements())
                    for layer in model.sparse_layers}
    for k in range(2):
        counts = {name: int(m.sum()) for name, m in model.masks(k).items()}
        assert counts == expected


def test_nm_regrowth_group_level():
    """16 rows (4 groups of M = 4 along the input axis) x 2 columns: 8 groups. fraction 0.5,
    "group": every layer's own round(0.5 * 8) = 4 groups with the smallest summed |W| are 2:4,
    each keeping its 2 largest |W| (the gradient plays no part); "element" regrows by gradient
    inside the N:M groups, so the two differ."""
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(16, 2)).astype("float32")
    grad = rng.normal(size=(16, 2)).astype("float32") * 10
    pattern = nm.NMPattern(zeros=2, group=4)
    current = [tf.ones_like(kernel)]
    group = nm.update_masks([kernel], current, [grad], pattern, 0.5, 0.5,
                            regrowth="group")[0].numpy()
    element = nm.update_masks([kernel], current, [grad], pattern, 0.5, 0.5)[0].numpy()
    groups = nm.to_groups(group, 4).numpy()
    magnitude = nm.to_groups(np.abs(kernel), 4).numpy()
    sparse = groups.sum(-1) == 2
    assert sparse.sum() == 4 and (groups.sum(-1)[~sparse] == 4).all()
    # The sparse groups are the 4 with the smallest summed |W|.
    assert set(np.flatnonzero(sparse)) == set(np.argsort(magnitude.sum(-1))[:4])
    # Inside each, the 2 largest |W| survive.
    for g in np.flatnonzero(sparse):
        assert set(np.flatnonzero(groups[g])) == set(np.argsort(-magnitude[g])[:2])
    assert not np.array_equal(group, element)


def _two_steps(inactive_bn="frozen", gc_projection="masked", momentum=0.9):
    """K = 2 tiny CNN, independent random masks: step 0 trains sub-net 0, step 1 sub-net 1.
    Returns (model, variables before step 1, after step 1)."""
    model = keras_ast.ASTModel.from_model(tiny_cnn(width=8), [0.5, 0.7],
                                          inactive_bn=inactive_bn, gc_projection=gc_projection)
    random_masks(model, seed=3)
    compile_ast(model, lr=0.1, momentum=momentum)
    from keras_ast.data import load_digits_arrays

    split = load_digits_arrays(seed=0)
    x, y = split.x_train[:64], split.y_train[:64]
    model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0, shuffle=False)
    before = {v.path: v.numpy().copy() for v in model.variables}
    model.fit(x[32:], y[32:], batch_size=32, epochs=1, verbose=0, shuffle=False)
    after = {v.path: v.numpy().copy() for v in model.variables}
    return model, before, after


def test_inactive_bn_frozen_or_moved_by_momentum():
    """Step 1 trains sub-net 1: sub-net 0's BN copy (row 0) got momentum at step 0. Frozen: it
    does not move; zero_grad: it moves by momentum * (its step-0 update)."""
    for option, moves in (("frozen", False), ("zero_grad", True)):
        model, before, after = _two_steps(inactive_bn=option)
        gamma = [p for p in before if p.endswith("bn1/gamma")][0]
        row0_change = np.abs(after[gamma][0] - before[gamma][0]).max()
        assert (row0_change > 0) == moves, (option, row0_change)
        assert np.abs(after[gamma][1] - before[gamma][1]).max() > 0  # the active copy trains


def test_gc_projection_full_leaves_the_subnet():
    """The corrected gradient itself: with the masked projection it is zero outside m_k; the
    paper's full-h projection puts entries there whenever a conflict is corrected."""
    rng = np.random.default_rng(1)
    mask = (rng.random((6, 5)) < 0.5).astype("float32")
    g = rng.normal(size=(6, 5)).astype("float32") * mask
    h = -g + 0.3 * rng.normal(size=(6, 5)).astype("float32")  # conflicting: g.h < 0
    masked, stats = correction.project([g], [h], masks=[mask])
    full, _ = correction.project([g], [h], masks=None)
    assert float(stats.conflict) == 1.0
    outside = mask == 0
    assert np.abs(np.asarray(masked[0])[outside]).max() == 0.0
    assert np.abs(np.asarray(full[0])[outside]).max() > 0.0
    # Both remove the conflict with their own reference: g'.(m h) = 0, g'.h = 0.
    np.testing.assert_allclose(np.sum(np.asarray(masked[0]) * h * mask), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.sum(np.asarray(full[0]) * h), 0.0, atol=1e-5)


def test_gc_projection_option_reaches_the_step():
    """In training (momentum 0, no weight decay): step 1 (sub-net 1, corrected against step
    0's gradient, which lives on m_0) changes kernel entries outside m_1 only with the full
    projection."""
    changed = {}
    for option in ("masked", "full"):
        model, before, after = _two_steps(gc_projection=option, momentum=0.0)
        assert model.gradient_statistics()[1]["corrected_steps"] == 1.0
        changed[option] = max(
            np.abs(after[layer.shared_kernel.path] - before[layer.shared_kernel.path])[
                model.masks(1)[layer.name] == 0].max()
            for layer in model.sparse_layers)
    assert changed["masked"] == 0.0 and changed["full"] > 0.0


def test_authors_code_preset_round_trips(tmp_path):
    options = fidelity.preset("authors_code")
    model = keras_ast.ASTModel.from_model(tiny_cnn(width=8), [0.5, 0.7], **options.model)
    compile_ast(model)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert (loaded.inactive_bn, loaded.gc_projection) == ("zero_grad", "full")
    pruner = keras_ast.PruneRegrow(**options.updater)
    again = keras_ast.PruneRegrow.from_config(pruner.get_config())
    assert again.fidelity == options.updater
    assert fidelity.preset("default").updater == keras_ast.PruneRegrow().fidelity
    with pytest.raises(ValueError, match="unknown fidelity preset"):
        fidelity.preset("paper")
    with pytest.raises(ValueError, match="unknown ranking"):
        keras_ast.PruneRegrow(ranking="global")
    with pytest.raises(ValueError, match="unknown gc_projection"):
        keras_ast.ASTModel.from_model(tiny_cnn(width=8), [0.5], gc_projection="paper")
