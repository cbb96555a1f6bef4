"""bench/quality.py --quick on an image folder generated here: table, JSON, PNG, and a rerun
that reuses the finished runs instead of training again."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _folder(root, per_class_train=24, per_class_test=10, size=16):
    """4 classes of 16x16 RGB images, each class brighter in one channel (learnable), half
    PNG and half JPEG."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class_train), ("test", per_class_test)):
        for c in range(4):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
                image[..., c % 3] += np.uint8(120 + 60 * (c // 3))
                Image.fromarray(image).save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")


def _bench(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "bench/quality.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    _folder(root / "data")
    args = ["--quick", f"--data_dir={root / 'data'}", f"--bench_dir={root / 'bench'}"]
    result = _bench(*args)
    assert result.returncode == 0, result.stderr[-4000:]
    return root, args, result


def test_quick_writes_table_json_and_png(quick):
    root, _, result = quick
    for label in ("dense", "individual (K=1 each)", "AST (no GC)", "AST-GC", "joint (S-Net)"):
        assert label in result.stdout
    assert "gap to individual" in result.stdout and "FLOPs/dense" in result.stdout
    record = json.loads((root / "bench" / "quality.json").read_text())
    methods = record["methods"]
    assert set(methods) == {"dense", "individual", "ast", "ast_gc", "joint"}
    assert methods["ast_gc"]["seeds"] == [0, 1] and methods["ast"]["seeds"] == [0, 1]
    assert methods["individual"]["seeds"] == [0]  # --quick: one individual seed
    assert record["sparsities"] == [0.8, 0.9, 0.95]
    for method in ("individual", "ast", "ast_gc", "joint"):
        row = methods[method]
        assert len(row["accuracy"]) == 3 and all(len(a) == len(row["seeds"])
                                                 for a in row["accuracy"])
        for measured in row["measured_sparsity"]:
            np.testing.assert_allclose(measured, [0.8, 0.9, 0.95], atol=0.005)
        np.testing.assert_allclose(row["mean"], [np.mean(a) for a in row["accuracy"]])
        np.testing.assert_allclose(row["gap"], np.subtract(row["mean"],
                                                           methods["individual"]["mean"]))
    assert methods["dense"]["flops_ratio"] == 1.0
    # Sparse training costs less than dense; joint costs about the individual runs' sum.
    assert methods["ast_gc"]["flops_ratio"] < 1.0
    assert 0.8 < methods["joint"]["flops_ratio"] / methods["individual"]["flops_ratio"] < 1.6
    assert record["goals"] and "AST-GC" in record["table"]
    png = (root / "bench" / "quality.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_rerun_reuses_finished_runs(quick):
    root, args, first = quick
    before = {p: p.stat().st_mtime for p in (root / "bench").glob("*/summary.json")}
    assert len(before) == 7  # dense, individual x1, ast x2, ast_gc x2, joint
    again = _bench(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime for p in before} == before  # nothing retrained
    table = lambda text: text[text.index("method"):text.index("wrote")]  # noqa: E731
    assert table(again.stdout) == table(first.stdout)


def test_bad_method_is_refused(tmp_path):
    result = _bench("--quick", "--methods=ast,magic", f"--data_dir={tmp_path}",
                    f"--bench_dir={tmp_path}/b")
    assert result.returncode != 0 and "unknown --methods ['magic']" in result.stderr


def test_bn_recalibration_bench_on_the_quick_runs(quick):
    """bench/bn_recalibration.py reloads every saved sub-net of the quick run, recalibrates
    its BN copy and reports accuracy before and after; the saved models are not modified."""
    root, _, _ = quick
    saved = {p: p.stat().st_mtime for p in (root / "bench").glob("*/*.keras")}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "bench/bn_recalibration.py", f"--bench_dir={root / 'bench'}",
         f"--data_dir={root / 'data'}", "--batch_size=16", "--batches=3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((root / "bench" / "bn_recalibration.json").read_text())
    assert set(record["results"]) == {"individual", "ast", "ast_gc"}
    assert [len(record["results"]["ast_gc"][k]) for k in "012"] == [2, 2, 2]  # two seeds
    for subnets in record["results"].values():
        for pairs in subnets.values():
            assert all(0.0 <= a <= 1.0 and 0.0 <= b <= 1.0 for a, b in pairs)
    assert "before -> after" in result.stdout
    assert {p: p.stat().st_mtime for p in saved} == saved
