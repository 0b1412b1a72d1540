"""Drift: the new data against the data the served model was trained on.

The served version is found at the push destination and its data snapshot (the ingest output
it was trained on) through its lineage (components/registry.py; older versions: the model
card). Nothing served yet (a first run), or a snapshot that is gone: the check is skipped and
says so. Four measures, each with its threshold from the `drift:` config:

- label distribution, whole new snapshot vs whole served snapshot: L-infinity distance (the
  largest change of any class's share), as TFDV's comparator for categorical features;
- per-image statistics (stored bytes, width, height, aspect, brightness, colourfulness) of the
  images *added* since the served snapshot vs the served snapshot: Jensen-Shannon divergence
  (base 2, 0..1) of 10-bucket histograms whose edges are the deciles of both sides pooled.
  The added images, not the whole new snapshot: a shifted batch diluted among the old images
  would hide;
- embeddings: pooled base features (from the feature store: the head stage reads the same
  rows next) of the added images vs the served snapshot, maximum mean discrepancy with an RBF
  kernel (median heuristic) and a permutation p-value;
- the served model's top score on the added images vs on its own held-out (val, test) images,
  which it did not fit (test alone when a head refit on train + val is served: its lineage's
  `training.trained_on`): JS divergence of the two histograms.

Small batches differ by chance, so a measure over its threshold flags only when its
permutation p-value is below `drift.significance` too; the embedding test flags on its p-value.
Up to `drift.sample` images per side, drawn with a fixed seed. Writes drift.json (every
measure with its threshold and p-value, and a flat `kfp_metrics`); with `drift.action: block`
a flagged check raises DriftBlocked after writing it, which fails the run before anything is
pushed.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.spatial.distance import jensenshannon

from graft.components.fs import exists as _exists
from graft.components.fs import read_json
from graft.components.manifest import read_manifest as _manifest
from graft.core.config import BaseConfig, DriftConfig
from graft.core.log import log
from graft.core.paths import is_remote
from graft.core.paths import join as _join

__all__ = [
    "DriftBlocked",
    "DriftResult",
    "Permutations",
    "check_drift",
    "js_divergence",
    "bucket_js",
    "label_linf",
    "mmd_test",
    "image_stats",
    "held_out_splits",
]

STATS = ("bytes", "width", "height", "aspect", "brightness", "colourfulness")
BUCKETS = 10
MIN_NEW = 10  # fewer added images than this: the image measures are not computed
SEED = 0
RESULT_FILE = "drift.json"


class DriftBlocked(RuntimeError):
    """drift.action is block and a measure flagged: the run stops before anything is pushed."""


@dataclass
class DriftResult:
    """The drift verdict against the served model's data: each measure, whether one flagged
    or blocked, and why; written as drift.json."""

    checked: bool
    flagged: bool = False
    blocked: bool = False
    reasons: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # measure -> value, threshold, p, flagged
    served_version: int | None = None
    served_examples: str | None = None
    compared: dict = field(default_factory=dict)  # images per side
    # exact copies among the added images: they train as often as they are stored
    duplicates: dict = field(default_factory=dict)
    kfp_metrics: dict = field(default_factory=dict)  # flat name -> number, for KFP Metrics
    seconds: float = 0.0


# ---------------------------------------------------------------- the served snapshot


def served_snapshot(destination: str, model_name: str) -> tuple[int, str, str | None] | None:
    """(version, its dir, the ingest output it was trained on or None); None: nothing served."""
    from graft.components import registry

    version = registry.served_version(destination, model_name)
    if version is None:
        return None
    vdir = registry.version_path(destination, model_name, version)
    examples = None
    entry = registry.served_entry(destination, model_name)
    if entry:
        examples = ((entry.get("lineage") or {}).get("data") or {}).get("examples_dir")
    if not examples:  # a version pushed before the registry: its model card
        card = read_json(_join(vdir, "model_card.json")) or {}
        lineage = card.get("lineage") or {}
        examples = (lineage.get("data") or {}).get("examples_dir") or lineage.get("examples")
    return version, vdir, examples


def held_out_splits(destination: str, model_name: str) -> tuple[str, ...]:
    """The splits the served model never trained on: val and test, or test alone when its
    lineage says a head refit on train + val shipped (val is then no held-out image).

    Args:
        destination: the push destination.
        model_name: the served model's name.

    Returns:
        The split names.
    """
    from graft.components import registry

    entry = registry.served_entry(destination, model_name) or {}
    trained_on = ((entry.get("lineage") or {}).get("training") or {}).get("trained_on") or []
    return tuple(s for s in ("val", "test") if s not in trained_on)


# ---------------------------------------------------------------- statistics


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence, base 2 (0: same, 1: disjoint), of two histograms.

    Args:
        p: the first histogram (counts or shares).
        q: the second, on the same buckets.

    Returns:
        The divergence, 0 to 1.
    """
    return float(_js_rows(np.asarray(p)[None], np.asarray(q)[None])[0])


def _js_rows(hp: np.ndarray, hq: np.ndarray) -> np.ndarray:
    """JS divergence (base 2) of matching rows of two count matrices: scipy's Jensen-Shannon
    distance squared (the distance is the divergence's square root); 0 for an empty row."""
    distance = jensenshannon(np.asarray(hp, np.float64), np.asarray(hq, np.float64), 2, axis=1)
    return np.nan_to_num(distance * distance)


class Permutations:
    """Random orders of range(n), one per row, drawn once per n: the measures over samples of
    the same sizes share them (each test stays exact; drawing them was a third of a check).
    Not scipy.stats.permutation_test: it draws its own permutations per test (other p-values)
    and took 1.7x as long on a 500-image categorical JS test."""

    def __init__(self, count: int, rng: np.random.Generator):
        self.count, self.rng, self._by_n = count, rng, {}

    def __call__(self, n: int) -> np.ndarray:
        if n not in self._by_n:
            self._by_n[n] = np.argsort(self.rng.random((self.count, n)), axis=1)
        return self._by_n[n]


def _perms(permutations: int | Permutations, rng: np.random.Generator) -> Permutations:
    return (
        permutations if isinstance(permutations, Permutations) else Permutations(permutations, rng)
    )


def bucket_js(
    old: np.ndarray, new: np.ndarray, permutations: int | Permutations, rng: np.random.Generator
) -> tuple[float, float]:
    """JS divergence of 10-bucket histograms on shared edges (the pooled deciles) and its
    permutation p-value (how often relabelling the pooled values gives as large a one).

    Args:
        old: one statistic's values on the served model's images.
        new: the same statistic on the added images.
        permutations: how many relabellings, or a shared Permutations.
        rng: the random generator (seeded by the caller).

    Returns:
        (divergence, p-value).
    """
    pooled = np.concatenate([old, new]).astype(np.float64)
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, BUCKETS + 1)[1:-1]))
    bins = np.searchsorted(edges, pooled, side="right")
    return categorical_js(bins[: len(old)], bins[len(old) :], len(edges) + 1, permutations, rng)


def categorical_js(
    a: np.ndarray,
    b: np.ndarray,
    k: int,
    permutations: int | Permutations,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """JS divergence of two samples of categories 0..k-1, and its permutation p-value."""
    pooled = np.concatenate([a, b]).astype(np.int64)
    n = len(a)
    ha, hb = np.bincount(a, minlength=k), np.bincount(b, minlength=k)
    value = js_divergence(ha, hb)
    perm = pooled[_perms(permutations, rng)(len(pooled))]
    permutations = len(perm)
    rows = np.arange(permutations)[:, None] * k
    hp = np.bincount((rows + perm[:, :n]).ravel(), minlength=permutations * k)
    hq = np.bincount((rows + perm[:, n:]).ravel(), minlength=permutations * k)
    null = _js_rows(hp.reshape(permutations, k), hq.reshape(permutations, k))
    return value, float((1 + np.sum(null >= value - 1e-12)) / (1 + permutations))


def label_linf(
    old: list[str], new: list[str], permutations: int | Permutations, rng: np.random.Generator
) -> tuple[float, float, dict[str, float]]:
    """L-infinity distance of the label distributions, its permutation p-value and the
    per-class change of share.

    Args:
        old: the served model's training labels, one per image.
        new: the new snapshot's labels, one per image.
        permutations: how many relabellings, or a shared Permutations.
        rng: the random generator (seeded by the caller).

    Returns:
        (distance, p-value, class -> change of its share).
    """
    labels = sorted(set(old) | set(new))
    idx = {lab: i for i, lab in enumerate(labels)}
    a = np.array([idx[x] for x in old], np.int64)
    b = np.array([idx[x] for x in new], np.int64)
    k = len(labels)
    pa, pb = np.bincount(a, minlength=k) / len(a), np.bincount(b, minlength=k) / len(b)
    value = float(np.max(np.abs(pa - pb)))
    pooled = np.concatenate([a, b])
    perm = pooled[_perms(permutations, rng)(len(pooled))]
    permutations = len(perm)
    rows = np.arange(permutations)[:, None] * k
    ha = np.bincount((rows + perm[:, : len(a)]).ravel(), minlength=permutations * k)
    hb = np.bincount((rows + perm[:, len(a) :]).ravel(), minlength=permutations * k)
    null = np.max(
        np.abs(ha.reshape(permutations, k) / len(a) - hb.reshape(permutations, k) / len(b)), 1
    )
    p = float((1 + np.sum(null >= value - 1e-12)) / (1 + permutations))
    return value, p, {lab: round(float(pb[i] - pa[i]), 4) for lab, i in idx.items()}


def mmd_test(
    x: np.ndarray, y: np.ndarray, permutations: int | Permutations, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Unbiased MMD^2 with an RBF kernel (bandwidth: the median pairwise distance of both
    samples pooled), and its permutation p-value.

    Args:
        x: the served side's embeddings, one row per image.
        y: the new side's embeddings.
        permutations: how many relabellings, or a shared Permutations.
        rng: the random generator (seeded by the caller).

    Returns:
        (mmd2, p-value, bandwidth).
    """
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.sum(z * z, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off = d2[np.triu_indices(len(z), 1)]
    sigma2 = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    k = np.exp(-d2 / (2 * sigma2))
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    mmd2 = (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )
    # the permutation test on the V-statistic s'Ks (s: 1/n on one side, -1/m on the other):
    # with the sample sizes fixed it ranks permutations as the unbiased statistic would
    s = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(s @ k @ s)
    perms = _perms(permutations, rng)(n + m)
    permutations = len(perms)
    null = np.empty(permutations)
    for i in range(0, permutations, 250):  # bounded memory: (n+m) x 250 at a time
        sp = s[perms[i : i + 250]].T
        null[i : i + 250] = np.sum(sp * (k @ sp), 0)
    p = float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations))
    return float(mmd2), p, float(np.sqrt(sigma2))


def image_stats(encoded: bytes) -> dict[str, float]:
    """Brightness (mean luma, 0-255) and colourfulness (Hasler & Suesstrunk 2003) of a
    downscaled decode (JPEG decodes at 1/8 scale directly); bytes as stored.

    Args:
        encoded: the image file's bytes.

    Returns:
        {"bytes", "brightness", "colourfulness"} (width and height come from the manifest).
    """
    from PIL import Image

    from graft.components.images import to_rgb

    img = Image.open(io.BytesIO(encoded))
    img.draft("RGB", (64, 64))
    img = to_rgb(img)  # stored JPEG/PNG bytes may be gray, 16-bit or RGBA: as TF decodes them
    img.thumbnail((64, 64))
    a = np.asarray(img, np.float64)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    colourful = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    return {
        "bytes": float(len(encoded)),
        "brightness": float((0.299 * r + 0.587 * g + 0.114 * b).mean()),
        "colourfulness": float(colourful),
    }


def read_encoded(examples_dir: str, wanted: set[str]) -> dict[str, bytes]:
    """Encoded image bytes of the wanted sha256s from an ingest output's TFRecords."""
    import tensorflow as tf

    files = tf.io.gfile.glob(_join(examples_dir, "*.tfrecord.gz"))
    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/sha256": tf.io.FixedLenFeature([], tf.string),
    }
    got: dict[str, bytes] = {}
    if not files or not wanted:
        return got
    for rec in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(256):
        ex = tf.io.parse_example(rec, spec)
        for sha, enc in zip(ex["image/sha256"].numpy(), ex["image/encoded"].numpy(), strict=True):
            s = sha.decode()
            if s in wanted and s not in got:
                got[s] = enc
        if len(got) == len(wanted):
            break
    return got


def _stat_columns(rows: list[dict], encoded: dict[str, bytes]) -> dict[str, np.ndarray]:
    cols: dict[str, list[float]] = {s: [] for s in STATS}
    for r in rows:
        enc = encoded.get(r["sha256"])
        if enc is None:
            continue
        st = image_stats(enc)
        st.update(
            width=float(r["width"]),
            height=float(r["height"]),
            aspect=float(r["width"]) / max(float(r["height"]), 1.0),
        )
        for s in STATS:
            cols[s].append(st[s])
    return {s: np.array(v) for s, v in cols.items()}


def _duplicates(rows: list[dict]) -> dict:
    """Exact copies (same sha256) among rows: counts and the largest group."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["sha256"], []).append(r)
    multi = sorted(
        (g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]["sha256"])
    )
    out = {
        "images": len(rows),
        "distinct": len(groups),
        "copies": len(rows) - len(groups),
        "groups": len(multi),
    }
    if multi:
        g = multi[0]
        out["largest"] = {"sha256": g[0]["sha256"], "count": len(g), "label": g[0]["label"]}
    return out


def _sample(rows: list[dict], n: int, rng: np.random.Generator) -> list[dict]:
    seen, uniq = set(), []
    for r in sorted(rows, key=lambda r: r["sha256"]):
        if r["sha256"] not in seen:
            seen.add(r["sha256"])
            uniq.append(r)
    if len(uniq) <= n:
        return uniq
    return [uniq[i] for i in sorted(rng.choice(len(uniq), n, replace=False))]


# ---------------------------------------------------------------- embeddings, confidence


def embeddings(
    examples_dir: str,
    rows: list[dict],
    *,
    base: BaseConfig,
    image_size: int,
    feature_store: str,
    cache: dict,
    geometry=None,
) -> np.ndarray:
    """Pooled base features of `rows` (one ingest output), through the feature store."""
    from graft.components import data as gdata
    from graft.components import features as gfeat

    geometry = geometry or gdata.SQUASH

    if "extractor" not in cache:
        from graft.components.model import BackbonePreprocess, build_base

        b = cache["base"] = build_base(base, image_size)
        cache["layer"] = b.layers[-1].name
        cache["extractor"] = gfeat.pooled_extractor(
            b, BackbonePreprocess(base.name), [b.layers[-1].name]
        )
        cache["store"] = (
            gfeat.FeatureStore(feature_store, b.graft_fingerprint, image_size, geometry)
            if feature_store
            else None
        )
        cache["computed"] = cache["reused"] = 0
    layer = cache["layer"]
    want = {r["sha256"] for r in rows}
    by_sha: dict[str, np.ndarray] = {}
    for split in sorted({r["split"] for r in rows}):
        everything = {r["sha256"] for r in gfeat.split_rows(examples_dir, split)}
        got = gfeat.split_features(
            examples_dir,
            split,
            [layer],
            extractor=cache["extractor"],
            store=cache["store"],
            exclude=everything - want,
            stage="drift",
            geometry=geometry,
        )
        cache["computed"] += got.computed
        cache["reused"] += got.reused
        by_sha.update(zip(got.sha256, got.x[layer], strict=True))
    return np.stack([by_sha[r["sha256"]] for r in rows if r["sha256"] in by_sha])


def confidences(served, rows: list[tuple[str, bytes]]) -> np.ndarray:
    """The served model's top score per (sha256, encoded image): from its stored scores where
    it has them (components/served_scores.py), else through its serving signature."""
    if not rows:
        return np.zeros(0)
    return served.scores([s for s, _ in rows], [b for _, b in rows]).max(1)


def _served_scores(
    destination: str, model_name: str, version: int, feature_store: str, cache: dict, image_size
):
    """The served version's scores: stored, by its head on the features `embeddings` read
    (when it is a head on this base), else through its serving signature."""
    from graft.components import data as gdata
    from graft.components.served_scores import FeatureSource, ServedScores

    labels = gdata.read_labels(_join(destination, model_name, str(version), "assets"))
    source = None
    if cache.get("store") is not None:
        store = cache["store"]
        source = FeatureSource(cache["base"], store, image_size, store.geometry)
    return ServedScores.of(destination, model_name, version, labels or [], feature_store, source)


# ---------------------------------------------------------------- the check


def _measure(value, threshold, p, flagged, **extra) -> dict:
    return {
        "value": round(float(value), 6),
        "threshold": threshold,
        "p_value": None if p is None else round(float(p), 6),
        "flagged": bool(flagged),
        **extra,
    }


def _write(out_dir: str, res: DriftResult) -> None:
    if not is_remote(out_dir):
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, RESULT_FILE), "w") as f:
            json.dump(asdict(res), f, indent=2)
        return
    import tensorflow as tf

    with tf.io.gfile.GFile(_join(out_dir, RESULT_FILE), "w") as f:
        f.write(json.dumps(asdict(res), indent=2))


def _skip(out_dir: str, reason: str, t0: float, **kw) -> DriftResult:
    log(f"drift: {reason}")
    res = DriftResult(checked=False, reasons=[reason], seconds=round(time.time() - t0, 2), **kw)
    res.kfp_metrics = {"drift_checked": 0, "drift_flagged": 0}
    _write(out_dir, res)
    return res


def check_drift(
    cfg: DriftConfig,
    examples_dir: str,
    validation_dir: str | None,
    out_dir: str,
    *,
    destination: str,
    model_name: str,
    base: BaseConfig,
    image_size: int,
    feature_store: str,
    seed: int = SEED,
    geometry=None,
) -> DriftResult:
    """Compare the new snapshot with the served model's; write drift.json; raise DriftBlocked
    when drift.action is block and a measure flagged. `seed` draws the samples and
    permutations (the benchmark's resamples vary it).

    Args:
        cfg: the `drift` section (measures, thresholds, sample sizes, action).
        examples_dir: the ingest step's output, the new snapshot.
        validation_dir: the validate step's output (images left out of training), or None.
        out_dir: where drift.json is written.
        destination: the push destination, where the served version and its lineage are.
        model_name: the served model's name.
        base: the `base` section, whose backbone embeds images for the MMD test.
        image_size: the model's input size in pixels.
        feature_store: where embeddings are cached between runs.
        seed: draws the samples and permutations.
        geometry: how images are fitted to the input size; None: squash.

    Returns:
        The DriftResult, also written to `out_dir`/drift.json (`checked` false, with the
        reason, when nothing is served or the served data cannot be read).

    Raises:
        DriftBlocked: drift.action is block and a measure flagged (drift.json is written).
    """
    from graft.components.manifest import excluded_from_train

    t0 = time.time()
    why_not, served, kw = _why_not_checked(cfg, destination, model_name)
    if why_not:
        return _skip(out_dir, why_not, t0, **kw)
    version, _, old_dir = served
    rng = np.random.default_rng(seed)
    P = Permutations(cfg.permutations, rng)
    old_rows = _manifest(old_dir)
    new_rows, added = _added_rows(examples_dir, old_rows, excluded_from_train(validation_dir))
    res = _compared(DriftResult(checked=True, **kw), old_rows, new_rows, added)
    metrics = {"label_linf": _label_measure(cfg, old_rows, new_rows, P, rng)}
    if res.compared["added_distinct"] < MIN_NEW:
        res.reasons.append(
            f"{res.compared['added_distinct']} distinct image(s) added since served version "
            f"{version}: fewer than {MIN_NEW}, image statistics, embeddings and confidence not "
            "compared"
        )
    else:
        held_splits = held_out_splits(destination, model_name)
        sides = _draw_samples(cfg, res, old_dir, old_rows, examples_dir, added, rng, held_splits)
        metrics.update(_stat_measures(cfg, sides, P, rng))
        cache: dict = {}
        embedded = dict(
            base=base,
            image_size=image_size,
            feature_store=feature_store,
            cache=cache,
            geometry=geometry,
        )
        metrics["embedding_mmd2"] = _embedding_measure(cfg, sides, embedded, P, rng)
        served_model = _served_scores(
            destination, model_name, version, feature_store, cache, image_size
        )
        confidence = _confidence_measure(cfg, sides, served_model, P, rng)
        if confidence:
            metrics["confidence_js"] = confidence
    _conclude(res, metrics, cfg.action, t0)
    _write(out_dir, res)
    _say_and_block(res, version, out_dir)
    return res


def _why_not_checked(cfg: DriftConfig, destination: str, model_name: str):
    """Why drift is not checked ('' when it is), the served snapshot, and what to record."""
    if not cfg.enabled:
        return "drift.enabled is false: not checked", None, {}
    served = served_snapshot(destination, model_name)
    if served is None:
        where = _join(destination, model_name)
        return f"nothing served yet at {where} (a first run): not checked", None, {}
    version, _, old_dir = served
    kw = {"served_version": version, "served_examples": old_dir}
    if not old_dir:
        return f"served version {version} records no data snapshot", served, kw
    if not _exists(_join(old_dir, "manifest.jsonl")):
        why = f"served version {version}'s data snapshot {old_dir} is gone: not checked"
        return why, served, kw
    return "", served, kw


def _added_rows(examples_dir: str, old_rows: list[dict], dropped) -> tuple[list, list]:
    """The new snapshot's training rows, and those of them the served snapshot lacks."""
    new_rows = [r for r in _manifest(examples_dir) if r["sha256"] not in dropped]
    old_shas = {r["sha256"] for r in old_rows}
    return new_rows, [r for r in new_rows if r["sha256"] not in old_shas]


def _compared(res: DriftResult, old_rows, new_rows, added) -> DriftResult:
    """The images per side, and the exact copies among the added ones (a reason when any)."""
    res.compared = {"served_snapshot": len(old_rows), "new_snapshot": len(new_rows)}
    res.compared["added"] = len(added)  # images, as training counts them
    res.compared["added_distinct"] = len({r["sha256"] for r in added})
    res.duplicates = _duplicates(added)
    if res.duplicates["copies"]:
        d = res.duplicates
        res.reasons.append(
            f"duplicates: the {len(added)} added images are {d['distinct']} distinct ones; "
            f"{d['copies']} are exact copies of another added image (largest group: "
            f"{d['largest']['count']} x sha256 {d['largest']['sha256'][:12]} in class "
            f"'{d['largest']['label']}')"
        )
    return res


def _label_measure(cfg: DriftConfig, old_rows, new_rows, P, rng) -> dict:
    """Labels: the whole snapshots, as the model is trained on the whole snapshot."""
    value, p, shift = label_linf(
        [r["label"] for r in old_rows], [r["label"] for r in new_rows], P, rng
    )
    return _measure(
        value,
        cfg.max_label_linf,
        p,
        value > cfg.max_label_linf and p < cfg.significance,
        share_change=shift,
    )


@dataclass
class _Sides:
    """The drawn samples (served snapshot, added images, served held-out) and their bytes."""

    old_dir: str
    examples_dir: str
    old: list[dict]
    new: list[dict]
    held: list[dict]
    enc_old: dict[str, bytes]
    enc_new: dict[str, bytes]


def _draw_samples(
    cfg, res: DriftResult, old_dir, old_rows, examples_dir, added, rng, held_splits
) -> _Sides:
    """Up to drift.sample images per side, drawn with the seeded rng, and their bytes; the
    served model's held-out images from `held_splits` (the splits it did not train on)."""
    old_s = _sample(old_rows, cfg.sample, rng)
    new_s = _sample(added, cfg.sample, rng)
    held = _sample([r for r in old_rows if r["split"] in held_splits], cfg.sample, rng)
    res.compared.update(old_sample=len(old_s), new_sample=len(new_s), old_held_out=len(held))
    enc_old = read_encoded(old_dir, {r["sha256"] for r in old_s + held})
    enc_new = read_encoded(examples_dir, {r["sha256"] for r in new_s})
    return _Sides(old_dir, examples_dir, old_s, new_s, held, enc_old, enc_new)


def _stat_measures(cfg: DriftConfig, sides: _Sides, P, rng) -> dict:
    """Per-image statistics of the added images vs the served snapshot, one measure each."""
    cols_old = _stat_columns(sides.old, sides.enc_old)
    cols_new = _stat_columns(sides.new, sides.enc_new)
    out = {}
    for s in STATS:
        value, p = bucket_js(cols_old[s], cols_new[s], P, rng)
        out[f"js_{s}"] = _measure(
            value,
            cfg.max_stat_js,
            p,
            value > cfg.max_stat_js and p < cfg.significance,
            old_median=round(float(np.median(cols_old[s])), 3),
            new_median=round(float(np.median(cols_new[s])), 3),
        )
    return out


def _embedding_measure(cfg: DriftConfig, sides: _Sides, embedded: dict, P, rng) -> dict:
    """Pooled base features of both samples: MMD with a permutation p-value."""
    x_old = embeddings(sides.old_dir, sides.old, **embedded)
    x_new = embeddings(sides.examples_dir, sides.new, **embedded)
    mmd2, p, bandwidth = mmd_test(x_old, x_new, P, rng)
    cache = embedded["cache"]
    return _measure(
        mmd2,
        cfg.embedding_p,
        p,
        p < cfg.embedding_p,
        threshold_is="p_value",
        bandwidth=round(bandwidth, 4),
        features_computed=cache["computed"],
        features_reused=cache["reused"],
    )


def _confidence_measure(cfg: DriftConfig, sides: _Sides, served, P, rng) -> dict | None:
    """The served model's top score on the added images vs on its own held-out ones."""
    c_old = confidences(
        served,
        [
            (r["sha256"], sides.enc_old[r["sha256"]])
            for r in sides.held
            if r["sha256"] in sides.enc_old
        ],
    )
    c_new = confidences(
        served,
        [
            (r["sha256"], sides.enc_new[r["sha256"]])
            for r in sides.new
            if r["sha256"] in sides.enc_new
        ],
    )
    if not (len(c_old) and len(c_new)):
        return None
    value, p = bucket_js(c_old, c_new, P, rng)
    return _measure(
        value,
        cfg.max_confidence_js,
        p,
        value > cfg.max_confidence_js and p < cfg.significance,
        old_mean=round(float(c_old.mean()), 4),
        new_mean=round(float(c_new.mean()), 4),
        scores=served.counts(),  # seeded / stored / computed through the served model
    )


def _conclude(res: DriftResult, metrics: dict, action: str, t0: float) -> None:
    """The flagged measures' reasons, the verdict, and the flat KFP metrics."""
    res.metrics = metrics
    for name, m in metrics.items():
        if m["flagged"]:
            if name == "embedding_mmd2":
                why = f"p {m['p_value']:.4f} < {m['threshold']}"
            else:
                why = f"{m['value']:.3f} > {m['threshold']} (p {m['p_value']:.4f})"
            res.reasons.append(f"{name}: {why}")
    res.flagged = any(m["flagged"] for m in metrics.values())
    res.blocked = res.flagged and action == "block"
    res.kfp_metrics = {"drift_checked": 1, "drift_flagged": int(res.flagged)}
    for name, m in metrics.items():
        res.kfp_metrics[f"drift_{name}"] = m["value"]
        if m["p_value"] is not None:
            res.kfp_metrics[f"drift_{name}_p"] = m["p_value"]
    res.seconds = round(time.time() - t0, 2)


def _say_and_block(res: DriftResult, version: int, out_dir: str) -> None:
    """Log the verdict; raise DriftBlocked (after drift.json is written) when it blocks."""
    where = (
        f"{res.compared['added']} added image(s) ({res.compared['added_distinct']} distinct) vs "
        f"served version {version}'s snapshot"
    )
    if res.flagged:
        log(f"drift: FLAGGED ({where}): " + "; ".join(res.reasons), level="warn")
    else:
        log(f"drift: no drift beyond the thresholds ({where}; {res.seconds:.1f}s)", level="ok")
    if res.blocked:
        raise DriftBlocked(
            "drift check flagged the new data and drift.action is block, so this run stops "
            "before anything is pushed: "
            + "; ".join(res.reasons)
            + f" (details: {_join(out_dir, RESULT_FILE)}; to push anyway set drift.action=warn)"
        )
