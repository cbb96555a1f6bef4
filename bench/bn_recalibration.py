"""BatchNorm recalibration after training: test accuracy per sub-net before and after.

Each AST sub-net's BatchNorm copy moves on 1/K of the steps only. This loads the models a
`bench/quality.py` run saved (``<bench_dir>/<method>_seed<s>/model.keras``, and
``model_subnet<k>.keras`` for the individual runs), recomputes every sub-net's BN statistics
with `keras_ast.recalibrate_batchnorm` over --batches training batches (the training pipeline
as it trained, augmentation included) and prints the test accuracy before and after, side by
side, per method and seed. Nothing in the bench directory is modified.

    python bench/bn_recalibration.py --bench_dir=runs/quality_cifar \\
        --data_dir=/tmp/data/cifar10-jpeg --train_subset=10000 --batch_size=128
"""

from __future__ import annotations

import glob
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # noqa: E402

import keras_ast  # noqa: E402
from keras_ast import atomic  # noqa: E402
from keras_ast import data as data_lib  # noqa: E402
from launch import export as export_launcher  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("bench_dir", "runs/quality", "A bench/quality.py output directory.")
flags.DEFINE_list("methods", ["individual", "ast", "ast_gc"], "Methods to recalibrate.")
flags.DEFINE_string("dataset", "image_folder", "The data set the bench trained on.")
flags.DEFINE_string("data_dir", None, "Its directory.")
flags.DEFINE_integer("train_subset", None, "The bench's --train_subset (same images).")
flags.DEFINE_integer("batch_size", 128, "Batch size of the recalibration batches.")
flags.DEFINE_integer("batches", 50, "Training batches averaged per sub-net.")


def _models(run_dir):
    """[(sub-net index in the run's table, model, sub-net inside that model)]; none for a run
    that saved no model (launch.export.load_models)."""
    try:
        return export_launcher.load_models(run_dir)
    except FileNotFoundError:
        return []


def main(argv):
    del argv
    options = {"train_subset": FLAGS.train_subset} if FLAGS.train_subset else {}
    source, test, _ = data_lib.load_source(FLAGS.dataset, FLAGS.data_dir, FLAGS.batch_size,
                                           seed=0, **options)
    results = {}
    for method in FLAGS.methods:
        for run_dir in sorted(glob.glob(os.path.join(FLAGS.bench_dir, f"{method}_seed*"))):
            if not os.path.isfile(os.path.join(run_dir, "summary.json")):
                continue
            name = os.path.basename(run_dir)
            for index, model, subnet in _models(run_dir):
                model.set_subnet(subnet)
                before = float(model.evaluate(test, return_dict=True, verbose=0)["accuracy"])
                keras_ast.recalibrate_batchnorm(model, source.epochs(0, 1), subnet,
                                                batches=FLAGS.batches)
                model.set_subnet(subnet)
                after = float(model.evaluate(test, return_dict=True, verbose=0)["accuracy"])
                results.setdefault(method, {}).setdefault(index, []).append((before, after))
                print(f"{name} sub-net {index}: {100 * before:.2f}% -> {100 * after:.2f}%",
                      flush=True)
    print(f"\nBN recalibration over {FLAGS.batches} training batches of {FLAGS.batch_size}; "
          "test accuracy (mean over seeds): before -> after (change)")
    for method, subnets in results.items():
        cells = []
        for index in sorted(subnets):
            before = statistics.fmean(b for b, _ in subnets[index])
            after = statistics.fmean(a for _, a in subnets[index])
            cells.append(f"{100 * before:.2f} -> {100 * after:.2f} ({100 * (after - before):+.2f})")
        print(f"  {method:<11} " + " | ".join(cells))
    atomic.write_json(os.path.join(FLAGS.bench_dir, "bn_recalibration.json"),
                      {"batches": FLAGS.batches, "batch_size": FLAGS.batch_size,
                       "results": {m: {str(k): v for k, v in s.items()}
                                   for m, s in results.items()}})


if __name__ == "__main__":
    app.run(main)
