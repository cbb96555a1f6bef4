"""LiteRT files of sub-nets (sparse encoding, checked with the LiteRT interpreter), the XNNPACK
preset and qualification check, and python -m launch.export's artefacts and table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_ast
from conftest import compile_ast, tiny_cnn
from keras_ast import export, litert, xnnpack
from keras_ast.models import mobilenet

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("ai_edge_litert", reason="pip install ai-edge-litert (keras_ast[test])")


def _set_masks(model, sparsity, seed=0):
    """Random masks with exactly round(sparsity * size) zeros per layer, every sub-net."""
    rng = np.random.default_rng(seed)
    for layer in model.sparse_layers:
        masks = np.ones(tuple(layer.masks.shape), np.float32)
        for k in range(model.num_subnets):
            flat = masks[k].reshape(-1)
            flat[rng.permutation(flat.size)[:round(sparsity[k] * flat.size)]] = 0
        layer.masks.assign(masks)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits):
    keras.utils.set_random_seed(3)
    model = keras_ast.ASTModel.from_model(tiny_cnn(width=16), [0.5, 0.9])
    compile_ast(model)
    model.fit(digits.x_train[:256], digits.y_train[:256], batch_size=64, epochs=1, verbose=0)
    _set_masks(model, [0.5, 0.9])
    root = tmp_path_factory.mktemp("export")
    model.save(root / "model.keras")
    (root / "summary.json").write_text(json.dumps(
        {"subnets": [{"subnet": 0, "accuracy": 0.5}, {"subnet": 1, "accuracy": 0.25}]}))
    return root, model


def test_sparse_encoding_shrinks_the_file_and_predicts_as_the_saved_model(run_dir, digits):
    root, model = run_dir
    path = export.export_subnet(model, 1, str(root / "sm1"))
    dense, sparse = litert.convert(path, sparse=False), litert.convert(path)
    # 90 % zeros in the two pruned convs and the classifier: all three encoded sparse.
    shapes = sorted(t["shape"] for t in litert.sparse_tensors(sparse))
    assert shapes == sorted([[32, 3, 3, 16], [32, 3, 3, 32], [10, 32]])
    assert litert.sparse_tensors(dense) == []
    assert len(sparse) < 0.5 * len(dense)
    assert litert.check(sparse, path, digits.x_test[:16], atol=1e-4) < 1e-4
    model.set_subnet(1)
    np.testing.assert_allclose(litert.predict(litert.interpreter(sparse), digits.x_test[:4]),
                               model.predict(digits.x_test[:4], verbose=0), atol=1e-4)


def test_sparse_encoding_needs_30_percent_zeros_per_tensor(run_dir):
    root, model = run_dir
    path = export.export_subnet(model, 0, str(root / "sm0"))
    _set_masks(model, [0.25, 0.9], seed=1)  # below the converter's threshold
    low = export.export_subnet(model, 0, str(root / "sm0_low"))
    _set_masks(model, [0.5, 0.9])
    assert len(litert.sparse_tensors(litert.convert(path))) == 3
    assert litert.sparse_tensors(litert.convert(low)) == []


def test_latency_measures_every_model_side_by_side(run_dir, digits):
    root, model = run_dir
    files = {name: litert.convert(export.export_subnet(model, k, str(root / f"lat{k}")))
             for name, k in (("a", 0), ("b", 1))}
    times = litert.latency(files, digits.x_test[0], runs=5, warmup=1)
    assert set(times) == {"a", "b"}
    assert all(0 < t["p10_ms"] <= t["median_ms"] <= t["p90_ms"] for t in times.values())
    with pytest.raises(ValueError, match="runs must be"):
        litert.latency(files, digits.x_test[0], runs=0)


def test_xnnpack_preset_prunes_the_1x1_convs_and_the_check_explains():
    model = keras_ast.ASTModel.from_model(mobilenet(width_multiplier=0.25), [0.6, 0.7],
                                          prunable="xnnpack")
    assert {layer.name for layer in model.sparse_layers} == {f"block{i}_pw" for i in range(1, 8)}
    _set_masks(model, [0.6, 0.7])
    good = xnnpack.check(export.subnet_model(model, 1))
    assert good.qualifies and good.reasons == [] and abs(good.sparsity_1x1 - 0.7) < 1e-3
    bad = xnnpack.check(export.subnet_model(model, 0))
    assert not bad.qualifies and "needs more than 66.7%" in bad.reasons[0]
    assert "does not qualify" in str(bad)
    resnet = xnnpack.check(keras_ast.models.resnet20(width_multiplier=0.25))
    assert not resnet.qualifies
    assert any("only 1x1 convolutions" in r for r in resnet.reasons)
    small = xnnpack.check(tiny_cnn())
    assert any("first convolution stem_conv" in r for r in small.reasons)
    assert any("conv1 (Conv2D): only 1x1" in r for r in small.reasons)
    assert any("no 1x1 convolution" in r for r in small.reasons)
    with pytest.raises(ValueError, match="'xnnpack'"):
        keras_ast.sparsify(tiny_cnn(), 2, prunable="1x1")


def test_launch_export_writes_every_artefact_and_the_table(run_dir):
    from launch import export as launch_export

    root, model = run_dir
    table = launch_export.measure(str(root), latency_runs=3, warmup=1, log=lambda *a: None)
    rows = table["subnets"]
    assert [r["subnet"] for r in rows] == [0, 1] and rows[1]["accuracy"] == 0.25
    assert [round(r["measured_sparsity"], 2) for r in rows] == [0.5, 0.9]
    assert rows[1]["tflite_bytes"] < rows[0]["tflite_bytes"] < table["dense"]["tflite_bytes"]
    assert all(r["tflite_max_abs_diff"] < 1e-4 and r["speedup"] > 0 for r in rows)
    assert table["multi"]["max_abs_diff"] == 0.0 and table["multi"]["ratio"] < 0.8
    assert table["multi"]["keras_bytes"] > 0
    for path in ("saved_model/subnet_0", "saved_model/subnet_1", "multi", "multi.keras",
                 "litert/subnet_1.tflite", "litert/dense.tflite", "deployment.md"):
        assert os.path.exists(root / "deploy" / path), path
    summary = json.loads((root / "summary.json").read_text())
    assert summary["deployment"]["subnets"][1]["tflite_bytes"] == rows[1]["tflite_bytes"]
    assert "| 1 | 90.00 % | 25.00 % |" in (root / "deploy" / "deployment.md").read_text()


def test_launch_export_refuses_bad_flags(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for args, message in (([], "--run_dir is required"),
                          ([f"--run_dir={tmp_path}", "--format=onnx"], "unknown --format"),
                          ([f"--run_dir={tmp_path}"], "no model.keras")):
        result = subprocess.run([sys.executable, "-m", "launch.export", *args], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
