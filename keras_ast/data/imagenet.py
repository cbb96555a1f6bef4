"""ImageNet (ILSVRC 2012) through tensorflow-datasets, with the standard ResNet preprocessing.

The data set must be prepared by tfds from the two archives you download yourself:
``python -m keras_ast.data.imagenet --manual_dir=DIR --data_dir=DATA`` (or ``load_imagenet(...,
prepare=True, manual_dir=DIR)``) builds it once; training then reads it from `data_dir` with
no download.
"""

from __future__ import annotations

import tensorflow as tf

from keras_ast.data.info import DataNotFoundError, DatasetInfo

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_TRAIN, NUM_VAL = 1_281_167, 50_000


def _normalise(image):
    return (tf.cast(image, tf.float32) / 255.0 - MEAN) / STD


def preprocess_train(image, seed):
    """Inception-style random resized crop to 224 (area 8-100 %, aspect 3/4-4/3) and flip."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=seeds[0],
        min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, size)
    image = tf.image.resize(image, (224, 224), method="bilinear")
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    return _normalise(image)


def preprocess_eval(image):
    """Resize the shorter side to 256, center-crop 224."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = 256.0 / tf.reduce_min(shape)
    image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32), method="bilinear")
    return _normalise(tf.image.resize_with_crop_or_pad(image, 224, 224))


def load_imagenet(data_dir, batch_size=256, seed=0, prepare=False, manual_dir=None,
                  input_context: tf.distribute.InputContext | None = None):
    """ImageNet as ((train, validation) pipelines, DatasetInfo).

    Args:
      data_dir: where tfds keeps (or will keep) the prepared `imagenet2012`.
      batch_size: the global batch size (divided by the number of replicas when an
        `input_context` is given).
      prepare: build the tfds data set first from `manual_dir` (the two ILSVRC tars).
      input_context: from `strategy.distribute_datasets_from_function`: shard and batch per
        input pipeline.

    Raises:
      DataNotFoundError: naming the archives and the command that prepares them.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    if prepare:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    if not builder.is_prepared():
        raise DataNotFoundError(
            f"ImageNet is not prepared in {data_dir!r}: put ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar in a manual dir and run `python -m keras_ast.data.imagenet "
            f"--manual_dir=THAT_DIR --data_dir={data_dir}` once"
        )
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    options = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=16)
    train = builder.as_dataset("train", as_supervised=True, shuffle_files=True,
                               read_config=options)
    val = builder.as_dataset("validation", as_supervised=True)
    if input_context is not None:
        train = train.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        val = val.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    train = (tf.data.Dataset.zip((train.shuffle(10_000, seed=seed), seeds))
             .map(lambda xy, s: (preprocess_train(xy[0], s), tf.cast(xy[1], tf.int32)),
                  num_parallel_calls=tf.data.AUTOTUNE)
             .batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    val = (val.map(lambda x, y: (preprocess_eval(x), tf.cast(y, tf.int32)),
                   num_parallel_calls=tf.data.AUTOTUNE)
           .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    return train, val, DatasetInfo("imagenet", 1000, NUM_TRAIN, NUM_VAL, (224, 224, 3))


def _main(argv):
    del argv
    from absl import flags

    load_imagenet(flags.FLAGS.data_dir, prepare=True, manual_dir=flags.FLAGS.manual_dir)
    print(f"imagenet2012 prepared in {flags.FLAGS.data_dir}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("data_dir", None, "Where tfds writes the prepared data set.")
    flags.DEFINE_string("manual_dir", None, "Folder with ILSVRC2012_img_{train,val}.tar.")
    flags.mark_flags_as_required(["data_dir", "manual_dir"])
    app.run(_main)
