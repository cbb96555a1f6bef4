"""Sup-tickets (keras_ast/suptickets.py): the cases of its specification (budget split,
learning rate, CAA = mean, averaging with zeros, the budget, re-exploration, BN recalibration,
isolation of the live model, mask updates paused), a NumPy re-implementation of the
end-of-cycle steps (superpose, re-prune, recalibrate) on a tiny MLP with BatchNorm, exact
resume, and the launcher's outputs."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ast
from conftest import compile_ast, tiny_cnn
from keras_ast import checkpoint, suptickets, tf_engine
from keras_ast.data import load_digits_arrays
from keras_ast.data.stream import in_memory_source
from keras_ast.export import subnet_model
from test_resume import _Kill, _KillAt

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------- budget and lr
def test_budget_split_as_in_the_code():
    assert suptickets.budget_split(250, 0.1, 8) == (226, 24, 3)
    assert suptickets.budget_split(160, 0.1, 8) == (144, 16, 2)
    assert suptickets.budget_split(100, 0.05, 8) == (100, 0, 0)  # no cycle: a plain run
    # keras_ast refuses to build a Sup-tickets schedule that would do nothing
    with pytest.raises(ValueError, match="give no cycle"):
        keras_ast.SupTicketsSchedule.from_budget(0.1, 100, 10, cycle_epochs=8, cycle_rate=0.05)
    assert suptickets.budget_split(2, 0.9, 1) == (1, 1, 1)  # rate < 1 always leaves one
    with pytest.raises(ValueError, match="cycle_rate must be in"):
        suptickets.budget_split(10, 0.0, 1)


def test_learning_rate_triangle_periodic_and_phase1_before():
    phase1 = keras.optimizers.schedules.PiecewiseConstantDecay([50], [0.1, 0.01])
    schedule = keras_ast.SupTicketsSchedule(phase1, start_step=100, steps_per_cycle=40,
                                            num_cycles=3, lr_1=0.001, lr_2=0.005)
    lr = lambda step: float(schedule(step))  # noqa: E731
    assert lr(0) == pytest.approx(0.1) and lr(99) == pytest.approx(0.01)  # phase 1
    for t, expected in ((0, 0.001), (0.25, 0.003), (0.5, 0.005), (0.75, 0.003)):
        for cycle in range(3):
            assert lr(100 + 40 * cycle + 40 * t) == pytest.approx(expected, rel=1e-6)
    assert lr(139) == pytest.approx(0.001 + 0.004 * 2 / 40, rel=1e-5)  # -> lr_1 at 1-
    # continuous at a cycle boundary: the step before and the step after differ by one step
    assert abs(lr(140) - lr(139)) <= 0.004 * 2 / 40 + 1e-9
    config = schedule.get_config()
    again = keras_ast.SupTicketsSchedule.from_config(json.loads(json.dumps(config)))
    assert [float(again(s)) for s in (0, 99, 120, 170)] == \
        [lr(s) for s in (0, 99, 120, 170)]
    assert schedule.cycle_starts() == [100, 140, 180] and schedule.end_step == 220


# --------------------------------------------------------------------- superposition
def test_caa_is_the_mean_and_cima_the_exponential_average():
    tickets = [[np.full((3,), float(v), np.float32)] for v in (0, 1, 2, 3)]
    total, factors = tickets[0], []
    for count, ticket in enumerate(tickets[1:], start=1):
        factors.append(1.0 / (count + 1))
        total = suptickets.superpose(total, ticket, count)
    np.testing.assert_array_equal(total[0], np.full((3,), 1.5, np.float32))
    assert factors == [1 / 2, 1 / 3, 1 / 4]
    cima = suptickets.superpose([np.float32([4.0])], [np.float32([0.0])], 7, "cima", 0.25)
    np.testing.assert_allclose(cima[0], [3.0])
    with pytest.raises(ValueError, match="unknown superposition"):
        suptickets.superpose(total, total, 1, "swa")


def test_averaging_with_zeros_gives_the_union():
    a, b = np.float32([2.0, 0.0]), np.float32([0.0, 4.0])
    (s,) = suptickets.superpose([a], [b], 1)
    np.testing.assert_array_equal(s, [1.0, 2.0])
    assert ((s != 0) == ((a != 0) | (b != 0))).all()


def test_pruning_to_the_budget_keeps_the_largest_inside_the_union():
    rng = np.random.default_rng(0)
    kernels = [rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(40,)).astype(
        np.float32)]
    union = [rng.random(k.shape) < 0.6 for k in kernels]
    kept = suptickets.prune_to_budget(kernels, union, 0.25)
    total = sum(k.size for k in kernels)
    assert sum(int(m.sum()) for m in kept) == round(0.25 * total)
    assert all(not (m & ~u).any() for m, u in zip(kept, union))
    values_kept = np.concatenate([np.abs(k[m]) for k, m in zip(kernels, kept)])
    values_dropped = np.concatenate([np.abs(k[u & ~m]) for k, m, u in zip(kernels, kept, union)])
    assert values_kept.min() >= values_dropped.max()
    # the layer-wise densities come out of the global ranking, not a fixed distribution
    assert kept[0].mean() != pytest.approx(kept[1].mean())


# --------------------------------------------------------------- on a model, by hand
def _model(sparsities=(0.5, 0.8), seed=3):
    keras.utils.set_random_seed(seed)
    model = keras_ast.ASTModel.from_model(tiny_cnn(), sparsities)
    compile_ast(model, lr=0.05)
    model.fit(np.zeros((4, 8, 8, 1), np.float32), np.zeros((4,), np.int32), epochs=1,
              verbose=0, callbacks=[keras_ast.PruneRegrow(updater="static")])
    return model


def _callback(model, data, **options):
    schedule = keras_ast.SupTicketsSchedule(0.05, start_step=2, steps_per_cycle=2,
                                            num_cycles=2)
    model.optimizer = keras_ast.SGD(schedule, momentum=0.9)  # the schedule the callback reads
    model.optimizer.build(model.trainable_variables)
    callback = keras_ast.SupTickets(schedule, data, verbose=0, **options)
    callback.set_model(model)
    callback.set_params({"epochs": 3, "steps": 2})
    return callback


def _state(model):
    return {v.path: np.array(v) for v in model.variables + model.optimizer.variables}


def test_reexploration_swaps_the_chosen_count_by_magnitude_and_gradient(digits_batches):
    """Per layer: floor(0.5 active) smallest |w| removed, as many entries with the largest
    dense |gradient| outside the survivors regrown (a removed one may come back), the count
    unchanged; regrown entries start at 0 unless the other sub-net holds them."""
    x, y = digits_batches
    model = _model()
    callback = _callback(model, [(x[:64], y[:64])])
    layers = model.sparse_layers
    before = {layer.name: np.array(layer.masks) for layer in layers}
    kernels = {layer.name: np.array(layer.shared_kernel) for layer in layers}
    # sub-net 0 goes first: its gradient is the one of the model as it is now
    grads = [np.array(g) for g in tf_engine.stateless_dense_gradients(model, 0, x[:64],
                                                                       y[:64])]
    flops = model.training_flops["total"]
    model.iteration.assign(2)  # the first cycle's start
    callback.on_epoch_begin(1)
    assert model.training_flops["total"] > flops  # the re-exploration's pass is counted
    for layer, g in zip(layers, grads):
        rows, w = np.array(layer.masks), np.abs(kernels[layer.name])
        old, new = before[layer.name][0] > 0.5, rows[0] > 0.5
        active = int(old.sum())
        changed = active // 2
        order = np.argsort(-np.where(old, w, -1.0), axis=None, kind="stable")
        survivors = np.zeros(w.size, bool)
        survivors[order[:active - changed]] = True
        survivors = survivors.reshape(w.shape)
        order = np.argsort(-np.where(survivors, -1.0, np.abs(g)), axis=None, kind="stable")
        grown = np.zeros(w.size, bool)
        grown[order[:changed]] = True
        np.testing.assert_array_equal(new, survivors | grown.reshape(w.shape), layer.name)
        assert int(new.sum()) == active
        held = before[layer.name][1] > 0.5  # sub-net 1's entries keep their values
        regrown = new & ~old
        kernel = np.array(layer.shared_kernel)
        assert (kernel[regrown & ~held & ~(rows[1] > 0.5)] == 0).all()
        assert int((rows[1] > 0.5).sum()) == int(held.sum())
    assert [r["event"] for r in callback.results] == ["ticket0", "reexplored"]
    assert all(n > 0 for n in callback.results[-1]["regrown"])


def test_bn_recalibration_of_a_plain_model_is_the_mean_of_the_batch_statistics():
    inputs = keras.Input((3,))
    outputs = keras.layers.BatchNormalization(momentum=0.99)(inputs)
    plain = keras.Model(inputs, outputs)
    rng = np.random.default_rng(1)
    batches = [rng.normal(loc=i, scale=1 + i, size=(16, 3)).astype(np.float32)
               for i in range(3)]
    assert keras_ast.recalibrate_batchnorm(plain, batches) == 3
    bn = plain.layers[-1]
    np.testing.assert_allclose(bn.moving_mean, np.mean([b.mean(0) for b in batches], 0),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance, np.mean([b.var(0) for b in batches], 0),
                               rtol=1e-5)
    assert bn.momentum == 0.99
    with pytest.raises(ValueError, match="plain Keras model"):
        keras_ast.recalibrate_batchnorm(plain, batches, subnet=0)


def test_a_superposition_leaves_the_live_model_and_optimizer_bitwise_unchanged(
        digits_batches):
    x, y = digits_batches
    model = _model()
    callback = _callback(model, [(x[:64], y[:64])],
                         validation_data=tf.data.Dataset.from_tensor_slices(
                             (x[:64], y[:64])).batch(32))
    model.iteration.assign(2)
    callback.on_epoch_begin(1)
    state = _state(model)
    callback.on_train_batch_end(1)  # step 2 + 1 + 1 = 4: the end of the first cycle
    assert [r["event"] for r in callback.results][-1] == "superposed"
    after = _state(model)
    for path, value in state.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    for k in range(2):
        superposed = callback.superposed(k)
        kernels = [np.array(superposed.get_layer(layer.name).kernel)
                   for layer in model.sparse_layers]
        total = sum(w.size for w in kernels)
        assert sum(int((w != 0).sum()) for w in kernels) == round((1 - model.sparsities[k])
                                                                  * total)
        assert set(callback.results[-1]["subnets"][k]) >= {"ticket", "superposed",
                                                           "superposed_before_bn"}


# ------------------------------------------------------------------ during fit
def _digits_fit(tmp_path, callbacks_before=(), epochs=6, cycle_rate=0.34, kill_at=None,
                backup=None, **options):
    keras.backend.clear_session()
    keras.utils.set_random_seed(7)
    split = load_digits_arrays(seed=0)
    source = in_memory_source((split.x_train[:512], split.y_train[:512]), 64, seed=4)
    steps = source.steps_per_epoch
    model = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.8])
    schedule = keras_ast.SupTicketsSchedule.from_budget(
        keras.optimizers.schedules.CosineDecay(0.05, 4 * steps), epochs, steps, cycle_epochs=1,
        cycle_rate=cycle_rate, lr_1=0.005, lr_2=0.02)
    model.compile(optimizer=keras_ast.SGD(schedule, momentum=0.9), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sup = keras_ast.SupTickets(schedule, lambda e: source.epochs(e, e + 1), verbose=0,
                               **options)
    prune = keras_ast.PruneRegrow(frequency=4, adjustment_period=2, end_step=2 * steps)
    callbacks = [prune, *callbacks_before, sup]
    if kill_at is not None:
        callbacks.append(_KillAt(kill_at))
    backup = checkpoint.BackupAndRestore(backup or tmp_path / "backup", save_every=3,
                                         verbose=0)
    checkpoint.resume_fit(model, source, epochs, backup, callbacks=callbacks, verbose=0)
    return model, sup, schedule, prune.updater


class _MaskLog(keras.callbacks.Callback):
    """Masks at every step's end, and each sub-net's plain model at every epoch start and
    step end (placed before SupTickets: it sees ticket 0 before the first re-exploration)."""

    def __init__(self):
        super().__init__()
        self.masks, self.models, self.epoch_start = {}, {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        step = int(self.model.iteration.numpy())
        self.epoch_start[step] = [subnet_model(self.model, k).get_weights() for k in range(2)]

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.iteration.numpy())
        self.masks[step] = [np.array(layer.masks) for layer in self.model.sparse_layers]
        self.models[step] = [subnet_model(self.model, k).get_weights() for k in range(2)]


def test_mask_updates_pause_in_the_cycles_and_change_only_at_their_starts(tmp_path):
    log = _MaskLog()
    model, sup, schedule, updater = _digits_fit(tmp_path, [log], min_layer_density=0.0)
    starts = schedule.cycle_starts()  # 8 steps per epoch, 6 epochs: cycles at 32 and 40
    assert starts == [32, 40] and schedule.end_step == 48
    assert updater.stop_step == 32
    # masks at the end of each step (iteration s); a re-exploration before step s + 1 shows
    # as a change at s + 1
    changes = [s for s in range(2, 49) if any(
        (a != b).any() for a, b in zip(log.masks[s - 1], log.masks[s]))]
    assert [c for c in changes if c <= 32]  # the updater's changes, all in phase 1
    assert [c for c in changes if c > 32] == [s + 1 for s in starts]  # only the re-explorations
    assert [r["event"] for r in sup.results] == ["ticket0", "reexplored", "superposed",
                                                 "reexplored", "superposed"]


def _numpy_forward_bn_stats(weights, names, x):
    """Batch mean and (1/n) variance of the first BatchNorm's input of the MLP below."""
    w1, b1 = weights[names.index("h/kernel")], weights[names.index("h/bias")]
    h = x.reshape(len(x), -1).astype(np.float64) @ w1 + b1
    return h.mean(0), h.var(0)


def _mlp():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(24, name="h")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(x)
    x = keras.layers.ReLU()(x)
    outputs = keras.layers.Dense(10, name="out")(x)
    return keras.Model(inputs, outputs, name="mlp")


def test_numpy_reimplementation_of_superpose_prune_recalibrate(tmp_path):
    """Steps 4-6 re-done in NumPy from the tickets the run produced: CAA of ticket 0 and the
    cycles' tickets, union of masks, global |w| pruning to round(d N), BN statistics as the
    mean of the batch statistics over the recalibration batches; S_M within 1e-6."""
    split = load_digits_arrays(seed=0)
    x, y = split.x_train[:256], split.y_train[:256]
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    keras.utils.set_random_seed(11)
    model = keras_ast.ASTModel.from_model(_mlp(), [0.5, 0.75], dense_layers=())
    steps, epochs = 4, 5
    schedule = keras_ast.SupTicketsSchedule.from_budget(0.05, epochs, steps, cycle_epochs=1,
                                                        cycle_rate=0.4)
    model.compile(optimizer=keras_ast.SGD(schedule, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    log = _MaskLog()
    sup = keras_ast.SupTickets(schedule, batches, verbose=0, min_layer_density=0.0)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    model.fit(data, epochs=epochs, verbose=0, shuffle=False, callbacks=[
        keras_ast.PruneRegrow(frequency=2, adjustment_period=1, end_step=6), log, sup])
    names = [v.path for v in subnet_model(model, 0).weights]
    assert [layer.name for layer in model.sparse_layers] == ["h", "out"]
    kernel_names = ["h/kernel", "out/kernel"]
    ends = [start + schedule.steps_per_cycle for start in schedule.cycle_starts()]
    assert schedule.start_step == 12 and ends == [16, 20]
    for k, density in ((0, 0.5), (1, 0.25)):
        ticket0 = log.epoch_start[12][k]  # the first phase's end, before re-exploration
        s_weights = [np.asarray(w, np.float64) for w in ticket0]
        union = [m[k] > 0.5 for m in log.masks[12]]
        for count, step in enumerate(ends, start=1):
            ticket = log.models[step][k]
            f = 1.0 / (count + 1)
            s_weights = [((1 - f) * a + f * np.asarray(t, np.float64)).astype(np.float32)
                         .astype(np.float64) for a, t in zip(s_weights, ticket)]
            union = [u | (m[k] > 0.5) for u, m in zip(union, log.masks[step])]
            # prune: one global |w| ranking over both kernels inside the union
            values = np.concatenate([np.where(u, np.abs(s_weights[names.index(n)]), -1).ravel()
                                     for u, n in zip(union, kernel_names)])
            keep = round(density * values.size)
            cut = np.sort(values)[::-1][keep - 1]
            union = [u & (np.abs(s_weights[names.index(n)]) >= cut)
                     for u, n in zip(union, kernel_names)]
            for u, n in zip(union, kernel_names):
                i = names.index(n)
                s_weights[i] = np.where(u, s_weights[i], 0.0)
            # BN recalibration over every batch of `data`
            stats = [_numpy_forward_bn_stats(s_weights, names, xb) for xb, _ in batches]
            s_weights[names.index("bn/moving_mean")] = np.mean([m for m, _ in stats], 0)
            s_weights[names.index("bn/moving_variance")] = np.mean([v for _, v in stats], 0)
        actual = sup.superposed(k).get_weights()
        assert len(actual) == len(s_weights)
        for name, a, e in zip(names, actual, s_weights):
            np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6, err_msg=f"{k} {name}")


def test_a_killed_run_resumes_bit_for_bit_superposed_models_included(tmp_path):
    expected, sup_a, _, _ = _digits_fit(tmp_path, backup=tmp_path / "ref")
    with pytest.raises(_Kill):  # killed in the second cycle (steps 40..47), after cycle 1
        _digits_fit(tmp_path, backup=tmp_path / "run", kill_at=43)
    resumed, sup_b, _, _ = _digits_fit(tmp_path, backup=tmp_path / "run")
    a, b = _state(expected), _state(resumed)
    for path in a:
        np.testing.assert_array_equal(b[path], a[path], err_msg=path)
    for k in range(2):
        for wa, wb in zip(sup_a.superposed(k).get_weights(), sup_b.superposed(k).get_weights()):
            np.testing.assert_array_equal(wb, wa)
    assert [r["event"] for r in sup_b.results] == [r["event"] for r in sup_a.results]


def test_refuses_another_learning_rate_and_nm_subnets(digits_batches):
    model = _model()
    schedule = keras_ast.SupTicketsSchedule(0.05, 2, 2, 1)
    callback = keras_ast.SupTickets(schedule, [])
    callback.set_model(model)
    with pytest.raises(ValueError, match="its SupTicketsSchedule"):
        callback.set_params({"epochs": 2, "steps": 2})
    with pytest.raises(TypeError, match="SupTicketsSchedule"):
        keras_ast.SupTickets(0.1, [])
    nm_model = keras_ast.ASTModel.from_model(tiny_cnn(), nm=keras_ast.parse_nm_list(
        ["2:4"], counts="zeros"))
    with pytest.raises(ValueError, match="N:M"):
        keras_ast.SupTickets(schedule, []).set_model(nm_model)


# ------------------------------------------------------------------------- the launcher
def test_launcher_writes_saves_and_exports_the_superposed_models(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "launch.train", f"--output_dir={out}", "--sup_tickets",
         "--epochs=4", "--cycle_rate=0.5", "--cycle_lr=0.005,0.02", "--sparsities=0.5,0.8",
         "--update_frequency=20", "--verbose=0", "--notensorboard", "--bn_batches=5"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "superposed" in result.stdout and "Sup-tickets cycle 2: sub-net 1" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sup_tickets"]["num_cycles"] == 2
    assert summary["sup_tickets"]["first_phase_epochs"] == 2
    x = load_digits_arrays(seed=0).x_test[:32]
    for entry in summary["subnets"]:
        sup = entry["superposed"]
        assert 0.0 < sup["accuracy"] <= 1.0 and sup["accuracy_before_bn"] is not None
        assert sup["measured_sparsity"] == pytest.approx(entry["target_sparsity"], abs=1e-3)
        reloaded = keras.saving.load_model(sup["keras_path"])  # a plain model: no keras_ast
        served = tf.saved_model.load(sup["export_path"])
        np.testing.assert_allclose(served.serve(x), reloaded(x, training=False), atol=1e-5)
    report = subprocess.run([sys.executable, "-m", "launch.report", f"--run_dir={out}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (out / "report" / "report.md").read_text()
    assert "## Sup-tickets" in text and text.count("| 4 | ") == 2
