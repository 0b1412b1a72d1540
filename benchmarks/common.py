"""Shared bits for benchmarks: one JSON line per benchmark, saved under results/."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
# the real datasets and ImageNet weights beside the clone (read in place, never copied)
SHARED = Path(os.environ.get("GRAFT_SHARED", REPO.parent / "shared"))
MOBILENET_V2 = (
    SHARED / "keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
)

sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def machine() -> str:
    return (
        f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def report(
    name: str,
    value: float,
    baseline: float,
    unit: str,
    goal: str,
    ratio: float | None = None,
    results_dir: Path | None = None,
    **extra,
) -> dict:
    """ratio defaults to value/baseline; both measured in the same run."""
    row = {
        "name": name,
        "value": round(value, 4),
        "baseline": round(baseline, 4),
        "ratio": round(ratio if ratio is not None else value / baseline, 3),
        "goal": goal,
        "unit": unit,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        **extra,
    }
    out = Path(results_dir or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row), flush=True)
    return row


def demo_examples(tmp: Path, classes: int = 3, per_class: int = 100, size: int = 64) -> str:
    from graft.components.demo_data import generate
    from graft.components.ingest import ingest
    from graft.core.config import DataConfig

    generate(tmp / "imgs", classes=classes, per_class=per_class, size=size, seed=11)
    ingest(DataConfig(path=str(tmp / "imgs"), num_workers=1), str(tmp / "ex"))
    return str(tmp / "ex")


def in_memory_batches(examples: str, size: int, batch: int):
    """Four decoded train batches held in memory, repeated: the compute limit a feed is held to."""
    import tensorflow as tf

    from graft.components import data as gdata

    x, y = next(iter(gdata.image_dataset(examples, "train", size, batch * 4)))
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch).prefetch(2)
