"""Deployment artefacts of a finished run and its deployment table, measured.

    python -m launch.export --run_dir=runs/default                     # every format
    python -m launch.export --run_dir=runs/default --format=litert --latency_runs=500

Reads the run's saved model (``model.keras``; ``model_subnet<k>.keras`` of an individual run)
and writes into ``--output_dir`` (default ``<run_dir>/deploy``):

- ``saved_model``: ``saved_model/subnet_<k>/``, one SavedModel per sub-net (masks folded in);
- ``multi``: ``multi/``, one SavedModel for all sub-nets (shared weights once, packed masks;
  ``serve_<k>`` and ``serve(x, subnet)``), checked against the per-sub-net SavedModels, and
  ``multi.keras`` (the model without optimizer state, `keras_ast.deploy.save_keras`);
- ``litert``: ``litert/subnet_<k>.tflite`` with sparse weight encoding and
  ``litert/dense.tflite`` (the network with its shared kernels unmasked: the reference), each
  checked against its SavedModel with the LiteRT interpreter, then timed side by side
  (single thread, batch 1, XNNPACK, median of --latency_runs rotated rounds).

The table (per sub-net: sparsity, accuracy from summary.json, SavedModel and LiteRT file
sizes, latency and speed-up over dense, whether the layout qualifies for XNNPACK's sparse
inference) goes to ``deployment.json`` and ``deployment.md`` there, into the run's
summary.json (``deployment``) and into ``python -m launch.report``'s report. The checks use
random inputs of the model's input shape (no data set is read).
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from launch import cli  # noqa: E402

FORMATS = ("saved_model", "multi", "litert")
TABLE = "deployment.json"


def load_models(run_dir):
    """[(sub-net index, ASTModel, its sub-net k)] of a run directory."""
    import keras

    import keras_ast  # noqa: F401  (registers the layers for loading)

    path = os.path.join(run_dir, "model.keras")
    if os.path.isfile(path):
        model = keras.models.load_model(path)
        return [(k, model, k) for k in range(model.num_subnets)]
    found = sorted(glob.glob(os.path.join(run_dir, "model_subnet*.keras")),
                   key=lambda p: int(re.search(r"model_subnet(\d+)\.keras$", p)[1]))
    if not found:
        raise FileNotFoundError(f"{run_dir}: no model.keras or model_subnet<k>.keras (a "
                                "python -m launch.train --output_dir)")
    return [(int(re.search(r"model_subnet(\d+)\.keras$", p)[1]), keras.models.load_model(p), 0)
            for p in found]


def _accuracies(run_dir):
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        return None, {}
    with open(path) as f:
        summary = json.load(f)
    return summary, {e["subnet"]: e.get("accuracy") for e in summary.get("subnets", [])}


def measure(run_dir, output_dir=None, formats=FORMATS, latency_runs=200, warmup=20,
            num_threads=1, log=print):
    """Writes the artefacts of `formats` and returns the deployment table (module docstring)."""
    import numpy as np
    import tensorflow as tf

    from keras_ast import atomic, deploy, export, litert, xnnpack

    bad = sorted(set(formats) - set(FORMATS))
    if bad or not formats:
        raise ValueError(f"unknown formats {bad}; use some of {', '.join(FORMATS)}")
    output_dir = output_dir or os.path.join(run_dir, "deploy")
    os.makedirs(output_dir, exist_ok=True)
    models = load_models(run_dir)
    summary, accuracy = _accuracies(run_dir)
    first = models[0][1]
    shape = tuple(first.network.input_shape[1:])
    x = np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)
    rows, saved = [], {}
    for index, model, k in models:
        path = export.export_subnet(model, k, os.path.join(output_dir, "saved_model",
                                                           f"subnet_{index}"))
        saved[index] = path
        names = [layer.name for layer in model.sparse_layers]
        report = xnnpack.check(export.subnet_model(model, k))
        rows.append({"subnet": index, "target_sparsity": model.sparsities[k],
                     "measured_sparsity": export.saved_model_sparsity(path, names),
                     "accuracy": accuracy.get(index), "saved_model": path,
                     "saved_model_bytes": deploy.directory_bytes(path),
                     "xnnpack_sparse": {"qualifies": report.qualifies,
                                        "reasons": report.reasons}})
        log(f"sub-net {index}: SavedModel {rows[-1]['saved_model_bytes']:,} bytes "
            f"({100 * rows[-1]['measured_sparsity']:.2f}% zeros)")
    table = {"run_dir": run_dir, "formats": list(formats), "subnets": rows,
             "cpu": xnnpack.cpu_uses_sparse_inference()[1]}
    if "multi" in formats:
        if len({id(m) for _, m, _ in models}) != 1:
            log("multi: skipped, an individual run has K separate models (no shared weights)")
            table["multi"] = None
        else:
            path = deploy.export_multi(first, os.path.join(output_dir, "multi"))
            loaded = tf.saved_model.load(path)
            diff = 0.0
            for index, _, k in models:
                single = tf.saved_model.load(saved[index])
                diff = max(diff, float(np.max(np.abs(
                    getattr(loaded, f"serve_{k}")(x).numpy() - single.serve(x).numpy()))))
            total = sum(r["saved_model_bytes"] for r in rows)
            size = deploy.directory_bytes(path)
            keras_path = deploy.save_keras(first, os.path.join(output_dir, "multi.keras"))
            table["multi"] = {"path": path, "bytes": size, "subnets_bytes": total,
                              "ratio": size / total, "max_abs_diff": diff,
                              "keras_path": keras_path,
                              "keras_bytes": os.path.getsize(keras_path)}
            log(f"multi: {size:,} bytes for all {len(models)} sub-nets against {total:,} for "
                f"the separate SavedModels ({size / total:.3f}); max |difference| {diff:g}")
    if "litert" in formats:
        dense_dir = os.path.join(output_dir, "saved_model", "dense")
        with atomic.atomic_output(dense_dir) as tmp:
            export.dense_model(first).export(tmp, verbose=False)
        files = {"dense": litert.write(litert.convert(dense_dir, sparse=False),
                                       os.path.join(output_dir, "litert", "dense.tflite"))}
        for row in rows:
            content = litert.convert(saved[row["subnet"]])
            path = litert.write(content, os.path.join(output_dir, "litert",
                                                      f"subnet_{row['subnet']}.tflite"))
            files[row["subnet"]] = path
            row.update(tflite=path, tflite_bytes=len(content),
                       tflite_sparse_tensors=len(litert.sparse_tensors(content)),
                       tflite_max_abs_diff=litert.check(content, saved[row["subnet"]], x))
        log(f"latency: {latency_runs} rounds, {num_threads} thread(s), batch 1, XNNPACK ...")
        times = litert.latency(files, x[0], runs=latency_runs, warmup=warmup,
                               num_threads=num_threads)
        dense = times["dense"]["median_ms"]
        table["dense"] = {"tflite": files["dense"],
                          "tflite_bytes": os.path.getsize(files["dense"]),
                          "latency_ms": dense}
        for row in rows:
            row["latency_ms"] = times[row["subnet"]]["median_ms"]
            row["speedup"] = dense / row["latency_ms"]
        table["latency"] = {"runs": latency_runs, "warmup": warmup, "threads": num_threads,
                            "batch": 1, "delegate": "XNNPACK", "percentiles": {
                                str(k): v for k, v in times.items()}}
    atomic.write_json(os.path.join(output_dir, TABLE), table)
    with atomic.atomic_output(os.path.join(output_dir, "deployment.md")) as tmp, \
            open(tmp, "w") as f:
        f.write(deploy.markdown(table) + "\n")
    if summary is not None:
        summary["deployment"] = table
        atomic.write_json(os.path.join(run_dir, "summary.json"), summary)
    return table


FLAGS = flags.FLAGS


def define_flags():
    """The command's flags (defined when it runs, so that tests can import `measure` in a
    process that also holds launch.train's flags)."""
    flags.DEFINE_string("run_dir", None, "Run directory (a launch.train --output_dir).")
    flags.DEFINE_list("format", list(FORMATS), f"Artefacts: some of {', '.join(FORMATS)}.")
    flags.DEFINE_string("output_dir", None, "Where they go (default: <run_dir>/deploy).")
    flags.DEFINE_integer("latency_runs", 200, "Timed rounds of the LiteRT latency measurement.")
    flags.DEFINE_integer("latency_warmup", 20, "Untimed invocations per model before timing.")
    flags.DEFINE_integer("threads", 1, "LiteRT interpreter threads.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    problems = []
    if not FLAGS.run_dir:
        problems.append("--run_dir is required")
    elif not os.path.isdir(FLAGS.run_dir):
        problems.append(f"--run_dir={FLAGS.run_dir} is not a directory")
    bad = sorted(set(FLAGS.format) - set(FORMATS))
    if bad or not FLAGS.format:
        problems.append(f"unknown --format {bad}; use some of {', '.join(FORMATS)}")
    if FLAGS.latency_runs < 1 or FLAGS.latency_warmup < 0 or FLAGS.threads < 1:
        problems.append("--latency_runs and --threads must be >= 1, --latency_warmup >= 0")
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        sys.exit(2)
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel writer logs every step at INFO
    try:
        table = measure(FLAGS.run_dir, FLAGS.output_dir, FLAGS.format, FLAGS.latency_runs,
                        FLAGS.latency_warmup, FLAGS.threads)
    except (FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    from keras_ast import deploy

    print(deploy.markdown(table))
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
