"""Intervals that say how sure a measured accuracy is: Wilson for one proportion, a paired
bootstrap for the difference of two models on the same images; bootstrap intervals of the
class-balanced scores (macro-F1, balanced accuracy), alone and paired."""

from __future__ import annotations

import numpy as np
from scipy import stats as scipy_stats

__all__ = [
    "BOOTSTRAP_REPS",
    "balanced_scores",
    "balanced_score_intervals",
    "paired_difference",
    "paired_macro_f1",
    "wilson",
]

BOOTSTRAP_REPS = 2000


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion: sound at small n and near 0 or 1.

    Args:
        successes: how many of the n were hits.
        n: how many were tried.
        confidence: the interval's two-sided coverage.

    Returns:
        (low, high), clipped to [0, 1]; (0.0, 1.0) when n is 0.
    """
    if n <= 0:
        return 0.0, 1.0
    test = scipy_stats.binomtest(int(successes), int(n))
    ci = test.proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def paired_difference(
    a_correct: np.ndarray,
    b_correct: np.ndarray,
    reps: int = BOOTSTRAP_REPS,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Accuracy of a minus b on the same images, with a paired bootstrap interval (`level`).

    Paired: each resample draws test images, and both models are scored on those same
    images, so the interval reflects how often they disagree, not two independent noises.
    numpy, not scipy.stats.bootstrap(paired=True): scipy draws other resamples (every earlier
    run's interval would move) and took 1.6x as long at 400 images; advise calls this often.

    Args:
        a_correct: 1/0 per test image: model a got it right.
        b_correct: 1/0 per test image for model b, in the same order.
        reps: bootstrap resamples.
        seed: the resampling seed, so a rerun gives the same interval.
        level: the interval's two-sided coverage.

    Returns:
        A dict: `difference` (mean of a minus b), `low` and `high` (the interval), `n`, and
        `a_only` / `b_only` (images only one of the two got right). All zero when n is 0.
    """
    a = np.asarray(a_correct, dtype=float)
    b = np.asarray(b_correct, dtype=float)
    n = len(a)
    d = np.sort(a - b)  # resampled in a fixed order: the interval is the images', not their order's
    if n == 0:
        return {"difference": 0.0, "low": 0.0, "high": 0.0, "n": 0, "a_only": 0, "b_only": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(reps, n))
    diffs = d[idx].mean(axis=1)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {
        "difference": float(d.mean()),
        "low": float(lo),
        "high": float(hi),
        "n": n,
        "a_only": int(((a == 1) & (b == 0)).sum()),
        "b_only": int(((a == 0) & (b == 1)).sum()),
    }


def balanced_scores(
    y: np.ndarray, pred: np.ndarray, n_classes: int, idx: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Macro-F1 and balanced accuracy of each resample, from per-class counts in one pass.

    Macro-F1: the mean over all `n_classes` of each class's F1 (0 for a class neither present
    nor predicted), as evaluate's per-class table counts it. Balanced accuracy: the mean
    recall over the classes present (sklearn's balanced_accuracy_score). numpy over all
    resamples at once: sklearn's scorers cost ~1 ms a call, 2 s per interval.

    Args:
        y: the true class per image.
        pred: the predicted class per image.
        n_classes: how many classes there are.
        idx: resamples, one row of image indices each; None: the images as given.

    Returns:
        (macro-F1, balanced accuracy): one value per resample each.
    """
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    idx = np.arange(len(y))[None] if idx is None else np.atleast_2d(idx)
    reps, c = len(idx), n_classes
    row = np.repeat(np.arange(reps) * c, idx.shape[1])
    yt, pt = y[idx].ravel(), pred[idx].ravel()

    def count(cls, where=None):
        return np.bincount(row + cls, weights=where, minlength=reps * c).reshape(reps, c)

    true, predicted = count(yt), count(pt)
    hits = count(yt, (yt == pt).astype(float))
    f1 = np.divide(2 * hits, true + predicted, out=np.zeros_like(hits), where=true + predicted > 0)
    recall = np.divide(hits, true, out=np.zeros_like(hits), where=true > 0)
    present = (true > 0).sum(1)
    return f1.mean(1), recall.sum(1) / np.maximum(present, 1)


def _in_fixed_order(*columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """The per-image columns sorted together by their values: a seeded bootstrap then draws
    the same resamples whatever order the images came in (the ingest shards' order differs
    between two ingests of one folder, and a guard's decision near its bound followed it).

    Args:
        columns: equal-length arrays, one value per image each.

    Returns:
        The columns, reordered by one shared permutation.
    """
    cols = [np.asarray(c) for c in columns]
    order = np.lexsort(cols[::-1])  # the first column is the primary key
    return tuple(c[order] for c in cols)


def _resamples(n: int, reps: int, seed: int, chunk: int = 250):
    """Bootstrap resamples of n images in chunks of rows (memory stays ~chunk x n)."""
    rng = np.random.default_rng(seed)
    for start in range(0, reps, chunk):
        yield rng.integers(0, n, size=(min(chunk, reps - start), n))


def balanced_score_intervals(
    y: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    reps: int = BOOTSTRAP_REPS,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Macro-F1 and balanced accuracy, each with a bootstrap interval over the images.

    Args:
        y: the true class per image.
        pred: the predicted class per image.
        n_classes: how many classes there are.
        reps: bootstrap resamples.
        seed: the resampling seed, so a rerun gives the same interval.
        level: the intervals' two-sided coverage.

    Returns:
        {"macro_f1": [value, low, high], "balanced_accuracy": [value, low, high]}; zeros when
        there are no images.
    """
    if len(y) == 0:
        return {"macro_f1": [0.0, 0.0, 0.0], "balanced_accuracy": [0.0, 0.0, 0.0]}
    y, pred = _in_fixed_order(y, pred)
    f1, bal = (v[0] for v in balanced_scores(y, pred, n_classes))
    f1s, bals = zip(
        *(balanced_scores(y, pred, n_classes, idx) for idx in _resamples(len(y), reps, seed)),
        strict=True,
    )
    q = [(1 - level) / 2, (1 + level) / 2]
    return {
        key: [float(value), *(float(b) for b in np.quantile(np.concatenate(boot), q))]
        for key, value, boot in (("macro_f1", f1, f1s), ("balanced_accuracy", bal, bals))
    }


def paired_macro_f1(
    y: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    n_classes: int,
    reps: int = BOOTSTRAP_REPS,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Macro-F1 of a minus b on the same images, with a paired bootstrap interval: each
    resample draws images, and both macro-F1s are recomputed on those same images.

    Args:
        y: the true class per image.
        pred_a: model a's predicted class per image.
        pred_b: model b's, in the same order.
        n_classes: how many classes there are.
        reps: bootstrap resamples.
        seed: the resampling seed, so a rerun gives the same interval.
        level: the interval's two-sided coverage.

    Returns:
        A dict: `difference`, `low`, `high`, `n`, and `a` / `b` (each one's macro-F1). All
        zero when there are no images.
    """
    n = len(y)
    if n == 0:
        return {"difference": 0.0, "low": 0.0, "high": 0.0, "n": 0, "a": 0.0, "b": 0.0}
    y, pred_a, pred_b = _in_fixed_order(y, pred_a, pred_b)
    a, b = (balanced_scores(y, p, n_classes)[0][0] for p in (pred_a, pred_b))
    diffs = np.concatenate(
        [
            balanced_scores(y, pred_a, n_classes, idx)[0]
            - balanced_scores(y, pred_b, n_classes, idx)[0]
            for idx in _resamples(n, reps, seed)
        ]
    )
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {
        "difference": float(a - b),
        "low": float(lo),
        "high": float(hi),
        "n": n,
        "a": float(a),
        "b": float(b),
    }
