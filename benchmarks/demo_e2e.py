"""Wall time of `make demo` from a warm venv (fresh runs/ and models/, data kept)."""

import shutil
import subprocess
import time

from benchmarks.common import REPO, report


def main() -> dict:
    for d in ("runs", "models"):
        shutil.rmtree(REPO / d, ignore_errors=True)
    t0 = time.time()
    subprocess.run(
        ["make", "demo"], cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wall = time.time() - t0
    return report("demo_e2e", wall, 300.0, "seconds", "<= 300 s (ratio <= 1)")


if __name__ == "__main__":
    main()
