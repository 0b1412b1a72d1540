"""Feature store: pooled base features per image, computed once, read by every step and run.

The forward pass over the frozen base is the costly part of the head stage, the advise
probes and the drift check. The store keys each image's pooled (global-average) features by
(image sha256, base fingerprint, input size and geometry, layer), so a re-run with another head
or learning rate, or a scheduled run over a few new images, runs the base over unseen images
only, and features of one geometry (data.resize) are never read for another.

Layout: <store>/<base fingerprint>/<size>[-<geometry>][-mirror][-view<v>-<settings>]/<layer>/
part-<uuid>.npz, each part holding `sha256` and `x` rows (a view's folder: views.View.key);
squash (the only geometry before data.resize) keeps the bare <size> folder, so a store
written before stays valid. A part is written whole under a temporary name and renamed, so a
killed run leaves no partial part and parallel writers never collide. The base fingerprint
hashes the name, kwargs and every weight of the full (uncut) base, so other weights compute anew.
`RowStore` is that folder of parts; served_scores.py keeps the served model's scores in one
too, under <store>/served/.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import uuid
import zipfile
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from graft.components import data as gdata
from graft.components import views as gviews
from graft.components.manifest import read_manifest
from graft.core.log import Progress, log

__all__ = [
    "FORWARD_IMAGES",
    "FeatureStore",
    "RowStore",
    "SplitFeatures",
    "base_fingerprint",
    "pooled_extractor",
    "split_features",
    "split_rows",
    "split_view_features",
]

gfile = tf.io.gfile

# Images passed through a base by this process, for tests and step results.
FORWARD_IMAGES = {"count": 0}


def base_fingerprint(base: keras.Model, name: str, kwargs: dict | None = None) -> str:
    """name + kwargs + a sha256 over every weight of the base (cheap: ~20 ms for MobileNetV2).

    Args:
        base: the base model, its weights loaded.
        name: the base's name, e.g. "mobilenet_v2".
        kwargs: the arguments it was built with.

    Returns:
        "<name>-<16 hex digits>": the key of the base's feature store.
    """
    h = hashlib.sha256(f"{name}|{sorted((kwargs or {}).items())}".encode())
    for w in base.weights:
        h.update(w.path.encode())
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return f"{name}-{h.hexdigest()[:16]}"


@dataclass
class RowStore:
    """One float vector per image sha256, in one folder of write-once parts.

    A part is written whole under a temporary name and renamed: a killed writer leaves no
    partial part, and parallel writers never collide. Read once per process and store.
    """

    folder: str
    _rows: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def load(self) -> dict[str, np.ndarray]:
        """Every stored row, sha256 -> vector."""
        if self._rows is not None:
            return self._rows
        rows: dict[str, np.ndarray] = {}
        if gfile.isdir(self.folder):
            for name in sorted(gfile.listdir(self.folder)):
                if not (name.startswith("part-") and name.endswith(".npz")):
                    continue
                path = os.path.join(self.folder, name)
                with gfile.GFile(path, "rb") as f:  # a read error (a bucket's outage) is raised
                    data = f.read()
                try:
                    z = np.load(io.BytesIO(data))
                    part = dict(zip(z["sha256"].tolist(), z["x"], strict=True))
                except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
                    # a part torn on disk (a crash before the OS wrote it): its rows are
                    # computed again, and it is set aside (read here, it failed every later
                    # run of the store)
                    aside = os.path.join(self.folder, f".unreadable-{name}")
                    with contextlib.suppress(Exception):  # another reader set it aside first
                        gfile.rename(path, aside, overwrite=True)
                    log(
                        f"features: {path} is unreadable ({type(e).__name__}: {e}); set aside "
                        f"as {aside}: its images are computed again",
                        level="warn",
                    )
                    continue
                rows.update(part)
        self._rows = rows
        return rows

    def put(self, shas: list[str], x: np.ndarray) -> None:
        if not len(shas):
            return
        gfile.makedirs(self.folder)
        buf = io.BytesIO()
        np.savez(buf, sha256=np.array(shas), x=x.astype(np.float32))
        name = f"part-{uuid.uuid4().hex}.npz"
        tmp = os.path.join(self.folder, f".tmp-{name}")
        with gfile.GFile(tmp, "wb") as f:
            f.write(buf.getvalue())
        gfile.rename(tmp, os.path.join(self.folder, name), overwrite=True)
        self.load().update(zip(shas, x.astype(np.float32), strict=True))


@dataclass
class FeatureStore:
    """One base at one input size and geometry: get/put pooled features per (layer, sha256)."""

    root: str
    fingerprint: str
    size: int
    geometry: gdata.Geometry = gdata.SQUASH
    # the mirror images' features (test-time flips): a folder of their own, "-mirror"
    mirror: bool = False
    # an augmented view's features (train_head.feature_views): a folder per view and settings
    view: gviews.View | None = None
    _layers: dict[str, RowStore] = field(default_factory=dict, repr=False)

    def folder(self, layer: str) -> str:
        geo = self.geometry.key
        shape = str(self.size) if geo == "squash" else f"{self.size}-{geo}"
        shape += "-mirror" if self.mirror else ""
        shape += f"-{self.view.key}" if self.view else ""
        return os.path.join(self.root, self.fingerprint, shape, layer)

    def _rows(self, layer: str) -> RowStore:
        if layer not in self._layers:
            self._layers[layer] = RowStore(self.folder(layer))
        return self._layers[layer]

    def load(self, layer: str) -> dict[str, np.ndarray]:
        """Every stored row of `layer`, sha256 -> vector (read once per process and store)."""
        return self._rows(layer).load()

    def put(self, layer: str, shas: list[str], x: np.ndarray) -> None:
        self._rows(layer).put(shas, x)


def pooled_extractor(base: keras.Model, preprocess: keras.layers.Layer, layers: list[str]):
    """pixels 0..255 -> [pooled output of each named layer of `base`], in inference mode.

    Args:
        base: the base model.
        preprocess: the base's input preprocessing layer.
        layers: names of the base's layers whose outputs are pooled.

    Returns:
        A keras.Model with one pooled output per named layer.
    """
    outs = [base.get_layer(name).output for name in layers]
    multi = keras.Model(
        base.inputs, [keras.layers.GlobalAveragePooling2D()(o) for o in outs], name="taps"
    )
    inputs = keras.Input(base.input_shape[1:], name="pixels")
    pooled = multi(preprocess(inputs), training=False)
    return keras.Model(inputs, pooled if isinstance(pooled, list) else [pooled])


@dataclass
class SplitFeatures:
    """Features of one split in manifest order: x per layer, labels, image sha256s."""

    x: dict[str, np.ndarray]
    y: np.ndarray
    sha256: list[str]
    computed: int = 0  # images this call ran through the base
    reused: int = 0  # images served from the store
    seconds: float = 0.0  # of the forward pass over the computed ones

    def joined(self, layers: list[str]) -> np.ndarray:
        """The named layers' pooled features side by side (a multi-depth head's input)."""
        if len(layers) == 1:
            return self.x[layers[0]]
        return np.concatenate([self.x[name] for name in layers], axis=1)


def split_rows(examples_dir: str, split: str, exclude: set[str] | None = None) -> list[dict]:
    """The ingest manifest's rows of a split, minus `exclude`, first occurrence of each image.

    Args:
        examples_dir: the ingest step's output.
        split: "train", "val" or "test".
        exclude: sha256s to leave out.

    Returns:
        The manifest rows, in manifest order.
    """
    seen: set[str] = set()
    rows = []
    for r in read_manifest(examples_dir):
        if r["split"] != split or r["sha256"] in (exclude or ()) or r["sha256"] in seen:
            continue
        seen.add(r["sha256"])
        rows.append(r)
    return rows


def split_features(
    examples_dir: str,
    split: str,
    layers: list[str],
    *,
    extractor,
    store: FeatureStore | None,
    exclude: set[str] | None = None,
    batch_size: int = 32,
    stage: str = "features",
    geometry: gdata.Geometry = gdata.SQUASH,
    only: set[str] | None = None,
    mirror: bool = False,
    view: gviews.View | None = None,
) -> SplitFeatures:
    """Pooled features of every image of a split (or of those in `only`), each shaped by
    `geometry` (and mirrored left-right with `mirror`); only images missing from the store
    are run.

    Args:
        examples_dir: the ingest step's output.
        split: "train", "val" or "test".
        layers: the base layers whose pooled features are wanted.
        extractor: pooled_extractor's model for those layers.
        store: the feature store to read and fill; None computes every image.
        exclude: sha256s to leave out (validate's exclusions).
        batch_size: images per forward pass.
        stage: the name to log the pass under.
        geometry: how each image is shaped to the input size.
        only: sha256s to keep; None keeps the whole split.
        mirror: flip every image left-right first.
        view: an augmented view of every image instead of the image (views.View), or None.

    Returns:
        The split's features, labels and sha256s, with counts of computed and reused images.

    Raises:
        ValueError: the store holds another geometry's (mirroring's, view's) features.
    """
    if store is not None and (store.geometry.key, store.mirror, store.view) != (
        geometry.key,
        mirror,
        view,
    ):
        raise ValueError(
            f"feature store for {_variant(store.geometry.key, store.mirror, store.view)} read "
            f"for {_variant(geometry.key, mirror, view)} images: one's features are never "
            "another's"
        )
    rows = split_rows(examples_dir, split, exclude)
    if only is not None:
        rows = [r for r in rows if r["sha256"] in only]
    labels = gdata.read_labels(examples_dir) or []
    index = {lab: i for i, lab in enumerate(labels)}
    shas = [r["sha256"] for r in rows]
    y = np.array([index[r["label"]] for r in rows], dtype=np.int64)
    have = {layer: (store.load(layer) if store else {}) for layer in layers}
    missing = sorted({s for s in shas if any(s not in have[layer] for layer in layers)})
    t0 = time.time()
    if missing:
        got = _run_base(
            examples_dir, split, missing, layers, extractor, batch_size, stage, geometry, mirror,
            view,
        )  # fmt: skip
        for layer in layers:
            if store:
                store.put(layer, got["sha256"], got[layer])
            else:
                have[layer] = dict(zip(got["sha256"], got[layer], strict=True))
            have[layer] = store.load(layer) if store else have[layer]
    x = {layer: np.stack([have[layer][s] for s in shas]) for layer in layers}
    if not shas:
        x = {layer: np.zeros((0, 0), np.float32) for layer in layers}
    return SplitFeatures(
        x,
        y,
        shas,
        computed=len(missing),
        reused=len(shas) - len(missing),
        seconds=time.time() - t0 if missing else 0.0,
    )


def _variant(geometry_key: str, mirror: bool, view) -> str:
    return geometry_key + " mirrored" * mirror + (f" {view.key}" if view else "")


def split_view_features(
    examples_dir: str,
    split: str,
    layers: list[str],
    views: int,
    *,
    store: FeatureStore | None,
    augment: gviews.ViewAugment = gviews.DEFAULT_AUGMENT,
    **kw,
) -> list[SplitFeatures]:
    """split_features of views 1..`views` of every image, each view through its own folder of
    `store` (the plain images' store; None computes every view).

    Args:
        examples_dir: the ingest step's output.
        split: "train", "val" or "test".
        layers: the base layers whose pooled features are wanted.
        views: how many views (1..views).
        store: the plain images' feature store, or None.
        augment: how the views are drawn.
        **kw: split_features' other arguments (extractor, exclude, geometry, ...).

    Returns:
        One SplitFeatures per view, each in the split's manifest order.
    """
    out = []
    for v in range(1, views + 1):
        view = gviews.View(v, augment)
        vstore = None
        if store is not None:
            vstore = FeatureStore(
                store.root, store.fingerprint, store.size, store.geometry, view=view
            )
        out.append(split_features(examples_dir, split, layers, store=vstore, view=view, **kw))
    return out


def _run_base(
    examples_dir, split, wanted, layers, extractor, batch_size, stage, geometry, mirror=False,
    view=None,
):  # fmt: skip
    """Decode and run the base over the images of `split` whose sha256 is in `wanted`
    (mirrored left-right with `mirror`: model.scores' flip on one image; or their augmented
    view `view`)."""
    size = int(extractor.input_shape[1])
    keys = tf.constant(wanted)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, tf.int32)), 0
    )
    # any order: each row goes out with its sha256, and callers key the rows by it
    ds = gdata.parsed_examples(examples_dir, split, deterministic=False)
    ds = ds.filter(lambda ex: table.lookup(ex["image/sha256"]) > 0)

    def pixels(ex):
        if view is not None:
            img = gviews.view_pixels(ex["image/encoded"], ex["image/sha256"], size, geometry, view)
        else:
            img = gdata.decode_and_resize(ex["image/encoded"], size, geometry)
        return (tf.reverse(img, axis=[1]) if mirror else img), ex["image/sha256"]

    ds = ds.map(pixels, num_parallel_calls=tf.data.AUTOTUNE)
    ds = gdata.read_once(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))
    # one traced function for every batch shape (an eager call per batch runs op by op), kept
    # on the extractor so the next split reuses the trace (~3 s on 2 cores for MobileNetV2)
    step = getattr(extractor, "_graft_step", None)
    if step is None:
        step = tf.function(
            lambda x: extractor(x, training=False),
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
        )
        extractor._graft_step = step
    out: dict[str, list] = {layer: [] for layer in layers}
    seen: list[str] = []
    unique: set[str] = set()
    t0 = time.time()
    with Progress(stage, len(wanted), "images") as bar:
        for x, sha in ds:
            feats = step(x)
            if not isinstance(feats, (list, tuple)):  # a one-output model returns the tensor
                feats = [feats]
            for layer, f in zip(layers, feats, strict=True):
                out[layer].append(f.numpy())
            seen.extend(s.decode() for s in sha.numpy())
            FORWARD_IMAGES["count"] += len(x)
            unique.update(seen[-len(x) :])  # an image filed twice is decoded twice, counted once
            bar.update(len(unique))
    # an image stored twice in one split (same bytes) is decoded twice; keep one row each
    first = {s: i for i, s in reversed(list(enumerate(seen)))}
    order = [first[s] for s in dict.fromkeys(seen)]
    res = {layer: np.concatenate(v)[order] if v else np.zeros((0, 0)) for layer, v in out.items()}
    res["sha256"] = [seen[i] for i in order]
    secs = time.time() - t0
    shown = geometry.resize + ", mirrored" * mirror + (f", {view.key}" if view else "")
    log(
        f"{stage}: base forward pass over {len(order)} {split} image(s) at {size} px "
        f"({shown}; {len(order) / max(secs, 1e-9):.0f}/s, "
        f"{secs:.1f}s)"
    )
    return res
