"""benchmarks/gpu_check.sh works before a lent GPU's minutes are spent on it: a CPU smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(tmp_path, **env):
    return subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "OUT": str(tmp_path), "PY": sys.executable, **env},
    )


@pytest.mark.slow
def test_smoke_run_measures_every_variant_and_writes_one_result(tmp_path):
    proc = _run(tmp_path, GPU_CHECK_SMOKE="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])  # the one JSON line comes last
    assert json.loads((tmp_path / "gpu_check_smoke.json").read_text()) == row
    assert (
        row["name"] == "gpu_check_smoke" and row["smoke"] is True
    )  # never mistaken for GPU figures
    for key in ("value", "baseline", "ratio", "goal", "unit", "machine", "date"):
        assert key in row, key
    rates = row["images_per_s"]
    assert set(rates) == {"float32", "mixed_float16", "mixed_float16_xla"}
    assert all(v > 0 for v in rates.values())
    assert row["fastest"] == max(rates, key=rates.get)
    assert abs(row["value"] - rates[row["fastest"]]) <= 0.05  # images_per_s rounds to 0.1
    assert abs(row["baseline"] - rates["float32"]) <= 0.05
    fed = row["input_pipeline_images_per_s"]
    assert fed["pipeline"] > 0 and fed["memory"] > 0
    # the ratio is of the unrounded rates; the rates shown round to 0.1 images/s
    assert row["input_pipeline_ratio"] == pytest.approx(fed["pipeline"] / fed["memory"], rel=0.02)
    assert "gpu_check: float32:" in proc.stdout  # progress as it goes
    # the 2-device MirroredStrategy code ran, on the smoke run's 2 logical CPUs (no figure)
    scaling = row["mirrored_2_vs_1"]
    assert scaling["devices"] == ["/device:CPU:0", "/device:CPU:1"], scaling
    assert scaling["images_per_s"]["1_device"] > 0 and scaling["images_per_s"]["2_devices"] > 0
    assert scaling["speedup"] == pytest.approx(
        scaling["images_per_s"]["2_devices"] / scaling["images_per_s"]["1_device"], rel=0.02
    )


def test_scaling_figure_is_skipped_with_its_reason_under_two_gpus(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # benchmarks/ is not installed, as the script runs
    from benchmarks.gpu_check import SMOKE, mirrored_scaling

    out = mirrored_scaling(["/gpu:0"], "mixed_float16", True, "unused", SMOKE)
    assert set(out) == {"skipped"} and "1 GPU(s) visible" in out["skipped"]
    assert "gpu_check: 2-GPU scaling skipped" in capsys.readouterr().out


def test_full_run_without_a_gpu_says_so_and_writes_nothing(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode != 0
    assert "sees no GPU" in proc.stderr and "GPU_CHECK_SMOKE=1" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_missing_packages_are_named_and_nothing_is_installed(tmp_path):
    # -S: the same interpreter without site-packages, so TensorFlow & co. are not importable
    proc = _run(tmp_path, PY=f"{sys.executable} -S")
    assert proc.returncode == 3
    assert "missing Python packages: tensorflow" in proc.stderr and "Graft image" in proc.stderr
    assert not list(tmp_path.iterdir())
