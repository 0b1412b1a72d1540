"""The library under the steps (components/fs, hashing, manifest, stats): local paths and
tf.io.gfile URLs read alike (ram:// stands in for a bucket), and the statistics as before."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from graft.components import fs
from graft.components.evaluate import metrics_from_probs
from graft.components.hashing import file_sha256, file_sha256_or_none
from graft.components.manifest import data_fingerprint, read_manifest
from graft.components.stats import wilson


@pytest.fixture(params=["local", "url"])
def folder(request, tmp_path):
    """An empty folder on the local disk, or at a URL (TensorFlow's in-memory file system)."""
    if request.param == "local":
        return str(tmp_path)
    url = f"ram://graft-test-{tmp_path.name}"
    fs.gfile().makedirs(url)
    return url


def test_files_read_alike_locally_and_at_a_url(folder):
    data = {"name": "café", "n": 3}
    fs.write_json_atomic(f"{folder}/a.json", data)
    fs.write_text(f"{folder}/torn.json", '{"name": "caf')
    fs.write_text(f"{folder}/list.json", "[1, 2]")
    fs.gfile().makedirs(f"{folder}/sub")
    assert fs.read_json(f"{folder}/a.json") == data
    assert fs.read_json(f"{folder}/torn.json") is None  # a torn hand edit reads as absent
    assert fs.read_json(f"{folder}/list.json") is None  # not an object
    assert fs.read_json(f"{folder}/missing.json") is None
    assert fs.read_text(f"{folder}/missing.txt") is None
    assert json.loads(fs.read_text(f"{folder}/a.json")) == data
    assert sorted(fs.listdir(folder)) == ["a.json", "list.json", "sub", "torn.json"]
    assert fs.isdir(f"{folder}/sub") and not fs.isdir(f"{folder}/a.json")
    assert fs.exists(f"{folder}/a.json") and not fs.exists(f"{folder}/b.json")


def test_push_file_calls_behave_alike_locally_and_at_a_url(folder):
    """fs.any_gfile: os and shutil on a local path, tf.io.gfile at a URL, one behaviour (what
    push relies on: copy and rename never replace a file, a missing path is told apart)."""
    g = fs.any_gfile
    g.makedirs(f"{folder}/v/sub")
    with g.GFile(f"{folder}/v/sub/a.txt", "w") as f:
        f.write("abc")
    g.copy(f"{folder}/v/sub/a.txt", f"{folder}/v/b.txt", overwrite=False)
    with g.GFile(f"{folder}/v/c.txt", "w") as f:
        f.write("other")
    refused = (FileExistsError, tf.errors.AlreadyExistsError)
    for call in (g.copy, g.rename):  # onto an existing file: refused, the file unchanged
        with pytest.raises(refused):
            call(f"{folder}/v/c.txt", f"{folder}/v/b.txt", overwrite=False)
        assert fs.read_text(f"{folder}/v/b.txt") == "abc"
    g.rename(f"{folder}/v/c.txt", f"{folder}/v/d.txt", overwrite=False)
    files = sorted(
        (d.rstrip("/").rsplit("/", 1)[-1], sorted(names)) for d, _, names in g.walk(f"{folder}/v")
    )
    assert files == [("sub", ["a.txt"]), ("v", ["b.txt", "d.txt"])]
    stat = g.stat(f"{folder}/v/d.txt")
    assert stat.length == 5 and stat.mtime_nsec >= 0  # ram:// keeps no times: 0
    with pytest.raises((FileNotFoundError, tf.errors.NotFoundError)) as missing:
        g.stat(f"{folder}/v/gone.txt")
    assert fs.is_not_found(missing.value) and not fs.is_not_found(ValueError("x"))
    g.rmtree(f"{folder}/v")
    assert not g.exists(f"{folder}/v")


def test_one_file_checksum_locally_and_at_a_url(folder):
    blob = bytes(range(256)) * 5000  # over one 1 MiB read
    with fs.open_file(f"{folder}/blob.bin", "wb") as f:
        f.write(blob)
    assert file_sha256(f"{folder}/blob.bin") == hashlib.sha256(blob).hexdigest()
    assert file_sha256_or_none(f"{folder}/missing.bin") is None
    with pytest.raises(Exception):  # noqa: B017 - FileNotFoundError or tf.errors.NotFoundError
        file_sha256(f"{folder}/missing.bin")


def test_the_manifest_reads_locally_and_at_a_url(folder):
    rows = [
        {"split": "train", "label": "a", "sha256": "1" * 64},
        {"split": "test", "label": "b", "sha256": "2" * 64},
    ]
    fs.write_text(f"{folder}/manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert read_manifest(folder) == rows
    assert data_fingerprint(rows) == data_fingerprint(rows[::-1])
    assert data_fingerprint(rows) != data_fingerprint(rows[:1])


def _textbook_wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_wilson_from_scipy_matches_the_formula_graft_used():
    for n in (1, 2, 7, 50, 333, 5000):
        for k in sorted({0, 1, n // 2, n - 1, n}):
            assert wilson(k, n) == pytest.approx(_textbook_wilson(k, n), abs=1e-7), (k, n)
    assert wilson(0, 0) == (0.0, 1.0)


def test_per_class_metrics_score_an_unpredicted_class_zero():
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0]])
    y = np.array([0, 0, 1, 1])  # class c: absent and never predicted
    m = metrics_from_probs(probs, y, ["a", "b", "c"], top_k=2, bins=5)
    assert m["confusion_matrix"] == [[2, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    empty = metrics_from_probs(np.zeros((0, 3)), np.zeros(0, int), ["a", "b", "c"], 2, 5)
    assert empty["confusion_matrix"] == [[0] * 3] * 3 and empty["macro_f1"] == 0.0
