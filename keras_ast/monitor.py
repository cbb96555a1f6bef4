"""Watching the K sub-nets while they train: `SubnetValidation` and `RunRecorder` callbacks.

- `SubnetValidation` evaluates every sub-net on held-out data every few epochs and adds
  ``val_<metric>_<k>`` to the epoch logs (Keras' own ``validation_data`` evaluates only the
  selected sub-net).
- `RunRecorder` writes, as training goes, everything `keras_ast.report` needs into a run
  directory (no second pass over data): ``run.json`` (the model's layout and cost figures),
  ``metrics.jsonl`` (one JSON line per epoch) and ``masks.npz`` (the current masks); and, given
  a ``log_dir``, the scalars that do not belong in the epoch logs (per-layer sparsity, gradient
  correction per pair of sub-nets, training FLOPs) as TensorBoard summaries in
  ``<log_dir>/ast``.

Put them before ``keras.callbacks.TensorBoard`` in the callback list (and after `PruneRegrow`),
so that the values they add to the logs are in the logs TensorBoard writes.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from keras_ast import atomic, cost

RUN_INFO = "run.json"
HISTORY = "metrics.jsonl"
MASKS = "masks.npz"
SUMMARY_RUN = "ast"  # TensorBoard run (sub-directory of log_dir) of RunRecorder's scalars
FORMAT_VERSION = 1


def _check_model(callback, model):
    from keras_ast.model import ASTModel

    if not isinstance(model, ASTModel):
        raise TypeError(
            f"{type(callback).__name__} needs a keras_ast.ASTModel, got {type(model).__name__}"
        )


def mask_key(subnet, layer):
    """Name of sub-net `subnet`'s mask of `layer` in ``masks.npz``."""
    return f"subnet_{subnet}/{layer}"


class SubnetValidation(keras.callbacks.Callback):
    """Evaluates every sub-net on `validation_data` every `frequency` epochs and after the last.

    Adds ``val_<metric>_<k>`` (e.g. ``val_loss_0``, ``val_accuracy_0``) to the epoch logs, so
    ``History``, the progress bar and a later ``keras.callbacks.TensorBoard`` (which writes them
    to its ``validation`` run as ``epoch_<metric>_<k>``) see them.

    Args:
      validation_data: a ``tf.data.Dataset`` (or anything ``evaluate`` takes as ``x``) or an
        ``(x, y)`` / ``(x, y, sample_weight)`` tuple of arrays.
      frequency: evaluate after every `frequency`-th epoch (and after the last epoch).
      batch_size: batch size for array data (default: Keras' 32).
    """

    def __init__(self, validation_data, frequency=1, batch_size=None):
        super().__init__()
        if not (isinstance(frequency, int) and frequency >= 1):
            raise ValueError(f"frequency must be an integer >= 1, got {frequency!r}")
        self.validation_data = validation_data
        self.frequency = frequency
        self.batch_size = batch_size

    def set_model(self, model):
        _check_model(self, model)
        super().set_model(model)

    def on_epoch_end(self, epoch, logs=None):
        last = self.params.get("epochs") == epoch + 1
        if (epoch + 1) % self.frequency and not last:
            return
        data = self.validation_data
        if isinstance(data, tuple):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            results = self.model.evaluate_subnets(x, y, sample_weight=sample_weight,
                                                  batch_size=self.batch_size)
        else:
            results = self.model.evaluate_subnets(data)
        if logs is not None:
            for k, metrics in results.items():
                logs.update({f"val_{name}_{k}": float(v) for name, v in metrics.items()})


def layer_sparsity(masks):
    """{layer: fraction of zeros} of one sub-net's ``{layer: 0/1 mask}``."""
    return {name: 1.0 - float(m.mean()) for name, m in masks.items()}


class RunRecorder(keras.callbacks.Callback):
    """Records a run for `keras_ast.report` (and TensorBoard) while it trains.

    Files in `run_dir`:
      ``run.json``: the sub-nets (target sparsities, training mode, gradient correction), the
        prunable layers (name, shape, size, MACs per example) and the FLOPs of one dense
        training example; written when training begins.
      ``metrics.jsonl``: one line per epoch: ``epoch`` (1-based), ``iteration``, ``logs`` (the
        epoch logs: everything Keras and the callbacks before this one put there),
        ``layer_sparsity`` (per sub-net, per layer, from the masks), ``gc`` (this epoch's
        gradient-correction counts of each sub-net i >= 1, see
        `ASTModel.gradient_statistics`), ``train_flops`` and ``train_examples`` (per sub-net,
        since training began). Appended and flushed line by line; a run starting at iteration 0
        starts a new file, a resumed one appends.
      ``masks.npz``: every sub-net's 0/1 mask of every prunable layer (``subnet_<k>/<layer>``,
        bool), rewritten (temporary file + rename) at every epoch end.

    Args:
      run_dir: where the files go (created if missing).
      log_dir: if given, also writes per epoch (step = 0-based epoch, like
        ``keras.callbacks.TensorBoard``) to the TensorBoard run ``<log_dir>/ast``:
        ``epoch_sparsity_<k>/<layer>``, ``epoch_gc_negative_<i>``, ``epoch_gc_positive_<i>``,
        ``epoch_gc_cosine_<i>``, ``epoch_gc_corrected_<i>``, ``epoch_gc_corrected``,
        ``epoch_train_flops_<k>`` and ``epoch_train_flops_dense`` (docs/monitoring.md).
    """

    def __init__(self, run_dir, log_dir=None):
        super().__init__()
        self.run_dir = str(run_dir)
        self.log_dir = None if log_dir is None else str(log_dir)
        self._writer = None
        self._previous_gc = None

    def set_model(self, model):
        _check_model(self, model)
        super().set_model(model)

    def _path(self, name):
        return os.path.join(self.run_dir, name)

    def on_train_begin(self, logs=None):
        model = self.model
        os.makedirs(self.run_dir, exist_ok=True)
        flops = model.training_flops
        info = {
            "format": FORMAT_VERSION,
            "num_subnets": model.num_subnets,
            "sparsities": list(model.sparsities),
            "training": model.training_mode,
            "gc": model.gc,
            "gc_reference": model.gc_reference,
            "layers": [
                {"name": layer.name, "shape": list(layer.shared_kernel.shape),
                 "size": int(np.prod(layer.shared_kernel.shape)),
                 "macs": int(cost.layer_macs(layer))}
                for layer in model.sparse_layers
            ],
            "dense_example_flops": flops["dense_example"],
            "epochs": self.params.get("epochs"),
            "steps_per_epoch": self.params.get("steps"),
            "log_dir": self.log_dir,
        }
        atomic.write_json(self._path(RUN_INFO), info)
        if int(model.iteration.numpy()) == 0:
            open(self._path(HISTORY), "w").close()  # a new run: a new history
        self._previous_gc = model.gradient_statistics()
        if self.log_dir is not None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, SUMMARY_RUN))

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        masks = [model.masks(k) for k in range(model.num_subnets)]
        totals = model.gradient_statistics()
        gc = {str(i): {c: totals[i][c] - self._previous_gc[i][c] for c in totals[i]}
              for i in totals}
        self._previous_gc = totals
        record = {
            "epoch": epoch + 1,
            "iteration": int(model.iteration.numpy()),
            "logs": {name: float(v) for name, v in (logs or {}).items()
                     if np.ndim(v) == 0},
            "layer_sparsity": [layer_sparsity(m) for m in masks],
            "gc": gc,
            "train_flops": [model.training_flops[k] for k in range(model.num_subnets)],
            "train_examples": model.training_examples,
        }
        with open(self._path(HISTORY), "a") as f:
            f.write(json.dumps(record) + "\n")
        arrays = {mask_key(k, name): m.astype(bool) for k, subnet in enumerate(masks)
                  for name, m in subnet.items()}
        with atomic.atomic_output(self._path(MASKS)) as tmp:
            with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
                np.savez_compressed(f, **arrays)
        if self._writer is not None:
            self._write_summaries(epoch, record, model)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_summaries(self, epoch, record, model):
        import tensorflow as tf

        scalars = {}
        for k, layers in enumerate(record["layer_sparsity"]):
            scalars.update({f"sparsity_{k}/{name}": v for name, v in layers.items()})
        steps = corrected = 0.0
        for i, counts in record["gc"].items():
            steps += counts["steps"]
            corrected += counts["corrected_steps"]
            if counts["steps"] > 0:
                scalars.update(gc_fractions(counts, suffix=f"_{i}"))
        if steps > 0:
            scalars["gc_corrected"] = corrected / steps
        for k, flops in enumerate(record["train_flops"]):
            scalars[f"train_flops_{k}"] = flops
        scalars["train_flops_dense"] = (sum(record["train_examples"])
                                        * model.training_flops["dense_example"])
        with self._writer.as_default():
            for name, value in scalars.items():
                tf.summary.scalar(f"epoch_{name}", value, step=epoch)
        self._writer.flush()


def gc_fractions(counts, suffix=""):
    """``gc_negative``, ``gc_positive`` (shares of the inner products g.h that were < 0 / > 0),
    ``gc_cosine`` (mean over steps) and ``gc_corrected`` (share of steps whose gradient was
    changed) from summed `ASTModel.gradient_statistics` counts (needs steps > 0)."""
    products = max(counts["products"], 1.0)
    return {
        f"gc_negative{suffix}": counts["negative"] / products,
        f"gc_positive{suffix}": counts["positive"] / products,
        f"gc_cosine{suffix}": counts["cosine_sum"] / counts["steps"],
        f"gc_corrected{suffix}": counts["corrected_steps"] / counts["steps"],
    }
