"""Fault tolerance: a run killed mid-epoch and resumed equals an uninterrupted one, bit for
bit; checkpoints are written atomically, validated on restore, and a bad one falls back."""

import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_ast
from conftest import compile_ast, tiny_cnn
from keras_ast import atomic, checkpoint
from keras_ast.checkpoint import CheckpointError
from keras_ast.data import load_digits_arrays
from keras_ast.data.stream import in_memory_source

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ SIGKILL and --resume
# 21 steps per epoch (batch 64), 63 in all; a checkpoint every 4 steps; the run is killed as
# soon as a checkpoint of step >= 24 (epoch 2, batch 3) exists, i.e. mid-epoch 2 (the next
# epoch-end checkpoint, step 42, is 18 steps away; the test checks it was not reached). The
# runs use MirroredStrategy (one replica on a CPU-only machine), so the launcher's distributed path,
# synchronised BatchNorm included, is resumed too.
LAUNCH_ARGS = ["--epochs=3", "--batch_size=64", "--prune_end_epoch=1", "--checkpoint_every=4",
               "--verbose=0", "--distribution=mirrored"]
KILL_AT = 24


def _launch(out, *extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    return subprocess.Popen([sys.executable, "-m", "launch.train", f"--output_dir={out}",
                             *LAUNCH_ARGS, *extra], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _checkpoint_steps(directory):
    return [int(m.group(1)) for m in (re.search(r"ckpt-(\d+)\.json$", p)
                                      for p in glob.glob(f"{directory}/ckpt-*.json")) if m]


def _kill_after_checkpoint(process, directory, step, timeout=300):
    """SIGKILLs `process` as soon as a checkpoint of `step` or later exists in `directory`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if max(_checkpoint_steps(directory), default=-1) >= step:
            process.send_signal(signal.SIGKILL)
            process.communicate()
            return
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"the run ended (status {process.returncode}) before a checkpoint of "
                        f"step {step}:\n{err[-3000:]}")
        time.sleep(0.005)
    process.kill()
    pytest.fail(f"no checkpoint of step {step} within {timeout} s")


def _variables(model):
    return {v.path: np.asarray(v) for v in list(model.variables) + model.optimizer.variables}


def test_killed_run_resumes_bit_exactly(tmp_path):
    reference = _launch(tmp_path / "ref", "--resume")  # no checkpoint yet: starts from 0
    killed = _launch(tmp_path / "run")
    _kill_after_checkpoint(killed, tmp_path / "run" / "backup", KILL_AT)
    assert killed.returncode == -signal.SIGKILL

    # A copy whose checkpoints are all damaged: --resume stops with an error naming them.
    shutil.copytree(tmp_path / "run" / "backup", tmp_path / "bad" / "backup")
    for path in glob.glob(str(tmp_path / "bad" / "backup" / "ckpt-*.weights.h5")):
        Path(path).write_bytes(Path(path).read_bytes()[:1000])
    bad = _launch(tmp_path / "bad", "--resume")
    # Resuming under other settings (seed, learning rate) stops, naming them.
    shutil.copytree(tmp_path / "run" / "backup", tmp_path / "other" / "backup")
    other = _launch(tmp_path / "other", "--resume", "--seed=1", "--lr=0.1")
    # Not resuming over the checkpoints of an unfinished run is an error, not a restart.
    again = _launch(tmp_path / "bad")
    resumed = _launch(tmp_path / "run", "--resume")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 2 and "pass --resume" in err, err[-2000:]
    _, err = other.communicate(timeout=300)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert other.returncode == 2 and len(errors) == 1, err[-2000:]
    assert "other settings: lr 0.05 -> 0.1, seed 0 -> 1" in errors[0], errors[0]
    _, err = bad.communicate(timeout=300)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1, err[-2000:]
    # (2 checkpoints, or 3 when the kill came between a save and the deletion of the oldest)
    assert re.search(r"none of the [23] checkpoints", errors[0]) and "truncated" in errors[0]

    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    ref_out, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_err[-3000:]
    assert "no checkpoint in" in ref_out and "starting from step 0" in ref_out

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    ref_summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    (start,) = summary["resumed_from_step"]
    steps = summary["steps_per_epoch"]
    assert start >= KILL_AT and start % steps != 0, (start, steps)  # mid-epoch
    assert f"Restored step {start} (epoch {start // steps + 1}, batch {start % steps})" in out
    assert ref_summary["resumed_from_step"] == [0]
    assert summary["subnets"] == [{**e, "export_path": e["export_path"].replace("/ref/", "/run/")}
                                  for e in ref_summary["subnets"]]
    assert not (tmp_path / "run" / "backup").exists()  # dropped once the run is complete

    # Every variable, bit for bit: weights, all masks, BN copies and moving statistics,
    # iteration counter, GC references, FLOPs counters, optimizer step and momenta.
    expected = _variables(keras.models.load_model(tmp_path / "ref" / "model.keras"))
    actual = _variables(keras.models.load_model(tmp_path / "run" / "model.keras"))
    assert expected.keys() == actual.keys()
    for path, value in expected.items():
        np.testing.assert_array_equal(actual[path], value, err_msg=path)


# ---------------------------------------------------------------------- library, in process
class _Kill(Exception):
    pass


class _KillAt(keras.callbacks.Callback):
    """Stops training (by an exception, as a crash would) once the model reaches `step`."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.iteration.numpy()) >= self.step:
            raise _Kill()


def _dropout_model(sparsities=(0.5, 0.8)):
    """A small AST model with BatchNorm and Dropout (whose RNG state must be restored too)."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv1")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(0.3, seed=3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="classifier")(x)
    model = keras_ast.ASTModel.from_model(keras.Model(inputs, outputs), sparsities)
    return compile_ast(model, lr=0.05, l2=5e-4)


def _train(directory, kill_at=None):
    keras.backend.clear_session()
    keras.utils.set_random_seed(5)
    split = load_digits_arrays(seed=0)
    source = in_memory_source((split.x_train[:512], split.y_train[:512]), 64, seed=9)
    model = _dropout_model()
    backup = checkpoint.BackupAndRestore(directory, save_every=3, verbose=0)
    prune = keras_ast.PruneRegrow(frequency=6, adjustment_period=3, end_step=12)
    callbacks = [prune] + ([_KillAt(kill_at)] if kill_at else [])
    start, _ = checkpoint.resume_fit(model, source, 3, backup, callbacks=callbacks, verbose=0)
    return model, start


def test_resume_fit_restores_state_data_order_and_dropout_rng(tmp_path):
    expected, _ = _train(tmp_path / "ref")
    with pytest.raises(_Kill):
        _train(tmp_path / "run", kill_at=13)  # 8 steps per epoch: killed in epoch 2
    resumed, start = _train(tmp_path / "run")
    assert start == 12  # the last checkpoint before the kill: epoch 2, batch 4
    assert int(resumed.iteration.numpy()) == 24
    a, b = _variables(expected), _variables(resumed)
    assert any("seed_generator_state" in p for p in a)
    for path in a:
        np.testing.assert_array_equal(b[path], a[path], err_msg=path)
    assert resumed.subnet_sparsity(1) == pytest.approx(0.8, abs=1e-3)


def _saved_model(tmp_path, steps=(4, 8, 12)):
    """A model and a backup directory with one checkpoint per step in `steps`."""
    model = _dropout_model()
    model.optimizer.build(model.trainable_variables)
    backup = checkpoint.BackupAndRestore(tmp_path / "backup", keep=len(steps), verbose=0)
    backup.steps_per_epoch = 8
    for step in steps:
        model.iteration.assign(step)
        backup.save(model)
    return model, backup


def test_bad_checkpoints_fall_back_to_the_previous_good_one(tmp_path, caplog):
    model, backup = _saved_model(tmp_path)
    files = {f.step: f for f in backup.checkpoints()}
    assert sorted(files) == [4, 8, 12]
    # A killed save leaves temporaries and a weights file without manifest: both ignored.
    Path(atomic.temporary_name(files[12].path(".weights.h5"))).write_bytes(b"partial")
    Path(files[12].path("").replace("000000012", "000000016") + ".weights.h5").write_bytes(b"x")

    weights = Path(files[12].weights)
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    data = bytearray(Path(files[8].weights).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the middle: corrupted
    Path(files[8].weights).write_bytes(bytes(data))
    model.iteration.assign(0)
    with caplog.at_level(logging.WARNING, logger="keras_ast"):
        assert backup.restore(model) == 4
    log = caplog.text
    assert "ckpt-000000012.json" in log and "truncated" in log
    assert "ckpt-000000008.json" in log and "SHA-256" in log
    assert "fell back to checkpoint" in log and "ckpt-000000004.json" in log

    Path(files[4].manifest).write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="none of the 3 checkpoints") as error:
        backup.restore(model)
    assert "truncated" in str(error.value) and "unreadable manifest" in str(error.value)

    # The next save cleans the temporaries up and writes a complete checkpoint again.
    model.iteration.assign(20)
    backup.save(model)
    assert not [p for p in os.listdir(backup.backup_dir) if p.startswith(".tmp-")]
    assert backup.restore(model) == 20


def test_checkpoint_of_another_model_or_run_is_refused(tmp_path):
    _, backup = _saved_model(tmp_path, steps=(8,))
    other = _dropout_model(sparsities=(0.5, 0.8, 0.9))  # 3 sub-nets
    with pytest.raises(checkpoint.CheckpointError, match="different model or optimizer"):
        backup.restore(other)
    model = _dropout_model()
    backup.steps_per_epoch = 9
    with pytest.raises(checkpoint.CheckpointError, match="8 steps per epoch, this one has 9"):
        backup.restore(model)


def test_plain_fit_restores_at_epoch_ends_and_refuses_mid_epoch(tmp_path, digits_batches):
    x, y = digits_batches  # 4 batches of 64
    model = _dropout_model()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0,
              callbacks=[checkpoint.BackupAndRestore(tmp_path / "b", verbose=0)])
    again = _dropout_model()
    history = again.fit(x, y, batch_size=64, epochs=2, verbose=0,
                        callbacks=[checkpoint.BackupAndRestore(tmp_path / "b", verbose=0)])
    assert len(history.history["loss"]) == 1  # epoch 1 came from the checkpoint
    assert int(again.iteration.numpy()) == 8  # 4 steps restored + 4 trained

    mid = _dropout_model()
    mid.fit(x, y, batch_size=64, epochs=1, verbose=0,
            callbacks=[checkpoint.BackupAndRestore(tmp_path / "m", save_every=3,
                                                   save_on_epoch_end=False, verbose=0)])
    with pytest.raises(checkpoint.CheckpointError, match="middle of an epoch.*resume_fit"):
        _dropout_model().fit(x, y, batch_size=64, epochs=1, verbose=0,
                             callbacks=[checkpoint.BackupAndRestore(tmp_path / "m", verbose=0)])


def test_epoch_order_depends_only_on_seed_and_epoch():
    import tensorflow as tf

    split = load_digits_arrays(seed=0)
    arrays = (split.x_train[:100], np.arange(100))

    def noisy(batch, key):  # stands in for augmentation: draws from the batch's key
        x, index = batch
        return x + tf.random.stateless_uniform(tf.shape(x), key), index

    def batches(dataset):
        return [(x.numpy(), i.numpy()) for x, i in dataset]

    source = in_memory_source(arrays, 16, seed=4, transform=noisy)  # 6 batches per epoch
    full = batches(source.epochs(0, 3))
    assert len(full) == 18
    again = in_memory_source(arrays, 16, seed=4, transform=noisy)
    resumed = batches(source.epochs(1, 3, skip=4))  # a run resumed at epoch 1, batch 4
    assert len(resumed) == 8
    for (xa, ia), (xb, ib) in zip(full + full[10:], batches(again.epochs(0, 3)) + resumed):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(xa, xb)  # the same augmentation draws too
    for e in range(3):  # each epoch: 96 distinct examples (the last partial batch dropped)
        seen = np.concatenate([i for _, i in full[6 * e:6 * e + 6]])
        assert len(set(seen.tolist())) == 96
    assert not np.array_equal(full[0][1], full[6][1])  # epochs are reshuffled
    other = batches(in_memory_source(arrays, 16, seed=5).epochs(0, 1))
    assert not np.array_equal(full[0][1], other[0][1])  # and depend on the seed


def test_restore_refuses_a_checkpoint_of_other_settings(tmp_path, digits_batches):
    """The manifest keeps the run's configuration; restoring under another one raises,
    naming each differing (dotted) setting; the same one restores."""
    x, y = digits_batches
    model = compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(), [0.5]))
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    config = {"seed": 0, "lr": 0.05, "updater": {"name": "granet", "config": {"seed": 0}}}
    keras_ast.BackupAndRestore(tmp_path, config=config).save(model)
    other = {"seed": 1, "lr": 0.05, "updater": {"name": "granet", "config": {"seed": 1}}}
    with pytest.raises(CheckpointError, match=r"other settings: seed 0 -> 1, "
                                              r"updater\.config\.seed 0 -> 1; resume"):
        keras_ast.BackupAndRestore(tmp_path, config=other, verbose=0).restore(model)
    assert keras_ast.BackupAndRestore(tmp_path, config=config, verbose=0).restore(model) == 2
