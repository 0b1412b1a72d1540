"""train_head.refit: advise's learning-curve decision, and the head refit on train + val that
ships in its place when no fine-tuning runs, end to end on tiny data (real Beam, TensorFlow,
SavedModel)."""

import json
import os

import numpy as np
import pytest
from conftest import step_output, tiny_config

from graft.core.config import ConfigError, parse_config


def _refit(acc_gain, acc_low, acc_high, loss_gain, loss_low90, n_train=300, n_val=60):
    return {
        "size": 224,
        "layer": "out_relu",
        "resize": "crop",
        "n": n_train,
        "folds": 5,
        "n_train": n_train,
        "n_val": n_val,
        "fraction": n_train / (n_train + n_val),
        "accuracy": 0.85,
        "accuracy_less": 0.85 - acc_gain,
        "accuracy_gain": {"difference": acc_gain, "low": acc_low, "high": acc_high, "n": n_train},
        "log_loss": 0.40,
        "log_loss_less": 0.40 + loss_gain,
        "log_loss_gain": {"difference": loss_gain, "low": -0.01, "high": 0.05, "low90": loss_low90},
        "rule": "rule",
    }


def _decide(refit, why_not=None):
    from graft.components.advise import Plan, plan_refit

    p = Plan("auto", {"size": "small"}, {"fine_tune.enabled": False}, [])
    plan_refit(p, refit, why_not)
    d = next(x for x in p.decisions if x.what == "refit")
    assert p.overrides["train_head.refit"] == ("always" if d.choice.startswith("yes") else "never")
    return d


def test_plan_refit_refits_only_when_more_images_help_beyond_the_noise():
    d = _decide(_refit(0.01, -0.01, 0.03, 0.03, 0.008))
    assert d.choice == "yes: head on train + val (360 images)"
    assert "one-sided 90% bound +0.008" in d.reason and "83% of them" in d.reason
    assert "early stopping chose" in d.reason
    # the log loss inside the noise, or the accuracy lower: the head on train ships
    assert _decide(_refit(0.01, -0.01, 0.03, 0.01, -0.002)).choice == "no"
    assert _decide(_refit(-0.01, -0.03, 0.01, 0.03, 0.008)).choice == "no"
    # no probe (large data, fine-tuning, images): never, with the reason
    d = _decide(_refit(0.01, -0.01, 0.03, 0.03, 0.008), why_not="large data: why")
    assert d.choice == "no" and d.reason == "large data: why"


def test_a_refit_is_ruled_out_for_large_data_fine_tuning_and_a_head_on_images():
    from graft.components.advise import Plan, _refit_ruled_out

    small = Plan("auto", {}, {"fine_tune.enabled": False}, [])
    assert _refit_ruled_out(small, {}, small=True) is None
    assert "large data" in _refit_ruled_out(small, {}, small=False)
    assert "guard decides on val" in _refit_ruled_out(small, {"fine_tune.enabled": True}, True)
    tuned = Plan("auto", {}, {"fine_tune.enabled": True}, [])
    assert "guard decides on val" in _refit_ruled_out(tuned, {}, small=True)
    assert "stored features" in _refit_ruled_out(small, {"train_head.augment": True}, True)
    assert "stored features" in _refit_ruled_out(small, {"train_head.feature_cache": "off"}, True)
    # the head trains on augmented views: a refit on plain features would drop them
    views = Plan("auto", {}, {"fine_tune.enabled": False, "train_head.feature_views": 2}, [])
    assert "2 augmented views" in _refit_ruled_out(views, {}, small=True)
    assert "4 augmented views" in _refit_ruled_out(small, {"train_head.feature_views": 4}, True)


def test_your_refit_always_is_refused_before_training_where_fine_tuning_runs():
    from graft.components.advise import Evidence, Plan, _probe_refit

    ev = Evidence("mobilenet_v2", 224, 2000, 400, 2, 900, 1100, 300, [], [], [], [], 50.0)
    tuned = Plan("auto", {}, {"fine_tune.enabled": True}, [])
    with pytest.raises(ValueError, match=r"train_head.refit: always \(your setting\)"):
        _probe_refit(tuned, ev, "", None, base_cfg=None, image_size=224,
                     keep={"train_head.refit": "always"}, geometry=None, store_root="",
                     folds=5, max_probe_images=100, seed=0, small_data=1000)  # fmt: skip
    # not yours: no refit for large data, said so, and nothing measured
    _probe_refit(tuned, ev, "", None, base_cfg=None, image_size=224, keep={}, geometry=None,
                 store_root="", folds=5, max_probe_images=100, seed=0, small_data=1000)  # fmt: skip
    assert tuned.overrides["train_head.refit"] == "never" and ev.refit is None
    assert tuned.decisions[-1].reason.startswith("large data")


def test_refit_hits_measure_the_gain_of_more_images_on_the_probes_folds():
    from graft.components.advise import probe, refit_hits

    rng = np.random.default_rng(0)
    n, d = 240, 64
    y = np.repeat([0, 1, 2], n // 3)
    x = rng.normal(size=(n, d)) + 0.35 * np.eye(3)[y] @ rng.normal(size=(3, d))
    got = refit_hits(x, y, folds=4, fraction=0.3)
    assert np.array_equal(got["hits"].astype(bool), probe(x, y, 4))  # the probe's folds
    assert got["loss_less"].mean() > got["loss"].mean() + 0.05  # 30% of the images: worse
    same = refit_hits(x, y, folds=4, fraction=1.0)
    assert np.array_equal(same["hits"], same["hits_less"])  # all images both times


def test_refit_epochs_are_those_of_the_weights_early_stopping_kept():
    from graft.components.fitting import refit_epochs

    hist = [{"epoch": i + 1, "val_loss": v} for i, v in enumerate([0.9, 0.5, 0.6, 0.5, 0.7])]
    assert refit_epochs(hist, patience=3) == 2  # the first lowest val_loss: restored
    assert refit_epochs(hist, patience=0) == 5  # no early stopping: the last epoch's weights
    assert refit_epochs([], patience=3) == 0


def test_refit_always_is_refused_where_it_cannot_be_honoured(tmp_path):
    base = tiny_config(tmp_path, tmp_path, train_head__refit="always")
    assert parse_config(base).train_head.refit == "always"  # fine-tuning off: honoured
    with pytest.raises(ConfigError, match="train_head.refit: always refits the head-only"):
        parse_config(tiny_config(tmp_path, tmp_path, train_head__refit="always",
                                 fine_tune__enabled=True))  # fmt: skip
    with pytest.raises(ConfigError, match="needs train_head.augment: false"):
        parse_config(tiny_config(tmp_path, tmp_path, train_head__refit="always",
                                 train_head__augment=True))  # fmt: skip
    with pytest.raises(ConfigError, match="without the 2 augmented views per image"):
        parse_config(tiny_config(tmp_path, tmp_path, train_head__refit="always",
                                 train_head__feature_views=2))  # fmt: skip
    with pytest.raises(ConfigError, match="train_head.refit"):
        parse_config(tiny_config(tmp_path, tmp_path, train_head__refit="sometimes"))
    # under auto, advise plans fine_tune.enabled: the fine_tune step refuses a conflict
    auto = tiny_config(tmp_path, tmp_path, recipe="auto", train_head__refit="always")
    assert parse_config(auto).train_head.refit == "always"


def _counts(run) -> dict:
    stats = json.load(open(os.path.join(step_output(run, "ingest"), "stats.json")))
    return {s: sum(c.values()) for s, c in stats["counts"].items()}


def _fine_tune_extra(run) -> dict:
    return json.load(open(os.path.join(step_output(run, "fine_tune"), "result.json")))["extra"]


@pytest.mark.slow
def test_a_refit_head_trained_on_train_and_val_ships_and_every_output_says_so(tmp_path, tiny_data):
    from rich.console import Console

    from graft.components.drift import held_out_splits
    from graft.components.fitting import load_model, read_history, refit_epochs
    from graft.components.registry import served_entry
    from graft.pipeline.runner import run_pipeline
    from graft.pipeline.summary import quality_table

    cfg = parse_config(tiny_config(tmp_path, tiny_data, train_head__refit="always"))
    run = run_pipeline(cfg)
    assert run["status"] == "succeeded"
    n = _counts(run)
    head_dir = step_output(run, "train_head")
    epochs = refit_epochs(read_history(head_dir), cfg.train_head.patience)
    extra = _fine_tune_extra(run)
    refit = extra["refit"]
    assert (refit["train_images"], refit["val_images"]) == (n["train"], n["val"])
    assert refit["images"] == n["train"] + n["val"] and refit["epochs"] == epochs >= 1
    shipped = f"head refit on train+val ({n['train'] + n['val']} images, {epochs} epochs)"
    assert extra["shipped"] == shipped
    assert extra["shipped_why"] == "train_head.refit: always in the config"
    # the shipped weights are the refit's, not the head stage's; no val score claimed for it
    shipped_model = load_model(os.path.join(step_output(run, "fine_tune"), "model.keras"))
    head_model = load_model(os.path.join(head_dir, "model.keras"))
    assert not np.array_equal(shipped_model.get_weights()[-1], head_model.get_weights()[-1])
    summary = run["steps"]["fine_tune"]["summary"]
    assert summary["shipped"] == shipped and summary["val_accuracy"] is None
    assert summary["refit_images"] == refit["images"] and summary["refit_epochs"] == epochs
    # evaluate compares it with the head on train, on test; the report and the card say it
    ev = json.load(open(os.path.join(step_output(run, "evaluate"), "evaluation.json")))
    assert ev["shipped"] == shipped and ev["refit"]["images"] == refit["images"]
    assert "refit on train+val - head on train" in ev["comparisons"]
    html = open(os.path.join(step_output(run, "evaluate"), "report.html")).read()
    assert shipped in html and "head on train, early-stopped on val (not shipped)" in html
    console = Console(width=200, record=True)
    console.print(quality_table(run["steps"]["evaluate"]))
    assert f"{shipped} (candidate)" in console.export_text()
    pushed = run["steps"]["push"]["summary"]
    assert pushed["pushed"] is True
    vdir = os.path.join(cfg.push.destination, "tiny", str(pushed["version"]))
    card = open(os.path.join(vdir, "model_card.md")).read()
    line = next(x for x in card.splitlines() if x.startswith("- Shipped: "))
    assert line.startswith(f"- Shipped: {shipped}; trained on train + val (val picked")
    lineage = served_entry(cfg.push.destination, "tiny")["lineage"]
    assert lineage["training"]["trained_on"] == ["train", "val"]
    # drift then scores the served model on test alone: val is no held-out image for it
    assert held_out_splits(cfg.push.destination, "tiny") == ("test",)


@pytest.mark.slow
def test_without_a_refit_the_head_on_train_ships_and_says_why(tmp_path, tiny_data):
    from graft.components.registry import training_record
    from graft.components.train import SHIPPED_HEAD
    from graft.pipeline.runner import run_pipeline

    cfg = parse_config(tiny_config(tmp_path, tiny_data))  # recipe manual, refit auto
    run = run_pipeline(cfg, until="evaluate")
    extra = _fine_tune_extra(run)
    assert extra["refit"] is None and extra["shipped"] == SHIPPED_HEAD
    assert "refits only under recipe auto" in extra["shipped_why"]
    assert "(recipe manual)" in extra["shipped_why"]
    summary = run["steps"]["fine_tune"]["summary"]
    assert summary["shipped"] == SHIPPED_HEAD and summary["refit_images"] is None
    assert summary["val_accuracy"] == pytest.approx(run["steps"]["train_head"]["summary"][
        "val_accuracy"])  # fmt: skip
    ev = json.load(open(os.path.join(step_output(run, "evaluate"), "evaluation.json")))
    assert ev["refit"] is None and not any("refit" in k for k in ev["comparisons"])
    html = open(os.path.join(step_output(run, "evaluate"), "report.html")).read()
    assert f"Shipped: <b>{SHIPPED_HEAD}</b>" in html
    # the lineage export records: trained on train alone, so drift holds val and test out
    assert training_record(ev)["trained_on"] == ["train"]
