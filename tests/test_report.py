"""A short launcher run, its TensorBoard logs and `python -m launch.report` on it."""

import itertools
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib import image as mpimg

import keras_ast  # noqa: F401  (registers ASTModel for load_model)
from keras_ast import monitor

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ("accuracy", "layer_sparsity", "mask_xor", "gc_inner_products", "training_flops")


def _run(module, *args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory):
    """3 epochs of the default job, mask updates every 12 steps so the masks really prune (to
    the targets by epoch 3), then the report."""
    out = tmp_path_factory.mktemp("run")
    result = _run("launch.train", f"--output_dir={out}", "--verbose=0", "--epochs=3",
                  "--update_frequency=12", "--adjustment_period=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"report: python -m launch.report --run_dir={out}" in result.stdout
    result = _run("launch.report", f"--run_dir={out}", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_every_plot_is_a_real_png(reported_run):
    for name in PLOTS:
        path = reported_run / "report" / f"{name}.png"
        assert path.stat().st_size > 10_000, f"{path} is suspiciously small"
        width, height = _png_size(path)
        pixels = mpimg.imread(path)  # decodes the whole image
        assert pixels.shape[:2] == (height, width) and width >= 500 and height >= 300
        assert pixels[..., :3].std() > 0.05, f"{path} is (nearly) blank"
        assert f"({name}.png)" in (reported_run / "report" / "report.md").read_text()


def _pct(value):
    return f"{100 * value:.2f}%"


def test_report_numbers_equal_those_recomputed_from_the_records(reported_run):
    """Sparsities and mask XOR recomputed here from masks.npz, GC and accuracy from
    metrics.jsonl, FLOPs from the saved model; masks.npz is the saved model's masks."""
    info = json.loads((reported_run / monitor.RUN_INFO).read_text())
    history = [json.loads(line) for line in open(reported_run / monitor.HISTORY)]
    numbers = json.loads((reported_run / "report" / "report.json").read_text())
    markdown = (reported_run / "report" / "report.md").read_text()
    model = keras.models.load_model(reported_run / "model.keras")
    K, names = model.num_subnets, [layer.name for layer in model.sparse_layers]
    assert len(history) == 3 and info["layers"][0]["name"] == names[0]
    with np.load(reported_run / monitor.MASKS) as data:
        masks = [{n: data[f"subnet_{k}/{n}"] for n in names} for k in range(K)]
    for k in range(K):
        for n in names:
            np.testing.assert_array_equal(masks[k][n], model.masks(k)[n].astype(bool))
        entry = numbers["subnets"][k]
        zeros = sum(int((~m).sum()) for m in masks[k].values())
        sparsity = zeros / sum(m.size for m in masks[k].values())
        assert entry["sparsity"] == pytest.approx(sparsity, abs=1e-12)
        assert abs(sparsity - model.sparsities[k]) < 0.005  # the masks really pruned
        for n in names:
            layer = float((~masks[k][n]).mean())
            assert entry["layer_sparsity"][n] == pytest.approx(layer, abs=1e-12)
            assert _pct(layer) in markdown
        assert entry["val_accuracy"] == history[-1]["logs"][f"val_accuracy_{k}"]
        assert entry["training_flops"] == pytest.approx(model.training_flops[k])
        assert entry["training_examples"] == model.training_examples[k]
    assert numbers["training_flops"] == pytest.approx(model.training_flops["total"])
    for a, b in itertools.combinations(range(K), 2):
        xor = numbers["mask_xor"][f"{a} vs {b}"]
        for n in names:
            differ = float(np.mean(masks[a][n] != masks[b][n]))
            assert xor[n] == pytest.approx(differ, abs=1e-12)
            assert _pct(differ) in markdown
        assert 0.0 < xor["all"] < 1.0
    for i in range(1, K):
        stats = numbers["gc_statistics"][str(i)]
        negative = sum(r["gc"][str(i)]["negative"] for r in history)
        positive = sum(r["gc"][str(i)]["positive"] for r in history)
        assert stats["gc_ratio"] == pytest.approx(negative / positive)
        assert stats["steps"] == 3 * 14  # 42 steps per epoch, K = 3
        assert f"| {i} | 42 | " in markdown and f"{negative / positive:.3f}" in markdown
    summary = json.loads((reported_run / "summary.json").read_text())
    assert summary["run_dirs"] == [str(reported_run)]


def _readme_tags():
    """(run, tag) pairs of the table of TensorBoard scalars in docs/monitoring.md."""
    text = (ROOT / "docs" / "monitoring.md").read_text()
    rows = re.findall(r"^\| `(train|validation|ast)` \| ([^|]+)\|", text, flags=re.M)
    assert len(rows) >= 10, "docs/monitoring.md lists the TensorBoard scalars in a table"
    return [(run, tag) for run, cell in rows for tag in re.findall(r"`([^`]+)`", cell)]


def test_tensorboard_has_every_scalar_listed_in_the_readme(reported_run):
    logs = reported_run / "logs"
    found = {}
    for path in logs.glob("*/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault((path.parent.name, value.tag), {})[event.step] = float(
                    tf.make_ndarray(value.tensor))
    model = keras.models.load_model(reported_run / "model.keras")
    K, names = model.num_subnets, [layer.name for layer in model.sparse_layers]
    expected = set()
    for run, tag in _readme_tags():
        tags = [tag]
        for placeholder, values in (("<k>", range(K)), ("<i>", range(1, K)),
                                    ("<layer>", names), ("<metric>", ["accuracy", "loss"])):
            tags = [t.replace(placeholder, str(v)) for t in tags for v in values] \
                if any(placeholder in t for t in tags) else tags
        expected.update((run, t) for t in tags)
    missing = sorted(expected - set(found))
    assert not missing, f"listed in docs/monitoring.md but not in the event files: {missing}"
    assert ("validation", "epoch_accuracy_2") in expected and ("ast", "epoch_gc_negative_2") \
        in expected  # the expansion works
    # The values are the recorded ones, per epoch (TensorBoard step = 0-based epoch).
    history = [json.loads(line) for line in open(reported_run / monitor.HISTORY)]
    for e, record in enumerate(history):
        for k in range(K):
            for key, (run, tag) in ((f"accuracy_{k}", ("train", f"epoch_accuracy_{k}")),
                                    (f"val_accuracy_{k}", ("validation",
                                                           f"epoch_accuracy_{k}"))):
                assert found[(run, tag)][e] == pytest.approx(record["logs"][key], abs=1e-6)
        counts = record["gc"]["1"]
        assert found[("ast", "epoch_gc_negative_1")][e] == pytest.approx(
            counts["negative"] / counts["products"], abs=1e-6)


def test_report_on_an_incomplete_run_dir_names_the_file(tmp_path):
    (tmp_path / monitor.RUN_INFO).write_text("{}")
    result = _run("launch.report", f"--run_dir={tmp_path}", timeout=120)
    assert result.returncode == 2
    assert "metrics.jsonl" in result.stderr and "RunRecorder" in result.stderr
