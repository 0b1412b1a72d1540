"""The fine-tune guard on small real data: one val split against k-fold cross-validation.

    python -m benchmarks.guard_cv [--datasets textures,cats_dogs,flowers_small] [--work DIR]
                                  [--lock FILE] [--rescore]

For each dataset under 1,000 training images, the manual config of configs/recipes/ with a
gentle fine-tuning of the top stage (from block_13_expand, Adam 1e-4, 3 epochs, 128 px) is
run twice with `graft run`:
  guarded: fine_tune.guard_rule beyond_noise, 5 folds (the decision and both intervals);
  unguarded: fine_tune.guard false (the fine-tuned model always kept), so evaluate scores the
    fine-tuned model against the head-only one on the test split, paired per image.
The row says whether each rule's decision agrees with the test: keeping fine-tuning is
right when its paired test gain is beyond the noise, keeping the head is right when it is
not. `cv_cost` is the guarded fine_tune step's seconds over the unguarded one's (same run,
same machine). flowers_small: the first 300 photos of each flowers class (sorted names,
symlinked under --work), split 40/10/50 so that 600 train and a 750-image test set. `--rescore`
re-reads the runs already in --work. Results: benchmarks/results/guard_cv.json, one JSON
line per dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, RESULTS, machine

SHARED = Path(os.environ.get("GRAFT_SHARED", REPO.parent / "shared"))
FINE_TUNE = [
    "recipe=manual",
    "data.image_size=128",
    "fine_tune.enabled=true",
    "fine_tune.unfreeze.mode=from_layer",
    "fine_tune.unfreeze.from_layer=block_13_expand",
    "fine_tune.optimizer=adam",
    "fine_tune.learning_rate=0.0001",
    "fine_tune.epochs=3",
]


SMALL_PER_CLASS = 300


def _flowers_small(work: Path) -> Path:
    """A subset of flowers as symlinks (never a copy): SMALL_PER_CLASS photos per class."""
    root = work / "flowers_small_images"
    for cls in sorted(p for p in (SHARED / "datasets" / "flowers").iterdir() if p.is_dir()):
        (root / cls.name).mkdir(parents=True, exist_ok=True)
        for img in sorted(cls.iterdir())[:SMALL_PER_CLASS]:
            link = root / cls.name / img.name
            if not link.exists():
                link.symlink_to(img)
    return root


def _setup(dataset: str, work: Path) -> tuple[str, list[str]]:
    """The config file and the dataset's own overrides."""
    if dataset == "flowers_small":
        data = _flowers_small(work)
        sets = [f"data.path={data}", "data.splits.train=0.4", "data.splits.test=0.5"]
        return "flowers", [*sets, "data.splits.val=0.1", "data.shards=2"]
    return dataset, []


def _run(dataset: str, tag: str, sets: list[str], work: Path, lock: str, rescore: bool) -> dict:
    config, own = _setup(dataset, work)
    config = REPO / "configs" / "recipes" / f"{config}.yaml"
    cmd = [sys.executable, "-m", "graft", "run", "--config", str(config), "--run-id", tag]
    cmd = (["flock", lock] if lock else []) + cmd
    for s in [
        f"runner.run_root={work / dataset / 'runs'}",
        f"features.store={work / dataset / 'features'}",
        f"push.destination={work / dataset / 'models' / tag}",
        *FINE_TUNE,
        *own,
        *sets,
    ]:
        cmd += ["--set", s]
    log = work / f"{tag}.log"
    if not rescore:
        with open(log, "w") as f:
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode:
                raise RuntimeError(f"{tag} failed; see {log}")
    steps = json.loads((work / dataset / "runs" / tag / "run.json").read_text())["steps"]
    return {
        "fine_tune": json.loads((Path(steps["fine_tune"]["output"]) / "result.json").read_text()),
        "evaluation": json.loads(
            (Path(steps["evaluate"]["output"]) / "evaluation.json").read_text()
        ),
    }


def _interval(g: dict | None) -> list | None:
    return None if not g else [round(g["difference"], 4), round(g["low"], 4), round(g["high"], 4)]


def _width(g: dict) -> float:
    return g["high"] - g["low"]


def run_one(dataset: str, work: Path, lock: str = "", rescore: bool = False) -> dict:
    rule = ["fine_tune.guard_rule=beyond_noise"]
    guarded = _run(dataset, f"{dataset}-guarded", rule, work, lock, rescore)
    plain = _run(dataset, f"{dataset}-unguarded", ["fine_tune.guard=false"], work, lock, rescore)
    g = guarded["fine_tune"]["extra"]
    test = plain["evaluation"]["comparisons"]["fine-tuned - head only"]
    val_only = g.get("val_only_gain") or g["val_gain"]
    test_says_tune = test["low"] > 0
    row = {
        "dataset": dataset,
        "train_images": g["val_gain"]["n"] - val_only["n"],
        "val_only_gain": _interval(val_only),
        "val_n": val_only["n"],
        "cv_gain": _interval(g["val_gain"]),
        "cv_n": g["val_gain"]["n"],
        "evidence": g.get("gain_evidence"),
        "kept": g["kept"],
        "test_gain": _interval(test),
        "test_n": test["n"],
        "cv_agrees_with_test": (g["kept"] == "fine_tuned") == test_says_tune,
        "val_only_agrees_with_test": (val_only["low"] > 0) == test_says_tune,
        # guard_rule better: fine-tuning kept on any val gain
        "better_rule_agrees_with_test": (val_only["difference"] > 0) == test_says_tune,
        "interval_narrowing": round(_width(val_only) / _width(g["val_gain"]), 2),
        "cv_cost": round(guarded["fine_tune"]["seconds"] / plain["fine_tune"]["seconds"], 2),
        "fine_tune_seconds": plain["fine_tune"]["seconds"],
        "guarded_fine_tune_seconds": guarded["fine_tune"]["seconds"],
        "folds": (g.get("cross_validation") or {}).get("folds"),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "folds"}), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="textures,cats_dogs,flowers_small")
    ap.add_argument("--rescore", action="store_true", help="re-read the runs in --work")
    ap.add_argument("--work", default="/tmp/graft-bench-guard-cv")
    ap.add_argument("--lock", default="", help="flock this file around each run")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = []
    for ds in args.datasets.split(","):
        source = SHARED / "datasets" / ("flowers" if ds == "flowers_small" else ds)
        if not source.is_dir():
            print(f"skipped {ds}: {source} is absent", file=sys.stderr)
            continue
        rows.append(run_one(ds, work, args.lock, args.rescore))
    out = {"machine": machine(), "seconds": round(time.time() - t0, 1), "rows": rows}
    out["rescored"] = args.rescore  # read back from runs made earlier: seconds is not theirs
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "guard_cv.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
