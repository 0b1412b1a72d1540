"""Scheduled retraining with real Beam and TensorFlow: incremental ingest (a grown, shrunk,
edited or relabelled folder gives what a fresh ingest gives, decoding only what changed), and
three scheduled runs with the local runner: run 1 pushes; run 2 (10% more images) decodes and
featurises only those; run 3 (a grayscale, blurred batch) is flagged by the drift check,
blocked, and pushes nothing.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import ingest_at as _ingest
from conftest import step_summary as _summary
from conftest import tiny_config
from PIL import Image, ImageFilter

from graft.components import features as gfeat
from graft.components.demo_data import generate
from graft.components.drift import DriftBlocked
from graft.components.ingest import find_previous, ingest
from graft.components.registry import versions
from graft.core.config import DataConfig, parse_config
from graft.core.locks import readers_lock
from graft.pipeline.runner import run_pipeline


def _add(src: Path, dst: Path, prefix: str, drift: bool = False) -> int:
    """Copy src's <class>/*.jpg into dst's class folders; drift: grayscale and blurred."""
    n = 0
    for f in sorted(src.rglob("*.jpg")):
        target = dst / f.parent.name / f"{prefix}{f.name}"
        if drift:
            img = Image.open(f).convert("L").filter(ImageFilter.GaussianBlur(2)).convert("RGB")
            img.save(target, quality=90)
        else:
            shutil.copy(f, target)
        n += 1
    return n


# ---------------------------------------------------------------- incremental ingest


def _rows(out: Path) -> list[tuple]:
    """Manifest rows as a fresh ingest would write them (without the file stat)."""
    rows = [json.loads(line) for line in open(out / "manifest.jsonl")]
    return sorted(
        tuple(sorted((k, str(v)) for k, v in r.items() if k not in ("file_size", "mtime_ns")))
        for r in rows
    )


def _records(out: Path) -> dict[str, list[tuple]]:
    """Every split's records, decoded from the shards: (sha256, label id, label, source)."""
    import tensorflow as tf

    from graft.components import data as gdata

    spec = {
        k: tf.io.FixedLenFeature([], tf.int64 if k == "label" else tf.string)
        for k in ("image/sha256", "label", "label/text", "source", "image/encoded")
    }
    got = {}
    for split in ("train", "val", "test"):
        ds = tf.data.TFRecordDataset(gdata.split_files(str(out), split), compression_type="GZIP")
        got[split] = sorted(
            tuple(v.numpy() for v in tf.io.parse_single_example(r, spec).values()) for r in ds
        )
    return got


def _same_as_fresh(root: Path, out: Path, tmp: Path, **kw) -> None:
    fresh = tmp / f"fresh-{out.name}"
    _ingest(root, fresh, incremental=False, **kw)
    assert _rows(out) == _rows(fresh)
    assert _records(out) == _records(fresh)
    a, b = (json.load(open(d / "stats.json")) for d in (out, fresh))
    for key in ("counts", "written", "quarantined", "labels", "data_fingerprint", "per_class"):
        assert a[key] == b[key], key


def test_incremental_ingest_decodes_only_what_changed(tmp_path):
    root = tmp_path / "images"
    generate(root, classes=2, per_class=30, size=32, seed=1)
    (root / "circle" / "broken.jpg").write_bytes(b"not an image")
    steps = tmp_path / "steps"
    first = _ingest(root, steps / "a")
    assert first.incremental["previous"] is None and first.quarantined == 1
    # grow: 6 new files; shrink: 2 removed; edit: one rewritten with other bytes, one rewritten
    # with other bytes but its old size and mtime (the sha256 tells); touch: one, same bytes
    generate(tmp_path / "more", classes=2, per_class=3, size=32, seed=2)
    for f in (tmp_path / "more").rglob("*.jpg"):
        shutil.copy(f, root / f.parent.name / f"new_{f.name}")
    files = sorted(root.rglob("*.jpg"))
    files = [f for f in files if not f.name.startswith(("new_", "broken"))]
    for f in files[:2]:
        f.unlink()
    files[2].write_bytes(files[3].read_bytes())
    forged = files[4]
    st = forged.stat()
    data = bytearray(forged.read_bytes())
    data[-3] ^= 0xFF  # in the JPEG's last scan bytes: still decodes, other sha256
    forged.write_bytes(bytes(data))
    os.utime(forged, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(files[5])
    second = _ingest(root, steps / "b")
    inc = second.incremental
    assert inc["previous"] == str(steps / "a")
    assert (inc["added"], inc["removed"], inc["changed"], inc["retried"]) == (6, 2, 3, 1)
    assert inc["reused"] == 60 - 2 - 3 and inc["decoded"] == 6 + 3 + 1
    stats = json.load(open(steps / "b" / "stats.json"))
    assert stats["incremental"] == inc and stats["quarantined"] == 1
    _same_as_fresh(root, steps / "b", tmp_path)
    # nothing changed: no decode at all, every shard kept whole
    third = _ingest(root, steps / "c")
    assert third.incremental["reused"] == third.written and third.incremental["decoded"] == 1
    _same_as_fresh(root, steps / "c", tmp_path)


def test_incremental_ingest_relabels_and_resplits_like_a_fresh_ingest(tmp_path):
    """A new class shifts the label ids of the classes after it; a new test folder changes what
    is carved from train. Reused records follow both, exactly as a fresh ingest."""
    root = tmp_path / "images"
    generate(root / "train", classes=2, per_class=30, size=32, seed=3)
    steps = tmp_path / "steps"
    _ingest(root, steps / "a")
    generate(tmp_path / "extra", classes=3, per_class=10, size=32, seed=4)
    extra = sorted(p.name for p in (tmp_path / "extra").iterdir())
    # a class that sorts first: every old record's label id moves up by one
    shutil.copytree(tmp_path / "extra" / extra[-1], root / "train" / "aaa")
    shutil.copytree(tmp_path / "extra", root / "test")
    before = {m["sha256"]: m for m in map(json.loads, open(steps / "a" / "manifest.jsonl"))}
    r = _ingest(root, steps / "b")
    assert r.incremental["reused"] == 60 and r.labels[0] == "aaa"
    after = {m["sha256"]: m for m in map(json.loads, open(steps / "b" / "manifest.jsonl"))}
    assert all(after[s]["label"] == m["label"] for s, m in before.items())
    _same_as_fresh(root, steps / "b", tmp_path)


def test_incremental_ingest_finds_only_its_own_source(tmp_path):
    """The previous ingest is the newest sibling of the same source and decoding settings."""
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, classes=2, per_class=8, size=32, seed=5)
    generate(b, classes=2, per_class=8, size=32, seed=6)
    steps = tmp_path / "steps"
    _ingest(a, steps / "1")
    _ingest(b, steps / "2")
    assert _ingest(a, steps / "3").incremental["previous"] == str(steps / "1")
    assert _ingest(a, steps / "4", max_side=64).incremental["previous"] is None
    assert _ingest(a, steps / "5").incremental["previous"] == str(steps / "3")
    assert _ingest(a, steps / "6", incremental=False).incremental["previous"] is None
    # a previous output whose shards are gone: those files are decoded, nothing is lost
    for f in (steps / "6").glob("*.tfrecord.gz"):
        f.unlink()
    r = ingest(
        DataConfig(path=str(a), image_size=32, num_workers=1), str(steps / "7"), str(steps / "6")
    )
    assert r.written == 16 and r.incremental["reused"] == 0 and r.incremental["changed"] == 16
    # the previous ingest is held for reading while it is reused: one that another run is
    # rewriting (--no-cache holds it exclusively) is not waited for, nor read half-deleted
    newest = find_previous(DataConfig(path=str(a), image_size=32), str(steps / "8"))
    assert newest == str(steps / "7")
    with readers_lock(newest, "a --no-cache rewrite", False, 0):
        r = _ingest(a, steps / "8")
    assert r.incremental["previous"] is None and r.incremental["decoded"] == 16
    assert _ingest(a, steps / "9").incremental["previous"] == str(steps / "8")
    with readers_lock(str(steps / "8"), "a rewrite", False, 0):  # ingest let go of its hold
        pass


# ---------------------------------------------------------------- three scheduled runs


@pytest.mark.slow  # trains a model, three times
def test_three_scheduled_runs_reuse_then_flag_drift(tmp_path):
    data = tmp_path / "images"
    generate(data, classes=3, per_class=40, size=48, seed=0)
    raw = tiny_config(
        tmp_path,
        data,
        drift__action="block",
        features__store=str(tmp_path / "features"),
        fine_tune__enabled=False,
    )
    cfg = parse_config(raw)
    models = tmp_path / "models"

    # run 1: nothing served, so no drift check; pushes version 1
    run1 = run_pipeline(cfg)
    assert run1["status"] == "succeeded"
    drift1 = _summary(run1, "drift")
    assert drift1["checked"] is False and "nothing served" in drift1["reasons"][0]
    assert _summary(run1, "push")["pushed"]
    assert _summary(run1, "ingest")["incremental"]["previous"] is None
    served = versions(str(models), "tiny")
    assert len(served) == 1

    # run 2: 10% more images of the same kind
    generate(tmp_path / "more", classes=3, per_class=4, size=48, seed=7)
    added = _add(tmp_path / "more", data, "new_")
    before = gfeat.FORWARD_IMAGES["count"]
    run2 = run_pipeline(cfg)
    assert run2["status"] == "succeeded"
    inc = _summary(run2, "ingest")["incremental"]
    assert inc["previous"] == run1["steps"]["ingest"]["output"]
    assert (inc["added"], inc["reused"], inc["decoded"], inc["changed"], inc["removed"]) == (
        added,
        120,
        added,
        0,
        0,
    )
    drift2 = _summary(run2, "drift")
    assert drift2["checked"] is True and drift2["flagged"] is False, drift2
    d2 = json.load(open(Path(run2["steps"]["drift"]["output"]) / "drift.json"))
    assert d2["compared"]["added"] == added and d2["served_version"] == served[-1]
    # the base ran over the new images only (drift, first): the head stage found every train
    # and val image in the store, evaluate every test image (run 1's evaluate stored the old)
    forward = gfeat.FORWARD_IMAGES["count"] - before
    assert forward == added, forward
    scoring = json.load(open(Path(run2["steps"]["evaluate"]["output"]) / "evaluation.json"))[
        "scoring"
    ]
    assert scoring["head_only"]["from"] == "stored features"
    assert scoring["head_only"]["computed"] == 0
    assert scoring["baseline"]["computed"] == 0  # stored, or the served head on features
    head = _summary(run2, "train_head")
    if head.get("features_computed") is not None:
        assert head["features_computed"] == 0 and head["features_reused"] > 100, head
    pushed_after_2 = versions(str(models), "tiny")

    # run 3: a drifted batch (grayscale, blurred); drift.action block stops the run
    generate(tmp_path / "drifted", classes=3, per_class=10, size=48, seed=9)
    _add(tmp_path / "drifted", data, "drift_", drift=True)
    with pytest.raises(DriftBlocked, match="drift.action is block"):
        run_pipeline(cfg, run_id="run3")
    rec = json.load(open(Path(cfg.runner.run_root) / "run3" / "run.json"))
    assert rec["status"] == "failed" and rec["steps"]["drift"]["status"] == "failed"
    assert rec["steps"]["ingest"]["summary"]["incremental"]["added"] == 30
    assert "push" not in rec["steps"] or rec["steps"]["push"]["status"] == "pending"
    assert versions(str(models), "tiny") == pushed_after_2  # nothing pushed
    d3 = json.load(open(Path(rec["steps"]["drift"]["output"]) / "drift.json"))
    # drift compares with the served model's data: run 2's images too when it was not pushed
    since_served = 30 + (0 if _summary(run2, "push").get("pushed") else added)
    assert d3["flagged"] and d3["blocked"] and d3["compared"]["added"] == since_served
    assert d3["metrics"]["js_colourfulness"]["flagged"], d3["metrics"]
    assert d3["kfp_metrics"]["drift_flagged"] == 1
