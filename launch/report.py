"""Plots and a Markdown summary of a recorded run (`keras_ast.report.write_report`).

    python -m launch.report --run_dir=runs/default          # writes runs/default/report/

Reads only the run directory's run.json, metrics.jsonl and masks.npz (written during training by
keras_ast.RunRecorder, which `python -m launch.train` uses) and writes accuracy.png,
layer_sparsity.png, mask_xor.png, gc_inner_products.png, training_flops.png, report.md and
report.json to --output_dir.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from launch import cli  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("run_dir", None, "Run directory (a launch.train --output_dir).")
flags.DEFINE_string("output_dir", None, "Where the report goes (default: <run_dir>/report).")
flags.DEFINE_string("metric", "accuracy", "Compiled metric to plot per sub-net.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.run_dir:
        print("error: --run_dir is required", file=sys.stderr)
        sys.exit(2)
    from keras_ast import report

    try:
        paths = report.write_report(FLAGS.run_dir, FLAGS.output_dir, metric=FLAGS.metric)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
