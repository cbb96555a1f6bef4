"""ImageNet (ILSVRC 2012) through tensorflow-datasets, with the standard ResNet preprocessing.

tfds builds `imagenet2012` once from the two archives you download yourself (registration at
https://image-net.org/download-images): put ``ILSVRC2012_img_train.tar`` and
``ILSVRC2012_img_val.tar`` in a manual dir and run::

    python -m keras_ast.data.imagenet --manual_dir=MANUAL_DIR --data_dir=DATA_DIR

(or ``load_imagenet(DATA_DIR, prepare=True, manual_dir=MANUAL_DIR)``, or
``tfds build imagenet2012 --manual_dir MANUAL_DIR --data_dir DATA_DIR``). Training then reads
the prepared records from `DATA_DIR`; nothing is ever downloaded.

Train: Inception-style random resized crop to 224 (area 8-100 %, aspect 3/4-4/3, decoded
straight from the JPEG crop window) + horizontal flip. Eval: shorter side to 256, centre crop
224. Both normalised with the ImageNet mean/std.
"""

from __future__ import annotations

import os

import tensorflow as tf

from keras_ast.data.info import DataNotFoundError, DatasetInfo

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224
RESIZE_SIZE = 256
NUM_CLASSES = 1000
ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
SHUFFLE_BUFFER = 10_000  # encoded JPEGs (~110 kB each), not decoded images


def _normalise(image):
    return (tf.cast(image, tf.float32) / 255.0 - tf.constant(MEAN)) / tf.constant(STD)


def _prepare_command(data_dir, manual_dir=None):
    return (f"python -m keras_ast.data.imagenet --manual_dir={manual_dir or 'MANUAL_DIR'} "
            f"--data_dir={data_dir or 'DATA_DIR'}")


def _crop_window(shape, seed):
    """(offset_y, offset_x, height, width) of an Inception-style random crop of `shape`."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def preprocess_train(image, seed, image_size: int = IMAGE_SIZE):
    """Random resized crop (area 8-100 % of the image, aspect 3/4-4/3) to `image_size`,
    random horizontal flip, ImageNet normalisation.

    Args:
      image: encoded JPEG bytes (a scalar tf.string: only the crop window is decoded) or a
        decoded uint8 image [H, W, 3].
      seed: shape-[2] int tensor; stateless, so the same seed gives the same crop and flip.

    Returns:
      float32 [image_size, image_size, 3].
    """
    image = tf.convert_to_tensor(image)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if image.dtype == tf.string:
        window = _crop_window(tf.image.extract_jpeg_shape(image), crop_seed)
        image = tf.image.decode_and_crop_jpeg(image, window, channels=3)
    else:
        window = _crop_window(tf.shape(image), crop_seed)
        image = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], -1])
    image = tf.image.resize(image, (image_size, image_size), method="bilinear")
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return tf.ensure_shape(_normalise(image), (image_size, image_size, 3))


def preprocess_eval(image, image_size: int = IMAGE_SIZE, resize_size: int = RESIZE_SIZE):
    """Resize the shorter side to `resize_size`, centre-crop `image_size`, normalise.

    Args:
      image: encoded JPEG bytes (scalar tf.string) or a decoded uint8 image [H, W, 3].

    Returns:
      float32 [image_size, image_size, 3].
    """
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.string:
        image = tf.image.decode_jpeg(image, channels=3)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_size / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), resize_size)
    image = tf.image.resize(image, new_shape, method="bilinear")
    image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
    return tf.ensure_shape(_normalise(image), (image_size, image_size, 3))


def _prepare(builder, data_dir, manual_dir, tfds):
    manual = (os.path.expanduser(os.fspath(manual_dir)) if manual_dir
              else os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual"))
    found = [a for a in ARCHIVES if os.path.isfile(os.path.join(manual, a))]
    if not found:
        raise DataNotFoundError(
            f"cannot prepare ImageNet: neither {ARCHIVES[0]} nor {ARCHIVES[1]} is in {manual}; "
            "download them from https://image-net.org/download-images (registration "
            f"needed), put them there and run {_prepare_command(data_dir, manual)}")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual, try_download_gcs=False))
    except ModuleNotFoundError as err:  # tfds' preparation imports more than its reading does
        raise ModuleNotFoundError(
            f"preparing imagenet2012 with tensorflow-datasets needs the module {err.name!r} "
            f"(pip install {err.name.replace('_', '-')}); reading a prepared copy does not"
        ) from err


def _builder(data_dir, prepare, manual_dir):
    """The prepared tfds `imagenet2012` builder (preparing it first with `prepare`)."""
    import tensorflow_datasets as tfds

    if data_dir:
        data_dir = os.path.expanduser(os.fspath(data_dir))
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    if prepare and not builder.is_prepared():
        _prepare(builder, data_dir, manual_dir, tfds)
    if not builder.is_prepared():
        where = data_dir or "the tfds default data dir"
        raise DataNotFoundError(
            f"ImageNet (tfds imagenet2012) is not prepared in {where}: download "
            f"{ARCHIVES[0]} and {ARCHIVES[1]} from https://image-net.org/download-images, put "
            "both in a manual dir (default DATA_DIR/downloads/manual) and prepare once with "
            f"{_prepare_command(data_dir, manual_dir)} (or load_imagenet(..., prepare=True, "
            "manual_dir=...)); nothing is downloaded")
    return builder


def _validation(builder, batch_size, image_size, input_context=None):
    """The validation pipeline (sharded and batched per replica with `input_context`)."""
    import tensorflow_datasets as tfds

    val = builder.as_dataset("validation", as_supervised=True,
                             decoders={"image": tfds.decode.SkipDecoding()})
    if input_context is not None:
        val = val.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    return (val.map(lambda x, y: (preprocess_eval(x, image_size), tf.cast(y, tf.int32)),
                    num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def imagenet_source(data_dir: str | None, batch_size: int = 256, seed: int = 0,
                    prepare: bool = False, manual_dir: str | None = None,
                    image_size: int = IMAGE_SIZE,
                    input_context: tf.distribute.InputContext | None = None):
    """(EpochSource of the training batches, validation pipeline, DatasetInfo) of ImageNet.

    Epoch e reads the training files of its input pipeline in an order that depends only on
    (seed, e), interleaves them (16 at a time, deterministic), shuffles the records in blocks
    of 10,000 (each by a stateless key from (seed, e, pipeline, block)) and augments example
    i with the
    stateless key (seed, e, i): a resumed epoch skips the records already trained on before
    decoding them. Under tf.distribute each input pipeline (worker) reads its own share of
    the files (`distribute_datasets_from_function`, record-level when there are fewer files
    than pipelines) and batches per replica; every pipeline yields ``num_train //
    batch_size`` batches per replica and epoch (each record of its shard once, topped up
    from a second pass if its files hold a few records less). Arguments as in
    `load_imagenet`; `input_context` shards and batches the validation pipeline only (the
    source takes its context per call).
    """
    import tensorflow_datasets as tfds

    from keras_ast.data.stream import EpochSource, batch_key, permutation

    builder = _builder(data_dir, prepare, manual_dir)
    splits = builder.info.splits
    files = sorted(os.fspath(p) for p in splits["train"].filepaths)
    features = builder.info.features
    decoders = {"image": tfds.decode.SkipDecoding()}
    steps = splits["train"].num_examples // batch_size

    def parse(serialized):
        example = features.deserialize_example(serialized, decoders=decoders)
        return example["image"], tf.cast(example["label"], tf.int32)

    def make_epoch(epoch, skip, context):
        pipelines, pipeline, local_batch, replicas = 1, 0, batch_size, 1
        if context is not None:
            pipelines, pipeline = context.num_input_pipelines, context.input_pipeline_id
            local_batch = context.get_per_replica_batch_size(batch_size)
            replicas = context.num_replicas_in_sync // pipelines
        by_file = len(files) >= pipelines
        mine = files[pipeline::pipelines] if by_file else files
        order = tf.gather(tf.constant(mine), permutation(len(mine), seed, epoch))
        records = tf.data.Dataset.from_tensor_slices(order).interleave(
            tf.data.TFRecordDataset, cycle_length=min(16, len(mine)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if not by_file:
            records = records.shard(pipelines, pipeline)
        needed = steps * replicas * local_batch
        # Shuffle blocks of SHUFFLE_BUFFER records, each by its own stateless key (a seeded
        # tf.data shuffle cannot take a per-epoch tensor seed when the global seed is 0).
        key = batch_key(seed, epoch, pipeline)
        records = records.batch(SHUFFLE_BUFFER).enumerate().map(
            lambda j, block: tf.random.experimental.stateless_shuffle(
                block, tf.random.experimental.stateless_fold_in(key, j))).unbatch()
        # Every record of the shard once, then (a shard a few records short) a second pass.
        records = records.repeat().take(needed).enumerate().skip(skip * local_batch)
        offset = pipeline * needed  # distinct augmentation keys on every pipeline
        return (records
                .map(lambda i, record: (lambda image, label: (
                    preprocess_train(image, batch_key(seed, epoch, offset + i), image_size),
                    label))(*parse(record)),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(local_batch, drop_remainder=True))

    source = EpochSource(make_epoch, steps, batch_size, seed, shards_input=True)
    val = _validation(builder, batch_size, image_size, input_context)
    info = DatasetInfo("imagenet", NUM_CLASSES, splits["train"].num_examples,
                       splits["validation"].num_examples, (image_size, image_size, 3))
    return source, val, info


def load_imagenet(data_dir: str | None, batch_size: int = 256, seed: int = 0,
                  prepare: bool = False, manual_dir: str | None = None,
                  input_context: tf.distribute.InputContext | None = None,
                  image_size: int = IMAGE_SIZE):
    """ImageNet (tfds `imagenet2012`) as `tf.data` pipelines.

    Train: files and records shuffled with `seed` (a new order each time it is iterated),
    random resized crop + flip, normalised, batched with the last partial batch dropped,
    prefetched. Validation: resize 256 / centre crop 224, normalised, batched (last batch
    kept). Images float32 NHWC, labels int32. For a resumable order use `imagenet_source`.

    Args:
      data_dir: where tfds keeps (or, with `prepare`, will write) the prepared
        `imagenet2012`; None means the tfds default (~/tensorflow_datasets).
      batch_size: the global batch size; with `input_context`, each input pipeline batches
        `input_context.get_per_replica_batch_size(batch_size)`.
      seed: shuffle and augmentation seed (keep it the same on every worker).
      prepare: first build the data set from the archives in `manual_dir` (a no-op when it
        is already prepared). Otherwise nothing is written and nothing downloaded.
      manual_dir: folder with ILSVRC2012_img_train.tar / ILSVRC2012_img_val.tar (default:
        `data_dir`/downloads/manual).
      input_context: a `tf.distribute.InputContext` (from
        `strategy.distribute_datasets_from_function`): the training files are split between
        the input pipelines (its records when there are fewer files than pipelines), the
        validation set is sharded with `ds.shard(num_input_pipelines, input_pipeline_id)`,
        and both are batched per replica.
      image_size: side of the square output images.

    Returns:
      (train_ds, val_ds, DatasetInfo).

    Raises:
      DataNotFoundError (a FileNotFoundError): not prepared in `data_dir` (or, with
        `prepare`, no archives in the manual dir); the message says what to put where and
        the command that prepares it.
    """
    source, val, info = imagenet_source(data_dir, batch_size, seed, prepare, manual_dir,
                                        image_size, input_context)
    return source.reshuffled(input_context), val, info


def _main(argv):
    from absl import flags

    del argv
    load_imagenet(flags.FLAGS.data_dir, prepare=True, manual_dir=flags.FLAGS.manual_dir)
    print(f"imagenet2012 prepared in {flags.FLAGS.data_dir}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("data_dir", None, "Where tfds writes the prepared data set.")
    flags.DEFINE_string("manual_dir", None, "Folder with ILSVRC2012_img_{train,val}.tar.")
    flags.mark_flags_as_required(["data_dir", "manual_dir"])
    app.run(_main)
