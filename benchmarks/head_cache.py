"""Head stage with the bottleneck cache vs the seed's way (frozen base re-run every epoch)."""

import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, demo_examples, report


def main() -> dict:
    from graft.components.train import train_head
    from graft.core.config import (
        AugmentConfig,
        BaseConfig,
        HeadConfig,
        TrainConfig,
        TrainHeadConfig,
    )

    tmp = Path(tempfile.mkdtemp())
    ex = demo_examples(tmp, classes=5, per_class=120, size=128)
    base = BaseConfig(
        weights=str(REPO / "graft" / "assets" / "demo_base.weights.h5"), kwargs={"alpha": 0.35}
    )
    aug = AugmentConfig(flip="none", rotation=0, zoom=0, contrast=0, translation=0)
    times = {}
    for cache in ("off", "on"):
        t0 = time.time()
        r = train_head(
            ex,
            str(tmp / cache),
            base=base,
            head=HeadConfig(),
            train=TrainConfig(),
            cfg=TrainHeadConfig(epochs=10, batch_size=32, patience=0, feature_cache=cache),
            augment=aug,
            image_size=128,
        )
        times[cache] = (
            time.time() - t0,
            r.best_val_accuracy,
            r.extra["train_seconds"],
            r.extra["feature_seconds"],
        )
    return report(
        "head_cache",
        times["off"][0] / times["on"][0],
        1.0,
        "x faster (uncached s / cached s)",
        ">= 10x",
        cached_seconds=round(times["on"][0], 2),
        uncached_seconds=round(times["off"][0], 2),
        cached_val_accuracy=times["on"][1],
        uncached_val_accuracy=times["off"][1],
        training_only_ratio=round(times["off"][2] / times["on"][2], 2),
        feature_pass_seconds=times["on"][3],
        uncached_seconds_per_epoch=round(times["off"][2] / 10, 2),
        ceiling=round(times["off"][2] / times["on"][3], 2),  # 10 x (per-epoch / feature pass)
        note="value: whole stage incl. model build, weight load, saving; training_only_ratio: "
        "feature pass + 10 epochs vs 10 epochs through the frozen base; ceiling: 10 x (uncached "
        "epoch / feature pass), the most any cache can gain at 10 epochs, since the feature "
        "pass is itself one decode + forward pass over train and val",
        setup="5 demo classes x 120 images, 128 px, mobilenet_v2 alpha 0.35, 10 epochs, batch 32",
    )


if __name__ == "__main__":
    main()
