"""N:M structured sub-nets: notation, group layout, mask math against hand-computed values, the
ramp schedule during training, the checker, export, launcher flags, and accuracy on the digits
(the example of docs/nm.md, against the same CNN trained dense)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ast
from conftest import compile_ast, tiny_cnn
from keras_ast import export, nm
from keras_ast.nm import NMPattern

ROOT = Path(__file__).resolve().parents[1]
NM_DOC = ROOT / "docs" / "nm.md"
PAPER = "2:4,3:4,7:8,15:16"


def np_(x):
    return keras.ops.convert_to_numpy(x)


def oracle_groups(kernel, m):
    """Groups of m consecutive input channels (axis -2) at fixed other indices, by numpy (only
    for input dimensions divisible by m): [G, m]."""
    kernel = np.moveaxis(np.asarray(kernel), -2, -1)
    return kernel.reshape(-1, m)


# ------------------------------------------------------------------------------- notation
def test_notation_zeros_and_nonzeros():
    p = nm.parse_nm("2:4", counts="zeros")
    assert p == NMPattern(zeros=2, group=4) and (p.nonzeros, p.sparsity, str(p)) == (2, 0.5, "2:4")
    assert nm.parse_nm("1:4", counts="nonzeros") == nm.parse_nm("3:4", counts="zeros")
    assert nm.parse_nm("1:16", counts="nonzeros") == NMPattern(zeros=15, group=16)
    paper = nm.parse_nm_list(PAPER, counts="zeros")
    assert [p.sparsity for p in paper] == [0.5, 0.75, 0.875, 0.9375]
    assert nm.parse_nm_list(["2:4", "1:4", "1:8", "1:16"], counts="nonzeros") == paper


@pytest.mark.parametrize("text, counts, match", [
    ("4:4", "zeros", "1 <= N < M"),
    ("0:4", "zeros", "1 <= N < M"),
    ("5:4", "nonzeros", "1 <= N < M"),
    ("1:1", "zeros", "M >= 2"),
    ("2-4", "zeros", "looks like '2:4'"),
    ("2:4", "ones", "'zeros' or 'nonzeros'"),
])
def test_bad_patterns(text, counts, match):
    with pytest.raises(ValueError, match=match):
        nm.parse_nm(text, counts=counts)


def test_pattern_lists_and_model_arguments():
    with pytest.raises(TypeError):
        nm.parse_nm("2:4")  # the counting must be named
    with pytest.raises(ValueError, match="strictly increasing"):
        nm.parse_nm_list("3:4,2:4", counts="zeros")
    with pytest.raises(ValueError, match="strictly increasing"):
        nm.parse_nm_list("2:4,4:8", counts="zeros")  # both 50 %
    with pytest.raises(ValueError, match="1 <= N < M"):
        NMPattern(zeros=4, group=4)
    with pytest.raises(TypeError, match="ambiguous"):
        keras_ast.ASTModel.from_model(tiny_cnn(), nm=["2:4"])
    with pytest.raises(ValueError, match="disagree"):
        keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.9],
                                      nm=nm.parse_nm_list("2:4,3:4", counts="zeros"))
    with pytest.raises(ValueError, match="sparsities=.* or their N:M patterns"):
        keras_ast.ASTModel.from_model(tiny_cnn())


# ---------------------------------------------------------------------- layout and math
@pytest.mark.parametrize("shape", [(2, 3, 8, 5), (8, 3), (3, 1, 8, 2)])  # conv, dense, depthwise
def test_group_layout(shape):
    kernel = np.arange(np.prod(shape), dtype="float32").reshape(shape)
    groups = np_(nm.to_groups(kernel, 4))
    assert groups.shape == (nm.group_count(shape, 4), 4)
    np.testing.assert_array_equal(groups, oracle_groups(kernel, 4))
    # The first group: input channels 0..3 at index 0 of every other axis.
    np.testing.assert_array_equal(groups[0], kernel[..., 0:4, 0].reshape(-1, 4)[0])
    np.testing.assert_array_equal(np_(nm.from_groups(nm.to_groups(kernel, 4), shape)), kernel)
    # Not divisible: the short last group is padded and cut off again.
    short = np.arange(2 * 6 * 3, dtype="float32").reshape(2, 6, 3)[None]  # (1, 2, 6, 3)
    g = np_(nm.to_groups(short, 4, fill=-7.0))
    # Row 1: input channels 4, 5 at (kh, kw, out) = (0, 0, 0), i.e. values 12 and 15.
    assert g.shape == (2 * 3 * 2, 4) and (g[1] == [12.0, 15.0, -7.0, -7.0]).all()
    np.testing.assert_array_equal(np_(nm.from_groups(g, short.shape)), short)


def test_rank_in_groups_breaks_ties_by_position():
    ranks = np_(nm.rank_in_groups(np.array([[1.0, 3.0, 3.0, 1.0], [0.0, 0.0, 0.0, 5.0]],
                                           dtype="float32")))
    np.testing.assert_array_equal(ranks, [[2, 0, 1, 3], [1, 2, 3, 0]])


# A Dense kernel (in=4, out=2): two groups of 4 input features, one per output.
W = np.array([[0.1, 2.0], [-0.5, 1.0], [0.3, -3.0], [0.3, 0.5]], dtype="float32")
TWO_FOUR = NMPattern(zeros=2, group=4)


def _update(mask, grad, fraction, ratio, w=W, pattern=TWO_FOUR):
    (new,) = nm.update_masks([w], [np.asarray(mask, "float32")], [np.asarray(grad, "float32")],
                             pattern, fraction, ratio)
    return np_(new)


def test_update_masks_hand_examples():
    ones, no_grad = np.ones_like(W), np.zeros_like(W)
    # Half of the 2 groups are 2:4: the one with the smaller mean |w| (column 0: 0.3 < 1.625).
    # It keeps its two largest |w|: 0.5, then of the tied 0.3s the lower position (row 2).
    np.testing.assert_array_equal(_update(ones, no_grad, 0.5, 0.0),
                                  [[0, 1], [1, 1], [1, 1], [0, 1]])
    np.testing.assert_array_equal(_update(ones, no_grad, 0.0, 0.5), ones)  # f = 0: dense
    # ratio 0.5: floor(0.5 * 2) = 1 of the 2 active entries of sparse groups dies (the 0.3 in
    # row 2) and column 0 regrows one by the largest |gradient| among rows 0, 2, 3: row 3.
    grad = np.array([[0.0, 0], [9.0, 0], [0.2, 0], [0.7, 0]], dtype="float32")
    np.testing.assert_array_equal(_update(ones, grad, 0.5, 0.5),
                                  [[0, 1], [1, 1], [0, 1], [1, 1]])
    # A tie in |gradient| between the just-removed row 2 and row 3: row 2 comes back.
    grad[2, 0] = 0.7
    np.testing.assert_array_equal(_update(ones, grad, 0.5, 0.5),
                                  [[0, 1], [1, 1], [1, 1], [0, 1]])
    # Pruning keeps only active entries: row 2 is inactive, so 0.5 and the other 0.3 stay.
    mask = np.array([[1, 1], [1, 1], [0, 1], [1, 1]], dtype="float32")
    np.testing.assert_array_equal(_update(mask, no_grad, 0.5, 0.0),
                                  [[0, 1], [1, 1], [0, 1], [1, 1]])
    # f = 1: both groups 2:4; column 1 keeps |w| 3.0 and 2.0.
    np.testing.assert_array_equal(_update(ones, no_grad, 1.0, 0.0),
                                  [[0, 1], [1, 0], [1, 1], [0, 0]])


def test_update_masks_short_last_group():
    w = np.array([[0.1], [0.2], [0.3], [0.4], [0.9], [0.8]], dtype="float32")  # in=6, M=4
    ones, grad = np.ones_like(w), np.zeros_like(w)
    three_four = NMPattern(zeros=3, group=4)
    # Groups rows 0-3 (keeps 1) and rows 4-5 (short: keeps min(2, 1) = 1).
    np.testing.assert_array_equal(_update(ones, grad, 1.0, 0.0, w, three_four).ravel(),
                                  [0, 0, 0, 1, 1, 0])
    # 2:4 lets the short group keep min(2, 2) = 2.
    np.testing.assert_array_equal(_update(ones, grad, 1.0, 0.0, w).ravel(), [0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize("pattern", [NMPattern(2, 4), NMPattern(7, 8), NMPattern(15, 16)])
def test_update_masks_exact_counts_and_group_choice(pattern):
    rng = np.random.default_rng(pattern.group)
    shapes = [(3, 3, 16, 8), (32, 10), (3, 3, 16, 1)]  # conv, dense, depthwise
    weights = [rng.normal(size=s).astype("float32") for s in shapes]
    masks = [np.ones(s, "float32") for s in shapes]
    grads = [rng.normal(size=s).astype("float32") for s in shapes]
    total = sum(nm.group_count(s, pattern.group) for s in shapes)
    for fraction in (0.1, 0.37, 0.9, 1.0):
        new = [np_(m) for m in nm.update_masks(weights, masks, grads, pattern, fraction, 0.3)]
        zeros = np.concatenate([pattern.group - oracle_groups(m, pattern.group).sum(-1)
                                for m in new])
        assert set(np.unique(zeros)) <= {0, pattern.zeros}  # dense or exactly N:M
        assert (zeros == pattern.zeros).sum() == round(fraction * total)
        scores = np.concatenate([np.abs(oracle_groups(w, pattern.group)).mean(-1)
                                 for w in weights])
        if fraction < 1.0:  # the sparse groups are the ones with the smallest scores
            assert scores[zeros > 0].max() < scores[zeros == 0].min()


# ------------------------------------------------------------------------------- checker
@pytest.mark.parametrize("shape", [(3, 3, 8, 4), (16, 3), (3, 3, 8, 2)])  # conv, dense, dw
@pytest.mark.parametrize("pattern", [NMPattern(2, 4), NMPattern(7, 8)])
def test_checker_rejects_exactly_one_violating_group(shape, pattern):
    rng = np.random.default_rng(0)
    groups = rng.normal(size=(nm.group_count(shape, pattern.group), pattern.group))
    for row in groups:  # zero N random entries of every group
        row[rng.permutation(pattern.group)[:pattern.zeros]] = 0.0
    kernel = np_(nm.from_groups(groups.astype("float32"), shape))
    result = nm.check_nm(kernel, pattern)
    assert result == nm.NMCheck(True, groups.shape[0], 0)
    bad = groups.copy()
    bad[5][bad[5] == 0.0] = 0.25  # one group with every weight non-zero
    result = nm.check_nm(np_(nm.from_groups(bad.astype("float32"), shape)), pattern)
    assert not result.satisfied and result.violating_groups == 1
    more = groups.copy()
    more[3] = 0.0  # more zeros than N is fine
    assert nm.check_nm(np_(nm.from_groups(more.astype("float32"), shape)), pattern).satisfied


def test_checker_short_group_and_bad_arguments():
    three_four = NMPattern(3, 4)
    assert nm.check_nm(np.array([[0, 0, 0, 1, 1, 0]], "float32").T, three_four).satisfied
    result = nm.check_nm(np.array([[0, 0, 0, 1, 1, 1]], "float32").T, three_four)
    assert result == nm.NMCheck(False, 2, 1)  # the short group has 2 > min(2, 1) non-zeros
    with pytest.raises(TypeError, match="NMPattern"):
        nm.check_nm(np.zeros((4, 4)), "2:4")
    model = keras_ast.ASTModel.from_model(tiny_cnn(), nm=[three_four])
    with pytest.raises(TypeError, match="subnet_model"):
        nm.check_nm(model, three_four)
    with pytest.raises(ValueError, match="no layers"):
        nm.check_nm(export.subnet_model(model, 0), three_four, layers=["nope"])
    # A whole plain model: every kernel by default, the stem included. Untrained, the masks
    # are dense: every group of conv1 (8 input channels) breaks 3:4; the stem's single input
    # channel is a short group of 1, which min(1, M - N) = 1 non-zero allows.
    results = nm.check_nm(export.subnet_model(model, 0), three_four)
    assert set(results) == {"stem_conv", "conv1", "conv2", "classifier"}
    assert results["conv1"] == nm.NMCheck(False, 3 * 3 * 16 * 2, 3 * 3 * 16 * 2)
    assert results["stem_conv"] == nm.NMCheck(True, 3 * 3 * 8, 0)


# ------------------------------------------------------------------------------ schedule
def test_group_fraction_schedule():
    s = keras_ast.CubicGroupFraction(begin_step=0, end_step=400, frequency=100, offset=7)
    got = [float(s.fraction(t)) for t in (6, 7, 107, 257, 307, 407, 2000)]
    expected = [0.0] + [1 - (1 - p) ** 3 for p in (0.0, 0.25, 0.5, 0.75, 1.0, 1.0)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert s.final_update == 407
    assert repr(type(s).from_config(s.get_config())) == repr(s)
    with pytest.raises(ValueError, match="final_sparsity"):
        keras_ast.CubicSparsity(0.0, 1.0, 0, 10, 1)  # a sparsity of 1 stays refused


# ------------------------------------------------------------- training: ramp and exactness
BEGIN, END, FREQ, PERIOD, STEPS_PER_EPOCH, EPOCHS = 0, 64, 16, 4, 16, 6


class _Recorder(keras.callbacks.Callback):
    """After every step where a sub-net's mask update ran: (step, k, masks before, after)."""

    def __init__(self, pruner):
        super().__init__()
        self.pruner = pruner
        self.updates = []

    def on_train_begin(self, logs=None):
        self.last = [self.model.masks(k) for k in range(self.model.num_subnets)]

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.iteration.numpy()) - 1
        K = self.model.num_subnets
        k = step % K
        if bool(self.pruner.schedules[k].is_due(step, window=K)):
            now = self.model.masks(k)
            self.updates.append((step, k, self.last[k], now))
            self.last[k] = now


@pytest.fixture(scope="module")
def nm_run(digits):
    keras.utils.set_random_seed(3)
    patterns = nm.parse_nm_list(PAPER, counts="zeros")
    # width 16: every prunable kernel has 16 or 32 input channels (divisible by every M).
    model = compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(width=16, depthwise=True),
                                                      nm=patterns))
    pruner = keras_ast.PruneRegrow(frequency=FREQ, adjustment_period=PERIOD, begin_step=BEGIN,
                                   end_step=END)
    recorder = _Recorder(pruner)
    n = STEPS_PER_EPOCH * 32
    model.fit(digits.x_train[:n], digits.y_train[:n], batch_size=32, epochs=EPOCHS,
              callbacks=[pruner, recorder], verbose=0)
    return model, recorder.updates


def _sparse_groups(masks, pattern):
    zeros = np.concatenate([pattern.group - oracle_groups(m, pattern.group).sum(-1)
                            for m in masks.values()])
    assert set(np.unique(zeros)) <= {0, pattern.zeros}  # every group dense or exactly N:M
    return int((zeros == pattern.zeros).sum()), zeros.size


def test_fraction_of_nm_groups_follows_the_schedule(nm_run):
    model, updates = nm_run
    K = model.num_subnets
    seen = set()
    for step, k, _, masks in updates:
        pattern = model.nm_patterns[k]
        j = (step - BEGIN - k * PERIOD) // FREQ
        assert BEGIN + k * PERIOD + j * FREQ <= step < BEGIN + k * PERIOD + j * FREQ + K
        fraction = 1.0 - (1.0 - min(1.0, j * FREQ / (END - BEGIN))) ** 3
        count, total = _sparse_groups(masks, pattern)
        assert count == round(fraction * total), (step, k, fraction, count, total)
        seen.add(round(fraction, 3))
    assert {0.0, 0.578, 0.875, 0.984, 1.0} <= seen  # the ramp's intermediate points were hit


def test_end_of_ramp_every_group_is_exactly_nm(nm_run):
    model, updates = nm_run
    for k, pattern in enumerate(model.nm_patterns):
        last = max(step for step, j, _, _ in updates if j == k)
        assert last >= END + k * PERIOD  # the ramp ended before training did
        masks = model.masks(k)
        assert set(masks) == {"conv1", "dw", "conv2", "classifier"}
        for name, mask in masks.items():
            zeros = pattern.group - oracle_groups(mask, pattern.group).sum(-1)
            assert (zeros == pattern.zeros).all(), (k, name)
        assert model.subnet_sparsity(k) == pytest.approx(pattern.sparsity, abs=1e-12)
        # The folded kernels satisfy the pattern too (the checker on the plain sub-net).
        results = nm.check_nm(export.subnet_model(model, k), pattern, layers=list(masks))
        assert all(r.satisfied for r in results.values())


def test_regrowth_after_the_ramp_is_saved_in_the_masks(nm_run):
    model, updates = nm_run
    changed = [int((before[n] != after[n]).sum()) for step, k, before, after in updates
               if step >= END + model.num_subnets * PERIOD for n in before]
    assert sum(changed) > 0  # prune-and-regrow went on at full N:M sparsity
    first, second = model.masks(0), model.masks(1)
    assert any((first[n] * (1 - second[n])).sum() > 0 for n in first)  # not nested: ND


def test_pruner_update_writes_the_regrown_mask():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2, use_bias=False, name="fc")(inputs))
    model = keras_ast.ASTModel.from_model(plain, nm=[TWO_FOUR])
    model.network.get_layer("fc").shared_kernel.assign(W)
    pruner = keras_ast.PruneRegrow(frequency=4, adjustment_period=0, end_step=4)
    pruner.set_model(model)
    pruner.configure(total_steps=100)
    grad = np.array([[0.0, 0], [9.0, 0], [0.2, 0], [0.7, 0]], dtype="float32")
    # Step 4: fraction 1, ratio ~0.498: floor(0.498 * 4) = 1 death among the 4 active
    # entries (0.3, row 2, column 0), regrown in column 0 by |gradient|: row 3.
    pruner.update(model, tf.constant(4, "int64"), tf.constant(0), [tf.constant(grad)])
    np.testing.assert_array_equal(model.masks(0)["fc"], [[0, 1], [1, 0], [0, 1], [1, 0]])


def test_short_groups_warn_and_are_padded(digits_batches):
    x, y = digits_batches
    patterns = nm.parse_nm_list("2:4,15:16", counts="zeros")
    with pytest.warns(UserWarning, match=r"conv1 \(8 input channels, M=16\)"):
        model = keras_ast.ASTModel.from_model(tiny_cnn(width=8), nm=patterns)
    compile_ast(model, jit_compile=True)  # and the N:M update compiles under XLA
    model.fit(x, y, batch_size=32, epochs=4, verbose=0,
              callbacks=[keras_ast.PruneRegrow(frequency=6, adjustment_period=3, end_step=6)])
    plain = export.subnet_model(model, 1)
    names = [layer.name for layer in model.sparse_layers]
    assert all(r.satisfied for r in nm.check_nm(plain, patterns[1], layers=names).values())
    # conv1 (8 input channels): one short group of 8 per row keeps 1 non-zero.
    assert model.layer_sparsities(1)["conv1"] == 7 / 8
    assert model.layer_sparsities(1)["conv2"] == 15 / 16


def test_nm_settings_the_pruner_refuses(digits_batches):
    x, y = digits_batches
    model = compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(), nm=[TWO_FOUR]))
    for kwargs, match in [(dict(initial_sparsity=0.5), "initial_sparsity must be 0"),
                          (dict(mode="subset"), "nondisjoint")]:
        with pytest.raises(ValueError, match=match):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[keras_ast.PruneRegrow(
                frequency=4, adjustment_period=1, **kwargs)])


# ---------------------------------------------------------------------- saving and export
def test_save_load_and_export_roundtrip(nm_run, digits, tmp_path):
    model, _ = nm_run
    model.save(tmp_path / "nm.keras")
    loaded = keras.models.load_model(tmp_path / "nm.keras")
    assert loaded.nm_patterns == model.nm_patterns and loaded.sparsities == model.sparsities
    x = digits.x_test[:64]
    names = [layer.name for layer in model.sparse_layers]
    for k, pattern in enumerate(model.nm_patterns):
        path = export.export_subnet(loaded, k, str(tmp_path / f"subnet_{k}"))
        results = export.check_nm(path, pattern, layers=names)  # the stored variables
        assert set(results) == set(names) and all(r.satisfied for r in results.values())
        served = tf.saved_model.load(path)
        model.set_subnet(k)
        np.testing.assert_allclose(np.asarray(served.serve(x)), model.predict(x, verbose=0),
                                   atol=1e-5)


def test_export_refuses_a_broken_pattern(nm_run, tmp_path):
    model, _ = nm_run
    layer = model.network.get_layer("conv2")
    saved = np.asarray(layer.masks)
    try:
        broken = saved.copy()
        broken[2, 0, 0, :8, 0] = 1.0  # one group of 8 fully dense in sub-net 2 (7:8)
        layer.masks.assign(broken)
        with pytest.raises(ValueError, match=r"7:8 pattern .* \{'conv2': 1\}"):
            export.export_subnet(model, 2, str(tmp_path / "bad"))
        assert not (tmp_path / "bad").exists()
        assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]  # no temporary
    finally:
        layer.masks.assign(saved)


# ------------------------------------------------------------------------------ launcher
@pytest.fixture
def launcher_flags():
    from launch import train as launcher

    yield launcher
    launcher.FLAGS.unparse_flags()


@pytest.mark.parametrize("args, message", [
    (["--nm=2:4,3:4"], "needs --nm_counts=zeros"),
    (["--nm_counts=zeros"], "without --nm"),
    (["--nm=2:4", "--nm_counts=ones"], "unknown --nm_counts='ones'"),
    (["--nm=4:4", "--nm_counts=zeros"], "1 <= N < M"),
    (["--nm=1:1", "--nm_counts=nonzeros"], "M >= 2"),
    (["--nm=3:4,2:4", "--nm_counts=zeros"], "strictly increasing"),
    (["--nm=2:4,1:4", "--nm_counts=nonzeros", "--sparsities=0.5,0.75"], "leave out"),
    (["--nm=2:4", "--nm_counts=zeros", "--initial_sparsity=0.5"], "initial_sparsity must be"),
    (["--nm=2:4", "--nm_counts=zeros", "--prune_mode=subset"], "nondisjoint only"),
])
def test_nm_flag_errors(launcher_flags, args, message):
    launcher_flags.FLAGS(["train", *args])
    with pytest.raises(launcher_flags.FlagError, match=re.escape(message)):
        launcher_flags.check_flags()


def test_nm_flags_and_flagfile(launcher_flags, tmp_path):
    launcher_flags.FLAGS(["train", "--nm=2:4,1:4,1:8", "--nm_counts=nonzeros"])
    assert launcher_flags.check_flags() == [0.5, 0.75, 0.875]
    launcher_flags.FLAGS.unparse_flags()
    launcher_flags.FLAGS(["train", f"--flagfile={ROOT}/launch/configs/cifar10_resnet18_nm.flags",
                          f"--data_dir={tmp_path}"])
    assert launcher_flags.check_flags() == [0.5, 0.75, 0.875, 0.9375]
    flags = launcher_flags.FLAGS
    assert (flags.model, flags.dataset, flags.nm_counts) == ("resnet18", "cifar10", "zeros")
    assert (flags.epochs, flags.batch_size, flags.lr, flags.update_frequency) == (160, 128, 0.1,
                                                                                  1000)


def _launch(*args):
    return subprocess.run([sys.executable, "-m", "launch.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_launcher_nm_run(tmp_path):
    out = tmp_path / "run"
    result = _launch("--nm=2:4,1:4", "--nm_counts=nonzeros", "--epochs=4", "--verbose=0",
                     f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert "zeros in every group of M" in summary["nm_notation"]
    for entry, text, sparsity in zip(summary["subnets"], ("2:4", "3:4"), (0.5, 0.75)):
        assert entry["nm_pattern"]["pattern"] == text and entry["target_sparsity"] == sparsity
        assert entry["nm_check"]["satisfied"] and entry["nm_check"]["violating_groups"] == 0
        assert set(entry["nm_check"]["layers"]) == {"block1_conv", "block2_conv", "block3_conv",
                                                   "classifier"}
        assert entry["measured_sparsity"] == pytest.approx(sparsity)  # read from the SavedModel
    table = result.stdout
    assert re.search(r"\n\s+1\s+3:4\s+ok\s+75.00%", table), table
    bad = _launch("--nm=2:4", f"--output_dir={tmp_path}/bad")
    assert bad.returncode == 2 and not (tmp_path / "bad").exists()
    assert [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")] == [
        "error: --nm=2:4 needs --nm_counts=zeros (N zeros in every group of M, the paper's "
        "notation) or --nm_counts=nonzeros (N non-zeros, NVIDIA's)"]


# ------------------------------------------------------------------------------ accuracy
def _readme_nm_example():
    text = NM_DOC.read_text()
    match = re.search(r"# N:M structured sub-nets\n.*?```python\n(.*?)```", text, re.S)
    assert match, "docs/nm.md lost its N:M example"
    return match.group(1)


def test_readme_nm_example_matches_dense_accuracy(tmp_path, monkeypatch):
    """4 N:M sub-nets (2:4, 3:4, 7:8, 15:16, paper notation) in one AST run, 30 epochs, each
    within 2 points of the same CNN trained dense for 30 epochs."""
    from test_accuracy import _dense_accuracy

    monkeypatch.chdir(tmp_path)  # the example exports nm_15_16/
    code = _readme_nm_example().replace("callbacks=[prune])", "callbacks=[prune], verbose=0)")
    scope = {}
    exec(compile(code, str(NM_DOC), "exec"), scope)
    model, patterns = scope["model"], scope["patterns"]
    results = model.evaluate_subnets(scope["test"])
    keras.utils.set_random_seed(1234)
    dense = _dense_accuracy()
    print(f"dense {100 * dense:.2f}%; " + ", ".join(
        f"{p}: {100 * r['accuracy']:.2f}%" for p, r in zip(patterns, results.values())))
    names = [layer.name for layer in model.sparse_layers]
    assert all(r.satisfied for r in export.check_nm("nm_15_16", patterns[3], names).values())
    for k, pattern in enumerate(patterns):
        assert model.subnet_sparsity(k) == pattern.sparsity
        assert results[k]["accuracy"] >= dense - 0.02, (str(pattern), results[k], dense)
