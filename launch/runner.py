"""The work behind `launch.train`: data, model, fit with PruneRegrow, evaluation, export."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

import keras_ast
from keras_ast import (atomic, checkpoint, distribute, export, fidelity, models, nm,
                       suptickets, updaters)
from keras_ast import data as data_lib

NM_NOTATION = ("N:M = N zeros in every group of M consecutive input channels (the AST "
               "paper's notation; NVIDIA's N counts non-zeros)")


def learning_rate(flags, steps_per_epoch, epochs=None):
    """Cosine (or x0.1 steps at 50% / 75%) decay after an optional linear warm-up, over
    `epochs` (default --epochs)."""
    total = (epochs or flags.epochs) * steps_per_epoch
    warmup = flags.warmup_epochs * steps_per_epoch
    if flags.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else flags.lr, max(total - warmup, 1),
            warmup_target=flags.lr if warmup else None, warmup_steps=warmup,
        )
    boundaries = [int(total * 0.5), int(total * 0.75)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries, [flags.lr, flags.lr * 0.1, flags.lr * 0.01]
    )


def updater_name(flags):
    """--updater, with --prune_mode=subset read as nested; plus ":erk" for ERK densities."""
    name = getattr(flags, "updater", "granet")
    if name == "granet" and flags.prune_mode == "subset":
        name = "nested"
    if name in ("rigl", "set", "static") and flags.density != "uniform":
        name += f":{flags.density}"
    return name


def _prune_callback(flags, num_subnets, steps_per_epoch, phase_epochs=None):
    """The --updater's `PruneRegrow`: granet / nested are GraNet (--prune_mode=subset is
    nested), rigl / set / static come from `keras_ast.updaters` with --density. Its default
    end of pruning is 68.75% of `phase_epochs` (the epochs with mask updates: --epochs, or
    Sup-tickets' first phase)."""
    updater = getattr(flags, "updater", "granet")
    total = flags.epochs * steps_per_epoch
    frequency = flags.update_frequency or max(4 * num_subnets, steps_per_epoch)
    period = flags.adjustment_period or max(1, frequency // (2 * num_subnets))
    begin = int(flags.prune_start_epoch * steps_per_epoch)
    if updater == "static":
        return keras_ast.PruneRegrow(updaters.get(
            "static", distribution=flags.density, total_steps=total, seed=flags.seed, verbose=1))
    if updater in ("rigl", "set"):
        end = flags.prune_end_epoch  # default: the updater's (75% of the run)
        return keras_ast.PruneRegrow(updaters.get(
            updater, frequency=frequency, adjustment_period=period if num_subnets > 1 else None,
            begin_step=begin,
            end_step=None if end is None else max(begin + 1, int(end * steps_per_epoch)),
            distribution=flags.density, total_steps=total, seed=flags.seed, verbose=1,
        ))
    end_epoch = flags.prune_end_epoch
    if end_epoch is None:
        end_epoch = 0.6875 * (phase_epochs or flags.epochs)
    end = max(begin + 1, int(end_epoch * steps_per_epoch))
    options = fidelity.preset(getattr(flags, "preset", "default")).updater
    if options["offset_unit"] == "subnet" and flags.adjustment_period is None:
        # The authors' CIFAR ratio (offset 100 own steps, F = 1000), times K in the schedule,
        # kept below F / (K (K - 1)) so that the K update times stay apart.
        apart = (frequency - 1) // max(1, num_subnets * (num_subnets - 1))
        period = max(1, min(frequency // 10, apart))
    return keras_ast.PruneRegrow(
        frequency=frequency, adjustment_period=period if num_subnets > 1 else 0,
        begin_step=begin, end_step=end, initial_sparsity=flags.initial_sparsity,
        mode="subset" if updater == "nested" else flags.prune_mode, total_steps=total,
        seed=flags.seed, verbose=1, **options,
    )


def _one_hot(num_classes, smoothing):
    if smoothing == 0.0:
        return None, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return (
        lambda x, y: (x, tf.one_hot(y, num_classes)),
        keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing),
    )


def nm_patterns(flags):
    """The --nm patterns (keras_ast.NMPattern, zeros notation), or None."""
    if getattr(flags, "nm", None) is None:
        return None
    return nm.parse_nm_list(flags.nm, counts=flags.nm_counts)


def _monitor_callbacks(flags, test, run_dir, chief=True):
    """Per-sub-net validation, run records for launch.report and TensorBoard logs (in this
    order: the TensorBoard callback writes the epoch logs the others filled). Every worker
    validates (its evaluation takes part in the all-reduces); only the chief writes files."""
    log_dir = os.path.join(run_dir, "logs") if flags.tensorboard else None
    callbacks = []
    if flags.eval_every:
        callbacks.append(keras_ast.SubnetValidation(test, frequency=flags.eval_every))
    if not chief:
        return callbacks
    callbacks.append(keras_ast.RunRecorder(run_dir, log_dir=log_dir))
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False))
    return callbacks


def launcher_width_models():
    """The models that take --width_multiplier."""
    return ("resnet20", "mobilenet", "mobilenet_v2")


def build_plain_model(flags, info):
    """The --model for the data set `info` describes (--width_multiplier for resnet20 and the
    MobileNets)."""
    kwargs = ({"width_multiplier": flags.width_multiplier}
              if flags.model in launcher_width_models() else {})
    return models.get_model(flags.model, num_classes=info.num_classes,
                            input_shape=info.image_shape, **kwargs)


def data_options(flags):
    """`keras_ast.data.load_source` keyword arguments from --image_size, --augment and
    --train_subset (only those the data set takes)."""
    if flags.dataset not in ("image_folder", "fashion_mnist"):
        return {}
    augment = {"auto": None, "on": True, "off": False}[flags.augment]
    options = {"augment": augment, "train_subset": flags.train_subset}
    if flags.dataset == "image_folder" and flags.image_size:
        options["image_size"] = tuple(int(v) for v in flags.image_size)
    return options


def _dense_monitor(flags, chief):
    """--mode=dense: TensorBoard logs only (the run records describe sub-nets and masks)."""
    if not (chief and flags.tensorboard):
        return []
    return [keras.callbacks.TensorBoard(os.path.join(flags.output_dir, "logs"),
                                        write_graph=False)]


# The flags that change what is trained (not where results go, how often they are shown or
# saved, nor the device layout: a 2-replica run equals a 1-replica one).
TRAJECTORY_FLAGS = (
    "dataset", "image_size", "augment", "train_subset", "model", "width_multiplier",
    "sparsities", "initial_sparsity", "mode", "prune_mode", "updater", "density", "gc",
    "gc_reference", "preset", "epochs", "batch_size", "lr", "lr_schedule", "warmup_epochs",
    "momentum", "weight_decay", "label_smoothing", "update_frequency", "adjustment_period",
    "prune_start_epoch", "prune_end_epoch", "seed", "nm", "nm_counts", "sync_batchnorm",
    "agent", "agent_alpha", "agent_gamma", "agent_tau0", "sup_tickets", "cycle_epochs",
    "cycle_rate", "cycle_lr", "superpose", "cima_factor", "reexplore", "bn_batches",
)


def run_config(flags, training, updater):
    """The run's configuration stored in every checkpoint manifest: the trajectory flags,
    the run's training mode and its updater's full config; `--resume` under another one
    stops (checkpoint.BackupAndRestore)."""
    config = {name: getattr(flags, name) for name in TRAJECTORY_FLAGS if hasattr(flags, name)}
    config["training"] = training
    if updater is not None:
        config["updater_config"] = updaters.serialize(updater)
    return config


def train_ast(flags, sparsities, source, info, loss, strategy, backup_dir,
              training="alternating", patterns=None, callbacks=(), test=None):
    """Builds and compiles one ASTModel (N:M `patterns` if given; the plain model when
    `training` is "dense") under `strategy` and trains it with `resume_fit` (checkpoints in
    `backup_dir`; with --resume it continues the run saved there). Returns (model, the step it
    resumed from, seconds spent in training, its `keras_ast.SupTickets` or None)."""
    agent = None if training == "dense" else _agent(flags)
    steps = source.steps_per_epoch
    schedule, phase_epochs = learning_rate(flags, steps), None
    if training != "dense" and getattr(flags, "sup_tickets", False):
        phase_epochs = suptickets.budget_split(flags.epochs, flags.cycle_rate,
                                               flags.cycle_epochs)[0]
        schedule = keras_ast.SupTicketsSchedule.from_budget(
            learning_rate(flags, steps, phase_epochs), flags.epochs, steps,
            flags.cycle_epochs, flags.cycle_rate, *(float(v) for v in flags.cycle_lr))
    with strategy.scope():
        plain = build_plain_model(flags, info)
        model = plain if training == "dense" else keras_ast.ASTModel.from_model(
            plain, sparsities, dense_layers=models.dense_layers(flags.model),
            prunable="xnnpack" if getattr(flags, "prunable", "default") == "xnnpack" else None,
            gc="off" if training == "joint" else flags.gc, gc_reference=flags.gc_reference,
            training=training, nm=patterns, agent=agent,
            **fidelity.preset(getattr(flags, "preset", "default")).model,
        )
        if flags.distribution != "none":
            distribute.set_synchronized_batchnorm(model, flags.sync_batchnorm)
        model.compile(
            optimizer=keras_ast.SGD(schedule, momentum=flags.momentum, l2=flags.weight_decay),
            loss=loss, metrics=["accuracy"], jit_compile=flags.jit_compile,
        )
    prune = ([] if training == "dense"
             else [_prune_callback(flags, len(sparsities), steps, phase_epochs)])
    epoch_batches = lambda epoch: source.epochs(epoch, epoch + 1)  # noqa: E731
    if agent is not None:  # the pass over the epoch's own batches
        callbacks = [keras_ast.AgentPass(epoch_batches), *callbacks]
    sup = None
    if phase_epochs is not None:  # before the monitors: its cycle results go in the logs
        sup = keras_ast.SupTickets(
            schedule, epoch_batches, validation_data=test, reexplore=flags.reexplore,
            superpose=flags.superpose, cima_factor=flags.cima_factor,
            bn_batches=flags.bn_batches or None, verbose=1)
        callbacks = [sup, *callbacks]
    config = run_config(flags, training, prune[0].updater if prune else None)
    backup = checkpoint.BackupAndRestore(backup_dir, save_every=flags.checkpoint_every,
                                         keep=flags.keep_checkpoints, config=config)
    if flags.resume and not backup.checkpoints():
        print(f"--resume: no checkpoint in {backup_dir} yet, starting from step 0")
    began = time.perf_counter()
    start, _ = checkpoint.resume_fit(
        model, source, flags.epochs, backup, strategy=strategy, verbose=flags.verbose,
        shuffle=False, callbacks=[*prune, *callbacks])
    return model, start, time.perf_counter() - began, sup


def _agent(flags):
    """--agent's keras_ast.Agent, or None."""
    if not getattr(flags, "agent", False):
        return None
    return keras_ast.Agent(flags.agent_alpha, flags.agent_gamma, flags.agent_tau0)


def backup_root(flags):
    """--backup_dir, default <output_dir>/backup: all the run's checkpoints are below it."""
    return flags.backup_dir or os.path.join(flags.output_dir, "backup")


def backup_dirs(flags, num_runs):
    """The checkpoint directory of each training run (one per sub-net with
    --mode=individual)."""
    root = backup_root(flags)
    return [root] if num_runs == 1 else [os.path.join(root, f"run_{k}")
                                         for k in range(num_runs)]


def run(flags, sparsities):
    """Trains, evaluates and exports; returns the summary (also written to summary.json)."""
    keras.utils.set_random_seed(flags.seed)
    strategy = distribute.make_strategy(flags.distribution)
    chief = distribute.is_chief(strategy)
    source, test, info = data_lib.load_source(
        flags.dataset, data_dir=flags.data_dir, batch_size=flags.batch_size, seed=flags.seed,
        **data_options(flags))
    to_one_hot, loss = _one_hot(info.num_classes, flags.label_smoothing)
    if to_one_hot is not None:
        source, test = source.map(to_one_hot), test.map(to_one_hot)
    steps_per_epoch = source.steps_per_epoch
    if steps_per_epoch <= 0:
        raise ValueError(f"the training set makes no batch of {flags.batch_size}")
    if chief:
        os.makedirs(flags.output_dir, exist_ok=True)
    export_dir = os.path.join(flags.output_dir, "export")
    patterns = nm_patterns(flags)
    if flags.mode in ("ast", "joint", "dense"):
        training = {"ast": "alternating"}.get(flags.mode, flags.mode)
        if flags.mode == "dense":
            sparsities, patterns = [0.0], None
        run_dirs = [] if flags.mode == "dense" else [flags.output_dir]
        monitor = (_dense_monitor(flags, chief) if flags.mode == "dense"
                   else _monitor_callbacks(flags, test, flags.output_dir, chief))
        runs = [(*train_ast(flags, sparsities, source, info, loss, strategy,
                            backup_dirs(flags, 1)[0], training, patterns, monitor, test), None)]
    else:  # individual: one K=1 run per sparsity, exported as subnet_<k>
        run_dirs = [os.path.join(flags.output_dir, f"individual_{k}")
                    for k in range(len(sparsities))]
        dirs = backup_dirs(flags, len(sparsities))
        runs = [(*train_ast(flags, [s], source, info, loss, strategy, dirs[k],
                            patterns=None if patterns is None else [patterns[k]],
                            callbacks=_monitor_callbacks(flags, test, run_dir, chief),
                            test=test), k)
                for k, (s, run_dir) in enumerate(zip(sparsities, run_dirs))]
    entries = []
    total_flops = 0.0
    examples = flags.epochs * steps_per_epoch * flags.batch_size
    for model, _, _, sup, index in runs:
        if flags.mode == "dense":
            entries.append(_dense_entry(flags, model, test, examples, export_dir, chief))
            total_flops += entries[-1]["training_flops"]
            dense_flops = entries[-1]["training_flops"]
            if chief:
                with atomic.atomic_output(os.path.join(flags.output_dir, "model.keras")) as tmp:
                    model.save(tmp)
            continue
        dense_flops = examples * model.training_flops["dense_example"]
        with strategy.scope():  # every worker takes part in the evaluation's all-reduces
            results = model.evaluate_subnets(test)
        if not chief:  # only the chief writes results (the other workers' models are equal)
            continue
        flops = model.training_flops
        total_flops += flops["total"]
        for k, metrics in results.items():
            subnet = k if index is None else index
            path = os.path.join(export_dir, f"subnet_{subnet}") if flags.export else None
            if path is not None:
                export.export_subnet(model, k, path)
                measured = export.saved_model_sparsity(
                    path, [layer.name for layer in model.sparse_layers])
            else:
                measured = model.subnet_sparsity(k)
            entries.append({
                "subnet": subnet,
                "target_sparsity": model.sparsities[k],
                "measured_sparsity": measured,
                "overall_sparsity": model.overall_sparsity(k),
                "accuracy": metrics["accuracy"],
                "training_flops": flops[k],
                "loss": metrics["loss"],
                "export_path": path,
                **(_nm_entry(model, k, path) if path is not None else {}),
                **(_superposed_entry(flags, model, sup, k, subnet, export_dir)
                   if sup is not None else {}),
            })
        name = "model.keras" if index is None else f"model_subnet{index}.keras"
        with atomic.atomic_output(os.path.join(flags.output_dir, name)) as tmp:
            model.save(tmp)
    if not chief:
        return None
    summary = {
        "dataset": flags.dataset,
        "model": flags.model,
        "mode": flags.mode,
        "gc": flags.gc if flags.mode in ("ast", "individual") else "off",
        "updater": None if flags.mode == "dense" else updater_name(flags),
        "preset": getattr(flags, "preset", "default"),
        "prunable": getattr(flags, "prunable", "default"),
        "epochs": flags.epochs,
        "steps_per_epoch": steps_per_epoch,
        "distribution": flags.distribution,
        "replicas": strategy.num_replicas_in_sync,
        "model_options": ({"width_multiplier": flags.width_multiplier}
                          if flags.model in launcher_width_models() else {}),
        "num_train": info.num_train,
        "num_test": info.num_test,
        "batch_size": flags.batch_size,
        "seed": flags.seed,
        # 0 for a run trained in one go; else the checkpoint step(s) it was resumed from.
        "resumed_from_step": [start for _, start, _, _, _ in runs],
        # Wall-clock seconds of training (fit, with mask updates and per-epoch evaluation; not
        # data loading or export), per training run; of the last process only after a resume.
        "train_seconds": [seconds for _, _, seconds, _, _ in runs],
        # docs/design.md section 8: the whole run (all sub-nets), and the same steps trained dense.
        "training_flops": total_flops,
        "dense_training_flops": dense_flops,
        "subnets": entries,
        # RunRecorder's records (run.json, metrics.jsonl, masks.npz) for launch.report.
        "run_dirs": run_dirs,
    }
    if patterns is not None:
        summary["nm_notation"] = NM_NOTATION
    sups = [sup for _, _, _, sup, _ in runs if sup is not None]
    if sups:
        summary["sup_tickets"] = {
            "cycle_epochs": flags.cycle_epochs, "cycle_rate": flags.cycle_rate,
            "cycle_lr": [float(v) for v in flags.cycle_lr], "superpose": flags.superpose,
            "reexplore": flags.reexplore, "first_phase_epochs": suptickets.budget_split(
                flags.epochs, flags.cycle_rate, flags.cycle_epochs)[0],
            "num_cycles": sups[0].schedule.num_cycles,
            "events": [sup.results for sup in sups],  # one list per training run
        }
    atomic.write_json(os.path.join(flags.output_dir, "summary.json"), summary)
    shutil.rmtree(backup_root(flags), ignore_errors=True)  # the run is complete
    return summary


def _superposed_entry(flags, model, sup, k, subnet, export_dir):
    """summary.json fields of sub-net k's Sup-tickets superposed model (saved as
    superposed_<subnet>.keras, exported as export/superposed_<subnet>): its accuracy before and
    after BN recalibration beside the last ticket's, its sparsity and files."""
    superposed = sup.superposed(k)
    if superposed is None:
        return {}
    last = sup.summary()["subnets"]
    entry = last[k] if k < len(last) else {}
    name = f"superposed_{subnet}"
    with atomic.atomic_output(os.path.join(flags.output_dir, f"{name}.keras")) as tmp:
        superposed.save(tmp)
    path = None
    if flags.export:
        path = os.path.join(export_dir, name)
        with atomic.atomic_output(path) as tmp:
            superposed.export(tmp, verbose=False)
    kernels = [superposed.get_layer(layer.name).kernel for layer in model.sparse_layers]
    zeros = sum(int((keras.ops.convert_to_numpy(w) == 0).sum()) for w in kernels)

    def accuracy(key):
        return (entry.get(key) or {}).get("accuracy")

    return {"superposed": {
        "accuracy": accuracy("superposed"),
        "accuracy_before_bn": accuracy("superposed_before_bn"),
        "last_ticket_accuracy": accuracy("ticket"),
        "measured_sparsity": zeros / sum(int(np.prod(w.shape)) for w in kernels),
        "keras_path": os.path.join(flags.output_dir, f"{name}.keras"),
        "export_path": path,
    }}


def _dense_entry(flags, model, test, examples, export_dir, chief):
    """summary.json entry of a --mode=dense run (sparsity 0, dense training FLOPs)."""
    from keras_ast import cost

    metrics = model.evaluate(test, return_dict=True, verbose=0)
    path = os.path.join(export_dir, "subnet_0") if flags.export else None
    if chief and path is not None:
        with atomic.atomic_output(path) as tmp:
            model.export(tmp, verbose=False)
    flops = cost.dense_training_flops(model, examples)
    return {"subnet": 0, "target_sparsity": 0.0, "measured_sparsity": 0.0,
            "overall_sparsity": 0.0, "accuracy": float(metrics["accuracy"]),
            "training_flops": flops, "loss": float(metrics["loss"]), "export_path": path}


def _nm_entry(model, k, path):
    """summary.json fields of N:M sub-net k: its pattern and the checker's verdict on the
    exported SavedModel's prunable kernels."""
    if model.nm_patterns is None:
        return {}
    pattern = model.nm_patterns[k]
    results = nm.check_nm(path, pattern, layers=[layer.name for layer in model.sparse_layers])
    return {
        "nm_pattern": {"pattern": str(pattern), "zeros": pattern.zeros,
                       "nonzeros": pattern.nonzeros, "group": pattern.group},
        "nm_check": {
            "satisfied": all(r.satisfied for r in results.values()),
            "violating_groups": sum(r.violating_groups for r in results.values()),
            "groups": sum(r.groups for r in results.values()),
            "layers": {name: dataclasses.asdict(r) for name, r in results.items()},
        },
    }


def _percent(value):
    return "n/a" if value is None else f"{100 * value:.2f}%"


def format_table(summary):
    """The per-sub-net result table printed at the end of a run."""
    structured = "nm_notation" in summary
    superposed = "sup_tickets" in summary
    nm_head = f" {'N:M':>6} {'N:M check':>10}" if structured else ""
    sup_head = f" {'superposed':>11} {'(before BN)':>11}" if superposed else ""
    rows = [f"{'sub-net':>7}{nm_head} {'target':>8} {'measured':>9} {'overall':>8} "
            f"{'accuracy':>9}{sup_head} {'train FLOPs':>12}"]
    for e in summary["subnets"]:
        nm_cols = ""
        if structured:
            check = e["nm_check"]
            verdict = "ok" if check["satisfied"] else f"{check['violating_groups']} bad"
            nm_cols = f" {e['nm_pattern']['pattern']:>6} {verdict:>10}"
        sup_cols = ""
        if superposed:
            sup = e.get("superposed", {})
            sup_cols = "".join(f" {_percent(sup.get(key)):>11}"
                               for key in ("accuracy", "accuracy_before_bn"))
        rows.append(
            f"{e['subnet']:>7}{nm_cols} {100 * e['target_sparsity']:7.2f}% "
            f"{100 * e['measured_sparsity']:8.2f}% {100 * e['overall_sparsity']:7.2f}% "
            f"{100 * e['accuracy']:8.2f}%{sup_cols} {e['training_flops']:12.4g}"
        )
    if structured:
        rows.append(summary["nm_notation"])
    if superposed:
        rows.append("accuracy: the last ticket (the trained model); superposed: Sup-tickets' "
                    "model of each sub-net, after (and before) BatchNorm recalibration")
    total, dense = summary["training_flops"], summary["dense_training_flops"]
    rows.append(f"training FLOPs ({summary['mode']}): {total:.4g} in all; the same steps "
                f"trained dense: {dense:.4g} ({total / dense:.3f}x)")
    return "\n".join(rows)
