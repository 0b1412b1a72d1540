"""Data as users bring it: split layouts, groups, near-duplicates, hostile files, paths."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ingest_at as _ingest
from conftest import read_manifest as _manifest
from conftest import tiny_config
from PIL import Image

from graft.components.demo_data import generate
from graft.components.ingest import ingest
from graft.components.sources import DataLayoutError
from graft.components.validate import ValidationFailed, validate
from graft.core.config import ValidateConfig, load_config

LAYOUTS = {
    "classes": (None,),
    "train+val": ("train", "val"),
    "train+test": ("train", "test"),
    "train only": ("train",),
    "training+validation": ("training", "validation"),
    "train+valid+testing": ("train", "valid", "testing"),
}
CANONICAL = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}


def make_layout(
    root: Path, folders: tuple, per_class: int = 30, seed: int = 0, size: int = 32
) -> Path:
    """Demo images in root/<class> (folders == (None,)) or root/<split folder>/<class>."""
    for n, folder in enumerate(folders):
        target = root if folder is None else root / folder
        generate(target, classes=3, per_class=per_class, size=size, seed=seed + n)
    return root


def _folder_split(path: str, root: Path) -> str | None:
    first = Path(path).relative_to(root).parts[0]
    return CANONICAL.get(first, first) if first in {*CANONICAL, "train", "val", "test"} else None


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_ingests_into_three_splits(layout, tmp_path):
    folders = LAYOUTS[layout]
    root = make_layout(tmp_path / "in", folders)
    r = _ingest(root, tmp_path / "out")
    assert all(sum(r.counts[s].values()) > 0 for s in ("train", "val", "test")), r.counts
    present = {CANONICAL.get(f, f) for f in folders if f}
    for m in _manifest(tmp_path / "out"):
        came_from = _folder_split(m["path"], root)
        if came_from in present - {"train"}:
            assert m["split"] == came_from, m  # a given split is kept as it is
        elif came_from == "train" and present == {"train", "val", "test"}:
            assert m["split"] == "train"
        elif came_from == "train":
            assert m["split"] == "train" or m["split"] not in present, m  # carved: missing only
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["found_splits"] == sorted(present, key=("train", "val", "test").index)


def test_carved_split_is_stable_when_images_are_added(tmp_path):
    root = make_layout(tmp_path / "in", ("train", "val"), per_class=25)
    _ingest(root, tmp_path / "o1")
    before = {m["path"]: m["split"] for m in _manifest(tmp_path / "o1")}
    assert "test" in set(before.values())
    generate(tmp_path / "more", classes=3, per_class=40, size=32, seed=99)
    for cls in os.listdir(tmp_path / "more"):
        for f in os.listdir(tmp_path / "more" / cls):
            shutil.copy(tmp_path / "more" / cls / f, root / "train" / cls / f"new_{f}")
    _ingest(root, tmp_path / "o2")
    after = {m["path"]: m["split"] for m in _manifest(tmp_path / "o2")}
    assert len(after) > len(before)
    assert all(after[p] == s for p, s in before.items())


def test_flat_folder_single_class_and_mixed_layouts_show_the_layouts(tmp_path):
    flat = tmp_path / "flat"
    generate(tmp_path / "g", classes=2, per_class=3, size=32)
    flat.mkdir()
    for f in (tmp_path / "g" / "circle").iterdir():
        shutil.copy(f, flat / f.name)
    with pytest.raises(DataLayoutError, match="no class folders(.|\n)*ROOT/<class>/<image>"):
        _ingest(flat, tmp_path / "o")
    single = tmp_path / "single"
    shutil.copytree(tmp_path / "g" / "circle", single / "circle")
    with pytest.raises(DataLayoutError, match="one class folder \\('circle'\\)(.|\n)*ROOT/train"):
        _ingest(single, tmp_path / "o")
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "g", mixed / "train")
    shutil.copytree(tmp_path / "g" / "square", mixed / "square")
    with pytest.raises(DataLayoutError, match="mixes split folders"):
        _ingest(mixed, tmp_path / "o")


# ------------------------------------------------------------------ groups


def _grouped_csv(tmp_path: Path, groups: int = 30, per_group: int = 3) -> Path:
    generate(tmp_path / "img", classes=2, per_class=groups * per_group // 2, size=32, seed=5)
    rows = ["path,label,patient"]
    files = sorted((tmp_path / "img").rglob("*.jpg"))
    for n, f in enumerate(files):
        rows.append(f"{f.relative_to(tmp_path)},{f.parent.name},p{n % groups:03d}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "manifest.csv"


def test_group_by_column_puts_each_group_in_one_split(tmp_path):
    csv = _grouped_csv(tmp_path)
    _ingest(csv, tmp_path / "out", source="csv", group_by="patient")
    rows = _manifest(tmp_path / "out")
    splits_of: dict[str, set] = {}
    for m in rows:
        splits_of.setdefault(m["group"], set()).add(m["split"])
    assert len(splits_of) == 30 and all(len(s) == 1 for s in splits_of.values())
    assert {s for v in splits_of.values() for s in v} == {"train", "val", "test"}
    res = validate(
        ValidateConfig(min_per_class={"train": 1}), str(tmp_path / "out"), str(tmp_path / "v")
    )
    assert res.passed and not res.crossing_groups


def test_group_like_column_without_group_by_is_reported(tmp_path):
    csv = _grouped_csv(tmp_path)
    _ingest(csv, tmp_path / "out", source="csv")
    res = validate(
        ValidateConfig(min_per_class={"train": 1}), str(tmp_path / "out"), str(tmp_path / "v")
    )
    assert res.crossing_groups  # per-image split: patients straddle splits
    assert any("data.group_by: patient" in w for w in res.warnings)


def test_group_by_regex_and_presplit_leakage(tmp_path):
    root = make_layout(tmp_path / "in", ("train", "val"), per_class=20)
    # file names are <class>_NNNN.jpg: group by the number, so 'circle_0001' in train and in
    # val (generated with another seed) share group 0001 -> leakage across the given splits
    cfg = ValidateConfig(min_per_class={"train": 1, "val": 1, "test": 0})
    _ingest(root, tmp_path / "out", group_by=r"_(\d+)\.")
    with pytest.raises(ValidationFailed, match="group"):
        validate(cfg, str(tmp_path / "out"), str(tmp_path / "v"))
    res = validate(
        cfg.model_copy(update={"leakage": "drop_from_eval"}),
        str(tmp_path / "out"),
        str(tmp_path / "v2"),
    )
    assert res.passed and res.crossing_groups and res.exclude_from_eval
    # a val image that is also a byte copy of its train twin is leaked twice over (the same
    # bytes, the same group): excluded, and counted, once
    twin = sorted((root / "train" / "circle").glob("*.jpg"))[0]
    shutil.copy(twin, root / "val" / "circle" / twin.name)
    _ingest(root, tmp_path / "out2", group_by=r"_(\d+)\.")
    res = validate(
        cfg.model_copy(update={"leakage": "drop_from_eval"}),
        str(tmp_path / "out2"),
        str(tmp_path / "v3"),
    )
    assert len(res.exclude_from_eval) == len(set(res.exclude_from_eval)), res.exclude_from_eval


# ------------------------------------------------------------------ near-duplicates


def test_near_duplicate_copy_in_test_is_flagged_and_nothing_else(tmp_path):
    root = make_layout(tmp_path / "in", ("train", "val", "test"), per_class=25, size=64)
    src = sorted((root / "train" / "circle").glob("*.jpg"))[3]
    img = Image.open(src).convert("RGB")
    img = img.resize((int(img.width * 0.9), int(img.height * 0.9)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=70)
    (root / "test" / "circle" / "copy.jpg").write_bytes(buf.getvalue())
    _ingest(root, tmp_path / "out")
    cfg = ValidateConfig(min_per_class={"train": 1, "val": 1, "test": 1})
    res = validate(cfg, str(tmp_path / "out"), str(tmp_path / "v"))
    pairs = {(Path(p["eval_path"]).name, Path(p["train_path"]).name) for p in res.near_duplicates}
    assert pairs == {("copy.jpg", src.name)}, res.near_duplicates
    assert any("near-duplicate" in w for w in res.warnings)
    with pytest.raises(ValidationFailed, match="near-duplicate"):
        validate(
            cfg.model_copy(update={"near_duplicates": "error"}),
            str(tmp_path / "out"),
            str(tmp_path / "v2"),
        )


def test_small_eval_splits_warn_with_their_interval(tmp_path):
    root = make_layout(tmp_path / "in", (None,), per_class=30)
    _ingest(root, tmp_path / "out")
    res = validate(ValidateConfig(), str(tmp_path / "out"), str(tmp_path / "v"))
    small = [w for w in res.warnings if w.startswith("small test split")]
    assert small and "±" in small[0] and "95%" in small[0]


# ------------------------------------------------------------------ labels and hostile files


def test_unicode_labels_round_trip_and_bad_names_fail(tmp_path):
    generate(tmp_path / "g", classes=2, per_class=6, size=32)
    good = tmp_path / "good"
    shutil.copytree(tmp_path / "g" / "circle", good / "café ☕")
    shutil.copytree(tmp_path / "g" / "square", good / "日本 の")
    r = _ingest(good, tmp_path / "o")
    assert json.loads((tmp_path / "o" / "labels.json").read_text()) == ["café ☕", "日本 の"]
    assert r.labels == ["café ☕", "日本 の"]
    newline = tmp_path / "newline"
    shutil.copytree(tmp_path / "g" / "circle", newline / "cat\nface")
    shutil.copytree(tmp_path / "g" / "square", newline / "dog")
    with pytest.raises(DataLayoutError, match="control characters(.|\n)*newline"):
        _ingest(newline, tmp_path / "o2")
    spaces = tmp_path / "spaces"
    shutil.copytree(tmp_path / "g" / "circle", spaces / "cats")
    shutil.copytree(tmp_path / "g" / "square", spaces / "cats ")
    with pytest.raises(DataLayoutError, match="differ only by(.|\n)*spaces/cats"):
        _ingest(spaces, tmp_path / "o3")


@pytest.mark.timeout(120)
def test_hostile_files_are_quarantined_and_nothing_else_is_lost(tmp_path):
    root = tmp_path / "in"
    generate(root, classes=2, per_class=10, size=32)
    c = root / "circle"
    big = c / "big.png"
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(big)  # valid, but over the limit set below
    os.mkfifo(c / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(c / "sock.jpg"))
    os.symlink(c / "loop_b.jpg", c / "loop_a.jpg")
    os.symlink(c / "loop_a.jpg", c / "loop_b.jpg")
    os.symlink(root / "square", c / "linked_folder")
    bad_name = os.fsencode(str(c)) + b"/caf\xe9.jpg"  # Latin-1 bytes: not UTF-8
    with open(bad_name, "wb") as f:
        f.write((c / "circle_0000.jpg").read_bytes())
    limit = big.stat().st_size - 1
    r = _ingest(root, tmp_path / "out", max_file_bytes=limit)
    sock.close()
    q = {
        Path(x["path"]).name: x["reason"]
        for x in json.loads((tmp_path / "out" / "quarantine.json").read_text())
    }
    assert "FIFO" in q["pipe.jpg"] and "socket" in q["sock.jpg"]
    assert "symlink loop" in q["loop_a.jpg"] and "symlink loop" in q["loop_b.jpg"]
    assert "max_file_bytes" in q["big.png"] and "not followed" in q["linked_folder"]
    assert "not valid UTF-8" in q["caf\\xe9.jpg"]
    assert r.written == 20 and r.written + r.quarantined == r.input_files  # nothing else lost
    # a CSV row pointing at a device is quarantined without reading it
    (tmp_path / "m.csv").write_text(
        f"path,label\n/dev/zero,circle\n{c / 'circle_0001.jpg'},circle\n"
        f"{root / 'square' / 'square_0001.jpg'},square\n"
    )
    r = _ingest(tmp_path / "m.csv", tmp_path / "out2", source="csv")
    q = json.loads((tmp_path / "out2" / "quarantine.json").read_text())
    assert [x["path"] for x in q] == ["/dev/zero"] and "device" in q[0]["reason"]
    assert r.written == 2 and r.input_files == 3


# ------------------------------------------------------------------ paths


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my.yaml").write_text(
        "data: {path: images}\nrunner: {run_root: runs}\npush: {destination: ../served}\n"
        "base: {weights: weights/base.h5}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(folder / "my.yaml", ["train_head.epochs=2"])
    assert cfg.data.path == str(folder / "images")
    assert cfg.runner.run_root == str(folder / "runs")
    assert cfg.push.destination == str(tmp_path / "served")
    assert cfg.base.weights == str(folder / "weights" / "base.h5")
    with pytest.raises(FileNotFoundError, match=str(folder / "images")):
        ingest(cfg.data, str(tmp_path / "o"))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["train+val", "classes"])
def test_copied_config_runs_end_to_end_from_another_directory(layout, tmp_path):
    """`graft run` on a pre-split train/val folder evaluates on a test split carved from train;
    the config sits beside the data with relative paths and is run from elsewhere."""
    project = tmp_path / "project"
    make_layout(project / "images", LAYOUTS[layout], per_class=30)
    raw = tiny_config(tmp_path, Path("images"), train_head__epochs=3)
    raw["runner"]["run_root"], raw["push"]["destination"] = "runs", "models"
    (project / "graft.yaml").write_text(yaml.safe_dump(raw))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "graft", "run", "--config", str(project / "graft.yaml")],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_json,) = (project / "runs").glob("*/run.json")
    steps = json.loads(run_json.read_text())["steps"]
    ev = json.loads((Path(steps["evaluate"]["output"]) / "evaluation.json").read_text())
    assert ev["test_examples"] > 0
    assert steps["push"]["summary"]["pushed"] and (project / "models" / "tiny").is_dir()
    assert not list(elsewhere.iterdir())  # nothing written where it was run from
