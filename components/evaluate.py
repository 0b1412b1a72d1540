"""Evaluate head-only, fine-tuned and the served baseline on the same test split; bless or not.

The baseline is the newest version at the push destination, loaded as the SavedModel TF
Serving would serve and fed the same raw test bytes, so the comparison is like for like; its
scores on images it has scored before are read back (served_scores.py), so a re-run runs it
over new test images only. The head-only model is scored on the base's stored features.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from graft.components import data as gdata
from graft.components import report
from graft.components.fitting import RESULT, load_model, read_history
from graft.components.hashing import file_sha256
from graft.components.manifest import data_fingerprint, excluded_from_eval, read_manifest
from graft.components.model import base_of, predict_scores
from graft.components.registry import baseline_version, version_path
from graft.components.served_scores import SEED_FILE, write_seed
from graft.components.stats import paired_difference, paired_macro_f1
from graft.core.config import EvaluateConfig
from graft.core.log import log

__all__ = [
    "EvaluationResult",
    "evaluate",
    "bless",
    "metrics_from_probs",
    "head_scores_from_features",
]


@dataclass
class EvaluationResult:
    """What evaluation.json holds; the metrics dicts come from metrics_from_probs."""

    labels: list[str]
    test_examples: int
    excluded_from_eval: int
    head_only: dict
    candidate: dict
    baseline: dict | None
    baseline_version: int | None
    blessed: bool
    reasons: list[str]
    plots: dict[str, str]
    report: str
    # per model: n, and accuracy / top-k as [value, 95% low, 95% high] (Wilson)
    intervals: dict = field(default_factory=dict)
    # "a - b": paired accuracy difference on the same test images, with a bootstrap interval
    comparisons: dict = field(default_factory=dict)
    # True when the candidate is the fine-tuned model; False when fine-tuning did not run (off,
    # or advise planned none) or ran and the guard kept the head: the head is the candidate
    fine_tuned: bool = True
    # fine-tuning ran and the guard kept the head: the fine-tuned model was not scored on test
    fine_tune_rejected: bool = False
    # the model the fine_tune step handed on, in words (its result.json), and the refit's
    # images and epochs when a head refit on train + val is the candidate
    shipped: str | None = None
    refit: dict | None = None
    # per model, how its test scores were computed: the whole model, the head on stored
    # features, or the served model's stored scores (seeded, stored, computed)
    scoring: dict = field(default_factory=dict)
    # False under evaluate.compare_baseline: false (nothing served was looked at)
    baseline_compared: bool = True


def metrics_from_probs(
    probs: np.ndarray, y: np.ndarray, labels: list[str], top_k: int, bins: int
) -> dict:
    """Accuracy, top-k, per-class P/R/F1, macro-F1, balanced accuracy, log loss, confusion
    matrix, ECE.

    One function for every model scored, so the head-only, fine-tuned and served models'
    numbers are comparable.

    Args:
        probs: class scores, one row per image.
        y: the true class indices.
        labels: the class names, in score order.
        top_k: the k of the top-k accuracy (lowered to the class count).
        bins: confidence bins of the expected calibration error.

    Returns:
        {"n", "accuracy", "top_<k>_accuracy", "macro_f1", "balanced_accuracy" (the mean
        recall of the classes present), "log_loss", "ece", "per_class", "confusion_matrix"}.
    """
    n, c = probs.shape
    pred = probs.argmax(1)
    cm, per_class, f1s = _per_class(y, pred, labels)
    k = min(top_k, c)
    topk = np.argsort(-probs, 1)[:, :k]
    conf = probs.max(1)
    correct = (pred == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return {
        "n": int(n),
        "accuracy": float(correct.mean()) if n else 0.0,
        f"top_{k}_accuracy": float(np.mean([y[i] in topk[i] for i in range(n)])) if n else 0.0,
        "macro_f1": float(np.mean(f1s)),
        "balanced_accuracy": _balanced_accuracy(per_class),
        "log_loss": float(-np.mean(np.log(np.clip(probs[np.arange(n), y], 1e-12, 1.0))))
        if n
        else 0.0,
        "ece": float(ece),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def _balanced_accuracy(per_class: dict) -> float:
    """The mean recall of the classes present in the test split (sklearn's
    balanced_accuracy_score, from the per-class numbers already computed: sklearn's own warns
    when a class is predicted but absent)."""
    recalls = [m["recall"] for m in per_class.values() if m["support"] > 0]
    return float(np.mean(recalls)) if recalls else 0.0


def _per_class(y: np.ndarray, pred: np.ndarray, labels: list[str]) -> tuple:
    """Confusion matrix (rows: true class), per-class precision/recall/F1/support, and the F1s
    in label order; a class never predicted (or absent) scores 0, not NaN."""
    c = len(labels)
    if len(y):
        classes = list(range(c))
        cm = confusion_matrix(y, pred, labels=classes)
        prec, rec, f1, support = precision_recall_fscore_support(
            y, pred, labels=classes, zero_division=0.0
        )
    else:  # sklearn refuses an empty sample; an empty test split scores 0 everywhere
        cm = np.zeros((c, c), int)
        prec = rec = f1 = support = np.zeros(c)
    per_class = {
        lab: {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, lab in enumerate(labels)
    }
    return cm, per_class, [float(x) for x in f1]


def _test_data(examples_dir: str, exclude: set[str]) -> tuple[list[bytes], np.ndarray, list[str]]:
    """The test split in sha256 order (not the shards', which differs between two ingests of
    one folder): encoded bytes, labels, and each image's sha256."""
    records = tf.data.TFRecordDataset(
        gdata.split_files(examples_dir, "test"), compression_type="GZIP"
    ).map(lambda r: tf.io.parse_single_example(r, gdata.FEATURES))
    raw = [
        (ex["image/encoded"], int(ex["label"]), ex["image/sha256"].decode())
        for ex in records.as_numpy_iterator()
    ]
    raw = sorted((r for r in raw if r[2] not in exclude), key=lambda r: r[2])
    if not raw:
        raise ValueError(f"the test split in {examples_dir} is empty")
    return [b for b, _, _ in raw], np.array([v for _, v, _ in raw]), [h for _, _, h in raw]


def _pixels(blobs: list[bytes], size: int, geometry: gdata.Geometry) -> np.ndarray:
    """0..255 pixels of encoded images, shaped as the exported model shapes them."""
    return np.stack(
        [gdata.decode_and_resize(tf.constant(b), size, geometry).numpy() for b in blobs]
    )


def head_scores_from_features(
    model: keras.Model,
    examples_dir: str,
    shas: list[str],
    *,
    exclude: set[str],
    feature_store: dict | None,
    image_size: int,
    geometry: gdata.Geometry,
) -> tuple[np.ndarray, dict] | None:
    """The head-only model's test scores from the base's stored pooled features (the base runs
    on images missing from the store only, and stores them): what the whole model computes,
    without a second pass over the base. None where that would not be the whole model's
    output: no store recorded by the head stage, or a base not computing in float32.

    Args:
        model: the head-only model (base and head).
        examples_dir: the ingest step's output.
        shas: the test images' sha256, in the order the scores are wanted.
        exclude: sha256 of images left out of evaluation.
        feature_store: the head stage's {"root", "fingerprint"}, or None.
        image_size: the model's input size in pixels.
        geometry: how images are fitted to the input size.

    Returns:
        (scores in `shas` order, what was read from the store and computed), or None.
    """
    from graft.components import features as gfeat
    from graft.components.model import base_of, feature_layers, head_of, pooled_head

    if not (feature_store and feature_store.get("root") and feature_store.get("fingerprint")):
        return None
    base = base_of(model)
    if base.dtype_policy.name != "float32" or head_of(model).layers[0].name != "pool":
        return None
    layers = feature_layers(base)
    store = gfeat.FeatureStore(
        feature_store["root"], feature_store["fingerprint"], image_size, geometry
    )
    got = gfeat.split_features(
        examples_dir,
        "test",
        layers,
        extractor=gfeat.pooled_extractor(base, model.get_layer("preprocess"), layers),
        store=store,
        exclude=exclude,
        stage="evaluate",
        geometry=geometry,
    )
    by_sha = dict(zip(got.sha256, got.joined(layers), strict=True))
    if any(s not in by_sha for s in shas):  # the manifest and the records disagree: not ours
        return None
    x = np.stack([by_sha[s] for s in shas])
    head = pooled_head(head_of(model), x.shape[1])
    probs = np.concatenate(
        [
            keras.ops.convert_to_numpy(head(x[i : i + 1024], training=False))
            for i in range(0, len(x), 1024)
        ]
    ).astype(np.float32)
    how = {"from": "stored features", "computed": got.computed, "reused": got.reused}
    return probs, how


PREDICTIONS = "test_predictions.csv"


def _write_predictions(path, shas, y, labels, probs_of: dict[str, np.ndarray]) -> None:
    """One row per test image: its sha256, label and each model's top class and score, so two
    runs on the same data can be compared image by image (paired), and errors audited."""
    models = list(probs_of)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sha256", "label", *(f"{m}{c}" for m in models for c in ("", "_score"))])
        for i, sha in enumerate(shas):
            row = [sha, labels[y[i]]]
            for m in models:
                k = int(np.argmax(probs_of[m][i]))
                row += [labels[k], f"{float(probs_of[m][i][k]):.4f}"]
            w.writerow(row)


def _feature_source(model: keras.Model, feature_store: dict | None, image_size, geometry):
    """The head stage's base and feature store, where a served head can read features."""
    from graft.components import features as gfeat
    from graft.components.served_scores import FeatureSource

    if not (feature_store and feature_store.get("root") and feature_store.get("fingerprint")):
        return None
    store = gfeat.FeatureStore(
        feature_store["root"], feature_store["fingerprint"], image_size, geometry
    )
    return FeatureSource(base_of(model), store, image_size, geometry)


def _baseline_probs(
    destination: str,
    model_name: str,
    version: int,
    blobs: list[bytes],
    shas: list[str],
    labels: list[str],
    store_root: str | None,
    source=None,
) -> tuple[np.ndarray | None, str | None, dict]:
    """Scores of the served model in our label order (through ServedScores: only images it
    has no stored scores for go through its serving signature); None + reason if not
    comparable."""
    from graft.components.served_scores import ServedScores

    path = version_path(destination, model_name, version)
    base_labels = gdata.read_labels(os.path.join(path, "assets"))
    if base_labels is None:
        return None, f"baseline {path} has no assets/labels.json or labels.txt", {}
    if base_labels != labels:
        return (
            None,
            f"label sets differ (baseline {base_labels} vs candidate {labels}): "
            "no automatic blessing",
            {},
        )
    served = ServedScores.of(destination, model_name, version, labels, store_root, source)
    probs = served.scores(shas, blobs)
    return probs, None, {"from": "served model", **served.counts()}


def _plots(
    out_dir: str, results: dict, labels: list[str], histories: dict[str, list]
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    cm = np.array(results["candidate"]["confusion_matrix"])
    # at least the title's width: with 2 classes a cell-sized figure cut it off
    side = 1 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(max(3.4, side + 0.2), max(3.0, side)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                cm[i, j],
                ha="center",
                va="center",
                color="black" if cm[i, j] < cm.max() / 2 else "white",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test)")
    fig.tight_layout()
    paths["confusion_matrix"] = os.path.join(out_dir, "confusion_matrix.png")
    fig.savefig(paths["confusion_matrix"], dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    xs = np.arange(len(labels))
    bars = ((-0.2, "head_only"), (0.2, "candidate"))
    if not results["fine_tuned"] and not results.get("refit"):  # the head is the candidate
        bars = ((0.0, "head_only"),)
    for off, key in bars:
        ax.bar(xs + off, [results[key]["per_class"][lab]["f1"] for lab in labels], 0.4, label=key)
    ax.set_xticks(xs, labels, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("per-class F1 (test)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # F1 near 1 hid under it
    fig.tight_layout()
    paths["per_class_f1"] = os.path.join(out_dir, "per_class_f1.png")
    fig.savefig(paths["per_class_f1"], dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    offset = 0
    for stage, hist in histories.items():
        if not hist:
            continue
        ep = [offset + h["epoch"] for h in hist]
        for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
            # markers: a one-epoch stage is a point, which a bare line would not draw
            ax.plot(ep, [h.get(key, np.nan) for h in hist], ".-", label=f"{stage} {key}")
            ax.plot(
                ep, [h.get(f"val_{key}", np.nan) for h in hist], ".--", label=f"{stage} val_{key}"
            )
        offset = ep[-1]
    ran = " then ".join(stage for stage, hist in histories.items() if hist) or "no stage"
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_title(key)
        ax.set_xlabel(f"epoch ({ran})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths["training_curves"] = os.path.join(out_dir, "training_curves.png")
    fig.savefig(paths["training_curves"], dpi=90)
    plt.close(fig)
    return paths


NEAR_DUPLICATES_SHOWN = 50


def _thumb_of_file(path: str) -> str | None:
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return report.thumbnail(f.read(), side=64)
    except Exception:  # noqa: BLE001 - a thumbnail is decoration: the row shows the path
        return None


def _data_checks_html(validation_dir: str | None, root: str = "") -> str:
    """Validate's warnings and the near-duplicate pairs it found, so the report shows them."""
    path = os.path.join(validation_dir or "", "validation.json")
    if not validation_dir or not os.path.exists(path):
        return ""
    with open(path) as f:
        checks = json.load(f)
    warnings = [w.replace(root.rstrip("/") + "/", "") if root else w for w in checks["warnings"]]
    pairs = checks.get("near_duplicates", [])[:NEAR_DUPLICATES_SHOWN]
    thumbs = {}
    if pairs:
        files = {p[k] for p in pairs for k in ("eval_path", "train_path")}
        thumbs = {f: _thumb_of_file(f) for f in files}
        short = {f: os.path.relpath(f, root) if root and f.startswith(root) else f for f in files}
        pairs = [{**p, **{k: short[p[k]] for k in ("eval_path", "train_path")}} for p in pairs]
        thumbs = {short[f]: t for f, t in thumbs.items()}
    return report.data_checks_html(warnings, pairs, thumbs)


LABEL_ISSUES_SHOWN = 20


def _label_issues_html(advice_dir: str | None, root: str) -> str:
    """advise's label issues with thumbnails of the source files (the first few)."""
    from graft.components import label_issues

    doc = label_issues.read(advice_dir)
    if doc is None:
        return report.label_issues_html(None, {}, LABEL_ISSUES_SHOWN)
    first = doc["issues"][:LABEL_ISSUES_SHOWN]
    thumbs = {it["path"]: _thumb_of_file(it["path"]) for it in first}
    for it in first:
        it["shown_path"] = label_issues.short_path(it["path"], root or doc.get("data_root", ""))
    return report.label_issues_html(doc, thumbs, LABEL_ISSUES_SHOWN)


def _drift(drift_dir: str | None) -> dict | None:
    """drift.json of the run's drift step; None when there is none (the step did not run)."""
    path = os.path.join(drift_dir, "drift.json") if drift_dir else None
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _comparisons(
    probs_of: dict[str, np.ndarray], y: np.ndarray, fine_tuned: bool, refit: bool = False
) -> dict:
    """Fine-tuned (or refit on train + val) vs head-only, when one ran, and the candidate vs
    the served baseline, paired per image: the accuracy difference, and under `macro_f1` the
    macro-F1 difference (each resample recomputes both models' macro-F1)."""
    pred = {k: p.argmax(1) for k, p in probs_of.items()}
    pairs = [("candidate", "head_only", "fine-tuned - head only")] if fine_tuned else []
    if refit and not fine_tuned:
        pairs = [("candidate", "head_only", "refit on train+val - head on train")]
    pairs.append(("candidate", "baseline", "candidate - served baseline"))
    c = next(iter(probs_of.values())).shape[1]
    return {
        name: {
            **paired_difference(pred[a] == y, pred[b] == y),
            "macro_f1": paired_macro_f1(y, pred[a], pred[b], c),
        }
        for a, b, name in pairs
        if a in pred and b in pred
    }


def _stage_extra(model_dir: str) -> dict | None:
    """A training stage's StageResult.extra (result.json): the fine_tune step's guard decision,
    the head stage's feature store."""
    path = os.path.join(model_dir, RESULT)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("extra") or None


def _data_root(examples_dir: str) -> str:
    """The local data folder ingest read ('' if remote or unknown): paths are shown under it."""
    try:
        with open(os.path.join(examples_dir, "stats.json")) as f:
            root = json.load(f).get("source") or ""
    except (OSError, ValueError):
        return ""
    return root if root and os.path.isdir(root) else ""


def _gallery(
    probs: np.ndarray,
    y: np.ndarray,
    blobs: list[bytes],
    shas: list[str],
    labels: list[str],
    examples_dir: str,
) -> list[dict]:
    """The candidate's most confidently wrong test images, with thumbnails and source paths."""
    try:
        paths = {m["sha256"]: m["path"] for m in read_manifest(examples_dir)}
    except OSError:
        paths = {}
    root = _data_root(examples_dir)
    if root:  # paths relative to the data folder: shorter, and enough
        paths = {k: os.path.relpath(v, root) if v.startswith(root) else v for k, v in paths.items()}
    return [
        {
            "true": labels[y[i]],
            "predicted": labels[pred],
            "score": score,
            "path": paths.get(shas[i]),
            "thumb": report.thumbnail(blobs[i]),
        }
        for i, pred, score in report.confidently_wrong(probs, y)
    ]


def _served_text(how: dict) -> str:
    """How many of the served model's scores were stored, scored on features, run now."""
    return (
        f"{how['seeded'] + how['stored']} image(s) from the served version's stored scores, "
        f"{how['on_features']} by its head on stored base features, {how['computed']} through "
        "its serving signature"
    )


def _scoring_text(how: dict) -> str:
    """How a model's test scores were computed, for the report."""
    if how.get("from") == "stored features":
        return (
            f"the head on the base's pooled features from the feature store ({how['reused']} "
            f"stored, {how['computed']} computed now)"
        )
    if how.get("from") == "served model":
        return _served_text(how)
    if how.get("from") == "the whole model":
        return f"the whole model on {how['computed']} test image(s)"
    return str(how.get("from"))


def _provenance(
    examples_dir: str,
    head_dir: str,
    model_dir: str,
    out_dir: str,
    model,
    model_name: str,
    res: EvaluationResult,
) -> dict:
    """Which data, base and config produced this report: what a reader needs to reproduce it."""
    stats = {}
    if os.path.exists(os.path.join(examples_dir, "stats.json")):
        with open(os.path.join(examples_dir, "stats.json")) as f:
            stats = json.load(f)
    data_fp = stats.get("data_fingerprint")
    if data_fp is None and os.path.exists(os.path.join(examples_dir, "manifest.jsonl")):
        data_fp = data_fingerprint(read_manifest(examples_dir))

    def step_fp(d: str) -> str | None:  # the local runner's content-addressed step dirs
        name = os.path.basename(os.path.normpath(d))
        return name if re.fullmatch(r"[0-9a-f]{16}", name) else None

    base = model.name.removeprefix("graft_")
    try:
        base = f"{base} ({base_of(model).name})"
    except StopIteration:
        pass
    return {
        "model name": model_name,
        "base": base,
        "data fingerprint": data_fp,
        "data source": stats.get("source"),
        "source fingerprint": stats.get("source_fingerprint"),
        "config hash": step_fp(out_dir),
        "config hash covers": "every config section and input upstream of this report "
        "(the evaluate step's fingerprint)"
        if step_fp(out_dir)
        else None,
        "train_head step": step_fp(head_dir),
        "fine_tune step": step_fp(model_dir),
        "labels": ", ".join(res.labels),
        "test images": res.test_examples,
        "excluded from evaluation (validate)": res.excluded_from_eval,
        "served baseline": f"version {res.baseline_version}" if res.baseline_version else "none",
        **{f"{k} scores": _scoring_text(v) for k, v in res.scoring.items()},
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def bless(
    cfg: EvaluateConfig, cand: dict, baseline: dict | None, baseline_note: str | None
) -> tuple[bool, list[str]]:
    """Blessed or not, with every reason: the push step and the report both show them.

    Args:
        cfg: the `evaluate` section (min_accuracy, min_improvement, the comparison rule).
        cand: the candidate's metrics (metrics_from_probs).
        baseline: the served baseline's metrics on the same test images, or None.
        baseline_note: why the baseline could not be scored (which refuses the blessing), or
            None.

    Returns:
        (blessed, the reasons, passed or failed, one line each).
    """
    reasons, ok = [], True
    if cand["accuracy"] < cfg.min_accuracy:
        ok = False
        reasons.append(f"accuracy {cand['accuracy']:.4f} < min_accuracy {cfg.min_accuracy:.4f}")
    else:
        reasons.append(f"accuracy {cand['accuracy']:.4f} >= min_accuracy {cfg.min_accuracy:.4f}")
    if baseline_note:
        ok = False
        reasons.append(baseline_note)
    elif baseline is not None:
        delta = cand["accuracy"] - baseline["accuracy"]
        if cfg.min_improvement > 0 and delta < cfg.min_improvement:
            ok = False
            reasons.append(
                f"improvement {delta:+.4f} over baseline < min_improvement "
                f"{cfg.min_improvement:+.4f}"
            )
        elif delta < -cfg.max_regression:
            ok = False
            reasons.append(
                f"regression {delta:+.4f} vs baseline exceeds max_regression "
                f"{cfg.max_regression:.4f}"
            )
        elif abs(delta) < 1e-12 and not cfg.bless_ties:
            # a tie is most often the served model again (e.g. the guard kept the same head
            # weights): pushing it swaps the server to a copy for nothing
            ok = False
            reasons.append(
                f"tie: {delta:+.4f} vs baseline accuracy {baseline['accuracy']:.4f}; "
                "evaluate.bless_ties is false"
            )
        else:
            reasons.append(
                f"{delta:+.4f} vs baseline accuracy {baseline['accuracy']:.4f}: within thresholds"
            )
    elif not cfg.compare_baseline:
        reasons.append("not compared with the served model (evaluate.compare_baseline: false)")
    else:
        reasons.append("no baseline at the push destination: first model")
    return ok, reasons


def _same_weights(a: keras.Model, b: keras.Model) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(wa, wb, strict=True)
    )


def _advice(advice_dir: str | None) -> dict | None:
    path = os.path.join(advice_dir, "advice.json") if advice_dir else None
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _score_models(
    head_dir, model_dir, examples_dir, shas, y, labels, exclude, pixels, *, cfg, head_store,
    image_size, geometry, flip_average, cand_sha, refit=False,
):  # fmt: skip
    """Scores of the head-only model and the candidate (its model.keras hashes to cand_sha):
    from stored features where the head's are stored (a refit head's too: the same frozen
    base), once where the candidate is the head's weights, else by the whole model."""
    scored: dict[str, dict] = {}
    probs_of: dict[str, np.ndarray] = {}  # per model, for the report's intervals and gallery
    scoring: dict[str, dict] = {}  # per model, how its scores were computed
    loaded: dict[str, keras.Model] = {}
    head_copied = file_sha256(os.path.join(head_dir, "model.keras")) == cand_sha
    for key, d in (("head_only", head_dir), ("candidate", model_dir)):
        if key == "candidate" and head_copied:  # fine_tune passed the head's file through
            model = loaded[key] = loaded["head_only"]
        else:
            model = loaded[key] = load_model(os.path.join(d, "model.keras"))
        if key == "candidate" and (head_copied or _same_weights(model, loaded["head_only"])):
            probs_of[key] = probs_of["head_only"]  # fine-tuning off or not kept: scored once
            scoring[key] = {"from": "the head-only model's scores (the same weights)"}
            scored[key] = scored["head_only"]
            continue
        got = None
        if (key == "head_only" or refit) and not flip_average:  # mirror images: not stored
            got = head_scores_from_features(
                model,
                examples_dir,
                shas,
                exclude=exclude,
                feature_store=head_store,
                image_size=image_size,
                geometry=geometry,
            )
        if got is not None:
            probs_of[key], scoring[key] = got
        else:
            probs_of[key] = predict_scores(model, pixels(), flip_average)
            scoring[key] = {"from": "the whole model", "computed": len(y)}
        scored[key] = metrics_from_probs(probs_of[key], y, labels, cfg.top_k, cfg.ece_bins)
    return scored, probs_of, scoring, loaded


def _score_baseline(
    destination, model_name, cand_sha, blobs, shas, y, labels, probs_of, scoring, *, cfg,
    head_store, source,
):  # fmt: skip
    """The served version's metrics on the same test images (None without one), its note, and
    its version; its scores go into probs_of and how they were made into scoring."""
    version = baseline_version(destination, model_name, cand_sha) if cfg.compare_baseline else None
    if version is None:
        return None, None, None
    store_root = (head_store or {}).get("root")
    probs, note, how = _baseline_probs(
        destination, model_name, version, blobs, shas, labels, store_root, source
    )
    if probs is None:
        return None, note, version
    probs_of["baseline"] = probs
    scoring["baseline"] = how
    baseline = metrics_from_probs(probs, y, labels, cfg.top_k, cfg.ece_bins)
    baseline.update({"version": version, "path": version_path(destination, model_name, version)})
    return baseline, note, version


def evaluate(
    examples_dir: str,
    head_dir: str,
    model_dir: str,
    out_dir: str,
    *,
    cfg: EvaluateConfig,
    destination: str,
    model_name: str,
    image_size: int,
    validation_dir: str | None = None,
    flip_average: bool = False,
    advice_dir: str | None = None,
    drift_dir: str | None = None,
    geometry: gdata.Geometry = gdata.SQUASH,
) -> EvaluationResult:
    """Test metrics of the head-only and fine-tuned models, scored as the export will serve them.

    `destination` is the push destination: its newest other version is the served baseline.

    Args:
        examples_dir: the ingest step's output (the test split).
        head_dir: the train_head stage's output (the head-only model).
        model_dir: the fine_tune stage's output (the candidate model).
        out_dir: where evaluation.json, report.html, plots and scores are written.
        cfg: the `evaluate` section.
        destination: the push destination, whose served version is the baseline.
        model_name: the served model's name.
        image_size: the model's input size in pixels.
        validation_dir: the validate step's output (images left out of evaluation), or None.
        flip_average: average the scores of each image and its mirror, as the export will.
        advice_dir: the advise step's output, shown in the report, or None.
        drift_dir: the drift step's output, shown in the report, or None.
        geometry: how images are fitted to the input size, as in training.

    Returns:
        The EvaluationResult, also written to `out_dir`/evaluation.json.

    Raises:
        ValueError: the test split is empty (after the exclusions).
    """
    os.makedirs(out_dir, exist_ok=True)
    labels = gdata.read_labels(examples_dir)
    exclude = excluded_from_eval(validation_dir)
    blobs, y, shas = _test_data(examples_dir, exclude)
    pixels = _lazy_pixels(blobs, image_size, geometry)
    cand_sha = file_sha256(os.path.join(model_dir, "model.keras"))
    head_store = (_stage_extra(head_dir) or {}).get("feature_store")
    guard = _stage_extra(model_dir)
    refit = (guard or {}).get("refit")
    scored, probs_of, scoring, loaded = _score_models(
        head_dir, model_dir, examples_dir, shas, y, labels, exclude, pixels,
        cfg=cfg, head_store=head_store, image_size=image_size, geometry=geometry,
        flip_average=flip_average, cand_sha=cand_sha, refit=bool(refit),
    )  # fmt: skip
    model = loaded["candidate"]
    baseline, note, version = _score_baseline(
        destination, model_name, cand_sha, blobs, shas, y, labels, probs_of, scoring,
        cfg=cfg, head_store=head_store,
        source=_feature_source(loaded["head_only"], head_store, image_size, geometry),
    )  # fmt: skip
    blessed, reasons = bless(cfg, scored["candidate"], baseline, note)
    # the candidate is the fine-tuned model only when the guard kept it; when it kept the head,
    # the candidate is the head's weights and a "fine-tuned" row would show the head's scores
    fine_tuned = (guard or {}).get("kept", "fine_tuned") == "fine_tuned"
    rejected = (guard or {}).get("guard") == "kept_head"
    res = EvaluationResult(
        labels=labels,
        test_examples=len(y),
        excluded_from_eval=len(exclude),
        head_only=scored["head_only"],
        candidate=scored["candidate"],
        baseline=baseline,
        baseline_version=version,
        blessed=blessed,
        reasons=reasons,
        plots={},
        report="",
        fine_tuned=fine_tuned,
        fine_tune_rejected=rejected,
        scoring=scoring,
        shipped=(guard or {}).get("shipped"),
        refit=refit,
        baseline_compared=cfg.compare_baseline,
    )
    histories = {"head": read_history(head_dir), "fine_tune": read_history(model_dir)}
    plots = _plots(out_dir, asdict(res), labels, histories)
    res.plots = {k: os.path.basename(v) for k, v in plots.items()}
    checks = _data_checks_html(validation_dir, _data_root(examples_dir))
    res.intervals = {k: report.intervals(p, y, cfg.top_k) for k, p in probs_of.items()}
    res.comparisons = _comparisons(probs_of, y, fine_tuned, bool(refit))
    provenance = _provenance(examples_dir, head_dir, model_dir, out_dir, model, model_name, res)
    sections = {  # the report's sections beyond the result itself
        "guard": guard,
        "gallery": _gallery(probs_of["candidate"], y, blobs, shas, labels, examples_dir),
        "provenance": provenance,
        "checks_html": checks,
        "advice": _advice(advice_dir),
        "drift": _drift(drift_dir),
        "label_issues": _label_issues_html(advice_dir, _data_root(examples_dir)),
    }
    res.report = _write_html(out_dir, res, plots, cfg.top_k, sections)
    _write_scores(out_dir, res, shas, y, labels, probs_of)
    _say_result(res, len(y))
    return res


def _write_html(out_dir: str, res: EvaluationResult, plots, top_k: int, sections: dict) -> str:
    """report.html from the result and the report's other sections; its file name."""
    path = report.write_report(
        out_dir,
        asdict(res),
        plots,
        intervals_by_model=res.intervals,
        comparisons=res.comparisons,
        top_k=top_k,
        **sections,
    )
    return os.path.basename(path)


def _lazy_pixels(blobs, image_size: int, geometry: gdata.Geometry):
    """The test pixels, decoded on the first call only: when a whole model needs them."""
    decoded: list[np.ndarray] = []

    def pixels() -> np.ndarray:
        if not decoded:
            decoded.append(_pixels(blobs, image_size, geometry))
        return decoded[0]

    return pixels


def _write_scores(out_dir: str, res: EvaluationResult, shas, y, labels, probs_of) -> None:
    """evaluation.json, each test image's predictions, and the candidate's scores by image."""
    with open(os.path.join(out_dir, "evaluation.json"), "w") as f:
        json.dump(asdict(res), f, indent=2)
    _write_predictions(os.path.join(out_dir, PREDICTIONS), shas, y, labels, probs_of)
    # the candidate's scores by image: export copies them beside the SavedModel, so the next
    # run compares with it without running it over the images scored here
    unique = dict(zip(shas, probs_of["candidate"], strict=True))
    write_seed(
        os.path.join(out_dir, SEED_FILE), list(unique), np.stack(list(unique.values())), labels
    )


def _say_result(res: EvaluationResult, n: int) -> None:
    """One log line: each model's test accuracy with its interval, and the blessing."""

    def acc(key: str) -> str:
        a, lo, hi = res.intervals[key]["accuracy"]
        return f"{a:.3f} [{lo:.3f}, {hi:.3f}]"

    scoring = res.scoring
    b = f"baseline v{res.baseline_version} {acc('baseline')}" if res.baseline else "no baseline"
    if res.baseline:
        b += f" ({_served_text(scoring['baseline'])})"
    head_how = scoring["head_only"]
    if head_how["from"] == "stored features":
        b += (
            f"; head-only scored on stored base features ({head_how['reused']} reused, "
            f"{head_how['computed']} computed)"
        )
    log(
        f"evaluate: test accuracy (95% Wilson interval, n={n}) head-only {acc('head_only')}"
        f", kept model {acc('candidate')}, {b} -> "
        f"{'BLESSED' if res.blessed else 'not blessed'}",
        level="ok" if res.blessed else "warn",
    )
