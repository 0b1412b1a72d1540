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


def test_different_label_sets_are_never_blessed(tmp_path):
    (tmp_path / "m" / "1" / "assets").mkdir(parents=True)
    (tmp_path / "m" / "1" / "assets" / "labels.txt").write_text("cat\ndog\n")
    probs, note, _ = _baseline_probs(
        str(tmp_path), "m", 1, [b"x"], ["s"], ["cat", "dog", "fox"], None
    )
    assert probs is None and "label sets differ" in note
    ok, why = bless(EvaluateConfig(), {"accuracy": 0.99}, None, note)
    assert not ok and "no automatic blessing" in why[-1]
