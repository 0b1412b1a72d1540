"""Augmented views for the frozen head (train_head.feature_views): K per training image.

With cached features the head never sees an augmented image: the base runs once per image.
A view gives that variety back at the store's price: view v of an image is one fixed
augmentation of its decoded pixels (a random-resized crop, a horizontal flip, a small
brightness, contrast and saturation jitter), drawn from a seed of (the image's sha256, v), so
it is the same image in every run, process and batch order. The feature store keeps each
view's pooled features in a folder named by v and the settings (`View.key`): a re-run pays
nothing, and other settings never read stale views.

`view_training_rows` and `views_hits` are advise's k-fold probe of K views: each fold's
classifier trains on its training images and their views, never on a held-out image's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from graft.components import data as gdata

__all__ = [
    "DEFAULT_AUGMENT",
    "VIEW_VERSION",
    "View",
    "ViewAugment",
    "cv_splits",
    "view_pixels",
    "view_training_rows",
    "views_hits",
]

# the algorithm's version: part of every view's store key, so a change here never reads
# views drawn the old way
VIEW_VERSION = 1


@dataclass(frozen=True)
class ViewAugment:
    """How a view is drawn from an image: modest, so a view is still the image's class."""

    flip: bool = True  # a horizontal flip with probability 1/2
    min_area: float = 0.5  # the crop keeps 0.5..1 of the (squared) image's area
    max_ratio: float = 4 / 3  # and has an aspect ratio within 3/4..4/3
    brightness: float = 0.1  # +- this share of 255
    contrast: float = 0.1  # x 0.9..1.1
    saturation: float = 0.1  # x 0.9..1.1

    def __post_init__(self):
        if not 0 < self.min_area <= 1 or self.max_ratio < 1:
            raise ValueError(f"view crop: area in (0, 1], ratio >= 1, not {self}")

    @property
    def key(self) -> str:
        """Every setting and the version, readable in the store's folder name."""
        return (
            f"v{VIEW_VERSION}-f{int(self.flip)}-a{self.min_area:g}-r{self.max_ratio:.3g}"
            f"-b{self.brightness:g}-c{self.contrast:g}-s{self.saturation:g}"
        )


DEFAULT_AUGMENT = ViewAugment()


@dataclass(frozen=True)
class View:
    """View `index` (1, 2, ...) of every image, drawn with `augment`."""

    index: int
    augment: ViewAugment = field(default=DEFAULT_AUGMENT)

    def __post_init__(self):
        if self.index < 1:
            raise ValueError(f"view index from 1 (0 is the image itself), not {self.index}")

    @property
    def key(self) -> str:
        return f"view{self.index}-{self.augment.key}"


def view_pixels(
    image_bytes: tf.Tensor, sha256: tf.Tensor, size: int, geometry: gdata.Geometry, view: View
) -> tf.Tensor:
    """Encoded image -> float32 [size, size, 3] pixels of its view `view`, in 0..255.

    The image is shaped by `geometry` at a size the smallest crop still fills at `size`, then
    cropped, resized to `size`, flipped and jittered, each with a seed of (sha256, view):
    deterministic per image and view, whatever the batch or the order.

    Args:
        image_bytes: a scalar string tensor, the encoded image.
        sha256: a scalar string tensor, the image's sha256 (hex): seeds the view.
        size: the side of the square output.
        geometry: how the image is shaped to a square first (data.resize).
        view: which view, drawn with which settings.

    Returns:
        The float32 view pixels.
    """
    aug = view.augment
    big = math.ceil(size / math.sqrt(aug.min_area))
    img = gdata.decode_and_resize(image_bytes, big, geometry)
    seed = tf.stack(
        [tf.strings.to_hash_bucket_fast(sha256, 2**31 - 1), tf.constant(view.index, tf.int64)]
    )
    seeds = tf.random.experimental.stateless_split(seed, 5)
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(img),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seeds[0],
        min_object_covered=0.0,
        aspect_ratio_range=(1 / aug.max_ratio, aug.max_ratio),
        area_range=(aug.min_area, 1.0),
        max_attempts=20,
    )
    img = tf.image.resize(tf.slice(img, begin, extent), [size, size], antialias=True)
    if aug.flip:
        img = tf.image.stateless_random_flip_left_right(img, seeds[1])
    if aug.brightness:
        img = tf.image.stateless_random_brightness(img, aug.brightness * 255.0, seeds[2])
    if aug.contrast:
        img = tf.image.stateless_random_contrast(img, 1 - aug.contrast, 1 + aug.contrast, seeds[3])
    if aug.saturation:
        img = tf.image.stateless_random_saturation(
            img, 1 - aug.saturation, 1 + aug.saturation, seeds[4]
        )
    img = tf.clip_by_value(img, 0.0, 255.0)
    img.set_shape([size, size, 3])
    return img


# ------------------------------------------------------------------ advise's k-fold probe


def view_training_rows(fit: np.ndarray, n: int, k: int) -> np.ndarray:
    """A fold's training rows in [images; view 1; ...; view k] (each block n rows, in image
    order): its training images and their k views, never a held-out image's.

    Args:
        fit: the fold's training images (indices into the n images).
        n: the number of images.
        k: views per image.

    Returns:
        Row indices into the stacked matrix; row r is of image r % n.
    """
    fit = np.asarray(fit, dtype=np.int64)
    return np.concatenate([fit + n * v for v in range(k + 1)])


def cv_splits(y: np.ndarray, folds: int, groups=None, seed: int = 0):
    """advise.probe's folds: stratified, a group (data.group_by) in one fold, fixed by seed.

    Args:
        y: the class indices.
        folds: k, lowered to the smallest class's count (at least 2).
        groups: each image's group, or None.
        seed: seeds the shuffle.

    Returns:
        A list of (training indices, held-out indices), one per fold.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    k = max(2, min(folds, int(np.bincount(y).min())))
    n_groups = len(set(groups.tolist())) if groups is not None else 0
    grouped = 2 <= n_groups < len(groups)  # one group cannot be split: plain folds then
    if grouped:
        cv = StratifiedGroupKFold(min(k, n_groups), shuffle=True, random_state=seed)
        return list(cv.split(np.zeros(len(y)), y, groups))
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def views_hits(
    x: np.ndarray, x_views: list[np.ndarray], y: np.ndarray, folds: int, groups=None, seed=0
) -> np.ndarray:
    """Out-of-fold hits of advise's linear probe with each fold trained on its images plus
    their views (none: advise.probe's hits); held-out images are scored un-augmented.

    The fits run on one BLAS thread: these matrices are small, and on 2 busy cores two
    threads made one fit ~18x slower (7 s against 0.4 s for 225 rows of 1,280 features).

    Args:
        x: pooled features of the images.
        x_views: pooled features of views 1..k of the same images, in the same order.
        y: the class indices.
        folds: k of the cross-validation, lowered to the smallest class's count.
        groups: each image's group (data.group_by), or None.
        seed: seeds the folds.

    Returns:
        One bool per image: whether the fold that held it out classified it right.
    """
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    n, k = len(y), len(x_views)
    stacked = np.concatenate([x, *x_views]) if k else x
    y_rows = np.tile(y, k + 1)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=500, tol=1e-3))
    hits = np.zeros(n, bool)
    with threadpool_limits(1):
        for fit, held in cv_splits(y, folds, groups, seed):
            rows = view_training_rows(fit, n, k)
            clf = clone(pipe).fit(stacked[rows], y_rows[rows])
            hits[held] = clf.predict(x[held]) == y[held]
    return hits
