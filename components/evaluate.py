"""Evaluate head-only, fine-tuned and the served baseline on the same test split; bless or not.

The baseline is the newest version at the push destination, loaded as the SavedModel TF
Serving would serve and fed the same raw test bytes, so the comparison is like for like.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from graft.components import data as gdata
from graft.components.model import predict_scores
from graft.components.push import baseline_version, file_sha256, version_path
from graft.components.train import load_model, read_history
from graft.components.validate import excluded_from_eval
from graft.core.config import EvaluateConfig
from graft.core.log import log


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


def metrics_from_probs(
    probs: np.ndarray, y: np.ndarray, labels: list[str], top_k: int, bins: int
) -> dict:
    """Accuracy, top-k, per-class P/R/F1, macro-F1, log loss, confusion matrix, ECE."""
    n, c = probs.shape
    pred = probs.argmax(1)
    cm = np.zeros((c, c), dtype=int)
    for t, p in zip(y, pred, strict=True):
        cm[t, p] += 1
    per_class = {}
    f1s = []
    for i, lab in enumerate(labels):
        tp = cm[i, i]
        prec = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        rec = tp / cm[i].sum() if cm[i].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[lab] = {
            "precision": float(prec),
            "recall": float(rec),
            "f1": float(f1),
            "support": int(cm[i].sum()),
        }
        f1s.append(f1)
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
        "log_loss": float(-np.mean(np.log(np.clip(probs[np.arange(n), y], 1e-12, 1.0))))
        if n
        else 0.0,
        "ece": float(ece),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def _test_data(
    examples_dir: str, size: int, exclude: set[str]
) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    raw = list(gdata.raw_dataset(examples_dir, "test", exclude).as_numpy_iterator())
    if not raw:
        raise ValueError(f"the test split in {examples_dir} is empty")
    blobs = [b for b, _ in raw]
    y = np.array([int(v) for _, v in raw])
    pixels = np.stack([gdata.decode_and_resize(tf.constant(b), size).numpy() for b in blobs])
    return blobs, y, pixels


def _baseline_probs(
    path: str, blobs: list[bytes], labels: list[str]
) -> tuple[np.ndarray | None, str | None]:
    """Scores of the served model, reordered to our label order; None + reason if not comparable."""
    label_file = os.path.join(path, "assets", "labels.txt")
    if not tf.io.gfile.exists(label_file):
        return None, f"baseline {path} has no assets/labels.txt"
    with tf.io.gfile.GFile(label_file) as f:
        base_labels = [line.strip() for line in f if line.strip()]
    if base_labels != labels:
        return None, (
            f"label sets differ (baseline {base_labels} vs candidate {labels}): "
            "no automatic blessing"
        )
    fn = tf.saved_model.load(path).signatures["serving_default"]
    out = []
    for i in range(0, len(blobs), 64):
        out.append(fn(image_bytes=tf.constant(blobs[i : i + 64]))["scores"].numpy())
    return np.concatenate(out), None


def _plots(
    out_dir: str, results: dict, labels: list[str], histories: dict[str, list]
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    cm = np.array(results["candidate"]["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(labels), 1 + 0.6 * len(labels)))
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
    for off, key in ((-0.2, "head_only"), (0.2, "candidate")):
        ax.bar(xs + off, [results[key]["per_class"][lab]["f1"] for lab in labels], 0.4, label=key)
    ax.set_xticks(xs, labels, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("per-class F1 (test)")
    ax.legend()
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
            ax.plot(ep, [h.get(key, np.nan) for h in hist], "-", label=f"{stage} {key}")
            ax.plot(
                ep, [h.get(f"val_{key}", np.nan) for h in hist], "--", label=f"{stage} val_{key}"
            )
        offset = ep[-1]
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_title(key)
        ax.set_xlabel("epoch (head, then fine-tune)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths["training_curves"] = os.path.join(out_dir, "training_curves.png")
    fig.savefig(paths["training_curves"], dpi=90)
    plt.close(fig)
    return paths


def _html(out_dir: str, res: dict, plots: dict[str, str]) -> str:
    def img(p):
        return (
            f'<img src="data:image/png;base64,{base64.b64encode(open(p, "rb").read()).decode()}"/>'
        )

    rows = "".join(
        f"<tr><td>{name}</td>"
        + "".join(
            f"<td>{(res.get(name) or {}).get(k, float('nan')):.4f}</td>"
            for k in ("accuracy", "macro_f1", "log_loss", "ece")
        )
        + "</tr>"
        for name in ("head_only", "candidate", "baseline")
        if res.get(name)
    )
    reasons = "".join(f"<li>{r}</li>" for r in res["reasons"])
    verdict = "BLESSED" if res["blessed"] else "NOT BLESSED"
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>Graft evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}
td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>Graft evaluation: {verdict}</h1><ul>{reasons}</ul>
<table><tr><th>model</th><th>accuracy</th><th>macro-F1</th><th>log loss</th><th>ECE</th></tr>
{rows}</table>
<h2>Confusion matrix</h2>{img(plots["confusion_matrix"])}
<h2>Per-class F1</h2>{img(plots["per_class_f1"])}
<h2>Training curves</h2>{img(plots["training_curves"])}
</body></html>"""
    path = os.path.join(out_dir, "report.html")
    with open(path, "w") as f:
        f.write(html)
    return path


def bless(
    cfg: EvaluateConfig, cand: dict, baseline: dict | None, baseline_note: str | None
) -> tuple[bool, list[str]]:
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
        else:
            reasons.append(
                f"{delta:+.4f} vs baseline accuracy {baseline['accuracy']:.4f}: within thresholds"
            )
    else:
        reasons.append("no baseline at the push destination: first model")
    return ok, reasons


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
) -> EvaluationResult:
    """Test metrics of the head-only and fine-tuned models, scored as the export will serve them.

    `destination` is the push destination: its newest other version is the served baseline.
    """
    os.makedirs(out_dir, exist_ok=True)
    labels = gdata.read_labels(examples_dir)
    exclude = excluded_from_eval(validation_dir)
    blobs, y, pixels = _test_data(examples_dir, image_size, exclude)
    scored: dict[str, dict] = {}
    for key, d in (("head_only", head_dir), ("candidate", model_dir)):
        probs = predict_scores(load_model(os.path.join(d, "model.keras")), pixels, flip_average)
        scored[key] = metrics_from_probs(probs, y, labels, cfg.top_k, cfg.ece_bins)
    baseline, note = None, None
    cand_sha = file_sha256(os.path.join(model_dir, "model.keras"))
    version = baseline_version(destination, model_name, cand_sha) if cfg.compare_baseline else None
    if version is not None:
        path = version_path(destination, model_name, version)
        probs, note = _baseline_probs(path, blobs, labels)
        if probs is not None:
            baseline = metrics_from_probs(probs, y, labels, cfg.top_k, cfg.ece_bins)
            baseline.update({"version": version, "path": path})
    blessed, reasons = bless(cfg, scored["candidate"], baseline, note)
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
    )
    histories = {"head": read_history(head_dir), "fine_tune": read_history(model_dir)}
    plots = _plots(out_dir, asdict(res), labels, histories)
    res.plots = {k: os.path.basename(v) for k, v in plots.items()}
    res.report = os.path.basename(_html(out_dir, asdict(res), plots))
    with open(os.path.join(out_dir, "evaluation.json"), "w") as f:
        json.dump(asdict(res), f, indent=2)
    b = f"baseline v{version} {baseline['accuracy']:.3f}" if baseline else "no baseline"
    log(
        f"evaluate: test accuracy head-only {res.head_only['accuracy']:.3f}, fine-tuned "
        f"{res.candidate['accuracy']:.3f}, {b} -> {'BLESSED' if res.blessed else 'not blessed'}",
        level="ok" if res.blessed else "warn",
    )
    return res
