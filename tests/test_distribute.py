"""tf.distribute: 2 replicas (MirroredStrategy on 2 logical CPUs, MultiWorkerMirroredStrategy
with 2 worker processes) against one device with the same global batch.

The runs are subprocesses (tests/distributed_job.py): logical devices must be configured before
TensorFlow initialises, and a multi-worker cluster needs one process per worker. Each run is 12
AST-GC steps (K = 2, layer-wise GC, mask updates at steps 0, 3, 4, 7, 8 and 11, coupled L2,
momentum) of a small CNN on the digits.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ast
import keras_ast.data
from conftest import compile_ast, tiny_cnn
from keras_ast import distribute
from test_data import tfds_prepare_env, write_imagenet_archives  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "distributed_job.py"
TIMEOUT = 300
# Observed: 1.3e-7 (weights, 2 replicas or 2 workers vs 1 device, float32 summation order);
# masks, FLOPs and sparsities identical.
TOLERANCE = 1e-5


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), **extra)
    return env


def _start(out, *args, env=None):
    return subprocess.Popen([sys.executable, str(JOB), f"--out={out}", *args], cwd=ROOT,
                            env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(processes):
    """Waits for all; fails with the stderr of any that failed or hung."""
    failures = []
    for name, process in processes.items():
        try:
            _, err = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in processes.values():
                p.kill()
            _, err = process.communicate()
            failures.append(f"{name} timed out after {TIMEOUT} s:\n{err[-3000:]}")
            continue
        if process.returncode != 0:
            failures.append(f"{name} exited with {process.returncode}:\n{err[-3000:]}")
    assert not failures, "\n\n".join(failures)


def _run_all(jobs, configs):
    """jobs: {name: (output prefix, args, env)} run in parallel, each training `configs` ->
    {(name, config): dict of arrays}."""
    processes = {name: _start(prefix, f"--configs={','.join(configs)}", *args, env=env)
                 for name, (prefix, args, env) in jobs.items()}
    _finish(processes)
    return {(name, config): dict(np.load(f"{prefix}_{config}.npz"))
            for name, (prefix, _, _) in jobs.items() for config in configs}


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _compare(reference, other, tolerance=TOLERANCE):
    """Max abs difference per key over the variables; masks and FLOPs must be identical."""
    variables = [k for k in reference if k.startswith(("var:", "opt:"))]
    assert set(variables) == {k for k in other if k.startswith(("var:", "opt:"))}
    worst = {}
    for key in variables:
        a, b = reference[key].astype(np.float64), other[key].astype(np.float64)
        worst[key] = float(np.max(np.abs(a - b), initial=0.0))
        if key.endswith("/masks"):
            np.testing.assert_array_equal(a, b, err_msg=key)
    assert max(worst.values()) <= tolerance, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    np.testing.assert_array_equal(reference["train_flops"], other["train_flops"])
    np.testing.assert_array_equal(reference["sparsity"], other["sparsity"])
    for key in [k for k in reference if k.startswith("log:")]:  # loss, accuracy, GC statistics
        np.testing.assert_allclose(other[key], reference[key], atol=1e-5, err_msg=key)
    return max(worst.values())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One device and MirroredStrategy on 2 logical CPUs (in parallel), each training the
    configurations of tests/distributed_job.py: "ast" (no BatchNorm, mask updates, GC, an
    L2-regularised kernel), "bn" (synchronised BatchNorm, GC, no mask update), "joint"."""
    out = tmp_path_factory.mktemp("dist")
    return _run_all({"one": (out / "one", ["--strategy=one"], None),
                     "mirrored": (out / "mirrored", ["--strategy=mirrored"], None)},
                    ["ast", "bn", "joint", "nan"])


def test_a_nan_on_one_replica_skips_the_step_on_every_replica(runs):
    """A NaN pixel in replica 1's share of step 3 (a mask-update step, synchronised BN): every
    replica skips the step whole, and the run equals the one-device run with the same batch."""
    one, two = runs["one", "nan"], runs["mirrored", "nan"]
    assert int(one["nonfinite_steps"]) == 1 and int(two["nonfinite_steps"]) == 1
    for key in [k for k in two if k.startswith(("var:", "opt:"))]:
        assert np.all(np.isfinite(two[key])), key
    assert float(two["replica_spread"]) == 0.0
    _compare(one, two)
    # The step was skipped, not the run: the masks reached their sparsities all the same.
    np.testing.assert_allclose(two["sparsity"], [0.5, 0.8], atol=1e-3)


def test_two_replicas_equal_one_device_with_the_same_global_batch(runs):
    one, two = runs["one", "ast"], runs["mirrored", "ast"]
    assert int(one["replicas"]) == 1 and int(two["replicas"]) == 2
    # The steps did what the test is about: gradient correction fired, masks were updated.
    assert float(one["log:gc_conflict"][0]) > 0.1
    np.testing.assert_allclose(one["sparsity"], [0.5, 0.8], atol=1e-3)
    masks = one["var:conv1/masks"]
    assert 0.0 < masks.mean() < 1.0 and not np.array_equal(masks[0], masks[1])
    _compare(one, two)
    # Every replica holds the same weights, masks, BN copies, GC references, optimizer slots.
    assert float(two["replica_spread"]) == 0.0


def test_synchronized_batchnorm_two_replicas_equal_one_device(runs):
    """BatchNorm statistics all-reduced over the replicas: the global batch's, as on one
    device (12 GC steps, no mask update: docs/distributed.md says why BN runs are compared
    without one)."""
    one, two = runs["one", "bn"], runs["mirrored", "bn"]
    assert "var:bn1/moving_mean" in one
    _compare(one, two)
    assert float(two["replica_spread"]) == 0.0


def test_joint_training_two_replicas_equal_one_device(runs):
    one, two = runs["one", "joint"], runs["mirrored", "joint"]
    np.testing.assert_allclose(one["sparsity"], [0.5, 0.8], atol=1e-3)
    _compare(one, two)
    assert float(two["replica_spread"]) == 0.0


def test_multi_worker_two_processes_end_with_identical_masks(tmp_path, runs):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    jobs = {}
    for index in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        jobs[f"worker{index}"] = (tmp_path / f"worker{index}", ["--strategy=multi_worker"],
                                  _env(TF_CONFIG=config))
    workers = _run_all(jobs, ["ast"])
    first, second = workers["worker0", "ast"], workers["worker1", "ast"]
    assert int(first["replicas"]) == 2
    masks = [k for k in first if k.endswith("/masks")]
    assert masks
    for key in masks:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    np.testing.assert_allclose(first["sparsity"], [0.5, 0.8], atol=1e-3)  # as scheduled
    # Both workers also match the one-device run with the same global batch.
    _compare(runs["one", "ast"], first)
    _compare(runs["one", "ast"], second)


# ----------------------------------------------------------------------------- in process
def test_jit_compile_is_refused_under_mirrored_strategy(digits_batches):
    x, y = digits_batches
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = compile_ast(keras_ast.ASTModel.from_model(tiny_cnn(), [0.5]), jit_compile=True)
    with pytest.raises(ValueError, match="jit_compile=True does not work under MirroredStrategy"):
        model.fit(x, y, batch_size=64, epochs=1, verbose=0)


def test_one_replica_mirrored_strategy_equals_no_strategy(digits_batches):
    """fit under MirroredStrategy on one replica (replica context; the mask update's cond
    writes replica-local masks) gives the same model as without a strategy."""
    x, y = digits_batches
    plain = tiny_cnn()
    weights = []
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0"])):
        with strategy.scope():
            model = compile_ast(keras_ast.ASTModel.from_model(plain, [0.5, 0.8]), l2=5e-4)
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False,
                  callbacks=[keras_ast.PruneRegrow(frequency=4, adjustment_period=2,
                                                   end_step=4)])
        weights.append([np.asarray(v) for v in model.variables])
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_set_synchronized_batchnorm_and_strategy_helpers(monkeypatch):
    model = keras_ast.ASTModel.from_model(tiny_cnn(), [0.5, 0.8])
    assert distribute.set_synchronized_batchnorm(model, True) == 3  # stem BN + 2 switchable
    assert all(layer.synchronized for layer in model.network.layers
               if isinstance(layer, keras.layers.BatchNormalization))
    assert distribute.is_chief()  # no cluster: the only process is the chief
    with pytest.raises(ValueError, match="unknown distribution 'ring'"):
        distribute.make_strategy("ring")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        distribute.make_strategy("multi_worker")


@pytest.mark.slow  # 60-70 s; multi-worker equality is covered by the tests above
def test_launcher_multi_worker(tmp_path):
    """`launch.train --distribution=multi_worker` on 2 worker processes (TF_CONFIG): both
    finish, only the chief writes the outputs and the run records (both validate every
    sub-net: its evaluation all-reduces over the workers)."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = {}
    for index in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes[f"worker{index}"] = subprocess.Popen(
            [sys.executable, "-m", "launch.train", "--distribution=multi_worker", "--epochs=3",
             "--batch_size=64", "--prune_end_epoch=1", "--checkpoint_every=8", "--verbose=0",
             f"--output_dir={tmp_path / 'out'}"],
            cwd=ROOT, env=_env(TF_CONFIG=config), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
    _finish(processes)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["distribution"] == "multi_worker" and summary["replicas"] == 2
    for entry in summary["subnets"]:
        assert entry["measured_sparsity"] == pytest.approx(entry["target_sparsity"], abs=0.005)
        assert entry["accuracy"] > 0.5  # 63 steps; chance is 0.1
    assert sorted(os.listdir(tmp_path / "out")) == [
        "export", "logs", "masks.npz", "metrics.jsonl", "model.keras", "run.json",
        "summary.json"]
    # The run records (launch.report) come from the chief alone: one line per epoch.
    history = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2, 3]
    assert all("val_accuracy_0" in json.loads(line)["logs"] for line in history)


@pytest.mark.slow
def test_imagenet_resnet50_flagfile_runs_mirrored(tmp_path, tfds_prepare_env):
    """The ImageNet ResNet-50 set-up (its flag file: MirroredStrategy, checkpoints) end to end
    on a fake prepared ImageNet of 8 images, with a schedule shortened to 8 steps."""
    write_imagenet_archives(tmp_path / "manual")
    data_dir = str(tmp_path / "tfds")
    keras_ast.data.load_imagenet(data_dir, prepare=True, manual_dir=str(tmp_path / "manual"))
    result = subprocess.run(
        [sys.executable, "-m", "launch.train",
         "--flagfile=launch/configs/imagenet_resnet50.flags", f"--data_dir={data_dir}",
         f"--output_dir={tmp_path / 'out'}", "--batch_size=2", "--epochs=2",
         "--warmup_epochs=0", "--update_frequency=4", "--adjustment_period=2",
         "--prune_end_epoch=1", "--checkpoint_every=2", "--verbose=0"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"] == "resnet50" and summary["distribution"] == "mirrored"
    for entry in summary["subnets"]:
        assert entry["measured_sparsity"] == pytest.approx(entry["target_sparsity"], abs=0.005)
