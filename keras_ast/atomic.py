"""Atomic, durable file writes: a reader never sees a partly written file or directory.

`atomic_output` yields a temporary name beside the target (same directory, so the same file
system), and on success flushes what was written to disk (``fsync``), renames it into place with
``os.replace`` and flushes the directory entry; on error the temporary is removed. A kill at any
point leaves the old file (or none), never a partial one. Used for checkpoints
(`keras_ast.checkpoint`), run records (`keras_ast.monitor`), SavedModel exports
(`keras_ast.export`) and the launcher's outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

TEMPORARY_PREFIX = ".tmp-"  # names of temporaries: a directory's leftovers can be removed


def fsync_directory(directory):
    """Flushes a directory entry (a rename) to disk; a no-op where directories cannot be
    opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def temporary_name(path):
    """A temporary name for `path` in the same directory (same file system, so the final
    ``os.replace`` is atomic), keeping its extensions (Keras checks them)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f"{TEMPORARY_PREFIX}{os.getpid()}-{name}")


@contextlib.contextmanager
def atomic_output(path):
    """Yields a temporary path to write a file or directory to; on success it is flushed and
    renamed to `path` (replacing an existing one), on error removed. Readers never see a
    partial `path`."""
    tmp = temporary_name(path)
    remove(tmp)
    try:
        yield tmp
        if os.path.isdir(tmp):
            for root, _, names in os.walk(tmp):
                for name in names:
                    _fsync_file(os.path.join(root, name))
            old = None
            if os.path.exists(path):  # a directory cannot replace a non-empty one
                old = temporary_name(path + ".old")
                os.replace(path, old)
            os.replace(tmp, path)
            remove(old)
        else:
            _fsync_file(tmp)
            os.replace(tmp, path)
        fsync_directory(os.path.dirname(path) or ".")
    finally:
        remove(tmp)


def remove(path):
    """Deletes a file, link or directory tree; nothing if `path` is None or missing."""
    if path and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif path and os.path.lexists(path):
        os.remove(path)


def write_json(path, value):
    """Writes `value` as JSON to `path` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(value, f, indent=2)
