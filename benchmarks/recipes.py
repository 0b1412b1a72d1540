"""Recipes on every real dataset: head-only, seed, the best manual config, and auto.

    python -m benchmarks.recipes [--datasets flowers,cats_dogs,textures,chest_xray]
                                 [--recipes head-only,seed,manual,auto] [--work DIR]

Each dataset has one config in configs/recipes/ (its data section and the best manual recipe
found for it, MobileNetV2 alpha 1.0 from ../shared). Every (dataset, recipe) is one
`graft run` in its own process with its own feature store and push destination, so no run
reuses another's features or is compared with another's model. Ingest and validate are shared
(the runner's cache) and not counted: `seconds` is the wall time of the steps after validate.
Test accuracy comes with its 95% Wilson interval and the test size. Results:
benchmarks/results/recipes.json (one object per dataset x recipe) and one JSON line per run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, RESULTS, machine

DATASETS = ("flowers", "cats_dogs", "textures", "chest_xray")
RECIPES = ("seed", "manual", "auto")  # and head-only, from the manual run (below)
SHARED = Path(os.environ.get("GRAFT_SHARED", REPO.parent / "shared"))
NOT_TIMED = ("ingest", "validate", "drift")  # shared by every recipe of a dataset


def recipe_overrides(recipe: str) -> list[str]:
    if recipe == "head-only":  # its own run (--recipes head-only); by default read off manual's
        return ["recipe=manual", "fine_tune.enabled=false"]
    # seed and auto start from the base's own input size, not the manual config's choice: the
    # seed's recipe is 224 px, and auto decides whether a smaller input pays. advise.keep=[]:
    # the file's hand-set sections are the manual arm's, not settings the plan must keep
    if recipe in ("seed", "auto"):
        return [f"recipe={recipe}", "data.image_size=224", "advise.keep=[]"]
    if recipe.startswith("manual@"):  # the manual config at another input size (an ablation)
        return ["recipe=manual", f"data.image_size={int(recipe.split('@')[1])}"]
    return [f"recipe={recipe}"]


def head_only_row(manual: dict, steps: dict, ev: dict) -> dict:
    """head-only, from the manual run: its head stage's model, scored by the same evaluate on
    the same test images; seconds: the steps up to the head stage, plus evaluate."""
    acc, lo, hi = ev["intervals"]["head_only"]["accuracy"]
    spent = ("advise", "train_head", "evaluate", "export", "push")
    return {
        **manual,
        "recipe": "head-only",
        "test_accuracy": round(acc, 4),
        "ci_low": round(lo, 4),
        "ci_high": round(hi, 4),
        "seconds": round(sum(steps[k]["seconds"] or 0 for k in spent if k in steps), 1),
        "wall_seconds": None,
        "kept": "head",
        "fine_tune_epochs": 0,
        "from_run": manual["run_id"],
    }


def _kept_hits(evaluate_dir: Path) -> dict[str, bool]:
    with open(evaluate_dir / "test_predictions.csv") as f:
        return {r["sha256"]: r["candidate"] == r["label"] for r in csv.DictReader(f)}


def paired_vs_manual(dataset: str, work: Path, evaluate_dir: Path) -> dict | None:
    """This run's kept model minus the manual run's, on the same test images (the runs share
    ingest), with a paired 95% bootstrap interval: the manual run in `work`, else its stored
    per-image hits (results/recipes_hits); None when there is neither."""
    from graft.components.stats import paired_difference

    manual = work / dataset / "runs" / f"{dataset}-manual" / "run.json"
    other = None
    if manual.exists():
        other = Path(json.loads(manual.read_text())["steps"]["evaluate"]["output"])
    stored = HITS / f"{dataset}-manual.json"
    if other is not None and (other / "test_predictions.csv").exists():
        b = _kept_hits(other)
    elif stored.exists():
        b = {s: bool(h) for s, h in json.loads(stored.read_text()).items()}
    else:
        return None
    a = _kept_hits(evaluate_dir)
    shared = sorted(set(a) & set(b))
    d = paired_difference(np.array([a[s] for s in shared]), np.array([b[s] for s in shared]))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


HITS = RESULTS / "recipes_hits"  # per run: {test image sha256: 1/0, the kept model right}


def paired_vs_previous(tag: str, evaluate_dir: Path) -> dict | None:
    """This run's kept model minus the last committed run of the same (dataset, recipe), on
    the test images both scored, paired; then this run's hits replace the stored ones. None
    when no earlier run's hits are stored."""
    from graft.components.stats import paired_difference

    path = HITS / f"{tag}.json"
    now = {s: int(h) for s, h in _kept_hits(evaluate_dir).items()}
    before = json.loads(path.read_text()) if path.exists() else None
    HITS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(now, sort_keys=True) + "\n")
    if not before:
        return None
    shared = sorted(set(now) & set(before))
    d = paired_difference(np.array([now[s] for s in shared]), np.array([before[s] for s in shared]))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def run_one(dataset: str, recipe: str, work: Path, lock: str = "") -> list[dict]:
    config = REPO / "configs" / "recipes" / f"{dataset}.yaml"
    tag = f"{dataset}-{recipe}"
    sets = [
        f"runner.run_root={work / dataset / 'runs'}",
        f"features.store={work / dataset / 'features' / recipe}",
        f"push.destination={work / dataset / 'models' / recipe}",
        *recipe_overrides(recipe),
    ]
    # --no-cache: a re-run measures the code as it is now (ingest re-runs too, and is not timed)
    cmd = [sys.executable, "-m", "graft", "run", "--config", str(config), "--run-id", tag]
    cmd.append("--no-cache")
    cmd = (["flock", lock] if lock else []) + cmd  # one heavy job at a time on a shared machine
    for s in sets:
        cmd += ["--set", s]
    log = work / f"{tag}.log"
    # a first run: an earlier bench's features would make this one a re-run, and faster, and
    # an earlier bench's pushed model would be its served baseline (drift, the baseline's scores)
    shutil.rmtree(work / dataset / "features" / recipe, ignore_errors=True)
    shutil.rmtree(work / dataset / "models" / recipe, ignore_errors=True)
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    wall = time.time() - t0
    if proc.returncode:
        raise RuntimeError(f"{tag} failed ({proc.returncode}); see {log}")
    run = json.loads((work / dataset / "runs" / tag / "run.json").read_text())
    steps = run["steps"]
    ev = json.loads((Path(steps["evaluate"]["output"]) / "evaluation.json").read_text())
    acc, lo, hi = ev["intervals"]["candidate"]["accuracy"]
    head, hlo, hhi = ev["intervals"]["head_only"]["accuracy"]
    advice = json.loads((Path(steps["advise"]["output"]) / "advice.json").read_text())
    ft = json.loads((Path(steps["fine_tune"]["output"]) / "result.json").read_text())
    row = {
        "dataset": dataset,
        "recipe": recipe,
        "run_id": tag,
        "test_accuracy": round(acc, 4),
        "ci_low": round(lo, 4),
        "ci_high": round(hi, 4),
        "test_n": ev["test_examples"],
        "head_only_test_accuracy": round(head, 4),
        "seconds": round(sum(s["seconds"] or 0 for k, s in steps.items() if k not in NOT_TIMED), 1),
        "wall_seconds": round(wall, 1),
        "kept": ft["extra"].get("kept"),
        "fine_tune_epochs": ft["epochs_run"],
        "cell": advice.get("cell"),
        "chose": {d["what"]: d["choice"] for d in advice["decisions"]},
        "image_size": run["config"]["data"]["image_size"]
        if recipe != "auto"
        else advice["overrides"].get("data.image_size"),
        # each row its own: rows from several runs, days and machines share the file
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
    }
    if recipe != "manual":
        row["vs_manual"] = paired_vs_manual(dataset, work, Path(steps["evaluate"]["output"]))
    row["vs_previous"] = paired_vs_previous(tag, Path(steps["evaluate"]["output"]))
    rows = [row]
    if recipe == "manual":
        rows.append(head_only_row(row, steps, ev))
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """The README table: one line per dataset x recipe, in dataset then recipe order."""
    out = [
        "| dataset | recipe | test accuracy [95%] | n | seconds | fine-tune | auto chose |",
        "|---|---|---|---|---|---|---|",
    ]
    order = {r: i for i, r in enumerate(("head-only", "seed", "manual", "auto"))}

    def key(r):  # manual@SIZE after manual
        return DATASETS.index(r["dataset"]), order[r["recipe"].split("@")[0]] + ("@" in r["recipe"])

    for r in sorted(rows, key=key):
        chose = ""
        if r["recipe"] == "auto":
            c = r["chose"]
            chose = (
                f"{r['cell']['size']} + {r['cell']['similarity']}: {c['features']}, "
                f"{c['input size']} px, {c['head']}, fine-tune {c['fine-tune']}"
            )
        ft = f"{r['fine_tune_epochs']} ep, kept {r['kept']}" if r["fine_tune_epochs"] else "none"
        out.append(
            f"| {r['dataset']} | {r['recipe']} | {r['test_accuracy']:.3f} "
            f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['test_n']} | {r['seconds']:.0f} | "
            f"{ft} | {chose} |"
        )
    return "\n".join(out)


def goals(rows: list[dict]) -> str:
    """Auto against the issue's goals, per dataset: accuracy gaps (with the head-only's and
    auto's intervals overlapping or not) and the time ratio to manual."""
    out = [
        "| dataset | auto - head-only | auto - seed | auto - manual | same images, paired | "
        "auto / manual time | auto - previous auto, paired |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(r["dataset"], r["recipe"]): r for r in rows}
    for d in DATASETS:
        auto = by.get((d, "auto"))
        if not auto:
            continue
        cells = []
        for other in ("head-only", "seed", "manual"):
            o = by.get((d, other))
            cells.append(f"{auto['test_accuracy'] - o['test_accuracy']:+.3f}" if o else "not run")
        vs = auto.get("vs_manual")
        cells.append(
            f"{vs['difference']:+.3f} [{vs['low']:+.3f}, {vs['high']:+.3f}]" if vs else "not run"
        )
        m = by.get((d, "manual"))
        cells.append(f"{auto['seconds'] / m['seconds']:.2f}" if m else "not run")
        prev = auto.get("vs_previous")
        cells.append(
            f"{prev['difference']:+.3f} [{prev['low']:+.3f}, {prev['high']:+.3f}] "
            f"({prev['a_only']} won, {prev['b_only']} lost)"
            if prev
            else "no earlier run stored"
        )
        out.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(out)


GOAL = "the accuracy issue's (met)"


def goals_met(rows: list[dict]) -> dict[str, bool]:
    """The accuracy issue's goals, judged on the rows' test accuracies (each auto run against
    its dataset's manual and head-only rows) and wall seconds."""
    by = {(r["dataset"], r["recipe"]): r for r in rows}
    autos = {d: by[(d, "auto")] for d in DATASETS if (d, "auto") in by}
    gaps = {  # rounded: 0.75 - 0.76 is -0.010000000000000009 in floats
        d: round(a["test_accuracy"] - by[(d, "manual")]["test_accuracy"], 4)
        for d, a in autos.items()
        if (d, "manual") in by
    }
    heads = {d: by.get((d, "head-only")) for d in autos}
    textures = autos.get("textures")
    return {
        "mean auto-manual >= +0.01": bool(gaps) and float(np.mean(list(gaps.values()))) >= 0.01,
        "none < manual - 0.01": bool(gaps) and min(gaps.values()) >= -0.01,
        "none < head-only": all(
            h is not None and autos[d]["test_accuracy"] >= h["test_accuracy"]
            for d, h in heads.items()
        ),
        "none < seed": all(
            (d, "seed") not in by or a["test_accuracy"] >= by[(d, "seed")]["test_accuracy"]
            for d, a in autos.items()
        ),
        "textures >= 0.85": bool(textures) and textures["test_accuracy"] >= 0.85,
        "flowers >= manual": "flowers" in gaps and gaps["flowers"] >= 0,
        "auto <= 15 min": bool(autos)
        and all((a.get("wall_seconds") or a["seconds"]) <= 900 for a in autos.values()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--work", default="/tmp/graft-bench-recipes")
    ap.add_argument("--lock", default="", help="flock this file around each run")
    ap.add_argument("--table", action="store_true", help="print results/recipes.json as a table")
    args = ap.parse_args(argv)
    if args.table:
        rows = json.loads((RESULTS / "recipes.json").read_text())["runs"]
        print(table(rows) + "\n\n" + goals(rows))
        return 0
    missing = [d for d in args.datasets.split(",") if not (SHARED / "datasets" / d).is_dir()]
    if missing:
        print(f"recipes: skipped, real data absent: {missing} under {SHARED}/datasets")
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "recipes.json"
    rows = json.loads(out.read_text())["runs"] if out.exists() else []
    for dataset in args.datasets.split(","):
        for recipe in args.recipes.split(","):
            for row in run_one(dataset, recipe, work, args.lock):
                key = (row["dataset"], row["recipe"])
                rows = [r for r in rows if (r["dataset"], r["recipe"]) != key] + [row]
            doc = {
                "machine": machine(),
                "date": time.strftime("%Y-%m-%d"),
                "goal": GOAL,
                "goals_met": goals_met(rows),
                "runs": rows,
            }
            out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
