"""A scheduled re-run pays for new images only: evaluate scores the head-only model on stored
base features, the served model's scores are kept per (version, image sha256), and drift reads
the feature store. Real TensorFlow, SavedModels and the local runner, on the tiny demo base.
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import step_output, step_summary, tiny_config

from graft.components import data as gdata
from graft.components import features as gfeat
from graft.components.evaluate import _pixels, _test_data, head_scores_from_features
from graft.components.fitting import RESULT, load_model
from graft.components.model import predict_scores
from graft.components.served_scores import (
    SEED_FILE,
    FeatureSource,
    ServedScores,
    read_seed,
    served_head,
)
from graft.core.config import parse_config
from graft.pipeline.runner import run_pipeline

pytestmark = pytest.mark.slow  # the session's pipeline run trains the tiny model


def _head_store(run: dict) -> dict:
    with open(os.path.join(step_output(run, "train_head"), RESULT)) as f:
        return json.load(f)["extra"]["feature_store"]


def test_head_scores_from_features_equal_the_whole_model(pipeline_run, tmp_path):
    cfg, run, _ = pipeline_run
    ev = json.load(open(os.path.join(step_output(run, "evaluate"), "evaluation.json")))
    assert ev["scoring"]["head_only"]["from"] == "stored features"
    examples = step_output(run, "ingest")
    model = load_model(os.path.join(step_output(run, "train_head"), "model.keras"))
    blobs, y, shas = _test_data(examples, set())
    whole = predict_scores(model, _pixels(blobs, 48, gdata.SQUASH))
    # an empty store: the features computed here; the run's store: the rows evaluate stored
    empty = {**_head_store(run), "root": str(tmp_path / "store")}
    for store, computed in ((empty, len(set(shas))), (_head_store(run), 0)):
        probs, how = head_scores_from_features(
            model,
            examples,
            shas,
            exclude=set(),
            feature_store=store,
            image_size=48,
            geometry=gdata.SQUASH,
        )
        diff = float(np.max(np.abs(probs - whole)))
        print(f"head on features vs whole model, {len(y)} test images: max abs diff {diff:.2e}")
        assert diff < 1e-5 and how["computed"] == computed
        assert (probs.argmax(1) == whole.argmax(1)).all()
    # the pushed version carries evaluate's candidate scores, as its SavedModel computes them
    version_dir = step_summary(run, "push")["destination"]
    seed = read_seed(os.path.join(version_dir, SEED_FILE), ev["labels"])
    assert set(seed) == set(shas)
    fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    served = fn(image_bytes=tf.constant(blobs))["probabilities"].numpy()
    assert np.max(np.abs(np.stack([seed[s] for s in shas]) - served)) < 1e-4


def test_rerun_runs_the_base_and_the_served_model_on_new_images_only(
    pipeline_run, tiny_data, tmp_path
):
    from graft.components.demo_data import generate

    cfg, run, tmp = pipeline_run
    data, dest, store = tmp_path / "images", tmp_path / "models", tmp_path / "features"
    shutil.copytree(tiny_data, data)
    shutil.copytree(cfg.push.destination, dest)
    shutil.copytree(_head_store(run)["root"], store)
    generate(tmp_path / "more", classes=3, per_class=5, size=48, seed=7)
    for f in (tmp_path / "more").rglob("*.jpg"):
        shutil.copy(f, data / f.parent.name / f"new_{f.name}")
    again = parse_config(
        tiny_config(
            tmp_path,
            data,
            train_head__epochs=2,
            fine_tune__enabled=False,
            push__destination=str(dest),
            features__store=str(store),
            evaluate__max_regression=1.0,  # run 2 pushes whatever it scores, a tie too
            evaluate__bless_ties=True,
        )
    )
    r2 = run_pipeline(again)
    old_test = {m["sha256"] for m in gfeat.split_rows(step_output(run, "ingest"), "test")}
    new_test = {m["sha256"] for m in gfeat.split_rows(step_output(r2, "ingest"), "test")}
    added_test = new_test - old_test
    assert old_test < new_test and added_test
    drift = json.load(open(os.path.join(step_output(r2, "drift"), "drift.json")))
    emb = drift["metrics"]["embedding_mmd2"]
    # the base ran over the added images only: the served snapshot's came from the store
    assert emb["features_computed"] == drift["compared"]["added_distinct"] == 15
    v1 = drift["served_version"]
    model = load_model(os.path.join(step_output(r2, "train_head"), "model.keras"))
    source = _source(model, store, _head_store(r2)["fingerprint"])
    # v1 is the fixture's fine-tuned model (its guard is off): no head on this base's stored
    # features computes its scores, only the served SavedModel itself
    head_served = served_head(str(dest), "tiny", v1, source) is not None
    assert not head_served
    conf = drift["metrics"]["confidence_js"]["scores"]
    asked = drift["compared"]["old_held_out"] + drift["compared"]["new_sample"]
    assert conf["seeded"] > 0 and conf["stored"] == 0
    assert conf["seeded"] + conf["on_features"] + conf["computed"] == asked
    assert (conf["computed"] == 0) == head_served
    ev = json.load(open(os.path.join(step_output(r2, "evaluate"), "evaluation.json")))
    head, base = ev["scoring"]["head_only"], ev["scoring"]["baseline"]
    assert ev["baseline_version"] == v1
    assert head == {"from": "stored features", "computed": 0, "reused": len(new_test)}
    # the served model: its own scores on the old test images, drift's on the added ones
    assert base["seeded"] == len(old_test) and base["stored"] == len(added_test)
    assert base["on_features"] == base["computed"] == 0
    # and those scores are the served SavedModel's own
    blobs, y, shas = _test_data(step_output(r2, "ingest"), set())
    fresh = _serving(dest, v1, blobs)
    kept = ServedScores.of(str(dest), "tiny", v1, ev["labels"], str(store))
    assert np.max(np.abs(kept.scores(shas, blobs) - fresh)) < 1e-4
    assert kept.counts()["computed"] == 0
    assert ev["baseline"]["accuracy"] == pytest.approx(float((fresh.argmax(1) == y).mean()))
    # run 2 pushed a head-only model: its head on the stored features is its SavedModel
    v2 = step_summary(r2, "push")["version"]
    head_fn = served_head(str(dest), "tiny", v2, source)
    assert head_fn is not None
    feats = source.store.load(source.base.layers[-1].name)
    on_features = head_fn(np.stack([feats[s] for s in shas]))
    diff = float(np.max(np.abs(on_features - _serving(dest, v2, blobs))))
    print(f"served head on stored features vs its SavedModel: max abs diff {diff:.2e}")
    assert diff < 1e-4


def _source(model, store, fingerprint) -> FeatureSource:
    from graft.components.model import base_of

    feature_store = gfeat.FeatureStore(str(store), fingerprint, 48)
    return FeatureSource(base_of(model), feature_store, 48, gdata.SQUASH)


def _serving(dest, version, blobs) -> np.ndarray:
    fn = tf.saved_model.load(os.path.join(dest, "tiny", str(version))).signatures["serving_default"]
    return fn(image_bytes=tf.constant(blobs))["probabilities"].numpy()


def test_a_torn_feature_part_is_set_aside_and_its_rows_computed_again(tmp_path):
    """A part a crash left torn on disk failed every later run that read the shared store."""
    store = gfeat.RowStore(str(tmp_path / "rows"))
    store.put(["a", "b"], np.ones((2, 3), np.float32))
    (good,) = os.listdir(tmp_path / "rows")
    torn = tmp_path / "rows" / "part-torn.npz"
    torn.write_bytes((tmp_path / "rows" / good).read_bytes()[:40])
    rows = gfeat.RowStore(str(tmp_path / "rows")).load()
    assert sorted(rows) == ["a", "b"]
    assert sorted(os.listdir(tmp_path / "rows")) == [".unreadable-part-torn.npz", good]
