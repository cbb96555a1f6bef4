"""Test accuracy per epoch and per training FLOP: variants of a recipe side by side, over seeds.

Reads the run records (metrics.jsonl, run.json) that `bench/quality.py` runs wrote with
``--eval_every=1`` and compares, for each --rows entry, the same recipe run as each --variants
entry (e.g. without and with AGENT). Prints, per row, variant and sub-net: the final test
accuracy (mean over seeds, spread max - min, each seed), the training FLOPs over one dense run
of the same epochs, and the first epoch (and its FLOPs) at which the variant's seed-mean
accuracy reaches the first variant's final seed-mean accuracy ("epochs to match", the measure
behind AGENT's "fewer epochs" claim). Writes a PNG: one row of two panels per --rows entry,
accuracy against epoch and against cumulative training FLOPs (all sub-nets of the run), mean
over seeds with the min-max band; and curves.json with every number.

    python bench/curves.py --variants="without AGENT,with AGENT" \\
        --rows="RigL K=1:runs/rigl:runs/rigl_agent,AST-GC K=3:runs/astgc:runs/astgc_agent" \\
        --title="CIFAR-10 (JPEG q75 copy)" --out=docs/agent_cifar10_jpeg.png

Each --rows entry is ``title:dir_1:...:dir_V`` with one bench directory per variant; a bench
directory holds ``<method>_seed<s>/`` runs, whose record is found below them (metrics.jsonl).
Only seeds present for every variant of a row are used, so the comparison is paired.
"""

from __future__ import annotations

import glob
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # noqa: E402

from keras_ast import atomic  # noqa: E402
from keras_ast import report  # noqa: E402

FLAGS = flags.FLAGS
def _records(bench_dir):
    """{seed: run record directory} of the finished runs of a bench directory."""
    found = {}
    for path in sorted(glob.glob(os.path.join(bench_dir, "*_seed*", "**", "metrics.jsonl"),
                                 recursive=True)):
        seed_dir = os.path.relpath(path, bench_dir).split(os.sep)[0]
        seed = int(re.fullmatch(r".*_seed(\d+)", seed_dir).group(1))
        if not os.path.isfile(os.path.join(bench_dir, seed_dir, "summary.json")):
            continue  # still training: its curve would stop early
        if seed in found:
            raise ValueError(f"{bench_dir}: two run records for seed {seed}; give one method "
                             "per bench directory")
        found[seed] = os.path.dirname(path)
    if not found:
        raise FileNotFoundError(f"{bench_dir}: no finished run with a metrics.jsonl below "
                                "<method>_seed<s>/")
    return found


def curves(run, metric):
    """(epochs, {k: accuracies}, cumulative training FLOPs over one dense run's) of a run."""
    val = report.accuracy_series(run, metric)
    if not val:
        raise ValueError(f"no val_{metric}_<k> in the record: train with --eval_every=1")
    epochs = [r["epoch"] for r in run.history]
    for k, series in val.items():
        if [e for e, _ in series] != epochs:
            raise ValueError(f"sub-net {k} was not evaluated at every epoch: use --eval_every=1")
    dense = report.training_flops(run)["dense_flops"]
    flops = [sum(r["train_flops"]) / dense for r in run.history]
    return epochs, {k: [v for _, v in s] for k, s in val.items()}, flops


def _mean(values):
    return statistics.fmean(values)


def compare(dirs, variants, metric):
    """Per variant: seeds, epochs, per sub-net per-seed curves and mean, flops; and the table."""
    records = [_records(d) for d in dirs]
    seeds = sorted(set.intersection(*(set(r) for r in records)))
    if not seeds:
        raise ValueError(f"no seed finished in every one of {dirs}")
    out = []
    for name, recs in zip(variants, records):
        runs = [report.load_run(recs[s]) for s in seeds]
        data = [curves(r, metric) for r in runs]
        epochs = data[0][0]
        if any(d[0] != epochs for d in data):
            raise ValueError(f"{name}: the seeds' runs have different epochs")
        ks = sorted(data[0][1])
        acc = {k: [d[1][k] for d in data] for k in ks}  # [seed][epoch]
        flops = [_mean(v) for v in zip(*(d[2] for d in data))]
        out.append({"variant": name, "seeds": seeds, "epochs": epochs, "flops": flops,
                    "sparsity": runs[0].info["sparsities"],
                    "accuracy": {k: a for k, a in acc.items()},
                    "mean": {k: [_mean(v) for v in zip(*a)] for k, a in acc.items()}})
    reference = out[0]
    for v in out:
        v["final"] = {}
        for k, per_seed in v["accuracy"].items():
            finals = [a[-1] for a in per_seed]
            target = reference["mean"][k][-1]
            match = next((i for i, m in enumerate(v["mean"][k]) if m >= target), None)
            v["final"][k] = {
                "mean": _mean(finals), "spread": max(finals) - min(finals), "seeds": finals,
                "epochs_to_match": None if match is None else v["epochs"][match],
                "flops_to_match": None if match is None else v["flops"][match]}
    return out


def format_rows(title, result):
    lines = [f"{title} (seeds {','.join(map(str, result[0]['seeds']))}; test accuracy %, "
             "mean (spread) [per seed]; FLOPs over one dense run)",
             f"  {'variant':<16} {'sub-net':<13} {'final':>15}  {'per seed':<16} "
             f"{'FLOPs':>6}  {'matches ' + result[0]['variant'] + ' final at':<28}"]
    for v in result:
        for k, f in v["final"].items():
            match = ("never" if f["epochs_to_match"] is None else
                     f"epoch {f['epochs_to_match']}, FLOPs {f['flops_to_match']:.3f}")
            seeds = " ".join(f"{100 * a:.2f}" for a in f["seeds"])
            lines.append(f"  {v['variant']:<16} {k} ({100 * v['sparsity'][k]:g}%){'':<5} "
                         f"{100 * f['mean']:7.2f} ({100 * f['spread']:4.2f})  {seeds:<16} "
                         f"{v['flops'][-1]:6.3f}  {match}")
    return "\n".join(lines)


def plot(results, path, title, metric):
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6 * len(results)), dpi=110, layout="constrained")
    axes = fig.subplots(len(results), 2, squeeze=False)
    styles = ["-", "--", ":", "-."]
    for (row_title, result), (ax_e, ax_f) in zip(results, axes):
        ks = sorted(result[0]["mean"])
        colors = [colormaps["viridis"](0.85 * i / max(len(ks) - 1, 1)) for i in ks]
        for v, style in zip(result, styles):
            for k, color in zip(ks, colors):
                per_seed = list(zip(*v["accuracy"][k]))  # [epoch][seed]
                lo = [100 * min(a) for a in per_seed]
                hi = [100 * max(a) for a in per_seed]
                mean = [100 * m for m in v["mean"][k]]
                label = f"{v['variant']}, {100 * v['sparsity'][k]:g}%"
                for ax, x in ((ax_e, v["epochs"]), (ax_f, v["flops"])):
                    ax.plot(x, mean, style, color=color, marker="o", markersize=3,
                            label=label)
                    ax.fill_between(x, lo, hi, color=color, alpha=0.12)
        ax_e.set_xlabel("epoch")
        ax_f.set_xlabel("cumulative training FLOPs (1 = one dense run of the same epochs)")
        for ax in (ax_e, ax_f):
            ax.set_ylabel(f"test {metric} (%)")
            ax.set_title(f"{row_title}: mean of {len(result[0]['seeds'])} seeds (band: "
                         "min-max)", fontsize=9)
            ax.grid(alpha=0.3)
        ax_e.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    with atomic.atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")


def define_flags():
    """The script's flags (defined only when it runs, so that tests can import it
    beside the other bench scripts)."""
    flags.DEFINE_list("rows", None, "Comparisons, each 'title:dir_1:...:dir_V' (one bench "
                      "directory per --variants entry).")
    flags.DEFINE_list("variants", ["without", "with"], "The variants' names, in --rows' order; "
                      "the first is the reference of 'epochs to match'.")
    flags.DEFINE_string("title", "", "Figure title (name the data, e.g. 'CIFAR-10 (JPEG q75 "
                        "copy)').")
    flags.DEFINE_string("out", "curves.png", "The PNG; curves.json is written beside it.")
    flags.DEFINE_string("metric", "accuracy", "The logged metric (val_<metric>_<k>).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.rows:
        raise app.UsageError("--rows is required: 'title:dir_1:...:dir_V', one per comparison")
    results = []
    for entry in FLAGS.rows:
        title, *dirs = entry.split(":")
        if len(dirs) != len(FLAGS.variants):
            raise app.UsageError(f"--rows entry {entry!r}: {len(dirs)} directories for "
                                 f"{len(FLAGS.variants)} --variants")
        results.append((title, compare(dirs, FLAGS.variants, FLAGS.metric)))
        print(format_rows(title, results[-1][1]))
    plot(results, FLAGS.out, FLAGS.title, FLAGS.metric)
    record = {"command": " ".join(sys.argv), "title": FLAGS.title,
              "rows": [{"title": t, "variants": r} for t, r in results]}
    json_path = os.path.splitext(FLAGS.out)[0] + ".json"
    with atomic.atomic_output(json_path) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {FLAGS.out} and {json_path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
