"""report.html and model_card.md come from Jinja2 templates with autoescape on: a label, path
or reason from the data is text, never markup, in every part of either; the templates ship in
the wheel, and an installed (non-editable) Graft finds them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

from conftest import REPO, tiny_config
from PIL import Image

from graft.components import export, report
from graft.components.geometry import Geometry
from graft.core.config import parse_config

EVIL = "<script>alert(1)</script> & co"  # a class folder may be named so
SHOWN = "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"  # escaped: shown as the name, inert
MD_SHOWN = "&lt;script>alert(1)&lt;/script> &amp; co"  # Markdown: & and < start markup, > not
COMPARISON = {"difference": 0.1, "low": -0.1, "high": 0.2, "a_only": 1, "b_only": 0}
METRICS = {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2}


def _label_issues(label: str) -> dict:
    issue = {
        "rank": 1,
        "path": f"/data/{label}/x.jpg",
        "shown_path": f"{label}/x.jpg",
        "given": label,
        "suggested": label,
        "confidence": 0.9,
        "given_probability": 0.01,
        "kind": "likely_mislabelled",
        "split": "train",
    }
    return {
        "counts": {"likely_mislabelled": 1, "duplicate_across_classes": 0},
        "checked": {"train": 4},
        "folds": 3,
        "layer": label,
        "size": 48,
        "probe_accuracy": 0.9,
        "issues": [issue],
    }


def _write_report(tmp_path, label: str, evidence: dict | None = None) -> str:
    plots = {}
    for name in report.PLOTS:
        plots[name] = str(tmp_path / f"{name}.png")
        Image.new("RGB", (4, 4), "white").save(plots[name])
    scored = {"macro_f1": 1.0, "log_loss": 0.1, "ece": 0.0, "per_class": {label: METRICS}}
    res = {
        "labels": [label],
        "blessed": True,
        "reasons": [f"reason {label}"],
        "head_only": scored,
        "candidate": scored,
        "baseline": None,
        "baseline_version": None,
    }
    iv = {"n": 2, "accuracy": [0.5, 0.1, 0.9], "top_1": [0.5, 0.1, 0.9]}
    advice = {
        "recipe": "auto",
        "cell": {"size": "small", "similarity": label},
        "decisions": [{"what": "head", "choice": label, "reason": label}],
    }
    if evidence:
        advice["evidence"] = evidence
    drift = {
        "checked": True,
        "served_version": label,
        "metrics": {label: {"value": 0.1, "threshold": label, "p_value": 0.5}},
        "reasons": [label],
    }
    pair = {"eval_path": label, "eval_split": label, "train_path": label, "bits": 2, "colour": 1}
    path = report.write_report(
        str(tmp_path),
        res,
        plots,
        intervals_by_model={"head_only": iv, "candidate": iv},
        comparisons={label: COMPARISON},
        guard={"guard": label, "kept": label, "stage_rates": label},
        gallery=[{"true": label, "predicted": label, "score": 0.9, "path": label, "thumb": None}],
        provenance={"model name": label, "base": label, "data source": label},
        top_k=1,
        checks_html=report.data_checks_html([label], [pair], {}),
        advice=advice,
        drift=drift,
        label_issues=report.label_issues_html(_label_issues(label), {}, 20),
    )
    return open(path, encoding="utf-8").read()


def _sections(html: str) -> dict[str, str]:
    """Each <section id=...>'s markup by id, plus the page's head ("head")."""
    parts = re.split(r'<section id="([a-z0-9-]+)">', html)
    return {"head": parts[0], **dict(zip(parts[1::2], parts[2::2], strict=True))}


def test_a_label_with_markup_is_text_in_every_section_of_the_report(tmp_path):
    html = _write_report(tmp_path, EVIL)
    assert "<script" not in html  # no label became a tag
    sections = _sections(html)
    for sid in ("head", "verdict", "comparison", "recipe", "guard", "per-class", "wrong"):
        assert SHOWN in sections[sid], sid
    for sid in ("label-issues", "data-checks", "drift", "provenance"):
        # paths may wrap after their separators (<wbr>): the name is there, escaped
        text = sections[sid].replace("<wbr>", "")
        assert SHOWN in text, sid
    # the markup the page means is still markup: a str from outside is text, never trusted
    plain = report.write_report(
        str(tmp_path),
        {**_minimal_res()},
        {k: str(tmp_path / f"{k}.png") for k in report.PLOTS},
        intervals_by_model={},
        comparisons={},
        guard=None,
        gallery=[],
        provenance={},
        top_k=1,
        checks_html="<h2>Data checks (validate)</h2>",
    )
    assert "&lt;h2&gt;Data checks" in open(plain, encoding="utf-8").read()


def _minimal_res() -> dict:
    scored = {"macro_f1": 1.0, "log_loss": 0.1, "ece": 0.0, "per_class": {}}
    return {
        "labels": [],
        "blessed": False,
        "reasons": [],
        "head_only": scored,
        "candidate": scored,
        "baseline": None,
        "baseline_version": None,
    }


def _model_card(tmp_path, labels: list[str]) -> str:
    examples = tmp_path / "examples"
    examples.mkdir()
    counts = {s: {lab: 2 for lab in labels} for s in ("train", "val", "test")}
    stats = {"source": str(tmp_path / "a & b"), "counts": counts, "quarantined": 0}
    (examples / "stats.json").write_text(json.dumps(stats))
    cand = {
        "accuracy": 0.5,
        "macro_f1": 0.5,
        "log_loss": 0.7,
        "ece": 0.1,
        "per_class": {lab: METRICS for lab in labels},
    }
    evaluation = {
        "labels": labels,
        "candidate": cand,
        "head_only": {"accuracy": 0.4},
        "blessed": True,
        "reasons": [f"accuracy 0.5 >= min_accuracy 0.4 on {labels[0]}"],
    }
    cfg = parse_config(tiny_config(tmp_path, tmp_path / "images"))
    out = tmp_path / "export" / "tiny" / "1"
    out.mkdir(parents=True)
    export._model_card(
        str(out),
        cfg=cfg.export,
        base=cfg.base,
        head=cfg.head,
        image_size=48,
        geometry=Geometry(),
        settings={},
        examples_dir=str(examples),
        evaluation=evaluation,
        version=1,
        parity=1e-7,
        model_path=str(tmp_path / "model.keras"),
    )
    return (out / "model_card.md").read_text()


def test_a_label_with_markup_is_text_in_the_model_card(tmp_path):
    card = _model_card(tmp_path, [EVIL, "a|b", "plain"])
    assert "<script" not in card
    assert f"| {MD_SHOWN} | 1.000 | 0.500 | 0.667 | 2 |" in card  # its row of the class table
    assert "| a\\|b | 1.000" in card  # a | in a label stays in its cell
    assert f"on {MD_SHOWN})" in card  # the blessing reason names it, escaped
    # a code span shows its text as it is (an entity there would show as "&amp;")
    assert f"- Data: `{tmp_path / 'a & b'}`;" in card
    assert ">= min_accuracy 0.4" in card  # > starts no markup: kept readable
    assert "Input geometry (data.resize, inside the serving graph): squash:" in card


def _copy_sources(dest) -> None:
    """What the wheel is built from: the packages (pyproject's package-dir) and pyproject."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    for folder in ("graft", "core", "components", "serving", "pipeline"):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))


def test_the_templates_ship_in_the_wheel_and_an_installed_graft_finds_them(tmp_path):
    src, dist, site = tmp_path / "src", tmp_path / "dist", tmp_path / "site"
    src.mkdir()
    _copy_sources(src)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)]
    subprocess.run(build, check=True, capture_output=True, timeout=80)
    (wheel,) = dist.glob("graft-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {os.path.basename(n) for n in names if "/components/templates/" in n}
    on_disk = {p.name for p in (REPO / "components" / "templates").iterdir() if p.is_file()}
    assert on_disk <= shipped, on_disk - shipped
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    code = (
        "import graft.components.templates as t\n"
        "print(t.__file__)\n"
        "print(t.markdown_template('model_card.md.j2').filename)\n"
        "m = t.html_template('report_parts.html.j2').module\n"
        "print(m.data_checks_html(['a <b>'], [], {}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    module_file, template_file, rendered = run.stdout.split("\n", 2)
    assert module_file.startswith(str(site)) and template_file.startswith(str(site))
    assert "<li>a &lt;b&gt;</li>" in rendered


def test_the_recipe_section_shows_the_geometry_bound_and_the_flip_probe(tmp_path):
    gain = {"difference": 0.0095, "low": -0.001, "high": 0.0195, "low90": 0.003, "n": 2000}
    modes = {
        "squash": {"accuracy": 0.958, "low": 0.948, "high": 0.966, "gain": gain},
        "crop": {"accuracy": 0.9485, "low": 0.938, "high": 0.957},
    }
    geo = {"layer": "out_relu", "size": 224, "n": 2000, "default": "crop", "rule": "R"}
    flip_gain = {"difference": 0.02, "low": 0.004, "high": 0.036, "n": 300}
    evidence = {
        "n_train": 300,
        "n_classes": 2,
        "probes": [],
        "geometry": geo | {"modes": modes},
        "flip": {
            "layer": "out_relu",
            "size": 224,
            "resize": "crop",
            "n": 300,
            "plain": 0.9,
            "flip_average": 0.92,
            "gain": flip_gain,
            "rule": "the flip rule",
        },
    }
    text = re.sub(r"<[^>]+>", "", _sections(_write_report(tmp_path, "cat", evidence))["recipe"])
    assert "+0.9 pts [-0.1, +1.9], one-sided 90% bound +0.3" in text
    assert "plain 0.900, averaged with the mirror image 0.920: +2.0 pts [+0.4, +3.6]" in text
    assert "the flip rule" in text


def test_the_time_budget_row_says_how_many_epochs_the_measured_batches_fitted():
    from graft.components.templates import html_template

    parts = html_template("report_parts.html.j2").module
    plan = {"planned_epochs": 5, "epochs": 3, "epoch_seconds": 149.2, "batch_seconds": 0.8}
    budget = {"minutes": 8.2, "start_plan": plan, "stopped_after_epoch": 3,
              "decay_replanned_to_end_at_epoch": None}  # fmt: skip
    html = str(parts.guard_html({"guard": "kept_head", "time_budget": budget}))
    assert "at ~149s an epoch by the LR range test's measured batches, 3 of the 5 planned" in html
    assert "re-planned" not in html and "stopped after epoch 3" in html
    budget["start_plan"] = {**plan, "epochs": 5}  # all fitted: nothing to say
    assert "measured batches" not in str(parts.guard_html({"guard": "off", "time_budget": budget}))
