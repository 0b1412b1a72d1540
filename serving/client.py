"""GraftClient: top-k predictions over TF Serving's public gRPC API.

Works the same against `graft serve` and the real `tensorflow/serving` container: it only
uses PredictionService.Predict / GetModelMetadata and ModelService.GetModelStatus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from graft.serving import protos
from graft.serving.tensors import tensor_proto, to_numpy

__all__ = ["DEFAULT_SERVER", "GraftClient", "Prediction", "predict_files"]


_pb = protos.load()  # TF Serving's protos without importing TensorFlow (start-up < 1 s)
get_model_metadata_pb2, get_model_status_pb2 = _pb.get_model_metadata_pb2, _pb.get_model_status_pb2
model_service_pb2_grpc, predict_pb2 = _pb.model_service_pb2_grpc, _pb.predict_pb2
prediction_service_pb2_grpc = _pb.prediction_service_pb2_grpc
SignatureDefMap = get_model_metadata_pb2.SignatureDefMap

DEFAULT_SERVER = "127.0.0.1:8500"  # graft serve's and TF Serving's gRPC port
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
GRPC_MAX_ATTEMPTS = 5  # gRPC's ceiling on a retryPolicy's maxAttempts
State = get_model_status_pb2.ModelVersionStatus.State


def _duration(seconds: float) -> str:
    """A service-config duration ("0.25s"): gRPC's JSON parser rejects exponent notation."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def retry_options(retries: int, backoff: float) -> list[tuple[str, int | str]]:
    """Channel options that make gRPC itself retry every call of both TF Serving services.

    Same schedule as the loop this replaced: retries + 1 attempts, waits starting at
    `backoff` and doubling, only on UNAVAILABLE, no wait-for-ready. gRPC allows at most 5
    attempts and jitters each wait by up to 20%; the call's timeout is one deadline over all
    attempts. retries=0 leaves gRPC's defaults alone (one attempt).
    """
    if retries <= 0:
        return []
    attempts = min(retries + 1, GRPC_MAX_ATTEMPTS)  # gRPC would clamp it, logging an error
    policy = {
        "maxAttempts": attempts,
        "initialBackoff": _duration(backoff),
        "maxBackoff": _duration(backoff * 2 ** (attempts - 2)),
        "backoffMultiplier": 2,
        "retryableStatusCodes": [c.name for c in RETRYABLE],
    }
    config = {"methodConfig": [{"name": [{"service": s} for s in SERVICES], "retryPolicy": policy}]}
    return [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]


def _state_name(value: int) -> str:
    """The proto enum's name; a value these protos do not know stays a number."""
    try:
        return State.Name(value)
    except ValueError:
        return str(value)


@dataclass
class Prediction:
    """One image's answer: the labels, best first, and the score of each."""

    labels: list[str]
    scores: list[float]

    def top(self) -> tuple[str, float]:
        return self.labels[0], self.scores[0]


def _string_tensor(values: list[bytes]):
    """A DT_STRING TensorProto of shape [len(values)]."""
    return tensor_proto(np.array(values, dtype=object))


class GraftClient:
    """A TF Serving gRPC client (for `graft serve` and TF Serving alike): predict
    encoded images, read the model's status and metadata; retries through a service config.
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        version: int | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.25,
        max_message_mb: int = 32,
        tls: dict[str, bytes] | None = None,
    ):
        """tls: grpc.ssl_channel_credentials keywords (root_certificates, and for a server
        with --ssl-client-ca also private_key and certificate_chain); None: plaintext."""
        self.target, self.model_name, self.version = target, model_name, version
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        limit = max_message_mb * 1024 * 1024
        options = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            # gRPC only retries a call whose request it still holds: up to a full message
            ("grpc.per_rpc_retry_buffer_size", limit),
            *retry_options(retries, backoff),
        ]
        if tls:
            creds = grpc.ssl_channel_credentials(**tls)
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self, spec, signature: str | None = None):
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        if signature:
            spec.signature_name = signature

    def predict_raw(self, images: list[bytes], signature: str = "serving_default"):
        req = predict_pb2.PredictRequest()
        self._spec(req.model_spec, signature)
        req.inputs["image_bytes"].CopyFrom(_string_tensor(images))
        return self.predictions.Predict(req, timeout=self.timeout)

    def predict(self, images: list[str | Path | bytes], top_k: int = 3) -> list[Prediction]:
        blobs = [i if isinstance(i, bytes) else Path(i).read_bytes() for i in images]
        resp = self.predict_raw(blobs)
        scores = to_numpy(resp.outputs["scores"])
        classes = to_numpy(resp.outputs["classes"])
        out = []
        for row, labels in zip(scores, classes, strict=True):
            ranked = sorted((float(s) for s in row), reverse=True)
            out.append(Prediction([b.decode() for b in labels[:top_k]], ranked[:top_k]))
        return out

    def metadata(self) -> dict:
        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(req.model_spec)
        resp = self.predictions.GetModelMetadata(req, timeout=self.timeout)
        sig_map = SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sig_map)
        return {
            "version": resp.model_spec.version.value,
            "signature_def": {k: MessageToDict(v) for k, v in sig_map.signature_def.items()},
        }

    def status(self) -> list[dict]:
        req = get_model_status_pb2.GetModelStatusRequest()
        self._spec(req.model_spec)
        resp = self.models.GetModelStatus(req, timeout=self.timeout)
        return [
            {
                "version": s.version,
                "state": _state_name(s.state),
                "error": s.status.error_message,
            }
            for s in resp.model_version_status
        ]


PER_IMAGE_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


def predict_files(client: GraftClient, images: list[str], top_k: int = 3, batch_size: int = 32):
    """One row per image file, in order (graft.serving.local.Prediction, as `--model-dir` gives).

    Images go in requests of batch_size. A file that cannot be read, or that the server
    refuses (not an image, too large), gets an error row naming it and the rest go on: a
    refused request is re-sent one image at a time to find the bad ones.

    Args:
        client: an open GraftClient.
        images: image file paths.
        top_k: labels (with scores) kept per image.
        batch_size: images per request.

    Returns:
        A list of graft.serving.local.Prediction, one per image, in order.

    Raises:
        grpc.RpcError: an error of the server itself (UNAVAILABLE, an unknown model).
    """
    from graft.serving.local import Prediction as Row

    rows = []
    for i in range(0, len(images), max(1, batch_size)):
        batch = [Row(str(name)) for name in images[i : i + max(1, batch_size)]]
        blobs: dict[int, bytes] = {}
        for j, row in enumerate(batch):
            try:
                blobs[j] = Path(row.image).read_bytes()
            except OSError as e:
                row.error = f"{type(e).__name__}: {e.strerror or e}"
        try:
            answers = client.predict(list(blobs.values()), top_k) if blobs else []
        except grpc.RpcError as e:
            if e.code() not in PER_IMAGE_CODES:
                raise
            answers = [_predict_one(client, blob, top_k) for blob in blobs.values()]
        for j, answer in zip(blobs, answers, strict=True):
            if isinstance(answer, str):
                batch[j].error = answer
            else:
                batch[j].labels, batch[j].scores = answer.labels, answer.scores
        rows += batch
    return rows


def _predict_one(client: GraftClient, blob: bytes, top_k: int) -> Prediction | str:
    """The image's prediction, or why the server refused it."""
    try:
        return client.predict([blob], top_k)[0]
    except grpc.RpcError as e:
        if e.code() not in PER_IMAGE_CODES:
            raise
        return f"{e.code().name}: {e.details()}"
