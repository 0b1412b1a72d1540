"""Issue 28, items 7, 8 and 9 after a real run: the end-of-run summary says what push did,
the listings fit a terminal and tell runs apart, and the report's details (per-class recall
intervals, no trivial top-k, drift, near-duplicates, no mid-word breaks)."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import table_rows as _rows
from test_report_predict import ReportParser

from graft.components import registry
from graft.pipeline.cli import main

pytestmark = pytest.mark.slow  # the shared pipeline_run trains a model


def _report(run) -> ReportParser:
    p = ReportParser()
    p.feed(Path(run["steps"]["evaluate"]["output"], "report.html").read_text(encoding="utf-8"))
    return p


# ------------------------------------------------------------------ item 7: the summary


def test_summary_says_pushed_with_intervals_n_and_rest_port(pipeline_run, capsys, monkeypatch):
    from graft.pipeline.summary import print_summary

    cfg, run, _ = pipeline_run
    monkeypatch.setenv("COLUMNS", "200")
    print_summary(run, cfg)
    err = capsys.readouterr().err
    push = run["steps"]["push"]["summary"]
    assert f"pushed: {push['destination']} (version {push['version']})" in err
    ev = json.loads(Path(run["steps"]["evaluate"]["output"], "evaluation.json").read_text())
    value, lo, hi = ev["intervals"]["candidate"]["accuracy"]
    row = next(line for line in err.splitlines() if "fine-tuned (candidate)" in line)
    assert f"{value:.4f}" in row and f"[{lo:.3f}, {hi:.3f}]" in row
    assert str(ev["intervals"]["candidate"]["n"]) in row
    assert "95% interval" in err
    hint = next(line for line in err.splitlines() if "graft serve" in line)
    assert "--rest-port 8501" in hint and f"--model-name {cfg.export.model_name}" in hint


def test_summary_says_not_pushed_and_why(pipeline_run, capsys, monkeypatch):
    """Not blessed: export and push are skipped by their `when`, as the runner records it."""
    from graft.pipeline.summary import print_summary, push_outcome

    cfg, run, _ = pipeline_run
    monkeypatch.setenv("COLUMNS", "200")
    declined = copy.deepcopy(run)
    declined["steps"]["evaluate"]["summary"].update(
        blessed=False, reasons=["accuracy 0.6 < min_accuracy 0.9"]
    )
    for step in ("export", "push"):  # the runner skips both by their `when`: no output
        declined["steps"][step].update(
            status="skipped", summary={"reason": "evaluate.blessed is false"}, seconds=0.0
        )
    line, at_destination = push_outcome(declined)
    assert line.startswith("not pushed: not blessed (accuracy 0.6 < min_accuracy 0.9)")
    assert not at_destination
    print_summary(declined, cfg)
    err = capsys.readouterr().err
    assert "not pushed: not blessed" in err and "pushed: " not in err.replace("not pushed", "")
    assert "not exported: evaluate.blessed is false" in err
    # the skipped steps' rows say why, never an output directory they did not write
    assert run["steps"]["export"]["output"] not in err
    assert err.count("not run: evaluate.blessed is false") == 2
    assert "graft serve" not in err


def test_serve_help_says_rest_is_off_without_rest_port(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "REST is off unless --rest-port is given" in text


# ------------------------------------------------------------------ item 9: the report


def test_report_per_class_recall_intervals_no_trivial_topk_and_drift(pipeline_run):
    from graft.components.report import recall_interval

    cfg, run, _ = pipeline_run
    p = _report(run)
    ev = json.loads(Path(run["steps"]["evaluate"]["output"], "evaluation.json").read_text())
    assert len(ev["labels"]) <= cfg.evaluate.top_k
    header = p.sections["accuracy"]["rows"][0]
    assert not any(h.startswith("top-") for h in header), header
    per_class = _rows(p.sections["per-class"])
    assert per_class["class"][1] == "recall [95%]"
    for lab in ev["labels"]:
        pc = ev["candidate"]["per_class"][lab]
        value, lo, hi = recall_interval(pc)
        assert value == pytest.approx(pc["recall"])
        assert per_class[lab][1] == f"{value:.3f} [{lo:.2f}, {hi:.2f}]"
        assert hi - lo > 0.2  # a handful of test images per class: a wide interval
    # the drift step ran (a first run: nothing served): the report says so, and why
    assert p.sections["drift"]["h2"].startswith("Drift")
    text = " ".join("".join(p.sections["drift"]["text"]).split())
    assert "Not checked" in text and "nothing served yet" in text
    html = Path(run["steps"]["evaluate"]["output"], "report.html").read_text(encoding="utf-8")
    assert "break-all" not in html  # no mid-word breaks: paths wrap after separators


def test_second_run_drift_section_runs_list_and_already_pushed(
    pipeline_run, tmp_path, capsys, monkeypatch
):
    """A re-run from evaluate after the push (in a copy of the run root): drift is checked
    against the served version, the report shows each measure, `runs list` shows the verdict,
    and the summary says the model was not pushed again."""
    from graft.core.config import parse_config
    from graft.pipeline.runner import run_pipeline
    from graft.pipeline.summary import print_summary

    cfg, run, _ = pipeline_run
    root = tmp_path / "runs"
    shutil.copytree(os.path.join(cfg.runner.run_root, "steps"), root / "steps", symlinks=True)
    raw = cfg.to_dict()
    raw["runner"]["run_root"] = str(root)  # features.store stays: the same fingerprints
    again_cfg = parse_config(raw)
    again = run_pipeline(again_cfg, from_step="evaluate")
    assert again["steps"]["train_head"]["status"] == "cached"
    drift = json.loads(Path(again["steps"]["drift"]["output"], "drift.json").read_text())
    assert (
        drift["checked"] and drift["served_version"] == run["steps"]["push"]["summary"]["version"]
    )

    p = _report(again)
    rows = _rows(p.sections["drift"])
    assert rows["measure"] == ["value", "threshold", "p", "flagged"]
    label = rows["class shares (largest change, L-inf)"]
    m = drift["metrics"]["label_linf"]
    assert label == [f"{m['value']:.4f}", str(m["threshold"]), f"{m['p_value']:.4f}", "no"]

    capsys.readouterr()
    print_summary(again, again_cfg)
    err = capsys.readouterr().err
    assert "not pushed: the same model is already at" in err
    assert not any(line.startswith("pushed:") for line in err.splitlines())

    monkeypatch.setenv("COLUMNS", "100")
    assert main(["runs", "list", "--run-root", str(root)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(again["run_id"]))
    cells = line.split()
    assert cells[1:4] == ["tiny", Path(cfg.data.path).name, "succeeded"], line
    assert cells[-2:] == ["none", "already"], line  # drift verdict; pushed by the first run


def test_small_split_warning_lists_every_class_or_how_many_more(tmp_path):
    from graft.components.validate import ValidationResult, _check_small_splits
    from graft.core.config import ValidateConfig

    labels = [f"class{i:02d}" for i in range(11)]
    stats = {"counts": {"val": dict.fromkeys(labels, 2), "test": dict.fromkeys(labels[:3], 2)}}
    res = ValidationResult(passed=True)
    _check_small_splits(ValidateConfig(), stats, labels, res)
    val, test = res.warnings
    assert "class07" in val and "class08" not in val and "and 3 more" in val
    assert all(lab in test for lab in labels[:3]) and "more" not in test


# ------------------------------------------------------------------ item 8: listings


def test_models_list_fits_100_columns_without_model_name(pipeline_run, capsys, monkeypatch):
    cfg, run, _ = pipeline_run
    dest = cfg.push.destination
    monkeypatch.setenv("COLUMNS", "100")
    assert registry.models_at(dest) == ["tiny"]
    assert main(["models", "list", "--destination", dest]) == 0  # the only model there
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 100
    [v] = registry.versions(dest, "tiny")
    rows = [line for line in lines if line.startswith(str(v))]
    after = lines[lines.index(rows[0]) + 1 :]
    assert len(rows) == 1 and not (after and after[0].startswith(" ")), out  # one line
    row = rows[0]
    assert "served" in row and run["run_id"] in row and " mobilenet_v2 " in row
    weights_sha = registry.entries(dest, "tiny")[0]["lineage"]["base"]["weights_sha256"]
    assert weights_sha[:8] not in out and ".h5" not in out  # checksums and files: models show
    assert main(["models", "show", "served", "--destination", dest]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == v and shown["lineage"]["base"]["weights_sha256"] == weights_sha
    assert shown["drift"]["verdict"] == "not checked"  # the first push: nothing served before
    assert "nothing served yet" in shown["drift"]["reasons"][0]


def test_a_version_that_does_not_load_is_not_called_served(pipeline_run, tmp_path, capsys):
    cfg, _, _ = pipeline_run
    dest = tmp_path / "models"
    shutil.copytree(cfg.push.destination, dest)
    [v1] = registry.versions(str(dest), "tiny")
    broken = dest / "tiny" / str(v1 + 1)
    shutil.copytree(dest / "tiny" / str(v1), broken)
    data = (broken / "saved_model.pb").read_bytes()
    (broken / "saved_model.pb").write_bytes(data[: len(data) // 2])  # a torn copy
    statuses = {e["version"]: e["status"] for e in registry.entries(str(dest), "tiny")}
    assert statuses == {v1: "served", v1 + 1: "broken"}
    assert "does not parse" in registry.load_problem(str(broken))
    assert registry.load_problem(str(dest / "tiny" / str(v1))) is None
    assert main(["models", "list", "--destination", str(dest)]) == 0
    out, err = capsys.readouterr()
    assert f"version {v1 + 1} would not load" in err
    assert main(["models", "show", "served", "--destination", str(dest)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == v1


# ------------------------------------------------------------------ item 10: libjpeg's lines


def test_predict_on_a_truncated_jpeg_reports_it_without_libjpeg_noise(pipeline_run, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    cfg, _, _ = pipeline_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(folder / "whole.jpg", quality=90)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "torn.jpg").write_bytes(data[: len(data) * 2 // 3])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "GRAFT_"))}
    model = os.path.join(cfg.push.destination, "tiny")
    r = subprocess.run(
        # --json: a table at a pipe's 80 columns folds long paths, names cut across lines
        [sys.executable, "-m", "graft.pipeline.cli", "predict", "--json", "--model-dir", model]
        + [str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert r.returncode == 1, r.stderr  # one image could not be classified
    assert "torn.jpg: not a decodable image" in r.stderr and "whole.jpg" in r.stdout
    assert "JPEG data" not in r.stderr and "jpeg_mem" not in r.stderr, r.stderr
