"""The drift check's measures on known distributions, and what it says when it cannot check."""

import json
import os

import numpy as np
import pytest

from graft.components.drift import (
    DriftBlocked,
    bucket_js,
    check_drift,
    image_stats,
    js_divergence,
    label_linf,
    mmd_test,
)
from graft.core.config import BaseConfig, DriftConfig


def test_js_divergence_is_base_2_and_bounded():
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([3, 5, 2], [6, 10, 4]) == pytest.approx(0.0, abs=1e-12)
    assert 0 < js_divergence([5, 5], [6, 4]) < 0.01


def test_bucket_js_tells_a_shift_from_sampling_noise():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=500), rng.normal(size=400)
    value, p = bucket_js(a, b, 500, rng)
    assert value < 0.05 and p > 0.01
    value, p = bucket_js(a, b + 1.0, 500, rng)
    assert value > 0.1 and p < 0.01
    # a dozen images: a large divergence by chance alone, and a p-value that says so
    value, p = bucket_js(a, b[:12], 500, rng)
    assert p > 0.01
    # a constant statistic (every image 128 px wide) is one bucket: no divergence
    assert bucket_js(np.full(50, 128.0), np.full(20, 128.0), 100, rng)[0] == 0.0


def test_label_linf_is_the_largest_change_of_a_class_share():
    rng = np.random.default_rng(0)
    old = ["a"] * 50 + ["b"] * 50
    value, p, shift = label_linf(old, ["a"] * 80 + ["b"] * 20, 500, rng)
    assert value == pytest.approx(0.3) and p < 0.01 and shift == {"a": 0.3, "b": -0.3}
    value, p, shift = label_linf(old, old + ["c"] * 10, 500, rng)  # a new class
    assert value == pytest.approx(10 / 110) and shift["c"] == pytest.approx(10 / 110, 1e-3)


def test_mmd_permutation_test():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 16)), rng.normal(size=(150, 16))
    mmd2, p, _ = mmd_test(x, y, 1000, rng)
    assert abs(mmd2) < 0.01 and p > 0.01
    mmd2, p, _ = mmd_test(x, y + 0.5, 1000, rng)
    assert mmd2 > 0.01 and p < 0.002


def test_image_stats_see_gray_and_dark():
    import io

    from PIL import Image

    def jpeg(colour):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), colour).save(buf, "JPEG")
        return buf.getvalue()

    red, gray, dark = (image_stats(jpeg(c)) for c in ((220, 30, 30), (128, 128, 128), (5, 5, 5)))
    assert red["colourfulness"] > 50 and gray["colourfulness"] < 2
    assert dark["brightness"] < 10 < gray["brightness"] and red["bytes"] > 100


def _check(tmp_path, cfg=None, **kw):
    return check_drift(
        cfg or DriftConfig(),
        str(tmp_path / "examples"),
        None,
        str(tmp_path / "drift"),
        destination=str(tmp_path / "models"),
        model_name="m",
        base=BaseConfig(),
        image_size=32,
        feature_store="",
        **kw,
    )


def test_first_run_and_lost_snapshot_skip_and_say_so(tmp_path):
    r = _check(tmp_path, DriftConfig(action="block"))
    assert not r.checked and not r.blocked and "nothing served yet" in r.reasons[0]
    written = json.load(open(tmp_path / "drift" / "drift.json"))
    assert written["checked"] is False and written["kfp_metrics"]["drift_checked"] == 0
    # a served version whose snapshot is gone (runs/ cleaned): skipped, named
    v = tmp_path / "models" / "m" / "7"
    os.makedirs(v / "variables")
    (v / "saved_model.pb").write_bytes(b"")
    (v / "model_card.json").write_text(
        json.dumps({"lineage": {"examples": str(tmp_path / "gone")}})
    )
    r = _check(tmp_path)
    assert not r.checked and r.served_version == 7 and "is gone" in r.reasons[0]
    r = _check(tmp_path, DriftConfig(enabled=False))
    assert not r.checked and "enabled is false" in r.reasons[0]


def test_blocked_raises_after_writing(tmp_path, monkeypatch):
    """Labels alone (fewer than 10 images added): a class share moved by 0.5 flags and blocks."""
    old, new = tmp_path / "old", tmp_path / "examples"
    for d, rows in ((old, [("a", i) for i in range(40)] + [("b", i) for i in range(40, 80)]),):
        d.mkdir()
        with open(d / "manifest.jsonl", "w") as f:
            for label, i in rows:
                f.write(
                    json.dumps({"sha256": f"{i:064x}", "label": label, "split": "train"}) + "\n"
                )
    new.mkdir()
    with open(new / "manifest.jsonl", "w") as f:  # the b images relabelled as a
        for i in range(80):
            f.write(json.dumps({"sha256": f"{i:064x}", "label": "a", "split": "train"}) + "\n")
    monkeypatch.setattr(
        "graft.components.drift.served_snapshot", lambda d, m: (3, str(tmp_path), str(old))
    )
    with pytest.raises(DriftBlocked, match="label_linf"):
        _check(tmp_path, DriftConfig(action="block"))
    written = json.load(open(tmp_path / "drift" / "drift.json"))
    assert written["flagged"] and written["blocked"] and written["compared"]["added"] == 0
    assert written["metrics"]["label_linf"]["value"] == pytest.approx(0.5)
    r = _check(tmp_path)  # warn
    assert r.flagged and not r.blocked and "fewer than 10" in r.reasons[0]


def test_added_copies_are_counted_as_images_and_reported_as_duplicates(tmp_path, monkeypatch):
    """40 identical images added to one class (issue 29.11): 40 added images, 1 distinct, a
    duplicates finding, and the label share they move measured on all 40."""
    old, new = tmp_path / "old", tmp_path / "examples"
    rows = [("a", f"{i:064x}", f"a/{i}.png") for i in range(40)]
    rows += [("b", f"{i:064x}", f"b/{i}.png") for i in range(40, 80)]
    black = "f" * 64
    added = [("a", black, f"a/black-{k}.png") for k in range(40)]
    for d, rs in ((old, rows), (new, rows + added)):
        d.mkdir()
        with open(d / "manifest.jsonl", "w") as f:
            for label, sha, path in rs:
                row = {"sha256": sha, "label": label, "split": "train", "path": path}
                f.write(json.dumps(row) + "\n")
    monkeypatch.setattr(
        "graft.components.drift.served_snapshot", lambda d, m: (3, str(tmp_path), str(old))
    )
    r = _check(tmp_path)
    assert r.compared["added"] == 40 and r.compared["added_distinct"] == 1
    assert r.duplicates["copies"] == 39 and r.duplicates["largest"]["count"] == 40
    assert any(x.startswith("duplicates: the 40 added images are 1 distinct") for x in r.reasons)
    assert r.metrics["label_linf"]["value"] == pytest.approx(80 / 120 - 0.5, abs=1e-5)
    written = json.load(open(tmp_path / "drift" / "drift.json"))
    assert written["duplicates"]["distinct"] == 1 and written["compared"]["added"] == 40
