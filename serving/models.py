"""Loaded SavedModel versions of one model: polling, warmup, atomic swap, and prediction.

Shared by the gRPC and REST front ends, so both give the same answers and the same errors.
Mirrors TF Serving's behaviour: integer version dirs under the base path, a version policy,
warmup records replayed before a version becomes AVAILABLE, and the old version kept
serving until the new one is ready.
"""

from __future__ import annotations

import io
import os
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis.get_model_status_pb2 import ModelVersionStatus

from graft.core.log import log

WARMUP = os.path.join("assets.extra", "tf_serving_warmup_requests")
State = ModelVersionStatus.State  # TF Serving's own version states, as GetModelStatus sends them


class ServingError(Exception):
    """An error with the gRPC status code it maps to."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class LoadedVersion:
    version: int
    path: str
    obj: object
    signatures: dict
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    loaded_at: float
    fast: dict  # signature -> (input names, concrete function): see fast_callable


def fast_callable(fn) -> tuple[list[str], object]:
    """The signature re-traced into a plain concrete function, taking its inputs in name order.

    Calling a loaded SavedModel signature looks up every captured variable's handle in Python
    on each call (263 for MobileNetV2, ~1 ms); a function traced around it captures them once.
    Same graph, same outputs: the server tests compare answers with the signature's own.
    Keep the loaded SavedModel object alive as long as this is used: it owns the variables.
    """
    specs = fn.structured_input_signature[1]
    names = sorted(specs)

    def call(*args):
        return fn(**dict(zip(names, args, strict=True)))

    return names, tf.function(
        call, input_signature=[specs[n] for n in names]
    ).get_concrete_function()


def read_signature_defs(path: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    sm = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    return {k: v for k, v in sm.meta_graphs[0].signature_def.items() if not k.startswith("__")}


def parse_policy(text: str) -> tuple[str, set[int]]:
    if text in ("latest", "all"):
        return text, set()
    if text.startswith("specific:"):
        try:
            return "specific", {int(v) for v in text.split(":", 1)[1].split(",") if v}
        except ValueError:
            pass
    raise ValueError(f"--version-policy must be latest, all or specific:N[,M], got '{text}'")


class ModelManager:
    """Keeps the versions the policy wants loaded; everything else is unloaded."""

    def __init__(
        self, base_path: str, model_name: str, policy: str = "latest", max_pixels: int = 40_000_000
    ):
        self.base_path = base_path
        self.model_name = model_name
        self.policy, self.specific = parse_policy(policy)
        self.max_pixels = max_pixels
        self._versions: dict[int, LoadedVersion] = {}
        self._states: dict[int, int] = {}  # version -> State.LOADING | AVAILABLE | UNLOADING | END
        self._errors: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ loading
    def on_disk(self) -> list[int]:
        if not tf.io.gfile.isdir(self.base_path):
            return []
        return sorted(
            int(d.rstrip("/"))
            for d in tf.io.gfile.listdir(self.base_path)
            if d.rstrip("/").isdigit()
            and tf.io.gfile.exists(os.path.join(self.base_path, d.rstrip("/"), "saved_model.pb"))
        )

    def wanted(self, disk: list[int]) -> set[int]:
        if self.policy == "all":
            return set(disk)
        if self.policy == "specific":
            return self.specific & set(disk)
        return {disk[-1]} if disk else set()

    def _warmup(self, lv: LoadedVersion) -> int:
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(lv.path, WARMUP)
        if not tf.io.gfile.exists(path):
            return 0
        n = 0
        for rec in tf.data.TFRecordDataset(path).as_numpy_iterator():
            plog = prediction_log_pb2.PredictionLog.FromString(rec)
            if plog.HasField("predict_log"):
                req = plog.predict_log.request
                inputs = {k: tf.make_ndarray(v) for k, v in req.inputs.items()}
                self._run(lv, req.model_spec.signature_name or "serving_default", inputs, set())
                n += 1
        return n

    def load(self, version: int) -> None:
        path = os.path.join(self.base_path, str(version))
        with self._lock:
            self._states[version] = State.LOADING
        t0 = time.time()
        try:
            obj = tf.saved_model.load(path)
            sigs = dict(obj.signatures)
            lv = LoadedVersion(
                version,
                path,
                obj,
                sigs,
                read_signature_defs(path),
                time.time(),
                {k: fast_callable(f) for k, f in sigs.items()},
            )
            n = self._warmup(lv)
        except Exception as e:  # noqa: BLE001 - a bad version must not take the server down
            with self._lock:
                self._states[version] = State.END
                self._errors[version] = f"{type(e).__name__}: {e}"
            log(f"serve: version {version} failed to load: {e}", level="error")
            return
        with self._lock:
            self._versions[version] = lv
            self._states[version] = State.AVAILABLE
        log(
            f"serve: {self.model_name} version {version} AVAILABLE ({time.time() - t0:.1f}s, "
            f"{n} warmup requests)"
        )

    def unload(self, version: int) -> None:
        with self._lock:
            self._states[version] = State.UNLOADING
            self._versions.pop(version, None)
            self._states[version] = State.END
        log(f"serve: {self.model_name} version {version} unloaded")

    def poll_once(self) -> None:
        disk = self.on_disk()
        want = self.wanted(disk)
        with self._lock:
            have = set(self._versions)
            failed = {v for v, s in self._states.items() if s == State.END and v in self._errors}
        for v in sorted(want - have - failed):
            self.load(v)  # the old version keeps serving meanwhile
        with self._lock:
            available = set(self._versions)
        for v in sorted(available - want):
            if (
                want & available or not want
            ):  # never drop the last version before its successor is up
                self.unload(v)

    def start(self, poll_seconds: float) -> None:
        self.poll_once()

        def loop():
            while not self._stop.wait(poll_seconds):
                try:
                    self.poll_once()
                except Exception as e:  # noqa: BLE001
                    log(f"serve: poll failed: {e}", level="error")

        self._thread = threading.Thread(target=loop, name="version-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------ queries
    def states(self) -> dict[int, tuple[int, str]]:
        """version -> (State value, load error); the State values go into GetModelStatus as-is."""
        with self._lock:
            return {v: (s, self._errors.get(v, "")) for v, s in self._states.items()}

    def available(self) -> bool:
        with self._lock:
            return bool(self._versions)

    def resolve(self, name: str, version: int | None) -> LoadedVersion:
        if name != self.model_name:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: model '{name}' "
                f"(this server serves '{self.model_name}')",
            )
        with self._lock:
            if version is None:
                if not self._versions:
                    raise ServingError(
                        grpc.StatusCode.UNAVAILABLE, f"no version of '{name}' is available yet"
                    )
                return self._versions[max(self._versions)]
            if version not in self._versions:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: model '{name}' version {version} "
                    f"(available: {sorted(self._versions)})",
                )
            return self._versions[version]

    def _check_images(self, name: str, arr: np.ndarray) -> None:
        for i, blob in enumerate(arr.reshape(-1)):
            if not isinstance(blob, (bytes, bytearray)) or not blob:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"input '{name}'[{i}] is empty"
                )
            try:
                with Image.open(io.BytesIO(blob)) as im:
                    w, h = im.size
                    fmt = im.format
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as e:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{name}'[{i}] is not a decodable JPEG/PNG/GIF/BMP image ({e})",
                ) from None
            if fmt not in ("JPEG", "PNG", "GIF", "BMP"):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{name}'[{i}] is {fmt}; expected JPEG, PNG, GIF or BMP",
                )
            if w * h > self.max_pixels:
                raise ServingError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"input '{name}'[{i}] is {w}x{h} = {w * h:,} pixels, over the server's "
                    f"limit of {self.max_pixels:,}",
                )

    def _run(
        self,
        lv: LoadedVersion,
        signature: str,
        inputs: dict[str, np.ndarray],
        output_filter: set[str],
    ):
        if signature not in lv.signatures:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown signature '{signature}'; available: {sorted(lv.signatures)}",
            )
        fn = lv.signatures[signature]
        specs = fn.structured_input_signature[1]
        if not inputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"empty request: signature '{signature}' expects inputs {sorted(specs)}",
            )
        missing, extra = set(specs) - set(inputs), set(inputs) - set(specs)
        if missing or extra:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"signature '{signature}' expects inputs {sorted(specs)}; "
                f"missing {sorted(missing)}, unexpected {sorted(extra)}",
            )
        feed = {}
        for k, spec in specs.items():
            arr = inputs[k]
            want = spec.dtype
            if want == tf.string:
                if arr.dtype.kind not in ("O", "S"):
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"input '{k}' must be DT_STRING, got {arr.dtype}",
                    )
                if k.endswith("_bytes"):
                    self._check_images(k, arr)
            elif (
                arr.dtype.kind in ("O", "S", "U")
                or (want.is_floating and arr.dtype.kind not in "fiu")
                or (want.is_integer and arr.dtype.kind not in "iu")
            ):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{k}' must be {want.name}, got {arr.dtype}",
                )
            if not spec.shape.is_compatible_with(arr.shape):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{k}' has shape {list(arr.shape)}; signature wants {spec.shape}",
                )
            feed[k] = tf.constant(arr, dtype=want)
        names, call = lv.fast[signature]
        try:
            out = call(*[feed[k] for k in names])
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
            msg = str(e).splitlines()[0][:500]
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"could not run '{signature}': {msg}"
            ) from None
        except tf.errors.ResourceExhaustedError as e:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)[:500]) from None
        if output_filter:
            unknown = output_filter - set(out)
            if unknown:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output_filter names unknown outputs {sorted(unknown)}; have {sorted(out)}",
                )
            out = {k: v for k, v in out.items() if k in output_filter}
        return {k: v.numpy() for k, v in out.items()}

    def predict(
        self,
        name: str,
        version: int | None,
        signature: str,
        inputs: dict[str, np.ndarray],
        output_filter: set[str] | None = None,
    ) -> tuple[int, dict[str, np.ndarray]]:
        lv = self.resolve(name, version)
        return lv.version, self._run(
            lv, signature or "serving_default", inputs, output_filter or set()
        )
