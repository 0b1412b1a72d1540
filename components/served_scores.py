"""The served model's scores per image, kept so a scheduled re-run scores only new images.

Evaluate compares the candidate with the served version on the test split, and drift reads
the served version's confidence on old and added images. Both ask `ServedScores.of` for rows
keyed by image sha256, from two sources tied to that one version:

- `test_scores.npz` in the version's own folder: export copies evaluate's scores of the
  candidate on its test split there (label order) when they match the SavedModel's own on
  export's parity images, with the SavedModel's weights_sha256: read only while the version's
  weights are those. Pushed with the version, gone with it;
- `<feature store>/served/<model>/v<version>-<weights sha256[:16]>/`: rows an earlier
  evaluate or drift check scored for the version (as below). Another version, or
  another model pushed under the same number (other weights), has another folder: nothing is
  read across versions.

Rows in neither are scored, and added to the store: where the served version is a head on
the very base the caller runs (its trained model.keras still there, with the checksum the
version's marker records; the same base weights, input size, geometry and float32; no flip
averaging), by that head on the pooled features the feature store holds for the image (what
its SavedModel computes, to export's parity); else through `serving_default` on the encoded
bytes (as TF Serving would), in batches of 64.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from graft.components.features import RowStore
from graft.components.model import label_order_scores
from graft.components.registry import pushed_weights_sha, version_path

__all__ = [
    "SEED_FILE",
    "FeatureSource",
    "ServedScores",
    "read_seed",
    "served_head",
    "write_seed",
]

SEED_FILE = "test_scores.npz"
BATCH = 64


def write_seed(
    path: str, shas: list[str], probs: np.ndarray, labels: list[str], weights: str = ""
) -> None:
    """A model's scores (label order) per image sha256; `weights`: the weights_sha256 of the
    SavedModel they are the scores of (export writes it; evaluate, before export, cannot).

    Args:
        path: the seed file to write (test_scores.npz).
        shas: the images' sha256s.
        probs: their probabilities, one row per sha, columns in `labels` order.
        labels: the label order.
        weights: the SavedModel's weights_sha256; "" when not known yet.
    """
    buf = io.BytesIO()
    np.savez(
        buf,
        sha256=np.array(shas),
        x=probs.astype(np.float32),
        labels=np.array(labels),
        weights_sha256=np.array(weights),
    )
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buf.getvalue())


def read_seed(path: str, labels: list[str], weights: str | None = None) -> dict[str, np.ndarray]:
    """The rows of a seed file in label order `labels` and, if `weights` is given, written for
    that weights_sha256; {} if absent or written for other labels or weights.

    Args:
        path: the seed file (test_scores.npz).
        labels: the label order the caller's scores use.
        weights: the weights_sha256 the rows must have been written for; None takes any.

    Returns:
        Scores (one probability row) by image sha256.
    """
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path, "rb") as f:
        z = np.load(io.BytesIO(f.read()))
        if z["labels"].tolist() != list(labels):
            return {}
        if weights is not None and str(z["weights_sha256"]) != weights:
            return {}
        return dict(zip(z["sha256"].tolist(), z["x"], strict=True))


@dataclass
class FeatureSource:
    """The caller's base and its feature store: where a served head can read pooled features."""

    base: object  # keras.Model: the base (cut as configured) whose features the store holds
    store: object  # features.FeatureStore of that base, size and geometry
    image_size: int
    geometry: object  # data.Geometry


def served_head(destination: str, model_name: str, version: int, source: FeatureSource):
    """The served version's head on pooled features, or None where its output would not be the
    served model's: see the module docstring.

    Args:
        destination: the push destination holding the model's versions.
        model_name: the served model's name.
        version: the served version.
        source: the caller's base and feature store.

    Returns:
        A function from a batch of pooled features to class probabilities (numpy), or None.
    """
    import keras

    from graft.components.fitting import load_model
    from graft.components.hashing import file_sha256
    from graft.components.model import base_of, head_of, pooled_head
    from graft.components.registry import pushed_model_sha

    vdir = version_path(destination, model_name, version)
    try:
        with tf.io.gfile.GFile(os.path.join(vdir, "model_card.json")) as f:
            card = json.load(f)
    except (OSError, ValueError, tf.errors.OpError):
        return None
    path = (card.get("lineage") or {}).get("trained_model")
    flip = ((card.get("config") or {}).get("export") or {}).get("flip_average")
    if (
        flip
        or card.get("image_size") != source.image_size
        or card.get("input") != source.geometry.as_dict(source.image_size)
        or not path
        or not os.path.exists(path)
        or file_sha256(path) != pushed_model_sha(destination, model_name, version)
    ):
        return None
    model = load_model(path)
    base = base_of(model)
    if (
        base.dtype_policy.name != "float32"
        or head_of(model).layers[0].name != "pool"
        or base.layers[-1].name != source.base.layers[-1].name
        or not _same_weights(base, source.base)
    ):
        return None
    dim = int(base.output.shape[-1])
    head = pooled_head(head_of(model), dim)
    return lambda x: keras.ops.convert_to_numpy(head(x, training=False))


def _same_weights(a, b) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(wa, wb, strict=True)
    )


@dataclass
class ServedScores:
    """One served version's scores: its seed, the store's rows, then its serving signature."""

    version_dir: str
    labels: list[str]
    store: RowStore | None = None
    seeded: int = 0  # rows answered from the version's test_scores.npz
    stored: int = 0  # rows answered from the store
    computed: int = 0  # rows scored through serving_default by this process
    on_features: int = 0  # rows scored by the served head on stored features
    source: FeatureSource | None = None
    _where: tuple = ()  # destination, model name, version
    _seed: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _fn: object = field(default=None, repr=False)
    _head: object = field(default=None, repr=False)  # False: tried, not usable

    @classmethod
    def of(
        cls,
        destination: str,
        model_name: str,
        version: int,
        labels: list[str],
        store_root: str | None,
        source: FeatureSource | None = None,
    ) -> ServedScores:
        vdir = version_path(destination, model_name, version)
        weights = pushed_weights_sha(destination, model_name, version)
        store = None
        if store_root and weights:  # no checkpoint to identify the version: nothing stored
            key = f"v{version}-{weights[:16]}"
            store = RowStore(os.path.join(store_root, "served", model_name, key))
        # the version's own scores, if its weights are still those they were written for
        seed = read_seed(os.path.join(vdir, SEED_FILE), labels, weights) if weights else {}
        return cls(
            vdir,
            labels,
            store,
            source=source,
            _where=(destination, model_name, version),
            _seed=seed,
        )

    def _serving(self):
        if self._fn is None:
            self._fn = tf.saved_model.load(self.version_dir).signatures["serving_default"]
        return self._fn

    def scores(self, shas: list[str], blobs: list[bytes]) -> np.ndarray:
        """Scores in label order, one row per (sha256, encoded image) pair."""
        stored = self.store.load() if self.store else {}
        rows: dict[str, np.ndarray] = {}
        for s in shas:
            if s in rows:
                continue
            if s in self._seed:
                rows[s] = self._seed[s]
                self.seeded += 1
            elif s in stored:
                rows[s] = stored[s]
                self.stored += 1
        todo = list({s: b for s, b in zip(shas, blobs, strict=True) if s not in rows}.items())
        if todo and self.source is not None:
            got = self._on_features([s for s, _ in todo])
            rows.update(got)
            todo = [(s, b) for s, b in todo if s not in got]
        if todo:
            fn = self._serving()
            new = np.concatenate(
                [
                    label_order_scores(
                        fn(image_bytes=tf.constant([b for _, b in todo[i : i + BATCH]]))
                    ).numpy()
                    for i in range(0, len(todo), BATCH)
                ]
            )
            self.computed += len(todo)
            rows.update(zip((s for s, _ in todo), new, strict=True))
            if self.store:
                self.store.put([s for s, _ in todo], new)
        if not shas:
            return np.zeros((0, len(self.labels)), np.float32)
        return np.stack([rows[s] for s in shas]).astype(np.float32)

    def _on_features(self, shas: list[str]) -> dict[str, np.ndarray]:
        """Rows the served head scores on stored features (stored too); {} where it cannot."""
        if self._head is None:
            self._head = served_head(*self._where, self.source) or False
        if self._head is False:
            return {}
        layer = self.source.base.layers[-1].name
        feats = self.source.store.load(layer)
        have = [s for s in shas if s in feats]
        if not have:
            return {}
        probs = self._head(np.stack([feats[s] for s in have])).astype(np.float32)
        self.on_features += len(have)
        if self.store:
            self.store.put(have, probs)
        return dict(zip(have, probs, strict=True))

    def counts(self) -> dict[str, int]:
        return {
            "seeded": self.seeded,
            "stored": self.stored,
            "on_features": self.on_features,
            "computed": self.computed,
        }
