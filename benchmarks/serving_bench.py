"""gRPC latency and throughput through `graft serve` vs calling the SavedModel in-process;
REST's latency beside them (the same request as TF Serving's JSON, on one kept-alive connection)."""

import base64
import http.client
import json
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import REPO, report


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main(model_base: str | None = None, name: str = "demo") -> dict:
    import tensorflow as tf

    from graft.serving.client import GraftClient
    from graft.serving.launch import ServerProcess
    from graft.serving.models import fast_callable

    if model_base is None:
        model_base = str(REPO / "models" / "demo")
    if not Path(model_base).is_dir():
        raise SystemExit(f"no model at {model_base}: run `make demo` first")
    version = max(int(v) for v in __import__("os").listdir(model_base) if v.isdigit())
    img = next((REPO / "data" / "demo").rglob("*.jpg")).read_bytes()
    loaded = tf.saved_model.load(
        f"{model_base}/{version}"
    )  # kept: the signatures hold its variables weakly
    fn = loaded.signatures["serving_default"]

    def in_process():  # what an application embedding the model does: bytes in, both outputs out
        return {k: v.numpy() for k, v in fn(image_bytes=tf.constant([img])).items()}

    _, traced = fast_callable(fn)

    def in_process_traced():  # the server's own way of calling the model, minus gRPC
        return {k: v.numpy() for k, v in traced(tf.constant([img])).items()}

    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(model_base, tmp / name)
    body = json.dumps(
        {"instances": [{"image_bytes": {"b64": base64.b64encode(img).decode()}}]}
    ).encode()
    with (
        ServerProcess(str(tmp / name), name, rest=True) as srv,
        GraftClient(srv.target, name) as c,
    ):
        rest_conn = http.client.HTTPConnection("127.0.0.1", srv.rest_port, timeout=30)

        def rest():  # kept alive, as a requests.Session or any HTTP/1.1 client does
            rest_conn.request("POST", f"/v1/models/{name}:predict", body=body)
            with rest_conn.getresponse() as r:
                assert r.status == 200, r.read()
                return r.read()

        calls = {
            "local": in_process,
            "traced": in_process_traced,
            "remote": lambda: c.predict_raw([img]),
            "rest": rest,
        }
        for _ in range(10):
            for call in calls.values():
                call()
        times = {k: [] for k in calls}
        for _ in range(300):  # interleaved, so all four see the same machine load
            for k, call in calls.items():
                t0 = time.perf_counter()
                call()
                times[k].append(time.perf_counter() - t0)
        local, remote = times["local"], times["remote"]

        from tensorflow_serving.apis import get_model_status_pb2

        status_req = get_model_status_pb2.GetModelStatusRequest()
        c._spec(status_req.model_spec)
        status = []
        for _ in range(200):  # the transport floor: an RPC that does no model work
            t0 = time.perf_counter()
            c.models.GetModelStatus(status_req, timeout=5)
            status.append(time.perf_counter() - t0)
        status_p50 = statistics.median(status)

        def burst(n):
            with GraftClient(srv.target, name) as cc:
                for _ in range(n):
                    cc.predict_raw([img])

        thr = {}
        for conc in (1, 8):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(conc) as pool:
                list(pool.map(burst, [400 // conc] * conc))
            thr[conc] = 400 / (time.perf_counter() - t0)
    p50_l, p50_r = statistics.median(local), statistics.median(remote)
    p50_t = statistics.median(times["traced"])
    return report(
        "serving",
        p50_r * 1000,
        p50_l * 1000,
        "ms p50, one image",
        "p50 <= 1.3x in-process",
        p99_ms=round(_pct(remote, 99) * 1000, 3),
        in_process_p99_ms=round(_pct(local, 99) * 1000, 3),
        throughput_rps={"concurrency_1": round(thr[1], 1), "concurrency_8": round(thr[8], 1)},
        model=f"{name} v{version} (demo, 64 px mobilenet_v2 alpha 0.35)",
        grpc_status_rpc_p50_ms=round(status_p50 * 1000, 3),
        in_process_traced_p50_ms=round(p50_t * 1000, 3),
        ratio_vs_traced=round(p50_r / p50_t, 3),
        rest_p50_ms=round(statistics.median(times["rest"]) * 1000, 3),
        rest_p99_ms=round(_pct(times["rest"], 99) * 1000, 3),
        note="in-process = tf.constant(bytes) + the loaded serving_default signature + both "
        "outputs to "
        "numpy; in_process_traced = the same through the server's re-traced function "
        "(serving.models.fast_callable), so ratio_vs_traced is gRPC's own cost; rest = the same "
        "image as TF Serving's REST JSON through graft serve's REST front end (uvicorn) on one "
        "kept-alive connection; all four interleaved",
    )


if __name__ == "__main__":
    main()
