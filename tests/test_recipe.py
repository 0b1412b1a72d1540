"""recipe: auto end to end on tiny data, and the feature store's reuse across runs and steps.

Real Beam, TensorFlow and SavedModel; the demo base at 48 px keeps each run to seconds.
"""

import json
import os
from pathlib import Path

import pytest
from conftest import step_summary as _summary
from conftest import tiny_advise_sets, tiny_config

from graft.components import features as gfeat
from graft.core.config import parse_config
from graft.pipeline.runner import run_pipeline

pytestmark = pytest.mark.slow


def test_auto_recipe_runs_end_to_end_and_reports_its_plan(auto_run):
    run = auto_run["run"]  # recipe auto, 3 folds, a 2-minute budget (conftest)
    assert run["status"] == "succeeded"
    advice_dir = run["steps"]["advise"]["output"]
    advice = json.load(open(os.path.join(advice_dir, "advice.json")))
    ev = advice["evidence"]
    assert advice["recipe"] == "auto" and advice["cell"]["size"] == "small"
    assert [p["depth"] for p in ev["probes"]][0] == "final" and len(ev["probes"]) >= 2
    assert all(0 <= p["low"] <= p["accuracy"] <= p["high"] <= 1 for p in ev["probes"])
    decided = {d["what"]: d["choice"] for d in advice["decisions"]}
    assert set(decided) >= {
        "similarity",
        "features",
        "head",
        "fine-tune",
        "test-time flips",
        "refit",
    }
    assert decided["augmented views"] == (advice["overrides"]["train_head.feature_views"] or "none")
    flips = advice["overrides"]["export.flip_average"]
    assert decided["test-time flips"] == ("on" if flips else "off")
    assert ev["flip"]["n"] == ev["geometry"]["n"] and "gain" in ev["flip"]
    # the head stage ran on the plan, with the features advise put in the store: advise ran
    # the base once over train + val (+ test, for the label check), once per other geometry
    # (crop, and pad unless every image is square) and once over the mirror images of its
    # sample, and once over each view of it the views probe drew
    head = _summary(run, "train_head")
    sample = ev["geometry"]["n"]
    views = max(c["views"] for c in ev["views"]["candidates"]) * sample
    k = advice["overrides"]["train_head.feature_views"]
    assert head["view_rows_computed"] == (0 if k else None)  # the probe's views, reused
    assert head["view_rows_reused"] == (k * ev["n_train"] if k else None)
    rest = 0 if advice["overrides"]["data.resize"] == "squash" else ev["n_train"] - sample
    rest += 0 if advice["overrides"]["data.resize"] == "squash" else ev["n_val"]
    assert head["features_computed"] == rest and head["features_reused"] > 0
    forward = auto_run["forward"]  # base forward images during that run
    issues = json.load(open(os.path.join(advice_dir, "label_issues.json")))
    n_test = issues["checked"]["test"]
    geometry_passes = (1 if ev["geometry"]["square"] else 2) * sample
    # evaluate reads the test features through the store (2c0cbc7): advise's label check
    # stored them squashed, so another geometry runs the base over the test images once more
    evaluate = 0 if advice["overrides"]["data.resize"] == "squash" else n_test
    want = ev["n_train"] + ev["n_val"] + n_test + geometry_passes + sample + views + rest
    want += evaluate
    assert forward == want
    ft = json.load(open(os.path.join(run["steps"]["fine_tune"]["output"], "result.json")))
    planned = advice["overrides"]["fine_tune.enabled"]
    assert (ft["epochs_run"] > 0) == planned
    # the refit: decided on its k-fold learning curve, and shipped exactly when planned
    refit = ev["refit"]
    assert refit["n_train"] == ev["n_train"] and refit["n_val"] == ev["n_val"]
    assert decided["refit"].startswith("yes") == (
        advice["overrides"]["train_head.refit"] == "always"
    )
    assert (ft["extra"]["refit"] is not None) == decided["refit"].startswith("yes")
    assert ft["extra"]["shipped_why"].startswith("advise: ")
    # the report shows the plan; the push happened (nothing served before)
    ev_dir = run["steps"]["evaluate"]["output"]
    html = open(os.path.join(ev_dir, "report.html")).read()
    assert 'id="recipe"' in html and advice["cell"]["similarity"] in html
    assert 'id="label-issues"' in html and "label_issues.json" in html
    assert _summary(run, "push")["pushed"] is True
    assert os.path.exists(os.path.join(advice_dir, "advice.md"))


def test_head_rerun_reads_the_store_and_a_new_base_computes_anew(tmp_path, tiny_data):
    base = tiny_config(tmp_path, tiny_data)
    first = run_pipeline(parse_config(base), until="train_head")
    s1 = _summary(first, "train_head")
    assert s1["features_computed"] > 0 and s1["features_reused"] == 0

    count = gfeat.FORWARD_IMAGES["count"]
    changed = tiny_config(tmp_path, tiny_data, head__fc_size=16, train_head__learning_rate=0.003)
    second = run_pipeline(parse_config(changed), until="train_head")
    assert second["steps"]["train_head"]["status"] == "ran"  # a new head: not the cached step
    s2 = _summary(second, "train_head")
    assert s2["features_computed"] == 0 and s2["features_reused"] == s1["features_computed"]
    assert gfeat.FORWARD_IMAGES["count"] == count  # no image went through the base

    other_base = tiny_config(tmp_path, tiny_data, base__weights=None)
    third = run_pipeline(parse_config(other_base), until="train_head")
    s3 = _summary(third, "train_head")
    assert s3["features_computed"] == s1["features_computed"]
    assert gfeat.FORWARD_IMAGES["count"] > count


def test_graft_advise_prints_the_cell_evidence_and_plan_without_training(auto_run, capsys):
    from graft.pipeline.cli import main

    # auto_run's folder: its feature store spares the base passes, not the probes
    tmp, data = Path(auto_run["tmp"]), auto_run["data"]
    steps, models = tmp / "runs" / "steps", tmp / "models" / "tiny"
    trained, pushed = sorted(os.listdir(steps / "train_head")), sorted(os.listdir(models))
    assert main(["advise", data, *tiny_advise_sets(tmp)]) == 0
    out = capsys.readouterr().out
    assert "recipe auto: small and" in out and "(the seed's matrix)" in out
    for word in ("similarity", "features", "input size", "head", "fine-tune", "probe"):
        assert word in out, word
    assert sorted(os.listdir(steps / "train_head")) == trained  # nothing trained
    assert sorted(os.listdir(models)) == pushed  # nor pushed
    from graft.components import advise

    assert advise._EXTRACTOR == {}  # the probes' shared base is not held past advise
