"""Label issues (confident learning on out-of-fold probe probabilities), advise's label_issues.json.

The ranking tests are pure (synthetic features, no TensorFlow); the end-to-end test plants
mislabelled images and an image under two classes in demo data and runs `graft advise`.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_advise_sets

from graft.components import label_issues as li

FIELDS = {
    "rank",
    "kind",
    "path",
    "split",
    "sha256",
    "given",
    "suggested",
    "confidence",
    "confident",
}


def _blobs(n_per_class: int, classes: int, dim: int = 32, seed: int = 0):
    """Gaussian clusters, one per class, a little overlap."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.5, (classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + rng.normal(0, 1.0, (len(y), dim))
    return x.astype(np.float32), y


def _rows(n: int) -> list[dict]:
    return [
        {"path": f"/data/img{i}.jpg", "split": "train", "sha256": f"{i:064x}"} for i in range(n)
    ]


def test_planted_label_flips_are_ranked_first_with_their_true_class_suggested():
    x, truth = _blobs(60, 3)
    given = truth.copy()
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(given), 8, replace=False)
    given[flipped] = (truth[flipped] + 1) % 3
    doc = li.check(x, given, _rows(len(given)), ["a", "b", "c"], folds=5, layer="l", size=32)
    top = doc["issues"][: len(flipped)]
    assert {int(it["path"][len("/data/img") : -4]) for it in top} == set(flipped.tolist())
    labels = ["a", "b", "c"]
    for it in top:
        i = int(it["path"][len("/data/img") : -4])
        assert it["given"] == labels[given[i]] and it["suggested"] == labels[truth[i]]
        assert it["kind"] == li.MISLABELLED and it["confidence"] > it["given_probability"]
    assert doc["checked"] == {"train": 180} and doc["sampled"] is False and doc["folds"] == 5
    # ranked by the probability of the given label, lowest first
    p = [it["given_probability"] for it in doc["issues"]]
    assert p == sorted(p)


def test_an_image_is_listed_when_its_label_is_unsure_and_another_class_is_preferred():
    probs = np.array(
        [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.2, 0.8], [0.4, 0.6]]
    )
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    found, thresholds = li.find_label_issues(probs, y)
    assert np.allclose(thresholds, [0.8, 0.725])
    # images 2 (a at 0.6) and 6 (b at 0.6) are below their class's threshold, but the probe
    # still prefers their given label: not listed
    assert found == []
    probs[6] = [0.7, 0.3]  # a is preferred, below its own 0.8 threshold: listed, not confident
    found, thresholds = li.find_label_issues(probs, y)
    assert found == [(6, 0, False)] and np.allclose(thresholds, [0.8, 0.65])
    probs[6] = [0.9, 0.1]  # a claims it at its threshold: confident learning's off-diagonal
    found, _ = li.find_label_issues(probs, y)
    assert found == [(6, 0, True)]


def test_a_class_without_images_gets_no_probability_and_claims_nothing():
    x, y = _blobs(20, 2, seed=4)
    y = np.where(y == 1, 2, 0)  # labels a, b, c; b has no images left (all dropped)
    probs, k = li.out_of_fold_probabilities(x, y, 5, n_classes=3)
    assert probs.shape == (40, 3) and k == 5 and not probs[:, 1].any()
    assert np.allclose(probs.sum(1), 1)
    doc = li.check(x, y, _rows(40), ["a", "b", "c"], folds=5, layer="l", size=32)
    assert all(it["suggested"] != "b" for it in doc["issues"]) and doc["thresholds"]["b"] == 1


def test_the_probe_sample_keeps_a_class_of_one_image():
    """Large data sampled for the probes (advise's and label issues'): a class down to one
    image made the sampler draw 2 of 1 and end the step."""
    from graft.components.advise import _sample

    y = np.array([0] * 3000 + [1] * 1500 + [2])
    for pick in (li.stratified_sample, _sample):
        idx = pick(y, 400)
        assert len(set(idx)) == len(idx) and 4500 in idx
        counts = np.bincount(y[idx], minlength=3)
        assert counts[2] == 1 and abs(counts[0] - 2 * counts[1]) <= 2, counts


def test_duplicates_across_classes_come_first_and_every_entry_has_the_fields(tmp_path):
    x, y = _blobs(30, 2, seed=3)
    y[[0, 1]] = 1
    doc = li.check(x, y, _rows(len(y)), ["cat", "dog"], folds=3, layer="l", size=32)
    dup = {
        "kind": li.DUPLICATE,
        "path": "/data/twice.jpg",
        "split": "train",
        "sha256": "f" * 64,
        "given": "cat",
        "suggested": "dog",
        "confidence": None,
        "given_probability": None,
        "confident": True,
        "copies": [],
    }
    written = li.write(str(tmp_path), doc, [dup], "/data")
    on_disk = json.loads((tmp_path / li.FILE).read_text())
    assert on_disk == written
    assert [it["rank"] for it in on_disk["issues"]] == list(range(1, len(on_disk["issues"]) + 1))
    assert on_disk["issues"][0]["kind"] == li.DUPLICATE
    unsure = sum(not it["confident"] for it in on_disk["issues"])
    assert on_disk["counts"] == {
        li.MISLABELLED: len(on_disk["issues"]) - 1,
        li.DUPLICATE: 1,
        li.LESS_SURE: unsure,
    }
    # the one line says how many are less sure, and warns when the probe is weak
    line = li.summary(on_disk)
    assert f"({unsure} of them less sure)" in line
    assert ("the probe's own errors" in line) == (on_disk["probe_accuracy"] < li.WEAK_PROBE)
    weak = li.summary({**on_disk, "probe_accuracy": 0.65})
    assert "most listed images are likely the probe's own errors" in weak
    assert all(FIELDS <= set(it) for it in on_disk["issues"])
    assert {"img0.jpg", "img1.jpg"} <= {Path(it["path"]).name for it in on_disk["issues"][1:3]}
    text = li.table(on_disk, 3)
    assert "twice.jpg" in text and "/data/" not in text  # paths under the data folder


@pytest.mark.slow
def test_graft_advise_writes_and_prints_the_planted_mislabels(tmp_path, tiny_data, capsys):
    from graft.pipeline.cli import main

    data = tmp_path / "images"
    shutil.copytree(tiny_data, data)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    planted = sorted((data / classes[0]).iterdir())[:3]
    for p in planted:  # three images of the first class filed under the second
        p.rename(data / classes[1] / f"planted-{p.name}")
    twice = sorted((data / classes[2]).iterdir())[0]  # the same bytes under two classes
    shutil.copy(twice, data / classes[0] / f"twice-{twice.name}")
    sets = tiny_advise_sets(tmp_path, "validate.label_conflicts=drop")
    assert main(["advise", str(data), *sets]) == 0
    out = capsys.readouterr().out
    found = list((tmp_path / "runs" / "steps" / "advise").glob(f"*/{li.FILE}"))
    assert len(found) == 1
    doc = json.loads(found[0].read_text())
    total = sum(doc["checked"].values())
    # 121 files; the duplicate's two copies are dropped everywhere by validate
    assert set(doc["checked"]) == {"train", "val", "test"} and total == doc["images"] == 119
    dup = doc["issues"][0]
    assert dup["kind"] == li.DUPLICATE and dup["rank"] == 1 and doc["counts"][li.DUPLICATE] == 1
    assert {c["label"] for c in dup["copies"]} == {classes[0], classes[2]}
    assert {dup["given"], dup["suggested"]} == {classes[0], classes[2]}
    assert doc["folds"] == 3 and doc["layer"] and doc["method"].startswith("confident learning")
    assert all(FIELDS <= set(it) for it in doc["issues"])
    assert doc["issues"][1]["kind"] == li.MISLABELLED
    hits = [it for it in doc["issues"] if Path(it["path"]).name.startswith("planted-")]
    assert hits, doc["issues"][:5]
    assert all(it["given"] == classes[1] for it in hits)
    assert "label issues:" in out and f"checked {doc['checked']['train']} train" in out
    for it in doc["issues"][:10]:
        assert f"{it['rank']:>3} {it['kind']:<24} {it['given']} -> {it['suggested']}" in out
