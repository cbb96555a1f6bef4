"""Sup-tickets against the same recipe without it: the last ticket, the superposed model before
and after BatchNorm recalibration, per sub-net, over seeds.

Reads the summary.json files of `bench/quality.py` runs (``<bench_dir>/<method>_seed<s>/``):
for each --rows entry a bench directory trained without Sup-tickets and one trained with
``--sup_tickets`` (same epochs, data, seeds). Prints per sub-net, mean over the seeds both
directories finished (spread max - min, each seed): the baseline's final test accuracy, the
Sup-tickets run's last ticket (the trained model itself), its superposed model before and after
BN recalibration and the gain of the last over the baseline; then the same per cycle, and each
run's training FLOPs over one dense run. Writes a PNG (grouped bars per sub-net, one panel per
row, seeds as dots) and a JSON beside it.

    python bench/suptickets.py \\
        --rows="GraNet K=1:runs/granet:runs/granet_sup,AST-GC K=3:runs/astgc:runs/astgc_sup" \\
        --title="CIFAR-10 (JPEG q75 copy)" --out=docs/suptickets_cifar10_jpeg.png
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

FLAGS = flags.FLAGS


COLUMNS = (("baseline", "without Sup-tickets"), ("ticket", "last ticket"),
           ("before_bn", "superposed, before BN recal."), ("superposed", "superposed"))


def _summaries(bench_dir):
    """{seed: summary.json} of the finished runs of a bench directory."""
    found = {}
    for path in sorted(glob.glob(os.path.join(bench_dir, "*_seed*", "summary.json"))):
        seed = int(re.fullmatch(r".*_seed(\d+)", os.path.basename(os.path.dirname(path)))[1])
        if seed in found:
            raise ValueError(f"{bench_dir}: two finished runs of seed {seed}; give one method "
                             "per bench directory")
        with open(path) as f:
            found[seed] = json.load(f)
    if not found:
        raise FileNotFoundError(f"{bench_dir}: no finished run (<method>_seed<s>/summary.json)")
    return found


def _stats(values):
    return {"mean": statistics.fmean(values), "spread": max(values) - min(values),
            "seeds": list(values)}


def compare(baseline_dir, sup_dir):
    """Per sub-net the four accuracies (mean, spread, per seed), per cycle, and FLOPs."""
    base, sup = _summaries(baseline_dir), _summaries(sup_dir)
    seeds = sorted(set(base) & set(sup))
    if not seeds:
        raise ValueError(f"no seed finished in both {baseline_dir} and {sup_dir}")
    if any("sup_tickets" not in sup[s] for s in seeds):
        raise ValueError(f"{sup_dir}: a run without Sup-tickets (train with --sup_tickets)")
    if any("sup_tickets" in base[s] for s in seeds):
        raise ValueError(f"{baseline_dir}: the baseline was trained with Sup-tickets")
    subnets = []
    for k, entry in enumerate(sup[seeds[0]]["subnets"]):
        values = {key: [] for key, _ in COLUMNS}
        for s in seeds:
            e, b = sup[s]["subnets"][k], base[s]["subnets"][k]
            if b["target_sparsity"] != e["target_sparsity"]:
                raise ValueError(f"sub-net {k}: baseline sparsity {b['target_sparsity']} != "
                                 f"{e['target_sparsity']}")
            values["baseline"].append(b["accuracy"])
            values["ticket"].append(e["accuracy"])
            values["before_bn"].append(e["superposed"]["accuracy_before_bn"])
            values["superposed"].append(e["superposed"]["accuracy"])
        row = {key: _stats(v) for key, v in values.items()}
        row["gain"] = _stats([a - b for a, b in zip(values["superposed"], values["baseline"])])
        row["sparsity"] = entry["target_sparsity"]
        row["superposed_sparsity"] = statistics.fmean(
            sup[s]["subnets"][k]["superposed"]["measured_sparsity"] for s in seeds)
        subnets.append(row)
    cycles = []
    for s in seeds:
        ends = [e for events in sup[s]["sup_tickets"]["events"] for e in events
                if e["event"] == "superposed"]
        for i, end in enumerate(ends):
            if len(cycles) <= i:
                cycles.append({"cycle": end["cycle"], "subnets": [
                    {key: [] for key in ("ticket", "before_bn", "superposed")}
                    for _ in end["subnets"]]})
            for k, e in enumerate(end["subnets"]):
                cell = cycles[i]["subnets"][k]
                cell["ticket"].append(e["ticket"]["accuracy"])
                cell["before_bn"].append((e.get("superposed_before_bn") or {}).get("accuracy"))
                cell["superposed"].append(e["superposed"]["accuracy"])
    flops = {name: statistics.fmean(r[s]["training_flops"] / r[s]["dense_training_flops"]
                                    for s in seeds) for name, r in (("baseline", base),
                                                                    ("sup", sup))}
    return {"seeds": seeds, "subnets": subnets, "cycles": cycles, "flops": flops,
            "settings": sup[seeds[0]]["sup_tickets"]}


def format_row(title, result):
    settings = result["settings"]
    lines = [f"{title}: seeds {','.join(map(str, result['seeds']))}; "
             f"{settings['num_cycles']} cycles of {settings['cycle_epochs']} epoch(s) after "
             f"{settings['first_phase_epochs']}, {settings['superpose']}; test accuracy %, mean "
             "(spread) [per seed]",
             f"  {'sub-net':<12}" + "".join(f"{name:>32}" for _, name in COLUMNS)
             + f"{'gain':>16}"]
    for k, row in enumerate(result["subnets"]):
        cells = "".join(
            (f"{100 * row[key]['mean']:.2f} ({100 * row[key]['spread']:.2f}) ["
             + " ".join(f"{100 * v:.2f}" for v in row[key]["seeds"]) + "]").rjust(32)
            for key, _ in COLUMNS)
        lines.append(f"  {k} ({100 * row['sparsity']:g}%){'':<5}{cells}"
                     f"{100 * row['gain']['mean']:+9.2f} ({100 * row['gain']['spread']:.2f})")
    for cycle in result["cycles"]:
        parts = []
        for k, cell in enumerate(cycle["subnets"]):
            mean = {key: (statistics.fmean(v) if None not in v else float("nan"))
                    for key, v in cell.items()}
            parts.append(f"sub-net {k}: ticket {100 * mean['ticket']:.2f}, superposed "
                         f"{100 * mean['before_bn']:.2f} -> {100 * mean['superposed']:.2f}")
        lines.append(f"  cycle {cycle['cycle']} (mean of seeds): " + "; ".join(parts))
    lines.append(f"  training FLOPs / one dense run: without {result['flops']['baseline']:.3f}, "
                 f"with Sup-tickets {result['flops']['sup']:.3f}; superposed sparsity "
                 + ", ".join(f"{100 * r['superposed_sparsity']:.2f}%"
                             for r in result["subnets"]))
    return "\n".join(lines)


def plot(results, path, title):
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(results) + 1.5, 4.0), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    colors = [colormaps["viridis"](i / (len(COLUMNS) - 1)) for i in range(len(COLUMNS))]
    width = 0.8 / len(COLUMNS)
    for ax, (row_title, result) in zip(axes, results):
        for c, ((key, name), color) in enumerate(zip(COLUMNS, colors)):
            for k, row in enumerate(result["subnets"]):
                x = k + (c - (len(COLUMNS) - 1) / 2) * width
                ax.bar(x, 100 * row[key]["mean"], width, color=color,
                       label=name if k == 0 else None)
                ax.plot([x] * len(row[key]["seeds"]), [100 * v for v in row[key]["seeds"]],
                        "k.", markersize=4)
        ax.set_xticks(range(len(result["subnets"])),
                      [f"{100 * r['sparsity']:g}%" for r in result["subnets"]])
        lows = [100 * min(r[key]["seeds"]) for r in result["subnets"] for key, _ in COLUMNS]
        ax.set_ylim(max(0, min(lows) - 5), None)
        ax.set_xlabel("sub-net (target sparsity)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{row_title}: {len(result['seeds'])} seeds (dots)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    with atomic.atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")


def define_flags():
    """The script's flags (defined only when it runs, so that tests can import it
    beside the other bench scripts)."""
    flags.DEFINE_list("rows", None, "Comparisons, each 'title:baseline_dir:sup_tickets_dir'.")
    flags.DEFINE_string("title", "", "Figure title (name the data, e.g. 'CIFAR-10 (JPEG q75 "
                        "copy)').")
    flags.DEFINE_string("out", "suptickets.png", "The PNG; a JSON with every number goes "
                        "beside it.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.rows:
        raise app.UsageError("--rows is required: 'title:baseline_dir:sup_tickets_dir'")
    results = []
    for entry in FLAGS.rows:
        parts = entry.split(":")
        if len(parts) != 3:
            raise app.UsageError(f"--rows entry {entry!r}: want 'title:baseline_dir:sup_dir'")
        results.append((parts[0], compare(parts[1], parts[2])))
        print(format_row(*results[-1]))
    plot(results, FLAGS.out, FLAGS.title)
    json_path = os.path.splitext(FLAGS.out)[0] + ".json"
    with atomic.atomic_output(json_path) as tmp, open(tmp, "w") as f:
        json.dump({"command": " ".join(sys.argv), "title": FLAGS.title,
                   "rows": [{"title": t, **r} for t, r in results]}, f, indent=1)
    print(f"wrote {FLAGS.out} and {json_path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
