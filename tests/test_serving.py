"""The local TF-Serving-compatible server, in a real subprocess, over real gRPC on loopback."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
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
        extra=[
            *("--max-message-mb", "4", "--max-pixels", "25000000"),
            # a few test images per chunk, so every multi-image test runs the chunked path
            *("--decode-chunk-pixels", "20000", "--rest-idle-timeout", "2"),
        ],
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


def _declared(dtype, dims, **values):
    """A TensorProto whose shape says more values than it carries."""
    proto = tensor_pb2.TensorProto(dtype=dtype, **values)
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims)
    return proto


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
        # a shape larger than the values carried: never expanded (a few bytes asking for
        # gigabytes), and dims whose product overflows int64 are named, not an INTERNAL error
        "a billion strings declared, one sent": (
            _request({"image_bytes": _declared(types_pb2.DT_STRING, [10**9], string_val=[b"x"])}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "20000x20000 pixels declared, one sent": (
            _request(
                {"pixels": _declared(types_pb2.DT_FLOAT, [1, 20000, 20000, 3], float_val=[0.0])},
                signature="predict_pixels",
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "dims overflowing int64": (
            _request({"image_bytes": _declared(types_pb2.DT_STRING, [2**32, 2**32])}),
            grpc.StatusCode.INVALID_ARGUMENT,
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


# ---------------------------------------------------------------- limits, errors, TLS, reloads


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def _jpeg(w=64, h=64, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _post(url: str, body: bytes, headers: dict | None = None, timeout: float = 60):
    """(status, parsed JSON body) of a POST; HTTP errors are answers here, not exceptions."""
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def _good(srv, blobs) -> None:
    with GraftClient(srv.target, "tiny", retries=0) as c:
        assert len(c.predict([blobs[0]])[0].labels) == 3


@pytest.mark.timeout(300)
def test_huge_requests_are_refused_quickly_and_memory_stays_flat(served):
    srv, _, blobs = served
    _good(srv, blobs)
    idle = _rss_mb(srv.proc.pid)
    tiny_png = _png(8, 8)
    peak = idle

    # gRPC: 5,000 tiny PNGs in one request (the probe took 1.6 -> 4.4 GB)
    req = _request({"image_bytes": _string_tensor([tiny_png] * 5000)})
    with GraftClient(srv.target, "tiny", retries=0) as c:
        t0 = time.time()
        with pytest.raises(grpc.RpcError) as e:
            c.predictions.Predict(req, timeout=60)
        took = time.time() - t0
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "5,000" in e.value.details() and "--max-images" in e.value.details()
    assert took < 5, took
    peak = max(peak, _rss_mb(srv.proc.pid))
    _good(srv, blobs)

    # gRPC: ten 4000x4000 images, each under --max-pixels, together over the request budget
    big = _png(4000, 4000)
    with GraftClient(srv.target, "tiny", retries=0) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.predictions.Predict(_request({"image_bytes": _string_tensor([big] * 10)}), timeout=60)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-request-pixels" in e.value.details()
    peak = max(peak, _rss_mb(srv.proc.pid))
    _good(srv, blobs)

    url = f"http://127.0.0.1:{srv.rest_port}/v1/models/tiny:predict"
    # REST: 20,000 small instances, under the body limit: refused on the count
    inst = {"image_bytes": {"b64": base64.b64encode(tiny_png).decode()}}
    body = json.dumps({"instances": [inst] * 20_000}).encode()
    t0 = time.time()
    code, out = _post(url, body)
    assert code == 413 and "--max-images" in out["error"], (code, out)
    assert time.time() - t0 < 5
    peak = max(peak, _rss_mb(srv.proc.pid))
    _good(srv, blobs)

    # REST: 20,000 instances of a real image, ~38 MB of JSON: refused on the body size
    inst = {"image_bytes": {"b64": base64.b64encode(_jpeg(40, 40) + b"\0" * 900).decode()}}
    body = json.dumps({"instances": [inst] * 20_000}).encode()
    assert len(body) > 30 * 2**20
    t0 = time.time()
    code, out = _post(url, body)
    assert code == 413 and "--max-message-mb" in out["error"], (code, out)
    assert time.time() - t0 < 10
    peak = max(peak, _rss_mb(srv.proc.pid))
    _good(srv, blobs)
    assert peak - idle < 200, f"server RSS {idle:.0f} MB idle, {peak:.0f} MB after the requests"
    assert srv.proc.poll() is None


def test_truncated_jpeg_and_empty_batch_errors_keep_their_cause(served):
    srv, _, blobs = served
    jpeg = _jpeg(64, 64)
    cut = jpeg[: len(jpeg) // 2]
    with GraftClient(srv.target, "tiny", retries=0) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.predict_raw([blobs[0], cut])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Invalid JPEG data" in e.value.details(), e.value.details()
        assert "Graph execution error" not in e.value.details()
        assert "<stack traces unavailable>" not in e.value.details(), e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            c.predict_raw([])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "empty batch" in e.value.details()
    url = f"http://127.0.0.1:{srv.rest_port}/v1/models/tiny:predict"
    body = {"instances": [{"image_bytes": {"b64": base64.b64encode(cut).decode()}}]}
    code, out = _post(url, json.dumps(body).encode())
    assert code == 400 and "Invalid JPEG data" in out["error"], out
    assert "stack traces" not in out["error"], out


def _nested(depth: int) -> list:
    value: list = [1.0]
    for _ in range(depth):
        value = [value]
    return value


def test_rest_client_mistakes_get_400_saying_what_is_wrong(served):
    import http.client

    srv, _, blobs = served
    url = f"http://127.0.0.1:{srv.rest_port}/v1/models/tiny:predict"
    b64 = {"b64": base64.b64encode(blobs[0]).decode()}
    cases = {
        "top-level list": (json.dumps([{"image_bytes": b64}]), "top-level list"),
        "instances with different keys": (
            json.dumps({"instances": [{"image_bytes": b64}, {"image": b64}]}),
            "instances[1] has keys ['image']",
        ),
        "plain string for bytes": (
            json.dumps({"instances": [{"image_bytes": "not base64, not bytes"}]}),
            '{"b64"',
        ),
        "b64 of a number": (json.dumps({"instances": [{"image_bytes": {"b64": 5}}]}), "b64"),
        "instances not a list": (json.dumps({"instances": {"image_bytes": b64}}), "a list"),
        "no instances or inputs": (json.dumps({"signature_name": "serving_default"}), "needs"),
        "not JSON": ("{nope", "not JSON"),
        "ragged pixels": (
            json.dumps({"signature_name": "predict_pixels", "instances": [[[1, 2]], [[1]]]}),
            "rectangular",
        ),
        "JSON nested 100,000 deep": ("[" * 100_000 + "]" * 100_000, "deep"),
        "an integer of 5,000 digits": ('{"instances": [' + "7" * 5000 + "]}", "digits"),
        "nesting past any tensor": (
            json.dumps({"signature_name": "predict_pixels", "instances": _nested(200)}),
            "nested",
        ),
    }
    for name, (body, says) in cases.items():
        code, out = _post(url, body.encode())
        assert code == 400, (name, code, out)
        assert says in out["error"], (name, out)
    # a path the API does not have is never answered by the newest version (as gRPC refuses
    # labels): a label is a 400, a typo a 404
    good = json.dumps({"instances": [{"image_bytes": b64}]}).encode()
    base = f"http://127.0.0.1:{srv.rest_port}/v1/models/tiny"
    for path, want, says in (
        ("/labels/canary:predict", 400, "labels"),
        ("/version/1:predict", 404, "unknown path"),
        ("/versions/1/extra:predict", 404, "unknown path"),
    ):
        code, out = _post(base + path, good)
        assert code == want and says in out["error"], (path, code, out)
    conn = http.client.HTTPConnection("127.0.0.1", srv.rest_port, timeout=30)
    conn.putrequest("POST", "/v1/models/tiny:predict")
    conn.putheader("Content-Length", "twelve")
    conn.endheaders()
    conn.send(b'{"instances": []}')
    resp = conn.getresponse()
    assert resp.status == 400  # refused by the HTTP parser (h11), before the app sees it
    conn.close()
    _good(srv, blobs)


@pytest.mark.timeout(120)
def test_idle_rest_connections_are_closed_and_do_not_block_others(served):
    import socket

    srv, _, blobs = served
    idle = [socket.create_connection(("127.0.0.1", srv.rest_port), timeout=30) for _ in range(4)]
    t0 = time.time()
    url = f"http://127.0.0.1:{srv.rest_port}/v1/models/tiny"
    assert json.load(urllib.request.urlopen(url, timeout=10))["model_version_status"]
    for s in idle:
        assert s.recv(1024) == b""  # closed by the server (--rest-idle-timeout 2), not by us
        s.close()
    assert 1.5 < time.time() - t0 < 20


def test_rest_keep_alive_answers_without_the_delayed_ack_stall(served):
    """Nagle's algorithm on the server's socket made each answer on a kept-alive connection
    wait for the client's delayed ACK (40 ms): 20 requests took 0.9 s instead of 0.02 s."""
    import http.client

    srv, _, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", srv.rest_port, timeout=10)
    conn.request("GET", "/v1/models/tiny")
    conn.getresponse().read()
    t0 = time.time()
    for _ in range(20):
        conn.request("GET", "/v1/models/tiny")
        with conn.getresponse() as r:
            assert r.status == 200 and json.load(r)["model_version_status"]
    conn.close()
    assert time.time() - t0 < 0.6, f"20 kept-alive requests took {time.time() - t0:.2f}s"


def test_reflection_is_off_by_default(served):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    srv, _, _ = served
    with grpc.insecure_channel(srv.target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as e:
            list(stub.ServerReflectionInfo(iter([req]), timeout=10))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _certs(tmp_path):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def make(cn, issuer=None, *, ca=False, san=None, usage=None):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        b = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer[0].subject if issuer else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = b.sign(issuer[1] if issuer else key, hashes.SHA256())
        return cert, key

    ca = make("graft test CA", ca=True)
    server = make(
        "localhost",
        ca,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    client = make("graft test client", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    out = {}
    for label, (cert, key) in {"ca": ca, "server": server, "client": client}.items():
        out[f"{label}.crt"] = cert.public_bytes(serialization.Encoding.PEM)
        out[f"{label}.key"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for suffix in ("crt", "key"):
            (tmp_path / f"{label}.{suffix}").write_bytes(out[f"{label}.{suffix}"])
    return out


@pytest.mark.timeout(300)
def test_tls_round_trip_with_client_certificates(pipeline_run, tmp_path):
    import http.client
    import ssl

    cfg, run, _ = pipeline_run
    base = tmp_path / "tiny"
    shutil.copytree(os.path.join(cfg.push.destination, "tiny"), base)
    pem = _certs(tmp_path)
    tls = {
        "root_certificates": pem["ca.crt"],
        "private_key": pem["client.key"],
        "certificate_chain": pem["client.crt"],
    }
    flags = ["--ssl-cert", str(tmp_path / "server.crt"), "--ssl-key", str(tmp_path / "server.key")]
    flags += ["--ssl-client-ca", str(tmp_path / "ca.crt"), "--reflection"]
    blob = _jpeg(48, 48)
    with ServerProcess(str(base), "tiny", rest=True, extra=flags, tls=tls) as srv:
        with GraftClient(srv.target, "tiny", retries=0, tls=tls) as c:
            assert len(c.predict([blob])[0].labels) == 3
            assert c.status()[-1]["state"] == "AVAILABLE"
        for bad in (None, {"root_certificates": pem["ca.crt"]}):  # plaintext; no client cert
            with GraftClient(srv.target, "tiny", retries=0, timeout=5, tls=bad) as c:
                with pytest.raises(grpc.RpcError) as e:
                    c.predict([blob])
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        with grpc.secure_channel(srv.target, grpc.ssl_channel_credentials(**tls)) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            req = reflection_pb2.ServerReflectionRequest(list_services="")
            (answer,) = list(stub.ServerReflectionInfo(iter([req]), timeout=10))
        names = {s.name for s in answer.list_services_response.service}
        assert "tensorflow.serving.PredictionService" in names  # --reflection turns it on

        refused = (urllib.error.URLError, ConnectionError, ssl.SSLError, http.client.HTTPException)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        ctx.load_cert_chain(str(tmp_path / "client.crt"), str(tmp_path / "client.key"))
        url = f"https://127.0.0.1:{srv.rest_port}/v1/models/tiny"
        body = json.dumps(
            {"instances": [{"image_bytes": {"b64": base64.b64encode(blob).decode()}}]}
        )
        req = urllib.request.Request(url + ":predict", data=body.encode())
        with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
            assert len(json.load(r)["predictions"][0]["scores"]) == 3
        with pytest.raises(refused):
            urllib.request.urlopen(f"http://127.0.0.1:{srv.rest_port}/v1/models/tiny", timeout=5)
        no_client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        with pytest.raises(refused):
            urllib.request.urlopen(url, timeout=5, context=no_client).read()
        assert srv.proc.poll() is None


def _state(srv, version) -> tuple[str, str]:
    with GraftClient(srv.target, "tiny", retries=0) as c:
        for s in c.status():
            if s["version"] == version:
                return s["state"], s["error"]
    return "", ""


@pytest.mark.timeout(300)
def test_a_version_copied_in_two_steps_loads_once_complete(pipeline_run, tmp_path):
    cfg, run, _ = pipeline_run
    base = tmp_path / "tiny"
    shutil.copytree(os.path.join(cfg.push.destination, "tiny"), base)
    old = max(int(v) for v in os.listdir(base) if v.isdigit())
    src, new = base / str(old), base / str(old + 1)
    flags = ["--load-retries", "100", "--load-retry-interval", "1"]
    with ServerProcess(str(base), "tiny", poll_seconds=0.3, extra=flags) as srv:
        # step one, as a plain cp -r that is still running: the graph but no variables yet
        new.mkdir()
        shutil.copy(src / "saved_model.pb", new / "saved_model.pb")
        deadline = time.time() + 60
        while time.time() < deadline and not _state(srv, old + 1)[1]:
            time.sleep(0.2)
        state, error = _state(srv, old + 1)
        assert state == "END" and "retrying" in error, (state, error)
        with GraftClient(srv.target, "tiny", retries=0) as c:  # the old one keeps serving
            assert c.predict_raw([_jpeg(48, 48)]).model_spec.version.value == old
        # step two: the rest of the files arrive
        for item in os.listdir(src):
            if item != "saved_model.pb":
                (shutil.copytree if (src / item).is_dir() else shutil.copy)(src / item, new / item)
        deadline = time.time() + 60
        while time.time() < deadline and _state(srv, old + 1)[0] != "AVAILABLE":
            time.sleep(0.2)
        assert _state(srv, old + 1) == ("AVAILABLE", "")
        with GraftClient(srv.target, "tiny", retries=0) as c:
            assert c.predict_raw([_jpeg(48, 48)]).model_spec.version.value == old + 1


@pytest.mark.timeout(180)
def test_a_base_path_without_versions_warns_and_names_the_nearest(pipeline_run, tmp_path):
    cfg, _, _ = pipeline_run
    shutil.copytree(os.path.join(cfg.push.destination, "tiny"), tmp_path / "models" / "tiny")
    log_path = tmp_path / "server.log"
    srv = ServerProcess(str(tmp_path / "models"), "tiny", log_path=str(log_path))
    try:
        deadline, text = time.time() + 90, ""
        while time.time() < deadline and "holds no version" not in text:
            assert srv.proc.poll() is None
            time.sleep(0.3)
            text = log_path.read_text()
        assert "holds no version" in text
        assert f"did you mean {tmp_path / 'models' / 'tiny'}" in " ".join(text.split())
    finally:
        assert srv.stop() == 0


def test_grpc_client_imports_no_tensorflow_and_agrees_with_the_server(served, tmp_path):
    """The client path loads TF Serving's protos without TensorFlow: fast start-up, same
    answers as the in-process decoding the other tests use."""
    srv, _, blobs = served
    img = tmp_path / "x.jpg"
    img.write_bytes(blobs[0])
    probe = (
        "import json, sys, time; t = time.time()\n"
        "from graft.serving.client import GraftClient\n"
        "startup = time.time() - t\n"
        f"with GraftClient({srv.target!r}, 'tiny') as c:\n"
        f"    p = c.predict([{str(img)!r}], top_k=2)[0]\n"
        "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'startup': startup,\n"
        "                  'labels': p.labels, 'scores': p.scores}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["tf"] is False and row["startup"] < 1.0, row
    with GraftClient(srv.target, "tiny") as c:
        want = c.predict([blobs[0]], top_k=2)[0]
    assert row["labels"] == want.labels
    assert np.allclose(row["scores"], want.scores, atol=1e-6)


# ---------------------------------------------------------------- production faults (issue 29)


def _wait_for(check, timeout=60.0, every=0.2):
    deadline, got = time.time() + timeout, None
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    return got


def _statuses(srv) -> dict[int, tuple[str, str]]:
    with GraftClient(srv.target, "tiny", retries=0) as c:
        return {s["version"]: (s["state"], s["error"]) for s in c.status()}


@pytest.mark.timeout(300)
def test_restart_with_a_broken_newest_version_serves_the_newest_that_loads(pipeline_run, tmp_path):
    cfg, _, _ = pipeline_run
    base = tmp_path / "tiny"
    shutil.copytree(os.path.join(cfg.push.destination, "tiny"), base)
    old = max(int(v) for v in os.listdir(base) if v.isdigit())
    shutil.copytree(base / str(old), base / str(old + 1))
    good_graph = (base / str(old + 1) / "saved_model.pb").read_bytes()
    (base / str(old + 1) / "saved_model.pb").write_bytes(os.urandom(5000))
    flags = ["--load-retries", "1000", "--load-retry-interval", "1"]
    with ServerProcess(str(base), "tiny", poll_seconds=0.3, extra=flags) as srv:
        with GraftClient(srv.target, "tiny", retries=0) as c:  # healthy: something serves
            assert c.predict_raw([_jpeg(48, 48)]).model_spec.version.value == old
        states = _statuses(srv)
        assert states[old] == ("AVAILABLE", ""), states
        state, first = states[old + 1]
        assert state == "END" and "retrying in 1s" in first, states
        assert str(base / str(old + 1)) in first, first  # names what failed
        assert "<stack traces unavailable>" not in first, first
        # retried by the policy: the retries left go down
        assert _wait_for(lambda: _statuses(srv)[old + 1][1] not in ("", first), 30), first
        # repaired in place: the retry loads it, and it takes over from the fallback
        (base / str(old + 1) / "saved_model.pb").write_bytes(good_graph)
        assert _wait_for(lambda: _statuses(srv).get(old + 1, ("",))[0] == "AVAILABLE", 60)
        with GraftClient(srv.target, "tiny", retries=0) as c:
            assert c.predict_raw([_jpeg(48, 48)]).model_spec.version.value == old + 1

        # a newer version whose variables were cut short: its error names the file
        shutil.copytree(base / str(old), base / str(old + 2))
        data = next((base / str(old + 2) / "variables").glob("variables.data-*"))
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
        assert _wait_for(lambda: _statuses(srv).get(old + 2, ("", ""))[1], 60)
        error = _statuses(srv)[old + 2][1]
        assert data.name in error and "<stack traces unavailable>" not in error, error
        with GraftClient(srv.target, "tiny", retries=0) as c:  # the loaded one keeps serving
            assert c.predict_raw([_jpeg(48, 48)]).model_spec.version.value == old + 1
        shutil.rmtree(base / str(old + 2))  # deleted: status forgets it and its error
        assert _wait_for(lambda: old + 2 not in _statuses(srv), 30), _statuses(srv)


@pytest.mark.timeout(300)
def test_only_int64_decimal_names_are_versions_and_others_warn_once(pipeline_run, tmp_path):
    cfg, _, _ = pipeline_run
    base = tmp_path / "tiny"
    shutil.copytree(os.path.join(cfg.push.destination, "tiny"), base)
    old = max(int(v) for v in os.listdir(base) if v.isdigit())
    not_versions = ["99999999999999999999", f"0{old + 5}", "0"]
    for name in not_versions:
        shutil.copytree(base / str(old), base / name)
    log_path = tmp_path / "server.log"
    with ServerProcess(
        str(base), "tiny", rest=True, poll_seconds=0.2, log_path=str(log_path)
    ) as srv:
        time.sleep(2.0)  # about ten polls
        with GraftClient(srv.target, "tiny", retries=0) as c:
            assert c.predict_raw([_jpeg(48, 48)]).model_spec.version.value == old
            assert [s["version"] for s in c.status()] == [old]
        url = f"http://127.0.0.1:{srv.rest_port}/v1/models/tiny"
        status = json.load(urllib.request.urlopen(url, timeout=10))
        assert [s["version"] for s in status["model_version_status"]] == [str(old)]
        code, out = _post(f"{url}/versions/{not_versions[0]}:predict", b"{}")
        assert code == 400 and "2**63-1" in out["error"], (code, out)
    text = " ".join(log_path.read_text().split())
    for name in not_versions:
        assert text.count(f"ignoring {base / name}: not a version directory") == 1, name
    assert "no leading zeros (rename it to" in text and "(int64)" in text


def _png_header(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels: all a decompression bomb shows before it is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_a_decompression_bomb_is_413_naming_the_pixel_limit(served):
    srv, _, blobs = served
    bomb = _png_header(20_000, 20_000)  # 400 Mpx, over Pillow's own limit
    url = f"http://127.0.0.1:{srv.rest_port}/v1/models/tiny:predict"
    body = json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(bomb).decode()}}]})
    code, out = _post(url, body.encode())
    assert code == 413 and "--max-pixels" in out["error"], (code, out)
    assert "DOS" not in out["error"] and "bomb" not in out["error"], out
    with GraftClient(srv.target, "tiny", retries=0) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.predict_raw([bomb])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _good(srv, blobs)


def _raw_http(port: int, head: bytes, body: bytes = b"", timeout: float = 20.0):
    """Send a request's bytes as given; (seconds to the answer, status line and body)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t0 = time.time()
        s.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            more = s.recv(65536)
            if not more:
                break
            answer += more
        return time.time() - t0, answer.decode(errors="replace")


@pytest.mark.timeout(240)
def test_rest_refuses_big_bodies_unread_and_idle_clients_lock_nobody_out(served):
    import socket

    srv, _, blobs = served
    path = "/v1/models/tiny:predict"
    # a Content-Length over the limit: refused at once, before any body byte is sent
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**9}\r\n\r\n".encode()
    took, answer = _raw_http(srv.rest_port, head)
    assert answer.startswith("HTTP/1.1 413") and "--max-message-mb" in answer, answer
    assert took < 5, took
    # a chunked body that passes the limit: refused as it passes, not buffered whole
    chunk = b"x" * 2**20
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    framed = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 6 + b"0\r\n\r\n"
    took, answer = _raw_http(srv.rest_port, head, framed)
    assert answer.startswith("HTTP/1.1 413") and "--max-message-mb" in answer, answer
    # a body that stalls: 408 after --rest-idle-timeout (2 s here)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode()
    took, answer = _raw_http(srv.rest_port, head, b'{"inst')
    assert answer.startswith("HTTP/1.1 408") and "--rest-idle-timeout" in answer, answer
    assert 1.5 < took < 10, took

    # refused bodies are not kept: 24 of 31 MB leave the server's memory where it was
    _good(srv, blobs)
    before = _rss_mb(srv.proc.pid)
    body = b"[" + b"1," * (31 * 2**19) + b"1]"
    for _ in range(24):
        code, out = _post(f"http://127.0.0.1:{srv.rest_port}{path}", body)
        assert code == 413, (code, out)
    grown = _rss_mb(srv.proc.pid) - before
    assert grown < 100, f"server RSS grew {grown:.0f} MB over 24 refused 31 MB bodies"

    # 100 idle connections (more than the old 16 workers + 64 queue) lock nobody out
    idle = [socket.create_connection(("127.0.0.1", srv.rest_port), timeout=30) for _ in range(100)]
    try:
        b64 = {"b64": base64.b64encode(blobs[0]).decode()}
        t0 = time.time()
        for _ in range(5):
            code, out = _post(
                f"http://127.0.0.1:{srv.rest_port}{path}",
                json.dumps({"instances": [{"image_bytes": b64}]}).encode(),
                timeout=10,
            )
            assert code == 200 and len(out["predictions"][0]["scores"]) == 3, (code, out)
        assert time.time() - t0 < 10
    finally:
        for s in idle:
            s.close()
    assert srv.proc.poll() is None


@pytest.mark.timeout(180)
def test_cli_predict_server_writes_an_error_row_for_a_bad_file_and_goes_on(
    served, tmp_path, capsys
):
    import csv

    from graft.pipeline.cli import main

    srv, _, blobs = served
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        (folder / f"good{i}.jpg").write_bytes(blobs[i])
    (folder / "broken.jpg").write_bytes(_jpeg(64, 64)[:300])
    (folder / "text.png").write_bytes(b"not an image at all")
    out_csv = tmp_path / "out.csv"
    argv = ["predict", "--server", srv.target, "--model", "tiny", "--batch-size", "4"]
    assert main([*argv, "--csv", str(out_csv), str(folder)]) == 1  # 1: some images failed
    rows = {Path(r["image"]).name: r for r in csv.DictReader(out_csv.open())}
    assert len(rows) == 7
    for i in range(5):
        assert rows[f"good{i}.jpg"]["label_1"] and not rows[f"good{i}.jpg"]["error"]
    assert "INVALID_ARGUMENT" in rows["broken.jpg"]["error"] and not rows["broken.jpg"]["label_1"]
    assert "INVALID_ARGUMENT" in rows["text.png"]["error"]
    capsys.readouterr()
    assert main([*argv, "--json", str(folder)]) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert len(lines) == 7 and sum("error" in x for x in lines) == 2
