"""Metric maths and blessing rules on tiny arrays."""

import numpy as np
import pytest

from graft.components.evaluate import _baseline_probs, bless, metrics_from_probs
from graft.core.config import EvaluateConfig


def test_metrics_from_probs():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([0, 1, 1, 2])
    m = metrics_from_probs(probs, y, ["a", "b", "c"], top_k=2, bins=5)
    assert m["accuracy"] == pytest.approx(0.75) and m["top_2_accuracy"] == 1.0
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class"]["a"]["precision"] == pytest.approx(0.5) and m["per_class"]["b"][
        "recall"
    ] == pytest.approx(0.5)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.7, 0.3, 0.8])))
    assert 0 <= m["ece"] <= 1


def test_blessing_rules():
    cfg = EvaluateConfig(min_accuracy=0.5, max_regression=0.01)
    ok, why = bless(cfg, {"accuracy": 0.8}, {"accuracy": 0.805}, None)
    assert ok and "within thresholds" in why[-1]
    ok, why = bless(cfg, {"accuracy": 0.7}, {"accuracy": 0.8}, None)
    assert not ok and "regression" in why[-1]
    ok, why = bless(cfg, {"accuracy": 0.4}, None, None)
    assert not ok and "min_accuracy" in why[0]
    ok, why = bless(
        EvaluateConfig(min_improvement=0.02), {"accuracy": 0.81}, {"accuracy": 0.8}, None
    )
    assert not ok and "min_improvement" in why[-1]


def test_a_comparison_switched_off_is_never_reported_as_a_first_model():
    """evaluate.compare_baseline: false looks at nothing served: the blessing, the model card
    and the report say so instead of "first model at the destination"."""
    from graft.components.export import _baseline_text
    from graft.components.report import _baseline_note

    _, why = bless(EvaluateConfig(compare_baseline=False), {"accuracy": 0.9}, None, None)
    assert "compare_baseline: false" in why[-1] and "first model" not in " ".join(why)
    _, why = bless(EvaluateConfig(), {"accuracy": 0.9}, None, None)
    assert "first model" in why[-1]
    off = {"version": None, "compared": False, "off": "evaluate.compare_baseline: false"}
    assert _baseline_text(off) == "not compared (evaluate.compare_baseline: false)"
    assert "first model" in _baseline_text(None)
    assert "compare_baseline: false" in _baseline_note({"baseline_compared": False})
    assert "first model" in _baseline_note({})  # an evaluation.json from before the field


def test_different_label_sets_are_never_blessed(tmp_path):
    (tmp_path / "m" / "1" / "assets").mkdir(parents=True)
    (tmp_path / "m" / "1" / "assets" / "labels.txt").write_text("cat\ndog\n")
    probs, note, _ = _baseline_probs(
        str(tmp_path), "m", 1, [b"x"], ["s"], ["cat", "dog", "fox"], None
    )
    assert probs is None and "label sets differ" in note
    ok, why = bless(EvaluateConfig(), {"accuracy": 0.99}, None, note)
    assert not ok and "no automatic blessing" in why[-1]


def test_bootstrap_intervals_do_not_depend_on_the_images_order():
    """Two ingests of one folder hold the images in different orders: the paired and
    balanced intervals (the guard's and evaluate's evidence) must not follow that order."""
    from graft.components.stats import (
        balanced_score_intervals,
        paired_difference,
        paired_macro_f1,
    )

    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 300)
    pa = np.where(rng.random(300) < 0.8, y, rng.integers(0, 4, 300))
    pb = np.where(rng.random(300) < 0.75, y, rng.integers(0, 4, 300))
    shuffled = rng.permutation(300)
    for f, args in (
        (paired_difference, ((pa == y).astype(int), (pb == y).astype(int))),
        (balanced_score_intervals, (y, pa, 4)),
        (paired_macro_f1, (y, pa, pb, 4)),
    ):
        moved = tuple(a[shuffled] if isinstance(a, np.ndarray) else a for a in args)
        assert f(*args) == f(*moved), f.__name__
