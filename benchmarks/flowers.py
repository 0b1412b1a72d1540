"""Transfer quality on real photos (`python -m benchmarks.flowers`, ~17 min on 2 cores).

The full pipeline on ../shared/datasets/flowers at 224 px with the ImageNet MobileNet v1
(alpha 0.25) from ../shared/keras/models, plus the same architecture trained from scratch
for the same fine-tuning budget. The photos are 128 px; upsampled to 224 they score better
(measured at 128: fine-tuned 0.720, head 0.673; at 224: 0.743, 0.711). Results go to
benchmarks/results/flowers.json. It was a real-data test until its 17 minutes put .ci/run over
its 30; accuracy and time are a benchmark's to measure, and its floors are now the goal it
judges (`met`).
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, RESULTS, SHARED, machine

FLOWERS = SHARED / "datasets" / "flowers"
WEIGHTS = SHARED / "keras" / "models" / "mobilenet_2_5_224_tf_no_top.h5"
# Floors a little under what the pipeline achieved here: the goal this benchmark judges.
FLOOR_FINE_TUNED = 0.72  # achieved 0.740-0.766 with the fc head here (SE ~0.017 on 685 test photos)
# transfer over the same architecture from scratch in the fine-tuning budget: measured 0.407
# (scratch 0.359) and 0.263 (scratch 0.477, 2026-12-06): the scratch run alone varies by 0.12
FLOOR_MARGIN_OVER_SCRATCH = 0.20


def _test_accuracy(model, examples: str, validation: str, flip_average: bool, size: int) -> float:
    """Test accuracy scored the way the export serves (components.model.scores)."""
    from graft.components import data as gdata
    from graft.components import model as gmodel
    from graft.components.manifest import excluded_from_eval

    test = gdata.image_dataset(
        examples, "test", size, 64, exclude_sha256=excluded_from_eval(validation)
    )
    correct = total = 0
    for x, y in test:
        correct += int((gmodel.scores(model, x, flip_average).numpy().argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / total


def _scratch_accuracy(
    examples: str, validation: str, head, epochs: int, flip_average: bool, size: int
) -> float:
    import keras

    from graft.components import data as gdata
    from graft.components import model as gmodel
    from graft.components.manifest import excluded_from_train
    from graft.core.config import BaseConfig

    keras.utils.set_random_seed(0)
    model = gmodel.build_model(
        BaseConfig(name="mobilenet", weights=None, kwargs={"alpha": 0.25}), head, 5, size
    )
    gmodel.base_of(model).trainable = True
    model.compile(
        keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    from graft.core.config import AugmentConfig

    train = gdata.image_dataset(
        examples,
        "train",
        size,
        32,
        shuffle=True,
        augment=AugmentConfig(),
        exclude_sha256=excluded_from_train(validation),
    )
    model.fit(train, epochs=epochs, verbose=0)
    return _test_accuracy(model, examples, validation, flip_average, size)


def run(tmp_path: Path) -> dict:
    from graft.core.config import load_config
    from graft.pipeline.runner import run_pipeline

    cfg = load_config(
        REPO / "configs" / "flowers-offline.yaml",
        [
            f"data.path={FLOWERS}",
            f"base.weights={WEIGHTS}",
            f"runner.run_root={tmp_path / 'runs'}",
            f"push.destination={tmp_path / 'models'}",
        ],
    )
    t0 = time.time()
    run = run_pipeline(cfg)
    wall = time.time() - t0
    steps = run["steps"]
    ev = json.load(open(os.path.join(steps["evaluate"]["output"], "evaluation.json")))
    head, fine = ev["head_only"]["accuracy"], ev["candidate"]["accuracy"]
    t1 = time.time()
    flip, size = cfg.export.flip_average, cfg.data.image_size
    scratch = _scratch_accuracy(
        steps["ingest"]["output"],
        steps["validate"]["output"],
        cfg.head,
        cfg.fine_tune.epochs,
        flip,
        size,
    )
    scratch_seconds = time.time() - t1
    from graft.components.train import load_model

    plain = _test_accuracy(
        load_model(os.path.join(steps["fine_tune"]["output"], "model.keras")),
        steps["ingest"]["output"],
        steps["validate"]["output"],
        False,
        size,
    )
    result = {
        "name": "flowers",
        "head_test_accuracy": head,
        "fine_tuned_test_accuracy": fine,
        "scratch_test_accuracy": scratch,
        "fine_tuned_without_flip_average": plain,
        "flip_average": flip,
        "wall_seconds": round(wall, 1),
        "scratch_seconds": round(scratch_seconds, 1),
        "per_class_f1": {k: round(v["f1"], 4) for k, v in ev["candidate"]["per_class"].items()},
        "macro_f1": ev["candidate"]["macro_f1"],
        "ece": ev["candidate"]["ece"],
        "guard": steps["fine_tune"]["summary"]["guard"],
        "setup": f"flowers 4,317 photos, {size} px, ImageNet MobileNet v1 alpha 0.25, "
        f"head fc {cfg.head.fc_size}; "
        "scratch: same architecture, "
        f"{cfg.fine_tune.epochs} epochs (the fine-tuning budget)"
        + (
            "; all test accuracies scored as served: export.flip_average, the mean over the image "
            "and its mirror image"
            if flip
            else ""
        ),
        "date": time.strftime("%Y-%m-%d"),
    }
    result["machine"] = machine()
    # short keys: the benchmarks README's table prints each
    result["goal"] = "all of goals_met"
    result["goals_met"] = {
        "wall < 15 min": wall < 15 * 60,
        # a head the guard kept is the candidate too: then nothing fine-tuned was scored
        "tuned >= head": bool(ev.get("fine_tuned", True)) and fine >= head,
        f"tuned >= {FLOOR_FINE_TUNED}": fine >= FLOOR_FINE_TUNED,
        f"tuned - scratch >= {FLOOR_MARGIN_OVER_SCRATCH}": (
            fine - scratch >= FLOOR_MARGIN_OVER_SCRATCH
        ),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flowers.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copy(
        os.path.join(steps["evaluate"]["output"], "confusion_matrix.png"),
        RESULTS / "flowers_confusion_matrix.png",
    )
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    if not FLOWERS.is_dir() or not WEIGHTS.exists():
        raise SystemExit(f"flowers: need {FLOWERS} and {WEIGHTS} (../shared beside the clone)")
    with tempfile.TemporaryDirectory(prefix="graft-bench-flowers-") as tmp:
        run(Path(tmp))


if __name__ == "__main__":
    main()
