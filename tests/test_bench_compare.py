"""bench/curves.py and bench/suptickets.py on run records written here with known numbers:
means, spreads, paired seeds, FLOPs over a dense run, epochs to match, the four Sup-tickets
columns and their gain, and the scripts' PNG/JSON outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import curves  # noqa: E402
import suptickets as sup_bench  # noqa: E402

from keras_ast import monitor  # noqa: E402

DENSE_EXAMPLE_FLOPS = 10.0
EXAMPLES_PER_EPOCH = 100


def _record(run_dir, accuracies, flops_per_epoch, sparsities):
    """A run record: accuracies[k][epoch]; every sub-net trains EXAMPLES_PER_EPOCH / K examples
    per epoch at flops_per_epoch[k] FLOPs."""
    run_dir.mkdir(parents=True)
    k_count = len(sparsities)
    info = {"num_subnets": k_count, "sparsities": sparsities, "training": "alternating",
            "dense_example_flops": DENSE_EXAMPLE_FLOPS,
            "layers": [{"name": "dense", "shape": [2, 2], "size": 4}]}
    (run_dir / monitor.RUN_INFO).write_text(json.dumps(info))
    with open(run_dir / monitor.HISTORY, "w") as f:
        for e in range(len(accuracies[0])):
            logs = {f"val_accuracy_{k}": accuracies[k][e] for k in range(k_count)}
            f.write(json.dumps({
                "epoch": e + 1, "iteration": e + 1, "logs": logs,
                "train_flops": [flops_per_epoch[k] * (e + 1) for k in range(k_count)],
                "train_examples": [EXAMPLES_PER_EPOCH // k_count * (e + 1)] * k_count}) + "\n")
    np.savez(run_dir / monitor.MASKS, **{monitor.mask_key(k, "dense"): np.ones((2, 2), bool)
                                         for k in range(k_count)})


def _finish(seed_dir, summary=None):
    (seed_dir / "summary.json").write_text(json.dumps(summary or {}))


def test_curves_numbers(tmp_path):
    # without: seeds 0, 1 (final 0.50, 0.60 -> mean 0.55); with: seeds 0, 1, 2 (seed 2 has no
    # partner and is left out) reaching the mean 0.55 at epoch 2.
    for seed, acc in ((0, [0.3, 0.4, 0.5]), (1, [0.3, 0.5, 0.6])):
        _record(tmp_path / "a" / f"individual_seed{seed}" / "individual_0", [acc], [250.0], [0.9])
        _finish(tmp_path / "a" / f"individual_seed{seed}")
    for seed, acc in ((0, [0.4, 0.5, 0.6]), (1, [0.4, 0.6, 0.6]), (2, [0.9, 0.9, 0.9])):
        _record(tmp_path / "b" / f"individual_seed{seed}" / "individual_0", [acc], [750.0], [0.9])
        _finish(tmp_path / "b" / f"individual_seed{seed}")
    _record(tmp_path / "b" / "individual_seed3" / "individual_0", [[0.1]], [1.0], [0.9])
    # seed 3 has no summary.json: still training, not read.
    without, with_ = curves.compare([str(tmp_path / "a"), str(tmp_path / "b")],
                                    ["without", "with"], "accuracy")
    assert without["seeds"] == with_["seeds"] == [0, 1]
    # a dense run: 100 examples x 10 FLOPs per epoch -> 1000 per epoch, 3000 in all.
    assert without["flops"] == pytest.approx([250 / 3000, 500 / 3000, 750 / 3000])
    assert with_["flops"] == pytest.approx([0.25, 0.5, 0.75])
    assert without["final"][0]["mean"] == pytest.approx(0.55)
    assert without["final"][0]["spread"] == pytest.approx(0.1)
    assert without["final"][0]["epochs_to_match"] == 3
    assert with_["final"][0]["mean"] == pytest.approx(0.6)
    assert with_["final"][0]["spread"] == pytest.approx(0.0)
    assert with_["final"][0]["epochs_to_match"] == 2  # mean [0.4, 0.55, 0.6]
    assert with_["final"][0]["flops_to_match"] == pytest.approx(0.5)
    assert with_["mean"][0] == pytest.approx([0.4, 0.55, 0.6])
    text = curves.format_rows("RigL", [without, with_])
    assert "60.00 (0.00)" in text and "epoch 2, FLOPs 0.500" in text


def test_curves_needs_every_epoch_evaluated(tmp_path):
    run_dir = tmp_path / "a" / "ast_gc_seed0" / "ast_gc"
    _record(run_dir, [[0.3, 0.4]], [1.0], [0.9])
    lines = (run_dir / monitor.HISTORY).read_text().splitlines()
    first = json.loads(lines[0])
    first["logs"] = {}
    (run_dir / monitor.HISTORY).write_text("\n".join([json.dumps(first), lines[1]]) + "\n")
    _finish(tmp_path / "a" / "ast_gc_seed0")
    with pytest.raises(ValueError, match="--eval_every=1"):
        curves.compare([str(tmp_path / "a")], ["only"], "accuracy")


def _subnet(sparsity, accuracy, superposed=None):
    entry = {"target_sparsity": sparsity, "accuracy": accuracy}
    if superposed:
        entry["superposed"] = {"accuracy_before_bn": superposed[0], "accuracy": superposed[1],
                               "last_ticket_accuracy": accuracy, "measured_sparsity": sparsity}
    return entry


def _sup_summary(subnets, cycles):
    events = [{"event": "ticket0", "step": 0}] + [
        {"event": "superposed", "cycle": c + 1, "step": 10 * (c + 1), "subnets": [
            {"ticket": {"accuracy": t}, "superposed_before_bn": {"accuracy": b},
             "superposed": {"accuracy": s}} for t, b, s in cycle]}
        for c, cycle in enumerate(cycles)]
    return {"subnets": subnets, "training_flops": 6.0, "dense_training_flops": 10.0,
            "sup_tickets": {"num_cycles": len(cycles), "cycle_epochs": 1,
                            "first_phase_epochs": 6, "superpose": "caa",
                            "events": [events]}}


def test_suptickets_numbers(tmp_path):
    for seed, base, ticket, before, after in ((0, 0.50, 0.52, 0.40, 0.56),
                                              (1, 0.60, 0.58, 0.30, 0.60)):
        for name, summary in (
                ("a", {"subnets": [_subnet(0.9, base)], "training_flops": 5.0,
                       "dense_training_flops": 10.0}),
                ("b", _sup_summary([_subnet(0.9, ticket, (before, after))],
                                   [[(ticket - 0.1, before - 0.1, after - 0.1)],
                                    [(ticket, before, after)]]))):
            (tmp_path / name / f"individual_seed{seed}").mkdir(parents=True)
            _finish(tmp_path / name / f"individual_seed{seed}", summary)
    result = sup_bench.compare(str(tmp_path / "a"), str(tmp_path / "b"))
    row = result["subnets"][0]
    assert result["seeds"] == [0, 1]
    assert row["baseline"]["mean"] == pytest.approx(0.55)
    assert row["ticket"]["mean"] == pytest.approx(0.55)
    assert row["before_bn"]["mean"] == pytest.approx(0.35)
    assert row["superposed"]["mean"] == pytest.approx(0.58)
    assert row["gain"]["seeds"] == pytest.approx([0.06, 0.0])
    assert row["gain"]["spread"] == pytest.approx(0.06)
    assert result["flops"] == pytest.approx({"baseline": 0.5, "sup": 0.6})
    assert [c["cycle"] for c in result["cycles"]] == [1, 2]
    assert result["cycles"][0]["subnets"][0]["superposed"] == pytest.approx([0.46, 0.50])
    text = sup_bench.format_row("GraNet", result)
    assert "58.00 (4.00) [56.00 60.00]" in text and "+3.00" in text
    # baseline and Sup-tickets directories swapped: refused, not silently compared.
    with pytest.raises(ValueError, match="without Sup-tickets"):
        sup_bench.compare(str(tmp_path / "b"), str(tmp_path / "a"))


def test_scripts_write_png_and_json(tmp_path):
    for seed in (0, 1):
        for name, acc in (("a", [0.3, 0.5]), ("b", [0.4, 0.6])):
            _record(tmp_path / name / f"ast_gc_seed{seed}" / "ast_gc", [acc, acc], [1.0, 2.0],
                    [0.8, 0.9])
            summary = {"subnets": [_subnet(0.8, acc[-1]), _subnet(0.9, acc[-1])],
                       "training_flops": 3.0, "dense_training_flops": 10.0}
            if name == "b":
                summary = _sup_summary([_subnet(0.8, 0.6, (0.5, 0.62)),
                                        _subnet(0.9, 0.6, (0.5, 0.61))],
                                       [[(0.6, 0.5, 0.62), (0.6, 0.5, 0.61)]])
            _finish(tmp_path / name / f"ast_gc_seed{seed}", summary)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    rows = f"AST-GC:{tmp_path / 'a'}:{tmp_path / 'b'}"
    for script, out in (("curves.py", "c.png"), ("suptickets.py", "s.png")):
        result = subprocess.run(
            [sys.executable, f"bench/{script}", f"--rows={rows}", f"--out={tmp_path / out}",
             "--title=test"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert (tmp_path / out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        record = json.loads((tmp_path / out).with_suffix(".json").read_text())
        assert record["rows"][0]["title"] == "AST-GC"
    assert "62.00 (0.00) [62.00 62.00]" in result.stdout
