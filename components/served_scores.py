"""The served model's scores per image, kept so a scheduled re-run scores only new images.

Evaluate compares the candidate with the served version on the test split, and drift reads
the served version's confidence on old and added images. Both ask `ServedScores.of` for rows
keyed by image sha256, from two sources tied to that one version:

- `test_scores.npz` in the version's own folder: export copies evaluate's scores of the
  candidate on its test split there (label order), the scores export's parity check compared
  the SavedModel with (`parity_max_abs_diff` in the model card). Pushed with the version, gone
  with it;
- `<feature store>/served/<model>/v<version>-<weights sha256[:16]>/`: rows scored through the
  version's `serving_default` by an earlier evaluate or drift check. Another version, or
  another model pushed under the same number (other weights), has another folder: nothing is
  read across versions.

Rows in neither are scored through `serving_default` on their encoded bytes (as TF Serving
would), in batches of 64, and added to the store.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from graft.components.features import RowStore
from graft.components.model import label_order_scores
from graft.components.push import pushed_weights_sha, version_path

SEED_FILE = "test_scores.npz"
BATCH = 64


def write_seed(path: str, shas: list[str], probs: np.ndarray, labels: list[str]) -> None:
    """A model's scores (label order) per image sha256, as export copies them beside it."""
    buf = io.BytesIO()
    np.savez(buf, sha256=np.array(shas), x=probs.astype(np.float32), labels=np.array(labels))
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buf.getvalue())


def read_seed(path: str, labels: list[str]) -> dict[str, np.ndarray]:
    """The rows of a seed file whose label order is `labels`; {} if absent or other labels."""
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path, "rb") as f:
        z = np.load(io.BytesIO(f.read()))
        if z["labels"].tolist() != list(labels):
            return {}
        return dict(zip(z["sha256"].tolist(), z["x"], strict=True))


@dataclass
class ServedScores:
    """One served version's scores: its seed, the store's rows, then its serving signature."""

    version_dir: str
    labels: list[str]
    store: RowStore | None = None
    seeded: int = 0  # rows answered from the version's test_scores.npz
    stored: int = 0  # rows answered from the store
    computed: int = 0  # rows scored through serving_default by this process
    _seed: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _fn: object = field(default=None, repr=False)

    @classmethod
    def of(
        cls,
        destination: str,
        model_name: str,
        version: int,
        labels: list[str],
        store_root: str | None,
    ) -> ServedScores:
        vdir = version_path(destination, model_name, version)
        weights = pushed_weights_sha(destination, model_name, version)
        store = None
        if store_root and weights:  # no checkpoint to identify the version: nothing stored
            key = f"v{version}-{weights[:16]}"
            store = RowStore(os.path.join(store_root, "served", model_name, key))
        seed = read_seed(os.path.join(vdir, SEED_FILE), labels)
        return cls(vdir, labels, store, _seed=seed)

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

    def counts(self) -> dict[str, int]:
        return {"seeded": self.seeded, "stored": self.stored, "computed": self.computed}
