"""Training beyond one device, through Graft's own train_head / fine_tune, against one device.

MirroredStrategy over 2 logical CPUs, MultiWorkerMirroredStrategy over 2 local processes
(TF_CONFIG on 127.0.0.1), and the TFJob worker entry. TF fixes its devices and collective
ops when it runs its first op, so every run is a fresh process running this file as a
script (`python tests/test_distributed.py MODE ...`); the tests compare what they wrote.
Runs are deterministic (train.deterministic: ordered reads, op determinism), so a
distributed run differs from the one-device run only by the order of float sums in the
all-reduce: the tolerances below are that noise with a margin, measured (see each test).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import TINY_BASE

HERE = Path(__file__).resolve()
SIZE = 48  # data.image_size of the training runs (the demo base learns nothing at 32 px)
HEAD_EPOCHS = 4  # a head good enough that a destructive fine-tune does worse (the guard)
# max |w_distributed - w_one_device| over every weight, measured on 2 cores (TF 2.21, CPU):
# mirrored 2 replicas <= 1.2e-6, multi-worker DATA <= 3.9e-6 (FILE: 1.1e-2, other batches);
# 5e-5 leaves >10x for other CPUs' float summation order, and is far below what training moves
WEIGHT_TOL = 5e-5
ACC_TOL = 1e-6  # val accuracy: identical predictions, so equal up to float printing


# ---------------------------------------------------------------------------- the runs


def _configs():
    from graft.core.config import (
        AugmentConfig,
        BaseConfig,
        FineTuneConfig,
        HeadConfig,
        TrainHeadConfig,
    )

    no_aug = AugmentConfig(flip="none", rotation=0, zoom=0, contrast=0, translation=0)
    return {
        "base": BaseConfig(**TINY_BASE),  # the tests' shallow base (conftest)
        "head": HeadConfig(dropout=0.0),  # dropout draws differ per replica: off to compare
        "augment": no_aug,
        # 82 train images, batch 16: 5 full batches and one of 2, split 1 + 1 over 2 replicas
        "head_cfg": lambda cache: TrainHeadConfig(
            epochs=HEAD_EPOCHS, batch_size=16, patience=0, learning_rate=0.02, feature_cache=cache
        ),
        "ft_cfg": FineTuneConfig(
            epochs=2,
            batch_size=16,
            patience=0,
            learning_rate=1e-3,
            augment=False,
            guard=False,
            unfreeze={"mode": "top_fraction", "top_fraction": 0.3},
        ),
    }


def _head(examples, out, train, cache, extra_callbacks=None):
    from graft.components.train import train_head

    c = _configs()
    return train_head(
        examples,
        out,
        base=c["base"],
        head=c["head"],
        train=train,
        cfg=c["head_cfg"](cache),
        augment=c["augment"],
        image_size=SIZE,
        extra_callbacks=extra_callbacks,
    )


def _fine(examples, head_dir, out, train, cfg=None):
    from graft.components.train import fine_tune

    c = _configs()
    return fine_tune(
        examples,
        head_dir,
        out,
        train=train,
        cfg=cfg or c["ft_cfg"],
        augment=c["augment"],
        image_size=SIZE,
    )


def _fingerprint(img) -> str:
    import numpy as np

    return hashlib.sha1(np.asarray(img).round().astype(np.uint8).tobytes()).hexdigest()[:16]


def _replica_batches(strategy, ds, steps):
    """Per step, the images each local replica got: what Keras feeds its train step."""
    it = iter(strategy.experimental_distribute_dataset(ds))
    out = []
    for _ in range(steps):
        x, _ = next(it)
        out.append([[_fingerprint(i) for i in t] for t in strategy.experimental_local_results(x)])
    return out


def _mixed_fit(strategy, examples: str, jit: bool) -> dict:
    """mixed_float16 (and XLA) on Graft's model under the strategy: the GPU switches, which
    train.py turns on only where a GPU is, run here on the CPU. A small base, so XLA compiles
    in seconds (MobileNetV2 at 48 px takes a minute on 2 cores)."""
    import keras
    import numpy as np

    from graft.components import data as gdata
    from graft.components import model as gmodel
    from graft.core.config import BaseConfig, HeadConfig, UnfreezeConfig

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            base = BaseConfig(name="mobilenet", weights=None, kwargs={"alpha": 0.25})
            model = gmodel.build_model(base, HeadConfig(dropout=0.0), 3, 32)
            gmodel.multi_worker_keras(model, strategy)  # as train.py does
            gmodel.unfreeze(model, UnfreezeConfig(mode="all"))
            model.compile(
                keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", jit_compile=jit
            )
        workers = gmodel.worker_count(strategy)
        ds = gdata.image_dataset(examples, "train", 32, 16, shuffle=True, workers=workers)
        steps = gdata.steps_per_epoch(ds, examples, "train", 16)
        hist = model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
        return {
            "loss": float(hist.history["loss"][-1]),
            "optimizer": type(model.optimizer).__name__,
            "compute_dtype": model.get_layer("preprocess").compute_dtype,
            "output_dtype": str(model(np.zeros((2, 32, 32, 3), "float32")).dtype.name),
            "replicas": int(model.distribute_strategy.num_replicas_in_sync),
            "jit": jit,
        }
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main_mirrored(examples: str, out: str, devices: str) -> None:
    """Both stages under MirroredStrategy over `devices` logical CPUs: the head on cached
    features (arrays), then the fine-tune on image batches through the base (the uncached
    head's path too: the same image batches, fewer layers training)."""
    _logical_cpus(int(devices))
    from graft.core.config import TrainConfig

    mirrored = TrainConfig(strategy="mirrored", deterministic=True)
    t0 = time.time()
    res: dict = {"head": asdict(_head(examples, f"{out}/head", mirrored, "on"))}
    res["fine"] = asdict(_fine(examples, f"{out}/head", f"{out}/fine", mirrored))
    res["seconds"] = round(time.time() - t0, 1)
    Path(out, "summary.json").write_text(json.dumps(res, default=str))


def _logical_cpus(n: int) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def main_mirrored_extras(examples: str, out: str) -> None:
    """On 2 logical CPUs, over a 2-device run's head and fine dirs in `out`: the batch split,
    resume, the guard, mixed precision, and BatchNormalization left untouched."""
    _logical_cpus(2)
    import keras

    from graft.components import data as gdata
    from graft.components import model as gmodel
    from graft.core.config import FineTuneConfig, TrainConfig

    mirrored = TrainConfig(strategy="mirrored", deterministic=True)
    res: dict = {}
    strategy = gmodel.choose_strategy(mirrored)
    # batch sharding: each global batch of 16 is split over the 2 replicas, nothing lost
    ds = gdata.image_dataset(examples, "train", SIZE, 16)
    res["replica_batches"] = _replica_batches(strategy, ds, int(ds.cardinality()))

    class Boom(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed after epoch 1")

    try:
        _head(examples, f"{out}/resume", mirrored, "on", [Boom()])
    except RuntimeError:
        res["killed"] = True
    res["resumed"] = asdict(_head(examples, f"{out}/resume", mirrored, "on"))
    guard = FineTuneConfig(
        epochs=1, batch_size=16, optimizer="sgd", learning_rate=1.0, cosine_decay=False,
        patience=0, augment=False, unfreeze={"mode": "all"},
    )  # fmt: skip
    res["guard"] = asdict(_fine(examples, f"{out}/head", f"{out}/guard", mirrored, guard))
    # mixed precision under the strategy (XLA cannot be: over logical CPUs its compiled step
    # reads the other replica's variables, "Trying to access resource ... located in device
    # CPU:1 from device CPU:0"; the multi-worker run, one device per process, does XLA)
    res["mixed"] = _mixed_fit(strategy, examples, jit=False)
    Path(out, "extras.json").write_text(json.dumps(res, default=str))


def main_worker(examples: str, out: str, probe: str, stages: str) -> None:
    """One process of the multi-worker run (TF_CONFIG set by the test), or the 1-worker one.

    stages "head,fine": both stages into out (shared by the workers, as a shared volume or
    bucket would be), then the sharding probe: the images each worker's replica got.
    """
    from graft.components import data as gdata
    from graft.components import model as gmodel
    from graft.core.config import TrainConfig

    # with TF_CONFIG: 2 workers; without: the same strategy on 1 worker, the reference (not the
    # default strategy: under any tf.distribute strategy Keras draws a batch to build the
    # model before fit, which moves a reshuffling dataset on by one permutation)
    train = TrainConfig(strategy="multi_worker", deterministic=True)
    strategy = gmodel.choose_strategy(train)
    res = {}
    if "head" in stages:
        res["head"] = asdict(_head(examples, f"{out}/head", train, "on"))
    if "fine" in stages:
        res["fine"] = asdict(_fine(examples, f"{out}/head", f"{out}/fine", train))
    workers = gmodel.worker_count(strategy)
    ds = gdata.image_dataset(
        examples, "train", SIZE, 16, shuffle=True, deterministic=True, workers=workers
    )
    steps = gdata.steps_per_epoch(ds, examples, "train", 16) or int(ds.cardinality())
    task = gmodel.describe_strategy(strategy)["task"] or "single"
    record = {
        "policy": ds.options().experimental_distribute.auto_shard_policy.name,
        "batches": _replica_batches(strategy, ds, steps),
        "result": res,
        "chief": gmodel.is_chief(strategy),
    }
    if workers > 1 and "mixed" in stages:  # one CPU device per process: XLA compiles here
        record["mixed_xla"] = _mixed_fit(strategy, examples, jit=True)
    Path(probe).mkdir(parents=True, exist_ok=True)
    Path(probe, f"{task}.json").write_text(json.dumps(record, default=str))


# ---------------------------------------------------------------------------- helpers


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **extra}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _script(*args: str, env=None, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(HERE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or _env(),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _scripts(*runs: tuple[str, ...], timeout=600) -> None:
    """Several runs of this file side by side (fresh processes, own outputs): most of each is
    single-threaded tracing, so two take little longer than one."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE), *args],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in runs
    ]
    deadline = time.time() + timeout
    try:
        errs = [p.communicate(timeout=max(1, deadline - time.time()))[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for args, p, err in zip(runs, procs, errs, strict=True):
        assert p.returncode == 0, f"{' '.join(args)}:\n{err[-4000:]}"


def _cluster(cmd: list[str], tmp: Path, n: int = 2, timeout: float = 600) -> list[dict]:
    """n worker processes on 127.0.0.1 free ports, each with its TF_CONFIG and TMPDIR."""
    ports = _free_ports(n)
    procs = []
    for i in range(n):
        tf_config = {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": i},
        }
        tmpdir = tmp / f"tmp-worker-{i}"
        tmpdir.mkdir(parents=True)
        env = _env(TF_CONFIG=json.dumps(tf_config), TMPDIR=str(tmpdir))
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    out = []
    deadline = time.time() + timeout
    try:
        for i, p in enumerate(procs):
            so, se = p.communicate(timeout=max(1, deadline - time.time()))
            out.append(
                {"rc": p.returncode, "stdout": so, "stderr": se, "tmp": tmp / f"tmp-worker-{i}"}
            )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, o in enumerate(out):
        assert o["rc"] == 0, f"worker {i}:\n{o['stderr'][-4000:]}"
    return out


def _saved_weights(model_path: str) -> dict:
    """A saved .keras model's weights by their path in its weights file, read without
    rebuilding the model (a load of the demo model costs seconds; this, milliseconds). The
    `layers/` entries are exactly model.weights (97 of them for the tests' shallow-base model); the
    optimizer's state, also saved, is left out."""
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(model_path) as z:
        h5 = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
    out = {}

    def keep(name, obj) -> None:  # visititems stops at the first callback returning non-None
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    h5["layers"].visititems(keep)
    return out


def _batch_norms(model_path: str) -> dict[str, list]:
    """A saved model's BatchNormalization layers' weights and statistics, by weights-file
    path: the file names each layer's group after its class (batch_normalization_7)."""
    out: dict[str, list] = {}
    for name, w in sorted(_saved_weights(model_path).items()):
        layer, _, _ = name.rpartition("/vars/")
        if re.fullmatch(r"batch_normalization(_\d+)?", layer.rpartition("/")[2]):
            out.setdefault(layer, []).append(w)
    return out


def _max_diff(path_a: str, path_b: str) -> float:
    import numpy as np

    a, b = _saved_weights(path_a), _saved_weights(path_b)
    assert {n: w.shape for n, w in a.items()} == {n: w.shape for n, w in b.items()}
    return max(float(np.max(np.abs(a[n] - b[n]))) for n in a)


def _history_lines(stage_dir: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (stage_dir / "history.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[int, str]:
    """3 demo classes x 40 at 48 px, ingested with 2 and with 4 shards per split."""
    from graft.components.demo_data import generate
    from graft.components.ingest import ingest
    from graft.core.config import DataConfig

    tmp = tmp_path_factory.mktemp("dist")
    generate(tmp / "imgs", classes=3, per_class=40, size=48, seed=3)  # 82 train, 21 val
    out = {}
    for shards in (2, 4):
        out[shards] = str(tmp / f"ex{shards}")
        ingest(DataConfig(path=str(tmp / "imgs"), num_workers=1, shards=shards), out[shards])
    return out


# ---------------------------------------------------------------------------- tests


def test_shard_policy_file_only_with_two_shards_per_worker():
    import tensorflow as tf

    from graft.components.data import shard_policy

    p = tf.data.experimental.AutoShardPolicy
    assert shard_policy(16, 1, training=True) == p.AUTO
    assert shard_policy(4, 2, training=True) == p.FILE
    assert shard_policy(3, 2, training=True) == p.DATA
    assert shard_policy(2, 2, training=True) == p.DATA
    assert shard_policy(64, 2, training=False) == p.DATA  # evaluation: every image once


def test_chief_is_worker_zero_without_a_chief_task():
    from graft.components.model import chief_task

    two = {"worker": ["a:1", "b:2"]}
    assert chief_task("worker", 0, two) and not chief_task("worker", 1, two)
    assert chief_task("chief", 0, {**two, "chief": ["c:3"]})
    assert not chief_task("worker", 0, {**two, "chief": ["c:3"]})
    assert chief_task(None, None, {})


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("shards", [2, 4])
def test_multi_worker_two_processes_matches_one_worker(data, tmp_path, shards):
    """2 files per split: 1 per worker -> DATA: the same global batches as one worker, so the
    model matches to float noise (both stages). 4 files: 2 per worker -> FILE, each worker
    reads its own files; the cached head (arrays, DATA) still matches exactly. The FILE run
    trains no image stage (those see other batches than one worker, measured |val acc diff|
    0.048-0.095, which the sharding probe shows); it runs mixed precision + XLA instead."""
    examples = data[shards]
    # mixed precision + XLA rides on the FILE run: the shard policy does not touch it, and the
    # DATA run's two image stages are the longer run
    stages = ("head", "fine") if shards == 2 else ("head", "mixed")
    t0 = time.time()
    # the 1-worker reference runs beside the 2-worker cluster: separate processes, outputs
    # and ports, so neither waits for the other (most of each is single-threaded tracing)
    single = [examples, str(tmp_path / "single"), str(tmp_path / "probe1"), ",".join(stages)]
    reference = subprocess.Popen(
        [sys.executable, str(HERE), "worker", *single],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cmd = [sys.executable, str(HERE), "worker", examples, str(tmp_path / "multi")]
    try:
        runs = _cluster([*cmd, str(tmp_path / "probe2"), ",".join(stages)], tmp_path)
        _, err = reference.communicate(timeout=600)
    finally:
        if reference.poll() is None:
            reference.kill()
    assert reference.returncode == 0, err[-4000:]
    print(f"\nshards={shards}: 1 worker beside 2 workers, {time.time() - t0:.0f}s")
    ref = json.loads((tmp_path / "probe1" / "single.json").read_text())
    probes = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "probe2").glob("*.json")}
    assert set(probes) == {"worker:0", "worker:1"}
    assert probes["worker:0"]["chief"] and not probes["worker:1"]["chief"]
    policy = "DATA" if shards == 2 else "FILE"
    for stage in [s for s in stages if s != "mixed"]:
        one, two = ref["result"][stage], probes["worker:0"]["result"][stage]
        dist = two["extra"]["distribution"]
        assert (dist["strategy"], dist["replicas"], dist["workers"], dist["task"]) == (
            "MultiWorkerMirroredStrategy",
            2,
            2,
            "worker:0",
        )
        assert one["extra"]["distribution"]["workers"] == 1
        diff = _max_diff(one["model_path"], two["model_path"])
        acc = abs(one["best_val_accuracy"] - two["best_val_accuracy"])
        print(f"  {stage}: max |weight diff| {diff:.1e}, |val acc diff| {acc:.3f}")
        assert diff <= WEIGHT_TOL and acc <= ACC_TOL, stage
    # sharding: each worker got images of its own, and together every image
    everything = {f for step in ref["batches"] for rep in step for f in rep}
    mine = [{f for step in p["batches"] for rep in step for f in rep} for p in probes.values()]
    assert len(everything) == 82
    assert not (mine[0] & mine[1]), "the two workers read the same images"
    assert mine[0] | mine[1] == everything
    assert probes["worker:0"]["policy"] == probes["worker:1"]["policy"] == policy
    # chief-only writing: one history line per epoch (a second writer would double them),
    # the chief's own result, and the non-chief's temp dir made and gone
    multi = tmp_path / "multi"
    assert _history_lines(multi / "head") == list(range(1, HEAD_EPOCHS + 1))
    if "fine" in stages:
        assert _history_lines(multi / "fine") == [1, 2]
    last = "fine" if "fine" in stages else "head"
    result = json.loads((multi / last / "result.json").read_text())
    assert result["extra"]["distribution"]["task"] == "worker:0"
    assert "not the chief: writing to" in runs[1]["stderr"]
    assert "not the chief" not in runs[0]["stderr"]
    assert not list(runs[1]["tmp"].iterdir()), "the worker left its temp files"
    if "mixed" not in stages:
        return
    # mixed precision + XLA under the multi-worker strategy: one synchronised loss
    mx = [p["mixed_xla"] for p in probes.values()]
    assert mx[0] == mx[1] and mx[0]["optimizer"] == "LossScaleOptimizer" and mx[0]["jit"]
    assert mx[0]["compute_dtype"] == "float16" and 0 < mx[0]["loss"] < 10


class LocalTrainingOperator:
    """The Kubernetes API + Training Operator, played locally for one TFJob: `create` starts
    one process per Worker replica from the manifest's own command, args and env, with the
    TF_CONFIG the operator would set (127.0.0.1 ports instead of pod DNS names); `get` reports
    Succeeded or Failed as the operator does, from worker 0 (the chief)."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs, self.bodies = tmp, [], []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("kubeflow.org", "v1", "tfjobs")
        self.bodies.append(body)
        worker = body["spec"]["tfReplicaSpecs"]["Worker"]
        c = worker["template"]["spec"]["containers"][0]
        ports = _free_ports(worker["replicas"])
        for i in range(worker["replicas"]):
            tf_config = {
                "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                "task": {"type": "worker", "index": i},
            }
            env = _env(
                TF_CONFIG=json.dumps(tf_config),
                GRAFT_TFJOB_WORK=str(self.tmp / "pods" / f"worker-{i}"),  # a pod's emptyDir
                TMPDIR=str(self.tmp / f"tmp-{i}"),
                **{e["name"]: e["value"] for e in c["env"]},
            )
            (self.tmp / f"tmp-{i}").mkdir(parents=True)
            cmd = [sys.executable if c["command"][0] == "python3" else c["command"][0]]
            self.procs.append(
                subprocess.Popen(
                    cmd + c["command"][1:] + c["args"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        rc = self.procs[0].poll()
        if rc is None:
            return {"status": {"conditions": [{"type": "Running", "status": "True"}]}}
        for p in self.procs:
            p.wait(timeout=120)
        state = "Succeeded" if rc == 0 else "Failed"
        return {"status": {"conditions": [{"type": state, "status": "True", "message": ""}]}}

    def logs(self) -> list[str]:
        return [p.stderr.read() for p in self.procs]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tfjob_runs_the_step_on_two_workers_and_fills_the_output(data, tmp_path):
    """The kfp task's side (pipeline.tfjob.launch) with the compiled TFJob of workers: 2, run
    by a local stand-in for the operator: the pods' command trains the step as 2 workers
    from file:// URIs, the chief alone uploads, the task gets the output and the summary."""
    from types import SimpleNamespace

    from conftest import tiny_config

    from graft.core.config import parse_config
    from graft.pipeline import dag, tfjob

    raw = tiny_config(tmp_path, Path(data[2]), train_head__epochs=2, kubeflow__workers=2)
    raw["kubeflow"]["pipeline_root"] = "gs://bucket/root"
    cfg = parse_config(raw)
    dag.run_step("validate", cfg, {"examples": data[2]}, str(tmp_path / "validation"))
    upstream = {"examples": data[2], "validation": str(tmp_path / "validation")}
    dag.run_step("advise", cfg, upstream, str(tmp_path / "advice"))  # recipe manual: no plan
    spec = tfjob.manifest(cfg, dag.step("train_head"))
    output = SimpleNamespace(uri=f"file://{tmp_path}/artifacts/model", path=str(tmp_path / "out"))
    inputs = {
        "examples": f"file://{data[2]}",
        "validation": f"file://{tmp_path}/validation",
        "advice": f"file://{tmp_path}/advice",
    }
    operator = LocalTrainingOperator(tmp_path)
    t0 = time.time()
    summary = tfjob.launch(
        "train_head", cfg.model_dump_json(by_alias=True), spec, inputs, output, operator, 1.0
    )
    print(f"\nTFJob of 2 local workers, train_head 2 epochs: {time.time() - t0:.0f}s")
    logs = operator.logs()
    assert [p.returncode for p in operator.procs] == [0, 0], logs[1][-3000:]
    body = operator.bodies[0]
    assert body["metadata"]["name"].startswith("graft-train-head-")
    assert summary["epochs"] == 2 and 0 <= summary["val_accuracy"] <= 1
    out = Path(output.path)
    result = json.loads((out / "result.json").read_text())
    assert result["extra"]["distribution"]["workers"] == 2
    assert result["extra"]["distribution"]["task"] == "worker:0"
    assert (out / "model.keras").exists() and _history_lines(out) == [1, 2]
    assert not (tmp_path / "artifacts" / "model-tfjob").exists()  # staging removed
    assert "output uploaded" in logs[0] and "output uploaded" not in logs[1]
    assert "not the chief: writing to" in logs[1]


if __name__ == "__main__":
    mode, *argv = sys.argv[1:]
    modes = {"mirrored": main_mirrored, "mirrored_extras": main_mirrored_extras}
    {**modes, "worker": main_worker}[mode](*argv)
