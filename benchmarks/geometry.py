"""Input geometry (data.resize: squash, crop, pad) on every shared dataset, frozen features.

    python -m benchmarks.geometry [--datasets flowers,cats_dogs,textures,chest_xray]
                                  [--cap 1000] [--size 224] [--seeds 3]

For each dataset in ../shared/datasets: at most --cap images (stratified by class, fixed
seed), ImageNet MobileNetV2 alpha 1.0 (the weights file in ../shared/keras/models) at --size
px, pooled features of the last layer for each geometry through Graft's own
`decode_and_resize`, and advise's k-fold logistic-regression probe (`advise.probe`: 5 folds,
the same folds for every geometry; chest_xray's folds keep a patient's X-rays together) for
--seeds fold seeds. Each image's hits are averaged over the seeds; crop and pad are paired
with squash per image (95% bootstrap interval, n images). `advise` is the mode advise's rule
(`plan_geometry`: another mode than the base's own, crop for these ImageNet weights, only when
its paired gain over crop is above 0) picks from
the seed-0 probes, as the advise step would at this size and layer. One JSON line;
benchmarks/results/geometry.json.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from benchmarks.common import MOBILENET_V2, SHARED, report

WEIGHTS = MOBILENET_V2
DATASETS = ("flowers", "cats_dogs", "textures", "chest_xray")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}


def images_of(name: str) -> tuple[list[Path], list[str], list[str]]:
    """(files, class labels, groups) of a shared dataset: class folders, also under splits;
    chest_xray's groups are its patients (manifest.csv), elsewhere each image its own."""
    root = SHARED / "datasets" / name
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    labels = [p.parent.name for p in files]
    patients = {}
    if (root / "manifest.csv").exists():
        with open(root / "manifest.csv", newline="") as f:
            patients = {row["path"]: row["patient"] for row in csv.DictReader(f)}
    groups = [patients.get(str(p.relative_to(root)), str(p)) for p in files]
    return files, labels, groups


def features(step, files: list[Path], size: int, geometry, batch: int = 32) -> np.ndarray:
    """Pooled features of `files` shaped by `geometry`, through the traced `step`."""
    import tensorflow as tf

    from graft.components import data as gdata

    ds = tf.data.Dataset.from_tensor_slices([str(p) for p in files])
    ds = ds.map(
        lambda path: gdata.decode_and_resize(tf.io.read_file(path), size, geometry),
        num_parallel_calls=2,
    ).batch(batch)
    out = []
    for x in ds:
        f = step(x)
        out.append((f[0] if isinstance(f, (list, tuple)) else f).numpy())
    return np.concatenate(out)


def run_dataset(name: str, step, *, cap: int, size: int, seeds: int) -> dict:
    from graft.components import data as gdata
    from graft.components.advise import Plan, _sample, plan_geometry, probe
    from graft.components.stats import paired_difference, wilson

    t0 = time.time()
    files, labels, groups = images_of(name)
    classes = sorted(set(labels))
    y_all = np.array([classes.index(lab) for lab in labels])
    idx = _sample(y_all, cap)
    files = [files[i] for i in idx]
    y, g = y_all[idx], np.array([groups[i] for i in idx])
    grouped = len(set(g.tolist())) < len(g)
    hits: dict[str, np.ndarray] = {}  # mode -> [seeds, n] out-of-fold hits
    seconds: dict[str, float] = {}
    for mode in gdata.RESIZE_MODES:
        t = time.time()
        x = features(step, files, size, gdata.Geometry(mode))
        seconds[mode] = round(time.time() - t, 1)
        hits[mode] = np.stack(
            [probe(x, y, 5, seed=s, groups=g if grouped else None) for s in range(seeds)]
        )
        print(f"# {name} {mode}: {hits[mode].mean():.3f} ({seconds[mode]}s features)", flush=True)
    per_image = {m: h.mean(axis=0) for m, h in hits.items()}
    modes = {}
    for mode, h in per_image.items():
        lo, hi = wilson(int(round(h.sum())), len(h))
        modes[mode] = {
            "accuracy": round(float(h.mean()), 4),
            "low": round(lo, 4),
            "high": round(hi, 4),
        }
        if mode != "squash":
            d = paired_difference(h, per_image["squash"])
            modes[mode]["vs_squash"] = {
                k: round(d[k], 4) for k in ("difference", "low", "high")
            } | {"n": d["n"]}
    # advise's rule on one seed's 5-fold probes (what the advise step measures), from the
    # ImageNet base's own transform, crop (advise.base_geometry)
    default = "crop"
    geo = {"size": size, "layer": "out_relu", "n": len(y), "folds": 5, "modes": {}}
    geo["default"] = default
    for mode, h in hits.items():
        geo["modes"][mode] = {"accuracy": float(h[0].mean()), "low": 0.0, "high": 1.0}
        if mode != default:
            gain = paired_difference(h[0], hits[default][0])
            gain["low90"] = paired_difference(h[0], hits[default][0], level=0.80)["low"]
            geo["modes"][mode]["gain"] = gain
    p = Plan("auto", {}, {}, [])
    plan_geometry(p, geo)
    return {
        "images": len(y),
        "of": len(labels),
        "classes": len(classes),
        "grouped_folds": grouped,
        "modes": modes,
        "advise": p.overrides["data.resize"],
        "advise_reason": p.decisions[-1].reason,
        "feature_seconds": seconds,
        "seconds": round(time.time() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--cap", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()

    import tensorflow as tf

    from graft.components import features as gfeat
    from graft.components import model as gmodel
    from graft.core.config import BaseConfig

    base = gmodel.build_base(BaseConfig(weights=str(WEIGHTS)), args.size)
    extractor = gfeat.pooled_extractor(
        base, gmodel.BackbonePreprocess("mobilenet_v2"), [base.layers[-1].name]
    )
    step = tf.function(  # traced once for every batch shape
        lambda x: extractor(x, training=False),
        input_signature=[tf.TensorSpec([None, args.size, args.size, 3], tf.float32)],
    )
    t0 = time.time()
    rows = {}
    for name in args.datasets.split(","):
        if not (SHARED / "datasets" / name).is_dir():
            print(f"# {name}: not in {SHARED / 'datasets'}, skipped", flush=True)
            continue
        rows[name] = run_dataset(name, step, cap=args.cap, size=args.size, seeds=args.seeds)
    squash = float(np.mean([r["modes"]["squash"]["accuracy"] for r in rows.values()]))
    chosen = float(np.mean([r["modes"][r["advise"]]["accuracy"] for r in rows.values()]))
    losses = [
        f"{n}: {m}"
        for n, r in rows.items()
        for m, v in r["modes"].items()
        if m == r["advise"] and m != "squash" and v["vs_squash"]["high"] < 0
    ]
    report(
        "geometry",
        chosen,
        squash,
        f"mean probe accuracy, {len(rows)} datasets",  # value: advise's mode; baseline: squash
        "none loses beyond its interval",  # with advise's mode, paired against squash
        base=f"mobilenet_v2 alpha 1.0, ImageNet weights, {args.size} px, last layer pooled",
        probe="advise.probe: standardised logistic regression, 5-fold, "
        f"{args.seeds} fold seeds averaged per image; paired bootstrap over images",
        cap=f"at most {args.cap} images per dataset, stratified by class (seed 0)",
        advised_losses=losses,
        datasets=rows,
        seconds=round(time.time() - t0, 1),
    )


if __name__ == "__main__":
    main()
