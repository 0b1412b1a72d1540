"""Class balance: macro-F1 and balanced accuracy with their intervals in evaluate, the
class-weight setting in training, and advise's k-fold choice of weights over 3:1."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import step_output, step_summary, tiny_config
from sklearn.metrics import balanced_accuracy_score, f1_score

from graft.components.advise import (
    IMBALANCE_RATIO,
    Evidence,
    Plan,
    balance_predictions,
    plan_balance,
    probe_predictions,
)
from graft.components.stats import balanced_score_intervals, balanced_scores, paired_macro_f1

# ------------------------------------------------------------------------- the scores


def test_balanced_scores_are_sklearns_on_every_resample():
    rng = np.random.default_rng(0)
    c = 4
    y = rng.choice(c, 300, p=[0.6, 0.25, 0.1, 0.05])
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, c, 300))
    pred[pred == 3] = 0  # a class never predicted: its F1 is 0, not NaN
    idx = rng.integers(0, 300, size=(5, 300))
    f1, bal = balanced_scores(y, pred, c, idx)
    for r in range(5):
        yt, pt = y[idx[r]], pred[idx[r]]
        want = f1_score(yt, pt, labels=list(range(c)), average="macro", zero_division=0)
        assert f1[r] == pytest.approx(want)
        assert bal[r] == pytest.approx(balanced_accuracy_score(yt, pt))


def test_intervals_hold_the_value_and_a_paired_gain_sees_a_neglected_class():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], [200, 200, 20])
    ignores = np.where(y == 2, 0, y)  # never predicts the small class: accuracy 0.95
    sees = y.copy()
    sees[rng.permutation(400)[:20]] = 2  # gets the small class right, 20 others wrong
    iv = balanced_score_intervals(y, ignores, 3)
    for v, lo, hi in iv.values():
        assert lo <= v <= hi
    assert iv["balanced_accuracy"][0] == pytest.approx(2 / 3)
    g = paired_macro_f1(y, sees, ignores, 3)
    assert g["low"] > 0 and g["low"] <= g["difference"] <= g["high"]
    assert g["a"] > g["b"] and g["difference"] == pytest.approx(g["a"] - g["b"])
    same = paired_macro_f1(y, ignores, ignores, 3)
    assert same["low"] == same["high"] == same["difference"] == 0


def test_evaluate_metrics_carry_balanced_accuracy():
    from graft.components.evaluate import metrics_from_probs

    y = np.array([0, 0, 0, 0, 1, 2])
    probs = np.eye(3)[[0, 0, 0, 1, 1, 1]]  # class 2 missed, class 0 once wrong
    m = metrics_from_probs(probs, y, ["a", "b", "c"], top_k=2, bins=5)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 1 + 0) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_model_comparisons_carry_a_paired_macro_f1_difference():
    from graft.components.evaluate import _comparisons

    y = np.repeat([0, 1, 2], [40, 40, 8])
    head = np.eye(3)[np.where(y == 2, 0, y)]  # never the small class
    tuned = np.eye(3)[y]
    got = _comparisons({"head_only": head, "candidate": tuned}, y, fine_tuned=True)
    c = got["fine-tuned - head only"]
    assert c["difference"] == pytest.approx(8 / 88) and c["b_only"] == 0
    f = c["macro_f1"]
    assert f["a"] == 1.0 and f["difference"] == pytest.approx(1 - f["b"]) and f["low"] > 0


# ---------------------------------------------------------------------- the plan


def _evidence(most: int, fewest: int, balance: dict | None = None) -> Evidence:
    return Evidence(
        base="mobilenet_v2",
        image_size=224,
        n_train=most + fewest,
        n_val=40,
        n_classes=2,
        per_class_min=fewest,
        per_class_max=most,
        median_side=300,
        probes=[],
        stage_starts=[],
        stage_fraction=[],
        base_layers=[],
        images_per_s=60.0,
        balance=balance,
    )


def _balance(none_f1: float, balanced_f1: float, low: float, high: float) -> dict:
    scores = {"macro_f1": 0.0, "balanced_accuracy": 0.0, "accuracy": 0.9}
    return {
        "size": 224,
        "layer": "out_relu",
        "resize": "crop",
        "n": 500,
        "folds": 5,
        "imbalance": 4.0,
        "none": {**scores, "macro_f1": none_f1, "balanced_accuracy": none_f1 - 0.02},
        "balanced": {**scores, "macro_f1": balanced_f1, "balanced_accuracy": balanced_f1},
        "gain": {"difference": balanced_f1 - none_f1, "low": low, "high": high, "n": 500},
    }


def _decide(ev: Evidence):
    p = Plan("auto", {}, {}, [])
    plan_balance(p, ev)
    (d,) = [x for x in p.decisions if x.what == "class balance"]
    return p, d


def test_at_or_under_three_to_one_no_probe_runs_and_the_setting_stays():
    assert IMBALANCE_RATIO == 3
    p, d = _decide(_evidence(300, 100))  # exactly 3:1: not over
    assert d.choice == "not probed" and "train_head.class_weight" not in p.overrides
    assert "300 vs 100" in d.reason and "3.0:1" in d.reason and "no probe ran" in d.reason


def test_over_three_to_one_balanced_weights_unless_they_lose_beyond_the_noise():
    p, d = _decide(_evidence(400, 100, _balance(0.70, 0.78, 0.02, 0.14)))
    assert d.choice == p.overrides["train_head.class_weight"] == "balanced"
    assert "4.0:1" in d.reason and "paired +0.080 [+0.020, +0.140]" in d.reason
    assert "macro-F1 without weights 0.700, with balanced weights 0.780" in d.reason
    p, d = _decide(_evidence(400, 100, _balance(0.70, 0.73, -0.01, 0.07)))  # inside the noise
    assert d.choice == p.overrides["train_head.class_weight"] == "balanced"
    assert "do not lose beyond the noise" in d.reason
    p, d = _decide(_evidence(400, 100, _balance(0.78, 0.70, -0.14, -0.02)))  # loses
    assert d.choice == p.overrides["train_head.class_weight"] == "none"
    assert "lose beyond the noise, so each image alike" in d.reason


def test_the_probe_with_weights_uses_the_same_folds_and_can_win_or_lose():
    rng = np.random.default_rng(0)
    # 100-d features, a small third class: unweighted, the probe under-predicts it
    y = np.repeat([0, 1, 2], [200, 200, 20])
    centres = 0.3 * rng.normal(size=(3, 100))
    x = rng.normal(size=(420, 100)) + centres[y]
    plain, weighted = balance_predictions(x, y, folds=5)
    assert np.array_equal(plain, probe_predictions(x, y, 5))  # the same folds
    assert (weighted == 2).sum() > (plain == 2).sum()
    assert paired_macro_f1(y, weighted, plain, 3)["low"] > 0
    # two overlapping classes: balanced weights over-predict the small one and lose macro-F1
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], [400, 40])
    x = rng.normal(size=(440, 6)) + 0.8 * y[:, None]
    plain, weighted = balance_predictions(x, y, folds=5)
    assert (weighted == 1).sum() > 2 * (plain == 1).sum()
    assert paired_macro_f1(y, weighted, plain, 2)["difference"] < 0


def test_your_class_weight_is_kept_and_advise_says_what_it_would_choose():
    from graft.components.advise import _keep_settings

    p, _ = _decide(_evidence(400, 100, _balance(0.70, 0.78, 0.02, 0.14)))
    kept = _keep_settings(p, {"train_head.class_weight": "none"})
    assert "train_head.class_weight" not in p.overrides
    assert kept["train_head.class_weight"] == {
        "yours": {"train_head.class_weight": "none"},
        "advise": "balanced",
    }
    line = p.decisions[-1]
    assert line.what == "kept" and "advise would choose balanced" in line.reason


def test_the_setting_is_validated_and_documented():
    from graft.core.config import ConfigError, parse_config

    raw = {"data": {"path": "/x"}, "train_head": {"class_weight": "balanced"}}
    assert parse_config(raw).train_head.class_weight == "balanced"
    with pytest.raises(ConfigError, match="class_weight"):
        parse_config({"data": {"path": "/x"}, "train_head": {"class_weight": "sampled"}})
    docs = (Path(__file__).parent.parent / "docs" / "config.md").read_text()
    assert "class_weight: auto      # auto | balanced | none" in docs


# ----------------------------------------------------------- end to end, imbalanced


@pytest.fixture(scope="module")
def imbalanced(tiny_data, tmp_path_factory) -> Path:
    """tiny_data with its last class cut to 10 images: about 4:1 in train."""
    root = tmp_path_factory.mktemp("imbalanced") / "images"
    classes = sorted(p.name for p in tiny_data.iterdir() if p.is_dir())
    for i, cls in enumerate(classes):
        files = sorted((tiny_data / cls).iterdir())
        (root / cls).mkdir(parents=True)
        for f in files[:10] if i == len(classes) - 1 else files:
            shutil.copy(f, root / cls / f.name)
    return root


def _advice(run) -> dict:
    return json.loads(Path(step_output(run, "advise"), "advice.json").read_text())


@pytest.mark.slow  # trains a model
def test_an_imbalanced_run_probes_weights_trains_with_the_choice_and_reports_balance(
    tmp_path, imbalanced
):
    from graft.core.config import parse_config
    from graft.pipeline.runner import run_pipeline

    store = str(tmp_path / "f")
    raw = tiny_config(
        tmp_path, imbalanced, recipe="auto", advise__folds=3, features__store=store,
        drift__enabled=False,
    )  # fmt: skip
    run = run_pipeline(parse_config(raw), until="evaluate")
    assert run["status"] == "succeeded", run
    advice = _advice(run)
    ev = advice["evidence"]
    assert ev["per_class_max"] / ev["per_class_min"] > IMBALANCE_RATIO
    b = ev["balance"]
    assert b["n"] == ev["n_train"] and b["folds"] == 3 and b["size"] == 48
    g = b["gain"]
    assert g["low"] <= g["difference"] <= g["high"]
    assert g["difference"] == pytest.approx(b["balanced"]["macro_f1"] - b["none"]["macro_f1"])
    want = "none" if g["high"] < 0 else "balanced"  # the rule, applied to the evidence
    (d,) = [x for x in advice["decisions"] if x["what"] == "class balance"]
    assert d["choice"] == want == advice["overrides"]["train_head.class_weight"]
    md = Path(step_output(run, "advise"), "advice.md").read_text()
    assert "| class weights | macro-F1 |" in md

    # the head trained with that setting: the weights it used are recorded
    head = json.loads(Path(step_output(run, "train_head"), "result.json").read_text())["extra"]
    assert head["class_weight_setting"] == want
    if want == "balanced":
        w = {int(k): v for k, v in head["class_weight"].items()}
        assert w[len(w) - 1] > 2 * w[0]  # the small (last) class weighs more
    else:
        assert head["class_weight"] is None

    # macro-F1 and balanced accuracy, with intervals, in evaluation.json, the summary, the report
    out = step_output(run, "evaluate")
    evaluation = json.loads(Path(out, "evaluation.json").read_text())
    for key in ("macro_f1", "balanced_accuracy"):
        v, lo, hi = evaluation["intervals"]["candidate"][key]
        assert lo <= v <= hi and v == pytest.approx(evaluation["candidate"][key])
        assert step_summary(run, "evaluate")[key] == pytest.approx(v)
    html = Path(out, "report.html").read_text()
    assert "<th>balanced accuracy</th><th>macro-F1</th>" in html
    v, lo, hi = evaluation["intervals"]["head_only"]["balanced_accuracy"]
    assert f"{100 * v:.1f}% <span class=muted>[{100 * lo:.1f}%, {100 * hi:.1f}%]" in html
    assert "Class balance (" in html and "paired macro-F1 gain" in html


@pytest.mark.slow  # trains a model
def test_balanced_set_by_hand_trains_with_n_over_c_times_n_c(tmp_path, imbalanced):
    from graft.core.config import parse_config
    from graft.pipeline.runner import run_pipeline

    raw = tiny_config(
        tmp_path, imbalanced, drift__enabled=False, train_head__epochs=2,
        train_head__class_weight="balanced",
    )  # fmt: skip
    run = run_pipeline(parse_config(raw), until="train_head")
    head = json.loads(Path(step_output(run, "train_head"), "result.json").read_text())["extra"]
    stats = json.loads(Path(step_output(run, "ingest"), "stats.json").read_text())
    train = stats["counts"]["train"]
    n = sum(train.values())
    assert max(train.values()) / min(train.values()) > IMBALANCE_RATIO
    want = {str(i): n / (len(train) * train[lab]) for i, lab in enumerate(head["labels"])}
    assert head["class_weight_setting"] == "balanced"
    assert head["class_weight"] == pytest.approx(want)


def test_class_weights_count_only_the_images_training_sees(tmp_path):
    """Images validate left out of training (label conflicts) do not weigh their class."""
    from graft.components.fitting import class_weights

    rows = [{"split": "train", "label": "a", "sha256": f"a{i}"} for i in range(6)]
    rows += [{"split": "train", "label": "b", "sha256": f"b{i}"} for i in range(3)]
    rows += [{"split": "val", "label": "b", "sha256": "bv"}]
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b"]))
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    w = class_weights(str(tmp_path), 2, "balanced")
    assert w == pytest.approx({0: 9 / 12, 1: 9 / 6})
    w = class_weights(str(tmp_path), 2, "balanced", exclude={"a0", "a1", "a2"})
    assert w is None  # 3 and 3 left: balanced, no weights
    assert class_weights(str(tmp_path), 2, "none") is None
