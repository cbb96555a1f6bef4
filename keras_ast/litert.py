"""LiteRT (TFLite) files of sub-nets with sparse weight encoding, checked and measured.

`export_litert(model, k, path)` writes sub-net k as a ``.tflite`` file converted with the TF
converter's sparsity optimisation (``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``): every constant
convolution or fully-connected kernel with at least 30 % zeros (the converter's threshold, per
tensor) is stored in a compressed sparse row format (4 bytes per non-zero value plus a 1-2 byte
index), so a 90 % sparse sub-net's file is several times smaller than the dense one. What this
does NOT give on its own is speed: the runtime densifies those kernels once when the model is
loaded and runs dense kernels, except where XNNPACK's sparse inference applies (see
`keras_ast.xnnpack`; XNNPACK also turns it off on x86 CPUs with AVX). `latency` measures it.

Running a file needs the LiteRT interpreter (``pip install ai-edge-litert``, in keras_ast's
``deploy`` and ``test`` extras); conversion needs only TensorFlow.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from keras_ast.atomic import atomic_output

# The converter's per-tensor threshold for sparse encoding (dense_to_sparse.cc, kMinSparsityLevel).
MIN_ENCODED_SPARSITY = 0.3


def convert(saved_model_path: str, sparse: bool = True) -> bytes:
    """A SavedModel (e.g. `keras_ast.export.export_subnet`'s) as TFLite flatbuffer bytes, with
    sparse weight encoding if `sparse`."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_path)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return converter.convert()


def export_litert(model, subnet: int, path: str, sparse: bool = True) -> str:
    """Writes sub-net `subnet` of `model` (an ASTModel) as a ``.tflite`` file at `path` (mask
    folded in, sparse kernels encoded sparse; written atomically). Returns the path."""
    from keras_ast.export import export_subnet

    with tempfile.TemporaryDirectory() as tmp:
        content = convert(export_subnet(model, subnet, os.path.join(tmp, "saved_model")), sparse)
    return write(content, path)


def write(content: bytes, path: str) -> str:
    """Writes flatbuffer bytes to `path` atomically (creating its directory); returns it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(content)
    return path


def _litert():
    try:
        from ai_edge_litert import interpreter
    except ImportError as error:
        raise ImportError("running LiteRT files needs the LiteRT interpreter: pip install "
                          "ai-edge-litert (or keras_ast[deploy])") from error
    return interpreter


def interpreter(model, num_threads: int = 1, xnnpack: bool = True):
    """A LiteRT interpreter over a ``.tflite`` path or its bytes (XNNPACK, LiteRT's default CPU
    delegate, on unless `xnnpack` is False); tensors allocated."""
    litert = _litert()
    resolver = (litert.OpResolverType.AUTO if xnnpack
                else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    content = model if isinstance(model, (bytes, bytearray)) else open(model, "rb").read()
    runner = litert.Interpreter(model_content=bytes(content), num_threads=num_threads,
                                experimental_op_resolver_type=resolver)
    runner.allocate_tensors()
    return runner


def predict(runner, x) -> np.ndarray:
    """Outputs of a one-input, one-output interpreter on `x` (a batch, run one example at a
    time: the file's batch size is 1)."""
    inp, out = runner.get_input_details()[0], runner.get_output_details()[0]
    x = np.asarray(x, inp["dtype"])
    results = []
    for example in x:
        runner.set_tensor(inp["index"], example[None])
        runner.invoke()
        results.append(runner.get_tensor(out["index"])[0].copy())
    return np.stack(results)


def check(content, saved_model_path: str, x, atol: float = 1e-4) -> float:
    """Runs a LiteRT model and the SavedModel it came from on `x`; returns the largest absolute
    difference of their outputs. Raises AssertionError if it exceeds `atol`."""
    loaded = tf.saved_model.load(saved_model_path)  # kept alive while its function runs
    expected = loaded.serve(tf.constant(x)).numpy()
    actual = predict(interpreter(content), x)
    diff = float(np.max(np.abs(actual - expected)))
    if not diff <= atol:
        raise AssertionError(f"LiteRT model differs from {saved_model_path} by {diff} > {atol}")
    return diff


def sparse_tensors(content: bytes) -> list[dict]:
    """The sparse-encoded tensors of a flatbuffer: ``{name, shape, stored_bytes}`` each."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    found = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            if tensor.Sparsity() is not None:
                found.append({"name": tensor.Name().decode(),
                              "shape": [int(d) for d in tensor.ShapeAsNumpy()],
                              "stored_bytes": int(model.Buffers(tensor.Buffer()).DataLength())})
    return found


def latency(models: dict, example, runs: int = 200, warmup: int = 20, num_threads: int = 1,
            xnnpack: bool = True) -> dict:
    """Batch-1 latency of several LiteRT models measured side by side in this process: after
    `warmup` invocations each, `runs` rounds in which every model runs once, in an order rotated
    between rounds (so drifts of the machine hit all alike). Returns per name
    ``{"median_ms", "p10_ms", "p90_ms"}`` over the rounds."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs}, {warmup}")
    names = list(models)
    runners = {}
    for name in names:
        runner = interpreter(models[name], num_threads=num_threads, xnnpack=xnnpack)
        inp = runner.get_input_details()[0]
        runner.set_tensor(inp["index"], np.asarray(example, inp["dtype"])[None])
        for _ in range(warmup):
            runner.invoke()
        runners[name] = runner
    times = {name: [] for name in names}
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            runners[name].invoke()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: {"median_ms": statistics.median(t),
                   "p10_ms": float(np.percentile(t, 10)), "p90_ms": float(np.percentile(t, 90))}
            for name, t in times.items()}
