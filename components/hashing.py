"""Checksums that say whether two files or two models are the same: of a file's bytes, and of
what a SavedModel computes (its weights by value, labels and serving settings)."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from graft.components import fs
from graft.core.paths import is_remote, join

__all__ = ["file_sha256", "file_sha256_or_none", "weights_sha256"]


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes, local or at a URL; raises when it cannot be read.

    Args:
        path: a local path or a tf.io.gfile URL (gs://, s3://...).

    Returns:
        The hex digest.

    Raises:
        OSError: the file cannot be read.
    """
    with fs.open_file(path, "rb") as f:
        if not is_remote(path):
            return hashlib.file_digest(f, "sha256").hexdigest()
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        return h.hexdigest()


def file_sha256_or_none(path: str) -> str | None:
    """file_sha256, or None for a file that cannot be read: recorded as unknown, not guessed.

    Args:
        path: a local path or a tf.io.gfile URL (gs://, s3://...).

    Returns:
        The hex digest, or None.
    """
    try:
        return file_sha256(path)
    except Exception:  # noqa: BLE001 - missing, unreadable, or a tf.errors.OpError on a URL
        return None


def weights_sha256(saved_model_dir: str) -> str | None:
    """What the served model computes: its variable values, labels and serving settings.

    Not the file bytes: re-saving the same weights (the fine-tune guard keeping the head-only
    model) writes a new model.keras and a new SavedModel, and both must count as the model
    already served. Variables are hashed by value, in an order that does not depend on their
    names. None when the directory holds no readable checkpoint.

    Args:
        saved_model_dir: the exported SavedModel directory.

    Returns:
        The hex digest, or None.
    """
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(join(saved_model_dir, "variables", "variables"))
        dtypes = reader.get_variable_to_dtype_map()
    except Exception:  # noqa: BLE001 - no checkpoint, or a broken one: nothing to compare
        return None
    digests = []
    for name in dtypes:
        if name == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        value = np.asarray(reader.get_tensor(name))
        h = hashlib.sha256(f"{value.dtype.str}{value.shape}".encode())
        if value.dtype == object:
            for item in value.ravel():
                h.update(item if isinstance(item, bytes) else str(item).encode())
        else:
            h.update(np.ascontiguousarray(value).tobytes())
        digests.append(h.hexdigest())
    total = hashlib.sha256("\n".join(sorted(digests)).encode())
    gfile = tf.io.gfile
    labels = join(saved_model_dir, "assets", "labels.txt")
    if gfile.exists(labels):
        with gfile.GFile(labels, "rb") as f:
            total.update(b"labels\n" + f.read())
    card_path = join(saved_model_dir, "model_card.json")
    if gfile.exists(card_path):  # settings that change the served graph but not the weights
        with gfile.GFile(card_path) as f:
            card = json.load(f)
        export_cfg = (card.get("config") or {}).get("export") or {}
        serving = {"image_size": card.get("image_size"), "flip": export_cfg.get("flip_average")}
        total.update(json.dumps(serving, sort_keys=True).encode())
    return total.hexdigest()
