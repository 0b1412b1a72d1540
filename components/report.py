"""report.html: what a person needs to trust (or not) the model evaluate just scored.

The per-model intervals (from components/stats.py), the confidently-wrong gallery, and
the numbers the page shows: its markup is in templates/report*.html.j2, rendered by
Jinja2 with autoescape on, so no label, path or reason from the data becomes markup.
evaluate.py computes the scores and calls `write_report`.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re

import numpy as np
from markupsafe import Markup

from graft.components.stats import BOOTSTRAP_REPS, balanced_score_intervals, wilson
from graft.components.templates import html_template

__all__ = [
    "PLOTS",
    "advice_html",
    "confidently_wrong",
    "data_checks_html",
    "intervals",
    "label_issues_html",
    "recall_interval",
    "thumbnail",
    "write_report",
]

Z95 = 1.959964  # two-sided 95 % normal quantile
GALLERY = 12  # most confidently wrong test images shown
THUMB = 112  # thumbnail side, pixels

MODEL_NAMES = {
    "head_only": "head only (frozen base)",
    "candidate": "fine-tuned (candidate)",
    "baseline": "served baseline",
}


def top_k_correct(probs: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return (top == y[:, None]).any(axis=1)


def intervals(probs: np.ndarray, y: np.ndarray, k: int) -> dict:
    """Accuracy and top-k, each with its Wilson 95 % interval, and macro-F1 and balanced
    accuracy, each with a 95 % bootstrap interval (test images resampled), over n test images.

    Args:
        probs: test probabilities, one row per image.
        y: the label index per image.
        k: the top-k to count (capped at the number of classes).

    Returns:
        A dict: `n`, `accuracy`, `top_<k>`, `macro_f1` and `balanced_accuracy`, each
        [value, low, high].
    """
    n = len(y)
    hit = probs.argmax(1) == y
    hit_k = top_k_correct(probs, y, k)
    return {
        "n": n,
        "accuracy": [float(hit.mean()) if n else 0.0, *wilson(int(hit.sum()), n)],
        f"top_{min(k, probs.shape[1])}": [
            float(hit_k.mean()) if n else 0.0,
            *wilson(int(hit_k.sum()), n),
        ],
        **balanced_score_intervals(y, probs.argmax(1), probs.shape[1]),
    }


def confidently_wrong(
    probs: np.ndarray, y: np.ndarray, limit: int = GALLERY
) -> list[tuple[int, int, float]]:
    """(test index, predicted class, its score) of the wrong answers, most confident first.

    Args:
        probs: test probabilities, one row per image.
        y: the label index per image.
        limit: how many to list.

    Returns:
        Up to `limit` (index, predicted class, score) tuples.
    """
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    return [(int(i), int(pred[i]), float(probs[i, pred[i]])) for i in order[:limit]]


def thumbnail(blob: bytes, side: int = THUMB) -> str | None:
    """A small inline JPEG (data: URI) of an encoded image; None if it will not decode.

    Args:
        blob: the encoded image.
        side: the thumbnail's longest side, in pixels.

    Returns:
        The data: URI, or None.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as im:
            im = im.convert("RGB")
            scale = side / max(im.size)  # small images are scaled up too, to be seen
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a thumbnail is decoration; the row still shows
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------ the page
# The markup is in templates/report.html.j2 and report_parts.html.j2 (Jinja2, autoescaped):
# this module hands them the numbers. Paths wrap after a separator (<wbr>), not mid-word.

HEX = re.compile(r"[0-9a-f]{16,}")  # checksums: shown whole in a small monospace
PLOTS = ("confusion_matrix", "per_class_f1", "training_curves")  # evaluate's, inlined

DRIFT_MEASURES = {
    "label_linf": "class shares (largest change, L-inf)",
    "embedding_mmd2": "base embeddings (MMD², permutation test)",
    "confidence_js": "served model's top score (JS divergence)",
}


def _parts():
    """report_parts.html.j2's macros, callable from Python (each returns Markup)."""
    return html_template("report_parts.html.j2").module


def recall_interval(per_class: dict) -> tuple[float, float, float]:
    """A class's recall with its Wilson 95% interval: hits out of its support.

    Args:
        per_class: one class's metrics (its recall and support).

    Returns:
        (recall, low, high).
    """
    n = int(per_class["support"])
    hits = round(per_class["recall"] * n)
    return (hits / n if n else 0.0, *wilson(hits, n))


def _head_candidate_why(res: dict) -> str:
    """Why the head-only model is the candidate: no fine-tuning ran, or the guard kept it."""
    if res.get("fine_tune_rejected"):
        return "the guard kept it over the fine-tuned model (not scored on test)"
    return "no fine-tuning ran"


def _accuracy_view(res: dict, ivs: dict, k: int) -> dict:
    """The accuracy table's rows: each model scored, its interval and top-k when shown."""
    show_topk = len(res.get("labels") or []) > k  # top-k of k or fewer classes is always 100%
    rows = []
    for key, name in MODEL_NAMES.items():
        m, iv = res.get(key), ivs.get(key)
        if not m or not iv:
            continue
        if res.get("refit") and not res.get("fine_tuned", True):  # a refit head is the candidate
            name = {"head_only": "head on train, early-stopped on val (not shipped)"}.get(
                key, f"{res.get('shipped')} (the candidate)" if key == "candidate" else name
            )
        elif not res.get("fine_tuned", True):  # the head is the candidate
            if key == "candidate":
                continue
            if key == "head_only":
                name = "head only (frozen base): the candidate, " + _head_candidate_why(res)
        topk = next((v for n, v in iv.items() if n.startswith("top_")), None)
        rows.append(
            {
                "name": name,
                "accuracy": iv["accuracy"],
                "top_k": topk,
                "metrics": m,
                # runs before balanced scores had intervals: the value alone
                "macro_f1": iv.get("macro_f1") or [m.get("macro_f1")],
                "balanced_accuracy": iv.get("balanced_accuracy") or [m.get("balanced_accuracy")],
            }
        )
    n = ivs.get("candidate", {}).get("n", 0)
    margin = f"{100 * Z95 * math.sqrt(0.16 / max(1, n)):.1f}%"  # of an accuracy near 80%
    return {"n": n, "margin": margin, "top_k": k if show_topk else None, "rows": rows}


def _per_class_view(res: dict, labels: list[str]) -> dict:
    """The per-class table's rows (candidate's metrics, recall interval, head's F1)."""
    cand, head = res["candidate"]["per_class"], res["head_only"]["per_class"]
    rows = [
        {
            "label": lab,
            "candidate": cand[lab],
            "recall": recall_interval(cand[lab]),
            "head": head[lab],
        }
        for lab in labels
    ]
    return {"rows": rows, "smallest": min((cand[lab]["support"] for lab in labels), default=0)}


def _baseline_note(res: dict) -> str:
    if res.get("baseline_compared") is False:
        return "Not compared with the served model (evaluate.compare_baseline: false)."
    if res.get("baseline"):
        return f"Served baseline: version {res.get('baseline_version')}."
    if res.get("baseline_version"):
        return f"Served version {res['baseline_version']} is not comparable (see Verdict)."
    return "No served baseline: this is the first model at the push destination."


def _guard_html(guard: dict | None) -> Markup:
    """The fine-tuning guard's decision and its evidence (fine_tune's result.json)."""
    return _parts().guard_html(guard)


def advice_html(advice: dict | None) -> Markup:
    """The advise step's plan (decision, choice, why) and its probes, as the report shows them.

    Args:
        advice: advice.json's document, or None for a run that recorded none.

    Returns:
        Escaped HTML, safe to put in the page.
    """
    return _parts().advice_html(advice)


def drift_measure(name: str) -> str:
    """What a drift measure's key (drift.json's metrics) measures, in words."""
    if name in DRIFT_MEASURES:
        return DRIFT_MEASURES[name]
    return f"image {name.removeprefix('js_')} (JS divergence)" if name.startswith("js_") else name


def drift_html(drift: dict) -> Markup:
    """The drift step's verdict and each measure with its threshold, p-value and flag."""
    return _parts().drift_html(drift, drift_measure)


def near_duplicates_html(pairs: list[dict], thumbs: dict[str, str | None]) -> Markup:
    """Train ~ val/test pairs validate found, each side with a thumbnail (thumbs by path)."""
    return _parts().near_duplicates_html(pairs, thumbs)


def data_checks_html(
    warnings: list[str], pairs: list[dict], thumbs: dict[str, str | None]
) -> Markup:
    """Validate's warnings and its near-duplicate pairs (thumbs by path), for the report.

    Args:
        warnings: validate's warning lines.
        pairs: its near-duplicate pairs, each with the two paths.
        thumbs: a data: URI thumbnail by path (None where the image would not decode).

    Returns:
        Escaped HTML, safe to put in the page.
    """
    return _parts().data_checks_html(warnings, pairs, thumbs)


def label_issues_html(doc: dict | None, thumbs: dict[str, str | None], shown: int) -> Markup:
    """advise's label_issues.json: the first `shown` entries, each with its thumbnail (thumbs
    by path), and how the images were checked.

    Args:
        doc: the label_issues.json document, or None when advise wrote none.
        thumbs: a data: URI thumbnail by path (None where the image would not decode).
        shown: how many entries to show.

    Returns:
        Escaped HTML, safe to put in the page.
    """
    from graft.components.label_issues import weak_probe_note

    note = weak_probe_note(doc) if doc is not None else ""
    return _parts().label_issues_html(doc, thumbs, shown, note)


def _png_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def write_report(
    out_dir: str,
    res: dict,
    plots: dict[str, str],
    *,
    intervals_by_model: dict,
    comparisons: dict,
    guard: dict | None,
    gallery: list[dict],
    provenance: dict,
    top_k: int,
    checks_html: Markup | str = "",
    advice: dict | None = None,
    drift: dict | None = None,
    label_issues: Markup | str = "",
) -> str:
    """Write report.html into out_dir; returns its path. checks_html and label_issues are
    pieces made by data_checks_html and label_issues_html (a plain str is shown as text).

    Args:
        out_dir: the folder to write report.html into.
        res: the evaluation result, as a dict.
        plots: PNG file path by plot name (every name of PLOTS).
        intervals_by_model: `intervals` of each scored model, by model.
        comparisons: paired differences between the models, by pair.
        guard: the fine-tune guard's decision, or None.
        gallery: the confidently wrong images to show, with their thumbnails.
        provenance: what made the model (model name, base, data fingerprint, config hash...).
        top_k: the k of the top-k accuracy.
        checks_html: data_checks_html's piece.
        advice: advise's advice.json, or None.
        drift: the drift step's drift.json, or None.
        label_issues: label_issues_html's piece.

    Returns:
        The path of report.html.
    """
    page = html_template("report.html.j2").render(
        res=res,
        model=str(provenance.get("model name", "")),
        base=str(provenance.get("base", "")),
        blessed=res["blessed"],
        verdict="BLESSED" if res["blessed"] else "NOT BLESSED",
        data_fingerprint=str(provenance.get("data fingerprint") or "-"),
        config_hash=str(provenance.get("config hash") or "-"),
        fine_tuned=res.get("fine_tuned", True),
        fine_tune_ran=res.get("fine_tuned", True) or res.get("fine_tune_rejected", False),
        head_why=_head_candidate_why(res),
        accuracy=_accuracy_view(res, intervals_by_model, top_k),
        comparisons=comparisons,
        baseline_note=_baseline_note(res),
        bootstrap_reps=BOOTSTRAP_REPS,
        advice=advice,
        guard=guard,
        per_class=_per_class_view(res, res["labels"]),
        gallery=gallery,
        label_issues=label_issues,
        plots={k: _png_uri(plots[k]) for k in PLOTS},
        checks_html=checks_html,
        drift=drift,
        drift_measure=drift_measure,
        provenance=provenance,
        checksum=HEX,
    )
    path = os.path.join(out_dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
