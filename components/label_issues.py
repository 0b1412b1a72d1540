"""Label issues: images whose given label the data itself disputes.

Confident learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in
Dataset Labels", JAIR 2021) on out-of-fold class probabilities: each image is scored by a
k-fold linear probe on frozen pooled features that never saw it, so a mislabelled image is
judged by what the other images say its class looks like. A class's threshold is the mean
probability the probe gives that class over the images filed under it. An image is an issue
when the probability of its given label is below that label's threshold and another class
reaches its own threshold (confident learning's off-diagonal; the suggested label is the most
probable such class), or, less surely, when another class is simply the most probable: a
confident probe sets high thresholds, and on a 300-image cats_dogs copy the strict rule alone
missed 3 of 10 planted cats that the probe still put below 0.93 as cats. Issues are ranked by
the probability of the given label, lowest first (cleanlab's self-confidence order).

Exact copies of one image filed under two classes (validate's label conflicts) are certain
issues: they are merged into the same list, first. The advise step writes the list to
`label_issues.json`; `graft advise` prints the top ten and the report shows them.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

__all__ = [
    "stratified_sample",
    "DUPLICATE",
    "FILE",
    "LESS_SURE",
    "MISLABELLED",
    "WEAK_PROBE",
    "check",
    "duplicates_across_classes",
    "find_label_issues",
    "out_of_fold_probabilities",
    "read",
    "short_path",
    "summary",
    "table",
    "weak_probe_note",
    "write",
]

FILE = "label_issues.json"
MAX_CHECKED = 20_000  # images the probe scores at most (a stratified sample above it)
METHOD = (
    "confident learning (Northcutt et al. 2021) on out-of-fold probabilities of a k-fold "
    "logistic-regression probe on standardised pooled features: an image is listed when the "
    "probability of its given label is below that class's threshold (the mean probability of "
    "the class over the images filed under it) and another class reaches its own threshold "
    "(confident: true) or is the most probable (confident: false); ranked by the probability "
    "of the given label, lowest first. Exact copies of one image under two classes (validate's "
    "label conflicts) are listed first"
)
MISLABELLED = "likely_mislabelled"
DUPLICATE = "duplicate_across_classes"
LESS_SURE = "less_sure"
WEAK_PROBE = 0.8  # below this out-of-fold accuracy, most listed images are the probe's errors


def out_of_fold_probabilities(
    x: np.ndarray,
    y: np.ndarray,
    folds: int,
    groups: np.ndarray | None = None,
    seed: int = 0,
    n_classes: int = 0,
) -> tuple[np.ndarray, int]:
    """Class probabilities [n, max(n_classes, classes in y)] of each image from a probe
    trained on the other folds, and k; a class without images gets probability 0.

    The probe is advise's linear probe (standardised features, logistic regression); a group
    (data.group_by) stays in one fold, so a patient's other images cannot vouch for a label.

    Args:
        x: features, one row per image.
        y: label index per image.
        folds: k, lowered to the smallest class (or the number of groups) when fewer.
        groups: a group id per image (kept in one fold), or None.
        seed: the fold split's seed.
        n_classes: the number of columns at least.

    Returns:
        (probabilities, k): [n, C] out-of-fold probabilities and the folds used.
    """
    present, y = np.unique(y, return_inverse=True)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = max(2, min(folds, int(np.bincount(y).min())))
    n_groups = len(set(groups.tolist())) if groups is not None else 0
    grouped = 2 <= n_groups < len(y)
    if grouped:
        k = min(k, n_groups)
        cv = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    else:
        cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=500, tol=1e-3))
    probs = cross_val_predict(
        pipe, x, y, cv=cv, groups=groups if grouped else None, method="predict_proba"
    )
    full = np.zeros((len(y), max(n_classes, int(present[-1]) + 1)))
    full[:, present] = probs
    return full, k


def find_label_issues(
    probs: np.ndarray, y: np.ndarray
) -> tuple[list[tuple[int, int, bool]], list[float]]:
    """([(image index, suggested class, confident)] ranked, per-class thresholds).

    Pure numpy. `probs`: out-of-fold probabilities [n, C]; `y`: given labels [n]. An image is
    listed when its given label's probability is below that class's threshold and another
    class either reaches its own threshold (`confident`: confident learning's off-diagonal)
    or is simply the most probable one (the probe predicts another class, less surely).

    Args:
        probs: out-of-fold probabilities, [n, C].
        y: given labels, [n].

    Returns:
        (issues, thresholds): the listed images, lowest given-label probability first, and
        each class's threshold.
    """
    n, c = probs.shape
    thresholds = np.array([probs[y == j, j].mean() if np.any(y == j) else 1.0 for j in range(c)])
    given = probs[np.arange(n), y]
    claims = probs >= thresholds  # [n, C]: the classes that claim each image
    claims[np.arange(n), y] = False
    confident = claims.any(1)
    top = probs.argmax(1)
    suggested = np.where(confident, np.where(claims, probs, -1.0).argmax(1), top)
    issue = (given < thresholds[y]) & (confident | (top != y))
    order = np.flatnonzero(issue)
    order = order[np.argsort(given[order], kind="stable")]
    return [(int(i), int(suggested[i]), bool(confident[i])) for i in order], thresholds.tolist()


def stratified_sample(y: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Up to `cap` indices in order, each class in proportion, fixed by the seed.

    Args:
        y: the class of each image.
        cap: the most indices to return (all of them when there are no more).
        seed: the sampling seed.

    Returns:
        Sorted indices into `y`: at least 2 per class, at most what the class has.
    """
    if len(y) <= cap:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        # at least 2 per class (a fold needs them), never more than the class has
        n = min(len(idx), max(2, round(cap * len(idx) / len(y))))
        keep.extend(rng.choice(idx, n, replace=False))
    return np.sort(np.array(keep))


def check(
    x: np.ndarray,
    y: np.ndarray,
    rows: list[dict],
    labels: list[str],
    *,
    folds: int,
    layer: str,
    size: int,
) -> dict:
    """Score the images (features `x`, given labels `y`, manifest `rows` alike ordered) and
    list the likely mislabelled ones; the document label_issues.json holds, less duplicates.

    Args:
        x: pooled features, one row per image.
        y: the given label index per image.
        rows: the manifest row per image, in the same order.
        labels: the class names, in label order.
        folds: the probe's folds.
        layer: the base layer the features come from (recorded).
        size: the input size the features were computed at (recorded).

    Returns:
        The document: method, probe accuracy, images checked, per-class thresholds and
        the `issues` found, each with its path, given and suggested label.
    """
    t0 = time.time()
    idx = stratified_sample(y, MAX_CHECKED)
    groups = np.array([r.get("group") or r["sha256"] for r in rows])[idx]
    probs, k = out_of_fold_probabilities(
        x[idx], y[idx], folds, groups=groups, n_classes=len(labels)
    )
    found, thresholds = find_label_issues(probs, y[idx])
    checked: dict[str, int] = {}
    for i in idx:
        checked[rows[i]["split"]] = checked.get(rows[i]["split"], 0) + 1
    issues = []
    for i, s, sure in found:
        r = rows[idx[i]]
        g = int(y[idx[i]])
        issues.append(
            {
                "kind": MISLABELLED,
                "path": r["path"],
                "split": r["split"],
                "sha256": r["sha256"],
                "given": labels[g],
                "suggested": labels[s],
                "confidence": round(float(probs[i, s]), 4),
                "given_probability": round(float(probs[i, g]), 4),
                "confident": sure,
            }
        )
    return {
        "method": METHOD,
        "layer": layer,
        "size": size,
        "folds": k,
        # the probe's own out-of-fold accuracy: a weak probe lists many of its own errors
        "probe_accuracy": round(float((probs.argmax(1) == y[idx]).mean()), 4),
        "checked": checked,
        "images": len(y),
        "sampled": len(idx) < len(y),
        "thresholds": {lab: round(t, 4) for lab, t in zip(labels, thresholds, strict=True)},
        "issues": issues,
        "seconds": round(time.time() - t0, 2),  # the probes' fits (the features were there)
    }


def duplicates_across_classes(examples_dir: str, validation_dir: str | None) -> list[dict]:
    """validate's label conflicts (one image's bytes under two classes, dropped everywhere),
    one entry per image: its first copy's path and label, the other label suggested.

    Args:
        examples_dir: the ingest step's output (its manifest).
        validation_dir: the validate step's output, or None when it did not run.

    Returns:
        One issue entry per conflicting image; [] without validation output.
    """
    from graft.components.manifest import excluded_from_train, read_manifest

    conflicts = excluded_from_train(validation_dir)  # exclude_from_all: the label conflicts
    if not conflicts:
        return []
    copies: dict[str, list[dict]] = {}
    for m in read_manifest(examples_dir):
        if m["sha256"] in conflicts:
            copies.setdefault(m["sha256"], []).append(m)
    out = []
    for sha, ms in sorted(copies.items()):
        first = ms[0]
        others = sorted({m["label"] for m in ms} - {first["label"]})
        out.append(
            {
                "kind": DUPLICATE,
                "path": first["path"],
                "split": first["split"],
                "sha256": sha,
                "given": first["label"],
                "suggested": others[0] if others else None,
                "confidence": None,
                "given_probability": None,
                "confident": True,
                "copies": [
                    {"path": m["path"], "label": m["label"], "split": m["split"]} for m in ms
                ],
            }
        )
    return out


def write(out_dir: str, doc: dict, duplicates: list[dict], data_root: str = "") -> dict:
    """Merge, rank (duplicates first) and write label_issues.json; returns the document.

    Args:
        out_dir: the folder to write label_issues.json into.
        doc: what `check` returned.
        duplicates: what `duplicates_across_classes` returned.
        data_root: the data folder, recorded so paths can be shown short.

    Returns:
        The document as written, with ranks and counts.
    """
    issues = duplicates + doc.get("issues", [])
    for rank, it in enumerate(issues, 1):
        it["rank"] = rank
    doc = {
        **doc,
        "data_root": data_root,
        "counts": {
            MISLABELLED: sum(it["kind"] == MISLABELLED for it in issues),
            DUPLICATE: len(duplicates),
            # of the likely mislabelled, those only the looser rule lists (a weak probe's own
            # errors land here: flowers at 0.65 probe accuracy lists a third of its images)
            LESS_SURE: sum(it["kind"] == MISLABELLED and not it["confident"] for it in issues),
        },
        "issues": issues,
    }
    with open(os.path.join(out_dir, FILE), "w") as f:
        json.dump(doc, f, indent=2)
    return doc


def read(advice_dir: str | None) -> dict | None:
    """label_issues.json of an advise output; None when advise wrote none (recipe manual).

    Args:
        advice_dir: the advise step's output, or None.

    Returns:
        The document, or None.
    """
    path = os.path.join(advice_dir, FILE) if advice_dir else None
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def short_path(path: str, root: str) -> str:
    """`path` under the data folder it came from, else as it is.

    Args:
        path: an image's path as the manifest holds it.
        root: the data folder; "" leaves every path as it is.

    Returns:
        The path relative to root, or path itself.
    """
    return os.path.relpath(path, root) if root and path.startswith(root.rstrip("/") + "/") else path


def summary(doc: dict) -> str:
    """One line: how many issues, of how many images, checked how.

    Args:
        doc: the document `write` returns.

    Returns:
        The line.
    """
    c = doc["counts"]
    checked = ", ".join(f"{n} {s}" for s, n in doc["checked"].items())
    of = f" (a sample of {doc['images']})" if doc.get("sampled") else ""
    return (
        f"label issues: {c[MISLABELLED]} likely mislabelled ({_less_sure(c)} of them less sure), "
        f"{c[DUPLICATE]} duplicate(s) across classes; checked {checked} images{of} with a "
        f"{doc['folds']}-fold probe of {doc['layer']} at {doc['size']} px (its accuracy "
        f"{doc['probe_accuracy']:.3f}{weak_probe_note(doc)})"
    )


def _less_sure(counts: dict) -> int:
    return counts.get(LESS_SURE, 0)


def weak_probe_note(doc: dict) -> str:
    """A warning beside a probe too weak for its listing to mean much; empty otherwise.

    Args:
        doc: a label-issues document (its `probe_accuracy`).

    Returns:
        The note, or "".
    """
    if doc["probe_accuracy"] >= WEAK_PROBE:
        return ""
    return (
        f": under {WEAK_PROBE:.2f}, so most listed images are likely the probe's own errors, "
        "not wrong labels; read the top of the list"
    )


def table(doc: dict, limit: int = 10) -> str:
    """The first `limit` issues as aligned text lines: rank, kind, given -> suggested, path.

    Args:
        doc: the document `write` returns.
        limit: how many issues to show.

    Returns:
        The lines, joined by newlines.
    """
    lines = []
    for it in doc["issues"][:limit]:
        conf = f"{it['confidence']:.2f}" if it["confidence"] is not None else "  - "
        conf += "" if it.get("confident", True) else " (less sure)"
        lines.append(
            f"  {it['rank']:>3} {it['kind']:<24} {it['given']} -> {it['suggested']} "
            f"{conf}  {short_path(it['path'], doc.get('data_root', ''))}"
        )
    return "\n".join(lines)
