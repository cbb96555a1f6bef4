"""Plots and a summary of a recorded run: `write_report` (``python -m launch.report``).

Reads only the files `keras_ast.RunRecorder` writes into the run directory (``run.json``,
``metrics.jsonl``, ``masks.npz``) and writes into the output directory:

- ``accuracy.png``: validation (solid) and training (dashed) accuracy of each sub-net per epoch;
- ``layer_sparsity.png``: sparsity of each prunable layer in each sub-net (from the masks);
- ``mask_xor.png``: for each pair of sub-nets and each layer, the fraction of the layer's weights
  on which their masks differ (XOR);
- ``gc_inner_products.png``: per epoch, the ratio of negative to positive inner products g.h
  between consecutive sub-nets' gradients (the paper's Figure 4) and their mean cosine;
- ``training_flops.png``: training FLOPs of each sub-net and of the run, next to dense training
  of the same examples;
- ``report.md``: the run and the numbers behind the plots in tables; ``report.json``: the same
  numbers, machine-readable.

matplotlib is imported here only, with its non-interactive Agg canvas (no display needed).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

import numpy as np

from keras_ast import monitor
from keras_ast.monitor import gc_fractions

PLOTS = ("accuracy", "layer_sparsity", "mask_xor", "gc_inner_products", "training_flops")
# The deployment table `python -m launch.export` writes into a run directory by default.
DEPLOYMENT = os.path.join("deploy", "deployment.json")


@dataclasses.dataclass
class Run:
    """A recorded run: ``info`` (run.json), ``history`` (metrics.jsonl, one dict per epoch) and
    ``masks`` (per sub-net ``{layer: bool array}``, from masks.npz)."""

    info: dict
    history: list
    masks: list

    @property
    def num_subnets(self):
        return self.info["num_subnets"]

    @property
    def layers(self):
        return [layer["name"] for layer in self.info["layers"]]


def _missing(path, what):
    return FileNotFoundError(
        f"{path}: {what}; it is written by keras_ast.RunRecorder while the run trains "
        "(python -m launch.train writes it into --output_dir)"
    )


def load_run(run_dir) -> Run:
    """Reads a run directory; raises FileNotFoundError naming a missing or empty file."""
    run_dir = str(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    paths = {name: os.path.join(run_dir, name)
             for name in (monitor.RUN_INFO, monitor.HISTORY, monitor.MASKS)}
    for name, path in paths.items():
        if not os.path.isfile(path):
            raise _missing(path, "file not found")
    with open(paths[monitor.RUN_INFO]) as f:
        info = json.load(f)
    with open(paths[monitor.HISTORY]) as f:
        history = [json.loads(line) for line in f if line.strip()]
    if not history:
        raise _missing(paths[monitor.HISTORY], "no epoch recorded yet")
    with np.load(paths[monitor.MASKS]) as data:
        masks = []
        for k in range(info["num_subnets"]):
            subnet = {}
            for layer in info["layers"]:
                key = monitor.mask_key(k, layer["name"])
                if key not in data:
                    raise _missing(paths[monitor.MASKS], f"mask {key!r} not found")
                subnet[layer["name"]] = data[key].astype(bool)
            masks.append(subnet)
    return Run(info=info, history=history, masks=masks)


# ------------------------------------------------------------------------------------ numbers
def layer_sparsity(run):
    """[{layer: fraction of zeros in sub-net k's mask}] for each k."""
    return [monitor.layer_sparsity(masks) for masks in run.masks]


def subnet_sparsity(run):
    """[sparsity of sub-net k over all prunable kernels together]."""
    return [1.0 - sum(float(m.sum()) for m in masks.values())
            / sum(m.size for m in masks.values()) for masks in run.masks]


def mask_xor(run):
    """{(a, b): {layer: fraction of the layer's weights where masks a and b differ}} for every
    pair a < b, plus ``"all"``: the fraction over all prunable kernels together."""
    result = {}
    sizes = {name: run.masks[0][name].size for name in run.layers}
    for a, b in itertools.combinations(range(run.num_subnets), 2):
        differ = {name: int(np.sum(run.masks[a][name] != run.masks[b][name]))
                  for name in run.layers}
        layers = {name: count / sizes[name] for name, count in differ.items()}
        layers["all"] = sum(differ.values()) / sum(sizes.values())
        result[(a, b)] = layers
    return result


def gc_per_epoch(run):
    """{i: [(epoch, fractions)]} for each sub-net i >= 1 with corrected steps in that epoch;
    fractions as `monitor.gc_fractions`, plus ``gc_ratio`` = negative / positive products."""
    series = {}
    for record in run.history:
        for i, counts in record.get("gc", {}).items():
            if counts["steps"] > 0:
                series.setdefault(int(i), []).append((record["epoch"], _gc_numbers(counts)))
    return series


def _gc_numbers(counts):
    """`monitor.gc_fractions` of `counts` plus ``gc_ratio``: negative / positive products."""
    negative, positive = counts["negative"], counts["positive"]
    ratio = (negative / positive if positive > 0 else float("inf") if negative > 0
             else float("nan"))
    return {**gc_fractions(counts), "gc_ratio": ratio}


def gc_totals(run):
    """{i: counts summed over the whole run, with their fractions and ratio} for i >= 1."""
    totals = {}
    for record in run.history:
        for i, counts in record.get("gc", {}).items():
            row = totals.setdefault(int(i), dict.fromkeys(counts, 0.0))
            for name, value in counts.items():
                row[name] += value
    for counts in totals.values():
        if counts["steps"] > 0:
            counts.update(_gc_numbers(counts))
    return totals


def training_flops(run):
    """Training FLOPs at the last recorded epoch: per sub-net (``flops``, ``examples``,
    ``dense_flops`` = the same examples trained dense) and for the whole run."""
    last = run.history[-1]
    per_example = run.info["dense_example_flops"]
    subnets = [
        {"flops": f, "examples": n, "dense_flops": n * per_example}
        for f, n in zip(last["train_flops"], last["train_examples"])
    ]
    # Alternating training: every example is trained once (by one sub-net); joint: K times,
    # but dense training would have trained it once.
    examples = sum(last["train_examples"])
    if run.info["training"] == "joint":
        examples /= run.num_subnets
    return {"subnets": subnets, "flops": sum(last["train_flops"]),
            "dense_flops": examples * per_example}


def accuracy_series(run, metric="accuracy", prefix="val_"):
    """{k: [(epoch, value)]}: ``<prefix><metric>_<k>`` from each epoch's logs, where present."""
    series = {}
    for record in run.history:
        for k in range(run.num_subnets):
            value = record["logs"].get(f"{prefix}{metric}_{k}")
            if value is not None:
                series.setdefault(k, []).append((record["epoch"], value))
    return series


def summarize(run, metric="accuracy"):
    """The numbers of the report (JSON-able)."""
    sparsity = subnet_sparsity(run)
    layers = layer_sparsity(run)
    val = accuracy_series(run, metric)
    train = accuracy_series(run, metric, prefix="")
    flops = training_flops(run)
    subnets = []
    for k in range(run.num_subnets):
        entry = {
            "subnet": k,
            "target_sparsity": run.info["sparsities"][k],
            "sparsity": sparsity[k],
            "layer_sparsity": layers[k],
            f"train_{metric}": train[k][-1][1] if k in train else None,
            f"val_{metric}": val[k][-1][1] if k in val else None,
            "val_epoch": val[k][-1][0] if k in val else None,
        }
        entry.update({f"training_{name}": v for name, v in flops["subnets"][k].items()})
        subnets.append(entry)
    return {
        "epochs": run.history[-1]["epoch"],
        "iteration": run.history[-1]["iteration"],
        "training": run.info["training"],
        "gc": run.info["gc"],
        "subnets": subnets,
        "mask_xor": {f"{a} vs {b}": v for (a, b), v in mask_xor(run).items()},
        "gc_statistics": {str(i): v for i, v in gc_totals(run).items()},
        "training_flops": flops["flops"],
        "dense_training_flops": flops["dense_flops"],
        "sup_tickets": sup_tickets_cycles(run, metric),
    }


# -------------------------------------------------------------------------------------- plots
def _figure(width=7.0, height=4.0, ncols=1):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots(1, ncols)


def _label(run, k):
    return f"sub-net {k} ({100 * run.info['sparsities'][k]:g}% target)"


def _colors(n):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]


def _integer_epochs(ax):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_accuracy(run, path, metric="accuracy"):
    fig, ax = _figure()
    val, train = accuracy_series(run, metric), accuracy_series(run, metric, prefix="")
    for k, color in enumerate(_colors(run.num_subnets)):
        if k in val:
            epochs, values = zip(*val[k])
            ax.plot(epochs, values, "o-", color=color, markersize=3, label=_label(run, k))
        if k in train:
            epochs, values = zip(*train[k])
            ax.plot(epochs, values, "--", color=color, alpha=0.7,
                    label=None if k in val else _label(run, k) + " (training)")
    ax.set_xlabel("epoch")
    _integer_epochs(ax)
    ax.set_ylabel(metric)
    title = f"Validation {metric} per sub-net (dashed: training)"
    if not val:
        title = f"Training {metric} per sub-net (no validation recorded)"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)


def _layer_ticks(ax, names):
    ax.set_xticks(range(len(names)))
    if len(names) <= 16:
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("prunable layer" + ("" if len(names) <= 16 else " (index)"))


def plot_layer_sparsity(run, path):
    fig, ax = _figure(width=max(7.0, 0.3 * len(run.layers) * run.num_subnets))
    layers = layer_sparsity(run)
    width = 0.8 / run.num_subnets
    for k, color in enumerate(_colors(run.num_subnets)):
        x = np.arange(len(run.layers)) + (k - (run.num_subnets - 1) / 2) * width
        ax.bar(x, [100 * layers[k][name] for name in run.layers], width, color=color,
               label=_label(run, k))
        ax.axhline(100 * run.info["sparsities"][k], color=color, lw=0.8, ls=":")
    _layer_ticks(ax, run.layers)
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Layer-wise sparsity per sub-net (dotted: target over all prunable layers)")
    ax.legend(fontsize=8)
    fig.savefig(path)


def plot_mask_xor(run, path):
    xor = mask_xor(run)
    pairs = list(xor)
    fig, ax = _figure(width=max(7.0, 0.45 * len(run.layers) + 2),
                      height=max(2.5, 0.5 * len(pairs) + 2))
    if not pairs:
        ax.text(0.5, 0.5, "one sub-net: no pair to compare", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path)
        return
    table = np.array([[100 * xor[p][name] for name in run.layers] for p in pairs])
    image = ax.imshow(table, aspect="auto", cmap="magma", vmin=0)
    if table.size <= 80:
        for (r, c), value in np.ndenumerate(table):
            ax.text(c, r, f"{value:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 * table.max() else "black")
    ax.set_yticks(range(len(pairs)))
    ax.set_yticklabels([f"{a} vs {b} ({100 * xor[(a, b)]['all']:.1f}% all)"
                        for a, b in pairs], fontsize=8)
    _layer_ticks(ax, run.layers)
    fig.colorbar(image, ax=ax, label="weights where the masks differ (%)")
    ax.set_title("Mask non-overlap (XOR) between sub-nets, per layer")
    fig.savefig(path)


def plot_gc(run, path):
    series = gc_per_epoch(run)
    fig, (left, right) = _figure(width=10.0, ncols=2)
    if not series:
        for ax in (left, right):
            ax.text(0.5, 0.5, f"no inner products recorded (gc={run.info['gc']!r}, "
                    f"{run.num_subnets} sub-net(s))", ha="center", va="center", fontsize=9)
            ax.set_axis_off()
        fig.savefig(path)
        return
    colors = _colors(run.num_subnets)
    for i, points in sorted(series.items()):
        epochs = [e for e, _ in points]
        label = f"sub-net {i} vs {i - 1}"
        left.plot(epochs, [v["gc_ratio"] for _, v in points], "o-", markersize=3,
                  color=colors[i], label=label)
        right.plot(epochs, [v["gc_cosine"] for _, v in points], "o-", markersize=3,
                   color=colors[i], label=label)
    left.axhline(1.0, color="gray", lw=0.8, ls=":")
    left.set_ylabel("negative / positive inner products")
    left.set_title("Gradient conflicts: negative vs positive g.h", fontsize=10)
    right.axhline(0.0, color="gray", lw=0.8, ls=":")
    right.set_ylabel("mean cosine(g, h)")
    right.set_title("Mean cosine between consecutive sub-nets' gradients", fontsize=10)
    scope = "per kernel" if run.info["gc"] == "layerwise" else "over all prunable kernels"
    for ax in (left, right):
        ax.set_xlabel(f"epoch (inner products {scope})")
        _integer_epochs(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path)


def plot_flops(run, path):
    flops = training_flops(run)
    fig, ax = _figure()
    names = [f"sub-net {k}" for k in range(run.num_subnets)] + ["whole run"]
    trained = [s["flops"] for s in flops["subnets"]] + [flops["flops"]]
    dense = [s["dense_flops"] for s in flops["subnets"]] + [flops["dense_flops"]]
    x = np.arange(len(names))
    ax.bar(x - 0.2, trained, 0.4, label="trained (sparse)", color="#3b7dd8")
    ax.bar(x + 0.2, dense, 0.4, label="same examples, dense", color="#bbbbbb")
    for xi, t, d in zip(x, trained, dense):
        if d > 0:
            ax.text(xi - 0.2, t, f"{t / d:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel("training FLOPs")
    ax.set_title(f"Training FLOPs ({run.info['training']} training) vs dense")
    ax.legend(fontsize=8)
    fig.savefig(path)


# ------------------------------------------------------------------------------------- report
def _pct(value):
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _markdown(run, numbers, metric):
    K = run.num_subnets
    lines = [
        "# AST run report", "",
        f"{K} sub-net(s), {numbers['training']} training, gradient correction "
        f"`{numbers['gc']}`; {numbers['epochs']} epochs ({numbers['iteration']} iterations) "
        "recorded.", "",
        f"| sub-net | target | sparsity (masks) | train {metric} | val {metric} (epoch) | "
        "training FLOPs | dense, same examples | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in numbers["subnets"]:
        dense = s["training_dense_flops"]
        lines.append(
            f"| {s['subnet']} | {_pct(s['target_sparsity'])} | {_pct(s['sparsity'])} | "
            f"{_pct(s[f'train_{metric}'])} | {_pct(s[f'val_{metric}'])} ({s['val_epoch']}) | "
            f"{s['training_flops']:.4g} | {dense:.4g} | "
            f"{s['training_flops'] / dense if dense else float('nan'):.3f} |")
    total, dense = numbers["training_flops"], numbers["dense_training_flops"]
    lines += ["", f"Whole run: {total:.4g} training FLOPs; dense training of the same examples: "
              f"{dense:.4g} ({total / dense if dense else float('nan'):.3f}x).", "",
              f"![{metric}](accuracy.png)", "", "## Layer-wise sparsity", "",
              "| layer | " + " | ".join(f"sub-net {k}" for k in range(K)) + " |",
              "| --- |" + " --- |" * K]
    for name in run.layers:
        lines.append(f"| {name} | " + " | ".join(
            _pct(s["layer_sparsity"][name]) for s in numbers["subnets"]) + " |")
    lines += ["", "![layer sparsity](layer_sparsity.png)", "",
              "## Mask non-overlap (XOR)", "",
              "Fraction of a layer's weights on which two sub-nets' masks differ.", ""]
    pairs = list(numbers["mask_xor"])
    if pairs:
        lines += ["| layer | " + " | ".join(pairs) + " |", "| --- |" + " --- |" * len(pairs)]
        for name in run.layers + ["all"]:
            lines.append(f"| {name} | " + " | ".join(
                _pct(numbers["mask_xor"][p][name]) for p in pairs) + " |")
    lines += ["", "![mask XOR](mask_xor.png)", "", "## Gradient correction", ""]
    stats = {i: s for i, s in numbers["gc_statistics"].items() if s["steps"] > 0}
    if stats:
        lines += [
            "Over the whole run, for the steps of sub-net i (its gradient g against h, the "
            "gradient applied at the step before, by sub-net i - 1):", "",
            "| sub-net i | steps | corrected steps | inner products | negative | positive | "
            "negative / positive | mean cosine |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for i, s in stats.items():
            lines.append(
                f"| {i} | {s['steps']:.0f} | {_pct(s['gc_corrected'])} | {s['products']:.0f} | "
                f"{_pct(s['gc_negative'])} | {_pct(s['gc_positive'])} | {s['gc_ratio']:.3f} | "
                f"{s['gc_cosine']:.4f} |")
    else:
        lines.append(f"No inner products recorded (gc=`{numbers['gc']}`).")
    lines += ["", "![gradient inner products](gc_inner_products.png)", "",
              "## Training FLOPs", "", "![training FLOPs](training_flops.png)", ""]
    cycles = numbers.get("sup_tickets") or []
    if cycles:
        lines += ["## Sup-tickets", "",
                  f"Per cycle (at its last epoch), test {metric} of each sub-net's last ticket "
                  "and of its superposed model before and after BatchNorm recalibration.", "",
                  "| epoch | sub-net | ticket | superposed, before BN recalibration | "
                  "superposed |", "| --- | --- | --- | --- | --- |"]
        for c in cycles:
            lines.append(f"| {c['epoch']} | {c['subnet']} | {_pct(c['ticket'])} | "
                         f"{_pct(c['superposed_before_bn'])} | {_pct(c['superposed'])} |")
        lines.append("")
    return "\n".join(lines)


def sup_tickets_cycles(run, metric="accuracy"):
    """[{epoch, subnet, ticket, superposed_before_bn, superposed}] from the epoch logs
    `keras_ast.SupTickets` fills at each cycle end (empty for a run without it)."""
    rows = []
    for record in run.history:
        logs = record.get("logs", {})
        for k in range(run.num_subnets):
            if f"superposed_{metric}_{k}" in logs:
                rows.append({"epoch": record["epoch"], "subnet": k,
                             **{key: logs.get(f"{key}_{metric}_{k}")
                                for key in ("ticket", "superposed_before_bn", "superposed")}})
    return rows


def write_report(run_dir, output_dir=None, metric="accuracy"):
    """Writes the plots, ``report.md`` and ``report.json`` for the run in `run_dir`.

    Args:
      run_dir: a directory written by `keras_ast.RunRecorder`.
      output_dir: default ``<run_dir>/report``.
      metric: the compiled metric to plot per sub-net (``val_<metric>_<k>`` and
        ``<metric>_<k>`` in the recorded logs).

    Returns:
      {name: path} of the files written.
    """
    run = load_run(run_dir)
    output_dir = os.path.join(str(run_dir), "report") if output_dir is None else str(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, f"{name}.png") for name in PLOTS}
    plot_accuracy(run, paths["accuracy"], metric)
    plot_layer_sparsity(run, paths["layer_sparsity"])
    plot_mask_xor(run, paths["mask_xor"])
    plot_gc(run, paths["gc_inner_products"])
    plot_flops(run, paths["training_flops"])
    numbers = summarize(run, metric)
    paths["report.json"] = os.path.join(output_dir, "report.json")
    with open(paths["report.json"], "w") as f:
        json.dump(numbers, f, indent=2)
    paths["report.md"] = os.path.join(output_dir, "report.md")
    text = _markdown(run, numbers, metric)
    deployment = os.path.join(str(run_dir), DEPLOYMENT)
    text += "\n## Deployment\n\n"
    if os.path.isfile(deployment):
        from keras_ast import deploy

        with open(deployment) as f:
            text += deploy.markdown(json.load(f)) + "\n"
    else:
        text += (f"No deployment table yet: `python -m launch.export --run_dir={run_dir}` "
                 "writes the sub-nets' SavedModels, one multi-sub-net SavedModel and sparse "
                 "LiteRT files, and measures their size and latency.\n")
    with open(paths["report.md"], "w") as f:
        f.write(text)
    return paths
