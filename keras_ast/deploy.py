"""One deployable artefact for all K sub-nets: the shared weights once, K packed masks.

`export_subnet` writes one SavedModel per sub-net, each with its own dense-shaped kernels
``W * m_k``: K copies of the weights. `export_multi` writes one SavedModel that stores the
shared kernels W once, every sub-net's mask as bits (1/32 of a float32 kernel each) and the K
BatchNorm copies, with a serving endpoint per sub-net (``serve_<k>``) and one that takes the
sub-net index (``serve(x, subnet)``), so a deployed model's sparsity can be switched at run
time. Each endpoint folds its mask into the kernels on the fly (``W * unpack(m_k)``) and runs
the plain network, so it predicts exactly as sub-net k's own export (tested bit for bit).

    keras_ast.deploy.export_multi(model, "export/multi")
    loaded = tf.saved_model.load("export/multi")
    loaded.serve_2(x)                       # sub-net 2
    loaded.serve(x, tf.constant(2))         # the same, chosen at run time

`save_keras` writes the ASTModel itself without optimizer state (masks as bits, as every
keras_ast save); `markdown` formats `python -m launch.export`'s deployment table.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from keras_ast import layers as ast_layers
from keras_ast.atomic import atomic_output
from keras_ast.export import subnet_model
from keras_ast.layers import pack_masks

_BIT_VALUES = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits' order (big-endian bits)


def unpack_mask(packed, shape, dtype=tf.float32):
    """One sub-net's packed mask (uint8 [ceil(size / 8)]) -> a 0/1 tensor of `shape`."""
    size = int(np.prod(shape))
    bits = tf.bitwise.bitwise_and(tf.cast(packed, tf.int32)[:, None],
                                  tf.constant(_BIT_VALUES, tf.int32)) > 0
    return tf.cast(tf.reshape(tf.reshape(bits, [-1])[:size], shape), dtype)


class MultiSubnet(tf.Module):
    """All K sub-nets of an `ASTModel` in one `tf.Module` (what `export_multi` saves).

    Variables: ``shared`` (one per variable of the plain network: the shared kernel W of a
    prunable layer, sub-net-independent weights as they are, and for a switchable BatchNorm
    its K rows stacked), ``packed_masks`` (one uint8 [K, bytes] per prunable kernel).
    """

    def __init__(self, model):
        super().__init__(name="multi_subnet")
        self.num_subnets = int(model.num_subnets)
        plain = subnet_model(model, 0)  # the plain network; its own weights are not used
        sources = {}
        for layer in plain.layers:
            source = model.network.get_layer(layer.name)
            for i, variable in enumerate(layer.weights):
                sources[id(variable)] = (source, i)
        self.shared, self.packed_masks, self._specs = [], [], []
        for variable in plain.trainable_variables + plain.non_trainable_variables:
            if id(variable) not in sources:
                raise ValueError(f"variable {variable.path} of the exported network has no "
                                 "source layer in the model (nested models are not supported)")
            source, i = sources[id(variable)]
            if isinstance(source, ast_layers.MaskedKernelMixin) and i == 0:
                kernel = np.asarray(source.shared_kernel)
                self.shared.append(tf.Variable(kernel, trainable=False, name="kernel"))
                self.packed_masks.append(tf.Variable(pack_masks(source.masks),
                                                     trainable=False, name="mask_bits"))
                self._specs.append(("kernel", len(self.packed_masks) - 1, kernel.shape))
            elif isinstance(source, ast_layers.SwitchableBatchNormalization):
                rows = np.asarray(source.weights[i])
                self.shared.append(tf.Variable(rows, trainable=False, name="bn_rows"))
                self._specs.append(("rows", None, None))
            else:
                value = np.asarray(source.bias if isinstance(
                    source, ast_layers.MaskedKernelMixin) else source.get_weights()[i])
                self.shared.append(tf.Variable(value, trainable=False, name="weight"))
                self._specs.append(("plain", None, None))
        self._counts = (len(plain.trainable_variables), len(plain.non_trainable_variables))
        # Not an attribute: the module must not track (and save) the network's own variables.
        network = plain
        spec = tf.TensorSpec([None, *plain.input_shape[1:]], plain.inputs[0].dtype)

        def forward(x, k):
            values = [self._value(v, kind, m, shape, k)
                      for v, (kind, m, shape) in zip(self.shared, self._specs)]
            trainable, rest = values[:self._counts[0]], values[self._counts[0]:]
            outputs, _ = network.stateless_call(trainable, rest, x, training=False)
            return outputs

        for k in range(self.num_subnets):
            setattr(self, f"serve_{k}", tf.function(
                lambda x, k=k: forward(x, k), input_signature=[spec]))
        branches = [getattr(self, f"serve_{k}") for k in range(self.num_subnets)]

        @tf.function(input_signature=[spec, tf.TensorSpec([], tf.int32)])
        def serve(x, subnet):
            tf.debugging.assert_less(subnet, self.num_subnets, message="sub-net out of range")
            tf.debugging.assert_non_negative(subnet, message="sub-net out of range")
            return tf.switch_case(subnet, [lambda b=b: b(x) for b in branches])

        self.serve = serve

    def _value(self, variable, kind, mask_index, shape, k):
        if kind == "kernel":
            return variable * unpack_mask(self.packed_masks[mask_index][k], shape,
                                          variable.dtype)
        if kind == "rows":
            return variable[k]
        return variable


def export_multi(model, path: str) -> str:
    """Writes all sub-nets of `model` (an ASTModel) as one SavedModel at `path` (module
    docstring): endpoints ``serve_<k>(x)`` and ``serve(x, subnet)``. Written under a temporary
    name and renamed, so a crash never leaves a partial export. Returns the path."""
    module = MultiSubnet(model)
    signatures = {f"serve_{k}": getattr(module, f"serve_{k}") for k in
                  range(module.num_subnets)}
    signatures["serving_default"] = module.serve_0
    with atomic_output(path) as tmp:
        tf.saved_model.save(module, tmp, signatures=signatures)
    return path


def save_keras(model, path: str) -> str:
    """Saves `model` (an ASTModel) as a ``.keras`` file for deployment: without optimizer state
    (a second copy of the weights), its masks stored as bits (as every keras_ast save does).
    It still holds the gradient-correction reference buffers (one kernel-sized buffer per
    sparse layer), so it is larger than `export_multi`'s SavedModel; it needs keras_ast to
    load (``model.set_subnet(k)`` then picks the sub-net). `model` itself is not modified.
    Returns the path."""
    copy = model.__class__.from_config(model.get_config())  # built, not compiled
    copy.set_weights(model.get_weights())
    with atomic_output(path) as tmp:
        copy.save(tmp + ".keras")  # Keras wants the suffix
        os.replace(tmp + ".keras", tmp)
    return path


def directory_bytes(path: str) -> int:
    """Bytes of all files below `path` (the size of a SavedModel on disk)."""
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def size_report(model, directory: str) -> dict:
    """Writes the K per-sub-net SavedModels and the multi-sub-net one into `directory` and
    returns their sizes in bytes: ``{"subnets": [...], "subnets_total", "multi", "ratio"}``
    (multi / the K together)."""
    from keras_ast.export import export_subnet

    sizes = [directory_bytes(export_subnet(model, k, os.path.join(directory, f"subnet_{k}")))
             for k in range(model.num_subnets)]
    multi = directory_bytes(export_multi(model, os.path.join(directory, "multi")))
    return {"subnets": sizes, "subnets_total": sum(sizes), "multi": multi,
            "ratio": multi / sum(sizes)}


def _kb(value):
    return "-" if value is None else f"{value / 1024:,.1f}"


def markdown(table):
    """A deployment table (`python -m launch.export`'s deployment.json) as Markdown."""
    lines = ["| sub-net | sparsity | accuracy | SavedModel KiB | LiteRT KiB | latency ms | "
             "speed-up | XNNPACK sparse |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    dense = table.get("dense")
    if dense:
        lines.append(f"| dense reference | 0 % | - | - | {_kb(dense['tflite_bytes'])} | "
                     f"{dense['latency_ms']:.3f} | 1.00 | - |")
    for r in table["subnets"]:
        acc = "-" if r.get("accuracy") is None else f"{100 * r['accuracy']:.2f} %"
        lat = "-" if "latency_ms" not in r else f"{r['latency_ms']:.3f}"
        speed = "-" if "speedup" not in r else f"{r['speedup']:.2f}"
        qualifies = "yes" if r["xnnpack_sparse"]["qualifies"] else "no"
        lines.append(f"| {r['subnet']} | {100 * r['measured_sparsity']:.2f} % | {acc} | "
                     f"{_kb(r['saved_model_bytes'])} | {_kb(r.get('tflite_bytes'))} | {lat} | "
                     f"{speed} | {qualifies} |")
    multi = table.get("multi")
    if multi:
        lines.append(f"\nOne SavedModel for all sub-nets: {_kb(multi['bytes'])} KiB against "
                     f"{_kb(multi['subnets_bytes'])} KiB for the separate ones "
                     f"({multi['ratio']:.3f}); as a .keras file: {_kb(multi['keras_bytes'])} KiB.")
    if dense:
        lat = table["latency"]
        lines.append(f"\nLatency: median of {lat['runs']} rotated rounds, {lat['threads']} "
                     f"thread, batch 1, XNNPACK. {table['cpu']}")
    reasons = {tuple(r["xnnpack_sparse"]["reasons"]) for r in table["subnets"]
               if not r["xnnpack_sparse"]["qualifies"]}
    for reason in sorted(reasons):
        lines.append(f"\nNot XNNPACK-sparse: {'; '.join(reason)}.")
    return "\n".join(lines)


__all__ = ["MultiSubnet", "export_multi", "pack_masks", "unpack_mask", "size_report",
           "directory_bytes", "markdown", "save_keras"]
