"""`graft serve` under load: throughput and p50/p99 at 1, 8 and 16 concurrent gRPC clients,
and the requests that fail while a new version is hot-reloaded under load (goal: 0).

The baseline is one client, measured in the same run; ratio = throughput at 16 clients over
throughput at 1. Uses models/demo (make demo) or --model-base; without either it trains the
tests' tiny model first (about a minute).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import REPO, report

LEVELS = (1, 8, 16)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def _tiny_model(tmp: Path) -> tuple[str, str]:
    """Train the tests' tiny model: (model base path, model name)."""
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import tiny_config

    from graft.components.demo_data import generate
    from graft.core.config import parse_config
    from graft.pipeline.runner import run_pipeline

    generate(tmp / "images", classes=3, per_class=40, size=48, seed=0)
    cfg = parse_config(tiny_config(tmp, tmp / "images"))
    run_pipeline(cfg)
    return str(tmp / "models" / "tiny"), "tiny"


def _image() -> bytes:
    """A demo image (make demo), else a generated 64 px JPEG."""
    import io

    from PIL import Image

    demo = REPO / "data" / "demo"
    if demo.is_dir():
        return next(demo.rglob("*.jpg")).read_bytes()
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def _level(target: str, name: str, img: bytes, clients: int, total: int) -> dict:
    from graft.serving.client import GraftClient

    lat: list[float] = []
    lock = threading.Lock()

    def worker(n: int) -> int:
        mine = []
        with GraftClient(target, name, retries=0) as c:
            c.predict_raw([img])  # connect outside the clock
            for _ in range(n):
                t0 = time.perf_counter()
                c.predict_raw([img])
                mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)
        return n

    per = total // clients
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(worker, [per] * clients))
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": done,
        "rps": round(done / wall, 1),
        "p50_ms": round(statistics.median(lat) * 1000, 2),
        "p99_ms": round(_pct(lat, 99) * 1000, 2),
    }


def _reload_under_load(base: Path, target: str, name: str, img: bytes, clients: int) -> dict:
    """Clients keep predicting while a new version is copied in (hidden dir + rename, as push
    does); every failed request counts. Ends 1 s after every client has seen the new version."""
    import grpc

    from graft.serving.client import GraftClient

    old = max(int(v) for v in os.listdir(base) if v.isdigit())
    new = old + 1
    stop = threading.Event()
    ok, failed, errors = [0] * clients, [0] * clients, []
    seen_new = [threading.Event() for _ in range(clients)]

    def worker(i: int) -> None:
        with GraftClient(target, name, retries=0) as c:
            while not stop.is_set():
                try:
                    v = c.predict_raw([img]).model_spec.version.value
                    ok[i] += 1
                    if v == new:
                        seen_new[i].set()
                except grpc.RpcError as e:
                    failed[i] += 1
                    errors.append(f"{e.code().name}: {e.details()}"[:200])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    t0 = time.time()
    shutil.copytree(base / str(old), base / f".tmp-bench-{new}")
    os.rename(base / f".tmp-bench-{new}", base / str(new))
    for e in seen_new:
        e.wait(120)
    swapped = time.time() - t0
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    return {
        "clients": clients,
        "requests": sum(ok) + sum(failed),
        "failed": sum(failed),
        "errors": errors[:3],
        "all_clients_saw_new_version": all(e.is_set() for e in seen_new),
        "seconds_to_swap": round(swapped, 2),
    }


def main(model_base: str | None = None, name: str | None = None, total: int = 480) -> dict:
    from graft.serving.launch import ServerProcess

    tmp = Path(tempfile.mkdtemp(prefix="graft-serving-load-"))
    try:
        if model_base is None and (REPO / "models" / "demo").is_dir():
            model_base, name = str(REPO / "models" / "demo"), "demo"
        if model_base is None:
            model_base, name = _tiny_model(tmp / "train")
        name = name or Path(model_base).name
        base = tmp / name
        newest = max(int(v) for v in os.listdir(model_base) if v.isdigit())
        base.mkdir()
        shutil.copytree(Path(model_base) / str(newest), base / str(newest))
        img = _image()
        with ServerProcess(str(base), name, poll_seconds=0.5) as srv:
            _level(srv.target, name, img, 1, 20)  # warm up
            levels = {str(c): _level(srv.target, name, img, c, total) for c in LEVELS}
            reload = _reload_under_load(base, srv.target, name, img, 8)
        one, sixteen = levels["1"], levels["16"]
        return report(
            "serving_load",
            sixteen["rps"],
            one["rps"],
            "requests/s at 16 concurrent clients (one image each)",
            "failed_during_reload == 0; throughput at 16 clients >= at 1 (ratio >= 1)",
            failed_during_reload=reload["failed"],
            levels=levels,
            reload=reload,
            model=f"{name} v{newest}",
            note="gRPC Predict through `graft serve` in a subprocess on loopback; baseline = "
            "1 client in the same run; the reload copies a version in as push does while 8 "
            "clients run with retries off",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-base", help="a model base path (default: models/demo)")
    ap.add_argument("--model-name")
    ap.add_argument("--requests", type=int, default=480, help="per concurrency level")
    a = ap.parse_args()
    main(a.model_base, a.model_name, a.requests)
