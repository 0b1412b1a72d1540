"""The served contract: `scores[i]` is the score of `classes[i]` over every path a user calls.

A client that zips `classes` with `scores` (what TF Serving users do) must get true pairs: over
gRPC, REST and `graft predict --model-dir`, each pair equals the Keras model's softmax for that
label. Models pushed before `probabilities` existed (scores in label order) still read right.
"""

import base64
import json
import os
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from graft.components import data as gdata
from graft.components.model import label_order_scores
from graft.components.train import load_model
from graft.serving.client import GraftClient
from graft.serving.launch import ServerProcess
from graft.serving.local import LocalPredictor

pytestmark = pytest.mark.slow  # trains a model (the shared pipeline_run)


@pytest.fixture(scope="module")
def truth(pipeline_run):
    """Test blobs, labels and the Keras model's softmax per image (label order)."""
    cfg, run, _ = pipeline_run
    examples = run["steps"]["ingest"]["output"]
    blobs = [b for b, _ in gdata.raw_dataset(examples, "test").take(6).as_numpy_iterator()]
    pixels = np.stack(
        [gdata.decode_and_resize(tf.constant(b), cfg.data.image_size).numpy() for b in blobs]
    )
    model = load_model(os.path.join(run["steps"]["fine_tune"]["output"], "model.keras"))
    probs = model.predict(pixels, verbose=0)
    labels = gdata.read_labels(examples)
    return blobs, labels, probs, run["steps"]["push"]["summary"]["destination"]


def _assert_paired(classes, scores, labels, probs):
    """Every (class, score) pair is the softmax of that class; best first."""
    assert len(classes) == len(probs)
    for row_c, row_s, p in zip(classes, scores, probs, strict=True):
        names = [c.decode() if isinstance(c, bytes) else c for c in row_c]
        got = dict(zip(names, (float(s) for s in row_s), strict=True))
        want = {lab: float(p[i]) for i, lab in enumerate(labels)}
        assert set(got) == set(want)
        assert max(abs(got[k] - want[k]) for k in want) <= 1e-4, (got, want)
        assert list(row_s) == sorted(row_s, reverse=True)


def test_saved_model_outputs_are_paired_and_keep_label_order(truth):
    blobs, labels, probs, version_dir = truth
    out = tf.saved_model.load(version_dir).signatures["serving_default"](
        image_bytes=tf.constant(blobs)
    )
    assert set(out) == {"classes", "scores", "probabilities"}
    _assert_paired(out["classes"].numpy(), out["scores"].numpy(), labels, probs)
    assert np.abs(out["probabilities"].numpy() - probs).max() <= 1e-4


def test_model_dir_predictions_are_paired(truth, tmp_path):
    blobs, labels, probs, version_dir = truth
    files = []
    for i, b in enumerate(blobs):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(b)
    preds = LocalPredictor(version_dir).predict([str(f) for f in files], top_k=len(labels))
    _assert_paired([p.labels for p in preds], [p.scores for p in preds], labels, probs)


def test_grpc_and_rest_outputs_are_paired(truth):
    blobs, labels, probs, version_dir = truth
    base = os.path.dirname(version_dir)
    with ServerProcess(base, "tiny", rest=True) as srv:
        srv.wait_healthy()
        with GraftClient(srv.target, "tiny") as c:
            resp = c.predict_raw(blobs)
        classes = tf.make_ndarray(resp.outputs["classes"])
        _assert_paired(classes, tf.make_ndarray(resp.outputs["scores"]), labels, probs)
        body = json.dumps(
            {"instances": [{"image_bytes": {"b64": base64.b64encode(b).decode()}} for b in blobs]}
        ).encode()
        url = f"http://127.0.0.1:{srv.rest_port}/v1/models/tiny:predict"
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=60) as r:
            rows = json.load(r)["predictions"]
    _assert_paired([r["classes"] for r in rows], [r["scores"] for r in rows], labels, probs)


def test_models_pushed_with_label_order_scores_still_read_right(truth, pipeline_run, tmp_path):
    """An old-layout SavedModel (scores in label order, no probabilities), exported as Graft
    did before: predict and evaluate's baseline reader still pair classes and scores right."""
    import keras

    blobs, labels, probs, _ = truth
    cfg, run, _ = pipeline_run
    model = load_model(os.path.join(run["steps"]["fine_tune"]["output"], "model.keras"))
    size, label_t = cfg.data.image_size, tf.constant(labels)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        pixels = tf.map_fn(
            lambda b: gdata.decode_and_resize(b, size),
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        scores = tf.cast(model(pixels, training=False), tf.float32)
        order = tf.argsort(scores, axis=-1, direction="DESCENDING", stable=True)
        return {"scores": scores, "classes": tf.gather(label_t, order)}

    old_dir = tmp_path / "old" / "1"
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", serving_default)
    archive.write_out(str(old_dir), verbose=False)
    out = tf.saved_model.load(str(old_dir)).signatures["serving_default"](
        image_bytes=tf.constant(blobs)
    )
    assert "probabilities" not in out
    assert np.abs(label_order_scores(out).numpy() - probs).max() <= 1e-4
    files = []
    for i, b in enumerate(blobs):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(b)
    preds = LocalPredictor(str(old_dir)).predict([str(f) for f in files], top_k=len(labels))
    _assert_paired([p.labels for p in preds], [p.scores for p in preds], labels, probs)
