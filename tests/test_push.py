"""Push under overlap and re-runs, and blessing of ties, with real exports and real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf
from conftest import step_output as _out
from conftest import tiny_config
from model_copies import other_model_export

from graft.components.evaluate import bless
from graft.components.hashing import weights_sha256
from graft.components.push import TMP_PREFIX
from graft.components.registry import INDEX, MARKER, read_index, versions
from graft.core.config import EvaluateConfig, PushConfig, parse_config

PUSH = """
import json, os, sys, time
from graft.components.push import push
from graft.core.config import PushConfig
export, evaluation, out, dest, mode, go = sys.argv[1:7]
print("ready", flush=True)  # imports done: starting now costs no time
while not os.path.exists(go):
    time.sleep(0.005)
if mode == "mid-copy":  # start only once another push is copying into its temp dir
    root, t0 = os.path.join(dest, "tiny"), time.time()
    while time.time() - t0 < 60 and not [
        d for d in os.listdir(root) if d.startswith(".tmp-") and not d.endswith(".lock")
    ]:
        time.sleep(0.002)
# force: the copies share the first run's evaluation (no baseline then), and each would
# otherwise be refused for not beating the model served now (the push-time re-check)
r = push(export, evaluation, out, cfg=PushConfig(destination=dest), model_name="tiny", force=True)
tf = "tensorflow" in sys.modules  # a local push needs none: its pod starts without it
print(json.dumps({"pushed": r.pushed, "already": r.already_at_destination, "version": r.version,
                  "tensorflow": tf}))
"""


def _pushes_at_once(jobs: list[tuple[Path, Path, str]], evaluation: str, dest: Path, go: Path):
    """One process per (export, out dir, mode), all released together once imported.

    mode "now" pushes at once; "mid-copy" waits until another push is copying.
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUSH, str(e), evaluation, str(o), str(dest), mode, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        for e, o, mode in jobs
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.communicate()[1][-3000:]
    go.write_text("go")
    return procs


def _visible_versions_are_complete(model_dir: Path) -> list[int]:
    """Every numbered dir: saved_model.pb, the marker, and as many files as the marker says."""
    seen = []
    for d in os.listdir(model_dir):
        if not d.isdigit():
            continue
        v = model_dir / d
        assert (v / "saved_model.pb").exists(), f"version {d} visible without saved_model.pb"
        marker = json.loads((v / MARKER).read_text())
        files = sum(len(fs) for _, _, fs in os.walk(v))
        assert files == marker["files"] + 1, f"version {d}: {files} files, marker says complete"
        seen.append(int(d))
    return seen


# ---------------------------------------------------------------- blessing (no model)


def test_ties_are_not_blessed_by_default_first_model_is():
    ok, why = bless(EvaluateConfig(), {"accuracy": 0.8}, {"accuracy": 0.8}, None)
    assert not ok and "tie" in why[-1] and "bless_ties" in why[-1]
    ok, _ = bless(EvaluateConfig(bless_ties=True), {"accuracy": 0.8}, {"accuracy": 0.8}, None)
    assert ok
    ok, why = bless(EvaluateConfig(), {"accuracy": 0.8}, None, None)
    assert ok and "first model" in why[-1]
    ok, _ = bless(EvaluateConfig(), {"accuracy": 0.81}, {"accuracy": 0.8}, None)
    assert ok


# ---------------------------------------------------------------- with the pipeline's model


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_concurrent_pushes_only_ever_show_complete_versions(pipeline_run, tmp_path):
    cfg, run, _ = pipeline_run
    dest = tmp_path / "models"
    shutil.copytree(cfg.push.destination, dest)
    before = versions(str(dest), "tiny")
    small = other_model_export(_out(run, "export"), tmp_path / "small", scale=1.01)
    large = other_model_export(_out(run, "export"), tmp_path / "large", scale=1.02, pad_files=3000)
    jobs = [(large, tmp_path / "p-large", "now"), (small, tmp_path / "p-small", "mid-copy")]
    procs = _pushes_at_once(jobs, _out(run, "evaluate"), dest, tmp_path / "go")
    checks, seen = 0, set()
    while any(p.poll() is None for p in procs):
        seen.update(_visible_versions_are_complete(dest / "tiny"))
        checks += 1
        time.sleep(0.01)
    outs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    after = versions(str(dest), "tiny")
    _visible_versions_are_complete(dest / "tiny")
    assert checks > 10  # the poller really watched while both ran
    assert all(r["pushed"] for r in results), results  # two different models: both go in
    assert not any(r["tensorflow"] for r in results)  # local files: os and shutil, no TF
    assert sorted(after) == sorted(before + [r["version"] for r in results])
    left = [d for d in os.listdir(dest / "tiny") if not d.isdigit() and d != INDEX]
    assert not left  # no temp, no lock: the versions and the registry index only
    indexed = {e["version"] for e in read_index(str(dest), "tiny")}
    assert indexed == set(after), (indexed, after)  # both pushes recorded: no lost update
    big = dest / "tiny" / str(results[0]["version"])
    assert len(os.listdir(big / "assets.extra" / "pad")) == 3000
    for r, export in zip(results, (large, small), strict=True):
        v = dest / "tiny" / str(r["version"])
        assert weights_sha256(str(v)) == weights_sha256(
            json.load(open(export / "export.json"))["path"]
        )
        tf.saved_model.load(str(v))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_same_model_pushed_twice_at_once_goes_in_once(pipeline_run, tmp_path):
    cfg, run, _ = pipeline_run
    dest = tmp_path / "models"
    shutil.copytree(cfg.push.destination, dest)
    before = versions(str(dest), "tiny")
    export = other_model_export(_out(run, "export"), tmp_path / "e", scale=1.03, pad_files=2000)
    jobs = [(export, tmp_path / f"p{i}", "now") for i in range(2)]
    procs = _pushes_at_once(jobs, _out(run, "evaluate"), dest, tmp_path / "go")
    while any(p.poll() is None for p in procs):
        _visible_versions_are_complete(dest / "tiny")
        time.sleep(0.01)
    outs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    results = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert sorted(r["pushed"] for r in results) == [False, True], results
    refused = next(r for r in results if not r["pushed"])
    assert refused["already"]  # refused cleanly: it says where the model already is
    assert len(versions(str(dest), "tiny")) == len(before) + 1
    assert not [d for d in os.listdir(dest / "tiny") if not d.isdigit() and d != INDEX]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_same_weights_in_a_new_file_are_not_pushed_again(pipeline_run, tmp_path):
    """A re-saved model.keras has a new file checksum; its weights are what count."""
    from graft.components.push import push

    cfg, run, _ = pipeline_run
    dest = tmp_path / "models"
    shutil.copytree(cfg.push.destination, dest)
    before = versions(str(dest), "tiny")
    same = other_model_export(_out(run, "export"), tmp_path / "same", scale=1.0)
    assert (
        json.load(open(same / "export.json"))["model_sha256"]
        != json.load(open(Path(_out(run, "export")) / "export.json"))["model_sha256"]
    )
    r = push(
        str(same),
        _out(run, "evaluate"),
        str(tmp_path / "p"),
        cfg=PushConfig(destination=str(dest)),
        model_name="tiny",
        force=True,  # even forced: the destination already serves exactly this model
    )
    assert not r.pushed and r.already_at_destination and r.version == before[-1]
    assert versions(str(dest), "tiny") == before


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_live_push_keeps_its_temp_dir_a_dead_one_loses_it(pipeline_run, tmp_path):
    from graft.components.push import push

    cfg, run, _ = pipeline_run
    dest = tmp_path / "models"
    shutil.copytree(cfg.push.destination, dest)
    root = dest / "tiny"
    live, dead = root / f"{TMP_PREFIX}h-1-live", root / f"{TMP_PREFIX}h-2-dead"
    for d in (live, dead):
        d.mkdir()
        (d / "partial").write_text("x")
        (root / f"{d.name}.lock").write_text("")
    holder = subprocess.Popen(  # a running push: holds its owner lock
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True); time.sleep(120)",
            str(root / f"{live.name}.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        export = other_model_export(_out(run, "export"), tmp_path / "e", scale=1.04)
        r = push(
            str(export),
            _out(run, "evaluate"),
            str(tmp_path / "p"),
            cfg=PushConfig(destination=str(dest)),
            model_name="tiny",
            force=True,  # a stale evaluation (no baseline then): past the push-time re-check
        )
        assert r.pushed
        assert live.exists() and (live / "partial").exists()  # its owner is still running
        assert not dead.exists() and not (root / f"{dead.name}.lock").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_equal_accuracy_is_not_blessed_unless_bless_ties(pipeline_run, tmp_path):
    """The served model and a candidate that scores the same: no blessing by default."""
    from graft.components.evaluate import evaluate

    cfg, run, _ = pipeline_run
    dest = tmp_path / "models"
    shutil.copytree(cfg.push.destination, dest)
    served = dest / "tiny" / str(versions(str(dest), "tiny")[-1])
    marker = json.loads((served / MARKER).read_text())
    marker["model_sha256"] = "a-file-saved-at-another-time"  # same weights, another file
    (served / MARKER).write_text(json.dumps(marker))
    common = dict(
        destination=str(dest),
        model_name="tiny",
        image_size=cfg.data.image_size,
        validation_dir=_out(run, "validate"),
    )
    args = (_out(run, "ingest"), _out(run, "train_head"), _out(run, "fine_tune"))
    ev = evaluate(*args, str(tmp_path / "ev"), cfg=cfg.evaluate, **common)
    assert ev.baseline is not None and ev.baseline["accuracy"] == ev.candidate["accuracy"]
    assert not ev.blessed and "tie" in ev.reasons[-1]
    ties = cfg.evaluate.model_copy(update={"bless_ties": True})
    ev2 = evaluate(*args, str(tmp_path / "ev2"), cfg=ties, **common)
    assert ev2.blessed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_unchanged_rerun_pushes_nothing(pipeline_run, tiny_data, tmp_path):
    """The issue's case: fine-tune re-runs but keeps the head-only weights it had before."""
    from graft.pipeline.runner import run_pipeline

    cfg, run, tmp = pipeline_run
    dest = tmp_path / "models"
    over = dict(
        fine_tune__enabled=False,  # the model is the (cached) head's weights, saved anew
        push__destination=str(dest),
        runner__run_root=cfg.runner.run_root,  # ingest and the head stage come from cache
    )
    first = run_pipeline(parse_config(tiny_config(tmp, tiny_data, **over)))
    assert first["steps"]["push"]["summary"]["pushed"]
    pushed = versions(str(dest), "tiny")
    assert len(pushed) == 1
    again = run_pipeline(
        parse_config(tiny_config(tmp, tiny_data, fine_tune__learning_rate=3e-4, **over))
    )
    assert again["steps"]["train_head"]["status"] == "cached"
    assert again["steps"]["fine_tune"]["status"] == "ran"  # a new model.keras, same weights
    push = again["steps"]["push"]
    assert push["status"] == "skipped" or not push["summary"]["pushed"], push
    assert versions(str(dest), "tiny") == pushed


# ---------------------------------------------------------------- stale blessings (issue 29.4)


def _candidate(run, tmp_path: Path, name: str, scale: float, accuracy: float, against):
    """An export copy whose recorded test accuracy is `accuracy`, and an evaluation of it that
    blessed it against version `against` (what was served when it was evaluated)."""
    export = other_model_export(_out(run, "export"), tmp_path / f"export-{name}", scale=scale)
    meta = json.loads((export / "export.json").read_text())
    card_path = Path(meta["path"]) / "model_card.json"
    card = json.loads(card_path.read_text())
    card["lineage"]["metrics"]["accuracy"] = [accuracy, accuracy - 0.1, accuracy + 0.05]
    card_path.write_text(json.dumps(card))
    ev_dir = tmp_path / f"evaluate-{name}"
    shutil.copytree(_out(run, "evaluate"), ev_dir)
    ev = json.loads((ev_dir / "evaluation.json").read_text())
    ev["candidate"]["accuracy"], ev["baseline_version"], ev["blessed"] = accuracy, against, True
    (ev_dir / "evaluation.json").write_text(json.dumps(ev))
    return export, ev_dir


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_blessing_against_a_baseline_no_longer_served_is_rechecked(pipeline_run, tmp_path):
    """Two runs evaluated against the same served version: the better one pushes first; the
    worse one, pushed after, is refused (what is served now beats it), unless forced."""
    from graft.components.push import push

    cfg, run, _ = pipeline_run
    dest = tmp_path / "models"
    shutil.copytree(cfg.push.destination, dest)
    (v0,) = versions(str(dest), "tiny")
    better, ev_better = _candidate(run, tmp_path, "better", 1.01, 0.95, v0)
    worse, ev_worse = _candidate(run, tmp_path, "worse", 1.02, 0.90, v0)
    pcfg = PushConfig(destination=str(dest))

    first = push(str(better), str(ev_better), str(tmp_path / "p1"), cfg=pcfg, model_name="tiny")
    assert first.pushed and first.recheck is None  # v0 still served: the blessing stands

    second = push(str(worse), str(ev_worse), str(tmp_path / "p2"), cfg=pcfg, model_name="tiny")
    assert not second.pushed and versions(str(dest), "tiny") == [v0, first.version]
    assert second.recheck["served_version"] == first.version
    assert second.recheck["served_accuracy"] == 0.95 and second.recheck["candidate_accuracy"] == 0.9
    assert second.recheck["outcome"].startswith("refused")
    written = json.loads((tmp_path / "p2" / "push.json").read_text())
    assert "refused: not better than the version served now" in written["reasons"][-1]
    # the pipeline's push step hands the reason on: the run summary says why, not "declined"
    from graft.pipeline import dag
    from graft.pipeline.summary import push_outcome

    step_cfg = parse_config({**cfg.to_dict(), "push": {"destination": str(dest)}})
    inputs = {"exported": str(worse), "evaluation": str(ev_worse)}
    summary = dag.run_step("push", step_cfg, inputs, str(tmp_path / "p2-step"))
    line, there = push_outcome({"steps": {"push": {"status": "ran", "summary": summary}}})
    assert not there and "refused: not better than the version served now" in line, line
    assert not [d for d in os.listdir(dest / "tiny") if d.startswith(".tmp-")]  # temp removed

    forced = push(
        str(worse), str(ev_worse), str(tmp_path / "p3"), cfg=pcfg, model_name="tiny", force=True
    )
    assert forced.pushed and forced.recheck["outcome"].startswith("forced")
    entry = [e for e in read_index(str(dest), "tiny") if e["version"] == forced.version][0]
    assert entry["recheck"]["served_version"] == first.version  # the index says what it beat
    # blessed by evaluate but pushed over a better served version: forced, everywhere it is said
    assert forced.forced and entry["forced"]
    written = json.loads((tmp_path / "p3" / "push.json").read_text())
    assert written["forced"] is True
    marker = json.loads((dest / "tiny" / str(forced.version) / MARKER).read_text())
    assert marker["forced"] is True and marker["blessed"] is True


def test_a_prune_killed_mid_delete_leaves_no_half_version(tmp_path, monkeypatch):
    """push.keep removes old versions: deleted in place, a kill midway left a numeric folder
    with half its files, which TF Serving (policy all) or a rollback would take for whole."""
    import socket

    from graft.components import push as gpush

    model = tmp_path / "dest" / "m"
    for v in (1, 2):
        (model / str(v) / "variables").mkdir(parents=True)
        (model / str(v) / "saved_model.pb").write_bytes(b"pb")

    def killed(path):
        raise KeyboardInterrupt  # the process dies inside the delete

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        gpush._remove_version(str(model / "1"))
    assert versions(str(tmp_path / "dest"), "m") == [2]
    (left,) = [p for p in model.iterdir() if p.name.startswith(gpush.TMP_PREFIX)]
    # once its process is gone, the next push's clean-up takes the rest
    monkeypatch.undo()
    left.rename(model / f"{gpush.TMP_PREFIX}{socket.gethostname()}-999999999-dead")
    assert gpush._remove_stale_tmp(str(model)) and sorted(os.listdir(model)) == ["2"]


def test_to_a_bucket_the_marker_lands_after_the_model(pipeline_run, tmp_path, monkeypatch):
    """A bucket's rename copies file by file in name order: graft_push.json (which says the
    version is whole) went before saved_model.pb and variables/, so a kill midway left a
    version Graft took as pushed and TF Serving could not load. A local folder stands in for
    the bucket (is_remote says yes); the rename is the real one."""
    from graft.components import fs
    from graft.components import push as gpush

    cfg, run, _ = pipeline_run
    dest = tmp_path / "models"
    seen = []
    real_rename = fs._LocalGFile.rename

    def rename(src, dst, overwrite=False):
        seen.append(sorted(os.listdir(src)))  # what a file-by-file copy would carry, in order
        return real_rename(src, dst, overwrite=overwrite)

    monkeypatch.setattr(gpush, "is_remote", lambda path: True)
    monkeypatch.setattr(fs._LocalGFile, "rename", staticmethod(rename))
    r = gpush.push(
        _out(run, "export"),
        _out(run, "evaluate"),
        str(tmp_path / "push"),
        cfg=PushConfig(destination=str(dest)),
        model_name="tiny",
    )
    assert r.pushed and MARKER not in seen[-1] and "saved_model.pb" in seen[-1]
    assert json.loads((Path(r.destination) / MARKER).read_text())["files"] == r.files
    assert versions(str(dest), "tiny") == [r.version]
