"""Fault tolerance: atomic, validated checkpoints of the whole training state, exact resume.

A checkpoint of step N (the number of training steps done) is three files in the backup
directory:

- ``ckpt-<N>.weights.h5``: ``model.save_weights``, i.e. every model variable (shared kernels,
  all K masks of every sparse layer, all K BatchNorm copies with their moving statistics, the
  iteration counter, which fixes the active sub-net and every schedule, the gradient-correction
  references, the training-FLOPs counters) and every optimizer variable (its step count, which
  drives the learning-rate schedule, and the momentum slots);
- ``ckpt-<N>.rng.npz``: the Keras seed-generator states (dropout and other in-model random
  ops), which ``save_weights`` leaves out;
- ``ckpt-<N>.state.npz`` (only with callbacks that hold state of their own, such as
  `keras_ast.SupTickets`' superposed models): their arrays;
- ``ckpt-<N>.json``: the manifest, written last: step, epoch and batch, steps per epoch, a
  fingerprint of the variables (paths, shapes, dtypes), and the size and SHA-256 of the files.

`PruneRegrow` and the learning-rate schedules hold no state beyond their configuration and
those counters, and the data order is a function of (seed, epoch) (`keras_ast.data.stream`),
so a resumed run continues exactly where the checkpoint was taken.

Atomicity: each file is written under a temporary name in the same directory, flushed to disk
and renamed (``os.replace``) into place; the manifest is renamed last, so a kill at any point
leaves either a complete checkpoint or one without a manifest, which is ignored. The previous
checkpoints are deleted only after the new one is complete (`keep` are kept). On restore each
candidate, newest first, is checked (manifest readable, sizes and SHA-256 match, the weights
load); a bad one is reported with its file name and the previous one is used. If checkpoints
exist and none is usable, `CheckpointError` is raised: training never silently restarts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time

import keras
import numpy as np

from keras_ast import compat, distribute
from keras_ast.atomic import TEMPORARY_PREFIX, atomic_output, remove, write_json

LOGGER = logging.getLogger("keras_ast")
FORMAT = 1
_MANIFEST = re.compile(r"^ckpt-(\d{9})\.json$")


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit the model or the run."""


@dataclasses.dataclass(frozen=True)
class CheckpointFiles:
    """The files of the checkpoint of `step` in a backup directory."""

    directory: str
    step: int

    def path(self, suffix):
        return os.path.join(self.directory, f"ckpt-{self.step:09d}{suffix}")

    @property
    def manifest(self):
        return self.path(".json")

    @property
    def weights(self):
        return self.path(".weights.h5")

    @property
    def rng(self):
        return self.path(".rng.npz")

    @property
    def state(self):
        return self.path(".state.npz")


def _dotted(config, prefix=""):
    """(dotted key, value) pairs of a nested dict."""
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _digest(path):
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"name": os.path.basename(path), "size": os.path.getsize(path),
            "sha256": sha.hexdigest()}


# ---------------------------------------------------------------------------- model state
def training_step(model) -> int:
    """Training steps done: `ASTModel.iteration`, else the optimizer's iteration count."""
    counter = getattr(model, "iteration", None)
    if counter is None:
        counter = model.optimizer.iterations
    return int(np.asarray(counter))


def _rng_variables(model):
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def fingerprint(model) -> str:
    """SHA-256 of the (name, shape, dtype) of every model and optimizer variable, in order
    (names without the layer prefixes, which depend on how many models a process built)."""
    variables = list(model.variables) + list(model.optimizer.variables)
    text = json.dumps([(v.name, list(v.shape), str(v.dtype)) for v in variables])
    return hashlib.sha256(text.encode()).hexdigest()


class BackupAndRestore(keras.callbacks.Callback):
    """Saves the whole training state every `save_every` steps and at every epoch end;
    restores the newest good checkpoint before training continues.

    Use it through `resume_fit`, which also restores the data order (a killed run then
    continues bit for bit). Passed to a plain ``fit``, it restores in ``on_train_begin`` and
    starts at the checkpoint's epoch, which is only possible for a checkpoint taken at an
    epoch end (a mid-epoch one raises `CheckpointError`).

    Args:
      backup_dir: directory of the checkpoints (created when needed). Under multi-worker
        training every worker reads it, so it must be on storage all workers share.
      save_every: also save every this many steps (None: only at epoch ends).
      keep: how many complete checkpoints to keep (>= 1; 2 leaves one to fall back to).
      save_on_epoch_end: save at the end of every epoch.
      writer: whether this process writes (default: the chief worker; the others only read).
      verbose: 1 prints a line when restoring.
      config: the run's configuration (a JSON-serialisable dict: every setting that changes
        the trajectory: seed, schedule, learning rate, updater, gradient correction, ...),
        stored in every manifest; restoring a checkpoint written under another configuration
        raises `CheckpointError` naming the settings that differ.
      states: callbacks whose own state belongs in the checkpoint (`keras_ast.SupTickets`;
        `resume_fit` adds those among its callbacks). Each has a ``checkpoint_name``, a
        ``checkpoint_state()`` returning a dict of NumPy arrays and a
        ``restore_checkpoint_state(arrays, model)``.
    """

    def __init__(self, backup_dir, save_every=None, keep=2, save_on_epoch_end=True,
                 writer=None, verbose=1, config=None, states=()):
        super().__init__()
        if not backup_dir:
            raise ValueError("backup_dir must name a directory")
        if save_every is not None and not (isinstance(save_every, int) and save_every >= 1):
            raise ValueError(f"save_every must be an integer >= 1 or None, got {save_every!r}")
        if not (isinstance(keep, int) and keep >= 1):
            raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_every = save_every
        self.keep = keep
        self.save_on_epoch_end = save_on_epoch_end
        self.writer = writer
        self.verbose = verbose
        self.config = None if config is None else json.loads(json.dumps(config, sort_keys=True))
        self.states = list(states)
        self.steps_per_epoch = None
        self.restored_step = None  # set by restore()
        self._step = 0
        self._saved_step = None

    # ---------------------------------------------------------------------------- inventory
    def writes(self, model) -> bool:
        """Whether this process writes checkpoints of `model` (the chief, unless `writer`)."""
        if self.writer is not None:
            return bool(self.writer)
        return distribute.is_chief(model.distribute_strategy)

    def checkpoints(self) -> list[CheckpointFiles]:
        """The checkpoints that have a manifest, newest first (not yet validated)."""
        if not os.path.isdir(self.backup_dir):
            return []
        steps = [int(m.group(1)) for m in map(_MANIFEST.match, os.listdir(self.backup_dir))
                 if m]
        return [CheckpointFiles(self.backup_dir, s) for s in sorted(steps, reverse=True)]

    def _check(self, files: CheckpointFiles, model):
        """The manifest of `files` if its files are intact; raises ValueError (corrupt) or
        CheckpointError (intact but not for this model / run)."""
        try:
            with open(files.manifest) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as error:
            raise ValueError(f"unreadable manifest {files.manifest}: {error}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"{files.manifest} is not a keras_ast checkpoint manifest")
        stored_states = manifest.get("states", [])
        missing = [s.checkpoint_name for s in self.states
                   if s.checkpoint_name not in stored_states]
        if missing:
            raise CheckpointError(
                f"checkpoint {files.manifest} holds no state of {missing} (written by a run "
                "without those callbacks); resume with the original settings")
        paths = [("weights", files.weights), ("rng", files.rng)]
        if stored_states:
            paths.append(("state", files.state))
        for key, path in paths:
            expected = manifest.get("files", {}).get(key)
            if not os.path.isfile(path):
                raise ValueError(f"{path} is missing")
            actual = _digest(path)
            if expected is None or actual["size"] != expected["size"]:
                raise ValueError(f"{path} has {actual['size']} bytes, the manifest says "
                                 f"{None if expected is None else expected['size']} (truncated?)")
            if actual["sha256"] != expected["sha256"]:
                raise ValueError(f"{path} does not match its SHA-256 checksum (corrupted)")
        if manifest.get("fingerprint") != fingerprint(model):
            raise CheckpointError(
                f"checkpoint {files.manifest} was written by a different model or optimizer "
                "(its variables differ: other model, sparsities, gradient correction or "
                "optimizer); use the same configuration, or another backup directory")
        stored = manifest.get("config")
        if self.config is not None and stored is not None and stored != self.config:
            old, new = dict(_dotted(stored)), dict(_dotted(self.config))
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise CheckpointError(
                f"the checkpoints in {self.backup_dir} are from a run with other settings: "
                + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
                + "; resume with the original settings, or start over in a new backup directory")
        if (self.steps_per_epoch is not None and manifest.get("steps_per_epoch") is not None
                and manifest["steps_per_epoch"] != self.steps_per_epoch):
            raise CheckpointError(
                f"checkpoint {files.manifest} is from a run with {manifest['steps_per_epoch']} "
                f"steps per epoch, this one has {self.steps_per_epoch} (batch size or data "
                "set changed); resume with the original settings")
        return manifest

    # ------------------------------------------------------------------------------ restore
    def restore(self, model=None) -> int:
        """Loads the newest usable checkpoint into `model` (default: the callback's model)
        and returns its step; 0 (and the model untouched) when there is no checkpoint.

        Raises:
          CheckpointError: checkpoints exist but none is usable (each one's problem is in the
            message), or they do not fit this model or run.
        """
        model = model or self.model
        if model.optimizer is not None and not model.optimizer.built:
            with model.distribute_strategy.scope():  # slots mirrored like their variables
                model.optimizer.build(model.trainable_variables)
        candidates = self.checkpoints()
        problems = []
        for files in candidates:
            try:
                manifest = self._check(files, model)
                model.load_weights(files.weights)
                with np.load(files.rng) as rng:
                    for i, variable in enumerate(_rng_variables(model)):
                        variable.assign(rng[str(i)])
                if self.states:
                    with np.load(files.state) as stored:
                        arrays = {key: stored[key] for key in stored.files}
                    for owner in self.states:
                        prefix = owner.checkpoint_name + "/"
                        owner.restore_checkpoint_state(
                            {k[len(prefix):]: v for k, v in arrays.items()
                             if k.startswith(prefix)}, model)
            except CheckpointError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure to read means "bad file"
                problems.append(str(error))
                LOGGER.warning("keras_ast: skipping unusable checkpoint %s: %s", files.manifest,
                               error)
                continue
            step = training_step(model)
            if step != manifest["step"]:
                raise CheckpointError(f"{files.weights} holds step {step}, its manifest says "
                                      f"{manifest['step']}")
            if problems:
                LOGGER.warning("keras_ast: fell back to checkpoint %s (step %d)",
                               files.manifest, step)
            if self.verbose:
                print(f"Restored step {step} (epoch {manifest['epoch'] + 1}, batch "
                      f"{manifest['batch']}) from {files.weights}")
            self.restored_step = step
            return step
        if candidates:
            raise CheckpointError(
                f"none of the {len(candidates)} checkpoints in {self.backup_dir} is usable: "
                + "; ".join(problems))
        self.restored_step = training_step(model)
        return self.restored_step

    # --------------------------------------------------------------------------------- save
    def save(self, model=None):
        """Writes the checkpoint of the current step (atomically; see the module docstring)
        and deletes the oldest beyond `keep`. Returns its files, or None on a non-writer."""
        model = model or self.model
        if not self.writes(model):
            return None
        step = training_step(model)
        files = CheckpointFiles(self.backup_dir, step)
        os.makedirs(self.backup_dir, exist_ok=True)
        self._remove_temporaries()
        remove(files.manifest)  # never a manifest beside a file being replaced
        with atomic_output(files.weights) as tmp:
            model.save_weights(tmp)
        with atomic_output(files.rng) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{str(i): np.asarray(v)
                               for i, v in enumerate(_rng_variables(model))})
        if self.states:
            arrays = {f"{owner.checkpoint_name}/{key}": np.asarray(value)
                      for owner in self.states
                      for key, value in owner.checkpoint_state().items()}
            with atomic_output(files.state) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
        epoch, batch = divmod(step, self.steps_per_epoch) if self.steps_per_epoch else (None,
                                                                                        None)
        digests = {"weights": _digest(files.weights), "rng": _digest(files.rng)}
        if self.states:
            digests["state"] = _digest(files.state)
        write_json(files.manifest, {
            "format": FORMAT,
            "step": step,
            "epoch": epoch,
            "batch": batch,
            "steps_per_epoch": self.steps_per_epoch,
            "fingerprint": fingerprint(model),
            "config": self.config,
            "files": digests,
            "states": [owner.checkpoint_name for owner in self.states],
            "time": time.time(),
        })
        for old in self.checkpoints()[self.keep:]:
            for path in (old.manifest, old.weights, old.rng, old.state):
                remove(path)
        self._saved_step = step
        return files

    def _remove_temporaries(self):
        for name in os.listdir(self.backup_dir):
            if name.startswith(TEMPORARY_PREFIX):
                remove(os.path.join(self.backup_dir, name))

    # ------------------------------------------------------------------------ keras hooks
    def on_train_begin(self, logs=None):
        if self.steps_per_epoch is None:
            self.steps_per_epoch = self.params.get("steps")
        if self.restored_step is None:  # plain fit(): restore here, epoch ends only
            step = self.restore()
            if step:
                epoch, batch = divmod(step, self.steps_per_epoch or 1)
                if batch:
                    raise CheckpointError(
                        f"the newest checkpoint in {self.backup_dir} is from the middle of an "
                        f"epoch (step {step}); continue it with keras_ast.checkpoint.resume_fit, "
                        "which also restores the data order")
                compat.set_initial_epoch(self.model, epoch)
        self._step = training_step(self.model)
        self._epoch_start = self._step

    def on_train_batch_end(self, batch, logs=None):
        previous, self._step = self._step, self._epoch_start + batch + 1
        # (with steps_per_execution > 1 a multiple of save_every can fall inside one call)
        if self.save_every and self._step // self.save_every > previous // self.save_every:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self._epoch_start = self._step
        if self.save_on_epoch_end and self._saved_step != self._step:
            self.save()

    def on_train_end(self, logs=None):
        compat.set_initial_epoch(self.model, None)


class _StopAfterEpoch(keras.callbacks.Callback):
    """Ends ``fit`` after its first epoch (the rest of an interrupted one)."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def resume_fit(model, source, epochs, backup, callbacks=(), strategy=None, **fit_kwargs):
    """``fit`` for `epochs` epochs over `source` (a `keras_ast.data.EpochSource`) that
    continues, exactly, whatever run last wrote to `backup`.

    Restores the newest usable checkpoint (nothing on a first run), trains the rest of its
    epoch on the batches the interrupted run had not reached (a separate ``fit`` call), then
    the remaining epochs. Every step sees the batch and state an uninterrupted run would.
    The updater of a `PruneRegrow` among `callbacks`, or the model's own, gets ``total_steps =
    epochs * source.steps_per_epoch`` if it has none.

    Returns:
      (step the run started from, list of the ``History`` objects).
    """
    from keras_ast.callbacks import PruneRegrow

    strategy = strategy or model.distribute_strategy
    steps = source.steps_per_epoch
    backup.steps_per_epoch = steps
    for owner in callbacks:  # callbacks with state of their own: in the checkpoints too
        if hasattr(owner, "checkpoint_state") and owner not in backup.states:
            backup.states.append(owner)
    start = backup.restore(model)
    total = epochs * steps
    updaters = [c.updater for c in callbacks if isinstance(c, PruneRegrow)]
    if getattr(model, "owns_updater", False):  # an ASTModel (a dense run has none)
        updaters.append(model.updater)
    for updater in updaters:  # the whole run's length, also for the partial first fit
        if updater.total_steps is None:
            updater.total_steps = total
    fit_kwargs.setdefault("shuffle", False)  # the order is the source's
    histories = []
    epoch, done = divmod(start, steps)
    # Callbacks with state of their own first: what they change at a step's end is in a
    # checkpoint written at that step.
    callbacks = ([c for c in callbacks if c in backup.states] + [backup]
                 + [c for c in callbacks if c not in backup.states])
    try:
        if done and epoch < epochs:  # the rest of the interrupted epoch, shown as that epoch
            histories.append(model.fit(
                source.distribute(strategy, epoch, epoch + 1, done), initial_epoch=epoch,
                epochs=epochs, steps_per_epoch=steps - done,
                callbacks=[*callbacks, _StopAfterEpoch()], **fit_kwargs))
            epoch += 1
        if epoch < epochs:
            histories.append(model.fit(
                source.distribute(strategy, epoch, epochs), initial_epoch=epoch, epochs=epochs,
                steps_per_epoch=steps, callbacks=callbacks, **fit_kwargs))
    finally:
        backup.restored_step = None
    return start, histories
