"""How far the LR range test's pick moves between runs: one run against the median of three.

    python -m benchmarks.lr_find [--datasets flowers,chest_xray] [--runs 8] [--work DIR]

Per dataset: ingest and a head stage as recipe auto plans them for large data (MobileNetV2
alpha 1.0 from ../shared, flowers at 128 px and chest_xray at 224, crop, the stronger
augmentation, the base unfrozen from block_6_depthwise with per-stage rates), then `--runs`
single range tests (fine_tune's: 60 batches of 32, 1e-7 to 0.1) from the same weights on fresh
batches. Figures: the standard deviation of log10(the rate where the loss diverges) over the
single runs (the baseline), and over every triple of them read on their per-batch median curve
(what fine_tune.lr_find_repeats: 3 does); ratio = triples / single. Curves are kept in the
work folder. Results: benchmarks/results/lr_find.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, SHARED, report

PLAN = {  # recipe auto's choices for these large sets (flowers: 128 px, the photos' size)
    "flowers": {"size": 128},
    "chest_xray": {"size": 224},
}
FROM = "block_6_depthwise"
STRONGER = {"augment.rotation": 0.1, "augment.zoom": 0.2, "augment.contrast": 0.2}


def head_run(dataset: str, work: Path) -> dict:
    """ingest .. train_head with the plan's settings; the run record."""
    sets = {
        "runner.run_root": work / "runs",
        "features.store": work / "features",
        "push.destination": work / "models",
        "data.image_size": PLAN[dataset]["size"],
        "data.resize": "crop",
        "augment.translation": 0.1,
        **STRONGER,
    }
    config = REPO / "configs" / "recipes" / f"{dataset}.yaml"
    base = [sys.executable, "-m", "graft", "run", "-c", str(config), "--run-id", dataset]
    for k, v in sets.items():
        base += ["--set", f"{k}={v}"]
    log = work / f"{dataset}.log"
    with open(log, "w") as f:
        for step in ("ingest", "validate", "drift", "advise", "train_head"):
            proc = subprocess.run([*base, "--only", step], stdout=f, stderr=subprocess.STDOUT)
            if proc.returncode:
                raise RuntimeError(f"{dataset}: {step} failed; see {log}")
    return json.loads((work / "runs" / dataset / "run.json").read_text())


STEPS = 60  # batches per range test, as fine_tune's (advise.LR_FIND_STEPS)


def curves(run: dict, size: int, runs: int) -> list[dict]:
    """`runs` single range tests from the head model, each on fresh shuffled batches."""
    from graft.components import data as gdata
    from graft.components import layerwise as glayer
    from graft.components import model as gmodel
    from graft.components.train import load_model
    from graft.core.config import AugmentConfig, UnfreezeConfig

    examples = run["steps"]["ingest"]["output"]
    model = load_model(os.path.join(run["steps"]["train_head"]["output"], "model.keras"))
    gmodel.unfreeze(model, UnfreezeConfig(mode="from_layer", from_layer=FROM))
    depth = glayer.depths(model)
    aug = AugmentConfig(translation=0.1, **{k.split(".")[1]: v for k, v in STRONGER.items()})
    ds = gdata.image_dataset(
        examples, "train", size, 32, shuffle=True, augment=aug, geometry=gdata.Geometry("crop")
    )
    out = []
    for i in range(runs):
        t0 = time.time()
        found = glayer.range_test(
            model, ds, optimizer="adam", momentum=0.9, steps=STEPS, depth_by_path=depth, decay=0.4
        )
        found["seconds"] = round(time.time() - t0, 1)
        print(f"  run {i + 1}/{runs}: diverged at {found['diverged_rate']}", flush=True)
        out.append(found)
    return out


def spread(found: list[dict]) -> dict:
    """sd of log10(diverged rate): single runs, and every triple read on its median curve."""
    from graft.components.layerwise import _median_curve, on_grid, pick_rate, planned_rates

    single = [f["diverged_rate"] for f in found]
    triples = []
    rates = planned_rates(STEPS)  # range_test's grid: a run's own rates repeat at a skipped step
    for c in itertools.combinations(found, 3):
        runs = [
            (
                on_grid(f["rates"], [math.inf if v is None else v for v in f["losses"]], rates),
                f["runs"][0]["stopped"],
            )
            for f in c
        ]
        curve = _median_curve(runs)
        triples.append(pick_rate(rates[: len(curve)], curve)["diverged_rate"])

    def sd(v):
        got = [x for x in v if x]
        return round(float(np.std(np.log10(got))), 3) if len(got) > 1 else None

    return {
        "single_sd_log10": sd(single),
        "median_of_3_sd_log10": sd(triples),
        "single_range": [min(x for x in single if x), max(x for x in single if x)],
        "median_of_3_range": [min(x for x in triples if x), max(x for x in triples if x)],
        "undiverged_single": sum(x is None for x in single),
        "undiverged_median_of_3": sum(x is None for x in triples),
        "runs": len(found),
        "seconds_per_run": round(float(np.median([f["seconds"] for f in found])), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="flowers,chest_xray")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--work", default="/tmp/graft-bench-lr-find")
    args = ap.parse_args()
    rows = {}
    for dataset in args.datasets.split(","):
        if not (SHARED / "datasets" / dataset).exists():
            sys.exit(f"{SHARED / 'datasets' / dataset} is missing (set GRAFT_SHARED)")
        work = Path(args.work) / dataset
        work.mkdir(parents=True, exist_ok=True)
        print(f"{dataset}: head stage, then {args.runs} range tests", flush=True)
        found = curves(head_run(dataset, work), PLAN[dataset]["size"], args.runs)
        (work / "curves.json").write_text(json.dumps(found))
        rows[dataset] = spread(found)
    single = float(np.mean([r["single_sd_log10"] for r in rows.values()]))
    pooled = float(np.mean([r["median_of_3_sd_log10"] for r in rows.values()]))
    report(
        "lr_find",
        pooled,
        single,
        "sd of log10(divergence rate)",
        "median of 3 runs vs one: ratio < 1",
        datasets=rows,
    )


if __name__ == "__main__":
    main()
