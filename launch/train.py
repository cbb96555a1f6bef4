"""Train K sparse sub-nets with AST-GC from absl flags, report them and export one SavedModel each.

    python -m launch.train                                   # digits, 3 sub-nets, ~1-2 min
    python -m launch.train --flagfile=launch/configs/cifar10_wrn32.flags --data_dir=/data
    python -m launch.train --helpfull

Writes to --output_dir: summary.json (one entry per sub-net), export/subnet_<k>/ (SavedModels
with the masks folded into the kernels), model.keras (the whole ASTModel), the run records for
`python -m launch.report` (run.json, metrics.jsonl, masks.npz) and TensorBoard logs (logs/).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from launch import cli  # noqa: E402

FLAGS = flags.FLAGS

DATASETS = ("digits", "image_folder", "fashion_mnist", "cifar10", "cifar100", "imagenet")
MODELS = ("small_cnn", "wrn32", "resnet18", "resnet20", "resnet50", "mobilenet",
          "mobilenet_v2")
PRUNABLE = ("default", "xnnpack")
WIDTH_MODELS = ("resnet20", "mobilenet", "mobilenet_v2")
MODES = ("ast", "individual", "joint", "dense")
AUGMENT = ("auto", "on", "off")
GC_MODES = ("off", "layerwise", "global")
GC_REFERENCES = ("corrected", "raw")
UPDATERS = ("granet", "nested", "rigl", "set", "static")
DENSITIES = ("uniform", "erk")
PRUNE_MODES = ("nondisjoint", "subset")
PRESETS = ("default", "authors_code")  # keras_ast.fidelity.PRESETS

flags.DEFINE_string("dataset", "digits", f"Data set: one of {', '.join(DATASETS)}.")
flags.DEFINE_string("data_dir", None,
                    "Directory holding the data set (not needed for digits; for fashion_mnist "
                    "the default is /usr/share/datasets/fashion-mnist when it exists). "
                    "image_folder: DIR/train/<class>/* and DIR/test/<class>/* (or val/).")
flags.DEFINE_list("image_size", None, "image_folder: resize every image to H,W (needed when "
                  "the images differ in size).")
flags.DEFINE_string("augment", "auto", "Pad-crop + flip of the training images for "
                    "image_folder and fashion_mnist: auto (image_folder: on for images of at "
                    "most 64x64; fashion_mnist: off), on or off.")
flags.DEFINE_integer("train_subset", None, "image_folder / fashion_mnist: train on a "
                     "class-balanced subset of this many training images (the same images "
                     "for every --seed); default: all.")
flags.DEFINE_string("model", "small_cnn", f"Model: one of {', '.join(MODELS)}.")
flags.DEFINE_float("width_multiplier", 1.0, "resnet20, mobilenet and mobilenet_v2: channel "
                   "width multiplier (resnet20: widths 16/32/64 times it).")
flags.DEFINE_string("prunable", "default", "Layers to prune: default (every Conv2D, "
                    "DepthwiseConv2D and Dense but the stem) or xnnpack (the 1x1 convolutions, "
                    "which XNNPACK can run sparse: docs/deploy.md).")
flags.DEFINE_list("sparsities", ["0.5", "0.75", "0.9"],
                  "Target sparsity of each sub-net, strictly increasing, each in [0, 1).")
flags.DEFINE_float("initial_sparsity", 0.0, "s_i: sparsity of the random initial masks.")
flags.DEFINE_string("mode", "ast", "ast (alternating, one run), individual (one run per "
                    "sparsity, K=1 each), joint (S-Net: all sub-nets every step) or dense (the "
                    "plain model, no masks: the reference).")
flags.DEFINE_string("prune_mode", "nondisjoint", "Relation between masks: nondisjoint|subset "
                    "(subset is --updater=nested).")
flags.DEFINE_string("updater", "granet", "Mask updater (keras_ast.updaters): granet (gradual "
                    "pruning + prune-and-regrow, the default), nested (granet with sparser masks "
                    "nested in denser ones), rigl, set or static (these three start at the "
                    "target sparsities, with --density's layer densities).")
flags.DEFINE_string("density", "uniform", "Layer densities of --updater=rigl|set|static: "
                    "uniform or erk (Erdos-Renyi-Kernel).")
flags.DEFINE_string("gc", "layerwise", f"Gradient correction: one of {', '.join(GC_MODES)}.")
flags.DEFINE_string("gc_reference", "corrected", "GC reference gradient: corrected|raw.")
flags.DEFINE_string("preset", "default", "Fidelity preset (keras_ast.fidelity): default "
                    "(keras_ast's choices) or authors_code (the authors' released code's "
                    "choices, less its bugs; --adjustment_period then counts each sub-net's "
                    "own steps). --updater=granet or nested.")
flags.DEFINE_bool("agent", False, "AGENT's adaptive gradient correction (keras_ast.Agent, "
                  "docs/agent.md): an SVRG-style control variate against a per-epoch "
                  "snapshot, with a per-epoch pass over the training batches.")
flags.DEFINE_float("agent_alpha", 0.3, "AGENT: forgetting rate of tau's average, in (0, 1].")
flags.DEFINE_float("agent_gamma", 0.1, "AGENT: scale of the control variate, c = gamma * tau "
                   "(>= 0).")
flags.DEFINE_float("agent_tau0", 0.1, "AGENT: the starting value of tau's average.")
flags.DEFINE_bool("sup_tickets", False, "Sup-tickets (keras_ast.SupTickets, docs/suptickets.md): "
                  "the last --cycle_rate of the epochs in cycles of --cycle_epochs with a "
                  "triangular learning rate and no mask updates, each sub-net's tickets "
                  "superposed into one sparse model per sub-net.")
flags.DEFINE_integer("cycle_epochs", 1, "Sup-tickets: epochs per cycle (C; the code's CIFAR "
                     "runs: 8 of 250 epochs).")
flags.DEFINE_float("cycle_rate", 0.1, "Sup-tickets: share of --epochs spent in cycles, rounded "
                   "down to whole cycles (the code's rho).")
flags.DEFINE_list("cycle_lr", ["0.001", "0.005"], "Sup-tickets: the cycles' learning rate at "
                  "their start/end and at their middle (lr_1,lr_2).")
SUPERPOSE = ("caa", "cima")
flags.DEFINE_string("superpose", "caa", "Sup-tickets: caa (the mean of the tickets) or cima "
                    "(exponential average with --cima_factor).")
flags.DEFINE_float("cima_factor", 0.5, "Sup-tickets: CIMA's weight of the newest ticket, (0, 1].")
flags.DEFINE_float("reexplore", 0.5, "Sup-tickets: fraction of each layer's weights removed and "
                   "regrown at every cycle start, in [0, 1).")
flags.DEFINE_integer("bn_batches", 0, "Sup-tickets: training batches for the BatchNorm "
                     "recalibration of the superposed models (0: one epoch).")
flags.DEFINE_integer("epochs", 30, "Training epochs.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_float("lr", 0.05, "Peak learning rate.")
flags.DEFINE_string("lr_schedule", "cosine", "cosine | step (x0.1 at 50% and 75% of training).")
flags.DEFINE_integer("warmup_epochs", 0, "Linear learning-rate warm-up epochs.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 5e-4, "Coupled L2 weight decay.")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing.")
flags.DEFINE_integer("update_frequency", None,
                     "Iterations between two mask updates of one sub-net (default: about one "
                     "epoch, at least 4*K).")
flags.DEFINE_integer("adjustment_period", None,
                     "Iterations between the updates of consecutive sub-nets (default: "
                     "update_frequency // (2K)).")
flags.DEFINE_float("prune_start_epoch", 0.0, "Epoch where gradual pruning starts.")
flags.DEFINE_float("prune_end_epoch", None,
                   "Epoch where gradual pruning ends (default: 68.75% of the epochs, 110/160).")
flags.DEFINE_integer("seed", 0, "Random seed (weights, masks, data order).")
flags.DEFINE_string("output_dir", "runs/default", "Where summary.json and exports go.")
flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity (0 silent, 1 progress bar, 2 a line "
                     "per epoch).")

# --- N:M structured sub-nets (keras_ast.nm) -----------------------------------------------------
NM_COUNTS = ("zeros", "nonzeros")
flags.DEFINE_list("nm", None,
                  "N:M structured sub-nets instead of --sparsities, one pattern per sub-net, "
                  "strictly increasing in sparsity, e.g. 2:4,3:4,7:8,15:16. Needs --nm_counts.")
flags.DEFINE_string("nm_counts", None,
                    "What N counts in --nm (required with it): zeros (the AST paper's notation: "
                    "2:4,3:4,7:8,15:16 = 50/75/87.5/93.75% sparse) or nonzeros (NVIDIA's: "
                    "2:4,1:4,1:8,1:16 are the same patterns). Outputs use the zeros notation.")

# Monitoring: per-sub-net validation, TensorBoard logs, run records for `python -m launch.report`.
flags.DEFINE_integer("eval_every", 1, "Evaluate every sub-net on the test split every N epochs "
                     "(and after the last), logged as val_<metric>_<k>; 0: never during training.")
flags.DEFINE_bool("export", True, "Write a SavedModel per sub-net to <output_dir>/export "
                  "(--noexport: skip; measured_sparsity then comes from the in-memory masks).")
flags.DEFINE_bool("tensorboard", True, "Write TensorBoard event files to <output_dir>/logs.")

# ---- Distributed training and fault tolerance (docs/distributed.md). Checkpoints go to
# --backup_dir; --resume continues a killed run exactly.
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
flags.DEFINE_string("distribution", "none",
                    "none (one device), mirrored (tf.distribute.MirroredStrategy over all local "
                    "GPUs) or multi_worker (MultiWorkerMirroredStrategy; the cluster and this "
                    "worker's task come from the TF_CONFIG environment variable).")
flags.DEFINE_bool("sync_batchnorm", True,
                  "With --distribution: BatchNorm statistics over the global batch (all "
                  "replicas), as on one device; --nosync_batchnorm: per replica (local BN).")
flags.DEFINE_string("backup_dir", None,
                    "Checkpoint directory (default: <output_dir>/backup; shared by all workers "
                    "under multi_worker). Deleted when the run completes.")
flags.DEFINE_integer("checkpoint_every", None,
                     "Also checkpoint every this many steps (default: at every epoch end only).")
flags.DEFINE_integer("keep_checkpoints", 2, "Complete checkpoints kept in --backup_dir.")
flags.DEFINE_bool("resume", False,
                  "Continue the run whose checkpoints are in --backup_dir from the newest good "
                  "one (a corrupt or truncated one is reported and the previous one used); "
                  "with no checkpoint yet it starts from step 0, so the same command serves the "
                  "first launch and every restart.")


class FlagError(ValueError):
    """A bad flag value, reported as one line before anything is built."""


def check_flags():
    """Validates the flags; raises FlagError naming the bad value."""
    from keras_ast.model import check_sparsities

    if FLAGS.dataset not in DATASETS:
        raise FlagError(f"unknown --dataset={FLAGS.dataset!r}; use one of {', '.join(DATASETS)}")
    if FLAGS.model not in MODELS:
        raise FlagError(f"unknown --model={FLAGS.model!r}; use one of {', '.join(MODELS)}")
    if FLAGS.mode not in MODES:
        raise FlagError(f"unknown --mode={FLAGS.mode!r}; use one of {', '.join(MODES)}")
    if FLAGS.gc not in GC_MODES:
        raise FlagError(f"unknown --gc={FLAGS.gc!r}; use one of {', '.join(GC_MODES)}")
    if FLAGS.lr_schedule not in ("cosine", "step"):
        raise FlagError(f"unknown --lr_schedule={FLAGS.lr_schedule!r}; use cosine or step")
    try:
        sparsities = check_sparsities(FLAGS.sparsities)
    except ValueError as error:
        raise FlagError(f"--sparsities={','.join(FLAGS.sparsities)}: {error}") from None
    check_data_flags()
    if FLAGS.dataset == "fashion_mnist" and not FLAGS.data_dir:
        from keras_ast.data.fashion_mnist import DEFAULT_DIR

        if not os.path.isdir(DEFAULT_DIR):
            raise FlagError(f"--dataset=fashion_mnist needs --data_dir ({DEFAULT_DIR}, the "
                            "default, does not exist)")
    elif FLAGS.dataset != "digits":
        if not FLAGS.data_dir:
            raise FlagError(f"--dataset={FLAGS.dataset} needs --data_dir (see docs/launcher.md, "
                            "Data)")
        if not os.path.isdir(FLAGS.data_dir):
            raise FlagError(f"--data_dir={FLAGS.data_dir} does not exist")
    for name in ("epochs", "batch_size"):
        if getattr(FLAGS, name) < 1:
            raise FlagError(f"--{name} must be >= 1, got {getattr(FLAGS, name)}")
    if FLAGS.eval_every < 0:
        raise FlagError(f"--eval_every must be >= 0, got {FLAGS.eval_every}")
    if not 0.0 <= FLAGS.label_smoothing < 1.0:
        raise FlagError(f"--label_smoothing must be in [0, 1), got {FLAGS.label_smoothing}")
    if not 0 <= FLAGS.seed < 2**32:
        raise FlagError(f"--seed must be in [0, 2**32), got {FLAGS.seed}")
    check_paths()
    check_training_flags(sparsities)
    check_distribution_flags()
    check_updater_flags()
    if FLAGS.mode in ("joint", "dense") and FLAGS["gc"].present and FLAGS.gc != "off":
        raise FlagError(f"--gc={FLAGS.gc} needs alternating training; --mode={FLAGS.mode} has "
                        "no alternation (leave --gc out or set --gc=off)")
    if FLAGS.mode == "dense" and FLAGS.nm is not None:
        raise FlagError("--mode=dense trains the plain model: leave out --nm")
    if FLAGS.nm is not None or FLAGS.nm_counts is not None:
        return [p.sparsity for p in check_nm_flags()]
    return sparsities


def check_paths():
    """--output_dir and --backup_dir: given, and not an existing file."""
    if not FLAGS.output_dir:
        raise FlagError("--output_dir must not be empty")
    for name in ("output_dir", "backup_dir"):
        path = getattr(FLAGS, name)
        if path and os.path.exists(path) and not os.path.isdir(path):
            raise FlagError(f"--{name}={path} is a file, not a directory")


def check_training_flags(sparsities):
    """Validates the optimizer, schedule and pruning-time flags against each other."""
    import math

    def number(name, ok, rule):
        value = getattr(FLAGS, name)
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise FlagError(f"--{name} must be {rule}, got {value}")

    number("lr", lambda v: v > 0, "> 0")
    number("momentum", lambda v: 0 <= v < 1, "in [0, 1)")
    number("weight_decay", lambda v: v >= 0, ">= 0")
    number("warmup_epochs", lambda v: 0 <= v < FLAGS.epochs, f"in [0, --epochs={FLAGS.epochs})")
    number("prune_start_epoch", lambda v: 0 <= v < FLAGS.epochs,
           f"in [0, --epochs={FLAGS.epochs})")
    number("prune_end_epoch", lambda v: FLAGS.prune_start_epoch < v <= FLAGS.epochs,
           f"in (--prune_start_epoch={FLAGS.prune_start_epoch}, --epochs={FLAGS.epochs}]")
    number("update_frequency", lambda v: v >= 1, ">= 1")
    number("adjustment_period", lambda v: v >= 0, ">= 0")
    number("initial_sparsity", lambda v: 0 <= v <= min(sparsities),
           f"in [0, the smallest --sparsities value {min(sparsities)}]")
    number("verbose", lambda v: v in (0, 1, 2), "0, 1 or 2")
    number("agent_alpha", lambda v: 0 < v <= 1, "in (0, 1]")
    number("agent_gamma", lambda v: v >= 0, ">= 0")
    number("agent_tau0", lambda v: True, "finite")
    if FLAGS.agent and FLAGS.mode == "dense":
        raise FlagError("--agent corrects the sub-nets' gradients; --mode=dense trains the plain "
                        "model (leave out --agent)")
    if FLAGS.agent and FLAGS.distribution != "none":
        raise FlagError(f"--agent runs on one device for now; --distribution="
                        f"{FLAGS.distribution} is not supported with it")
    for name in ("agent_alpha", "agent_gamma", "agent_tau0"):
        if FLAGS[name].present and not FLAGS.agent:
            raise FlagError(f"--{name} applies with --agent only")
    check_sup_tickets_flags()
    if FLAGS.gc_reference not in GC_REFERENCES:
        raise FlagError(f"unknown --gc_reference={FLAGS.gc_reference!r}; use one of "
                        f"{', '.join(GC_REFERENCES)}")


SUP_TICKETS_FLAGS = ("cycle_epochs", "cycle_rate", "cycle_lr", "superpose", "cima_factor",
                     "reexplore", "bn_batches")


def check_sup_tickets_flags():
    """Validates --sup_tickets and its flags (the budget must give at least one cycle)."""
    from keras_ast.suptickets import budget_split

    if not FLAGS.sup_tickets:
        for name in SUP_TICKETS_FLAGS:
            if FLAGS[name].present:
                raise FlagError(f"--{name} applies with --sup_tickets only")
        return
    if FLAGS.mode == "dense":
        raise FlagError("--sup_tickets superposes the sub-nets' tickets; --mode=dense trains "
                        "the plain model (leave out --sup_tickets)")
    if FLAGS.nm is not None:
        raise FlagError("--sup_tickets does not support --nm sub-nets (averaging tickets breaks "
                        "the N:M pattern)")
    if FLAGS.distribution != "none":
        raise FlagError(f"--sup_tickets runs on one device for now; --distribution="
                        f"{FLAGS.distribution} is not supported with it")
    if FLAGS.cycle_epochs < 1:
        raise FlagError(f"--cycle_epochs must be >= 1, got {FLAGS.cycle_epochs}")
    if not 0.0 < FLAGS.cycle_rate < 1.0:
        raise FlagError(f"--cycle_rate must be in (0, 1), got {FLAGS.cycle_rate}")
    try:
        pre, _, cycles = budget_split(FLAGS.epochs, FLAGS.cycle_rate, FLAGS.cycle_epochs)
    except ValueError as error:
        raise FlagError(f"--cycle_rate={FLAGS.cycle_rate} --cycle_epochs={FLAGS.cycle_epochs}: "
                        f"{error}") from None
    if cycles == 0:
        raise FlagError(f"--epochs={FLAGS.epochs} x --cycle_rate={FLAGS.cycle_rate} is less "
                        f"than one cycle of --cycle_epochs={FLAGS.cycle_epochs}: no cycle")
    try:
        rates = [float(v) for v in FLAGS.cycle_lr]
    except ValueError:
        rates = []
    if len(rates) != 2 or not all(r > 0 and r < float("inf") for r in rates):
        raise FlagError(f"--cycle_lr={','.join(FLAGS.cycle_lr)}: give two positive rates "
                        "lr_1,lr_2")
    if FLAGS.superpose not in SUPERPOSE:
        raise FlagError(f"unknown --superpose={FLAGS.superpose!r}; use caa or cima")
    if not 0.0 < FLAGS.cima_factor <= 1.0:
        raise FlagError(f"--cima_factor must be in (0, 1], got {FLAGS.cima_factor}")
    if not 0.0 <= FLAGS.reexplore < 1.0:
        raise FlagError(f"--reexplore must be in [0, 1), got {FLAGS.reexplore}")
    if FLAGS.bn_batches < 0:
        raise FlagError(f"--bn_batches must be >= 0, got {FLAGS.bn_batches}")
    if FLAGS.prune_end_epoch is not None and FLAGS.prune_end_epoch > pre:
        raise FlagError(f"--prune_end_epoch={FLAGS.prune_end_epoch} is after the first phase "
                        f"({pre} epochs, then {cycles} Sup-tickets cycles without mask updates)")


def check_data_flags():
    """Validates --image_size, --augment, --train_subset, --width_multiplier and --prunable."""
    if FLAGS.augment not in AUGMENT:
        raise FlagError(f"unknown --augment={FLAGS.augment!r}; use one of {', '.join(AUGMENT)}")
    own = ("image_folder", "fashion_mnist")
    if FLAGS["train_subset"].present and FLAGS.dataset not in own:
        raise FlagError(f"--train_subset applies to --dataset=image_folder or fashion_mnist, "
                        f"not {FLAGS.dataset}")
    if FLAGS["augment"].present and FLAGS.augment != "auto" and FLAGS.dataset not in own:
        raise FlagError(f"--augment applies to --dataset=image_folder or fashion_mnist, not "
                        f"{FLAGS.dataset}")
    if FLAGS.image_size is not None:
        if FLAGS.dataset != "image_folder":
            raise FlagError("--image_size applies to --dataset=image_folder only")
        try:
            size = [int(v) for v in FLAGS.image_size]
        except ValueError:
            size = []
        if len(size) != 2 or min(size) < 1:
            raise FlagError(f"--image_size={','.join(FLAGS.image_size)}: give two positive "
                            "integers H,W")
    if FLAGS.train_subset is not None and FLAGS.train_subset < 1:
        raise FlagError(f"--train_subset must be >= 1, got {FLAGS.train_subset}")
    if FLAGS["width_multiplier"].present and FLAGS.model not in WIDTH_MODELS:
        raise FlagError(f"--width_multiplier applies to --model=resnet20, mobilenet or "
                        f"mobilenet_v2, not {FLAGS.model}")
    if FLAGS.prunable not in PRUNABLE:
        raise FlagError(f"unknown --prunable={FLAGS.prunable!r}; use one of "
                        f"{', '.join(PRUNABLE)}")
    if FLAGS.width_multiplier <= 0:
        raise FlagError(f"--width_multiplier must be > 0, got {FLAGS.width_multiplier}")


def check_updater_flags():
    """Validates --updater, --density and --prune_mode (and their combinations)."""
    if FLAGS.updater not in UPDATERS:
        raise FlagError(f"unknown --updater={FLAGS.updater!r}; use one of {', '.join(UPDATERS)}")
    if FLAGS.density not in DENSITIES:
        raise FlagError(f"unknown --density={FLAGS.density!r}; use one of "
                        f"{', '.join(DENSITIES)}")
    if FLAGS.prune_mode not in PRUNE_MODES:
        raise FlagError(f"unknown --prune_mode={FLAGS.prune_mode!r}; use one of "
                        f"{', '.join(PRUNE_MODES)}")
    if FLAGS.mode == "dense" and FLAGS["updater"].present:
        raise FlagError("--mode=dense trains the plain model (no masks): leave out --updater")
    own_masks = FLAGS.updater in ("rigl", "set", "static")
    if FLAGS["density"].present and not own_masks:
        raise FlagError(f"--density applies to --updater=rigl, set or static, not "
                        f"{FLAGS.updater} (it starts dense, or from uniform random masks at "
                        "--initial_sparsity)")
    if FLAGS.prune_mode == "subset" and FLAGS.updater not in ("granet", "nested"):
        raise FlagError(f"--prune_mode=subset is --updater=nested; it does not combine with "
                        f"--updater={FLAGS.updater}")
    if FLAGS.updater == "nested" and FLAGS["prune_mode"].present and \
            FLAGS.prune_mode != "subset":
        raise FlagError(f"--updater=nested nests the masks: --prune_mode={FLAGS.prune_mode} "
                        "contradicts it (leave --prune_mode out)")
    if own_masks and FLAGS.initial_sparsity != 0.0:
        raise FlagError(f"--updater={FLAGS.updater} starts at the target sparsities: leave out "
                        f"--initial_sparsity={FLAGS.initial_sparsity}")
    if FLAGS.preset not in PRESETS:
        raise FlagError(f"unknown --preset={FLAGS.preset!r}; use one of "
                        f"{', '.join(PRESETS)}")
    if FLAGS.preset != "default" and FLAGS.updater not in ("granet", "nested"):
        raise FlagError(f"--preset={FLAGS.preset} sets GraNet's options; it does not apply to "
                        f"--updater={FLAGS.updater}")
    if FLAGS.nm is not None and FLAGS.updater not in ("granet",):
        raise FlagError(f"--nm sub-nets need --updater=granet, got --updater={FLAGS.updater}")


def check_nm_flags():
    """Validates --nm / --nm_counts; returns the patterns (keras_ast.NMPattern)."""
    from keras_ast.nm import parse_nm_list

    if FLAGS.nm is None:
        raise FlagError(f"--nm_counts={FLAGS.nm_counts} is given without --nm")
    text = ",".join(FLAGS.nm)
    if FLAGS.nm_counts is None:
        raise FlagError(f"--nm={text} needs --nm_counts=zeros (N zeros in every group of M, the "
                        "paper's notation) or --nm_counts=nonzeros (N non-zeros, NVIDIA's)")
    if FLAGS.nm_counts not in NM_COUNTS:
        raise FlagError(f"unknown --nm_counts={FLAGS.nm_counts!r}; use zeros or nonzeros")
    if FLAGS["sparsities"].present:
        raise FlagError(f"--nm={text} sets the sub-nets' sparsities (N/M); leave out "
                        f"--sparsities={','.join(FLAGS.sparsities)}")
    try:
        patterns = parse_nm_list(FLAGS.nm, counts=FLAGS.nm_counts)
    except ValueError as error:
        raise FlagError(f"--nm={text} --nm_counts={FLAGS.nm_counts}: {error}") from None
    if FLAGS.initial_sparsity != 0.0:
        raise FlagError(f"--nm sub-nets start dense: --initial_sparsity must be 0, got "
                        f"{FLAGS.initial_sparsity}")
    if FLAGS.prune_mode != "nondisjoint":
        raise FlagError(f"--nm supports --prune_mode=nondisjoint only, got {FLAGS.prune_mode}")
    return patterns


def check_distribution_flags():
    """Validates the distribution and checkpoint flags; raises FlagError."""
    from keras_ast import checkpoint
    from launch.runner import backup_root

    if FLAGS.distribution not in DISTRIBUTIONS:
        raise FlagError(f"unknown --distribution={FLAGS.distribution!r}; use one of "
                        f"{', '.join(DISTRIBUTIONS)}")
    if FLAGS.distribution != "none" and FLAGS.jit_compile:
        raise FlagError(f"--jit_compile does not work with --distribution={FLAGS.distribution} "
                        "(Keras 3 cannot XLA-compile a step over mirrored variables); drop one")
    if FLAGS.distribution == "multi_worker" and not os.environ.get("TF_CONFIG"):
        raise FlagError("--distribution=multi_worker needs the TF_CONFIG environment variable "
                        "(cluster and task of this worker; see docs/distributed.md)")
    for name in ("checkpoint_every", "keep_checkpoints"):
        value = getattr(FLAGS, name)
        if value is not None and value < 1:
            raise FlagError(f"--{name} must be >= 1, got {value}")
    backup_dir = backup_root(FLAGS)
    if not FLAGS.resume and os.path.isdir(backup_dir) and any(
            checkpoint.BackupAndRestore(d).checkpoints()
            for d in [backup_dir] + [os.path.join(backup_dir, n) for n in os.listdir(backup_dir)]):
        raise FlagError(f"{backup_dir} holds checkpoints of an unfinished run: pass --resume to "
                        "continue it, or delete the directory to start over")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TensorFlow's SavedModel INFO lines
    from keras_ast.callbacks import ScheduleError
    from keras_ast.checkpoint import CheckpointError
    from keras_ast.data.fashion_mnist import IdxFormatError
    from keras_ast.data.image_folder import ImageFolderError

    try:
        sparsities = check_flags()
        from launch import runner

        summary = runner.run(FLAGS, sparsities)
    except (FlagError, FileNotFoundError, CheckpointError, ImageFolderError,
            IdxFormatError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except ScheduleError as error:  # raised by fit before the first step
        print(f"error: the pruning schedule does not fit this run ({error}); in flags: "
              "--update_frequency and --adjustment_period are in steps, end_step is "
              "--prune_end_epoch (default 68.75% of --epochs)", file=sys.stderr)
        sys.exit(2)
    if summary is not None:  # None on the workers other than the chief
        print(runner.format_table(summary))
        print(f"wrote {os.path.join(FLAGS.output_dir, 'summary.json')}")
        for run_dir in summary["run_dirs"]:
            print(f"report: python -m launch.report --run_dir={run_dir}")
        if FLAGS.tensorboard:
            print(f"TensorBoard: tensorboard --logdir={FLAGS.output_dir}")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
