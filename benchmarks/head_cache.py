"""Head stage re-run with a changed head: features from the store vs the first run's base pass.

The first head stage on a dataset runs the frozen base over train + val once (the store is
empty); a second with another head shape and learning rate reads every feature from the store
and does no forward pass. Goal: the second is >= 20x faster. Real photos and the seed's base
(flowers, ImageNet MobileNetV2 alpha 1.0 at 224 px) when ../shared has them, else demo data.
"""

import tempfile
import time
from pathlib import Path

from benchmarks.common import MOBILENET_V2, REPO, SHARED, demo_examples, report

WEIGHTS = MOBILENET_V2


def _examples(tmp: Path) -> tuple[str, dict, int, str]:
    from graft.components.ingest import ingest
    from graft.core.config import DataConfig

    flowers = SHARED / "datasets" / "flowers"
    if flowers.is_dir() and WEIGHTS.exists():
        ingest(DataConfig(path=str(flowers), shards=4), str(tmp / "ex"))
        base = {"weights": str(WEIGHTS)}
        return str(tmp / "ex"), base, 224, "flowers 4,317 photos, MobileNetV2 alpha 1.0, 224 px"
    ex = demo_examples(tmp, classes=5, per_class=120, size=128)
    base = {
        "weights": str(REPO / "graft" / "assets" / "demo_base.weights.h5"),
        "kwargs": {"alpha": 0.35},
    }
    return ex, base, 128, "demo 5 x 120 images, MobileNetV2 alpha 0.35, 128 px"


def main() -> dict:
    from graft.components import features as gfeat
    from graft.components.train import train_head
    from graft.core.config import (
        AugmentConfig,
        BaseConfig,
        HeadConfig,
        TrainConfig,
        TrainHeadConfig,
    )

    tmp = Path(tempfile.mkdtemp())
    ex, base_kw, size, setup = _examples(tmp)
    store = str(tmp / "features")
    heads = {
        "first": (HeadConfig(), TrainHeadConfig(epochs=10, patience=0, feature_cache="on")),
        "changed_head": (
            HeadConfig(fc_size=256, dropout=0.3),
            TrainHeadConfig(epochs=10, patience=0, learning_rate=3e-3, feature_cache="on"),
        ),
    }
    times, acc, forward, parts = {}, {}, {}, {}
    for name, (head, cfg) in heads.items():
        before = gfeat.FORWARD_IMAGES["count"]
        t0 = time.time()
        r = train_head(
            ex,
            str(tmp / name),
            base=BaseConfig(**base_kw),
            head=head,
            train=TrainConfig(),
            cfg=cfg,
            augment=AugmentConfig(),
            image_size=size,
            feature_store=store,
        )
        times[name] = time.time() - t0
        acc[name] = r.best_val_accuracy
        forward[name] = gfeat.FORWARD_IMAGES["count"] - before
        # the stage's parts: features (store or base), Keras fit, the rest (build, save, plot)
        feat, fit = (
            r.extra.feature_seconds,
            r.extra.train_seconds - r.extra.feature_seconds,
        )
        parts[name] = {
            "features": feat,
            "fit": round(fit, 2),
            "other": round(times[name] - feat - fit, 2),
        }
    return report(
        "head_cache",
        times["first"] / times["changed_head"],
        1.0,
        "x faster (first head stage s / re-run with a changed head s)",
        ">= 20x",
        first_seconds=round(times["first"], 2),
        rerun_seconds=round(times["changed_head"], 2),
        first_forward_images=forward["first"],
        rerun_forward_images=forward["changed_head"],
        first_val_accuracy=round(acc["first"], 4),
        rerun_val_accuracy=round(acc["changed_head"], 4),
        first_parts_seconds=parts["first"],
        rerun_parts_seconds=parts["changed_head"],
        setup=setup + "; 10 epochs each; the re-run: Dense(256) head, dropout 0.3, lr 3e-3",
    )


if __name__ == "__main__":
    main()
