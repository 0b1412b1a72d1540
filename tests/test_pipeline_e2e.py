"""The local pipeline end to end on tiny generated data: SavedModel, caching, blessing, push."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import step_output as _out
from conftest import tiny_config
from model_copies import other_model_export

from graft.components import data as gdata
from graft.components.registry import versions
from graft.components.train import load_model
from graft.core.config import parse_config
from graft.pipeline.runner import run_pipeline

pytestmark = pytest.mark.slow  # trains a model


def test_saved_model_matches_keras_on_raw_jpeg_bytes(pipeline_run):
    cfg, run, tmp = pipeline_run
    assert run["status"] == "succeeded"
    push = run["steps"]["push"]["summary"]
    assert push["pushed"] and os.path.isdir(push["destination"])
    sm = tf.saved_model.load(push["destination"])
    fn = sm.signatures["serving_default"]
    model = load_model(os.path.join(_out(run, "fine_tune"), "model.keras"))
    examples = _out(run, "ingest")
    blobs = [b for b, _ in gdata.raw_dataset(examples, "test").as_numpy_iterator()]
    assert len(blobs) >= 5
    served = fn(image_bytes=tf.constant(blobs))
    pixels = np.stack(
        [gdata.decode_and_resize(tf.constant(b), cfg.data.image_size).numpy() for b in blobs]
    )
    keras_probs = model.predict(pixels, verbose=0)
    assert np.abs(served["probabilities"].numpy() - keras_probs).max() <= 1e-4
    labels = gdata.read_labels(examples)
    top = [c[0].decode() for c in served["classes"].numpy()]
    assert top == [labels[i] for i in keras_probs.argmax(1)]
    assert set(sm.signatures) >= {"serving_default", "predict_pixels"}
    assert open(os.path.join(push["destination"], "assets", "labels.txt")).read().split() == labels
    card = json.load(open(os.path.join(push["destination"], "model_card.json")))
    assert card["labels"] == labels and card["parity_max_abs_diff"] <= 1e-4
    ev = json.load(open(os.path.join(_out(run, "evaluate"), "evaluation.json")))
    assert card["metrics"]["balanced_accuracy"] == ev["candidate"]["balanced_accuracy"]
    card_md = open(os.path.join(push["destination"], "model_card.md")).read()
    assert f"balanced accuracy {ev['candidate']['balanced_accuracy']:.4f}" in card_md


def test_flip_average_export_is_mirror_invariant_and_matches_evaluation(pipeline_run, tmp_path):
    from graft.components.evaluate import evaluate
    from graft.components.export import export

    cfg, run, tmp = pipeline_run
    examples, model_dir = _out(run, "ingest"), _out(run, "fine_tune")
    ev_dir = tmp_path / "evaluate"
    ev = evaluate(
        examples,
        _out(run, "train_head"),
        model_dir,
        str(ev_dir),
        cfg=cfg.evaluate,
        destination=cfg.push.destination,
        model_name="flip",
        image_size=cfg.data.image_size,
        flip_average=True,
    )
    # the parity check inside export compares the SavedModel with evaluation's scoring
    r = export(
        model_dir,
        examples,
        str(ev_dir),
        str(tmp_path / "export"),
        cfg=cfg.export.model_copy(update={"model_name": "flip", "flip_average": True}),
        image_size=cfg.data.image_size,
        base=cfg.base,
        head=cfg.head,
    )
    assert r.parity_max_abs_diff <= 1e-4
    blobs = [b for b, _ in gdata.raw_dataset(examples, "test").as_numpy_iterator()]
    pixels = tf.constant(
        np.stack(
            [gdata.decode_and_resize(tf.constant(b), cfg.data.image_size).numpy() for b in blobs]
        )
    )
    mirror = tf.reverse(pixels, axis=[2])
    flip = tf.saved_model.load(r.path).signatures["predict_pixels"]
    plain = tf.saved_model.load(run["steps"]["export"]["summary"]["path"]).signatures[
        "predict_pixels"
    ]
    assert (
        np.abs(flip(pixels=pixels)["scores"].numpy() - flip(pixels=mirror)["scores"].numpy()).max()
        <= 1e-5
    )
    assert (
        np.abs(
            plain(pixels=pixels)["scores"].numpy() - plain(pixels=mirror)["scores"].numpy()
        ).max()
        > 1e-3
    )
    served = flip(pixels=pixels)["probabilities"].numpy()
    y = np.array([int(v) for _, v in gdata.raw_dataset(examples, "test").as_numpy_iterator()])
    assert abs(ev.candidate["accuracy"] - (served.argmax(1) == y).mean()) <= 1 / len(
        y
    )  # one near-tie at most
    card = open(os.path.join(r.path, "model_card.md")).read()
    assert "mirror image" in card


def test_run_json_and_reports(pipeline_run):
    cfg, run, tmp = pipeline_run
    rec = json.load(open(os.path.join(run["run_dir"], "run.json")))
    assert list(rec["steps"]) == [
        "ingest",
        "validate",
        "drift",
        "advise",
        "train_head",
        "fine_tune",
        "evaluate",
        "export",
        "push",
    ]
    assert all(s["status"] == "ran" and s["fingerprint"] for s in rec["steps"].values())
    ev = json.load(open(os.path.join(_out(run, "evaluate"), "evaluation.json")))
    for key in (
        "accuracy",
        "top_3_accuracy",
        "macro_f1",
        "log_loss",
        "ece",
        "per_class",
        "confusion_matrix",
    ):
        assert key in ev["candidate"] and key in ev["head_only"]
    report = open(os.path.join(_out(run, "evaluate"), "report.html"), encoding="utf-8").read()
    assert len(report) > 10_000 and "<h2>Data checks (validate)</h2>" in report
    for png in ("confusion_matrix.png", "per_class_f1.png", "training_curves.png"):
        assert open(os.path.join(_out(run, "evaluate"), png), "rb").read(4) == b"\x89PNG"


def test_second_run_is_cached_and_lr_change_reruns_downstream(pipeline_run):
    cfg, run, tmp = pipeline_run
    t0 = time.time()
    again = run_pipeline(cfg)
    t_cached = time.time() - t0
    status = {k: v["status"] for k, v in again["steps"].items()}
    assert all(
        status[s] == "cached"
        for s in ("ingest", "validate", "train_head", "fine_tune", "evaluate", "export")
    )
    assert again["steps"]["push"]["summary"]["already_at_destination"]
    assert not again["steps"]["push"]["summary"]["pushed"]
    assert t_cached * 4 < run["seconds"], (t_cached, run["seconds"])
    changed = parse_config(
        {
            **cfg.to_dict(),
            "fine_tune": {**cfg.fine_tune.model_dump(), "learning_rate": 3e-4},
            "push": {**cfg.push.model_dump(), "destination": str(tmp / "other-models")},
        }
    )
    third = run_pipeline(changed)
    status = {k: v["status"] for k, v in third["steps"].items()}
    assert status["ingest"] == status["validate"] == status["train_head"] == "cached"
    assert status["fine_tune"] == status["evaluate"] == status["export"] == "ran"


def test_worse_model_is_not_pushed_unless_forced(pipeline_run, tiny_data, tmp_path):
    cfg, run, tmp = pipeline_run
    dest = tmp_path / "models"
    shutil.copytree(cfg.push.destination, dest)
    before = versions(str(dest), "tiny")
    # a deliberately poor candidate: a head given one epoch at a learning rate of 1e-6 stays
    # near its random start (chance: 0.33), far below the served model
    bad = parse_config(
        tiny_config(
            tmp_path,
            tiny_data,
            train_head__epochs=1,
            train_head__learning_rate=1e-6,
            push__destination=str(dest),
            evaluate__max_regression=0.0,
        )
    )
    r = run_pipeline(bad)
    ev = r["steps"]["evaluate"]["summary"]
    assert ev["baseline_accuracy"] is not None and ev["accuracy"] < ev["baseline_accuracy"], ev
    assert not ev["blessed"] and any("regression" in x for x in ev["reasons"])
    for step in ("export", "push"):  # not blessed: neither runs, neither writes an output
        rec = r["steps"][step]
        assert (
            rec["status"] == "skipped" and rec["summary"]["reason"] == "evaluate.blessed is false"
        )
        assert not os.path.exists(rec["output"]) and rec["seconds"] == 0.0
    assert versions(str(dest), "tiny") == before
    forced = run_pipeline(bad, force_push=True)
    p = forced["steps"]["push"]["summary"]
    assert p["pushed"] and p["forced"] and versions(str(dest), "tiny") == before + [p["version"]]


def test_interrupted_push_leaves_no_partial_version(pipeline_run, tmp_path):
    cfg, run, tmp = pipeline_run
    dest = tmp_path / "models"
    shutil.copytree(cfg.push.destination, dest)
    before = versions(str(dest), "tiny")
    # another model (changed weights): push refuses one the destination already has
    new_export = other_model_export(_out(run, "export"), tmp_path / "export", scale=1.01)
    code = f"""
from graft.components.push import push
from graft.core.config import PushConfig
push({str(new_export)!r}, {_out(run, "evaluate")!r}, {str(tmp_path / "p")!r},
     cfg=PushConfig(destination={str(dest)!r}), model_name="tiny", force=True)
"""  # force: the run's evaluation saw no baseline, so the push-time re-check would refuse it
    # killed between the verified copy and the rename: the process dies as it takes the lock
    kill = """
import os, pytest, graft.components.push
pytest.MonkeyPatch().setattr(graft.components.push, "_destination_lock", lambda r: os._exit(17))
"""
    proc = subprocess.run([sys.executable, "-c", kill + code])
    assert proc.returncode == 17
    assert versions(str(dest), "tiny") == before
    # registry.json (the lineage index) is expected beside the versions; TF Serving ignores it
    leftovers = [d for d in os.listdir(dest / "tiny") if not d.isdigit() and d != "registry.json"]
    assert leftovers and all(d.startswith(".tmp-") for d in leftovers)  # invisible to TF Serving
    for v in before:
        tf.saved_model.load(str(dest / "tiny" / str(v)))  # previous versions intact
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == 0
    after = versions(str(dest), "tiny")
    assert len(after) == len(before) + 1 and not [
        d for d in os.listdir(dest / "tiny") if not d.isdigit() and d != "registry.json"
    ]


def test_warmup_records_are_answered(pipeline_run):
    from tensorflow_serving.apis import prediction_log_pb2

    cfg, run, tmp = pipeline_run
    version_dir = run["steps"]["push"]["summary"]["destination"]
    fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    path = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
    n = 0
    for rec in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(rec)
        req = log.predict_log.request
        assert req.model_spec.name == "tiny" and req.model_spec.signature_name == "serving_default"
        out = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in req.inputs.items()})
        assert out["scores"].shape[-1] == 3
        n += 1
    assert n == 2


def test_test_predictions_csv_scores_as_evaluation_says(pipeline_run):
    import csv

    _, run, _ = pipeline_run
    out = _out(run, "evaluate")
    ev = json.load(open(os.path.join(out, "evaluation.json")))
    rows = list(csv.DictReader(open(os.path.join(out, "test_predictions.csv"))))
    assert len(rows) == ev["test_examples"] == len({r["sha256"] for r in rows})
    for model in ("head_only", "candidate"):
        acc = np.mean([r[model] == r["label"] for r in rows])
        assert acc == pytest.approx(ev[model]["accuracy"])
        assert all(0 < float(r[f"{model}_score"]) <= 1 for r in rows)
