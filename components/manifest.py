"""The ingest manifest (manifest.jsonl: one row per image, with its split, label and sha256),
its content fingerprint, and the images validate set aside (validation.json), as every step
that reads the examples needs them."""

from __future__ import annotations

import hashlib
import json
import os

from graft.components import fs
from graft.core.paths import join

__all__ = [
    "SHARD_INDEX",
    "data_fingerprint",
    "excluded_from_eval",
    "excluded_from_train",
    "read_manifest",
    "shards_holding",
]

MANIFEST_FILE = "manifest.jsonl"
SHARD_INDEX = "shards.json"  # shard file -> [source path, sha256, label id] of its records
VALIDATION_FILE = "validation.json"


def read_manifest(examples_dir: str) -> list[dict]:
    """Every manifest row, local or at a URL; raises when the file is missing.

    Args:
        examples_dir: the ingest step's output directory.

    Returns:
        One dict per written image, in file order.

    Raises:
        FileNotFoundError: the manifest is missing.
    """
    with fs.open_file(join(examples_dir, MANIFEST_FILE)) as f:
        text = f.read()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def shards_holding(examples_dir: str, wanted: set[str]) -> set[str] | None:
    """The shard file names (ingest's shard index) that hold the `wanted` images, so a reader
    of a few images opens those shards only; None when the index is missing or lacks one.

    Args:
        examples_dir: the ingest step's output directory.
        wanted: image sha256s.

    Returns:
        Shard file names (no folder), or None: read every shard.
    """
    try:
        with fs.open_file(join(examples_dir, SHARD_INDEX)) as f:
            index = json.loads(f.read())
    except Exception:  # noqa: BLE001 - missing or unreadable (tf's NotFoundError at a URL)
        return None
    names, found = set(), set()
    for name, records in index.items():
        mine = {r[1] for r in records} & wanted
        if mine:
            names.add(name)
            found |= mine
    return names if found == wanted else None


def data_fingerprint(manifest: list[dict]) -> str:
    """The written examples' content: every image's sha256 with its label and split.

    Same images, labels and splits, same fingerprint, wherever the files live or however they
    are named. 16 hex digits, like the step fingerprints.

    Args:
        manifest: the rows read_manifest returns.

    Returns:
        16 hex digits.
    """
    h = hashlib.sha256()
    for key in sorted((m["split"], m["label"], m["sha256"]) for m in manifest):
        h.update(("\t".join(key) + "\n").encode())
    return h.hexdigest()[:16]


def _excluded(validation_dir: str | None, keys: tuple[str, ...]) -> set[str]:
    if not validation_dir:
        return set()
    path = os.path.join(validation_dir, VALIDATION_FILE)
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        report = json.load(f)
    return {d for k in keys for d in report.get(k, [])}


def excluded_from_eval(validation_dir: str | None) -> set[str]:
    """sha256s that validate dropped from val/test: leaked ones and label conflicts.

    Args:
        validation_dir: the validate step's output, or None when it did not run.

    Returns:
        The sha256s; empty when there is no validation output.
    """
    return _excluded(validation_dir, ("exclude_from_eval", "exclude_from_all"))


def excluded_from_train(validation_dir: str | None) -> set[str]:
    """sha256s that validate dropped from training: label conflicts.

    Args:
        validation_dir: the validate step's output, or None when it did not run.

    Returns:
        The sha256s; empty when there is no validation output.
    """
    return _excluded(validation_dir, ("exclude_from_all",))
