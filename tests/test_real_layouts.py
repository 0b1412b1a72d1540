"""Real folders as users bring them (`make test-real`): patients, pre-split photos, duplicates.

Figures go to benchmarks/results/layouts.json.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import REPO, SHARED
from conftest import read_manifest as _manifest

from graft.components.ingest import ingest
from graft.components.validate import validate
from graft.core.config import DataConfig, ValidateConfig

DATASETS = SHARED / "datasets"
RESULTS = REPO / "benchmarks" / "results"
pytestmark = pytest.mark.real
NO_COUNT_CHECKS = ValidateConfig(
    min_per_class={"train": 1}, max_corrupt_rate=1.0, label_conflicts="drop"
)


def _need(path):
    if not path.exists():
        pytest.skip(f"real data absent: {path} (../shared beside the clone)")


def _record(key: str, value: dict) -> None:
    path = RESULTS / "layouts.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    rows[key] = {**value, "date": time.strftime("%Y-%m-%d")}
    path.write_text(json.dumps(rows, indent=2) + "\n")


def test_chest_xray_group_by_patient_keeps_patients_in_one_split(tmp_path):
    manifest = DATASETS / "chest_xray" / "manifest.csv"
    _need(manifest)
    data = DataConfig(source="csv", path=str(manifest), image_size=224)
    ingest(data, str(tmp_path / "per_image"))
    loose = validate(NO_COUNT_CHECKS, str(tmp_path / "per_image"), str(tmp_path / "v1"))
    assert loose.crossing_groups and any("data.group_by: patient" in w for w in loose.warnings)
    crossing = sum(1 for w in loose.warnings if "possible leakage" in w)

    ingest(data.model_copy(update={"group_by": "patient"}), str(tmp_path / "by_patient"))
    rows = _manifest(tmp_path / "by_patient")
    splits: dict[str, set] = {}
    for m in rows:
        splits.setdefault(m["group"], set()).add(m["split"])
    assert len(rows) > 5000 and len(splits) > 2000
    assert all(len(s) == 1 for s in splits.values())  # zero patients in two splits
    strict = validate(NO_COUNT_CHECKS, str(tmp_path / "by_patient"), str(tmp_path / "v2"))
    assert strict.passed and not strict.crossing_groups
    per_image = _manifest(tmp_path / "per_image")
    patients_split: dict[str, set] = {}
    for m in per_image:
        patients_split.setdefault(m["group_hint"], set()).add(m["split"])
    eval_with_train_patient = sum(
        1 for m in per_image if m["split"] != "train" and "train" in patients_split[m["group_hint"]]
    )
    _record(
        "chest_xray_group_by",
        {
            "images": len(rows),
            "patients": len(splits),
            "patients_in_two_splits_per_image_split": sum(
                len(s) > 1 for s in patients_split.values()
            ),
            "val_test_images_with_a_train_patient_per_image_split": eval_with_train_patient,
            "val_test_images_per_image_split": sum(1 for m in per_image if m["split"] != "train"),
            "patients_in_two_splits_group_by": 0,
            "warning_given": bool(crossing),
        },
    )


def test_cats_dogs_presplit_train_val_gets_a_carved_test_split(tmp_path):
    root = DATASETS / "cats_dogs"
    _need(root)
    r = ingest(DataConfig(path=str(root), image_size=224), str(tmp_path / "out"))
    rows = _manifest(tmp_path / "out")
    assert all(m["split"] == "val" for m in rows if "/val/" in m["path"])
    assert not any(m["split"] == "val" for m in rows if "/train/" in m["path"])
    test = [m for m in rows if m["split"] == "test"]
    assert test and all("/train/" in m["path"] for m in test)
    assert r.written + r.quarantined == r.input_files == 1200
    _record("cats_dogs_carve", {"counts": {s: sum(c.values()) for s, c in r.counts.items()}})


@pytest.mark.parametrize("name", ["flowers", "textures", "cats_dogs"])
def test_near_duplicate_flags_stay_rare_on_real_photos(name, tmp_path):
    """The false-positive side: on real datasets the flagged pairs are a tiny fraction of the
    train x eval pairs compared (the pairs found on flowers are resized copies of one photo)."""
    root = DATASETS / name
    _need(root)
    ingest(DataConfig(path=str(root), image_size=224), str(tmp_path / "out"))
    res = validate(NO_COUNT_CHECKS, str(tmp_path / "out"), str(tmp_path / "v"))
    rows = _manifest(tmp_path / "out")
    n_train = sum(1 for m in rows if m["split"] == "train")
    n_eval = len(rows) - n_train
    flagged = len(res.near_duplicates)
    assert flagged <= max(3, n_eval // 200), res.near_duplicates  # under 0.5% of eval images
    _record(
        f"near_duplicates_{name}",
        {
            "train": n_train,
            "eval": n_eval,
            "pairs_compared": n_train * n_eval,
            "flagged_pairs": flagged,
            "pairs": [
                (
                    p["eval_path"].split("/")[-1],
                    p["train_path"].split("/")[-1],
                    p["bits"],
                    p["colour"],
                )
                for p in res.near_duplicates
            ],
        },
    )
