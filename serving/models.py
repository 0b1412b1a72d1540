"""Loaded SavedModel versions of one model: polling, warmup, atomic swap, and prediction.

Shared by the gRPC and REST front ends, so both give the same answers and the same errors.
Mirrors TF Serving's behaviour: integer version dirs under the base path, a version policy,
warmup records replayed before a version becomes AVAILABLE, and the old version kept
serving until the new one is ready.
"""

from __future__ import annotations

import io
import os
import re
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
from graft.core.versions import version_number, why_not_a_version
from graft.serving.options import PILLOW_BOMB_PIXELS, Limits, ServeOptions, parse_policy

__all__ = ["ModelManager", "ServingError", "State", "fast_callable", "over_limit"]


WARMUP = os.path.join("assets.extra", "tf_serving_warmup_requests")
State = ModelVersionStatus.State  # TF Serving's own version states, as GetModelStatus sends them


class ServingError(Exception):
    """An error with the gRPC status code it maps to."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def over_limit(what: str, got: int, limit: int, flag: str) -> ServingError:
    """RESOURCE_EXHAUSTED (HTTP 413) that names the limit and the flag that sets it.

    Args:
        what: what was too large (an image, the pixels of a request), as the message says it.
        got: its size.
        limit: the limit.
        flag: the `graft serve` flag that sets the limit.

    Returns:
        The ServingError to raise.
    """
    return ServingError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{what} ({got:,}), over the server's limit of {limit:,}: set by {flag}",
    )


_NOISE = re.compile(
    r"^(Graph execution error:|Detected at node|Node:|\d+ root error|\d+ successful operations"
    r"|\d+ derived errors|Additional GRPC error information|Function call stack:"
    r"|<stack traces unavailable>)"
)


def root_cause(e: BaseException) -> str:
    """The cause inside a TF op error: its first line is only "Graph execution error:".

    Drops the traceback of where the graph was built and the node annotations, keeps the
    error lines themselves (e.g. "jpeg::Uncompress failed. Invalid JPEG data or crop window.").
    """
    text = getattr(e, "message", None) or str(e)
    keep: list[str] = []
    for line in text.splitlines():
        multi = re.match(r"^\s*\(\d+\)\s+[A-Z_]+:\s*(.*)$", line)  # "  (0) INVALID_ARGUMENT: x"
        if multi:
            line = multi.group(1)
        elif not line.strip() or line[0].isspace() or _NOISE.match(line):
            continue  # tracebacks are indented; "\t [[{{node ...}}]]" too
        line = re.sub(r"\s*\[\[\{\{.*?\}\}\]\]|\s*\[Op:[^\]]*\]", "", line).strip()
        if line and line not in keep:
            keep.append(line)
    if keep:
        return "; ".join(keep)[:1000]
    return (text.strip().splitlines() or [repr(e)])[0][:1000]


def load_error(path: str, e: BaseException) -> str:
    """Why a version did not load, naming the version dir, and the file where TF does not."""
    cause = root_cause(e)
    if "Read less bytes than requested" in cause:  # TF reads only data shards by byte count
        shards = sorted(tf.io.gfile.glob(os.path.join(path, "variables", "variables.data-*")))
        sizes = ", ".join(
            f"{os.path.relpath(f, path)} ({tf.io.gfile.stat(f).length:,} bytes)" for f in shards
        )
        cause = f"{sizes}: shorter than variables.index says (cut short, or still copying): {cause}"
    return cause if path in cause else f"{path}: {cause}"


def _add(cost: list[int] | None, more: list[int]) -> list[int] | None:
    """Per-row decode costs summed over inputs; None (do not chunk) when rows disagree."""
    if cost is None:
        return more
    return [a + b for a, b in zip(cost, more, strict=True)] if len(cost) == len(more) else None


def _filtered(out: dict[str, np.ndarray], output_filter: set[str]) -> dict[str, np.ndarray]:
    """The outputs the request's output_filter names (all when it names none)."""
    if not output_filter:
        return out
    unknown = output_filter - set(out)
    if unknown:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"output_filter names unknown outputs {sorted(unknown)}; have {sorted(out)}",
        )
    return {k: v for k, v in out.items() if k in output_filter}


def _holds_version(d: str) -> bool:
    """Whether directory `d` holds a version dir with a SavedModel."""
    try:
        return any(
            version_number(c) is not None
            and tf.io.gfile.exists(os.path.join(d, c.rstrip("/"), "saved_model.pb"))
            for c in tf.io.gfile.listdir(d)
        )
    except (tf.errors.OpError, OSError):
        return False


def _nearest_above(path: str, depth: int) -> str | None:
    """The closest of `path`'s (local) parents, up to `depth` levels, that holds a version."""
    up = os.path.dirname(os.path.abspath(path)) if "://" not in path else None
    for _ in range(depth):
        if not up or up == os.path.dirname(up):
            break
        if _holds_version(up):
            return up
        up = os.path.dirname(up)
    return None


def nearest_model_dir(path: str, depth: int = 3, budget: int = 2000) -> str | None:
    """The closest directory to `path` (below it, then above) that holds a version dir.

    For the start-up warning: a base path one level off (models/ for models/tiny, or a
    version dir itself) is the usual mistake. Bounded: at most `budget` directories listed.
    """
    seen = 0
    level = [path] if tf.io.gfile.isdir(path) else []
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                children = sorted(c.rstrip("/") for c in tf.io.gfile.listdir(d))
            except (tf.errors.OpError, OSError):
                continue
            for c in children:
                child = os.path.join(d, c)
                seen += 1
                if seen > budget:
                    return None
                if version_number(c) is None and tf.io.gfile.isdir(child):
                    if _holds_version(child):
                        return child
                    nxt.append(child)
        level = nxt
    return _nearest_above(path, depth)


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

    Args:
        fn: a loaded SavedModel signature (a ConcreteFunction taking keyword inputs).

    Returns:
        (input names in call order, the concrete function taking them positionally).
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


class ModelManager:
    """Keeps the versions the policy wants loaded; everything else is unloaded.

    A version that fails to load (often one still being copied in) is retried up to
    `load_retries` times, `load_retry_interval` seconds apart, as TF Serving does
    (--max_num_load_retries, --load_retry_interval_micros); the old version keeps serving.
    """

    def __init__(
        self,
        base_path: str,
        model_name: str,
        policy: str = ServeOptions.version_policy,
        *,
        limits: Limits = Limits(),  # noqa: B008 - frozen
        load_retries: int = ServeOptions.load_retries,
        load_retry_interval: float = ServeOptions.load_retry_interval,
    ):
        self.base_path = base_path
        self.model_name = model_name
        self.policy, self.specific = parse_policy(policy)
        self.limits = limits
        self.load_retries, self.load_retry_interval = load_retries, load_retry_interval
        self._versions: dict[int, LoadedVersion] = {}
        self._states: dict[int, int] = {}  # version -> State.LOADING | AVAILABLE | UNLOADING | END
        self._errors: dict[int, str] = {}
        self._failures: dict[int, tuple[int, float]] = {}  # version -> (failed loads, when)
        self._not_versions: set[str] = set()  # all-digit names already warned about
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ loading
    def on_disk(self) -> list[int]:
        """Version dirs holding saved_model.pb; other all-digit names are warned about, once."""
        if not tf.io.gfile.isdir(self.base_path):
            return []
        found = []
        for name in (d.rstrip("/") for d in tf.io.gfile.listdir(self.base_path)):
            v = version_number(name)
            if v is None:
                self._warn_not_a_version(name)
            elif tf.io.gfile.exists(os.path.join(self.base_path, name, "saved_model.pb")):
                found.append(v)
        return sorted(found)

    def _warn_not_a_version(self, name: str) -> None:
        why = why_not_a_version(name)
        if why and name not in self._not_versions:
            self._not_versions.add(name)
            path = os.path.join(self.base_path, name)
            log(f"serve: ignoring {path}: not a version directory ({why})", level="warn")

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
            why = load_error(path, e)  # may list the version's files: outside the lock
            with self._lock:
                n = self._failures.get(version, (0, 0.0))[0] + 1
                self._failures[version] = (n, time.monotonic())
                left = self.load_retries - (n - 1)
                then = (
                    f"retrying in {self.load_retry_interval:g}s ({left} retries left)"
                    if left > 0
                    else f"giving up after {n} attempts (--load-retries {self.load_retries})"
                )
                self._states[version] = State.END
                self._errors[version] = f"{type(e).__name__}: {why}; {then}"
            log(f"serve: version {version} failed to load: {why}; {then}", level="error")
            return
        with self._lock:
            self._versions[version] = lv
            self._states[version] = State.AVAILABLE
            self._errors.pop(version, None)
            self._failures.pop(version, None)
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

    def _waiting(self, now: float) -> set[int]:
        """Failed versions not to load now: retries used up, or the interval not yet over."""
        return {
            v
            for v, (n, t) in self._failures.items()
            if n > self.load_retries or now - t < self.load_retry_interval
        }

    def poll_once(self) -> None:
        disk = self.on_disk()
        want = self.wanted(disk)
        with self._lock:
            for v in set(self._failures) - set(disk):
                del self._failures[v]  # gone from disk: a new copy later starts afresh
            for v in set(self._states) - set(disk) - set(self._versions):
                self._states.pop(v)  # deleted: status forgets it and its error
                self._errors.pop(v, None)
            have = set(self._versions)
            failed = self._waiting(time.monotonic())
        for v in sorted(want - have - failed):
            self.load(v)  # the old version keeps serving meanwhile
        if self.policy == "latest":
            want |= self._fallback(disk, want)
        with self._lock:
            available = set(self._versions)
        for v in sorted(available - want):
            if (
                want & available or not want
            ):  # never drop the last version before its successor is up
                self.unload(v)

    def _fallback(self, disk: list[int], want: set[int]) -> set[int]:
        """While the newest version does not load: the newest older one that does.

        A restart with a broken newest version serves the previous one, not nothing; the
        broken one stays in status with its error and is retried by the retry policy.
        """
        with self._lock:
            if want & set(self._versions):
                return set()
            available = set(self._versions)
            failed = self._waiting(time.monotonic())
        for v in sorted(set(disk) - want, reverse=True):
            if v in available:
                return {v}
            if v not in failed:
                self.load(v)
                with self._lock:
                    if v in self._versions:
                        return {v}
        return set()

    def warn_if_empty(self) -> str | None:
        """A wrong --model-base-path should not look like a model still on its way."""
        if self.on_disk():
            return None
        what = "does not exist" if not tf.io.gfile.isdir(self.base_path) else "holds no version"
        near = nearest_model_dir(self.base_path)
        msg = (
            f"serve: --model-base-path {self.base_path} {what} (a version is an integer "
            "directory with saved_model.pb); "
            + (f"did you mean {near}?" if near else "no directory nearby holds one")
            + " Serving nothing until a version appears."
        )
        log(msg, level="warn")
        return msg

    def start(self, poll_seconds: float) -> None:
        self.warn_if_empty()
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

    def _check_images(self, name: str, arr: np.ndarray) -> list[int]:
        """Headers only (PIL reads no pixels): formats, sizes, the pixel limits; pixels each."""
        lim, pixels = self.limits, []
        for i, blob in enumerate(arr.reshape(-1)):
            if isinstance(blob, str):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{name}'[{i}] is a text string; image bytes go in as "
                    '{"b64": "<base64>"} over REST (TF Serving\'s encoding)',
                )
            if not isinstance(blob, (bytes, bytearray)):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{name}'[{i}] is {type(blob).__name__}, not image bytes",
                )
            if not blob:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"input '{name}'[{i}] is empty (0 bytes)"
                )
            try:
                with Image.open(io.BytesIO(blob)) as im:
                    w, h = im.size
                    fmt = im.format
            except Image.DecompressionBombError:  # over PILLOW_BOMB_PIXELS >= --max-pixels
                raise ServingError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"input '{name}'[{i}] has more than {PILLOW_BOMB_PIXELS:,} pixels, over the "
                    f"server's limit of {lim.max_pixels:,}: set by --max-pixels",
                ) from None
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{name}'[{i}] is not a decodable JPEG/PNG/GIF/BMP image ({e})",
                ) from None
            if fmt not in ("JPEG", "PNG", "GIF", "BMP"):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{name}'[{i}] is {fmt}; expected JPEG, PNG, GIF or BMP",
                )
            if w * h > lim.max_pixels:
                raise over_limit(
                    f"input '{name}'[{i}] is {w}x{h} pixels", w * h, lim.max_pixels, "--max-pixels"
                )
            pixels.append(w * h)
            if sum(pixels) > lim.max_request_pixels:
                raise over_limit(
                    f"input '{name}': images 0..{i} hold this many pixels in all",
                    sum(pixels),
                    lim.max_request_pixels,
                    "--max-request-pixels",
                )
        return pixels

    def _chunks(self, n: int, cost: list[int]) -> list[tuple[int, int]]:
        """Row ranges whose decode cost stays under the chunk budget (one row at least)."""
        out, start, acc = [], 0, 0
        for i in range(n):
            if i > start and acc + cost[i] > self.limits.chunk_pixels:
                out.append((start, i))
                start, acc = i, 0
            acc += cost[i]
        out.append((start, n))
        return out

    def _call(self, signature: str, call, feed: dict, names: list, specs: dict, rows=None):
        try:
            return call(
                *[
                    tf.constant(feed[k] if rows is None else feed[k][rows], dtype=specs[k].dtype)
                    for k in names
                ]
            )
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"could not run '{signature}': {root_cause(e)}"
            ) from None
        except tf.errors.ResourceExhaustedError as e:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, root_cause(e)) from None

    def _run(
        self,
        lv: LoadedVersion,
        signature: str,
        inputs: dict[str, np.ndarray],
        output_filter: set[str],
    ):
        specs = self._input_specs(lv, signature, inputs)
        self._check_rows(inputs)  # before anything is decoded or copied
        feed, cost = {}, None
        for k, spec in specs.items():
            more = self._input_cost(k, spec, inputs[k])
            if more is not None:
                cost = _add(cost, more)
            feed[k] = inputs[k]
        names, call = lv.fast[signature]
        rows = {feed[k].shape[0] if feed[k].ndim else -1 for k in names}
        n = rows.pop() if len(rows) == 1 else -1
        ranges = self._chunks(n, cost) if cost is not None and n > 1 and len(cost) == n else []
        if len(ranges) <= 1:
            out = {k: v.numpy() for k, v in self._call(signature, call, feed, names, specs).items()}
        else:
            out = self._call_in_chunks(signature, call, feed, names, specs, ranges)
        return _filtered(out, output_filter)

    @staticmethod
    def _input_specs(lv: LoadedVersion, signature: str, inputs: dict[str, np.ndarray]) -> dict:
        """The signature's input specs, once the request names exactly its inputs."""
        if signature not in lv.signatures:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown signature '{signature}'; available: {sorted(lv.signatures)}",
            )
        specs = lv.signatures[signature].structured_input_signature[1]
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
        return specs

    def _check_rows(self, inputs: dict[str, np.ndarray]) -> None:
        """At most --max-images rows per input, and never an empty batch."""
        lim = self.limits
        for k, arr in inputs.items():
            rows = arr.size if k.endswith("_bytes") else (arr.shape[0] if arr.ndim else 1)
            if rows > lim.max_images:
                raise over_limit(
                    f"input '{k}' has too many images (rows) in one request",
                    rows,
                    lim.max_images,
                    "--max-images",
                )
            if arr.ndim and arr.shape[0] == 0:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{k}' is an empty batch (shape {list(arr.shape)}); send at least one",
                )

    def _input_cost(self, k: str, spec, arr: np.ndarray) -> list[int] | None:
        """Check one input's type, shape and pixel limits; its per-row decode cost in pixels,
        or None when it adds none (not images, or not one image per row)."""
        want, cost = spec.dtype, None
        if want == tf.string:
            if arr.dtype.kind not in ("O", "S"):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{k}' must be DT_STRING, got {arr.dtype}",
                )
            if k.endswith("_bytes"):
                pixels = self._check_images(k, arr)
                if arr.ndim == 1:
                    cost = pixels
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
        if want != tf.string and arr.ndim >= 3:  # pixels: rows x H x W (x C)
            px = int(np.prod(arr.shape[:3]))
            if px > self.limits.max_request_pixels:
                raise over_limit(
                    f"input '{k}' holds this many pixels in all",
                    px,
                    self.limits.max_request_pixels,
                    "--max-request-pixels",
                )
            cost = [int(np.prod(arr.shape[1:3]))] * arr.shape[0]
        return cost

    def _call_in_chunks(self, signature, call, feed, names, specs, ranges) -> dict:
        """Bounded decoding: memory for one chunk at a time, returned in between."""
        parts: dict[str, list] = {}
        for a, b in ranges:
            got = self._call(signature, call, feed, names, specs, slice(a, b))
            for key, v in got.items():
                v = v.numpy()
                if not v.ndim or v.shape[0] != b - a:
                    raise ServingError(
                        grpc.StatusCode.INTERNAL,
                        f"output '{key}' is not one row per input row; raise "
                        "--decode-chunk-pixels to run this request in one piece",
                    )
                parts.setdefault(key, []).append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}

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
