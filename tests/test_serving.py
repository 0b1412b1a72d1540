"""The local TF-Serving-compatible server, in a real subprocess, over real gRPC on loopback."""

import base64
import io
import json
import os
import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2

from graft.components import data as gdata
from graft.serving.client import GraftClient, _string_tensor
from graft.serving.launch import ServerProcess

pytestmark = pytest.mark.slow  # trains a model


@pytest.fixture(scope="module")
def served(pipeline_run, tmp_path_factory):
    cfg, run, tmp = pipeline_run
    base = tmp_path_factory.mktemp("serving") / "tiny"
    shutil.copytree(os.path.join(cfg.push.destination, "tiny"), base)
    srv = ServerProcess(
        str(base),
        "tiny",
        rest=True,
        extra=["--max-message-mb", "4", "--max-pixels", "25000000"],
        log_path=str(base.parent / "server.log"),
    ).wait_healthy()
    examples = run["steps"]["ingest"]["output"]
    blobs = [b for b, _ in gdata.raw_dataset(examples, "test").as_numpy_iterator()]
    yield srv, base, blobs
    assert srv.stop() == 0  # stopped cleanly on SIGTERM


def test_grpc_equals_in_process_saved_model(served):
    srv, base, blobs = served
    with GraftClient(srv.target, "tiny") as c:
        resp = c.predict_raw(blobs)
    version = resp.model_spec.version.value
    local = tf.saved_model.load(str(base / str(version))).signatures["serving_default"](
        image_bytes=tf.constant(blobs)
    )
    got = tf.make_ndarray(resp.outputs["scores"])
    assert np.max(np.abs(got - local["scores"].numpy())) <= 1e-5
    assert (tf.make_ndarray(resp.outputs["classes"]) == local["classes"].numpy()).all()


def test_metadata_lists_both_signatures(served, pipeline_run):
    srv, _, _ = served
    size = str(pipeline_run[0].data.image_size)
    with GraftClient(srv.target, "tiny") as c:
        md = c.metadata()
        status = c.status()
    sigs = md["signature_def"]
    assert set(sigs) >= {"serving_default", "predict_pixels"}
    sd = sigs["serving_default"]
    assert sd["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert [d["size"] for d in sd["inputs"]["image_bytes"]["tensorShape"]["dim"]] == ["-1"]
    assert (
        sd["outputs"]["scores"]["dtype"] == "DT_FLOAT"
        and sd["outputs"]["classes"]["dtype"] == "DT_STRING"
    )
    pp = sigs["predict_pixels"]["inputs"]["pixels"]
    assert pp["dtype"] == "DT_FLOAT" and [d["size"] for d in pp["tensorShape"]["dim"]] == [
        "-1",
        size,
        size,
        "3",
    ]
    assert status and status[-1]["state"] == "AVAILABLE"


def _request(inputs: dict, name="tiny", version=None, signature="serving_default"):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(v)
    return req


def _png(w, h) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def test_abuse_gets_right_codes_and_server_keeps_serving(served):
    srv, _, blobs = served
    good = _request({"image_bytes": _string_tensor(blobs[:1])})
    cases = {
        "empty request": (_request({}), grpc.StatusCode.INVALID_ARGUMENT),
        "wrong input name": (
            _request({"image": _string_tensor(blobs[:1])}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "wrong dtype": (
            _request({"image_bytes": tf.make_tensor_proto(np.zeros(2, np.float32))}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "wrong shape": (
            _request(
                {"pixels": tf.make_tensor_proto(np.zeros((1, 8, 8, 3), np.float32))},
                signature="predict_pixels",
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "random bytes": (
            _request({"image_bytes": _string_tensor([os.urandom(2000)])}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "10000x10000 png": (
            _request({"image_bytes": _string_tensor([_png(10000, 10000)])}),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        "over the size limit": (
            _request({"image_bytes": _string_tensor([os.urandom(5 * 1024 * 1024)])}),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        "unknown model": (
            _request({"image_bytes": _string_tensor(blobs[:1])}, name="nope"),
            grpc.StatusCode.NOT_FOUND,
        ),
        "unknown version": (
            _request({"image_bytes": _string_tensor(blobs[:1])}, version=12345),
            grpc.StatusCode.NOT_FOUND,
        ),
        "unknown signature": (
            _request({"image_bytes": _string_tensor(blobs[:1])}, signature="nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    }
    with GraftClient(srv.target, "tiny", max_message_mb=16) as c:
        for name, (req, code) in cases.items():
            with pytest.raises(grpc.RpcError) as e:
                c.predictions.Predict(req, timeout=30)
            assert e.value.code() == code, f"{name}: {e.value.code()} {e.value.details()}"
            assert e.value.details(), name
            assert (
                c.predictions.Predict(good, timeout=30).outputs["scores"].tensor_shape.dim[1].size
                == 3
            ), name
    assert srv.proc.poll() is None


def test_sixteen_concurrent_clients(served):
    srv, _, blobs = served

    def worker(i):
        with GraftClient(srv.target, "tiny") as c:
            for j in range(50):
                p = c.predict([blobs[(i + j) % len(blobs)]])[0]
                assert len(p.labels) == 3
        return 50

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(worker, range(16))) == 800


def test_rest_b64_predict_and_status(served):
    srv, _, blobs = served
    url = f"http://127.0.0.1:{srv.rest_port}/v1/models/tiny"
    body = json.dumps(
        {"instances": [{"image_bytes": {"b64": base64.b64encode(blobs[0]).decode()}}]}
    ).encode()
    out = json.load(
        urllib.request.urlopen(urllib.request.Request(url + ":predict", data=body), timeout=30)
    )
    pred = out["predictions"][0]
    assert len(pred["scores"]) == 3 and len(pred["classes"]) == 3
    st = json.load(urllib.request.urlopen(url, timeout=10))
    assert st["model_version_status"][0]["state"] == "AVAILABLE"
    md = json.load(urllib.request.urlopen(url + "/metadata", timeout=10))
    assert "serving_default" in md["metadata"]["signature_def"]["signature_def"]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(
            urllib.request.Request(
                url + ":predict", data=b'{"instances": [{"image_bytes": {"b64": "AAAA"}}]}'
            )
        )
    assert e.value.code == 400


def test_cli_predict_json(served, capsys, tmp_path):
    from graft.pipeline.cli import main

    srv, _, blobs = served
    img = tmp_path / "x.jpg"
    img.write_bytes(blobs[0])
    assert (
        main(
            [
                "predict",
                "--server",
                srv.target,
                "--model",
                "tiny",
                "--json",
                "--top-k",
                "2",
                str(img),
            ]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert len(row["labels"]) == 2 and row["scores"][0] >= row["scores"][1]


def test_hot_reload_without_failed_requests(pipeline_run, tmp_path):
    cfg, run, tmp = pipeline_run
    base = tmp_path / "tiny"
    shutil.copytree(os.path.join(cfg.push.destination, "tiny"), base)
    old = max(int(v) for v in os.listdir(base) if v.isdigit())
    blobs = [
        b
        for b, _ in gdata.raw_dataset(run["steps"]["ingest"]["output"], "test")
        .take(2)
        .as_numpy_iterator()
    ]
    seen, failures, stop = set(), [], threading.Event()
    with ServerProcess(str(base), "tiny", poll_seconds=1.0) as srv:

        def loop():
            with GraftClient(srv.target, "tiny", retries=0) as c:
                while not stop.is_set():
                    try:
                        seen.add(c.predict_raw(blobs).model_spec.version.value)
                    except grpc.RpcError as e:
                        failures.append(e.code())

        t = threading.Thread(target=loop)
        t.start()
        time.sleep(1.0)
        shutil.copytree(base / str(old), base / f".tmp-{old + 1}")
        os.rename(base / f".tmp-{old + 1}", base / str(old + 1))  # what push does
        deadline = time.time() + 60
        while old + 1 not in seen and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        stop.set()
        t.join()
        with GraftClient(srv.target, "tiny") as c:
            states = {s["version"]: s["state"] for s in c.status()}
    assert not failures, failures[:3]
    assert old + 1 in seen and old in seen
    assert states[old + 1] == "AVAILABLE" and states[old] == "END"
