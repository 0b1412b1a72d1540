"""MirroredStrategy over 2 logical CPUs through Graft's own train_head / fine_tune.

Its own file so that the test runner can run it beside the multi-worker tests
(tests/test_distributed.py holds the runs' code: each run is a fresh process of that file).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from test_distributed import (
    ACC_TOL,
    HEAD_EPOCHS,
    WEIGHT_TOL,
    _batch_norms,
    _history_lines,
    _max_diff,
    _script,
    _scripts,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> str:
    """3 demo classes x 40 at 48 px, ingested with 2 shards per split."""
    from graft.components.demo_data import generate
    from graft.components.ingest import ingest
    from graft.core.config import DataConfig

    tmp = tmp_path_factory.mktemp("mirrored")
    generate(tmp / "imgs", classes=3, per_class=40, size=48, seed=3)  # 82 train, 21 val
    ingest(DataConfig(path=str(tmp / "imgs"), num_workers=1, shards=2), str(tmp / "ex"))
    return str(tmp / "ex")


@pytest.fixture(scope="module")
def runs(examples, tmp_path_factory) -> dict[str, str]:
    """Both stages on 2 replicas and, side by side with it, on 1 device (the reference); the
    2-replica outputs are the next test's starting point."""
    out = {n: str(tmp_path_factory.mktemp(n)) for n in ("one", "two")}
    t0 = time.time()
    _scripts(("mirrored", examples, out["one"], "1"), ("mirrored", examples, out["two"], "2"))
    print(f"\nmirrored: 1 device beside 2 devices {time.time() - t0:.0f}s")
    return out


@pytest.fixture(scope="module")
def two_devices(runs) -> str:
    return runs["two"]


@pytest.mark.timeout(900)
def test_two_logical_cpus_match_one_device(runs):
    """Both stages (the head on cached features, the fine-tune on image batches) on 2
    replicas against the same code on 1 device."""
    one = json.loads((Path(runs["one"]) / "summary.json").read_text())
    two = json.loads((Path(runs["two"]) / "summary.json").read_text())
    for stage in ("head", "fine"):
        a, b = one[stage], two[stage]
        assert a["extra"]["distribution"]["replicas"] == 1
        assert b["extra"]["distribution"] == {
            "strategy": "MirroredStrategy",
            "replicas": 2,
            "workers": 1,
            "task": None,
        }
        diff = _max_diff(a["model_path"], b["model_path"])
        acc = abs(a["best_val_accuracy"] - b["best_val_accuracy"])
        print(f"  {stage}: max |weight diff| {diff:.1e}, |val acc diff| {acc:.1e}")
        assert diff <= WEIGHT_TOL and acc <= ACC_TOL, stage
    assert two["head"]["cache_used"]
    # training moved the weights by far more than the tolerance: the match is not vacuous
    assert _max_diff(two["head"]["model_path"], two["fine"]["model_path"]) > 20 * WEIGHT_TOL


@pytest.mark.timeout(900)
def test_batch_split_resume_guard_mixed_precision_and_frozen_bn(examples, two_devices):
    _script("mirrored_extras", examples, two_devices)
    r = json.loads((Path(two_devices) / "extras.json").read_text())
    # batch sharding: 82 images, batch 16: 8 + 8 per step, the last 2 as 1 + 1, none lost
    sizes = [[len(rep) for rep in step] for step in r["replica_batches"]]
    assert sizes == [[8, 8]] * 5 + [[1, 1]]
    seen = [f for step in r["replica_batches"] for rep in step for f in rep]
    assert len(seen) == len(set(seen)) == 82
    # frozen BatchNormalization: every BN layer's weights and statistics untouched by fine-tune
    head = _batch_norms(str(Path(two_devices) / "head" / "model.keras"))
    fine = _batch_norms(str(Path(two_devices) / "fine" / "model.keras"))
    assert len(fine) >= 19 and list(head) == list(fine)  # 19 in the tests' shallow base
    for layer, weights in fine.items():
        assert len(weights) == 4, layer  # gamma, beta, moving mean, moving variance
        assert all(np.array_equal(a, b) for a, b in zip(head[layer], weights, strict=True)), layer
    # checkpoint/resume under the strategy
    assert r["killed"] and r["resumed"]["resumed_from_epoch"] == 1
    assert _history_lines(Path(two_devices) / "resume") == list(range(1, HEAD_EPOCHS + 1))
    # the guard under the strategy: the destructive fine-tune is rejected, the head kept
    g = r["guard"]["extra"]
    assert g["guard"] == "kept_head" and g["fine_tuned_val_accuracy"] < g["head_val_accuracy"]
    assert _max_diff(r["guard"]["model_path"], str(Path(two_devices) / "head" / "model.keras")) == 0
    # mixed precision on Graft's model under the strategy: float16 compute, float32 scores
    mx = r["mixed"]
    assert mx["replicas"] == 2 and mx["optimizer"] == "LossScaleOptimizer"
    assert mx["compute_dtype"] == "float16" and mx["output_dtype"] == "float32"
    assert 0 < mx["loss"] < 10
