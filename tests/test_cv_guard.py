"""The fine-tune guard on small data decides on k-fold cross-validated evidence, not val alone."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BASE

from graft.components import cv_guard
from graft.components import data as gdata
from graft.components.demo_data import generate
from graft.components.ingest import ingest
from graft.components.train import fine_tune, train_head
from graft.core.config import (
    AugmentConfig,
    BaseConfig,
    DataConfig,
    FineTuneConfig,
    HeadConfig,
    TrainConfig,
    TrainHeadConfig,
)

NO_AUG = AugmentConfig(flip="none", rotation=0, zoom=0, contrast=0, translation=0)
HEAD = TrainHeadConfig(epochs=10, batch_size=16, patience=0, learning_rate=0.01)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """3 demo classes x 40 at 48 px, ingested, and a head trained on the tests' shallow base."""
    tmp = tmp_path_factory.mktemp("cv")
    generate(tmp / "imgs", classes=3, per_class=40, size=48, seed=3)
    ingest(DataConfig(path=str(tmp / "imgs"), num_workers=1), str(tmp / "ex"))
    train_head(
        str(tmp / "ex"),
        str(tmp / "head"),
        base=BaseConfig(**TINY_BASE),
        head=HeadConfig(),
        train=TrainConfig(),
        cfg=HEAD,
        augment=NO_AUG,
        image_size=48,
        feature_store=str(tmp / "store"),
    )
    return str(tmp / "ex"), str(tmp / "head")


def _split_count(examples: str, split: str) -> int:
    return gdata.count_examples(examples, split)


def test_fold_count_needs_two_images_of_every_class():
    assert cv_guard.fold_count(np.array([0] * 10 + [1] * 10), 5) == 5
    assert cv_guard.fold_count(np.array([0] * 10 + [1] * 3), 5) == 3
    assert cv_guard.fold_count(np.array([0] * 10 + [1]), 5) == 0
    with pytest.raises(ValueError, match="guard_folds"):
        FineTuneConfig(guard_folds=1)


@pytest.mark.slow
def test_small_data_guard_scores_every_training_image_out_of_fold(head, tmp_path):
    examples, head_dir = head
    ft = fine_tune(
        examples,
        head_dir,
        str(tmp_path / "ft"),
        train=TrainConfig(),
        cfg=FineTuneConfig(
            epochs=1,
            batch_size=16,
            optimizer="sgd",
            learning_rate=1.0,  # destructive: the folds must show it too
            cosine_decay=False,
            patience=0,
            unfreeze={"mode": "all"},
            guard_rule="beyond_noise",
            guard_folds=2,
        ),
        augment=NO_AUG,
        image_size=48,
        head_cfg=HEAD,
    )
    n_train, n_val = _split_count(examples, "train"), _split_count(examples, "val")
    cv = ft.extra.cross_validation
    assert cv["k"] == 2 and sum(f["n"] for f in cv["folds"]) == n_train
    assert ft.extra.val_gain["n"] == n_train + n_val
    assert ft.extra.val_only_gain["n"] == n_val
    assert ft.extra.gain_evidence.startswith("2-fold cross-validation")
    # fold heads are trained (not left re-initialised), and the destructive rate hurts each fold
    assert np.mean([f["head_accuracy"] for f in cv["folds"]]) > 0.5  # chance: 0.33
    assert np.mean([f["tuned_accuracy"] for f in cv["folds"]]) < np.mean(
        [f["head_accuracy"] for f in cv["folds"]]
    )
    assert ft.extra.kept == "head"


@pytest.mark.slow
def test_a_killed_guard_reuses_its_finished_folds(head, tmp_path):
    examples, head_dir = head
    cfg = FineTuneConfig(epochs=1, batch_size=16, guard_rule="beyond_noise", guard_folds=2)
    kw = dict(
        cfg=cfg,
        head_cfg=HEAD,
        head_epochs=2,
        tune_epochs=1,
        augment=NO_AUG,
        image_size=48,
        exclude_train=set(),
        seed=0,
        feature_store=json.loads(Path(head_dir, "result.json").read_text())["extra"][
            "feature_store"
        ],
    )
    first = cv_guard.fold_evidence(examples, f"{head_dir}/model.keras", str(tmp_path), **kw)
    assert first["features_computed"] == 0  # the head stage's stored features serve the folds
    path = tmp_path / cv_guard.FOLDS_FILE
    saved = json.loads(path.read_text())
    marker = saved["folds"][0]
    marker["head"] = [0] * marker["n"]  # a finished fold's record, marked
    path.write_text(json.dumps({"k": 2, "folds": [marker]}))
    again = cv_guard.fold_evidence(examples, f"{head_dir}/model.keras", str(tmp_path), **kw)
    assert not again["head"][: marker["n"]].any()  # fold 1 was read back, not re-run
    assert len(again["head"]) == len(first["head"]) == _split_count(examples, "train")
    assert len(json.loads(path.read_text())["folds"]) == 2


def test_report_shows_the_cross_validated_evidence():
    from graft.components.report import _guard_html

    gain = {"difference": 0.007, "low": -0.025, "high": 0.039, "n": 723}
    html = _guard_html(
        {
            "guard": "kept_head",
            "kept": "head",
            "val_gain": gain,
            "val_only_gain": {"difference": 0.0, "low": -0.081, "high": 0.074, "n": 148},
            "gain_evidence": "5-fold cross-validation on 575 training images + 148 val images",
            "cross_validation": {
                "k": 2,
                "seconds": 102.0,
                "folds": [
                    {"n": 288, "head_accuracy": 0.681, "tuned_accuracy": 0.664},
                    {"n": 287, "head_accuracy": 0.583, "tuned_accuracy": 0.591},
                ],
            },
        }
    )
    assert "5-fold cross-validation on 575 training images + 148 val images" in html
    assert "gain on val alone</td><td>+0.000 [-0.081, +0.074], n=148" in html
    assert "288 images: 0.681 → 0.664; 287 images: 0.583 → 0.591" in html


def test_beyond_noise_keeps_fine_tuning_above_its_one_sided_bound():
    from graft.components.train import _guard_beyond_noise

    # a shape like flowers' (on fewer images): 370 val images, fine-tuning right on 13 more than
    # the head (35 vs 22 images only one of them got right): the 95% interval touches 0, the
    # 90% bound does not
    head = np.array([1] * 22 + [0] * 35 + [1] * 200 + [0] * 113)
    tuned = np.array([0] * 22 + [1] * 35 + [1] * 200 + [0] * 113)
    strict = _guard_beyond_noise(tuned, head, lambda: None, 0.975)
    usual = _guard_beyond_noise(tuned, head, lambda: None, 0.9)
    assert strict.gain["difference"] == usual.gain["difference"] == pytest.approx(13 / 370)
    assert strict.gain["bound"] <= 0 < usual.gain["bound"]
    assert (strict.kept, usual.kept) == ("head", "fine_tuned")
    assert usual.gain["bound_level"] == 0.9 and usual.gain["low"] == strict.gain["low"]


def test_better_keeps_the_higher_val_score_and_records_its_paired_gain():
    from graft.components.report import _guard_html
    from graft.components.train import _guard_better

    # val +0.017 on 642 images (flowers' shape): inside the noise, and the higher score
    head = np.array([1] * 30 + [0] * 41 + [1] * 428 + [0] * 143)
    tuned = np.array([0] * 30 + [1] * 41 + [1] * 428 + [0] * 143)
    up = _guard_better((head.mean(), 0.8, head), (tuned.mean(), 0.9, tuned))
    assert up.kept == "fine_tuned" and up.gain["difference"] == pytest.approx(11 / 642)
    assert up.gain["low"] < 0 < up.gain["high"] and "bound" not in up.gain
    down = _guard_better((tuned.mean(), 0.8, tuned), (head.mean(), 0.7, head))
    assert down.kept == "head" and down.gain["difference"] == pytest.approx(-11 / 642)
    # a tie: the lower val loss decides
    assert _guard_better((0.5, 0.7, head), (0.5, 0.8, head)).kept == "head"
    assert _guard_better((0.5, 0.8, head), (0.5, 0.7, head)).kept == "fine_tuned"
    better = {"guard_rule": "better", "gain_evidence": "642"}
    said = str(_guard_html({"guard": "accepted", "val_gain": up.gain, **better}))
    assert "did at least as well as the head on val, gain +0.017" in said
    assert "inside the noise or not" in said and "beyond the noise" not in said
    said = str(_guard_html({"guard": "kept_head", "val_gain": down.gain, **better}))
    assert "fine-tuning did worse on val (gain -0.017" in said and "not beyond" not in said
    # a record from before guard_rule was written, without a bound: only beyond_noise recorded
    # a gain then, so it reads as judged against the bar
    said = str(_guard_html({"guard": "kept_head", "val_gain": dict(up.gain)}))
    assert "is not beyond the noise" in said and "did worse" not in said
