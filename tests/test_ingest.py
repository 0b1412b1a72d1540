"""Ingest and validate on real files through the real Beam DirectRunner."""

import hashlib
import io
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import ingest_at as _ingest
from conftest import read_manifest as _manifest
from PIL import Image

from graft.components.demo_data import generate
from graft.components.ingest import ingest
from graft.components.validate import ValidationFailed, validate
from graft.core.config import DataConfig, ValidateConfig


def _split_sets(out):
    sets = {}
    for m in _manifest(out):
        sets.setdefault(m["split"], set()).add(m["sha256"])
    return sets


def plant_bad_inputs(root: Path) -> dict[str, str]:
    """Every awkward input the issue lists; returns file -> expected outcome."""
    generate(root, classes=2, per_class=12, size=32, seed=3)
    good = next((root / "circle").glob("*.jpg")).read_bytes()
    c = root / "circle"
    (c / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (c / "zero.jpg").write_bytes(b"")
    (c / "notes.jpg").write_text("this is not an image")
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(c / "rgba.png")
    Image.new("L", (33, 35), 100).save(c / "gray.jpg")
    Image.new("CMYK", (36, 36), (10, 200, 30, 0)).save(c / "cmyk.jpg")
    Image.fromarray(np.full((20, 24), 40000, dtype=np.uint16)).save(c / "sixteen.png")
    Image.new("RGB", (5000, 5000), (0, 90, 200)).save(root / "square" / "huge.jpg", quality=50)
    (root / "emptyclass").mkdir()
    return {
        "truncated.jpg": "quarantine",
        "zero.jpg": "quarantine",
        "notes.jpg": "quarantine",
        "rgba.png": "written",
        "gray.jpg": "written",
        "cmyk.jpg": "written",
        "sixteen.png": "written",
        "huge.jpg": "written",
    }


def test_bad_inputs_are_written_or_quarantined(tmp_path):
    expect = plant_bad_inputs(tmp_path / "in")
    r = _ingest(tmp_path / "in", tmp_path / "out", max_side=512)
    manifest = {Path(m["path"]).name: m for m in _manifest(tmp_path / "out")}
    quarantine = json.loads((tmp_path / "out" / "quarantine.json").read_text())
    q_by_name = {Path(q["path"]).name: q for q in quarantine}
    for name, outcome in expect.items():
        if outcome == "written":
            assert name in manifest, name
        else:
            assert name in q_by_name and q_by_name[name]["reason"], name
    assert "truncated" in q_by_name["truncated.jpg"]["reason"]
    assert q_by_name["zero.jpg"]["reason"] == "zero-byte file"
    assert "not an image" in q_by_name["notes.jpg"]["reason"]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["empty_classes"] == ["emptyclass"] and "emptyclass" not in q_by_name
    assert manifest["cmyk.jpg"]["mode"] == "CMYK" and manifest["sixteen.png"]["mode"].startswith(
        "I;16"
    )
    assert (
        manifest["huge.jpg"]["resized"]
        and max(manifest["huge.jpg"]["height"], manifest["huge.jpg"]["width"]) == 512
    )
    for label, row in stats["per_class"].items():
        assert row["written"] + row["quarantined"] == row["input"], label
    assert r.written + r.quarantined == r.input_files
    # every stored image decodes to 8-bit RGB as training and serving decode it (JPEG and PNG
    # are stored as given, so a gray or 16-bit one keeps its channels until decoded)
    import tensorflow as tf

    from graft.components.data import raw_dataset

    for blob, _ in raw_dataset(str(tmp_path / "out"), "train").as_numpy_iterator():
        img = tf.io.decode_image(blob, channels=3, expand_animations=False)
        assert img.dtype == tf.uint8 and img.shape[-1] == 3


def test_split_stability_and_determinism(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    generate(tmp_path / "a", classes=2, per_class=100, size=32, seed=1)
    _ingest(tmp_path / "a", tmp_path / "o1", num_workers=2)
    _ingest(tmp_path / "a", tmp_path / "o2")
    # both runs stay on the local FnApiRunner: Beam's DirectRunner would first try to download Prism
    assert "Prism" not in caplog.text
    assert (tmp_path / "o1/labels.txt").read_bytes() == (tmp_path / "o2/labels.txt").read_bytes()
    assert _split_sets(tmp_path / "o1") == _split_sets(tmp_path / "o2")
    before = {m["sha256"]: m["split"] for m in _manifest(tmp_path / "o1")}
    assert len(before) == 200 and set(before.values()) == {"train", "val", "test"}
    generate(tmp_path / "new", classes=2, per_class=25, size=32, seed=2)
    for f in (tmp_path / "new").rglob("*.jpg"):
        shutil.copy(f, tmp_path / "a" / f.parent.name / ("new_" + f.name))
    _ingest(tmp_path / "a", tmp_path / "o3")
    after = {m["sha256"]: m["split"] for m in _manifest(tmp_path / "o3")}
    assert len(after) == 250
    assert all(after[s] == split for s, split in before.items())


def test_leakage_across_split_folders_blocks(tmp_path):
    root = tmp_path / "pre"
    for split in ("train", "val", "test"):
        generate(
            root / split,
            classes=2,
            per_class=6,
            size=32,
            seed={"train": 1, "val": 2, "test": 3}[split],
        )
    dup = root / "train" / "circle" / "circle_0000.jpg"
    shutil.copy(dup, root / "test" / "circle" / "leaked.jpg")
    _ingest(root, tmp_path / "out")
    assert Counter(m["split"] for m in _manifest(tmp_path / "out"))["train"] == 12
    with pytest.raises(ValidationFailed, match=r"leakage: (?=.*circle_0000.jpg)(?=.*leaked.jpg)"):
        validate(
            ValidateConfig(min_per_class={"train": 1}), str(tmp_path / "out"), str(tmp_path / "v")
        )
    report = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert not report["passed"] and any("leakage" in e for e in report["errors"])
    r = validate(
        ValidateConfig(min_per_class={"train": 1}, leakage="drop_from_eval"),
        str(tmp_path / "out"),
        str(tmp_path / "v2"),
    )
    assert r.passed and len(r.exclude_from_eval) == 1


def test_same_image_under_two_classes_blocks(tmp_path):
    generate(tmp_path / "in", classes=2, per_class=10, size=32)
    shutil.copy(tmp_path / "in/circle/circle_0001.jpg", tmp_path / "in/square/copied.jpg")
    _ingest(tmp_path / "in", tmp_path / "out")
    with pytest.raises(ValidationFailed, match=r"labelled \['circle', 'square'\]"):
        validate(
            ValidateConfig(min_per_class={"train": 1}), str(tmp_path / "out"), str(tmp_path / "v")
        )


def test_validate_min_per_class_names_class_and_split(tmp_path):
    generate(tmp_path / "in", classes=2, per_class=5, size=32)
    _ingest(tmp_path / "in", tmp_path / "out")
    with pytest.raises(
        ValidationFailed, match=r"class '\w+' has \d image\(s\) in split 'train'; minimum is 50"
    ):
        validate(
            ValidateConfig(min_per_class={"train": 50}), str(tmp_path / "out"), str(tmp_path / "v")
        )


def test_csv_manifest_source(tmp_path):
    generate(tmp_path / "imgs", classes=2, per_class=8, size=32)
    rows = ["path,label,split"]
    for f in sorted((tmp_path / "imgs").rglob("*.jpg")):
        split = "test" if f.stem.endswith("7") else "train"
        rows.append(f"{f.relative_to(tmp_path)},{f.parent.name},{split}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    r = ingest(
        DataConfig(source="csv", path=str(tmp_path / "m.csv"), num_workers=1), str(tmp_path / "out")
    )
    assert r.written == 16 and r.counts["test"] == {"circle": 1, "square": 1}
    # Excel's "CSV UTF-8" starts with a byte-order mark: the header is still the header
    (tmp_path / "bom.csv").write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")
    r = ingest(
        DataConfig(source="csv", path=str(tmp_path / "bom.csv"), num_workers=1),
        str(tmp_path / "out-bom"),
    )
    assert r.written == 16 and r.quarantined == 0


def test_an_image_a_csv_lists_rewritten_in_place_changes_the_ingest_key(tmp_path):
    """The CSV's own size and mtime were the whole key: fixing a listed image in place reused
    the cached ingest, with the old pixels."""
    from graft.components.ingest import source_fingerprint

    generate(tmp_path / "imgs", classes=2, per_class=3, size=16)
    files = sorted((tmp_path / "imgs").rglob("*.jpg"))
    lines = [f"{f.relative_to(tmp_path)},{f.parent.name}" for f in files]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
    cfg = DataConfig(source="csv", path=str(tmp_path / "m.csv"))
    key = source_fingerprint(cfg)
    assert source_fingerprint(cfg) == key
    files[0].write_bytes(files[1].read_bytes())  # replaced in place, the CSV untouched
    assert source_fingerprint(cfg) != key


def test_a_file_beside_the_class_folders_is_reported_once(tmp_path):
    generate(tmp_path / "imgs", classes=2, per_class=4, size=32)
    (tmp_path / "imgs" / "README.txt").write_text("photos from the field trip")
    r = ingest(DataConfig(path=str(tmp_path / "imgs"), num_workers=1), str(tmp_path / "out"))
    notes = json.loads((tmp_path / "out" / "quarantine.json").read_text())
    rows = notes if isinstance(notes, list) else notes.get("files", notes.get("quarantined", []))
    beside = [q for q in rows if str(q.get("path", "")).endswith("README.txt")]
    assert len(beside) == 1 and r.quarantined == 1, rows


@pytest.mark.parametrize("found", [["test"], ["val"], ["train", "test"], []])
def test_carved_fractions_sum_to_one_whatever_splits_are_found(found):
    """Unsplit images are hashed into train and the missing splits in the configured shares
    (with only test found, train was counted twice: the shares summed to 0.53 and every hash
    above that went to val, about half the data)."""
    from graft.components.ingest import split_of
    from graft.components.sources import carve_fractions

    shares = carve_fractions(found, {"train": 0.7, "val": 0.15, "test": 0.15})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert set(shares) == {"train"} | ({"val", "test"} - set(found))
    digests = (hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000))
    got = Counter(split_of(d, shares) for d in digests)
    for split, share in shares.items():
        assert abs(got[split] / 20_000 - share) < 0.02, (split, got)


def test_tfds_source_prepared_locally(tmp_path):
    import tensorflow_datasets as tfds

    class GraftTinyTfds(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(),
                        "label": tfds.features.ClassLabel(names=["cat", "dog"]),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(0, 16),
                "test": self._generate_examples(100, 6),
            }

        def _generate_examples(self, start, n):
            rng = np.random.default_rng(start)
            for i in range(n):
                yield (
                    i,
                    {"image": rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), "label": i % 2},
                )

    GraftTinyTfds(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    cfg = DataConfig(
        source="tfds",
        tfds_name="graft_tiny_tfds",
        tfds_data_dir=str(tmp_path / "tfds"),
        tfds_splits={"train": "auto", "test": "test"},
        num_workers=1,
    )
    r = ingest(cfg, str(tmp_path / "out"))
    assert r.labels == ["cat", "dog"] and r.written == 22 and sum(r.counts["test"].values()) >= 6
    with pytest.raises(FileNotFoundError, match="not prepared"):
        ingest(
            DataConfig(
                source="tfds", tfds_name="graft_tiny_tfds", tfds_data_dir=str(tmp_path / "none")
            ),
            str(tmp_path / "out2"),
        )


def test_cli_ingest_without_config(tmp_path, capsys):
    from graft.pipeline.cli import main

    generate(tmp_path / "imgs", classes=2, per_class=6, size=32)
    (tmp_path / "imgs/circle/broken.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    assert (
        main(
            [
                "ingest",
                str(tmp_path / "imgs"),
                "--out",
                str(tmp_path / "out"),
                "--set",
                "data.num_workers=1",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["written"] == 12 and out["quarantined"] == 1


def test_demo_data_is_deterministic(tmp_path):
    generate(tmp_path / "a", classes=3, per_class=4, size=32, seed=5)
    generate(tmp_path / "b", classes=3, per_class=4, size=32, seed=5)
    for f in (tmp_path / "a").rglob("*.jpg"):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
    generate(tmp_path / "s", classes=3, per_class=2, size=32, task="source")
    assert not {p.name for p in (tmp_path / "s").iterdir()} & {
        p.name for p in (tmp_path / "a").iterdir()
    }
    img = Image.open(io.BytesIO(next((tmp_path / "a").rglob("*.jpg")).read_bytes()))
    assert img.size == (32, 32)


def test_examples_are_real_tf_examples_built_without_tensorflow():
    """Beam workers build Examples without importing TF; TF must read them as its own."""
    import subprocess
    import sys

    import tensorflow as tf

    from graft.components.example_proto import serialize

    data = serialize({"image/encoded": b"\x00\xffjpeg", "label": 3, "label/text": b"roses"})
    ex = tf.train.Example.FromString(data)
    assert ex.features.feature["image/encoded"].bytes_list.value == [b"\x00\xffjpeg"]
    assert ex.features.feature["label"].int64_list.value == [3]
    parsed = tf.io.parse_single_example(
        data,
        {
            "label": tf.io.FixedLenFeature([], tf.int64),
            "label/text": tf.io.FixedLenFeature([], tf.string),
        },
    )
    assert int(parsed["label"]) == 3 and parsed["label/text"].numpy() == b"roses"
    probe = "import sys, graft.components.ingest; print('tensorflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.stdout.strip() == "False", (
        "a Beam worker importing components.ingest would load all of TF"
    )


def test_auto_workers_pick_one_in_memory_worker_for_small_inputs(tmp_path, monkeypatch):
    """Below the measured crossover multi-processing is slower; an explicit choice always wins."""
    import os

    from apache_beam.options.pipeline_options import PipelineOptions

    from graft.components.ingest import (
        MULTI_PROCESS_MIN_BYTES,
        _beam_options,
        auto_workers,
        local_runner,
    )

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    (tmp_path / "a.jpg").write_bytes(b"\xff" * 1000)
    small = [{"path": str(tmp_path / "a.jpg"), "label": "a"}]
    big = [{"path": "mem", "label": "a", "data": b"\0" * MULTI_PROCESS_MIN_BYTES}]
    cfg = DataConfig(path=str(tmp_path))
    assert auto_workers(cfg, small) == 1
    assert auto_workers(cfg, big) == 4
    assert auto_workers(DataConfig(path=str(tmp_path), num_workers=3), small) == 3
    opts = _beam_options(cfg, small).get_all_options()
    assert opts["direct_num_workers"] == 1 and opts["direct_running_mode"] == "in_memory"
    opts = _beam_options(
        DataConfig(path=str(tmp_path), beam_args=["--direct_num_workers=3"]), small
    ).get_all_options()
    assert opts["direct_num_workers"] == 3 and opts["direct_running_mode"] == "multi_processing"
    for args in ([], ["--runner=direct"], ["--runner=DirectRunner"]):
        opts = _beam_options(DataConfig(path=str(tmp_path), beam_args=args), small)
        assert opts.get_all_options()["direct_running_mode"] == "in_memory", args
        assert type(local_runner(opts)).__name__ == "FnApiRunner", args
    assert (
        local_runner(PipelineOptions(["--runner=DataflowRunner"])) is None
    )  # other runners: Beam's choice


def test_validate_reports_exact_duplicates_within_a_split(tmp_path):
    """40 identical all-black images in one class (issue 29.11): one group of 40 in one split."""
    generate(tmp_path / "in", classes=2, per_class=20, size=32, seed=5)
    black = tmp_path / "in" / "circle"
    for k in range(40):
        Image.new("RGB", (32, 32)).save(black / f"black-{k}.png")
    _ingest(tmp_path / "in", tmp_path / "out")
    res = validate(
        ValidateConfig(min_per_class={"train": 1, "val": 0, "test": 0}),
        str(tmp_path / "out"),
        str(tmp_path / "v"),
    )
    (split,) = [s for s, d in res.duplicates.items() if d["largest"][0]["count"] == 40]
    dup = res.duplicates[split]
    assert dup["largest"][0]["label"] == "circle" and dup["extra_copies"] >= 39
    assert any(f"exact duplicates in {split}" in w and "40 copies" in w for w in res.warnings)
    written = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert written["duplicates"][split]["largest"][0]["count"] == 40


def test_a_remote_folder_is_keyed_by_its_listing_not_its_name(tmp_path, monkeypatch, capsys):
    """A remote data.path (gs://...) keys ingest's cache, and Kubeflow's ingest freshness, by
    one listing of names, sizes and update times (Beam's FileSystems; exercised here on a local
    folder taken as remote): new photos make a new key. One that cannot be listed gets a new
    key every time, never a stale ingest."""
    import graft.components.ingest as ingest_module
    from graft.components.ingest import source_fingerprint

    generate(tmp_path / "imgs", classes=2, per_class=3, size=16)
    monkeypatch.setattr(ingest_module, "_is_remote", lambda path: True)
    cfg = DataConfig(path=str(tmp_path / "imgs"))
    key = source_fingerprint(cfg)
    assert source_fingerprint(cfg) == key  # unchanged: the cached ingest is the right one
    shutil.copy(next((tmp_path / "imgs").rglob("*.jpg")), tmp_path / "imgs" / "circle" / "new.jpg")
    assert source_fingerprint(cfg) != key
    csv_cfg = DataConfig(source="csv", path=str(tmp_path / "m.csv"))
    (tmp_path / "m.csv").write_text("path,label\n")
    assert source_fingerprint(csv_cfg) == source_fingerprint(csv_cfg)
    unlisted = DataConfig(path="nosuchscheme://bucket/photos")
    assert source_fingerprint(unlisted) != source_fingerprint(unlisted)
    assert "cannot list nosuchscheme://bucket/photos" in capsys.readouterr().err


def test_a_missing_remote_image_is_quarantined_not_the_end_of_the_run(tmp_path):
    """tf.io.gfile's NotFound is no OSError: one deleted object listed in a CSV ended the
    whole ingest. ram:// stands in for a remote filesystem (TensorFlow's in-memory one)."""
    import tensorflow as tf

    generate(tmp_path / "imgs", classes=2, per_class=4, size=32)
    rows = ["path,label"]
    for i, f in enumerate(sorted((tmp_path / "imgs").rglob("*.jpg"))):
        remote = f"ram://graft-test-{tmp_path.name}/{i}.jpg"
        tf.io.gfile.copy(str(f), remote, overwrite=True)
        rows.append(f"{remote},{f.parent.name}")
    rows.append(f"ram://graft-test-{tmp_path.name}/deleted.jpg,circle")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    r = ingest(
        DataConfig(source="csv", path=str(tmp_path / "m.csv"), num_workers=1), str(tmp_path / "out")
    )
    assert r.written == 8 and r.quarantined == 1
    text = (tmp_path / "out" / "quarantine.json").read_text()
    assert "deleted.jpg" in text and "NotFoundError" in text


def test_an_unreadable_folder_is_reported_not_lost(tmp_path, monkeypatch):
    """os.walk skips a folder it cannot list unless told: its images vanished unreported, and an
    unreadable class folder was noted as "empty" and left out of the labels. (This suite runs
    as root, which reads every folder, so the listing's PermissionError is raised by hand.)"""
    import os as real_os

    from graft.components.sources import list_folder

    generate(tmp_path / "imgs", classes=3, per_class=3, size=16)
    (tmp_path / "imgs" / "circle" / "more").mkdir()
    shutil.copy(
        next((tmp_path / "imgs" / "circle").glob("*.jpg")), tmp_path / "imgs" / "circle" / "more"
    )
    locked = {str(tmp_path / "imgs" / "circle" / "more"), str(tmp_path / "imgs" / "square")}
    scandir = real_os.scandir

    def guarded(path="."):
        if str(path) in locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(real_os, "scandir", guarded)
    listing = list_folder(str(tmp_path / "imgs"))
    reasons = {Path(r["path"]).name: r["reason"] for r in listing.rejected}
    assert reasons == dict.fromkeys(("more", "square"), "unreadable folder: Permission denied")
    assert not any(n.get("reason") == "empty class folder" for n in listing.notes)


def test_shards_an_unfinished_attempt_left_are_not_read_beside_the_new_ones(tmp_path):
    """The readers glob <split>-*.tfrecord.gz: a shard a killed attempt wrote under another name
    (another shard count) would be read as data too."""
    generate(tmp_path / "imgs", classes=2, per_class=4, size=32)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-00000-of-00007.tfrecord.gz").write_bytes(b"left by a killed attempt")
    r = ingest(DataConfig(path=str(tmp_path / "imgs"), num_workers=1), str(out))
    assert not (out / "train-00000-of-00007.tfrecord.gz").exists()
    shards = {p.name for p in out.glob("*.tfrecord.gz")}
    indexed = set(json.loads((out / "shards.json").read_text()))
    assert shards == indexed and r.written == 8
