"""What Graft says is what it did: kept settings, exact re-runs, its own folders never data,
and a fine-tune that did not run never shown as one. Real runs on tiny generated data."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import AUTO_KEPT, tiny_config

from graft.core.config import ConfigError, load_config, parse_config
from graft.pipeline.runner import run_pipeline

pytestmark = pytest.mark.slow  # trains


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_written_config_reruns_nothing_and_own_folders_are_not_data(
    tmp_path, tiny_data, monkeypatch
):
    """`cd ROOT && graft run` with relative run root, store and destination inside ROOT (what
    `graft train .` does); then the written config.yaml re-run from elsewhere re-runs nothing."""
    root = tmp_path / "photos"
    shutil.copytree(tiny_data, root)
    raw = tiny_config(tmp_path, root, train_head__epochs=2)
    raw["fine_tune"]["enabled"] = False
    for section in ("runner", "push"):
        raw.pop(section)  # the defaults: runs/ and models/ under the working directory
    cfg_file = _write(tmp_path / "cfg.yaml", raw)
    monkeypatch.chdir(root)
    first = run_pipeline(load_config(cfg_file, ["data.path=."]))
    assert first["status"] == "succeeded"
    assert (root / "runs").is_dir() and (root / "models").is_dir()
    ingest = first["steps"]["ingest"]["summary"]
    assert sorted(ingest["labels"]) == sorted(p.name for p in tiny_data.iterdir() if p.is_dir())

    monkeypatch.chdir(tmp_path)  # another working directory: the paths in the file are absolute
    written = first["config_file"]
    again = run_pipeline(load_config(written))
    ran = {name for name, rec in again["steps"].items() if rec["status"] == "ran"}
    assert ran <= {"drift", "push"}, again["steps"]
    assert again["steps"]["train_head"]["status"] == "cached"
    keyed = [n for n in first["steps"] if n not in ("drift", "push")]  # these key on what is served
    assert [again["steps"][n]["fingerprint"] for n in keyed] == [
        first["steps"][n]["fingerprint"] for n in keyed
    ]


def test_explicit_setting_wins_over_auto_and_no_fine_tune_is_shown_as_none(auto_run):
    # conftest's auto_run: recipe auto over a template; the template's keys are Graft's,
    # AUTO_KEPT's --set is the user's
    cfg = load_config(Path(auto_run["tmp"]) / "template.yaml", AUTO_KEPT, template=True)
    assert cfg.advise.keep == ["train_head.epochs", "train_head.patience"]
    run = auto_run["run"]
    assert run["status"] == "succeeded"
    advice = json.load(open(Path(run["steps"]["advise"]["output"]) / "advice.json"))
    assert "train_head.epochs" not in advice["overrides"]
    kept = advice["kept"]["train_head.epochs"]
    assert kept["yours"] == {"train_head.epochs": 3} and kept["advise"] != 3
    assert any(
        d["what"] == "kept" and "kept your setting train_head.epochs=3" in d["reason"]
        for d in advice["decisions"]
    )
    head = json.load(open(Path(run["steps"]["train_head"]["output"]) / "result.json"))
    assert head["epochs_run"] == 3  # what the user set, not advise's choice
    text = Path(run["config_file"]).read_text()
    assert "your setting train_head.epochs=3 kept (advise would choose" in text
    assert "advise chose" in text
    written = yaml.safe_load(text)
    assert written["train_head"]["epochs"] == 3
    assert written["advise"]["keep"] == ["train_head.epochs", "train_head.patience"]

    # small data: advise planned no fine-tuning; nothing shows a fine-tuned model
    assert advice["overrides"]["fine_tune.enabled"] is False
    ft = json.load(open(Path(run["steps"]["fine_tune"]["output"]) / "result.json"))
    assert ft["extra"]["skipped"].startswith("advise: small")
    assert run["steps"]["fine_tune"]["summary"]["ran"] is False
    ev = run["steps"]["evaluate"]["summary"]
    assert ev["fine_tuned"] is False
    evaluation = json.load(open(Path(run["steps"]["evaluate"]["output"]) / "evaluation.json"))
    assert "fine-tuned - head only" not in evaluation["comparisons"]
    html = open(Path(run["steps"]["evaluate"]["output"]) / "report.html").read()
    assert "fine-tuned (candidate)" not in html and "F1, head only" not in html
    assert "Fine-tuning did not run (advise: small" in html
    assert "fine_tune.enabled: false" not in html  # a setting the user never made


def test_a_hand_edit_of_a_written_config_is_kept_not_replanned(auto_run, tmp_path):
    """A run's config.yaml edited by hand and re-run: under recipe auto the edit is the
    user's setting (advise.keep), not a value advise silently plans over."""
    run_dir = Path(auto_run["run"]["config_file"]).parent
    written = tmp_path / "config.yaml"  # a copy of the run's folder (the fixture is shared)
    shutil.copy(run_dir / "config.yaml", written)
    record = json.loads((run_dir / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({**record, "config_file": str(written)}))
    raw = yaml.safe_load(written.read_text())
    assert load_config(written).advise.keep == raw["advise"]["keep"]  # unedited: nothing added
    planned = json.load(open(Path(auto_run["run"]["steps"]["advise"]["output"]) / "advice.json"))
    assert (
        "head.normalize" in planned["overrides"] and "head.normalize" not in raw["advise"]["keep"]
    )
    raw["head"]["normalize"] = not raw["head"]["normalize"]  # a key the plan sets
    cfg = load_config(_write(written, raw))  # edited in place, as its header says
    assert cfg.advise.keep == sorted([*raw["advise"]["keep"], "head.normalize"])
    assert cfg.head.normalize is raw["head"]["normalize"]
    (tmp_path / "run.json").write_text(json.dumps({**record, "config_file": "elsewhere.yaml"}))
    assert load_config(written).advise.keep == raw["advise"]["keep"]  # another run's record


def test_written_config_lists_what_the_user_set(tmp_path):
    """A user's own file: every key in it is theirs (kept over advise); --set adds to it."""
    f = _write(
        tmp_path / "mine.yaml",
        {"data": {"path": str(tmp_path)}, "recipe": "auto", "fine_tune": {"epochs": 4}},
    )
    cfg = load_config(f, ["head.dropout=0.3"])
    assert cfg.advise.keep == ["data.path", "fine_tune.epochs", "head.dropout"]
    listed = _write(tmp_path / "listed.yaml", {**yaml.safe_load(f.read_text()), "advise": {}})
    assert load_config(listed).advise.keep == ["data.path", "fine_tune.epochs"]
    explicit = {**yaml.safe_load(f.read_text()), "advise": {"keep": []}}
    assert load_config(_write(tmp_path / "explicit.yaml", explicit)).advise.keep == []
    # a written config.yaml lists advise.keep: a --set on it re-running is still the user's
    rerun = load_config(_write(tmp_path / "written.yaml", explicit), ["train_head.epochs=5"])
    assert rerun.advise.keep == ["train_head.epochs"] and rerun.train_head.epochs == 5
    assert load_config(f, ["advise.keep=[]", "head.dropout=0.3"]).advise.keep == []  # as given
    with pytest.raises(ConfigError, match="advise.keep: 'train_head.epoch' is not a config key"):
        load_config(f, ["advise.keep=[train_head.epoch]"])
    assert os.path.exists(f)


def test_a_kept_section_keeps_each_of_its_settings_for_advise():
    """advise.keep: [train_head] keeps train_head.augment too: advise's checks look settings
    up by their leaf key, and missed a whole kept section."""
    from graft.components.advise import _views_blocked
    from graft.pipeline import dag
    from graft.pipeline.dag import kept_settings

    raw = {"data": {"path": "x"}, "recipe": "auto", "train_head": {"augment": True}}
    cfg = parse_config({**raw, "advise": {"keep": ["train_head"]}})
    kept = kept_settings(dag.scoped(dag.step("advise"), cfg))  # as the step sees the config
    assert kept["train_head.augment"] is True and "train_head" not in kept
    assert _views_blocked(kept) == "train_head.augment=true"
    leaf = parse_config({**raw, "advise": {"keep": ["train_head.epochs"]}})
    assert kept_settings(leaf) == {"train_head.epochs": leaf.train_head.epochs}


def test_a_fine_tuning_the_guard_rejects_is_never_reported_as_the_candidate(tmp_path, tiny_data):
    """The guard kept the head: the candidate is the head's weights, so no output may show
    them under "fine-tuned" or claim a fine-tuned - head gain on test."""
    from rich.console import Console

    from graft.core.config import parse_config
    from graft.pipeline.summary import quality_table

    raw = tiny_config(tmp_path, tiny_data, train_head__epochs=4)
    # SGD at rate 1 wrecks the base in one epoch: val falls, the guard keeps the head
    raw["fine_tune"].update(
        enabled=True, optimizer="sgd", learning_rate=1.0, cosine_decay=False, patience=0
    )
    raw["fine_tune"]["unfreeze"] = {"mode": "all"}
    run = run_pipeline(parse_config(raw), until="evaluate")
    assert run["status"] == "succeeded"
    out = Path(run["steps"]["evaluate"]["output"])
    guard = json.loads((Path(run["steps"]["fine_tune"]["output"]) / "result.json").read_text())
    assert guard["extra"]["guard"] == "kept_head"
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["fine_tuned"] is False and ev["fine_tune_rejected"] is True
    assert not any(k.startswith("fine-tuned") for k in ev["comparisons"])
    console = Console(width=200, record=True)
    console.print(quality_table(run["steps"]["evaluate"]))
    table = console.export_text()
    assert "head only (candidate; the guard kept it over the fine-tuned model)" in table
    assert "fine-tuned (candidate)" not in table
    html = (out / "report.html").read_text()
    assert "the guard kept it over the fine-tuned model (not scored on test)" in html
    assert "Fine-tuning guard" in html and "fine-tuned (candidate)" not in html
