"""Sup-tickets: superpose the tickets of a cheap cyclic phase into one sparse model per sub-net.

"Superposing Many Tickets into One: A Performance Booster for Sparse Neural Network Training"
(Yin et al., UAI 2022; code github.com/luuyin/Sup-tickets, CIFAR script ``main_suptickets.py``,
which this follows). A run of E epochs is split (`budget_split`) into a first phase of
``E_pre`` epochs of ordinary sparse training and M cycles of C epochs at the end. During the
cycles:

1. the mask updates of the run's updater are paused (`MaskUpdater.stop_step`);
2. each cycle starts with a re-exploration of every sub-net's mask, layer by layer: the
   ``floor(rate * active)`` smallest-|w| entries are removed and as many inactive entries with
   the largest dense gradient on one training batch are regrown (`masks.death_regrow`);
3. the learning rate follows a triangle per cycle, lr_1 -> lr_2 -> lr_1 (`SupTicketsSchedule`);
4. at the end of cycle c, each sub-net's ticket (its plain model: ``W * m_k``, its BatchNorm
   copy) is averaged into that sub-net's superposed model S_k: CAA, the running equal-weight
   mean ``S <- (1 - 1/(n+1)) S + 1/(n+1) ticket`` (n models averaged so far; with the end of the
   first phase as ticket 0, S_M is the mean of the M + 1 models), or CIMA, the exponential
   average ``S <- beta ticket + (1 - beta) S``. Every variable is averaged (kernels with their
   zeros, so the mask of S is the union of the tickets' masks; biases; BN gamma, beta and
   moving statistics);
5. S_k is pruned back to sub-net k's budget by one global magnitude ranking over its sparse
   kernels (`masks.global_magnitude_prune`: round(d_k N) entries, ties broken by position;
   the code keeps floor(d_k N) plus ties), inside the union;
6. S_k's BatchNorm statistics are recomputed over the training data (`recalibrate_batchnorm`).

The training model is never replaced: the next cycle trains on from the un-averaged weights and
masks (the code's CIFAR semantics). Since K sub-nets share one weight tensor, the superposed
models cannot be written back into it: Sup-tickets yields K separate plain Keras models, one
per sub-net, exportable like a sub-net (`SupTickets.superposed`, `SupTickets.export`).

Choices where the code differs from what keras_ast can do or should copy:
- re-exploration removes floor(rate * active) entries (the code: ceil);
- regrown entries keep the shared weight's value when another sub-net uses the entry (the code
  sets them to 0, which would change that sub-net); ``zero_regrown=True`` zeroes the others;
- the budget is round(d N) entries exactly (the code: floor(d N), ties kept);
- BN variances are Keras's (1/n) where torch's ``update_bn`` averages unbiased ones;
- layers keep at least ``min_layer_density`` of their weights under the global ranking (as
  GraNet here; 0 turns it off, as in the code).
"""

from __future__ import annotations

import json
import math
import os

import keras
import numpy as np
from keras import ops

from keras_ast import compat, masks as masks_lib, step as step_lib, tf_engine
from keras_ast.batchnorm import recalibrate_batchnorm
from keras_ast.export import subnet_model

SUPERPOSE = ("caa", "cima")


def budget_split(epochs: int, cycle_rate: float, cycle_epochs: int):
    """(first-phase epochs, cyclic epochs, number of cycles M) of a run of `epochs` epochs.

    ``cyc = epochs * cycle_rate`` rounded down to a multiple of `cycle_epochs`; no cycles (M = 0,
    a plain run) when that is below one cycle. (250, 0.1, 8) -> (226, 24, 3).

    Raises:
      ValueError: a non-positive `epochs` or `cycle_epochs`, or a `cycle_rate` outside (0, 1)
        (below 1, the cycles always leave the first phase an epoch).
    """
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not (isinstance(cycle_epochs, int) and cycle_epochs >= 1):
        raise ValueError(f"cycle_epochs must be an integer >= 1, got {cycle_epochs!r}")
    if not 0.0 < cycle_rate < 1.0:
        raise ValueError(f"cycle_rate must be in (0, 1), got {cycle_rate!r}")
    cycles = math.floor(epochs * cycle_rate / cycle_epochs + 1e-9)
    cyclic = cycles * cycle_epochs
    return epochs - cyclic, cyclic, cycles


@keras.saving.register_keras_serializable(package="keras_ast")
class SupTicketsSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of a Sup-tickets run: `phase1` before `start_step`, then a triangle
    per cycle of `steps_per_cycle` steps, ``lr_1 + (lr_2 - lr_1) (1 - |2t - 1|)`` with t the
    position in the cycle in [0, 1): lr_1 at a cycle's start, lr_2 at its middle, back towards
    lr_1 at its end (continuous across cycles). The code's README values: lr_1 = 0.001,
    lr_2 = 0.005 on CIFAR.

    `from_budget` builds one from a run's epochs with `budget_split`; the `SupTickets` callback
    reads its timing from the schedule, so the two always agree.
    """

    def __init__(self, phase1, start_step, steps_per_cycle, num_cycles, lr_1=0.001,
                 lr_2=0.005):
        if isinstance(phase1, dict):
            phase1 = keras.optimizers.schedules.deserialize(phase1)
        if not (isinstance(start_step, int) and start_step >= 1):
            raise ValueError(f"start_step must be an integer >= 1, got {start_step!r}")
        if not (isinstance(steps_per_cycle, int) and steps_per_cycle >= 1):
            raise ValueError(f"steps_per_cycle must be an integer >= 1, got {steps_per_cycle!r}")
        if not (isinstance(num_cycles, int) and num_cycles >= 1):
            raise ValueError(f"num_cycles must be an integer >= 1, got {num_cycles!r}")
        if not (lr_1 > 0 and lr_2 > 0):
            raise ValueError(f"lr_1 and lr_2 must be > 0, got {lr_1!r}, {lr_2!r}")
        self.phase1 = phase1
        self.start_step = start_step
        self.steps_per_cycle = steps_per_cycle
        self.num_cycles = num_cycles
        self.lr_1 = float(lr_1)
        self.lr_2 = float(lr_2)

    @classmethod
    def from_budget(cls, phase1, epochs, steps_per_epoch, cycle_epochs=8, cycle_rate=0.1,
                    lr_1=0.001, lr_2=0.005):
        """The schedule of a run of `epochs` epochs (`budget_split`); `phase1` should decay
        over the first-phase epochs, ``budget_split(...)[0]``. Raises ValueError if the budget
        gives no cycle."""
        pre, _, cycles = budget_split(epochs, cycle_rate, cycle_epochs)
        if cycles == 0:
            raise ValueError(f"{epochs} epochs at cycle_rate={cycle_rate} give no cycle of "
                             f"{cycle_epochs} epochs (need epochs * cycle_rate >= cycle_epochs)")
        return cls(phase1, pre * steps_per_epoch, cycle_epochs * steps_per_epoch, cycles,
                   lr_1, lr_2)

    @property
    def end_step(self):
        return self.start_step + self.num_cycles * self.steps_per_cycle

    def cycle_starts(self):
        return [self.start_step + c * self.steps_per_cycle for c in range(self.num_cycles)]

    def __call__(self, step):
        step = ops.cast(step, "float32")
        first = self.phase1(step) if callable(self.phase1) else self.phase1
        t = ops.mod(step - self.start_step, float(self.steps_per_cycle)) / self.steps_per_cycle
        cyclic = self.lr_1 + (self.lr_2 - self.lr_1) * (1.0 - ops.abs(2.0 * t - 1.0))
        return ops.where(step < self.start_step, ops.cast(first, "float32"), cyclic)

    def get_config(self):
        phase1 = self.phase1
        if isinstance(phase1, keras.optimizers.schedules.LearningRateSchedule):
            phase1 = keras.optimizers.schedules.serialize(phase1)
        return {"phase1": phase1, "start_step": self.start_step,
                "steps_per_cycle": self.steps_per_cycle, "num_cycles": self.num_cycles,
                "lr_1": self.lr_1, "lr_2": self.lr_2}


def superpose(accumulated, ticket, count, method="caa", cima_factor=0.5):
    """One superposition step on lists of arrays: CAA, the mean of the `count` models in
    `accumulated` and `ticket` (weight 1 / (count + 1)), or CIMA, ``beta ticket + (1 - beta)
    accumulated``. Zeros count: an entry of only one of two tickets gets half its value."""
    if method == "caa":
        f = 1.0 / (count + 1)
    elif method == "cima":
        f = float(cima_factor)
    else:
        raise ValueError(f"unknown superposition {method!r}; use one of {SUPERPOSE}")
    return [((1.0 - f) * np.asarray(a, np.float64) + f * np.asarray(t, np.float64))
            .astype(np.asarray(a).dtype) for a, t in zip(accumulated, ticket)]


def prune_to_budget(kernels, union, density, floors=None):
    """Masks keeping the round(density * N) largest |w| of `kernels` (N: their total size)
    inside `union`, by one global ranking (`masks.global_magnitude_prune`); numpy in and out."""
    kept = masks_lib.global_magnitude_prune(
        [ops.convert_to_tensor(np.asarray(k, np.float32)) for k in kernels],
        [ops.convert_to_tensor(np.asarray(u, np.float32)) for u in union], density, floors)
    return [ops.convert_to_numpy(m) > 0.5 for m in kept]


def _batches(data, epoch):
    return data(epoch) if callable(data) else data


class SupTickets(keras.callbacks.Callback):
    """Sup-tickets during ``fit``: pause mask updates in the cycles, re-explore at each cycle
    start, superpose each sub-net's tickets at each cycle end (module docstring).

    The optimizer's learning rate must be the `SupTicketsSchedule` given here (its timing is the
    callback's). Put it in ``fit``'s callbacks with `keras_ast.PruneRegrow` (or a model that owns
    an updater); through `keras_ast.resume_fit` its state (superposed models, masks, cycle
    results) is checkpointed with the model, so a killed run resumes exactly.

    Args:
      schedule: the run's `SupTicketsSchedule`.
      data: training batches, ``(x, y[, sample_weight])``, or a function epoch -> such
        batches: the first batch of the cycle's first epoch gives the re-exploration gradient,
        and BN recalibration passes over `bn_batches` of them.
      validation_data: batches to evaluate each ticket and superposed model on after every
        cycle (None: no evaluation).
      reexplore: fraction of each layer's active weights removed and regrown at a cycle start
        (0 turns re-exploration off).
      superpose: "caa" (the mean, default) or "cima" (exponential, `cima_factor`).
      include_pretrain_ticket: the model at the end of the first phase is ticket 0.
      prune_each_cycle: prune to the budget after every superposition (the code), or only
        after the last.
      zero_regrown: regrown entries start at 0 unless another sub-net's mask holds them.
      recalibrate: recompute the superposed models' BatchNorm statistics.
      bn_batches: batches of `data` for the recalibration (None: all of an epoch).
      min_layer_density: floor per layer of the global re-pruning (0: none).
      metrics: the metrics the superposed models are evaluated with (with the model's loss).
      verbose: 1 prints one line per sub-net and cycle.
    """

    checkpoint_name = "sup_tickets"

    def __init__(self, schedule, data, validation_data=None, reexplore=0.5, superpose="caa",
                 cima_factor=0.5, include_pretrain_ticket=True, prune_each_cycle=True,
                 zero_regrown=True, recalibrate=True, bn_batches=None, min_layer_density=0.005,
                 metrics=("accuracy",), verbose=1):
        super().__init__()
        if not isinstance(schedule, SupTicketsSchedule):
            raise TypeError(f"schedule must be a keras_ast.SupTicketsSchedule, got "
                            f"{type(schedule).__name__}")
        if superpose not in SUPERPOSE:
            raise ValueError(f"unknown superpose {superpose!r}; use one of {SUPERPOSE}")
        if not 0.0 <= reexplore < 1.0:
            raise ValueError(f"reexplore must be in [0, 1), got {reexplore!r}")
        if not 0.0 < cima_factor <= 1.0:
            raise ValueError(f"cima_factor must be in (0, 1], got {cima_factor!r}")
        if bn_batches is not None and bn_batches < 1:
            raise ValueError(f"bn_batches must be >= 1 or None, got {bn_batches!r}")
        if not 0.0 <= min_layer_density < 1.0:
            raise ValueError(f"min_layer_density must be in [0, 1), got {min_layer_density!r}")
        self.schedule = schedule
        self.data = data
        self.validation_data = validation_data
        self.reexplore = float(reexplore)
        self.superpose = superpose
        self.cima_factor = float(cima_factor)
        self.include_pretrain_ticket = include_pretrain_ticket
        self.prune_each_cycle = prune_each_cycle
        self.zero_regrown = zero_regrown
        self.recalibrate = recalibrate
        self.bn_batches = bn_batches
        self.min_layer_density = float(min_layer_density)
        self.metrics = list(metrics)
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self._weights = {}  # sub-net -> list of arrays (the superposed model's weights)
        self._masks = {}  # sub-net -> list of bool arrays (its sparse kernels' masks)
        self._count = {}  # sub-net -> models averaged so far
        self.results = []  # one dict per event (ticket 0, cycle ends, re-explorations)
        self._new_results = None  # a cycle's results, for the epoch logs

    # ------------------------------------------------------------------------- keras hooks
    def set_model(self, model):
        from keras_ast.model import ASTModel

        if not isinstance(model, ASTModel):
            raise TypeError(f"SupTickets needs a keras_ast.ASTModel, got {type(model).__name__}")
        if model.nm_patterns is not None:
            raise ValueError("Sup-tickets on N:M sub-nets is not supported: averaging tickets "
                             "breaks the N:M pattern")
        super().set_model(model)

    def set_params(self, params):
        super().set_params(params)
        model = self.model
        optimizer = tf_engine.inner_optimizer(model.optimizer)
        if compat.learning_rate_schedule(optimizer) is not self.schedule:
            raise ValueError(
                "SupTickets needs the optimizer's learning rate to be its SupTicketsSchedule "
                "(the cycles' timing and triangle): compile with "
                "optimizer=keras_ast.SGD(schedule, ...) and SupTickets(schedule, ...)")
        updater = model.updater
        # The run's length: the updater's when set (resume_fit sets it: a resumed partial
        # epoch's fit has fewer steps), else fit's.
        total = getattr(updater, "total_steps", None)
        if total is None and params.get("steps") and params.get("epochs"):
            total = int(params["steps"]) * int(params["epochs"])
        if total is not None and self.schedule.end_step > total:
            raise ValueError(
                f"the Sup-tickets cycles end at step {self.schedule.end_step}, after the run's "
                f"{total} steps; build the schedule for this run (SupTicketsSchedule.from_budget)")
        if updater is not None and updater.stop_step != self.schedule.start_step:
            updater.stop_step = self.schedule.start_step
            if updater.total_steps_planned is not None:  # already configured: again, paused
                updater.configure(updater.total_steps_planned)

    def on_epoch_begin(self, epoch, logs=None):
        step = int(self.model.iteration.numpy())
        self._epoch = epoch
        self._step = step
        if step == self.schedule.start_step and self.include_pretrain_ticket \
                and not self._weights:
            self._take_pretrain_tickets()
        if step in self.schedule.cycle_starts() and self.reexplore > 0.0:
            self._reexplore(epoch, self.schedule.cycle_starts().index(step) + 1)

    def on_train_batch_end(self, batch, logs=None):
        # The end of a cycle is the end of a step, before any epoch-end checkpoint is written.
        step = self._step + batch + 1
        ends = [s + self.schedule.steps_per_cycle for s in self.schedule.cycle_starts()]
        if step in ends and not any(r.get("cycle") == ends.index(step) + 1
                                    and r["event"] == "superposed" for r in self.results):
            self._superpose_all(ends.index(step) + 1)
            self._new_results = self.results[-1]

    def on_epoch_end(self, epoch, logs=None):
        """Adds the cycle's results to the epoch logs (so History, TensorBoard and the run
        records see them): ``ticket_<metric>_<k>``, ``superposed_<metric>_<k>`` and
        ``superposed_before_bn_<metric>_<k>``."""
        record, self._new_results = self._new_results, None
        if record is None or logs is None:
            return
        for k, entry in enumerate(record["subnets"]):
            for key in ("ticket", "superposed", "superposed_before_bn"):
                for name, value in (entry.get(key) or {}).items():
                    logs[f"{key}_{name}_{k}"] = value

    # ------------------------------------------------------------------------ the events
    def _plain(self, k):
        return subnet_model(self.model, k)

    def _kernel_indices(self, plain):
        """Positions of the sparse kernels in ``plain.weights``, in sparse-layer order."""
        position = {id(v): i for i, v in enumerate(plain.weights)}
        return [position[id(plain.get_layer(layer.name).kernel)]
                for layer in self.model.sparse_layers]

    def _take_pretrain_tickets(self):
        for k in range(self.model.num_subnets):
            plain = self._plain(k)
            self._weights[k] = [np.asarray(w) for w in plain.get_weights()]
            self._masks[k] = [np.asarray(m) > 0.5 for m in self.model.masks(k).values()]
            self._count[k] = 1
        self.results.append({"event": "ticket0", "step": self._step})

    def _reexplore(self, epoch, cycle):
        """Death of the smallest |w| and regrowth by the dense gradient, per layer and
        sub-net, at a cycle start; the re-exploration's forward and backward pass is counted
        in the model's training FLOPs."""
        model = self.model
        batch = next(iter(_batches(self.data, epoch)))
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        layers = model.sparse_layers
        changed = []
        for k in range(model.num_subnets):
            dense = tf_engine.stateless_dense_gradients(model, k, x, y, sample_weight)
            swapped = 0
            for layer, grad in zip(layers, dense):
                rows = np.asarray(layer.masks)
                old = rows[k]
                new = ops.convert_to_numpy(masks_lib.death_regrow(
                    ops.convert_to_tensor(layer.shared_kernel), ops.convert_to_tensor(old),
                    grad, self.reexplore))
                grown = (new > 0.5) & (old < 0.5)
                swapped += int(grown.sum())
                if self.zero_regrown:
                    others = np.delete(rows, k, axis=0).sum(axis=0) > 0.5  # other sub-nets
                    zero = grown & ~others
                    if zero.any():
                        kernel = np.asarray(layer.shared_kernel)
                        layer.shared_kernel.assign(np.where(zero, 0, kernel).astype(kernel.dtype))
                rows[k] = new.astype(rows.dtype)
                layer.masks.assign(rows)
            densities = [ops.cast(ops.mean(ops.take(layer.masks, k, axis=0)), "float64")
                         for layer in layers]
            flops = step_lib.step_flops(model._step_config(),
                                        ops.shape(keras.tree.flatten(x)[0])[0], densities,
                                        dense_backward=True)
            one_hot = ops.one_hot(k, model.num_subnets, dtype="float64")
            model.train_flops.assign_add(one_hot * ops.cast(flops, "float64"))
            changed.append(swapped)
        self.results.append({"event": "reexplored", "cycle": cycle, "step": self._step,
                             "regrown": changed})

    def _superpose_all(self, cycle):
        model = self.model
        step = self._step_now()
        record = {"event": "superposed", "cycle": cycle, "step": step, "subnets": []}
        for k in range(model.num_subnets):
            ticket = self._plain(k)
            entry = {"ticket": self._evaluate(ticket)}
            theta = [np.asarray(w) for w in ticket.get_weights()]
            mask = [np.asarray(m) > 0.5 for m in model.masks(k).values()]
            kernels = self._kernel_indices(ticket)
            if k not in self._weights:  # no ticket 0: the first ticket starts the average
                self._weights[k], self._masks[k], self._count[k] = theta, mask, 1
            else:
                self._weights[k] = superpose(self._weights[k], theta, self._count[k],
                                             self.superpose, self.cima_factor)
                self._masks[k] = [a | b for a, b in zip(self._masks[k], mask)]
                self._count[k] += 1
            if self.prune_each_cycle or cycle == self.schedule.num_cycles:
                self._prune(k, kernels)
            superposed = self.superposed(k)
            entry["density"] = float(sum(m.sum() for m in self._masks[k])
                                     / sum(m.size for m in self._masks[k]))
            if self.recalibrate:
                entry["superposed_before_bn"] = self._evaluate(superposed)
                recalibrate_batchnorm(superposed, _batches(self.data, self._epoch),
                                      batches=self.bn_batches)
                self._weights[k] = [np.asarray(w) for w in superposed.get_weights()]
            entry["superposed"] = self._evaluate(superposed)
            record["subnets"].append(entry)
            if self.verbose:
                print(self._line(cycle, k, entry))
        self.results.append(record)

    def _step_now(self):
        return int(self.model.iteration.numpy())

    def _prune(self, k, kernels):
        model = self.model
        floors = masks_lib.layer_floors(
            [int(np.prod(layer.shared_kernel.shape)) for layer in model.sparse_layers],
            self.min_layer_density)
        weights = self._weights[k]
        kept = prune_to_budget([weights[i] for i in kernels], self._masks[k],
                               1.0 - model.sparsities[k], floors)
        for i, m in zip(kernels, kept):
            weights[i] = np.where(m, weights[i], 0).astype(weights[i].dtype)
        self._masks[k] = kept

    def _evaluate(self, plain):
        if self.validation_data is None:
            return None
        plain.compile(loss=self.model.loss, metrics=self.metrics, jit_compile=False)
        values = plain.evaluate(self.validation_data, verbose=0, return_dict=True)
        return {name: float(v) for name, v in values.items()}

    @staticmethod
    def _line(cycle, k, entry):
        def acc(result):
            if not result or "accuracy" not in result:
                return "n/a"
            return f"{100 * result['accuracy']:.2f}%"

        text = (f"Sup-tickets cycle {cycle}: sub-net {k}: ticket {acc(entry['ticket'])}, "
                f"superposed {acc(entry['superposed'])}")
        if "superposed_before_bn" in entry:
            text += f" ({acc(entry['superposed_before_bn'])} before BN recalibration)"
        return text + f", density {100 * entry['density']:.2f}%"

    # ----------------------------------------------------------------------- the results
    def superposed(self, subnet):
        """Sub-net `subnet`'s superposed model as a plain Keras model (None before ticket 0)."""
        if subnet not in self._weights:
            return None
        plain = self._plain(subnet)
        plain.set_weights(self._weights[subnet])
        return plain

    def export(self, directory):
        """Writes each superposed model as a SavedModel ``directory/superposed_<k>`` (like
        `keras_ast.export.export_subnet`); returns the paths."""
        from keras_ast.atomic import atomic_output

        os.makedirs(directory, exist_ok=True)
        paths = []
        for k in sorted(self._weights):
            path = os.path.join(directory, f"superposed_{k}")
            with atomic_output(path) as tmp:
                self.superposed(k).export(tmp, verbose=False)
            paths.append(path)
        return paths

    def summary(self):
        """Per sub-net: the last cycle's ticket, superposed model before and after BN
        recalibration (metric dicts), and every event (JSON-friendly)."""
        ends = [r for r in self.results if r["event"] == "superposed"]
        last = ends[-1]["subnets"] if ends else []
        return {"cycles_done": len(ends), "num_cycles": self.schedule.num_cycles,
                "subnets": last, "events": self.results}

    # ------------------------------------------------------------------------ checkpoints
    def checkpoint_state(self):
        arrays = {"results": np.array(json.dumps(self.results))}
        for k, weights in self._weights.items():
            arrays[f"count_{k}"] = np.array(self._count[k])
            arrays.update({f"weight_{k}_{i}": w for i, w in enumerate(weights)})
            arrays.update({f"mask_{k}_{i}": m for i, m in enumerate(self._masks[k])})
        return arrays

    def restore_checkpoint_state(self, arrays, model):
        self._reset()
        if "results" in arrays:
            self.results = json.loads(str(arrays["results"]))
        for key in arrays:
            if key.startswith("count_"):
                k = int(key[len("count_"):])
                self._count[k] = int(arrays[key])
                self._weights[k] = [arrays[f"weight_{k}_{i}"] for i in range(
                    sum(1 for name in arrays if name.startswith(f"weight_{k}_")))]
                self._masks[k] = [arrays[f"mask_{k}_{i}"].astype(bool) for i in range(
                    sum(1 for name in arrays if name.startswith(f"mask_{k}_")))]
