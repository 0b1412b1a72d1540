"""Edge export: TFLite int8 and float16 against float32, on real photos with ImageNet MobileNetV2.

For flowers and cats_dogs (../shared): ingest, a head-only model (frozen ImageNet MobileNetV2
alpha 1.0 at 224 px, features through the store), then each variant converted by
components/tflite.py and measured as the export step measures it: size, test accuracy with a
95% Wilson interval, top-1 agreement with the float model, and the median ms of one image on
one thread (LiteRT interpreter, XNNPACK). Goals, int8 vs float32 measured in the same run:
bytes <= 0.35x, accuracy >= float32 - 0.02, ms/image <= 0.6x. The variants are timed
interleaved, image by image, so the shared machine's drifting speed hits all of them alike.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import MOBILENET_V2, SHARED, report

WEIGHTS = MOBILENET_V2
SIZE = 224  # configs/photos.yaml's input size
DATASETS = ("flowers", "cats_dogs")
TIMED_IMAGES = 200  # the interleaved timing pass: the first N test images


def _test_pixels(examples: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    from graft.components import data as gdata

    blobs, y = zip(*gdata.raw_dataset(examples, "test").as_numpy_iterator(), strict=True)
    pixels = np.stack([gdata.decode_and_resize(tf.constant(b), SIZE).numpy() for b in blobs])
    return pixels, np.array(y)


def _interleaved_ms(contents: dict[str, bytes], pixels: np.ndarray) -> dict[str, float]:
    """Median ms per image per variant, the variants taking turns on each image."""
    from graft.components.tflite import Runner

    runners = {v: Runner(c, threads=1) for v, c in contents.items()}
    times: dict[str, list[float]] = {v: [] for v in contents}
    for r in runners.values():
        r.scores(pixels[0])  # warm-up
    for img in pixels:
        for v, r in runners.items():
            times[v].append(r.scores(img)[1])
    return {v: statistics.median(t) for v, t in times.items()}


def run_dataset(name: str, tmp: Path) -> dict:
    from graft.components import tflite
    from graft.components.ingest import ingest
    from graft.components.model import predict_scores
    from graft.components.train import load_model, train_head
    from graft.core.config import (
        AugmentConfig,
        BaseConfig,
        DataConfig,
        HeadConfig,
        TrainConfig,
        TrainHeadConfig,
    )

    t0 = time.time()
    ex = str(tmp / name / "ex")
    ingest(DataConfig(path=str(SHARED / "datasets" / name), shards=4, image_size=SIZE), ex)
    head_dir = str(tmp / name / "head")
    train_head(
        ex,
        head_dir,
        base=BaseConfig(weights=str(WEIGHTS)),
        head=HeadConfig(),
        train=TrainConfig(),
        cfg=TrainHeadConfig(epochs=40, patience=5, learning_rate=3e-3, feature_cache="on"),
        augment=AugmentConfig(),
        image_size=SIZE,
        feature_store=str(tmp / "features"),
    )
    model = load_model(os.path.join(head_dir, "model.keras"))
    train_seconds = time.time() - t0
    float_pixels, y = _test_pixels(ex)
    reference = predict_scores(model, float_pixels).argmax(1)  # the SavedModel's, to 1e-4
    pixels = tflite.to_uint8(float_pixels)
    representative = tflite.representative_images(ex, SIZE)
    contents, rows, convert_s = {}, {}, {}
    for variant in tflite.VARIANTS:
        t = time.time()
        contents[variant] = tflite.convert(model, variant, SIZE, representative=representative)
        convert_s[variant] = round(time.time() - t, 1)
        rows[variant] = {"bytes": len(contents[variant])} | tflite.measure(
            contents[variant], pixels, y, reference
        )
    for variant, ms in _interleaved_ms(contents, pixels[:TIMED_IMAGES]).items():
        rows[variant]["ms_per_image_interleaved"] = ms
    f32, i8 = rows["float32"], rows["int8"]
    return {
        "dataset": name,
        "test_images": len(y),
        "float_model_test_accuracy": float((reference == y).mean()),
        "representative_images": len(representative),
        "variants": {v: {k: _round(x) for k, x in r.items()} for v, r in rows.items()},
        "int8_bytes_ratio": round(i8["bytes"] / f32["bytes"], 3),
        "int8_accuracy_minus_float32": round(i8["test_accuracy"] - f32["test_accuracy"], 4),
        "int8_ms_ratio": round(i8["ms_per_image_interleaved"] / f32["ms_per_image_interleaved"], 3),
        "float16_bytes_ratio": round(rows["float16"]["bytes"] / f32["bytes"], 3),
        "float16_ms_ratio": round(
            rows["float16"]["ms_per_image_interleaved"] / f32["ms_per_image_interleaved"], 3
        ),
        "convert_seconds": convert_s,
        "ingest_and_train_seconds": round(train_seconds, 1),
    }


def _round(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def _met(d: dict) -> dict[str, bool]:
    return {
        "int8_bytes <= 0.35x float32": d["int8_bytes_ratio"] <= 0.35,
        "int8_accuracy >= float32 - 0.02": d["int8_accuracy_minus_float32"] >= -0.02,
        "int8_ms <= 0.6x float32": d["int8_ms_ratio"] <= 0.6,
    }


def main() -> dict:
    missing = [p for p in [WEIGHTS, *(SHARED / "datasets" / d for d in DATASETS)] if not p.exists()]
    if missing:
        raise SystemExit(f"benchmarks.tflite needs {', '.join(map(str, missing))}")
    tmp = Path(tempfile.mkdtemp(prefix="graft-bench-tflite-"))
    t0 = time.time()
    results = [run_dataset(d, tmp) for d in DATASETS]
    for d in results:
        d["goals_met"] = _met(d)
    flowers = results[0]
    return report(
        "tflite",
        flowers["variants"]["int8"]["ms_per_image_interleaved"],
        flowers["variants"]["float32"]["ms_per_image_interleaved"],
        "ms/image, int8 vs float32, flowers (1 thread, batch 1, median)",
        "int8: bytes <= 0.35x, accuracy >= float32 - 0.02, ms/image <= 0.6x float32",
        datasets=results,
        seconds=round(time.time() - t0, 1),
        setup=f"head-only ImageNet MobileNetV2 alpha 1.0 at {SIZE} px, no flip averaging; "
        "LiteRT interpreter (ai-edge-litert) with its default XNNPACK delegate",
    )


if __name__ == "__main__":
    main()
