"""Quality on real data: do AST-GC's sub-nets match sub-nets trained on their own?

Trains, with identical data, epochs, schedule and hyperparameters (every run goes through the
launcher's `launch.runner.run`):
  dense        the plain model (the reference)
  individual   one K=1 GraNet run per sparsity (K runs: K times the cost)
  ast          AST, K sub-nets alternating, no gradient correction
  ast_gc       AST with layer-wise gradient correction
  joint        S-Net style: all K sub-nets on every batch (about K times the cost)
individual, ast and ast_gc once per --seeds entry; dense and joint with the first seed.

Prints one table: per sub-net test accuracy (mean over seeds, with the spread max - min), the
gap to individual training at the same sparsity, the method's training FLOPs (all its
sub-nets) relative to one dense run, and its wall-clock training time relative to the dense
run's (sum over the runs a method needs, mean over seeds). Writes quality.json and
quality.png (test accuracy against sparsity, one line per method) into --bench_dir.

Every run writes its own directory under --bench_dir (summary.json, model.keras, records);
a run whose summary.json exists is not trained again and an interrupted run resumes from its
checkpoint, so re-running the same command after a kill continues where it stopped.

    # CIFAR-10 (JPEG q75 copy) extracted to /tmp/data: about an hour on 2 CPU cores
    python bench/quality.py --data_dir=/tmp/data/cifar10-jpeg --bench_dir=runs/quality
    python bench/quality.py --quick --data_dir=DIR --bench_dir=/tmp/q   # a smoke run, ~1.5 min
    python bench/quality.py --dataset=fashion_mnist --data_dir=DIR --bench_dir=runs/fmnist
    python bench/quality.py --methods=ast,ast_gc --seeds=2,3 ...        # more seeds, same dir
"""

from __future__ import annotations

import functools
import gc
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

from keras_ast import atomic  # noqa: E402
from keras_ast.data import image_folder  # noqa: E402
from launch import runner  # noqa: E402
from launch import train as launcher  # noqa: E402  (defines the launcher's flags)

FLAGS = flags.FLAGS
METHODS = ("dense", "individual", "ast", "ast_gc", "joint")
LABELS = {"dense": "dense", "individual": "individual (K=1 each)", "ast": "AST (no GC)",
          "ast_gc": "AST-GC", "joint": "joint (S-Net)"}
flags.DEFINE_string("bench_dir", "runs/quality", "Where every run and the results go.")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds of ast and ast_gc (dense and joint: the first).")
flags.DEFINE_list("individual_seeds", None, "Seeds of the individual runs (default: --seeds).")
flags.DEFINE_list("methods", list(METHODS), f"Methods to run, among {', '.join(METHODS)}.")
flags.DEFINE_string("data_label", None, "How the table and plot name the data (default: "
                    "--dataset), e.g. 'CIFAR-10 (JPEG q75 copy)'.")
flags.DEFINE_bool("quick", False, "Smoke-test sizes: the small CNN, 6 epochs, batch 16, "
                  "no subset, one individual seed; for a test on a generated folder.")

# The benchmark's defaults: sized for about an hour on 2 CPU cores on CIFAR-10 (JPEG q75 copy).
DEFAULTS = dict(dataset="image_folder", model="resnet20", width_multiplier=0.5,
                sparsities=["0.8", "0.9", "0.95"], epochs=8, batch_size=128, lr=0.1,
                train_subset=10000, eval_every=0, tensorboard=False, export=False, verbose=2,
                output_dir=None)
QUICK = dict(model="small_cnn", epochs=6, batch_size=16, train_subset=None, verbose=0,
             individual_seeds=["0"])


def _runs():
    """[(method, seed, run directory name, launcher settings)] in the order they train."""
    seeds = [int(s) for s in FLAGS.seeds]
    individual_seeds = [int(s) for s in (FLAGS.individual_seeds or FLAGS.seeds)]
    settings = {"dense": dict(mode="dense", gc="off"),
                "individual": dict(mode="individual", gc="off"),
                "ast": dict(mode="ast", gc="off"), "ast_gc": dict(mode="ast", gc="layerwise"),
                "joint": dict(mode="joint", gc="off")}
    runs = []
    for method in METHODS:
        if method not in FLAGS.methods:
            continue
        chosen = {"individual": individual_seeds, "ast": seeds, "ast_gc": seeds}
        for seed in chosen.get(method, seeds[:1]):
            runs.append((method, seed, f"{method}_seed{seed}", settings[method]))
    return runs


def _train(name, seed, settings, sparsities):
    """Trains one launcher run into <bench_dir>/<name> (or reads its finished summary)."""
    out = os.path.join(FLAGS.bench_dir, name)
    done = os.path.join(out, "summary.json")
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    FLAGS.output_dir, FLAGS.seed, FLAGS.backup_dir = out, seed, None
    FLAGS.resume = os.path.isdir(runner.backup_root(FLAGS))  # an interrupted run: continue it
    for key, value in settings.items():
        setattr(FLAGS, key, value)
    keras.backend.clear_session()
    gc.collect()
    return runner.run(FLAGS, sparsities)


def _mean_spread(values):
    return statistics.fmean(values), (max(values) - min(values) if len(values) > 1 else 0.0)


def summarise(results, sparsities):
    """{method: {"accuracy": [[per seed] per sub-net], "mean", "spread", "gap",
    "flops_ratio", "wall_ratio", "seeds"}} from {(method, seed): summary}."""
    dense = next((s for (m, _), s in results.items() if m == "dense"), None)
    table = {}
    for method in METHODS:
        runs = {seed: s for (m, seed), s in results.items() if m == method}
        if not runs:
            continue
        per_subnet = [[next(e["accuracy"] for e in s["subnets"] if e["subnet"] == k)
                       for s in runs.values()] for k in range(len(runs[min(runs)]["subnets"]))]
        flops = statistics.fmean(s["training_flops"] for s in runs.values())
        wall = statistics.fmean(sum(s["train_seconds"]) for s in runs.values())
        table[method] = {
            "seeds": sorted(runs),
            "sparsity": [e["target_sparsity"] for e in runs[min(runs)]["subnets"]],
            "measured_sparsity": [[e["measured_sparsity"] for e in s["subnets"]]
                                  for s in runs.values()],
            "accuracy": per_subnet,
            "mean": [_mean_spread(a)[0] for a in per_subnet],
            "spread": [_mean_spread(a)[1] for a in per_subnet],
            "training_flops": flops,
            "train_seconds": wall,
            "flops_ratio": flops / dense["training_flops"] if dense else None,
            "wall_ratio": wall / sum(dense["train_seconds"]) if dense else None,
        }
    individual = table.get("individual")
    for row in table.values():
        row["gap"] = ([m - individual["mean"][k] for k, m in enumerate(row["mean"])]
                      if individual and len(row["mean"]) == len(sparsities) else None)
    return table


def format_table(table, sparsities):
    head = " ".join(f"{100 * s:>11.0f}%" for s in sparsities)
    lines = [f"{'method':<22} {'seeds':>5} {head}   {'FLOPs/dense':>11} {'wall/dense':>10}",
             f"{'':<22} {'':>5} " + " ".join(f"{'acc (spread)':>12}" for _ in sparsities)]
    for method, row in table.items():
        cells = [f"{100 * m:6.2f} ({100 * s:.1f})".rjust(12)
                 for m, s in zip(row["mean"], row["spread"])]
        cells += [" " * 12] * (len(sparsities) - len(cells))  # dense: one model, one column
        ratio = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
        lines.append(f"{LABELS[method]:<22} {len(row['seeds']):>5} {' '.join(cells)}   "
                     f"{ratio(row['flops_ratio']):>11} {ratio(row['wall_ratio']):>10}")
    if "dense" in table:
        lines.append("dense is one model at 0 % sparsity (its accuracy in the first column).")
    gaps = [(m, row["gap"]) for m, row in table.items()
            if row["gap"] is not None and m != "individual"]
    if gaps:
        lines.append("gap to individual at the same sparsity (points, mean over seeds):")
        lines += [f"  {LABELS[m]:<20} " + " ".join(f"{100 * g:+6.2f}" for g in gap)
                  for m, gap in gaps]
    return "\n".join(lines)


def goals(table):
    """The issue's goals, as text lines (met / missed, with the margin)."""
    lines = []
    gc_row, ast_row, indiv = table.get("ast_gc"), table.get("ast"), table.get("individual")
    if gc_row and indiv:
        worst = min(gc_row["gap"])
        lines.append(f"every AST-GC sub-net within 0.5 points of individual: worst gap "
                     f"{100 * worst:+.2f} -> {'met' if worst >= -0.005 else 'MISSED'}")
        one = indiv["training_flops"] / len(indiv["sparsity"])
        ratio = gc_row["training_flops"] / one
        lines.append(f"AST-GC training FLOPs / one individual run = {ratio:.3f} -> "
                     f"{'met' if abs(ratio - 1) <= 0.05 else 'MISSED'} (goal within 5 %)")
    if gc_row and ast_row:
        diff = [g - a for g, a in zip(gc_row["mean"], ast_row["mean"])]
        lines.append("AST-GC - AST without GC (points): "
                     + " ".join(f"{100 * d:+.2f}" for d in diff)
                     + f" -> {'met' if min(diff) >= 0 else 'MISSED'} (goal >= 0 on every "
                     "sub-net)")
    return lines


def plot(table, sparsities, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, row in table.items():
        if method == "dense":
            ax.axhline(100 * row["mean"][0], color="black", linestyle=":", label="dense")
            continue
        ax.errorbar([100 * s for s in row["sparsity"]], [100 * m for m in row["mean"]],
                    yerr=[[100 * (m - min(a)) for m, a in zip(row["mean"], row["accuracy"])],
                          [100 * (max(a) - m) for m, a in zip(row["mean"], row["accuracy"])]],
                    marker="o", capsize=3, label=LABELS[method])
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic.atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = sorted(set(FLAGS.methods) - set(METHODS))
    if unknown:
        raise app.UsageError(f"unknown --methods {unknown}; use {', '.join(METHODS)}")
    if FLAGS.quick:
        for key, value in QUICK.items():
            if not FLAGS[key].present:
                setattr(FLAGS, key, value)
    FLAGS.output_dir = os.path.join(FLAGS.bench_dir, "_check")  # for the launcher's checks
    try:
        sparsities = launcher.check_flags()
        int_seeds = [int(s) for s in FLAGS.seeds]
        [int(s) for s in FLAGS.individual_seeds or ()]
    except (launcher.FlagError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if not int_seeds:
        raise app.UsageError("--seeds needs at least one seed")
    # Every run reads the same folder: decode it once for the whole benchmark.
    image_folder.read_image_folder = functools.lru_cache(maxsize=2)(
        image_folder.read_image_folder)
    os.makedirs(FLAGS.bench_dir, exist_ok=True)
    results = {}
    runs = _runs()
    started = time.perf_counter()
    for i, (method, seed, name, settings) in enumerate(runs):
        print(f"[{i + 1}/{len(runs)}] {name} ({time.perf_counter() - started:.0f} s so far)",
              flush=True)
        summary = _train(name, seed, settings, sparsities)
        results[(method, seed)] = summary
        accuracy = " ".join(f"{100 * e['accuracy']:.2f}%" for e in summary["subnets"])
        print(f"    {name}: accuracy {accuracy}, {sum(summary['train_seconds']):.0f} s",
              flush=True)
    table = summarise(results, sparsities)
    first = next(iter(results.values()))
    image = "x".join(str(d) for d in FLAGS.image_size) if FLAGS.image_size else "as stored"
    label = FLAGS.data_label or FLAGS.dataset
    setup = (f"{label}: {FLAGS.dataset} {FLAGS.data_dir} ({first['num_train']} training images"
             f"{', class-balanced subset' if FLAGS.train_subset else ''}, {first['num_test']} "
             f"test, size {image}), model {FLAGS.model} {first['model_options']}, "
             f"{FLAGS.epochs} epochs, batch {FLAGS.batch_size}, lr {FLAGS.lr} "
             f"{FLAGS.lr_schedule}, sparsities {sparsities}, seeds {int_seeds}")
    text = format_table(table, sparsities)
    goal_lines = goals(table)
    print(setup)
    print(text)
    print("\n".join(goal_lines))
    record = {"setup": setup, "command": " ".join(sys.argv), "sparsities": sparsities,
              "methods": table, "goals": goal_lines, "table": text}
    atomic.write_json(os.path.join(FLAGS.bench_dir, "quality.json"), record)
    plot(table, sparsities, os.path.join(FLAGS.bench_dir, "quality.png"),
         f"{label}, {FLAGS.model}, {FLAGS.epochs} epochs, {first['num_train']} training images")
    print(f"wrote {os.path.join(FLAGS.bench_dir, 'quality.json')} and quality.png")


if __name__ == "__main__":
    for _key, _value in DEFAULTS.items():
        FLAGS.set_default(_key, _value)
    app.run(main)
