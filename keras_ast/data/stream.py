"""Resumable training order: every epoch's batches are a function of (seed, epoch).

A `tf.data` shuffle that reshuffles "each iteration" draws its new order from a counter inside
the dataset object, so a restarted process cannot reproduce epoch e's order. An `EpochSource`
builds epoch e from stateless seeds instead: the same (seed, epoch) always gives the same
batches, with the same augmentation draws, and a resumed run skips the batches a killed run had
already consumed (cheaply: in-memory sets skip indices, ImageNet skips undecoded records).

`EpochSource.epochs(first, last, skip)` is one stream over epochs ``[first, last)`` without the
first `skip` batches of `first`; `resume_fit` (keras_ast.checkpoint) feeds it to ``fit``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf


def epoch_key(seed, epoch):
    """Stateless-RNG key (shape [2], int64) of `epoch` under `seed`."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])


def permutation(size, seed, epoch):
    """A permutation of ``range(size)`` (int64) that depends only on (seed, epoch)."""
    keys = tf.random.stateless_uniform([size], epoch_key(seed, epoch), minval=None,
                                       maxval=None, dtype=tf.int64)
    return tf.cast(tf.argsort(keys, stable=True), tf.int64)


def batch_key(seed, epoch, index):
    """Stateless-RNG key of batch (or example) `index` of `epoch`."""
    return tf.random.experimental.stateless_fold_in(epoch_key(seed, epoch),
                                                    tf.cast(index, tf.int64))


@dataclasses.dataclass(frozen=True)
class EpochSource:
    """The training batches of any epoch, as a function of (seed, epoch).

    Attributes:
      make_epoch: ``(epoch, skip, input_context) -> tf.data.Dataset``: the batches of `epoch`
        (a scalar int64 tensor) after its first `skip` (scalar int64 tensor); per input
        pipeline when `shards_input` and an input context is given.
      steps_per_epoch: batches per epoch (global batches; the same on every pipeline).
      batch_size: the global batch size.
      seed: the order's seed.
      shards_input: True when `make_epoch` reads its own shard of the data for each input
        pipeline (files, under `distribute_datasets_from_function`); False when the stream is
        one global-batch stream that tf.distribute splits across replicas (the in-memory sets).
    """

    make_epoch: Callable
    steps_per_epoch: int
    batch_size: int
    seed: int
    shards_input: bool = False

    def map(self, function) -> "EpochSource":
        """The same source with `function` mapped over every batch (e.g. one-hot labels)."""
        make_epoch = self.make_epoch
        return dataclasses.replace(self, make_epoch=lambda epoch, skip, context: make_epoch(
            epoch, skip, context).map(function, num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=True))

    def _pipeline(self, input_context):
        """(the input context `make_epoch` gets, replicas fed per input pipeline): the context
        and its replica count when the source shards its input, else None and 1 (one global
        stream)."""
        if input_context is None or not self.shards_input:
            return None, 1
        return input_context, (input_context.num_replicas_in_sync
                               // input_context.num_input_pipelines)

    def epochs(self, first: int, last: int, skip: int = 0, input_context=None):
        """One dataset of the batches of epochs ``[first, last)``, without the first `skip`
        batches of epoch `first` (the ones a resumed run has already trained on)."""
        first, last, skip = int(first), int(last), int(skip)
        if not 0 <= first < last:
            raise ValueError(f"need 0 <= first < last, got first={first}, last={last}")
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training set makes no batch of {self.batch_size}")
        if not 0 <= skip < self.steps_per_epoch:
            raise ValueError(f"skip must be in [0, {self.steps_per_epoch}), got {skip}")
        input_context, replicas = self._pipeline(input_context)

        def one_epoch(epoch):
            skipped = tf.where(epoch == first, tf.constant(skip, tf.int64),
                               tf.constant(0, tf.int64))
            return self.make_epoch(epoch, skipped * replicas, input_context)

        count = ((last - first) * self.steps_per_epoch - skip) * replicas
        dataset = tf.data.Dataset.range(first, last).flat_map(one_epoch)
        return dataset.apply(tf.data.experimental.assert_cardinality(count)).prefetch(
            tf.data.AUTOTUNE)

    def distribute(self, strategy, first: int, last: int, skip: int = 0):
        """`epochs(first, last, skip)` for `strategy`: per input pipeline through
        ``distribute_datasets_from_function`` when the source shards its input (ImageNet), else
        the global-batch stream, which tf.distribute (``fit``) splits over the replicas."""
        if self.shards_input and strategy.num_replicas_in_sync > 1:
            return strategy.distribute_datasets_from_function(
                lambda context: self.epochs(first, last, skip, context))
        dataset = self.epochs(first, last, skip)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        return dataset.with_options(options)

    def reshuffled(self, input_context=None):
        """One epoch per iteration, in a new order each time it is iterated (what a plain
        ``fit(train, epochs=...)`` expects); reproducible from the seed, but not resumable
        mid-run: use `epochs` for that."""
        keys = tf.data.Dataset.random(seed=self.seed, rerandomize_each_iteration=True).take(1)
        input_context, replicas = self._pipeline(input_context)
        dataset = keys.flat_map(
            lambda key: self.make_epoch(key, tf.constant(0, tf.int64), input_context))
        return dataset.apply(tf.data.experimental.assert_cardinality(
            self.steps_per_epoch * replicas)).prefetch(tf.data.AUTOTUNE)


def in_memory_source(arrays, batch_size: int, seed: int, transform=None,
                     drop_remainder: bool = True) -> EpochSource:
    """An `EpochSource` over in-memory arrays: epoch e is ``permutation(n, seed, e)`` cut into
    batches; a resumed epoch skips indices, not data.

    Args:
      arrays: tuple of arrays with the same first dimension (e.g. images, labels).
      batch_size: the global batch size.
      seed: the order's (and `transform`'s) seed.
      transform: optional ``(batch_tuple, key) -> batch_tuple`` applied to each gathered batch
        with that batch's stateless key (augmentation), in a parallel map.
      drop_remainder: drop the last partial batch of each epoch.
    """
    tensors = tuple(tf.convert_to_tensor(a) for a in arrays)
    size = int(tensors[0].shape[0])
    steps = size // batch_size if drop_remainder else -(-size // batch_size)

    def make_epoch(epoch, skip, input_context):
        del input_context  # one global-batch stream; tf.distribute splits it
        order = permutation(size, seed, epoch)
        pad = steps * batch_size - size
        if pad > 0:  # the last batch is partial: pad with -1, dropped after the gather
            order = tf.concat([order, -tf.ones([pad], tf.int64)], 0)
        batches = tf.data.Dataset.from_tensor_slices(
            tf.reshape(order[:steps * batch_size], [steps, batch_size]))
        batches = batches.enumerate().skip(skip)

        def gather(index, rows):
            if pad > 0:
                rows = tf.boolean_mask(rows, rows >= 0)
            batch = tuple(tf.gather(t, rows) for t in tensors)
            if transform is not None:
                batch = transform(batch, batch_key(seed, epoch, index))
            return batch

        return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return EpochSource(make_epoch, steps, batch_size, seed)
