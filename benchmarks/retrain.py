"""Scheduled retraining: incremental re-ingest, a second run end to end, drift on and off target.

Real photos when ../shared/datasets/flowers exists (else generated demo images):

1. run 1: the pipeline over 90% of the images (recipe manual, ImageNet MobileNetV2 alpha 1.0
   at 224 px: the photos scale, no fine-tuning), pushed;
2. drift, same distribution: 20 checks, each a random half of a held-back 10% added to the
   folder (an incremental ingest beside the others) and checked against the served model and
   snapshot of a run 1 that never saw it; none may be flagged. The held-back 10% and its run 1
   are drawn 5 times independently (4 halves each; draw 0 is run 1 above), so one draw's luck
   weighs a fifth. Draw 0's checks have their own feature store (a copy of run 1's, which holds
   the old images alone), so run 2 below does not find the held-back images' features made by
   these checks; the other draws run after run 2 and share its store;
3. drift, shifted: the held-back 10% grayscale and blurred; and chest X-rays mixed into the
   class folders (when ../shared/datasets/chest_xray exists); both must be flagged;
4. run 2: the held-back 10% added as they are, the same config: ingest reuses run 1's records,
   the head stage the stored features.

reingest_ratio: run 2's ingest step seconds / run 1's (both inside the same runner);
second_run_ratio: run 2's pipeline seconds / run 1's, with both test accuracies, their 95%
Wilson intervals and test sizes; run2_reuse: what run 2's base and served model ran over.
The figures measured before at small scale (MobileNet v1 alpha 0.25, 128 px) stay in the
result under `small_scale`, and the last run whose 20 same-distribution checks were halves of
one held-back draw under `single_draw`.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import MOBILENET_V2, RESULTS, SHARED, report

FLOWERS = SHARED / "datasets" / "flowers"
XRAY = SHARED / "datasets" / "chest_xray"
WEIGHTS = MOBILENET_V2
SIZE = 224
RESAMPLES = 20
# the same-distribution checks come from independent 90/10 splits, each with its own run 1 and
# served model, HALVES per split: halves of one held-back draw share its luck (on 2026-12-07 the
# one draw's 20 embedding p-values ran low together: 3 of them <= 0.01)
DRAWS = 5
HALVES = RESAMPLES // DRAWS


def _copy(files: list[Path], dst: Path, transform=None, prefix: str = "") -> None:
    """Into dst/<class>/; copy2 keeps mtimes, so unchanged files stay unchanged."""
    from PIL import Image, ImageFilter

    for f in files:
        d = dst / f.parent.name
        d.mkdir(parents=True, exist_ok=True)
        if transform == "gray_blur":
            img = Image.open(f).convert("L").filter(ImageFilter.GaussianBlur(2)).convert("RGB")
            img.save(d / f"{prefix}{f.name}", quality=90)
        else:
            shutil.copy2(f, d / f"{prefix}{f.name}")


def _config(tmp: Path, data: Path, real: bool) -> dict:
    return {
        "recipe": "manual",
        "data": {"path": str(data), "image_size": SIZE if real else 64},
        "validate": {"label_conflicts": "drop", "leakage": "drop_from_eval"},
        "base": (
            {"name": "mobilenet_v2", "weights": str(WEIGHTS), "kwargs": {"alpha": 1.0}}
            if real
            else {"name": "mobilenet_v2", "weights": "demo", "kwargs": {"alpha": 0.35}}
        ),
        "head": {"dropout": 0.2, "fc_size": 0},
        "augment": {
            "flip": "horizontal",
            "rotation": 0,
            "zoom": 0,
            "translation": 0,
            "contrast": 0,
        },
        "train_head": {"epochs": 20, "batch_size": 32, "learning_rate": 0.003, "patience": 4},
        "fine_tune": {"enabled": False},
        "features": {"store": str(tmp / "features")},
        "export": {"model_name": "retrain"},
        "push": {"destination": str(tmp / "models")},
        "runner": {"run_root": str(tmp / "runs")},
    }


def _accuracy(run: dict) -> dict:
    ev = json.load(open(Path(run["steps"]["evaluate"]["output"]) / "evaluation.json"))
    acc, lo, hi = ev["intervals"]["candidate"]["accuracy"]
    return {
        "accuracy": round(acc, 4),
        "interval": [round(lo, 4), round(hi, 4)],
        "test_n": ev["test_examples"],
    }


def _reuse(run: dict, forward: int) -> dict:
    """What run 2's base and the served model ran over, and what came from the stores."""
    out = run["steps"]["evaluate"]["output"]
    scoring = json.load(open(Path(out) / "evaluation.json")).get("scoring")
    drift = json.load(open(Path(run["steps"]["drift"]["output"]) / "drift.json"))
    m = drift.get("metrics") or {}
    return {
        "base_forward_images": forward,  # through the feature store, all steps
        "drift_embeddings": {
            k: (m.get("embedding_mmd2") or {}).get(f"features_{k}") for k in ("computed", "reused")
        },
        "drift_served_scores": (m.get("confidence_js") or {}).get("scores"),
        "evaluate_scoring": scoring,
    }


def _stored() -> dict:
    """The stored result (results/retrain.json), or {} when there is none to read."""
    try:
        return json.loads((RESULTS / "retrain.json").read_text())
    except (OSError, ValueError):
        return {}


def _small_scale(old: dict) -> dict | None:
    """The figures measured before at small scale (MobileNet v1 alpha 0.25, 128 px)."""
    if "small_scale" in old:
        return old["small_scale"]
    if "MobileNet v1 alpha 0.25" not in old.get("setup", ""):
        return None
    keep = ("date", "machine", "reingest_ratio", "second_run_ratio", "run1_seconds")
    keep += ("run2_seconds", "step_seconds", "accuracy", "drift_false_positives", "setup")
    return {k: old[k] for k in keep if k in old}


def goals_met(
    second_run_ratio: float, same_accuracy: bool, reingest_ratio: float, fp: int, shifted: bool
) -> dict[str, bool]:
    """Each clause of the goal, judged (benchmarks.table reads it)."""
    return {
        "second_run_ratio <= 0.5": second_run_ratio <= 0.5,
        "same accuracy": same_accuracy,
        "reingest_ratio <= 0.2": reingest_ratio <= 0.2,
        f"drift_false_positives 0 of {RESAMPLES}": fp == 0,
        "drift_flagged_shifted": shifted,
    }


def _split(files: list[Path], seed: int) -> tuple[list[Path], list[Path]]:
    """A 90/10 split of the images: (run 1's, held back), shuffled with `seed`."""
    files = list(files)
    random.Random(seed).shuffle(files)
    n_old = int(len(files) * 0.9)
    return files[:n_old], files[n_old:]


def _drift_check(cfg, run1: dict, old, batch_files, work: Path, store, *, seed=0, transform=None,
                 prefix=""):  # fmt: skip
    """One drift check against run 1's served model: its old images plus a batch, in a folder
    of its own, ingested incrementally beside run 1's snapshot."""
    from graft.components import data as gdata
    from graft.components.drift import check_drift
    from graft.components.ingest import ingest

    folder = work / "data"
    _copy(old, folder)
    _copy(batch_files, folder, transform, prefix)
    d = cfg.data.model_copy(update={"path": str(folder)})
    ingest(d, str(work / "ingest"), previous=run1["steps"]["ingest"]["output"])
    return check_drift(
        cfg.drift.model_copy(update={"action": "warn"}),
        str(work / "ingest"),
        None,
        str(work / "check"),
        destination=cfg.push.destination,
        model_name=cfg.export.model_name,
        base=cfg.base,
        image_size=cfg.data.image_size,
        feature_store=str(store),
        seed=seed,
        geometry=gdata.Geometry.of(cfg.data),
    )


def _halves(cfg, run1: dict, old, held, work: Path, store, draw: int) -> list:
    """HALVES same-distribution checks: each a random half of `held` (the halves drawn with
    seed draw + 1, each check seeded apart: draw 0's are the first HALVES of the one-draw
    bench's)."""
    out = []
    rng = random.Random(draw + 1)
    for i in range(HALVES):
        batch = rng.sample(held, len(held) // 2)
        seed = draw * HALVES + i + 1
        out.append(_drift_check(cfg, run1, old, batch, work / f"same{i}", store, seed=seed))
        shutil.rmtree(work / f"same{i}")
    return out


def _other_draws(files: list[Path], tmp: Path, real: bool, store: Path) -> list:
    """Draws 1..DRAWS-1: a fresh 90/10 split each, its own run 1 (served, from the shared
    feature store: no base pass), then HALVES checks of its held-back images."""
    from graft.core.config import parse_config
    from graft.pipeline.runner import run_pipeline

    out = []
    for d in range(1, DRAWS):
        work = tmp / f"draw{d}"
        old, held = _split(files, d)
        _copy(old, work / "source")
        raw = _config(work, work / "source", real)
        raw["features"]["store"] = str(store)
        cfg = parse_config(raw)
        run1 = run_pipeline(cfg, run_id=f"draw{d}")
        assert run1["steps"]["push"]["summary"].get("pushed"), run1["steps"]["push"]
        out += _halves(cfg, run1, old, held, work, store, draw=d)
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> dict:
    from graft.components import features as gfeat
    from graft.core.config import parse_config
    from graft.pipeline.runner import run_pipeline

    stored = _stored()  # read before this run writes its own
    tmp = Path(tempfile.mkdtemp(prefix="graft-retrain-"))
    real = FLOWERS.is_dir() and WEIGHTS.is_file()
    if real:
        files = sorted(FLOWERS.rglob("*.jpg"))
    else:
        from graft.components.demo_data import generate

        generate(tmp / "source", classes=5, per_class=300, size=64, seed=0)
        files = sorted((tmp / "source").rglob("*.jpg"))
    old, held = _split(files, 0)
    data = tmp / "data"
    _copy(old, data)
    raw = _config(tmp, data, real)
    cfg = parse_config(raw)

    run1 = run_pipeline(cfg, run_id="run1")
    assert run1["steps"]["push"]["summary"].get("pushed"), run1["steps"]["push"]
    # the drift checks' own store starts as run 1's (the old images' features): as in
    # production, drift reads what the runs stored; what it adds, run 2 does not see
    store = tmp / "drift-features"
    shutil.copytree(cfg.features.store, store)
    same = _halves(cfg, run1, old, held, tmp / "drift", store, draw=0)
    shifted = {
        "gray_blur": _drift_check(
            cfg, run1, old, held, tmp / "drift" / "gray_blur", store, transform="gray_blur",
            prefix="gb_",
        )
    }  # fmt: skip
    if XRAY.is_dir():
        xrays = sorted(XRAY.rglob("*.jpeg"))
        random.Random(2).shuffle(xrays)
        classes = sorted({f.parent.name for f in old})
        mixed = tmp / "xray_batch"
        for i, f in enumerate(xrays[: len(held)]):  # filed under the flower classes
            d = mixed / classes[i % len(classes)]
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, d / f"xray_{f.name}")
        xray = sorted(mixed.rglob("*.jpeg"))
        shifted["xray"] = _drift_check(cfg, run1, old, xray, tmp / "drift" / "xray", store)

    def measures(r):
        return {
            k: {"value": m["value"], "p": m["p_value"], "flagged": m["flagged"]}
            for k, m in r.metrics.items()
            if k != "label_linf" or m["flagged"]
        }

    # run 2: the held-back 10% as they are, same config
    _copy(held, data)
    forward = gfeat.FORWARD_IMAGES["count"]
    run2 = run_pipeline(cfg, run_id="run2")
    forward = gfeat.FORWARD_IMAGES["count"] - forward
    same += _other_draws(files, tmp, real, Path(cfg.features.store))  # after run 2: its store
    false_positives = sum(r.flagged for r in same)
    ing1 = run1["steps"]["ingest"]["seconds"]
    ing2 = run2["steps"]["ingest"]["seconds"]
    head2 = run2["steps"]["train_head"]["summary"]
    acc1, acc2 = _accuracy(run1), _accuracy(run2)
    steps = {
        name: {"run1": run1["steps"][name]["seconds"], "run2": run2["steps"][name]["seconds"]}
        for name in run1["steps"]
    }
    flagged_shifted = all(r.flagged for r in shifted.values())
    row = report(
        "retrain",
        run2["seconds"] / run1["seconds"],
        1.0,
        "x (run 2 seconds / run 1 seconds)",
        "second_run_ratio <= 0.5 at the same accuracy within its interval; reingest_ratio "
        "<= 0.2; drift_false_positives 0 of 20; drift_flagged_shifted true",
        reingest_ratio=round(ing2 / ing1, 3),
        second_run_ratio=round(run2["seconds"] / run1["seconds"], 3),
        drift_flagged_shifted=flagged_shifted,
        drift_false_positives=false_positives,
        drift_resamples=RESAMPLES,
        run1_seconds=run1["seconds"],
        run2_seconds=run2["seconds"],
        ingest_seconds={"run1": ing1, "run2": ing2},
        ingest_run2=run2["steps"]["ingest"]["summary"]["incremental"],
        features_run2={
            "computed": head2.get("features_computed"),
            "reused": head2.get("features_reused"),
        },
        step_seconds=steps,
        run2_reuse=_reuse(run2, forward),
        accuracy={"run1": acc1, "run2": acc2},
        same_accuracy_within_interval=acc1["interval"][0]
        <= acc2["accuracy"]
        <= acc1["interval"][1],
        drift_same_max={
            k: max(r.metrics[k]["value"] for r in same if k in r.metrics) for k in same[0].metrics
        },
        drift_same_min_p={
            k: min(r.metrics[k]["p_value"] for r in same if k in r.metrics) for k in same[0].metrics
        },
        # every same-distribution p-value, sorted: a permutation p-value is uniform under the
        # null, so a lone flag among evenly spread p-values is chance, small ones a mismatch
        drift_same_p={
            k: sorted(round(r.metrics[k]["p_value"], 4) for r in same if k in r.metrics)
            for k in same[0].metrics
        },
        drift_same_flagged_by=[
            [k for k, m in r.metrics.items() if m["flagged"]] for r in same if r.flagged
        ],
        # per draw (an independent 90/10 split and its run 1), its HALVES checks' flags
        drift_same_flagged_per_draw=[
            sum(r.flagged for r in same[d * HALVES : (d + 1) * HALVES]) for d in range(DRAWS)
        ],
        drift_shifted={
            k: {"flagged": r.flagged, "measures": measures(r)} for k, r in shifted.items()
        },
        drift_check_seconds=round(sum(r.seconds for r in same) / len(same), 2),
        goals_met=goals_met(
            run2["seconds"] / run1["seconds"],
            acc1["interval"][0] <= acc2["accuracy"] <= acc1["interval"][1],
            ing2 / ing1,
            false_positives,
            flagged_shifted,
        ),
        setup=(
            f"{'flowers (real photos)' if real else 'generated demo images'}: run 1 on "
            f"{len(old)} images, run 2 adds {len(held)}; "
            + (
                f"MobileNetV2 alpha 1.0 ImageNet, {SIZE} px"
                if real
                else "demo MobileNetV2 alpha 0.35, 64 px"
            )
            + ", recipe manual, head only (20 epochs max), 1 in-memory Beam worker; drift: "
            f"{RESAMPLES} checks, {HALVES} random halves of the held-back images of each of "
            f"{DRAWS} independent 90/10 splits vs that split's run 1 snapshot and model; "
            "shifted: the held-back images grayscale + blurred"
            + (", and as many chest X-rays filed under the flower classes" if XRAY.is_dir() else "")
        ),
        date_time=time.strftime("%Y-%m-%d %H:%M"),
        small_scale=_small_scale(stored),
        # the stored run whose 20 same-distribution checks were halves of one held-back draw
        single_draw=stored.get("single_draw"),
    )
    shutil.rmtree(tmp, ignore_errors=True)
    return row


if __name__ == "__main__":
    main()
