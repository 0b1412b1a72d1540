"""After a run: the report's sections (parsed), finding it (runs list, report, the summary),
local batch prediction against the real server, and the report in a real browser."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import REPO
from conftest import table_rows as _rows

pytestmark = pytest.mark.slow  # trains a model (the shared pipeline_run)


class ReportParser(HTMLParser):
    """Sections by id, with their h2 title, table rows (cell texts), images and text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, dict] = {}
        self.current: dict | None = None
        self.tag_stack: list[str] = []
        self.row: list[str] | None = None
        self.cell: list[str] | None = None
        self.cards = 0
        self.prov: list[list[str]] = []
        self.title = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tag_stack.append(tag)
        if tag == "section":
            self.current = self.sections.setdefault(
                a.get("id", ""), {"h2": "", "rows": [], "imgs": [], "text": []}
            )
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th", "dt", "dd"):
            self.cell = []
        elif tag == "img" and self.current is not None:
            self.current["imgs"].append(a.get("src", ""))
        elif tag == "div" and a.get("class") == "card":
            self.cards += 1

    def handle_endtag(self, tag):
        if self.tag_stack:
            self.tag_stack.pop()
        if tag in ("td", "th") and self.row is not None and self.cell is not None:
            self.row.append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag in ("dt", "dd") and self.cell is not None:
            text = " ".join("".join(self.cell).split())
            if tag == "dt":
                self.prov.append([text])
            else:
                self.prov[-1].append(text)
            self.cell = None
        elif tag == "tr" and self.row is not None and self.current is not None:
            self.current["rows"].append(self.row)
            self.row = None
        elif tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)
        if self.tag_stack and self.tag_stack[-1] == "h2" and self.current is not None:
            self.current["h2"] += data
        if self.tag_stack and self.tag_stack[-1] == "title":
            self.title += data
        if self.current is not None:
            self.current["text"].append(data)


def _eval_dir(run) -> str:
    return run["steps"]["evaluate"]["output"]


@pytest.fixture(scope="module")
def report(pipeline_run):
    _, run, _ = pipeline_run
    p = ReportParser()
    p.feed(Path(_eval_dir(run), "report.html").read_text(encoding="utf-8"))
    ev = json.loads(Path(_eval_dir(run), "evaluation.json").read_text())
    return p, ev


def test_report_has_every_section(report):
    p, ev = report
    want = {
        "verdict": "Verdict",
        "accuracy": "Accuracy",
        "comparison": "Head only vs fine-tuned vs served",
        "guard": "Fine-tuning guard",
        "per-class": "Per-class metrics",
        "wrong": "Most confidently wrong test images",
        "label-issues": "Label issues (advise)",  # recipe manual: "Not checked"
        "confusion": "Confusion matrix",
        "per-class-f1": "Per-class F1",
        "curves": "Training curves",
        "data-checks": "Data checks (validate)",
        "provenance": "Provenance",
    }
    assert {k: p.sections.get(k, {}).get("h2") for k in want} == want
    assert ("BLESSED" in p.title) and ev["report"] == "report.html"
    for sid in ("confusion", "per-class-f1", "curves"):
        assert p.sections[sid]["imgs"][0].startswith("data:image/png;base64,")


def test_report_numbers_are_the_evaluation(report, pipeline_run):
    p, ev = report
    n = ev["test_examples"]
    acc = _rows(p.sections["accuracy"])
    # top-3 of 3 classes is always 100%: the column is left out (tests/test_run_outputs.py)
    assert ("top-3" in p.sections["accuracy"]["rows"][0]) == (len(ev["labels"]) > 3)
    cand = acc["fine-tuned (candidate)"]
    value, lo, hi = ev["intervals"]["candidate"]["accuracy"]
    assert cand[0] == f"{100 * value:.1f}% [{100 * lo:.1f}%, {100 * hi:.1f}%]"
    assert lo <= ev["candidate"]["accuracy"] <= hi and hi - lo > 0.05  # tiny n: a wide interval
    assert "head only (frozen base)" in acc
    per_class = _rows(p.sections["per-class"])
    labels = ev["labels"]
    assert set(labels) <= set(per_class)
    assert sum(int(per_class[lab][3]) for lab in labels) == n  # support adds up to the test set
    for lab in labels:
        pc = ev["candidate"]["per_class"][lab]
        cells = [per_class[lab][0], per_class[lab][1].split(" [")[0], per_class[lab][2]]
        assert cells == [f"{pc[k]:.3f}" for k in ("precision", "recall", "f1")]
    comp = _rows(p.sections["comparison"])
    d = ev["comparisons"]["fine-tuned - head only"]
    assert comp["fine-tuned - head only"][0] == f"{100 * d['difference']:+.1f} pts"


def test_report_guard_gallery_and_provenance(report, pipeline_run):
    p, ev = report
    _, run, _ = pipeline_run
    ft = json.loads(Path(run["steps"]["fine_tune"]["output"], "result.json").read_text())
    guard = _rows(p.sections["guard"])
    assert guard["kept"] == [ft["extra"]["kept"]]
    # the fixture's guard is off: nothing says the guard judged the model it kept
    from graft.components.train import SHIPPED_UNGUARDED

    assert ft["extra"]["guard"] == "off" and ft["extra"]["shipped"] == SHIPPED_UNGUARDED
    assert "without a guard (fine_tune.guard: false)" in " ".join(p.sections["guard"]["text"])
    cm = ev["candidate"]["confusion_matrix"]
    wrong = sum(map(sum, cm)) - sum(cm[i][i] for i in range(len(cm)))
    assert p.cards == min(12, wrong)
    thumbs = [s for s in p.sections["wrong"]["imgs"] if s.startswith("data:image/jpeg;base64,")]
    assert len(thumbs) == p.cards
    prov = dict(p.prov)
    stats = json.loads(Path(run["steps"]["ingest"]["output"], "stats.json").read_text())
    assert prov["data fingerprint"] == stats["data_fingerprint"]
    assert prov["config hash"] == run["steps"]["evaluate"]["fingerprint"]
    assert prov["base"].startswith("mobilenet_v2")
    assert prov["test images"] == str(ev["test_examples"])


def test_runs_list_report_and_summary_find_it(pipeline_run, capsys):
    from graft.pipeline.cli import main
    from graft.pipeline.summary import print_summary

    cfg, run, _ = pipeline_run
    root = cfg.runner.run_root
    assert main(["runs", "list", "--run-root", root]) == 0
    out = capsys.readouterr().out
    assert run["run_id"] in out and "succeeded" in out
    acc = run["steps"]["evaluate"]["summary"]["accuracy"]
    assert f"{acc:.3f}" in out
    assert main(["report", run["run_id"], "--run-root", root]) == 0
    path = capsys.readouterr().out.strip()
    assert path == os.path.join(run["run_dir"], "evaluate", "report.html")
    assert os.path.isfile(path)
    # latest: the newest run with a report (other tests may have run this config again since)
    assert main(["report", "latest", "--run-root", root]) == 0
    latest = capsys.readouterr().out.strip()
    assert (
        os.path.isfile(latest)
        and os.path.basename(os.path.dirname(os.path.dirname(latest))) >= (run["run_id"])
    )
    assert main(["report", "no-such-run", "--run-root", root]) == 2
    print_summary(run, cfg)
    err = capsys.readouterr().err
    assert f"report: {path}" in err and "…" not in err


# ------------------------------------------------------------------ local batch prediction


@pytest.fixture(scope="module")
def server(pipeline_run, tmp_path_factory):
    from graft.serving.launch import ServerProcess

    cfg, _, _ = pipeline_run
    base = tmp_path_factory.mktemp("predict") / "tiny"
    shutil.copytree(os.path.join(cfg.push.destination, "tiny"), base)
    srv = ServerProcess(str(base), "tiny", log_path=str(base.parent / "server.log"))
    srv.wait_healthy()
    yield srv, base
    srv.stop()


def _graft(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    return subprocess.run(
        [sys.executable, "-m", "graft.pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )


def test_local_predict_on_a_folder_matches_the_server(server, tiny_data, tmp_path):
    from graft.core.paths import image_files
    from graft.serving.client import GraftClient

    srv, base = server
    out = tmp_path / "pred.csv"
    r = _graft("predict", "--model-dir", str(base), "--csv", str(out), str(tiny_data))
    assert r.returncode == 0, r.stderr
    assert "absl" not in r.stderr and "cuInit" not in r.stderr, r.stderr
    rows = list(csv.DictReader(out.open()))
    files = image_files([str(tiny_data)])
    assert [row["image"] for row in rows] == files and len(files) == 120  # walked, in order
    with GraftClient(srv.target, "tiny") as c:
        served = [p for i in range(0, len(files), 40) for p in c.predict(files[i : i + 40], 3)]
    for row, p in zip(rows, served, strict=True):
        assert [row[f"label_{k}"] for k in (1, 2, 3)] == p.labels, row["image"]
        got = [float(row[f"score_{k}"]) for k in (1, 2, 3)]
        assert max(abs(a - b) for a, b in zip(got, p.scores, strict=True)) <= 2e-6
        assert row["error"] == ""


def test_server_predict_walks_folders_too(server, tiny_data):
    srv, _ = server
    sub = tiny_data / sorted(os.listdir(tiny_data))[0]
    r = _graft("predict", "--server", srv.target, "--model", "tiny", "--json", str(sub))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 40 and all(len(x["labels"]) == 3 for x in lines)


def test_a_broken_image_fails_alone(server, tiny_data, tmp_path):
    _, base = server
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"not an image")
    good = sorted((tiny_data / sorted(os.listdir(tiny_data))[0]).iterdir())[:3]
    for g in good:
        shutil.copy(g, bad.parent / g.name)
    out = tmp_path / "p.csv"
    r = _graft("predict", "--model-dir", str(base), "--csv", str(out), str(bad.parent))
    assert r.returncode == 1  # some image failed
    rows = {Path(row["image"]).name: row for row in csv.DictReader(out.open())}
    assert rows["broken.jpg"]["error"] and not rows["broken.jpg"]["label_1"]
    assert all(rows[g.name]["label_1"] and not rows[g.name]["error"] for g in good)


# ------------------------------------------------------------------ a real browser


def test_report_renders_in_headless_chromium(pipeline_run, tmp_path):
    """Chromium draws the report: the screenshot is a page of text, tables and charts."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    from PIL import Image

    _, run, _ = pipeline_run
    shot = tmp_path / "report.png"
    page = Path(run["run_dir"], "evaluate", "report.html").resolve().as_uri()
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1200,2400",
            page,
        ],
        capture_output=True,
        timeout=180,
        check=True,
    )
    im = Image.open(shot).convert("RGB")
    assert im.size == (1200, 2400)
    small = im.resize((300, 600))
    colours = small.getcolors(maxcolors=1 << 16) or []
    non_white = sum(n for n, c in colours if sum(c) < 720) / (300 * 600)
    assert len(colours) > 200, f"only {len(colours)} colours: blank or unstyled page"
    assert non_white > 0.05, f"{non_white:.1%} of the page is not white"


def test_a_local_model_dir_takes_the_version_asked_for(tmp_path):
    """`graft predict --model-dir models/NAME --version N` reads version N, not the newest."""
    from graft.serving.local import resolve_model_dir

    for v in (3, 12):
        (tmp_path / str(v)).mkdir()
        (tmp_path / str(v) / "saved_model.pb").write_bytes(b"")
    assert resolve_model_dir(str(tmp_path)) == (str(tmp_path / "12"), 12)
    assert resolve_model_dir(str(tmp_path), 3) == (str(tmp_path / "3"), 3)
    with pytest.raises(FileNotFoundError, match="no version 7 .*versions: 3, 12"):
        resolve_model_dir(str(tmp_path), 7)
    with pytest.raises(FileNotFoundError, match="not version 3"):
        resolve_model_dir(str(tmp_path / "12"), 3)
    r = _graft("predict", "--tflite", str(tmp_path / "m.tflite"), "--version", "3", str(tmp_path))
    assert r.returncode == 2 and "--version is not for it" in r.stderr


@pytest.mark.parametrize("flag", ["--top-k", "--batch-size"])
def test_predict_refuses_counts_below_one_naming_the_flag(flag, tmp_path):
    """--top-k -1 gave C-1 labels per image, and --top-k 0 a CSV without label columns, exit 0."""
    r = _graft("predict", "--model-dir", str(tmp_path), flag, "0", str(tmp_path))
    assert r.returncode == 2 and f"argument {flag}: 0: must be at least 1" in r.stderr, r.stderr
