"""Beam ingest images/s: DirectRunner multi-processing on all cores vs one worker.

Two workloads, both measured here in the same run:
- camera: 2,000 generated 1600x1200 JPEGs (phone/camera-sized photos, downscaled to
  data.max_side 1024 on ingest) - the headline ratio;
- small: 2,500 generated 320 px JPEGs (31 MB), where Beam's fixed multi-processing costs
  outweigh the second core; `num_workers: 0` (auto) picks one in-memory worker there.
"""

import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import report


def _camera_photos(src: Path, dst: Path) -> None:
    from PIL import Image

    for f in sorted(src.rglob("*.jpg")):
        out = dst / f.parent.name / f.name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(f).resize((1600, 1200), Image.Resampling.BILINEAR).save(out, quality=90)


def _rate(imgs: Path, out: Path, workers: int, n: int) -> float:
    from graft.components.ingest import ingest
    from graft.core.config import DataConfig

    t0 = time.time()
    # a cold ingest each time: with data.incremental (the default) the runs after the first
    # would reuse the first's records from beside `out` and measure a copy, not decoding
    cfg = DataConfig(path=str(imgs), num_workers=workers, progress_every=10**6, incremental=False)
    ingest(cfg, str(out))
    return n / (time.time() - t0)


def main() -> dict:
    from graft.components.demo_data import generate

    tmp = Path(tempfile.mkdtemp())
    cores = os.cpu_count() or 2
    generate(tmp / "small", classes=5, per_class=500, size=320, seed=3)
    small = {
        name: round(_rate(tmp / "small", tmp / f"out-small-{name}", w, 2500), 1)
        for name, w in (("one", 1), ("multi", cores), ("auto", 0), ("one_again", 1))
    }
    generate(tmp / "seed", classes=5, per_class=400, size=400, seed=3)
    _camera_photos(tmp / "seed", tmp / "camera")
    camera = {
        name: _rate(tmp / "camera", tmp / f"out-camera-{name}", w, 2000)
        for name, w in (("one", 1), ("multi", cores))
    }
    return report(
        "ingest",
        camera["multi"],
        camera["one"],
        "images/s",
        ">= 1.6x on 2 cores",
        workers=cores,
        images=2000,
        workload="2,000 JPEGs 1600x1200, downscaled to 1024 on ingest",
        small_images={
            "workload": "2,500 JPEGs 320 px (31 MB)",
            "images_per_s": small,
            "multi_vs_one": round(small["multi"] / max(small["one"], small["one_again"]), 2),
            "auto_vs_one": round(small["auto"] / max(small["one"], small["one_again"]), 2),
        },
    )


if __name__ == "__main__":
    main()
