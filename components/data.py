"""tf.data input pipelines from the ingest TFRecords, and THE decode/resize function.

`decode_and_resize` is the single definition of how bytes become model input: training
uses it here, and export puts the very same function in the serving graph. The backbone's
preprocess_input lives inside the Keras model (components.model.BackbonePreprocess), so
the model always takes raw 0-255 pixels, in training and in serving alike. Its `Geometry`
(data.resize, data.crop_fraction) says how an image of any shape becomes the square input:
every caller passes the run's geometry, and the feature store keys features by it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import tensorflow as tf

from graft.components.geometry import PAD_RGB, RESIZE_MODES, SQUASH, Geometry
from graft.core.config import AugmentConfig

__all__ = [
    "FEATURES",
    "PAD_RGB",
    "RESIZE_MODES",
    "SQUASH",
    "Geometry",
    "count_examples",
    "decode_and_resize",
    "first_images_by_sha256",
    "image_dataset",
    "in_sha256_order",
    "naive_image_dataset",
    "parsed_examples",
    "raw_dataset",
    "read_labels",
    "read_once",
    "shard_policy",
    "split_files",
    "steps_per_epoch",
]

AUTOTUNE = tf.data.AUTOTUNE


def read_once(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with tf.data's autotuner off, for a dataset read once to its end (a feature pass,
    a val or test set). Measured here (TF 2.21, 2 cores): with the autotuner on, a
    pass ended only at one of its wake-ups, which come at 0.6, 1.3, 2.6, 5.1, 10.2, 20.5, 41,
    82, 142 s... after the iterator starts (the period doubles from 10 ms to 60 s): 400 images
    took 8.8-11.3 s with it and 4.9-7.4 s without, 160 images 2.7-5.2 s against 2.0-2.3 s.
    AUTOTUNE parallel calls then run on every core. Shuffled training data keeps it: its
    epochs showed no such wait (flowers' fine-tuning, 43-55 s an epoch), and on a GPU node
    the autotuner sizes its parallelism against the training step.

    Args:
        ds: the dataset.

    Returns:
        The same dataset with the autotuner off.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/sha256": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def decode_and_resize(image_bytes: tf.Tensor, size: int, geometry: Geometry = SQUASH) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes -> float32 [size, size, 3] in 0..255 (first GIF frame), shaped
    as `geometry` says. Gray and RGBA images become RGB (decode_image's channels=3).

    Args:
        image_bytes: a scalar string tensor, the encoded image.
        size: the side of the square output.
        geometry: squash, crop or pad (see Geometry).

    Returns:
        The float32 image tensor.
    """
    img = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    img = tf.cast(img, tf.float32)
    if geometry.resize == "crop":
        img = _centre_crop(img, size, geometry.crop_fraction)
    elif geometry.resize == "pad":
        img = _letterbox(img, size)
    else:
        img = _resize(img, tf.constant([size, size]))
    img = tf.clip_by_value(img, 0.0, 255.0)
    img.set_shape([size, size, 3])
    return img


def _resize(img: tf.Tensor, height_width: tf.Tensor) -> tf.Tensor:
    return tf.image.resize(img, height_width, method="bilinear", antialias=True)


def _scaled(img: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """The image's (height, width) times `scale`, rounded, at least 1."""
    sides = tf.cast(tf.shape(img)[:2], tf.float32) * scale
    return tf.maximum(1, tf.cast(tf.round(sides), tf.int32))


def _centre_crop(img: tf.Tensor, size: int, fraction: float) -> tf.Tensor:
    """Shorter side to size / fraction (as torchvision's Resize(256)), then the centre square."""
    shorter = tf.cast(tf.reduce_min(tf.shape(img)[:2]), tf.float32)
    hw = tf.maximum(size, _scaled(img, (size / fraction) / shorter))
    img = _resize(img, hw)
    return tf.image.crop_to_bounding_box(img, (hw[0] - size) // 2, (hw[1] - size) // 2, size, size)


def _letterbox(img: tf.Tensor, size: int) -> tf.Tensor:
    """Longer side to size, centred on a PAD_RGB square: every pixel of the image kept."""
    longer = tf.cast(tf.reduce_max(tf.shape(img)[:2]), tf.float32)
    hw = tf.minimum(size, _scaled(img, size / longer))
    img = _resize(img, hw)
    top, left = (size - hw[0]) // 2, (size - hw[1]) // 2
    pads = [[top, size - hw[0] - top], [left, size - hw[1] - left]]
    return tf.stack(
        [tf.pad(img[..., c], pads, constant_values=PAD_RGB[c]) for c in range(3)], axis=-1
    )


def split_files(examples_dir: str, split: str) -> list[str]:
    """A split's TFRecord shards, sorted, so every reader sees them in one order.

    Args:
        examples_dir: the ingest step's output.
        split: "train", "val" or "test".

    Returns:
        The shard paths.

    Raises:
        FileNotFoundError: the split has no shard.
    """
    files = sorted(tf.io.gfile.glob(os.path.join(examples_dir, f"{split}-*.tfrecord.gz")))
    if not files:
        raise FileNotFoundError(f"no TFRecords for split '{split}' in {examples_dir}")
    return files


def read_labels(folder: str) -> list[str] | None:
    """The class names in `folder` (an ingest output or a SavedModel's assets), exactly.

    labels.json keeps any Unicode name; labels.txt (one per line) is read for older outputs.
    None when neither file is there.

    Args:
        folder: an ingest output or a SavedModel's assets folder.

    Returns:
        The class names in label order, or None.
    """
    path = os.path.join(folder, "labels.json")
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    path = os.path.join(folder, "labels.txt")
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return [line.strip() for line in f if line.strip()]


def parsed_examples(examples_dir: str, split: str, deterministic: bool = True) -> tf.data.Dataset:
    """Every tf.Example of a split as a dict of FEATURES, read in parallel from the shards.

    Args:
        examples_dir: the ingest step's output.
        split: "train", "val" or "test".
        deterministic: keep the shards' order (slower).

    Returns:
        The dataset of feature dicts.
    """
    files = tf.data.Dataset.from_tensor_slices(split_files(examples_dir, split))
    ds = files.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=4,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    return ds.map(
        lambda r: tf.io.parse_single_example(r, FEATURES),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )


def raw_dataset(
    examples_dir: str,
    split: str,
    exclude_sha256: set[str] | None = None,
    deterministic: bool = True,
    canonical: bool = False,
) -> tf.data.Dataset:
    """(image_bytes, label) with parallel interleaved reads of the gzip shards.

    Args:
        examples_dir: the ingest step's output.
        split: "train", "val" or "test".
        exclude_sha256: images left out (validate's exclusions).
        deterministic: keep the shards' order (slower).
        canonical: read the images in one fixed order of their sha256, whatever the shards
            (see in_sha256_order).

    Returns:
        The dataset of (encoded image, label index) pairs.
    """

    def examples() -> tf.data.Dataset:
        ds = parsed_examples(examples_dir, split, deterministic or canonical)
        if exclude_sha256:
            bad = tf.constant(sorted(exclude_sha256))
            ds = ds.filter(
                lambda ex: tf.logical_not(tf.reduce_any(tf.equal(ex["image/sha256"], bad)))
            )
        return ds

    if canonical:
        files = split_files(examples_dir, split)
        passes = -(-sum(tf.io.gfile.stat(f).length for f in files) // SORT_PASS_BYTES)
        ds = in_sha256_order(examples, max(1, passes))
    else:
        ds = examples()
    return ds.map(
        lambda ex: (ex["image/encoded"], ex["label"]),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic or canonical,
    )


# encoded bytes sorted in memory at once by in_sha256_order: a larger split takes more passes
SORT_PASS_BYTES = 512 << 20
_ORDER_BUCKETS = 1 << 62  # tf.strings.to_hash_bucket_fast: FarmHash64, the same on every machine


def in_sha256_order(examples: Callable[[], tf.data.Dataset], passes: int) -> tf.data.Dataset:
    """The examples in a fixed order of their sha256 (FarmHash's), not the shards' order.

    Ingest's shards hold a split's records in an order Beam chooses, which differs between
    two ingests of the same folder (and after an incremental one). Seeded shuffles of that
    order gave `train.deterministic` runs different models from the same images: make
    demo's first run in a fresh clone scored 0.609, a re-run 0.660. Sorting first makes the
    order a function of the images alone. Each pass reads every shard, keeps the images
    whose hash falls in its share and sorts them in memory, so memory stays near twice
    SORT_PASS_BYTES of encoded images whatever the split's size (a pass, and its sorted
    copy); it runs again each epoch, before the epoch's first step; the passes take
    consecutive key ranges, so their number does not change the order.

    Args:
        examples: makes the parsed-example dataset (once per pass).
        passes: how many shares the hash range is cut into.

    Returns:
        The parsed examples, in hash order.
    """

    width = -(-_ORDER_BUCKETS // passes)  # pass i sorts the keys in [i * width, (i+1) * width)

    def share(index: tf.Tensor) -> tf.data.Dataset:
        def mine(ex):
            key = tf.strings.to_hash_bucket_fast(ex["image/sha256"], _ORDER_BUCKETS)
            return tf.equal(key // width, index)

        def in_order(batch):
            # by hash, then label: one photo filed under two classes has one sha256, and its
            # two records must not follow the shards' order either
            by_label = tf.argsort(batch["label"], stable=True)
            key = tf.strings.to_hash_bucket_fast(batch["image/sha256"], _ORDER_BUCKETS)
            order = tf.gather(by_label, tf.argsort(tf.gather(key, by_label), stable=True))
            return {name: tf.gather(t, order) for name, t in batch.items()}

        whole = examples().filter(mine).batch(1 << 40)  # the whole share as one batch
        return whole.map(in_order).unbatch()

    return tf.data.Dataset.range(passes).flat_map(share)


def first_images_by_sha256(examples_dir: str, split: str, n: int) -> dict[str, bytes]:
    """The `n` images of a split whose sha256 sort first (the manifest's): the same images from
    any ingest of the folder, whatever order the shards hold. Only the shards that the shard
    index says hold them are read, and reading stops once every one is found.

    Args:
        examples_dir: the ingest step's output.
        split: "train", "val" or "test".
        n: how many images.

    Returns:
        sha256 -> encoded image, in sha256 order; fewer when the split is smaller.
    """
    from graft.components.manifest import read_manifest, shards_holding

    shas = sorted({r["sha256"] for r in read_manifest(examples_dir) if r["split"] == split})
    wanted = set(shas[:n])
    if not wanted:
        return {}
    files = split_files(examples_dir, split)
    holding = shards_holding(examples_dir, wanted)
    if holding is not None:
        files = [f for f in files if os.path.basename(f) in holding] or files
    table = tf.constant(sorted(wanted))
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    ds = ds.map(lambda r: tf.io.parse_single_example(r, FEATURES))
    ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["image/sha256"], table)))
    found: dict[str, bytes] = {}
    for ex in read_once(ds).as_numpy_iterator():
        found[ex["image/sha256"].decode()] = ex["image/encoded"]
        if len(found) == len(wanted):
            break
    return dict(sorted(found.items()))


def augmentation_layers(cfg: AugmentConfig, seed: int = 0):
    """Keras preprocessing layers from the YAML; empty list when all are off."""
    import keras

    layers = []
    if cfg.flip != "none":
        layers.append(keras.layers.RandomFlip(cfg.flip, seed=seed))
    if cfg.rotation > 0:
        layers.append(keras.layers.RandomRotation(cfg.rotation, fill_mode="reflect", seed=seed))
    if cfg.zoom > 0:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="reflect", seed=seed))
    if cfg.translation > 0:
        layers.append(
            keras.layers.RandomTranslation(
                cfg.translation, cfg.translation, fill_mode="reflect", seed=seed
            )
        )
    if cfg.contrast > 0:
        layers.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed))
    return layers


SHUFFLE_BUFFER = 2048


def image_dataset(
    examples_dir: str,
    split: str,
    size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    exclude_sha256: set[str] | None = None,
    repeat: bool = False,
    cache: bool = False,
    deterministic: bool = False,
    workers: int = 1,
    geometry: Geometry = SQUASH,
) -> tf.data.Dataset:
    """Batched (pixels 0..255, label) for training or evaluation, with a known length.

    Each image is shaped by `geometry` first; the augmentation (zoom, translation, ...) then
    moves within that square, so its random crops follow the mode: a crop model trains on
    shifted centre crops, a pad model on its letterboxed whole images.

    The length comes from the ingest manifest. Keras needs it: on a dataset of unknown
    cardinality it probes one step past the end of every epoch, and that probe still
    increments optimizer.iterations (no data dependency), which shifts Adam's bias
    correction and every LR schedule by one step per epoch.

    Shuffled reads are unordered for speed; `deterministic` reads the images in a fixed order
    of their sha256 (in_sha256_order: any ingest of the same images gives the same order) and
    runs the augmentation sequentially, so its random draws land on the same images every run.

    `workers` > 1 (MultiWorkerMirroredStrategy): the dataset carries the auto-shard policy of
    `shard_policy`. Under FILE each worker holds a different number of images, so the dataset
    repeats without a length and the caller runs `steps_per_epoch` steps on every worker.

    Args:
        examples_dir: the ingest step's output.
        split: "train", "val" or "test".
        size: the model's input side.
        batch_size: images per batch.
        shuffle: shuffle the images each epoch.
        augment: the augmentation config; None for none.
        seed: the shuffle and augmentation seed.
        exclude_sha256: images left out (validate's exclusions).
        repeat: repeat without end (the caller gives steps_per_epoch).
        cache: cache the decoded images in memory.
        deterministic: ordered reads and sequential augmentation (see above).
        workers: the number of training machines.
        geometry: how each image is shaped to the input size.

    Returns:
        The batched dataset.
    """
    ordered = deterministic or not shuffle
    policy = shard_policy(len(split_files(examples_dir, split)), workers, training=shuffle)
    by_file = policy == tf.data.experimental.AutoShardPolicy.FILE
    # deterministic reads go in the images' own order, not the shards' (in_sha256_order);
    # under FILE sharding (several workers) each worker's order is its files'
    canonical = deterministic and not by_file
    ds = raw_dataset(
        examples_dir, split, exclude_sha256, deterministic=ordered, canonical=canonical
    )
    if by_file:
        repeat = True  # a worker's share is not the manifest's count: no length to assert
    else:
        n = count_examples(examples_dir, split, exclude_sha256)
        ds = ds.apply(tf.data.experimental.assert_cardinality(n))
    if shuffle and not cache:
        # shuffle the encoded bytes, before decoding: a buffer of decoded images must be filled
        # (every image in it decoded) before an epoch's first step, and holds size^2*12 bytes each
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(
        lambda b, y: (decode_and_resize(b, size, geometry), y),
        num_parallel_calls=AUTOTUNE,
        deterministic=ordered,
    )
    if cache:
        ds = ds.cache()
        if shuffle:
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, num_parallel_calls=AUTOTUNE)
    if augment is not None and augment.active:
        aug = augmentation_layers(augment, seed)

        def apply(x, y):
            for layer in aug:
                x = layer(x, training=True)
            return x, y

        ds = ds.map(apply, num_parallel_calls=None if deterministic else AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    ds = ds.prefetch(AUTOTUNE).with_options(options)
    return ds if repeat or shuffle else read_once(ds)


def shard_policy(
    num_files: int, workers: int, training: bool
) -> tf.data.experimental.AutoShardPolicy:
    """How tf.distribute splits a dataset over `workers` machines: FILE or DATA.

    FILE, for training with >= 2 shard files per worker: each worker reads and decodes only its
    own files. DATA makes every worker read and decode every image and keep 1/N of them: N times
    the input work, on an input pipeline that is already the CPU's bottleneck. But FILE splits
    by whole files, and hash-split shards are uneven: with one file per worker a worker's share
    is one shard's luck (and with fewer files than workers TF refuses FILE), while with two or
    more per worker the shares average out, and the repeat + steps_per_epoch of image_dataset
    absorbs the rest. So fewer files than that: DATA, exact to the example. Evaluation is DATA
    always: each validation image counted exactly once, as the guard's comparison needs.
    One worker: TF's AUTO, which does nothing without a cluster (replicas in one process split
    each batch instead).

    Args:
        num_files: the split's shard files.
        workers: the number of training machines.
        training: True for the training split, False for evaluation.

    Returns:
        FILE, DATA or AUTO.
    """
    if workers <= 1:
        return tf.data.experimental.AutoShardPolicy.AUTO
    if training and num_files >= 2 * workers:
        return tf.data.experimental.AutoShardPolicy.FILE
    return tf.data.experimental.AutoShardPolicy.DATA


def steps_per_epoch(
    ds: tf.data.Dataset,
    examples_dir: str,
    split: str,
    batch_size: int,
    exclude_sha256: set[str] | None = None,
) -> int | None:
    """Steps for `fit` on a repeating (FILE-sharded) dataset; None when it has its own length.

    Args:
        ds: the dataset image_dataset returned.
        examples_dir: the ingest step's output.
        split: "train", "val" or "test".
        batch_size: images per batch.
        exclude_sha256: images left out (validate's exclusions).

    Returns:
        Steps per epoch, or None.
    """
    if int(ds.cardinality()) >= 0:
        return None
    n = count_examples(examples_dir, split, exclude_sha256)
    return max(1, -(-n // batch_size))


def naive_image_dataset(
    examples_dir: str, split: str, size: int, batch_size: int, geometry: Geometry = SQUASH
) -> tf.data.Dataset:
    """Sequential reads and maps, no prefetch: the baseline the input benchmark beats.

    Args:
        examples_dir: the ingest step's output.
        split: "train", "val" or "test".
        size: the model's input side.
        batch_size: images per batch.
        geometry: how each image is shaped to the input size.

    Returns:
        The batched dataset.
    """
    ds = tf.data.TFRecordDataset(split_files(examples_dir, split), compression_type="GZIP")
    ds = ds.map(lambda r: tf.io.parse_single_example(r, FEATURES))
    ds = ds.map(lambda ex: (decode_and_resize(ex["image/encoded"], size, geometry), ex["label"]))
    return ds.batch(batch_size)


def count_examples(examples_dir: str, split: str, exclude_sha256: set[str] | None = None) -> int:
    """How many examples a split holds: from the ingest manifest, else by reading the shards.

    Args:
        examples_dir: the ingest step's output.
        split: "train", "val" or "test".
        exclude_sha256: images not counted (validate's exclusions).

    Returns:
        The count.
    """
    import json

    path = os.path.join(examples_dir, "manifest.jsonl")
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return sum(
            1 for r in rows if r["split"] == split and r["sha256"] not in (exclude_sha256 or ())
        )
    return sum(1 for _ in raw_dataset(examples_dir, split, exclude_sha256))
