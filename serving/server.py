"""A TF-Serving-compatible server for local use and tests (the real one runs in k8s).

gRPC: PredictionService.Predict / GetModelMetadata, ModelService.GetModelStatus, standard
health checking and (behind --reflection) reflection, all from the servicers that
tensorflow-serving-api and grpcio ship. REST (optional): TF Serving's
/v1/models/NAME[/versions/N][:predict|/metadata] on uvicorn (asyncio: idle and slow clients
hold no thread; connections idle for --rest-idle-timeout are closed; model work on
--rest-workers threads). Both take TLS (--ssl-cert/--ssl-key, optionally --ssl-client-ca).
Every request is bounded (serving.options: Limits; the REST body by --max-message-mb, as gRPC
messages are, refused by its Content-Length before it is read); a refusal names the limit
and its flag.
Clients written against this server work unchanged against `tensorflow/serving`.
"""

from __future__ import annotations

import base64
import json
import math
import signal
import socket
import ssl
import sys
import threading
import time
from concurrent import futures

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
from graft.core.versions import version_number
from graft.serving.models import ModelManager, ServingError, State, over_limit
from graft.serving.options import ServeOptions
from graft.serving.tensors import tensor_proto

__all__ = ["serve_forever"]


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


# a TensorProto's typed value lists (tensor_content aside): one holds the values
_VALUE_FIELDS = (
    "half_val",
    "float_val",
    "double_val",
    "int_val",
    "int64_val",
    "bool_val",
    "string_val",
    "uint32_val",
    "uint64_val",
)


def _carried(proto) -> int | None:
    """How many values the TensorProto carries (None: a dtype this check does not size)."""
    if not proto.tensor_content:
        return max(len(getattr(proto, f)) for f in _VALUE_FIELDS)
    try:
        return len(proto.tensor_content) // tf.dtypes.as_dtype(proto.dtype).size
    except (TypeError, ValueError):
        return None


def _ndarray(name: str, proto) -> np.ndarray:
    """TensorProto -> numpy; image bytes take a direct path (make_ndarray is generic and slow).

    The shape must match the values carried: make_ndarray would repeat the last value to fill
    a larger shape, so a request of a few bytes could make the server allocate gigabytes
    before any limit is checked (TF Serving fills it; Graft's server refuses)."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, f"input '{name}' has a negative dimension: {dims}"
        )
    declared = math.prod(dims)  # Python ints: no overflow
    carried = _carried(proto)
    if carried is not None and declared != carried:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{name}' has shape {dims} ({declared} values) but carries {carried}; send "
            "every value (a shorter list is not expanded)",
        )
    if proto.dtype == types_pb2.DT_STRING and not proto.tensor_content and dims:
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


MAX_JSON_DEPTH = 64  # numpy's (and so a tensor's) most dimensions


def _rest_value(v, depth: int = 0):
    """TF Serving's REST encoding: {"b64": ...} is bytes, anywhere in the body."""
    if depth > MAX_JSON_DEPTH:
        raise _bad(f"values nested deeper than {MAX_JSON_DEPTH} levels: no tensor has that shape")
    if isinstance(v, dict):
        if set(v) == {"b64"}:
            if not isinstance(v["b64"], str):
                raise _bad(f'{{"b64": ...}} takes a base64 string, got {type(v["b64"]).__name__}')
            try:
                return base64.b64decode(v["b64"], validate=True)
            except ValueError as e:
                raise _bad(f"bad base64: {e}") from None
        return {k: _rest_value(x, depth + 1) for k, x in v.items()}
    if isinstance(v, list):
        return [_rest_value(x, depth + 1) for x in v]
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


def _route(path: str) -> tuple[str, int | None, str | None, list[str]]:
    """/v1/models/NAME[/versions/N][:verb|/metadata] -> (name, version, verb, rest of path)."""
    if not path.startswith("/v1/models/"):
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"unknown path {path}")
    rest = path[len("/v1/models/") :]
    verb = None
    if ":" in rest:
        rest, verb = rest.rsplit(":", 1)
    parts = rest.strip("/").split("/")
    name, version, tail = parts[0], None, parts[1:]
    if len(tail) >= 2 and tail[0] == "versions":
        version = version_number(tail[1])
        if version is None:
            raise _bad(f"bad version '{tail[1]}': a version is a number from 1 to 2**63-1")
        tail = tail[2:]
    if tail[:1] == ["labels"]:  # as gRPC: a label would otherwise be answered by the newest
        raise _bad("version labels are not supported; use /versions/N")
    if tail not in ([], ["metadata"]):
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"unknown path {path}")
    if tail and verb is not None:
        raise _bad(f"unsupported verb ':{verb}' on metadata")
    return name, version, verb, tail


def _only_input(m: ModelManager, name, version, sig) -> str:
    lv = m.resolve(name, version)
    specs = lv.signatures[sig].structured_input_signature[1] if sig in lv.signatures else {}
    return next(iter(sorted(specs)), "?")  # an unknown signature is reported by predict


def _parse_json(data: bytes | bytearray) -> dict:
    """The request body as a JSON object; every way it can fail is the client's 400."""
    try:
        body = json.loads(data or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(f"request body is not JSON: {e}") from None
    except RecursionError:
        raise _bad("request body is JSON nested too deeply to parse") from None
    except ValueError as e:
        if "integer string conversion" in str(e):  # Python's int_max_str_digits
            raise _bad(
                f"request body holds an integer literal over {sys.get_int_max_str_digits():,} "
                "digits"
            ) from None
        raise _bad(f"request body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise _bad(
            "request body must be a JSON object with 'instances' or 'inputs', got a "
            f"top-level {type(body).__name__}"
        )
    return body


def _status_json(m: ModelManager, name: str, version: int | None) -> dict:
    resp = status_response(m, name, version)
    return {
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
    }


def _metadata_json(m: ModelManager, name: str, version: int | None) -> dict:
    from google.protobuf.json_format import MessageToDict

    lv = m.resolve(name, version)
    sigs = {k: MessageToDict(v) for k, v in lv.signature_defs.items()}
    return {
        "model_spec": {"name": name, "version": str(lv.version)},
        "metadata": {"signature_def": {"signature_def": sigs}},
    }


def rest_predict(m: ModelManager, name: str, version: int | None, data) -> dict:
    """TF Serving's :predict on a request body: the answer's JSON, or a ServingError."""
    body = _parse_json(data)
    sig = body.get("signature_name", "serving_default")
    if not isinstance(sig, str):
        raise _bad(f"'signature_name' must be a string, got {type(sig).__name__}")
    if "instances" in body and "inputs" in body:
        raise _bad("use either 'instances' (row format) or 'inputs' (columnar), not both")
    if "instances" in body:
        inst = _instances(body, m.limits.max_images)
        if isinstance(inst[0], dict):
            inputs = {k: _to_array([i[k] for i in inst], k) for k in inst[0]}
        else:
            only = _only_input(m, name, version, sig)
            inputs = {only: _to_array(inst, only)}
        _, out = m.predict(name, version, sig, inputs)
        n = len(next(iter(out.values())))
        return {"predictions": [{k: _jsonable(o[i]) for k, o in out.items()} for i in range(n)]}
    if "inputs" in body:
        raw = body["inputs"]
        if not isinstance(raw, dict):  # the columnar form of a one-input signature
            raw = {_only_input(m, name, version, sig): raw}
        inputs = {}
        for k, val in raw.items():
            if isinstance(val, list) and len(val) > m.limits.max_images:
                raise over_limit(
                    f"input '{k}' has too many rows", len(val), m.limits.max_images, "--max-images"
                )
            inputs[k] = _to_array(_rest_value(val), k)
        _, out = m.predict(name, version, sig, inputs)
        return {"outputs": {k: _jsonable(o) for k, o in out.items()}}
    raise _bad("body needs 'instances' or 'inputs'")


_HTTP = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 408,
}


def _json_response(code: int, body: dict | bytes, close: bool = False):
    from starlette.responses import Response

    headers = {"Connection": "close"} if close else None
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(data, code, headers=headers, media_type="application/json")


def _encoded(fn, *args) -> bytes:
    """fn's answer as JSON bytes: encoded on the worker thread, not on the event loop."""
    return json.dumps(fn(*args)).encode()


class _Refused(Exception):
    """A request answered before its body is read whole; `close`: drop the connection after."""

    def __init__(self, error: ServingError, close: bool = False):
        super().__init__(error.message)
        self.error, self.close = error, close


class BodyBudget:
    """Bytes of REST request bodies held at once, across connections: memory stays bounded
    however many clients send at the same time; past it a request is told to retry (503)."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0

    def take(self, n: int) -> bool:  # only called on the event loop: no lock needed
        if self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


async def _next_chunk(request, idle_timeout: float) -> tuple[bytes, bool]:
    """(body bytes, more to come); a client silent for idle_timeout is refused with 408."""
    import asyncio

    try:
        msg = await asyncio.wait_for(request.receive(), idle_timeout)
    except TimeoutError:
        raise _Refused(
            ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"request body stalled: nothing received for {idle_timeout:g}s "
                "(--rest-idle-timeout)",
            ),
            close=True,
        ) from None
    if msg["type"] == "http.disconnect":
        raise _Refused(ServingError(grpc.StatusCode.CANCELLED, "client went away"), close=True)
    return msg.get("body", b""), bool(msg.get("more_body"))


async def _drain(request, idle_timeout: float, left: int) -> bool:
    """Read and drop up to `left` more bytes, so a client still sending gets to read the
    refusal; False when the body is longer (the connection is then closed)."""
    more = True
    try:
        while more and left >= 0:
            chunk, more = await _next_chunk(request, idle_timeout)
            left -= len(chunk)
    except _Refused:  # stalled or gone: the refusal stands, the connection is closed
        return False
    return not more


def _body_too_big(got: str, max_body: int) -> ServingError:
    return ServingError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"request body is too large, in bytes ({got}), over the server's limit of "
        f"{max_body:,}: set by --max-message-mb {max_body // 2**20}",
    )


async def read_body(request, max_body: int, idle_timeout: float, budget: BodyBudget):
    """The body, streamed under the limit and the budget: (bytes, budget taken).

    A Content-Length over the limit is refused before a byte of the body is read; a chunked
    body is refused as soon as it passes the limit. Refused bodies are drained, never kept.
    """
    drain_cap = max(4 * max_body, 256 * 2**20)
    declared = request.headers.get("content-length")  # h11 has checked it is a number
    if declared is not None and int(declared) > max_body:
        drained = int(declared) <= drain_cap and await _drain(request, idle_timeout, drain_cap)
        raise _Refused(_body_too_big(f"{int(declared):,}", max_body), close=not drained)
    buf, more, taken = bytearray(), True, 0
    try:
        while more:
            chunk, more = await _next_chunk(request, idle_timeout)
            if len(buf) + len(chunk) > max_body:
                drained = await _drain(request, idle_timeout, drain_cap)
                raise _Refused(_body_too_big(f"over {max_body:,}", max_body), close=not drained)
            if not budget.take(len(chunk)):
                raise _Refused(
                    ServingError(
                        grpc.StatusCode.UNAVAILABLE,
                        "server busy: other REST requests hold the memory for bodies "
                        f"({budget.limit // 2**20} MB); try again",
                    ),
                    close=True,
                )
            taken += len(chunk)
            buf += chunk
    except BaseException:
        budget.give(taken)
        raise
    return buf, taken


def rest_app(m: ModelManager, options: ServeOptions):
    """TF Serving's REST API as an ASGI app: the socket work on the event loop, where an idle
    or slow client costs no thread; the model work on `--rest-workers` threads."""
    import anyio
    from starlette.applications import Starlette
    from starlette.routing import Route

    max_body, idle = options.max_message_bytes, options.rest_idle_timeout
    budget = BodyBudget(max(4 * max_body, 256 * 2**20))
    workers: list[anyio.CapacityLimiter] = []  # made on the event loop, at the first request

    async def work(fn, *args) -> bytes:
        if not workers:
            workers.append(anyio.CapacityLimiter(options.rest_workers))
        return await anyio.to_thread.run_sync(_encoded, fn, *args, limiter=workers[0])

    async def endpoint(request):
        taken = 0
        try:
            name, version, verb, tail = _route(request.url.path)
            if request.method == "GET":
                if verb is not None:
                    raise _bad(f"unsupported verb ':{verb}' for GET")
                fn = _metadata_json if tail == ["metadata"] else _status_json
                return _json_response(200, await work(fn, m, name, version))
            if verb != "predict":
                raise _bad(f"unsupported verb ':{verb}'")
            data, taken = await read_body(request, max_body, idle, budget)
            answer = await work(rest_predict, m, name, version, data)
            del data
            return _json_response(200, answer)
        except _Refused as e:
            return _json_response(_HTTP.get(e.error.code, 400), {"error": e.error.message}, e.close)
        except ServingError as e:
            return _json_response(_HTTP.get(e.code, 500), {"error": e.message})
        except Exception as e:  # noqa: BLE001 - nothing brings the server down
            log(f"serve: REST internal error: {type(e).__name__}: {e}", level="error")
            return _json_response(500, {"error": f"{type(e).__name__}: {e}"})
        finally:
            budget.give(taken)

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


def _h11_with_head_timeout():
    """uvicorn's h11 protocol, plus a deadline for each request head.

    uvicorn closes a connection idle after a response, but not one that connects and sends
    nothing, or sends its headers a byte at a time; here both are closed after the keep-alive
    timeout (--rest-idle-timeout), as the thread-pool server's socket timeout did.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11WithHeadTimeout(H11Protocol):
        _head_timer = None

        def _busy(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_late)

        def _head_late(self) -> None:
            self._head_timer = None
            if not self._busy() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._busy() and self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def on_response_complete(self) -> None:
            self._arm()
            super().on_response_complete()

        def connection_lost(self, exc):
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

    return H11WithHeadTimeout


class RestServer:
    """uvicorn on its own thread and event loop, on a socket bound here (so a taken port fails
    at start, naming it). TLS by uvicorn's ssl options, the same files as gRPC's."""

    def __init__(self, m: ModelManager, options: ServeOptions):
        import uvicorn

        self.sock = _bind(options.host, options.rest_port, "REST")
        self.port = self.sock.getsockname()[1]
        tls = {}
        if options.ssl_cert:
            tls = {"ssl_certfile": options.ssl_cert, "ssl_keyfile": options.ssl_key}
            if options.ssl_client_ca:
                tls |= {"ssl_ca_certs": options.ssl_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self.config = uvicorn.Config(
            rest_app(m, options),
            http=_h11_with_head_timeout(),
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=options.rest_idle_timeout,  # call_later takes a float
            limit_concurrency=options.rest_max_connections,
            timeout_graceful_shutdown=2,
            **tls,
        )
        self.config.load()  # TLS files are read now: a bad one fails the start, naming it
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="rest", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("REST server did not start within 30 s")
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError(f"REST server failed to start on port {self.port}")

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)
        self.sock.close()


def _bind(host: str, port: int, what: str) -> socket.socket:
    """A TCP socket bound to host:port. Made with proto IPPROTO_TCP, as getaddrinfo gives it:
    asyncio turns Nagle off (TCP_NODELAY) only on such sockets, and with Nagle on a keep-alive
    client waits 40 ms for each answer (delayed ACK)."""
    try:
        family, kind, proto, _, _ = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise OSError(f"cannot bind {what} on {host}:{port}: {e.strerror or e}") from None
    return sock


# ---------------------------------------------------------------- server


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


class GraftServer:
    def __init__(self, options: ServeOptions):
        self.options = o = options
        self.manager = ModelManager(
            o.model_base_path,
            o.model_name,
            o.version_policy,
            limits=o.limits,
            load_retries=o.load_retries,
            load_retry_interval=o.load_retry_interval,
        )
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=o.workers),
            options=[
                ("grpc.max_receive_message_length", o.max_message_bytes),
                ("grpc.max_send_message_length", o.max_message_bytes),
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
        if o.reflection:  # off by default: it hands any client the full API description
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
        self.tls = bool(o.ssl_cert)
        address = f"{o.host}:{o.port}"
        if self.tls:
            key, cert, ca = _read(o.ssl_key), _read(o.ssl_cert), _read(o.ssl_client_ca)
            creds = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
            )
            self.port = self.grpc.add_secure_port(address, creds)
        else:
            self.port = self.grpc.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot bind gRPC on {address}")
        self.host, self.poll_seconds = o.host, o.poll_seconds
        self.rest = RestServer(self.manager, o) if o.rest_port else None
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
        if self.rest:
            self.rest.start()
        self.manager.start(self.poll_seconds)
        self._health_thread = threading.Thread(target=self._update_health, daemon=True)
        self._health_thread.start()
        scheme = "https" if self.tls else "http"
        log(
            f"serve: gRPC{' (TLS)' if self.tls else ''} on {self.host}:{self.port}"
            + (f", REST ({scheme}) on {self.host}:{self.rest.port}" if self.rest else "")
            + f"; model '{self.manager.model_name}' from {self.manager.base_path}"
        )
        return self

    def stop(self, grace: float = 2.0) -> None:
        self._stopped.set()
        self.manager.stop()
        if self.rest:
            self.rest.stop()
        self.grpc.stop(grace).wait()
        log("serve: stopped")


def serve_forever(options: ServeOptions) -> int:
    """Serve gRPC (and REST when asked) until SIGTERM/SIGINT.

    Takes ServeOptions, so the server does not depend on the CLI's Namespace.

    Args:
        options: the server's settings (model, ports, limits, polling, TLS).

    Returns:
        The exit status, 0 after a clean shutdown.
    """
    srv = GraftServer(options).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    srv.stop()
    return 0
