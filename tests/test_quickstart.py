"""`graft train DATA_DIR`: one command on generated data, and the config it writes re-runs it."""

from __future__ import annotations

import json
import os

import pytest
import yaml

pytestmark = pytest.mark.slow  # trains a model


def test_quickstart_trains_and_its_config_reproduces_the_run(
    tiny_data, tmp_path, capsys, monkeypatch
):
    from graft.pipeline.cli import main

    runs, models = tmp_path / "runs", tmp_path / "models"
    # the photos template at test size: the demo base is what makes it offline and quick
    small = [
        "data.image_size=48",
        "data.num_workers=1",
        "base.kwargs={alpha: 0.35}",
        "train_head.epochs=4",
        "fine_tune.epochs=1",
        "fine_tune.warmup_epochs=0",
        f"runner.run_root={runs}",
        f"push.destination={models}",
    ]
    sets = [a for s in small for a in ("--set", s)]
    assert main(["train", str(tiny_data), "--weights", "demo", "--name", "quick", *sets]) == 0
    err = capsys.readouterr().err
    (run_id,) = [d for d in os.listdir(runs) if (runs / d / "run.json").exists()]
    config_file = runs / run_id / "config.yaml"
    assert f"graft run --config {config_file}" in err
    assert str(runs / run_id / "evaluate" / "report.html") in err
    saved = yaml.safe_load(config_file.read_text())
    assert saved["data"]["path"] == str(tiny_data) and saved["export"]["model_name"] == "quick"
    assert saved["base"]["name"] == "mobilenet_v2" and saved["base"]["weights"] == "demo"
    assert saved["export"]["flip_average"] is True  # from configs/photos.yaml
    assert saved["runner"]["run_root"] == str(runs)  # absolute: the file lives elsewhere
    pushed = [d for d in os.listdir(models / "quick") if d.isdigit()]
    assert len(pushed) == 1

    # the written config is the run: from another folder, every step is found in the cache
    monkeypatch.chdir(runs)
    assert main(["run", "--config", str(config_file)]) == 0
    capsys.readouterr()
    (second,) = [d for d in os.listdir(runs) if (runs / d / "run.json").exists() and d != run_id]
    rec = json.loads((runs / second / "run.json").read_text())
    statuses = {name: s["status"] for name, s in rec["steps"].items()}
    # drift re-checks against what is served now (run 1 pushed); push is never cached
    assert all(statuses[s] == "cached" for s in statuses if s not in ("push", "drift")), statuses
