"""Beam ingest images/s: DirectRunner multi-processing on all cores vs one worker."""

import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import report


def main() -> dict:
    from components.demo_data import generate
    from components.ingest import ingest
    from pipeline.config import DataConfig

    tmp = Path(tempfile.mkdtemp())
    generate(tmp / "imgs", classes=5, per_class=500, size=128, seed=3)
    n = 2500
    rates = {}
    for name, workers in (("one", 1), ("multi", os.cpu_count() or 2), ("one_again", 1)):
        t0 = time.time()
        ingest(DataConfig(path=str(tmp / "imgs"), num_workers=workers, progress_every=10**6), str(tmp / name))
        rates[name] = n / (time.time() - t0)
    base = max(rates["one"], rates["one_again"])
    return report("ingest", rates["multi"], base, "images/s", ">= 1.6x on 2 cores",
                  workers=os.cpu_count(), images=n, one_worker_runs=[round(rates["one"], 1), round(rates["one_again"], 1)])


if __name__ == "__main__":
    main()
