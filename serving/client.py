"""GraftClient: top-k predictions over TF Serving's public gRPC API.

Works the same against `graft serve` and the real `tensorflow/serving` container: it only
uses PredictionService.Predict / GetModelMetadata and ModelService.GetModelStatus.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.apis.get_model_metadata_pb2 import SignatureDefMap

RETRYABLE = {grpc.StatusCode.UNAVAILABLE}


@dataclass
class Prediction:
    labels: list[str]
    scores: list[float]

    def top(self) -> tuple[str, float]:
        return self.labels[0], self.scores[0]


def _string_tensor(values: list[bytes]):
    """A DT_STRING TensorProto of shape [len(values)]."""
    from graft.serving.tensors import tensor_proto

    return tensor_proto(np.array(values, dtype=object))


class GraftClient:
    def __init__(
        self,
        target: str,
        model_name: str,
        version: int | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.25,
        max_message_mb: int = 32,
    ):
        self.target, self.model_name, self.version = target, model_name, version
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        limit = max_message_mb * 1024 * 1024
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
        )
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

    def _call(self, method, request):
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE or attempt == self.retries:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def predict_raw(self, images: list[bytes], signature: str = "serving_default"):
        req = predict_pb2.PredictRequest()
        self._spec(req.model_spec, signature)
        req.inputs["image_bytes"].CopyFrom(_string_tensor(images))
        return self._call(self.predictions.Predict, req)

    def predict(self, images: list[str | Path | bytes], top_k: int = 3) -> list[Prediction]:
        blobs = [i if isinstance(i, bytes) else Path(i).read_bytes() for i in images]
        resp = self.predict_raw(blobs)
        import tensorflow as tf

        scores = tf.make_ndarray(resp.outputs["scores"])
        classes = tf.make_ndarray(resp.outputs["classes"])
        out = []
        for row, labels in zip(scores, classes, strict=True):
            ranked = sorted((float(s) for s in row), reverse=True)
            out.append(Prediction([b.decode() for b in labels[:top_k]], ranked[:top_k]))
        return out

    def metadata(self) -> dict:
        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(req.model_spec)
        resp = self._call(self.predictions.GetModelMetadata, req)
        sig_map = SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sig_map)
        return {
            "version": resp.model_spec.version.value,
            "signature_def": {k: MessageToDict(v) for k, v in sig_map.signature_def.items()},
        }

    def status(self) -> list[dict]:
        req = get_model_status_pb2.GetModelStatusRequest()
        self._spec(req.model_spec)
        resp = self._call(self.models.GetModelStatus, req)
        names = {10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}
        return [
            {
                "version": s.version,
                "state": names.get(s.state, str(s.state)),
                "error": s.status.error_message,
            }
            for s in resp.model_version_status
        ]


def predict_main(args) -> int:
    try:
        with GraftClient(args.server, args.model, args.version, timeout=args.timeout) as c:
            preds = c.predict(args.images, args.top_k)
    except grpc.RpcError as e:
        print(f"graft predict: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    if args.json:
        for img, p in zip(args.images, preds, strict=True):
            print(
                json.dumps(
                    {"image": img, "labels": p.labels, "scores": [round(s, 6) for s in p.scores]}
                )
            )
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.model} @ {args.server}")
    t.add_column("image")
    for k in range(args.top_k):
        t.add_column(f"#{k + 1}")
    for img, p in zip(args.images, preds, strict=True):
        t.add_row(str(img), *[f"{lab} {s:.3f}" for lab, s in zip(p.labels, p.scores, strict=True)])
    Console().print(t)
    return 0
