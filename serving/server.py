"""A TF-Serving-compatible server for local use and tests (the real one runs in k8s).

gRPC: PredictionService.Predict / GetModelMetadata, ModelService.GetModelStatus, standard
health checking and (behind --reflection) reflection, all from the servicers that
tensorflow-serving-api and grpcio ship. REST (optional): TF Serving's
/v1/models/NAME[/versions/N][:predict|/metadata], on a bounded thread pool whose connections
time out when idle. Both take TLS (--ssl-cert/--ssl-key, optionally --ssl-client-ca).
Every request is bounded (serving.models.Limits; the REST body by --max-message-mb, as gRPC
messages are); a refusal names the limit and its flag.
Clients written against this server work unchanged against `tensorflow/serving`.
"""

from __future__ import annotations

import base64
import json
import signal
import ssl
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer

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
from graft.serving.models import Limits, ModelManager, ServingError, State, over_limit
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


def _bad(msg: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, msg)


def _rest_value(v):
    """TF Serving's REST encoding: {"b64": ...} is bytes, anywhere in the body."""
    if isinstance(v, dict):
        if set(v) == {"b64"}:
            if not isinstance(v["b64"], str):
                raise _bad(f'{{"b64": ...}} takes a base64 string, got {type(v["b64"]).__name__}')
            try:
                return base64.b64decode(v["b64"], validate=True)
            except ValueError as e:
                raise _bad(f"bad base64: {e}") from None
        return {k: _rest_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rest_value(x) for x in v]
    return v


def _to_array(values, name: str) -> np.ndarray:
    try:
        arr = np.array(values, dtype=object if name.endswith("_bytes") else None)
    except ValueError as e:  # ragged nesting
        raise _bad(f"input '{name}': values do not form a rectangular array ({e})") from None
    if arr.dtype.kind == "U":
        arr = arr.astype(object)
    if name.endswith("_bytes"):
        for i, x in enumerate(arr.reshape(-1)):
            if isinstance(x, str):
                raise _bad(
                    f"input '{name}'[{i}] is a plain JSON string; binary inputs take "
                    '{"b64": "<base64>"} (TF Serving\'s REST encoding)'
                )
    return arr


def _instances(body: dict, max_images: int) -> list:
    inst = body["instances"]
    if not isinstance(inst, list):
        raise _bad(f"'instances' must be a list, got {type(inst).__name__}")
    if not inst:
        raise _bad("'instances' is empty; send at least one")
    if len(inst) > max_images:  # before any base64 is decoded
        raise over_limit("'instances' has too many entries", len(inst), max_images, "--max-images")
    inst = [_rest_value(i) for i in inst]
    if isinstance(inst[0], dict):
        keys = set(inst[0])
        for i, x in enumerate(inst):
            if not isinstance(x, dict) or set(x) != keys:
                got = sorted(x) if isinstance(x, dict) else type(x).__name__
                raise _bad(
                    f"instances[{i}] has keys {got} but instances[0] has {sorted(keys)}; "
                    "every instance needs the same named inputs"
                )
    return inst


def _jsonable(arr: np.ndarray):
    if arr.dtype.kind in ("O", "S"):
        return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(
            arr
        ).tolist()
    return arr.tolist()


def make_rest_handler(m: ModelManager, max_body: int, idle_timeout: float = 30.0):
    """max_body: the REST body limit in bytes (--max-message-mb, as for gRPC messages)."""
    drain_cap = max(4 * max_body, 256 * 2**20)  # read and drop up to this much of a refused body

    class Handler(BaseHTTPRequestHandler):
        server_version = "graft-serving"
        timeout = idle_timeout  # a connection that sends nothing for this long is closed

        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            raw = self.headers.get("Content-Length")
            if raw is None:
                raise _bad("Content-Length header required (chunked bodies are not supported)")
            try:
                length = int(raw)
            except ValueError:
                raise _bad(f"Content-Length {raw!r} is not a number") from None
            if length < 0:
                raise _bad(f"Content-Length {length} is negative")
            if length > max_body:
                if length <= drain_cap:  # so the client, still sending, gets to read the 413
                    left = length
                    while left > 0:
                        chunk = self.rfile.read(min(left, 1 << 20))
                        if not chunk:
                            break
                        left -= len(chunk)
                else:
                    self.close_connection = True
                raise over_limit(
                    "request body is too large, in bytes",
                    length,
                    max_body,
                    f"--max-message-mb {max_body // 2**20}",
                )
            data = self.rfile.read(length)
            if len(data) != length:
                raise _bad(f"body ended after {len(data)} of {length} bytes (Content-Length)")
            return data

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

        def _only_input(self, name, version, sig) -> str:
            lv = m.resolve(name, version)
            specs = lv.signatures[sig].structured_input_signature[1] if sig in lv.signatures else {}
            return next(iter(sorted(specs)), "?")  # an unknown signature is reported by predict

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
                data = self._body()
                try:
                    body = json.loads(data or b"{}")
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise _bad(f"request body is not JSON: {e}") from None
                if not isinstance(body, dict):
                    raise _bad(
                        "request body must be a JSON object with 'instances' or 'inputs', got a "
                        f"top-level {type(body).__name__}"
                    )
                sig = body.get("signature_name", "serving_default")
                if not isinstance(sig, str):
                    raise _bad(f"'signature_name' must be a string, got {type(sig).__name__}")
                if "instances" in body and "inputs" in body:
                    raise _bad(
                        "use either 'instances' (row format) or 'inputs' (columnar), not both"
                    )
                if "instances" in body:
                    inst = _instances(body, m.limits.max_images)
                    if isinstance(inst[0], dict):
                        inputs = {k: _to_array([i[k] for i in inst], k) for k in inst[0]}
                    else:
                        only = self._only_input(name, version, sig)
                        inputs = {only: _to_array(inst, only)}
                    v, out = m.predict(name, version, sig, inputs)
                    n = len(next(iter(out.values())))
                    preds = [{k: _jsonable(o[i]) for k, o in out.items()} for i in range(n)]
                    return self._send(200, {"predictions": preds})
                if "inputs" in body:
                    raw = body["inputs"]
                    if not isinstance(raw, dict):  # the columnar form of a one-input signature
                        raw = {self._only_input(name, version, sig): raw}
                    inputs = {}
                    for k, val in raw.items():
                        if isinstance(val, list) and len(val) > m.limits.max_images:
                            raise over_limit(
                                f"input '{k}' has too many rows",
                                len(val),
                                m.limits.max_images,
                                "--max-images",
                            )
                        inputs[k] = _to_array(_rest_value(val), k)
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


class RestServer(HTTPServer):
    """HTTP on a bounded pool: `workers` threads, `backlog` more connections queued, the rest
    answered 503 at once. ThreadingHTTPServer's thread per connection let idle clients hold
    threads (and memory) without bound. TLS handshakes happen in the worker, under its timeout.
    """

    def __init__(
        self,
        addr,
        handler,
        *,
        workers: int = 16,
        backlog: int = 64,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ):
        super().__init__(addr, handler)
        self.idle_timeout, self.ssl_context = idle_timeout, ssl_context
        self.pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="rest")
        self.slots = threading.BoundedSemaphore(workers + backlog)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            if self.ssl_context is None:
                body = b'{"error": "server busy: every REST worker and queue slot is taken"}'
                head = f"HTTP/1.0 503 Service Unavailable\r\nContent-Length: {len(body)}\r\n"
                with _quiet():
                    request.sendall(
                        head.encode() + b"Content-Type: application/json\r\n\r\n" + body
                    )
            self.shutdown_request(request)
            return
        self.pool.submit(self._work, request, client_address)

    def _work(self, request, client_address):
        conn = request
        try:
            request.settimeout(self.idle_timeout)
            if self.ssl_context is not None:
                conn = self.ssl_context.wrap_socket(request, server_side=True)
            self.finish_request(conn, client_address)
        except (OSError, ssl.SSLError):
            pass  # the client went away, timed out, or failed the handshake
        except Exception as e:  # noqa: BLE001 - a worker never dies
            log(f"serve: REST worker: {type(e).__name__}: {e}", level="error")
        finally:
            self.shutdown_request(conn)
            self.slots.release()

    def server_close(self):
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


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
        max_images: int = 1000,
        max_request_pixels: int = 100_000_000,
        decode_chunk_pixels: int = 16_000_000,
        load_retries: int = 5,
        load_retry_interval: float = 60.0,
        ssl_cert: str | None = None,
        ssl_key: str | None = None,
        ssl_client_ca: str | None = None,
        reflection_on: bool = False,
        workers: int = 16,
        rest_workers: int = 16,
        rest_idle_timeout: float = 30.0,
    ):
        limits = Limits(
            max_pixels=max_pixels,
            max_images=max_images,
            max_request_pixels=max_request_pixels,
            chunk_pixels=decode_chunk_pixels,
        )
        self.manager = ModelManager(
            base_path,
            model_name,
            policy,
            limits=limits,
            load_retries=load_retries,
            load_retry_interval=load_retry_interval,
        )
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
        if reflection_on:  # off by default: it hands any client the full API description
            reflection.enable_server_reflection(
                [
                    prediction_service_pb2.DESCRIPTOR.services_by_name[
                        "PredictionService"
                    ].full_name,
                    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ],
                self.grpc,
            )
        if bool(ssl_cert) != bool(ssl_key):
            raise ValueError("--ssl-cert and --ssl-key go together")
        if ssl_client_ca and not ssl_cert:
            raise ValueError("--ssl-client-ca needs --ssl-cert and --ssl-key")
        self.tls = bool(ssl_cert)
        ssl_context = None
        if self.tls:
            key, cert, ca = _read(ssl_key), _read(ssl_cert), _read(ssl_client_ca)
            creds = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
            )
            self.port = self.grpc.add_secure_port(f"{host}:{port}", creds)
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(ssl_cert, ssl_key)
            if ssl_client_ca:
                ssl_context.load_verify_locations(ssl_client_ca)
                ssl_context.verify_mode = ssl.CERT_REQUIRED
        else:
            self.port = self.grpc.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"cannot bind gRPC on {host}:{port}")
        self.host, self.poll_seconds = host, poll_seconds
        self.rest = (
            RestServer(
                (host, rest_port),
                make_rest_handler(self.manager, limit, rest_idle_timeout),
                workers=rest_workers,
                idle_timeout=rest_idle_timeout,
                ssl_context=ssl_context,
            )
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
        scheme = "https" if self.tls else "http"
        log(
            f"serve: gRPC{' (TLS)' if self.tls else ''} on {self.host}:{self.port}"
            + (
                f", REST ({scheme}) on {self.host}:{self.rest.server_address[1]}"
                if self.rest
                else ""
            )
            + f"; model '{self.manager.model_name}' from {self.manager.base_path}"
        )
        return self

    def stop(self, grace: float = 2.0) -> None:
        self._stopped.set()
        self.manager.stop()
        if self.rest:
            self.rest.shutdown()
            self.rest.server_close()
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
    max_images: int = 1000,
    max_request_pixels: int = 100_000_000,
    decode_chunk_pixels: int = 16_000_000,
    load_retries: int = 5,
    load_retry_interval: float = 60.0,
    ssl_cert: str | None = None,
    ssl_key: str | None = None,
    ssl_client_ca: str | None = None,
    reflection: bool = False,
    rest_workers: int = 16,
    rest_idle_timeout: float = 30.0,
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
        max_images=max_images,
        max_request_pixels=max_request_pixels,
        decode_chunk_pixels=decode_chunk_pixels,
        load_retries=load_retries,
        load_retry_interval=load_retry_interval,
        ssl_cert=ssl_cert,
        ssl_key=ssl_key,
        ssl_client_ca=ssl_client_ca,
        reflection_on=reflection,
        rest_workers=rest_workers,
        rest_idle_timeout=rest_idle_timeout,
    ).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    srv.stop()
    return 0
