"""Sparse wrapper layers: K masks per prunable kernel, and a switchable BatchNormalization.

The layers are subclasses of Keras' own Conv2D, Dense and DepthwiseConv2D (tfmot-style
wrappers on Keras 3: tfmot's own wrappers need tf_keras). Each holds its masks as one
non-trainable variable of shape ``[K, *kernel_shape]``. Which mask is used is read from a
shared :class:`SubnetIndex` (an integer variable owned by the `ASTModel`), inside the compiled
step, so switching sub-nets never retraces.

The forward pass uses ``kernel * m`` (one multiply). While the training step records (inside
:func:`recording_masked_kernels`), each sparse layer also reports that product tensor and the
mask it used, so one backward pass gives both gradients the step needs: with respect to the
shared kernel, ``dL/dW = dL/d(W*m) * m`` (already restricted to the sub-net, for the optimizer),
and with respect to the product, the *dense* gradient ``dL/d(W*m)`` evaluated for every entry
(for regrowth). Regrowth therefore costs nothing extra, and the mask is read once per step.
The shared kernel itself is never zeroed.
"""

from __future__ import annotations

import contextlib
import threading

import keras
import numpy as np
from keras import ops

from keras_ast import compat

_RECORDS = threading.local()  # per thread: tf.distribute runs replicas in separate threads


@contextlib.contextmanager
def recording_masked_kernels():
    """Within the block, every sparse layer's forward appends ``(layer, kernel * mask, mask)``
    to the yielded list (in call order; a layer called twice appears twice)."""
    previous = getattr(_RECORDS, "records", None)
    records = []
    _RECORDS.records = records
    try:
        yield records
    finally:
        _RECORDS.records = previous


class SubnetIndex:
    """The index of the active sub-net, shared by every sparse layer of one model.

    A plain Python holder (not a Keras layer, so it is not tracked twice) around an int32
    variable owned by the model. A layer that has no `SubnetIndex` attached uses sub-net 0.
    """

    def __init__(self, variable, num_subnets: int):
        self.variable = variable
        self.num_subnets = int(num_subnets)

    def read(self):
        return self.variable


def _check_num_subnets(num_subnets) -> int:
    if not isinstance(num_subnets, int) or isinstance(num_subnets, bool) or num_subnets < 1:
        raise ValueError(f"num_subnets must be an integer >= 1, got {num_subnets!r}")
    return num_subnets


class SubnetLayerMixin:
    """Shared plumbing: the number of sub-nets (a constructor argument and part of the
    config) and the active-index lookup. Mixed in before the Keras layer class."""

    def __init__(self, *args, num_subnets=1, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_subnets = _check_num_subnets(num_subnets)
        self._subnet_index = None

    def attach_subnet_index(self, subnet_index: SubnetIndex | None):
        """Makes this layer read its active sub-net from `subnet_index`."""
        if subnet_index is not None and subnet_index.num_subnets != self.num_subnets:
            raise ValueError(
                f"Layer {self.name!r} has {self.num_subnets} sub-nets, but the index "
                f"attached to it selects among {subnet_index.num_subnets}."
            )
        # Stored through object.__setattr__ so neither Keras nor tf.Module track the
        # model-owned variable a second time.
        object.__setattr__(self, "_subnet_index", subnet_index)

    def active_subnet(self):
        if self._subnet_index is None:
            return 0
        return self._subnet_index.read()

    def get_config(self):
        return {**super().get_config(), "num_subnets": self.num_subnets}


class MaskedKernelMixin(SubnetLayerMixin):
    """K binary masks over one kernel; the kernel seen by ``call`` is ``kernel * mask[k]``."""

    # Name of the attribute holding the kernel variable in the Keras base class.
    _kernel_attr = compat.KERNEL_ATTRIBUTE

    def build(self, input_shape):
        super().build(input_shape)
        kernel = self.shared_kernel
        # aggregation "none": under tf.distribute every replica computes the same new mask
        # from the same global gradients and writes its own copy, with no synchronisation
        # (which could not run inside the mask update's `cond`); see keras_ast/distribute.py.
        self.masks = self.add_weight(
            name="masks",
            shape=(self.num_subnets,) + tuple(kernel.shape),
            initializer="ones",
            trainable=False,
            dtype=kernel.dtype,
            aggregation="none",
        )

    @property
    def shared_kernel(self):
        """The shared, never-masked kernel variable (trained by every sub-net)."""
        return getattr(self, self._kernel_attr)

    # What the Keras base class's `call` reads: the masked view. (DepthwiseConv2D assigns its
    # kernel to `self.kernel` in `build`; the setter stores it under `_kernel_attr`.)
    @property
    def kernel(self):
        return self.masked_kernel(self.shared_kernel)

    @kernel.setter
    def kernel(self, variable):
        setattr(self, self._kernel_attr, variable)

    # ValueError, not NotImplementedError: keras.Model.quantize turns the latter into a warning
    # and leaves the layer as it is.
    def enable_lora(self, *args, **kwargs):
        raise ValueError(
            f"layer {self.name!r} is sparse (keras_ast): LoRA would train and read its kernel "
            "without the sub-net's mask. Export the sub-net first (keras_ast.export."
            "subnet_model(model, k)) and enable LoRA on that plain model."
        )

    def quantize(self, *args, **kwargs):
        raise ValueError(
            f"layer {self.name!r} is sparse (keras_ast): quantizing it would drop the sub-net's "
            "mask. Export the sub-net first (keras_ast.export.subnet_model(model, k)) and "
            "quantize that plain model."
        )

    def mask_for(self, subnet):
        """The [*kernel_shape] mask of `subnet` (an int or a scalar tensor)."""
        return ops.take(self.masks, subnet, axis=0)

    def masked_kernel(self, kernel):
        """``kernel * mask`` of the active sub-net (recorded when a step is recording)."""
        mask = ops.cast(self.mask_for(self.active_subnet()), kernel.dtype)
        masked = kernel * mask
        records = getattr(_RECORDS, "records", None)
        if records is not None:
            records.append((self, masked, mask))
        return masked

    def _own_variables(self):
        variables = [self.shared_kernel]
        if self.use_bias:
            variables.append(self.bias)
        variables.append(self.masks)
        return variables

    # Keras' Conv/Dense save the *property* `kernel` (here the masked one) and load only
    # kernel and bias; save the shared kernel, the bias and the masks instead, the masks as
    # bits (`pack_masks`: a .keras file or checkpoint holds K masks in K/32 of a kernel).
    def save_own_variables(self, store):
        if not self.built:
            return
        for i, variable in enumerate(self._own_variables()):
            store[str(i)] = pack_masks(variable) if variable is self.masks else variable

    def load_own_variables(self, store):
        if not self.built:
            return
        variables = self._own_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Layer {self.name!r} expects {len(variables)} saved variables "
                f"(kernel, bias, masks), found {len(store.keys())}."
            )
        for i, variable in enumerate(variables):
            value = np.asarray(store[str(i)])
            if variable is self.masks and value.dtype == np.uint8:  # bits (older files: 0/1)
                value = unpack_masks(value, tuple(variable.shape), variable.dtype)
            variable.assign(value)


def pack_masks(masks):
    """[K, *shape] 0/1 masks -> uint8 [K, ceil(size / 8)], each sub-net's mask as bits
    (`np.packbits` order). Raises ValueError if a value is not 0 or 1."""
    masks = np.asarray(keras.ops.convert_to_numpy(masks))
    flat = masks.reshape(masks.shape[0], -1)
    if not np.isin(flat, (0, 1)).all():
        raise ValueError("masks must hold only 0 and 1 to be stored as bits")
    return np.packbits(flat > 0.5, axis=1)


def unpack_masks(packed, shape, dtype="float32"):
    """The inverse of `pack_masks`: uint8 [K, bytes] -> 0/1 masks of `shape` ([K, *kernel])."""
    packed = np.asarray(packed, np.uint8)
    size = int(np.prod(shape[1:]))
    if packed.ndim != 2 or packed.shape != (shape[0], -(-size // 8)):
        raise ValueError(f"packed masks of shape {packed.shape} do not fit masks {shape}")
    return np.unpackbits(packed, axis=1, count=size).reshape(shape).astype(
        keras.backend.standardize_dtype(dtype))


@keras.saving.register_keras_serializable(package="keras_ast")
class SparseConv2D(MaskedKernelMixin, keras.layers.Conv2D):
    """`keras.layers.Conv2D` with K sub-net masks over its kernel (``num_subnets=K``)."""


@keras.saving.register_keras_serializable(package="keras_ast")
class SparseDense(MaskedKernelMixin, keras.layers.Dense):
    """`keras.layers.Dense` with K sub-net masks over its kernel (``num_subnets=K``)."""


@keras.saving.register_keras_serializable(package="keras_ast")
class SparseDepthwiseConv2D(MaskedKernelMixin, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` with K sub-net masks over its depthwise kernel."""

    _kernel_attr = "_shared_depthwise_kernel"


@keras.saving.register_keras_serializable(package="keras_ast")
class SwitchableBatchNormalization(SubnetLayerMixin, keras.layers.BatchNormalization):
    """BatchNormalization with K private copies of gamma, beta and the moving statistics.

    Variables have shape [K, channels]; sub-net k reads and updates row k only. The
    configuration (axis, momentum, epsilon, center, scale, synchronized) is Keras' own.
    """

    def build(self, input_shape):
        shape = tuple(input_shape)
        axis = self.axis if self.axis >= 0 else len(shape) + self.axis
        self.axis = axis
        channels = shape[axis]
        if channels is None:
            raise ValueError(f"{self.name}: the channel axis {axis} of {shape} must be known.")
        param_shape = (self.num_subnets, channels)
        self.input_spec = keras.layers.InputSpec(ndim=len(shape), axes={axis: channels})
        self.gamma = (
            self.add_weight(
                shape=param_shape,
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
            )
            if self.scale
            else None
        )
        self.beta = (
            self.add_weight(
                shape=param_shape,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
            )
            if self.center
            else None
        )
        self.moving_mean = self.add_weight(
            shape=param_shape,
            name="moving_mean",
            initializer=self.moving_mean_initializer,
            trainable=False,
            aggregation="only_first_replica",
        )
        self.moving_variance = self.add_weight(
            shape=param_shape,
            name="moving_variance",
            initializer=self.moving_variance_initializer,
            trainable=False,
            aggregation="only_first_replica",
        )
        self._reduction_axes = [i for i in range(len(shape)) if i != axis]
        self.built = True

    def _row(self, variable, subnet, dtype):
        return None if variable is None else ops.cast(ops.take(variable, subnet, axis=0), dtype)

    def call(self, inputs, training=None, mask=None):
        if mask is not None:
            raise ValueError(f"{self.name}: masked inputs are not supported.")
        k = self.active_subnet()
        compute_dtype = inputs.dtype
        if compute_dtype in ("float16", "bfloat16"):
            inputs = ops.cast(inputs, "float32")

        if training and self.trainable:
            mean, variance = ops.moments(
                inputs, axes=self._reduction_axes, synchronized=self.synchronized
            )
            one_hot = ops.expand_dims(ops.one_hot(k, self.num_subnets, dtype="float32"), -1)
            m = self.momentum
            # Row k <- m * row k + (1 - m) * batch statistic; other rows unchanged.
            self.moving_mean.assign(
                self.moving_mean + one_hot * (1.0 - m) * (mean[None] - self.moving_mean)
            )
            self.moving_variance.assign(
                self.moving_variance
                + one_hot * (1.0 - m) * (variance[None] - self.moving_variance)
            )
        else:
            mean = self._row(self.moving_mean, k, inputs.dtype)
            variance = self._row(self.moving_variance, k, inputs.dtype)
        outputs = ops.batch_normalization(
            inputs,
            mean=mean,
            variance=variance,
            axis=self.axis,
            offset=self._row(self.beta, k, inputs.dtype),
            scale=self._row(self.gamma, k, inputs.dtype),
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, compute_dtype)


SPARSE_LAYERS = (SparseConv2D, SparseDense, SparseDepthwiseConv2D)
# Plain Keras class -> sparse subclass, used by `sparsify` and (reversed) by export.
SPARSE_EQUIVALENT = {
    keras.layers.Conv2D: SparseConv2D,
    keras.layers.Dense: SparseDense,
    keras.layers.DepthwiseConv2D: SparseDepthwiseConv2D,
}
