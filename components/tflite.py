"""Edge export: TFLite float32 / float16 / int8 models beside the SavedModel, each measured.

Every variant takes what a phone or board has after it decodes a photo: uint8 pixels
[1, H, W, 3] at the model's input size (TFLite has no JPEG decoder op). The caller resizes
as training did: `components/data.py:decode_and_resize` with the trained geometry
(data.resize: squash, crop or pad; tflite.json beside the files says which, and how), then
rounds to uint8. Everything after that,
the backbone's preprocess_input and `export.flip_average`, is inside the model, as in the
SavedModel. float32/float16 return float32 `scores` in label order. int8 is full-integer
(every op int8, calibrated on REPRESENTATIVE_IMAGES training images): its input is uint8 raw
pixels (scale 1, zero point 0) and its output uint8 scores (score = scale * (q - zero_point),
the output tensor's quantization), as MediaPipe/TFLite Model Maker's int8 export does.

No maintained package writes TFLite metadata here (mediapipe 1.2's metadata writer lacks its
native module; tflite-support needs protobuf < 4), so the labels go in `labels.txt` beside
the files, one per line, in the order of the scores.

Each variant is measured with the LiteRT interpreter (ai-edge-litert) on the test images the
evaluate step scored: accuracy with a Wilson interval, top-1 agreement with the SavedModel,
and the median time of one image on one thread.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from graft.core.quiet import native_stderr_captured

__all__ = [
    "REPRESENTATIVE_IMAGES",
    "VARIANTS",
    "RepresentativeDataError",
    "Runner",
    "convert",
    "export_variants",
    "file_name",
    "geometry_beside",
    "measure",
    "predict_files",
    "representative_images",
    "to_uint8",
]

VARIANTS = ("float32", "float16", "int8")
REPRESENTATIVE_IMAGES = 200  # int8 calibration: the N training images whose sha256 sort first
LABELS_FILE = "labels.txt"
RESULTS_FILE = "tflite.json"
INPUT_NOTE = "uint8 [1, H, W, 3] RGB pixels, the decoded image shaped as training shaped it: "


class RepresentativeDataError(ValueError):
    """int8 calibration has no (or unusable) representative images."""


class EdgeExportError(RuntimeError):
    """A converted model does not have the input contract this module promises."""


def file_name(model_name: str, variant: str) -> str:
    """The .tflite file name of one variant, the same at export and wherever it is copied.

    Args:
        model_name: the model's name.
        variant: one of VARIANTS.

    Returns:
        "<model_name>_<variant>.tflite".
    """
    return f"{model_name}_{variant}.tflite"


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """0..255 float pixels (decode_and_resize) as the uint8 an edge app feeds the model.

    Args:
        pixels: float pixels in 0..255.

    Returns:
        The rounded, clipped uint8 array.
    """
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _edge_function(model, size: int, flip_average: bool, variant: str):
    """The graph a variant is converted from: pixels -> preprocess -> model -> scores.

    int8 takes float32 pixels through a fake-quant node fixed to 0..255 in 8 bits, so the
    converter gives the uint8 input scale 1 and zero point 0 (raw pixels, no float op);
    the float variants take uint8 and cast.
    """
    import tensorflow as tf

    from graft.components import model as gmodel

    if variant == "int8":

        @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="image")])
        def edge(image):
            pixels = tf.quantization.fake_quant_with_min_max_args(image, 0.0, 255.0, num_bits=8)
            return {"scores": gmodel.scores(model, pixels, flip_average)}

    else:

        @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name="image")])
        def edge(image):
            return {"scores": gmodel.scores(model, tf.cast(image, tf.float32), flip_average)}

    return edge


def convert(
    model,
    variant: str,
    size: int,
    *,
    flip_average: bool = False,
    representative: np.ndarray | None = None,
) -> bytes:
    """One variant as .tflite bytes, with TensorFlow's own TFLiteConverter.

    `representative`: uint8 [N, size, size, 3] training images, needed (N >= 1) for int8.
    The converter reads a SavedModel (from concrete functions it leaves Keras 3's variables
    unfrozen), so the edge graph is written to a temp dir first.

    Args:
        model: the trained Keras model.
        variant: one of VARIANTS.
        size: the model's input side.
        flip_average: average each image's scores with its mirror image's.
        representative: the int8 calibration images; unused by the other variants.

    Returns:
        The .tflite file's bytes.

    Raises:
        ValueError: an unknown variant.
        RepresentativeDataError: int8 without usable representative images.
    """
    import keras
    import tensorflow as tf

    if variant not in VARIANTS:
        raise ValueError(f"unknown TFLite variant '{variant}'; valid: {', '.join(VARIANTS)}")
    if variant == "int8":
        _check_representative(representative, size)
    with tempfile.TemporaryDirectory(prefix="graft-tflite-") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", _edge_function(model, size, flip_average, variant))
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, ["serving_default"])
        if variant == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif variant == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: (
                [img[None].astype(np.float32)] for img in representative
            )
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        with native_stderr_captured():  # the MLIR converter's progress lines
            content = converter.convert()
    _check_input(content, variant, size)
    return content


def _check_representative(images: np.ndarray | None, size: int) -> None:
    n = 0 if images is None else len(images)
    if n == 0:
        raise RepresentativeDataError(
            "export.tflite int8: the representative dataset is empty (0 training images); "
            "full-integer quantization calibrates every activation's range on training "
            "images. Drop int8 from export.tflite or give the train split images."
        )
    if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
        raise RepresentativeDataError(
            f"export.tflite int8: representative images must be uint8 [N, {size}, {size}, 3], "
            f"got {images.dtype} {list(images.shape)}"
        )


def _check_input(content: bytes, variant: str, size: int) -> None:
    """Every variant takes raw uint8 pixels: int8's input must be scale 1, zero point 0."""
    detail = Runner(content).input
    scale, zero = detail["quantization"]
    raw = scale in (0.0, 1.0) and zero == 0
    if detail["dtype"] != np.uint8 or list(detail["shape"]) != [1, size, size, 3] or not raw:
        raise EdgeExportError(
            f"TFLite {variant}: input {detail['dtype'].__name__} {list(detail['shape'])} "
            f"quantization {detail['quantization']}, not raw uint8 [1, {size}, {size}, 3]"
        )


class Runner:
    """One .tflite model in the LiteRT interpreter: uint8 pixels in, float scores out."""

    def __init__(self, content: bytes | None = None, path: str | None = None, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        with native_stderr_captured():  # "Created TensorFlow Lite XNNPACK delegate"
            self._it = Interpreter(model_content=content, model_path=path, num_threads=threads)
            self._it.allocate_tensors()
        self.input = self._it.get_input_details()[0]
        self.output = self._it.get_output_details()[0]
        self.size = int(self.input["shape"][1])

    def scores(self, pixels: np.ndarray) -> tuple[np.ndarray, float]:
        """Scores in label order for one uint8 [H, W, 3] image, and the call's milliseconds."""
        start = time.perf_counter()
        self._it.set_tensor(self.input["index"], pixels[None])
        self._it.invoke()
        raw = self._it.get_tensor(self.output["index"])[0]
        ms = (time.perf_counter() - start) * 1000.0
        scale, zero = self.output["quantization"]
        out = raw.astype(np.float32)
        return ((out - zero) * scale if scale else out), ms


def representative_images(
    examples_dir: str, size: int, n: int = REPRESENTATIVE_IMAGES, geometry=None
):
    """The `n` training images whose sha256 sort first, as uint8: the same images from any
    ingest of the same folder (the shards' record order is Beam's, and differs between two).

    Args:
        examples_dir: the ingest step's output.
        size: the model's input side.
        n: how many images.
        geometry: how images are shaped to the input size; None: squash.

    Returns:
        uint8 [n, size, size, 3] (fewer where the split is smaller), in sha256 order.
    """
    import tensorflow as tf

    from graft.components import data as gdata

    geometry = geometry or gdata.SQUASH
    found = gdata.first_images_by_sha256(examples_dir, "train", n)
    if not found:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack(
        [
            to_uint8(gdata.decode_and_resize(tf.constant(b), size, geometry).numpy())
            for b in found.values()
        ]
    )


def _scored_test_images(examples_dir: str, evaluation_dir: str) -> tuple[list[bytes], np.ndarray]:
    """The test images evaluate scored (its test_predictions.csv: validate's exclusions out)."""
    import csv

    from graft.components import data as gdata

    path = os.path.join(evaluation_dir, "test_predictions.csv")
    scored = None
    if os.path.exists(path):
        with open(path, newline="") as f:
            scored = {row["sha256"] for row in csv.DictReader(f)}
    blobs, labels = [], []
    for ex in gdata.parsed_examples(examples_dir, "test").as_numpy_iterator():
        if scored is None or ex["image/sha256"].decode() in scored:
            blobs.append(ex["image/encoded"])
            labels.append(int(ex["label"]))
    return blobs, np.array(labels, dtype=np.int64)


def _saved_model_top1(saved_model_dir: str, blobs: list[bytes], batch: int = 64) -> np.ndarray:
    """The SavedModel's serving_default answer (top class index) for each encoded image."""
    import tensorflow as tf

    from graft.components.model import label_order_scores

    fn = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    return np.concatenate(
        [
            label_order_scores(fn(image_bytes=tf.constant(blobs[i : i + batch]))).numpy().argmax(1)
            for i in range(0, len(blobs), batch)
        ]
    )


def measure(content: bytes, pixels: np.ndarray, y: np.ndarray, reference_top1: np.ndarray) -> dict:
    """Test accuracy (95% Wilson interval), agreement with the reference's top-1, and the
    median ms of one image on one thread (after one warm-up call).

    Args:
        content: the .tflite bytes.
        pixels: uint8 test images, [N, size, size, 3].
        y: their label indices.
        reference_top1: the SavedModel's top-1 class per image.

    Returns:
        A dict: test_accuracy, test_accuracy_interval, agreement, ms_per_image.
    """
    from graft.components.stats import wilson

    runner = Runner(content, threads=1)
    runner.scores(pixels[0])
    top1, times = [], []
    for img in pixels:
        scores, ms = runner.scores(img)
        top1.append(int(np.argmax(scores)))
        times.append(ms)
    hits = int((np.array(top1) == y).sum())
    lo, hi = wilson(hits, len(y))
    return {
        "test_accuracy": hits / len(y),
        "test_accuracy_interval": [lo, hi],
        "agreement": float((np.array(top1) == reference_top1).mean()),
        "ms_per_image": statistics.median(times),
    }


def export_variants(
    model,
    version_dir: str,
    out_dir: str,
    *,
    variants: list[str],
    model_name: str,
    image_size: int,
    flip_average: bool,
    examples_dir: str,
    evaluation_dir: str,
    labels: list[str],
    geometry=None,
) -> dict:
    """Convert, measure and write each variant into <version_dir>/assets.extra/ (TF Serving
    ignores it; push copies it with the version) with labels.txt and tflite.json; tflite.json
    also in out_dir. The model card gets a table.

    Args:
        model: the trained Keras model.
        version_dir: the exported SavedModel's folder.
        out_dir: the export step's output folder.
        variants: which of VARIANTS to write.
        model_name: the model's name (in the file names).
        image_size: the model's input side.
        flip_average: average each image's scores with its mirror image's.
        examples_dir: the ingest step's output (calibration and test images).
        evaluation_dir: the evaluate step's output (the reference scores).
        labels: the class names, in label order.
        geometry: how images are shaped to the input size; None: squash.

    Returns:
        What tflite.json holds: per variant, its file, size and measurements.

    Raises:
        ValueError: there are no test images to measure the variants on.
        RepresentativeDataError: int8 without usable calibration images.
    """
    import tensorflow as tf

    from graft.components import data as gdata

    geometry = geometry or gdata.SQUASH
    edge_dir = os.path.join(version_dir, "assets.extra")
    os.makedirs(edge_dir, exist_ok=True)
    blobs, y = _scored_test_images(examples_dir, evaluation_dir)
    if not blobs:
        raise ValueError(f"export.tflite: no test images in {examples_dir} to measure them on")
    pixels = np.stack(
        [
            to_uint8(gdata.decode_and_resize(tf.constant(b), image_size, geometry).numpy())
            for b in blobs
        ]
    )
    saved_top1 = _saved_model_top1(version_dir, blobs)
    representative = (
        representative_images(examples_dir, image_size, geometry=geometry)
        if "int8" in variants
        else None
    )
    rows = []
    for variant in variants:
        content = convert(
            model, variant, image_size, flip_average=flip_average, representative=representative
        )
        name = file_name(model_name, variant)
        Path(edge_dir, name).write_bytes(content)
        rows.append(
            {"variant": variant, "file": name, "bytes": len(content)}
            | measure(content, pixels, y, saved_top1)
        )
    Path(edge_dir, LABELS_FILE).write_text("".join(f"{lab}\n" for lab in labels), "utf-8")
    result = {
        "input": INPUT_NOTE + geometry.describe(image_size),
        "input_size": image_size,
        # data.resize: what predict_files (and an edge app) must do before the model
        **{k: v for k, v in geometry.as_dict(image_size).items() if k != "image_size"},
        "flip_average": flip_average,
        "labels_file": LABELS_FILE,
        "int8_io": "uint8 input (scale 1, zero point 0) and uint8 output (dequantize with the "
        "output tensor's scale and zero point)",
        "float_io": "uint8 input, float32 output",
        "representative_images": 0 if representative is None else int(len(representative)),
        "test_images": len(y),
        "saved_model_test_accuracy": float((saved_top1 == y).mean()),
        "interpreter": "ai-edge-litert, 1 thread, batch 1; ms_per_image is the median",
        "variants": rows,
    }
    for folder in (edge_dir, out_dir):
        with open(os.path.join(folder, RESULTS_FILE), "w") as f:
            json.dump(result, f, indent=2)
    _add_to_model_card(version_dir, result)
    return result


def table_markdown(result: dict) -> str:
    """The variants as a markdown table (model card, README-style)."""
    base = next((r for r in result["variants"] if r["variant"] == "float32"), None)
    lines = [
        "| variant | file | size | test accuracy [95% CI] | top-1 = SavedModel | ms/image |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["variants"]:
        lo, hi = r["test_accuracy_interval"]
        size = f"{r['bytes'] / 1e6:.2f} MB"
        if base and r is not base:
            size += f" ({r['bytes'] / base['bytes']:.2f}x)"
        lines.append(
            f"| {r['variant']} | `{r['file']}` | {size} | {r['test_accuracy']:.4f} "
            f"[{lo:.3f}, {hi:.3f}] | {r['agreement']:.4f} | {r['ms_per_image']:.2f} |"
        )
    return "\n".join(lines)


def _add_to_model_card(version_dir: str, result: dict) -> None:
    md = Path(version_dir, "model_card.md")
    card = Path(version_dir, "model_card.json")
    if card.exists():
        data = json.loads(card.read_text())
        data["tflite"] = result
        card.write_text(json.dumps(data, indent=2))
    if md.exists():
        text = f"""
## Edge models (TFLite, `assets.extra/`)

Measured with the LiteRT interpreter on the {result["test_images"]} test images \
(SavedModel: {result["saved_model_test_accuracy"]:.4f}); one thread, batch 1, median ms.

{table_markdown(result)}

Input: {result["input"]}. float32/float16: float32 scores out; int8: \
{result["int8_io"]}; calibrated on {result["representative_images"]} training images. \
Labels: `{result["labels_file"]}` beside the files, in score order.
"""
        md.write_text(md.read_text() + text)


# ---------------------------------------------------------------- graft predict --tflite


def read_labels_beside(tflite_path: str) -> list[str]:
    path = Path(tflite_path).with_name(LABELS_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"no {LABELS_FILE} beside {tflite_path}: Graft writes it next to the .tflite files "
            "(assets.extra/ of a pushed version); copy it along with the model"
        )
    return [line.rstrip("\n") for line in path.read_text("utf-8").splitlines() if line.strip()]


def geometry_beside(tflite_path: str):
    """The input geometry the model was trained with, from tflite.json beside it. A tflite.json
    without `resize` is from before data.resize: squash, the only geometry then. Without the
    file: squash, the default, said in a warning (the .tflite itself cannot carry it).

    Args:
        tflite_path: the .tflite file.

    Returns:
        A data.Geometry.
    """
    from graft.components import data as gdata
    from graft.core.log import log

    path = Path(tflite_path).with_name(RESULTS_FILE)
    if not path.is_file():
        log(
            f"predict: no {RESULTS_FILE} beside {tflite_path}, which says how the model's input "
            "was shaped (data.resize); resizing as squash, the default. Copy it along with the "
            "model if it was trained with crop or pad",
            level="warn",
        )
        return gdata.SQUASH
    info = json.loads(path.read_text("utf-8"))
    return gdata.Geometry(info.get("resize", "squash"), info.get("crop_fraction", 0.875))


def predict_files(
    tflite_path: str, images: list[str], top_k: int = 3
) -> list[tuple[str, list[str], list[float], str | None]]:
    """(image, top-k labels, scores, error) per image: decoded and resized as training did,
    then the TFLite model; an unreadable or undecodable image gets an error, alone.

    Args:
        tflite_path: the .tflite file, labels.txt and tflite.json beside it.
        images: the image files to classify.
        top_k: labels per image.

    Returns:
        One (image, labels, scores, error) tuple per image, error None when it ran.

    Raises:
        FileNotFoundError: there is no model at tflite_path.
        ValueError: the model's scores do not match labels.txt beside it.
    """
    import tensorflow as tf

    from graft.components import data as gdata

    if not Path(tflite_path).is_file():
        raise FileNotFoundError(f"TFLite model not found: {tflite_path}")
    labels = read_labels_beside(tflite_path)
    geometry = geometry_beside(tflite_path)
    runner = Runner(path=tflite_path, threads=os.cpu_count() or 1)
    out = []
    for name in images:
        try:
            blob = Path(name).read_bytes()
            pixels = to_uint8(
                gdata.decode_and_resize(tf.constant(blob), runner.size, geometry).numpy()
            )
        except OSError as e:
            out.append((name, [], [], f"{type(e).__name__}: {e.strerror or e}"))
            continue
        except tf.errors.InvalidArgumentError:
            out.append((name, [], [], "not a decodable image"))
            continue
        scores, _ = runner.scores(pixels)
        if len(scores) != len(labels):
            raise ValueError(
                f"{tflite_path} gives {len(scores)} scores but {LABELS_FILE} has {len(labels)} "
                "labels: not this model's labels"
            )
        order = np.argsort(-scores, kind="stable")[:top_k]
        out.append((name, [labels[i] for i in order], [float(scores[i]) for i in order], None))
    return out
