"""Export: a TF Serving SavedModel with decode -> resize -> preprocess in the graph.

Signatures:
  serving_default(image_bytes: string[None]) -> classes string[None, C], scores float32[None, C],
      probabilities float32[None, C]
  predict_pixels(pixels: float32[None, H, W, 3] in 0..255) -> the same outputs
  preprocess(image_bytes: string[None]) -> pixels float32[None, H, W, 3]: the input
      serving_default builds, shaped by the trained data.resize (squash, crop or pad), so
      no client needs to know the geometry; assets/preprocessing.json and the model card
      say which one it is
`classes` are the labels sorted by score and `scores[i]` is the score of `classes[i]` (what a
client that zips the two expects); `probabilities` are the same scores in label order
(assets/labels.txt). The export fails loudly unless the reloaded SavedModel matches Keras.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

import keras
import numpy as np
import tensorflow as tf

from graft.components import data as gdata
from graft.components import model as gmodel
from graft.components.fitting import load_model
from graft.components.served_scores import SEED_FILE, read_seed, write_seed
from graft.components.templates import markdown_template
from graft.core.config import BaseConfig, ExportConfig, HeadConfig
from graft.core.log import log

__all__ = ["ParityError", "ExportResult", "export", "write_saved_model"]

WARMUP_FILE = "tf_serving_warmup_requests"
PREPROCESSING_FILE = "preprocessing.json"  # in assets/: the input geometry, for humans and tools


class ParityError(RuntimeError):
    """The exported graph does not compute what the trained model computes."""


def _signatures(
    model: keras.Model,
    labels: list[str],
    size: int,
    flip_average: bool = False,
    geometry: gdata.Geometry = gdata.SQUASH,
):
    """The endpoints; the model is traced once (predict_pixels), serving_default calls it on
    what preprocess builds (decode_and_resize with the trained geometry)."""
    label_t = tf.constant(labels)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
    def predict_pixels(pixels):
        probabilities = gmodel.scores(model, pixels, flip_average)
        order = tf.argsort(probabilities, axis=-1, direction="DESCENDING", stable=True)
        return {
            "classes": tf.gather(label_t, order),
            "scores": tf.gather(probabilities, order, batch_dims=1),
            "probabilities": probabilities,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def preprocess(image_bytes):
        pixels = tf.map_fn(
            lambda b: gdata.decode_and_resize(b, size, geometry),
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        return {"pixels": pixels}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        return predict_pixels(preprocess(image_bytes)["pixels"])

    return serving_default, predict_pixels, preprocess


def write_saved_model(
    model: keras.Model,
    labels: list[str],
    path: str,
    *,
    size: int,
    flip_average: bool = False,
    geometry: gdata.Geometry = gdata.SQUASH,
) -> None:
    """The SavedModel's graph and endpoints at `path` (the export adds assets and checks).

    Args:
        model: the trained Keras model.
        labels: the class names, in the model's output order.
        path: the version directory to write.
        size: the model's input size in pixels.
        flip_average: average the scores of the image and its mirror, as evaluate did.
        geometry: how the serving graph fits images to `size`, as in training.
    """
    endpoints = _signatures(model, labels, size, flip_average, geometry)
    archive = keras.export.ExportArchive()  # the endpoints track the variables they read
    names = ("serving_default", "predict_pixels", "preprocess")
    for name, fn in zip(names, endpoints, strict=True):
        archive.add_endpoint(name, fn)
    archive.write_out(path, verbose=False)


def write_warmup(path: str, blobs: list[bytes], model_name: str) -> int:
    """PredictionLog records TF Serving replays on load (--enable_model_warmup)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as w:
        for b in blobs:
            req = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default")
            )
            req.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([b], dtype=tf.string))
            log_ = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=req)
            )
            w.write(log_.SerializeToString())
    return len(blobs)


def _model_card(
    out: str,
    *,
    cfg: ExportConfig,
    base: BaseConfig,
    head: HeadConfig,
    image_size: int,
    geometry: gdata.Geometry,
    settings: dict,
    examples_dir: str,
    evaluation: dict,
    version: int,
    parity: float,
    model_path: str,
) -> None:
    from graft.components import registry

    with tf.io.gfile.GFile(os.path.join(examples_dir, "stats.json")) as f:
        stats = json.load(f)
    cand = evaluation["candidate"]
    # out is <export step dir>/<model>/<version>: the step dir names the config hash
    lineage = registry.build_lineage(
        examples_dir=examples_dir,
        evaluation=evaluation,
        base=base.model_dump(mode="json"),
        settings=settings,
        step_dir=os.path.dirname(os.path.dirname(os.path.normpath(out))),
        trained_model=model_path,
    )
    card = {
        "model_name": cfg.model_name,
        "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base": base.model_dump(mode="json"),
        "head": head.model_dump(mode="json"),
        "image_size": image_size,
        "input": geometry.as_dict(image_size),  # data.resize: how serving_default shapes images
        "labels": evaluation["labels"],
        "data": {
            "source": stats["source"],
            "counts": stats["counts"],
            "quarantined": stats["quarantined"],
        },
        "metrics": {
            k: cand[k]
            for k in ("accuracy", "macro_f1", "balanced_accuracy", "log_loss", "ece")
            if k in cand  # balanced_accuracy: evaluations before it was measured lack it
        },
        "head_only_accuracy": evaluation["head_only"]["accuracy"],
        "blessed": evaluation["blessed"],
        "blessing_reasons": evaluation["reasons"],
        "parity_max_abs_diff": parity,
        "training": lineage["training"],  # which model shipped: a refit on train + val or not
        "lineage": lineage,  # run, config hash, code, data snapshot, base, metrics, baseline
        "config": settings,  # the config this step read (its cache key), nothing more
    }
    with open(os.path.join(out, "model_card.json"), "w") as f:
        json.dump(card, f, indent=2)
    md = markdown_template("model_card.md.j2").render(
        card=card,
        version=version,
        base=base,
        image_size=image_size,
        geometry=geometry.describe(image_size),
        stats=stats,
        split_sizes="/".join(
            str(sum(stats["counts"][s].values())) for s in ("train", "val", "test")
        ),
        cand=cand,
        parity=parity,
        lineage=lineage,
        code_version=registry.code_version_text(lineage["code_version"]),
        base_sha=lineage["base"]["weights_sha256"],
        accuracy=_accuracy_text(lineage["metrics"]["accuracy"]),
        baseline=_baseline_text(lineage["baseline"]),
        flip_average=cfg.flip_average,
    )
    with open(os.path.join(out, "model_card.md"), "w") as f:
        f.write(md)


def _accuracy_text(acc: list[float]) -> str:
    """Test accuracy, with its 95% interval when the lineage has one."""
    return f"{acc[0]:.4f}" + (f" (95% CI {acc[1]:.4f}-{acc[2]:.4f})" if len(acc) == 3 else "")


def _baseline_text(baseline: dict | None) -> str:
    """The served version this model was compared with, for the card."""
    if baseline is None:
        return "none (first model at the destination)"
    if baseline.get("off"):
        return f"not compared ({baseline['off']})"
    accuracy = baseline.get("accuracy")
    return f"version {baseline['version']}" + (f", accuracy {accuracy[0]:.4f}" if accuracy else "")


def _copy_seed(evaluation_dir, final, labels, shas, got, tolerance, weights) -> float | None:
    """Evaluate's scores of this model on its test split, beside the SavedModel (with its
    weights_sha256, `weights`), when they match what the SavedModel returned for the parity
    images: the next run's evaluation and drift read them instead of scoring those images
    again. Their max abs diff on the parity images, or None."""
    seed = read_seed(os.path.join(evaluation_dir, SEED_FILE), labels)
    rows = [(seed[s], g) for s, g in zip(shas, got, strict=True) if s in seed]
    if not rows:
        return None
    diff = float(max(np.max(np.abs(a - b)) for a, b in rows))
    if diff <= tolerance:
        probs = np.stack(list(seed.values()))
        write_seed(os.path.join(final, SEED_FILE), list(seed), probs, labels, weights or "")
    else:
        log(
            f"export: evaluate's test scores differ from the SavedModel's by {diff:.1e} > "
            f"{tolerance:.1e}: not kept beside it (the next evaluation scores it anew)",
            level="warn",
        )
    return diff


@dataclass
class ExportResult:
    """The exported version: where it is, what it holds and how closely it matches the
    trained model; written as export.json."""

    path: str
    version: int
    model_sha256: str
    model_name: str
    labels: list[str]
    parity_max_abs_diff: float
    warmup_requests: int
    blessed: bool
    # evaluate's stored test scores vs the SavedModel on the parity images; None: none stored
    test_scores_max_abs_diff: float | None = None
    # hashing.weights_sha256 of the version, read here so that push (which compares it with
    # the versions served) needs no TensorFlow; None: no readable checkpoint
    weights_sha256: str | None = None


def export(
    model_dir: str,
    examples_dir: str,
    evaluation_dir: str,
    out_dir: str,
    *,
    cfg: ExportConfig,
    image_size: int,
    base: BaseConfig,
    head: HeadConfig,
    settings: dict | None = None,
    version: int | None = None,
    geometry: gdata.Geometry = gdata.SQUASH,
) -> ExportResult:
    """Write <out_dir>/<model_name>/<version>/ and check it against the Keras model.

    `settings` (the config values the caller keyed this export on) go into the model card.

    Args:
        model_dir: the training step's output (model.keras).
        examples_dir: the ingest step's output (labels; test images for the parity check).
        evaluation_dir: the evaluate step's output (evaluation.json, the stored test scores).
        out_dir: the export root; export.json is written there.
        cfg: the `export` section (model name, parity tolerance, warmup, tflite).
        image_size: the model's input size in pixels.
        base: the `base` section, for the model card.
        head: the `head` section, for the model card.
        settings: the config values this export was keyed on, for the model card.
        version: the version number; None uses the current Unix time.
        geometry: how images are fitted to the input size, as in training.

    Returns:
        The ExportResult, also written to `out_dir`/export.json.

    Raises:
        ParityError: no test images, or the SavedModel's scores differ from the Keras model's
            by more than `cfg.parity_tolerance` (the version directory is then removed).
    """
    model_path = os.path.join(model_dir, "model.keras")
    model = load_model(model_path)
    labels = gdata.read_labels(examples_dir)
    with open(os.path.join(evaluation_dir, "evaluation.json")) as f:
        evaluation = json.load(f)
    version = version or int(time.time())
    final = os.path.join(out_dir, cfg.model_name, str(version))
    _drop_earlier_attempts(os.path.dirname(final))
    _write_version(model, labels, final, examples_dir, cfg, image_size, geometry)
    blobs, shas, got, parity = _check_parity(model, final, examples_dir, cfg, image_size, geometry)
    n_warm = write_warmup(
        os.path.join(final, "assets.extra", WARMUP_FILE),
        blobs[: cfg.warmup_requests],
        cfg.model_name,
    )
    _model_card(
        final,
        cfg=cfg,
        base=base,
        head=head,
        image_size=image_size,
        geometry=geometry,
        settings=settings or {},
        examples_dir=examples_dir,
        evaluation=evaluation,
        version=version,
        parity=parity,
        model_path=model_path,
    )
    from graft.components.hashing import file_sha256, weights_sha256

    # after the model card: the weights checksum covers its serving settings
    weights = weights_sha256(final)
    seed_diff = _copy_seed(evaluation_dir, final, labels, shas, got, cfg.parity_tolerance, weights)
    if cfg.tflite:  # edge models into assets.extra/, measured; tflite.json; model card table
        _export_tflite(
            model, final, out_dir, cfg, image_size, geometry, examples_dir, evaluation_dir, labels
        )
    result = ExportResult(
        path=final,
        version=version,
        model_sha256=file_sha256(model_path),
        model_name=cfg.model_name,
        labels=labels,
        parity_max_abs_diff=parity,
        warmup_requests=n_warm,
        blessed=evaluation["blessed"],
        test_scores_max_abs_diff=seed_diff,
        weights_sha256=weights,
    )
    with open(os.path.join(out_dir, "export.json"), "w") as f:
        json.dump(asdict(result), f, indent=2)
    log(
        f"export: SavedModel v{version} at {final} (parity max abs diff {parity:.1e}, "
        f"{n_warm} warmup requests)",
        level="ok",
    )
    return result


def _write_version(model, labels, final, examples_dir, cfg: ExportConfig, image_size, geometry):
    """The SavedModel (anew: an old dir of this version goes), its labels and preprocessing."""
    if os.path.exists(final):
        shutil.rmtree(final)
    write_saved_model(
        model, labels, final, size=image_size, flip_average=cfg.flip_average, geometry=geometry
    )
    os.makedirs(os.path.join(final, "assets"), exist_ok=True)
    for name in ("labels.json", "labels.txt"):
        shutil.copy(os.path.join(examples_dir, name), os.path.join(final, "assets", name))
    with open(os.path.join(final, "assets", PREPROCESSING_FILE), "w") as f:
        json.dump(geometry.as_dict(image_size), f, indent=2)


def _drop_earlier_attempts(model_folder: str) -> None:
    """Version folders an earlier, killed attempt of this export left (each attempt takes a
    new timestamp): the step's output holds one version."""
    if not os.path.isdir(model_folder):
        return
    for name in os.listdir(model_folder):
        if name.isdigit():
            log(f"export: removing {name}, left by an earlier attempt that did not finish")
            shutil.rmtree(os.path.join(model_folder, name))


def _check_parity(model, final, examples_dir, cfg: ExportConfig, image_size, geometry):
    """The SavedModel's scores vs the Keras model's on a few test images; over the tolerance,
    the version dir is removed and ParityError raised. Returns the images' bytes, sha256s,
    the SavedModel's scores and the max abs diff."""
    # a handful of test images: parity is about the graph (decode, resize, scores), not the
    # data; the 16 whose sha256 sort first, the same from any ingest of the folder
    test = gdata.first_images_by_sha256(examples_dir, "test", 16)
    shas = list(test)
    blobs = [test[h] for h in shas]
    if not blobs:
        raise ParityError("no test images to check the export against")
    reloaded = tf.saved_model.load(final).signatures["serving_default"]
    got = reloaded(image_bytes=tf.constant(blobs))["probabilities"].numpy()
    pixels = np.stack(
        [gdata.decode_and_resize(tf.constant(b), image_size, geometry).numpy() for b in blobs]
    )
    want = gmodel.scores(model, tf.constant(pixels), cfg.flip_average).numpy()  # eager: no trace
    parity = float(np.max(np.abs(got - want)))
    if not parity <= cfg.parity_tolerance:
        shutil.rmtree(final)
        raise ParityError(
            f"export parity check failed: SavedModel vs Keras max abs diff {parity:.3e} > "
            f"{cfg.parity_tolerance:.1e}; nothing exported"
        )
    return blobs, shas, got, parity


def _export_tflite(
    model,
    final,
    out_dir,
    cfg: ExportConfig,
    image_size,
    geometry,
    examples_dir,
    evaluation_dir,
    labels,
) -> None:
    """export.tflite: the edge models into the version's assets.extra/, each measured."""
    from graft.components.tflite import export_variants

    export_variants(
        model,
        final,
        out_dir,
        variants=cfg.tflite,
        model_name=cfg.model_name,
        image_size=image_size,
        geometry=geometry,
        flip_average=cfg.flip_average,
        examples_dir=examples_dir,
        evaluation_dir=evaluation_dir,
        labels=labels,
    )
