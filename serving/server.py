"""A TF-Serving-compatible server for local use and tests (the real one runs in k8s).

gRPC: PredictionService.Predict / GetModelMetadata, ModelService.GetModelStatus, standard
health checking and reflection, all from the servicers that tensorflow-serving-api and
grpcio ship. REST (optional): TF Serving's /v1/models/NAME[/versions/N][:predict|/metadata].
Clients written against this server work unchanged against `tensorflow/serving`.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from graft.core.log import log
from graft.serving.models import ModelManager, ServingError, State
from graft.serving.tensors import tensor_proto


def _version_of(spec) -> int | None:
    if spec.HasField("version"):
        return int(spec.version.value)
    if spec.version_label:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "version labels are not supported; use a version number",
        )
    return None


def _guard(context, fn):
    try:
        return fn()
    except ServingError as e:
        context.abort(e.code, e.message)
    except Exception as e:  # noqa: BLE001 - nothing brings the server down
        log(f"serve: internal error: {type(e).__name__}: {e}", level="error")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")


def _ndarray(name: str, proto) -> np.ndarray:
    """TensorProto -> numpy; image bytes take a direct path (make_ndarray is generic and slow)."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if (
        proto.dtype == types_pb2.DT_STRING
        and not proto.tensor_content
        and dims
        and min(dims) >= 0
        and int(np.prod(dims)) == len(proto.string_val)
    ):
        return np.array(list(proto.string_val), dtype=object).reshape(dims)
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, f"input '{name}' is not a valid TensorProto: {e}"
        ) from None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.m = manager

    def Predict(self, request, context):
        def run():
            inputs = {k: _ndarray(k, v) for k, v in request.inputs.items()}
            version, out = self.m.predict(
                request.model_spec.name,
                _version_of(request.model_spec),
                request.model_spec.signature_name,
                inputs,
                set(request.output_filter),
            )
            resp = predict_pb2.PredictResponse()
            resp.model_spec.name = self.m.model_name
            resp.model_spec.version.value = version
            resp.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
            for k, v in out.items():
                resp.outputs[k].CopyFrom(tensor_proto(v))
            return resp

        return _guard(context, run)

    def GetModelMetadata(self, request, context):
        def run():
            fields = set(request.metadata_field)
            if fields != {"signature_def"}:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"metadata_field must be ['signature_def'], got {sorted(fields)}",
                )
            lv = self.m.resolve(request.model_spec.name, _version_of(request.model_spec))
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for k, v in lv.signature_defs.items():
                sig_map.signature_def[k].CopyFrom(v)
            resp = get_model_metadata_pb2.GetModelMetadataResponse()
            resp.model_spec.name = self.m.model_name
            resp.model_spec.version.value = lv.version
            packed = any_pb2.Any()
            packed.Pack(sig_map)
            resp.metadata["signature_def"].CopyFrom(packed)
            return resp

        return _guard(context, run)

    def Classify(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "Classify needs a tf.Example classification signature; use Predict with "
            "serving_default",
        )

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported by Graft models")

    def MultiInference(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by Graft models"
        )


def status_response(m: ModelManager, name: str, version: int | None):
    if name != m.model_name:
        raise ServingError(
            grpc.StatusCode.NOT_FOUND, f"model '{name}' not found (serving '{m.model_name}')"
        )
    states = m.states()
    if version is not None:
        if version not in states:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"model '{name}' version {version} not found"
            )
        states = {version: states[version]}
    resp = get_model_status_pb2.GetModelStatusResponse()
    for v, (state, err) in sorted(states.items()):
        mvs = resp.model_version_status.add()
        mvs.version = v
        mvs.state = state
        mvs.status.CopyFrom(status_pb2.StatusProto(error_code=13 if err else 0, error_message=err))
    return resp


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.m = manager

    def GetModelStatus(self, request, context):
        return _guard(
            context,
            lambda: status_response(
                self.m, request.model_spec.name, _version_of(request.model_spec)
            ),
        )

    def HandleReloadConfigRequest(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "this server serves one model from --model-base-path"
        )


# ---------------------------------------------------------------- REST


def _rest_value(v):
    """TF Serving's REST encoding: {"b64": ...} is bytes, anywhere in the body."""
    if isinstance(v, dict):
        if set(v) == {"b64"}:
            try:
                return base64.b64decode(v["b64"], validate=True)
            except ValueError as e:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"bad base64: {e}") from None
        return {k: _rest_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rest_value(x) for x in v]
    return v


def _to_array(values, name: str) -> np.ndarray:
    arr = np.array(values, dtype=object if name.endswith("_bytes") else None)
    if arr.dtype.kind == "U":
        arr = arr.astype(object)
    return arr


def _jsonable(arr: np.ndarray):
    if arr.dtype.kind in ("O", "S"):
        return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(
            arr
        ).tolist()
    return arr.tolist()


def make_rest_handler(m: ModelManager):
    class Handler(BaseHTTPRequestHandler):
        server_version = "graft-serving"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, e: ServingError):
            http = {
                grpc.StatusCode.NOT_FOUND: 404,
                grpc.StatusCode.INVALID_ARGUMENT: 400,
                grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
                grpc.StatusCode.UNAVAILABLE: 503,
            }.get(e.code, 500)
            self._send(http, {"error": e.message})

        def _route(self):
            path = self.path.split("?")[0]
            if not path.startswith("/v1/models/"):
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"unknown path {path}")
            rest = path[len("/v1/models/") :]
            verb = None
            if ":" in rest:
                rest, verb = rest.rsplit(":", 1)
            parts = rest.strip("/").split("/")
            name, version, tail = parts[0], None, parts[1:]
            if len(tail) >= 2 and tail[0] == "versions":
                try:
                    version = int(tail[1])
                except ValueError:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"bad version '{tail[1]}'"
                    ) from None
                tail = tail[2:]
            return name, version, verb, tail

        def do_GET(self):
            try:
                name, version, verb, tail = self._route()
                if tail == ["metadata"]:
                    lv = m.resolve(name, version)
                    from google.protobuf.json_format import MessageToDict

                    sigs = {k: MessageToDict(v) for k, v in lv.signature_defs.items()}
                    return self._send(
                        200,
                        {
                            "model_spec": {"name": name, "version": str(lv.version)},
                            "metadata": {"signature_def": {"signature_def": sigs}},
                        },
                    )
                resp = status_response(m, name, version)
                return self._send(
                    200,
                    {
                        "model_version_status": [
                            {
                                "version": str(s.version),
                                "state": State.Name(s.state),
                                "status": {
                                    "error_code": "OK" if not s.status.error_code else "UNKNOWN",
                                    "error_message": s.status.error_message,
                                },
                            }
                            for s in resp.model_version_status
                        ]
                    },
                )
            except ServingError as e:
                self._error(e)

        def do_POST(self):
            try:
                name, version, verb, _ = self._route()
                if verb != "predict":
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"unsupported verb ':{verb}'"
                    )
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError as e:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"request body is not JSON: {e}"
                    ) from None
                sig = body.get("signature_name", "serving_default")
                if "instances" in body:
                    inst = [_rest_value(i) for i in body["instances"]]
                    if inst and isinstance(inst[0], dict):
                        inputs = {k: _to_array([i[k] for i in inst], k) for k in inst[0]}
                    else:
                        lv = m.resolve(name, version)
                        only = (
                            list(lv.signatures[sig].structured_input_signature[1])
                            if sig in lv.signatures
                            else ["?"]
                        )
                        inputs = {only[0]: _to_array(inst, only[0])}
                    v, out = m.predict(name, version, sig, inputs)
                    n = len(next(iter(out.values())))
                    preds = [{k: _jsonable(o[i]) for k, o in out.items()} for i in range(n)]
                    return self._send(200, {"predictions": preds})
                if "inputs" in body:
                    raw = body["inputs"]
                    inputs = {k: _to_array(_rest_value(val), k) for k, val in raw.items()}
                    v, out = m.predict(name, version, sig, inputs)
                    return self._send(200, {"outputs": {k: _jsonable(o) for k, o in out.items()}})
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, "body needs 'instances' or 'inputs'"
                )
            except ServingError as e:
                self._error(e)
            except Exception as e:  # noqa: BLE001
                self._send(500, {"error": f"{type(e).__name__}: {e}"})

    return Handler


# ---------------------------------------------------------------- server


class GraftServer:
    def __init__(
        self,
        base_path: str,
        model_name: str,
        *,
        host: str = "127.0.0.1",
        port: int = 8500,
        rest_port: int = 0,
        policy: str = "latest",
        poll_seconds: float = 2.0,
        max_message_mb: int = 32,
        max_pixels: int = 40_000_000,
        workers: int = 16,
    ):
        self.manager = ModelManager(base_path, model_name, policy, max_pixels)
        limit = max_message_mb * 1024 * 1024
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.manager), self.grpc
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.manager), self.grpc
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            [
                prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
                model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.grpc,
        )
        self.port = self.grpc.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"cannot bind gRPC on {host}:{port}")
        self.host, self.poll_seconds = host, poll_seconds
        self.rest = (
            ThreadingHTTPServer((host, rest_port), make_rest_handler(self.manager))
            if rest_port
            else None
        )
        self._health_thread = None
        self._stopped = threading.Event()

    def _update_health(self):
        while not self._stopped.wait(0.5):
            s = (
                health_pb2.HealthCheckResponse.SERVING
                if self.manager.available()
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            self.health.set("", s)
            self.health.set("tensorflow.serving.PredictionService", s)

    def start(self) -> GraftServer:
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc.start()
        self.manager.start(self.poll_seconds)
        self._health_thread = threading.Thread(target=self._update_health, daemon=True)
        self._health_thread.start()
        if self.rest:
            threading.Thread(target=self.rest.serve_forever, daemon=True).start()
        log(
            f"serve: gRPC on {self.host}:{self.port}"
            + (f", REST on {self.host}:{self.rest.server_address[1]}" if self.rest else "")
            + f"; model '{self.manager.model_name}' from {self.manager.base_path}"
        )
        return self

    def stop(self, grace: float = 2.0) -> None:
        self._stopped.set()
        self.manager.stop()
        if self.rest:
            self.rest.shutdown()
        self.grpc.stop(grace).wait()
        log("serve: stopped")


def serve_forever(
    *,
    model_base_path: str,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 8500,
    rest_port: int = 0,
    version_policy: str = "latest",
    poll_seconds: float = 2.0,
    max_message_mb: int = 32,
    max_pixels: int = 40_000_000,
) -> int:
    """Serve until SIGTERM/SIGINT; keywords, so the server does not depend on the CLI's Namespace.

    rest_port=0 means no REST front end.
    """
    srv = GraftServer(
        model_base_path,
        model_name,
        host=host,
        port=port,
        rest_port=rest_port,
        policy=version_policy,
        poll_seconds=poll_seconds,
        max_message_mb=max_message_mb,
        max_pixels=max_pixels,
    ).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    srv.stop()
    return 0
