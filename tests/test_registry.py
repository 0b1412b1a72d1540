"""Model registry and rollback: lineage per pushed version, `graft models`, `graft rollback`
(also under a running `graft serve` with a client loop), with real exports and SavedModels."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO
from conftest import step_output as _out
from model_copies import other_model_export

from graft.components import registry
from graft.components.hashing import file_sha256

DOC = REPO / "docs" / "retraining.md"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from graft.pipeline.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _push_other(run, tmp_path: Path, dest: Path, scale: float, keep: int = 5):
    """Push a real export holding different weights (model_copies) to dest."""
    from graft.components.push import push
    from graft.core.config import PushConfig

    export = other_model_export(_out(run, "export"), tmp_path / f"export-{scale}", scale=scale)
    r = push(
        str(export),
        _out(run, "evaluate"),
        str(tmp_path / f"push-{scale}"),
        cfg=PushConfig(destination=str(dest), keep=keep),
        model_name="tiny",
        force=True,  # the run's evaluation saw no baseline: past the push-time re-check
    )
    assert r.pushed, r
    return r.version


# ------------------------------------------------------------------ fast: docs, lineage dicts


def test_retraining_doc_links_and_commands_exist():
    """docs/retraining.md gets the README's checks (tests/test_docs.py covers README files)."""
    import test_docs

    assert "## Model registry and lineage" in DOC.read_text() and "## Rollback" in DOC.read_text()
    test_docs.test_relative_links_exist(DOC)
    test_docs.test_no_references_outside_the_repo(DOC)
    test_docs.test_graft_commands_and_flags_exist(DOC)
    commands = {" ".join(a[:2]) for a in test_docs._command_lines(DOC.read_text())}
    assert {"models list", "models show", "rollback --destination"} <= commands


def test_lineage_names_the_baseline_it_beat_with_intervals(tmp_path):
    stats = {
        "counts": {"train": {"a": 7, "b": 5}, "val": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}},
        "data_fingerprint": "0123456789abcdef",
        "source_fingerprint": "f" * 64,
        "source": "/data/photos",
        "quarantined": 1,
    }
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    evaluation = {
        "candidate": {"accuracy": 0.75, "macro_f1": 0.7, "log_loss": 0.5, "ece": 0.1},
        "head_only": {"accuracy": 0.5},
        "baseline": {"accuracy": 0.5},
        "baseline_version": 7,
        "blessed": True,
        "reasons": ["accuracy 0.75 >= min_accuracy 0.0", "+0.2500 vs baseline: within thresholds"],
        "intervals": {
            "candidate": {"n": 4, "accuracy": [0.75, 0.3, 0.95], "top_3": [1.0, 0.5, 1.0]},
            "baseline": {"n": 4, "accuracy": [0.5, 0.15, 0.85]},
        },
        "comparisons": {"candidate - served baseline": {"difference": 0.25, "low": 0, "high": 1}},
    }
    lin = registry.build_lineage(
        examples_dir=str(tmp_path),
        evaluation=evaluation,
        base={"name": "mobilenet_v2", "weights": "demo", "kwargs": {"alpha": 0.35}},
        settings={"export": {"model_name": "x"}},
        step_dir=str(tmp_path / "0123abcd0123abcd"),
    )
    assert lin["config_hash"] == "0123abcd0123abcd"
    assert lin["data"]["fingerprint"] == "0123456789abcdef" and lin["data"]["images"] == 20
    assert lin["data"]["split_sizes"] == {"train": 12, "val": 4, "test": 4}
    assert lin["metrics"]["accuracy"] == [0.75, 0.3, 0.95] and lin["metrics"]["top_3"][0] == 1.0
    assert lin["baseline"]["version"] == 7 and lin["baseline"]["accuracy"] == [0.5, 0.15, 0.85]
    assert lin["baseline"]["difference"]["difference"] == 0.25
    from graft.core.paths import demo_weights

    assert lin["base"]["weights_sha256"] == file_sha256(demo_weights())
    assert len(lin["base"]["weights_sha256"]) == 64
    row = registry.table_row({"version": 9, "status": "served", "kind": "push", "lineage": lin})
    # models list: short cells (issue 28); the baseline, fingerprint and reasons: models show
    assert row["accuracy [95%]"] == "0.750 [0.30, 0.95]"
    assert row["data"] == "photos 20" and row["base"] == "mobilenet_v2"
    assert row["blessed"] == "yes" and row["status"] == "served"


def test_code_version_names_the_commit():
    code = registry.code_version()
    assert code["graft"] == "0.1.0"
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:
        assert code["git_commit"] == head.stdout.strip()


def test_unknown_model_and_empty_destination_exit_2(tmp_path, capsys):
    code, _, err = _cli(capsys, "models", "list", "--destination", str(tmp_path), "--model", "x")
    assert code == 2 and "no model 'x'" in err and "holds no models" in err
    code, _, err = _cli(
        capsys, "rollback", "--destination", str(tmp_path), "--model", "x", "--to", "1"
    )
    assert code == 2 and "no model 'x'" in err


# ------------------------------------------------------------------ slow: real pipeline output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_push_records_lineage_and_models_list_shows_it(pipeline_run, tmp_path, capsys, monkeypatch):
    cfg, run, _ = pipeline_run
    dest = cfg.push.destination
    [v1] = registry.versions(dest, "tiny")
    index = json.loads(Path(registry.index_path(dest, "tiny")).read_text())
    [e] = index["versions"]
    assert e["version"] == v1 and e["kind"] == "push" and e["run_id"] == run["run_id"]
    lin = e["lineage"]
    stats = json.loads(Path(_out(run, "ingest"), "stats.json").read_text())
    ev = json.loads(Path(_out(run, "evaluate"), "evaluation.json").read_text())
    assert lin["run_id"] == run["run_id"]
    assert lin["config_hash"] == run["steps"]["export"]["fingerprint"]
    assert lin["data"]["examples_dir"] == _out(run, "ingest")
    assert lin["data"]["fingerprint"] == stats["data_fingerprint"]
    assert lin["data"]["counts"] == stats["counts"]
    assert lin["metrics"]["accuracy"] == ev["intervals"]["candidate"]["accuracy"]
    assert lin["blessing_reasons"] == ev["reasons"] and lin["baseline"] is None
    assert lin["base"]["name"] == "mobilenet_v2" and len(lin["base"]["weights_sha256"]) == 64
    assert lin["code_version"] == registry.code_version()
    card = json.loads(Path(dest, "tiny", str(v1), "model_card.json").read_text())
    assert card["lineage"] == lin  # the card exported and the index agree
    card_md = Path(dest, "tiny", str(v1), "model_card.md").read_text()
    assert "## Lineage" in card_md and stats["data_fingerprint"] in card_md
    marker = json.loads(Path(dest, "tiny", str(v1), registry.MARKER).read_text())
    assert marker["entry"]["lineage"] == lin
    assert registry.served_entry(dest, "tiny")["version"] == v1

    monkeypatch.setenv("COLUMNS", "400")  # rich: one line per row
    code, out, _ = _cli(capsys, "models", "list", "--destination", dest, "--model", "tiny")
    assert code == 0
    row = next(line for line in out.splitlines() if line.strip("│ ").startswith(str(v1)))
    for cell in (
        "served",
        run["run_id"],
        f"{Path(lin['data']['source']).name} {lin['data']['images']}",
        "mobilenet_v2",
        f"{lin['metrics']['accuracy'][0]:.3f} [{lin['metrics']['accuracy'][1]:.2f}",
    ):
        assert cell in row, (cell, row)
    code, out, _ = _cli(capsys, "models", "show", "tiny", str(v1), "--destination", dest)
    assert code == 0 and json.loads(out)["lineage"] == lin
    code, out, _ = _cli(capsys, "models", "show", "tiny", "served", "--destination", dest)
    assert code == 0 and json.loads(out)["version"] == v1
    code, _, err = _cli(capsys, "models", "show", "tiny", "12345", "--destination", dest)
    assert code == 2 and "no version 12345" in err and str(v1) in err
    code, _, err = _cli(capsys, "models", "list", "--destination", dest, "--model", "tinny")
    assert code == 2 and "models there: tiny" in err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rollback_serves_a_copy_records_it_and_keeps_the_original(pipeline_run, tmp_path, capsys):
    from graft.components.hashing import weights_sha256

    cfg, run, _ = pipeline_run
    dest = tmp_path / "models"
    shutil.copytree(cfg.push.destination, dest)
    [v1] = registry.versions(str(dest), "tiny")
    v2 = _push_other(run, tmp_path, dest, 1.05)
    assert registry.served_version(str(dest), "tiny") == v2

    code, out, _ = _cli(
        capsys,
        "rollback",
        "--destination",
        str(dest),
        "--model",
        "tiny",
        "--to",
        str(v1),
        "--reason",
        "v2 misclassifies tulips",
    )
    assert code == 0, out
    r = json.loads(out)
    v3 = r["version"]
    assert r["rolled_back"] and v3 == v2 + 1 and r["previous"] == v2 and r["to"] == v1
    assert registry.versions(str(dest), "tiny") == [v1, v2, v3]
    assert weights_sha256(str(dest / "tiny" / str(v3))) == weights_sha256(
        str(dest / "tiny" / str(v1))
    )
    served = registry.served_entry(str(dest), "tiny")
    assert served["version"] == v3 and served["kind"] == "rollback"
    assert served["rollback"]["to"] == v1 and served["rollback"]["from"] == v2
    assert served["rollback"]["reason"] == "v2 misclassifies tulips" and served["rollback"]["by"]
    original = registry.entry(str(dest), "tiny", v1)
    assert served["lineage"] == original["lineage"]
    assert served["lineage"]["data"]["examples_dir"] == _out(run, "ingest")
    index = [e["version"] for e in registry.read_index(str(dest), "tiny")]
    assert index == [v1, v2, v3]

    # again: the served version already holds v1's model, so nothing happens
    code, out, _ = _cli(
        capsys, "rollback", "--destination", str(dest), "--model", "tiny", "--to", str(v1)
    )
    assert code == 0 and not json.loads(out)["rolled_back"]
    assert registry.versions(str(dest), "tiny") == [v1, v2, v3]
    # unknown version: exit 2 naming the versions there
    code, _, err = _cli(
        capsys, "rollback", "--destination", str(dest), "--model", "tiny", "--to", "7"
    )
    assert code == 2 and "no version 7" in err and f"{v2}" in err
    # a version that would not load is refused: its copy would not be served either
    broken = dest / "tiny" / str(v1 - 1)
    shutil.copytree(dest / "tiny" / str(v1), broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    code, _, err = _cli(
        capsys, "rollback", "--destination", str(dest), "--model", "tiny", "--to", str(v1 - 1)
    )
    assert code == 2 and "would not load" in err and f"leave version {v3} served" in err, err
    shutil.rmtree(broken)
    assert registry.versions(str(dest), "tiny") == [v1, v2, v3]

    # pushing the rolled-back model again does not make it served
    from graft.components.push import push
    from graft.core.config import PushConfig

    again = push(
        str(tmp_path / "export-1.05"),
        _out(run, "evaluate"),
        str(tmp_path / "push-again"),
        cfg=PushConfig(destination=str(dest)),
        model_name="tiny",
    )
    assert not again.pushed and again.already_at_destination and again.version == v2
    assert registry.served_version(str(dest), "tiny") == v3

    # pruning (keep 2) removes old versions but not v1 while its rollback copy v3 is kept
    v4 = _push_other(run, tmp_path, dest, 1.06, keep=2)
    assert registry.versions(str(dest), "tiny") == [v1, v3, v4]
    v5 = _push_other(run, tmp_path, dest, 1.07, keep=2)
    assert registry.versions(str(dest), "tiny") == [v4, v5]  # v3 went, so v1 did too
    statuses = {e["version"]: e["status"] for e in registry.entries(str(dest), "tiny")}
    assert statuses == {v1: "removed", v2: "removed", v3: "removed", v4: "available", v5: "served"}
    code, out, err = _cli(capsys, "models", "list", "--destination", str(dest), "--model", "tiny")
    assert code == 0 and "3 pruned or deleted versions not shown" in err
    code, out, _ = _cli(
        capsys, "models", "list", "--destination", str(dest), "--model", "tiny", "--all", "--json"
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert [e["version"] for e in rows] == [v1, v2, v3, v4, v5]
    assert rows[2]["kind"] == "rollback" and rows[2]["status"] == "removed"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rollback_under_a_running_server_fails_no_request(pipeline_run, tmp_path):
    """The issue's case: `graft rollback` while `graft serve` polls and a client loops."""
    import grpc
    import numpy as np
    import tensorflow as tf

    from graft.components import data as gdata
    from graft.serving.client import GraftClient
    from graft.serving.launch import ServerProcess

    cfg, run, _ = pipeline_run
    dest = tmp_path / "models"
    shutil.copytree(cfg.push.destination, dest)
    [v1] = registry.versions(str(dest), "tiny")
    v2 = _push_other(run, tmp_path, dest, 1.3)
    blobs = [
        b for b, _ in gdata.raw_dataset(_out(run, "ingest"), "test").take(4).as_numpy_iterator()
    ]

    def local_scores(v: int) -> np.ndarray:
        fn = tf.saved_model.load(str(dest / "tiny" / str(v))).signatures["serving_default"]
        return fn(image_bytes=tf.constant(blobs))["scores"].numpy()

    want_v1, want_v2 = local_scores(v1), local_scores(v2)
    assert np.abs(want_v1 - want_v2).max() > 1e-3  # the two versions answer differently

    seen: dict[int, np.ndarray] = {}
    failures, stop = [], threading.Event()
    with ServerProcess(str(dest / "tiny"), "tiny", poll_seconds=0.5) as srv:

        def loop():
            with GraftClient(srv.target, "tiny", retries=0) as c:
                while not stop.is_set():
                    try:
                        resp = c.predict_raw(blobs)
                        seen[resp.model_spec.version.value] = tf.make_ndarray(
                            resp.outputs["scores"]
                        )
                    except grpc.RpcError as e:
                        failures.append(e.code())

        t = threading.Thread(target=loop)
        t.start()
        try:
            deadline = time.time() + 60
            while v2 not in seen and time.time() < deadline:
                time.sleep(0.1)
            assert v2 in seen, "the server never answered with the newest version"
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            done = subprocess.run(
                [
                    *(sys.executable, "-m", "graft.pipeline.cli", "rollback"),
                    *("--destination", str(dest), "--model", "tiny", "--to", str(v1)),
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=300,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            v3 = json.loads(done.stdout)["version"]
            deadline = time.time() + 120
            while v3 not in seen and time.time() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # the old version unloads while requests keep coming
        finally:
            stop.set()
            t.join()
        with GraftClient(srv.target, "tiny") as c:
            states = {s["version"]: s["state"] for s in c.status()}
    assert not failures, failures[:5]
    assert v3 in seen, f"the rollback copy {v3} was never served (saw {sorted(seen)})"
    assert np.abs(seen[v3] - want_v1).max() <= 1e-5  # it answers as version v1 did
    assert np.abs(seen[v2] - want_v2).max() <= 1e-5
    assert states[v3] == "AVAILABLE" and states[v2] == "END"


# ------------------------------------------------------------------ a damaged index (issue 29.8)


def _version_dirs(dest: Path, numbers) -> None:
    """Version dirs as push leaves them: a (stand-in) saved_model.pb and the marker entry."""
    for v in numbers:
        d = dest / "tiny" / str(v)
        d.mkdir(parents=True)
        (d / "saved_model.pb").write_bytes(b"stand-in")
        entry = {"version": v, "kind": "push", "run_id": f"run-{v}", "lineage": {}}
        (d / registry.MARKER).write_text(json.dumps({"entry": entry}))


def test_a_corrupt_index_is_kept_aside_and_rebuilt_without_losing_an_entry(tmp_path, caplog):
    dest = tmp_path / "models"
    _version_dirs(dest, [100, 200, 300])
    registry.update_index(str(dest), "tiny", add={"version": 50, "run_id": "run-50"})
    registry.update_index(str(dest), "tiny", removed=[50])  # pruned: its history is the index
    index = dest / "tiny" / registry.INDEX
    text = index.read_text()
    assert [e["version"] for e in json.loads(text)["versions"]] == [50, 100, 200, 300]
    torn = text[: text.index('"run-300"')]  # a write cut off inside the last entry
    index.write_text(torn)

    # readers: the whole entries, the dirs for the rest, and a warning; nothing fails
    graft_log = logging.getLogger("graft")  # it does not propagate: listen to it directly
    graft_log.addHandler(caplog.handler)
    try:
        got = {e["version"]: e for e in registry.entries(str(dest), "tiny")}
        assert sorted(got) == [50, 100, 200, 300] and got[50]["status"] == "removed"
        assert "not valid JSON" in caplog.text and str(index) in caplog.text

        # the next push: the torn file is kept aside byte for byte, the index rebuilt whole
        _version_dirs(dest, [400])
        registry.update_index(str(dest), "tiny", add={"version": 400, "run_id": "run-400"})
    finally:
        graft_log.removeHandler(caplog.handler)
    aside = [p for p in (dest / "tiny").iterdir() if p.name.startswith("registry.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_text() == torn
    rebuilt = json.loads(index.read_text())["versions"]
    assert [e["version"] for e in rebuilt] == [50, 100, 200, 300, 400]
    assert rebuilt[0]["removed"] and rebuilt[3]["run_id"] == "run-300"  # from its marker
    assert "kept the corrupt" in caplog.text


def test_an_entry_with_a_bad_version_does_not_break_models_list(tmp_path, capsys):
    dest = tmp_path / "models"
    _version_dirs(dest, [100, 200])
    registry.update_index(str(dest), "tiny")
    index = dest / "tiny" / registry.INDEX
    data = json.loads(index.read_text())
    data["versions"].append({"version": "abc", "run_id": "hand-edited"})
    index.write_text(json.dumps(data))
    code, out, _ = _cli(capsys, "models", "list", "--destination", str(dest), "--model", "tiny")
    assert code == 0 and "100" in out and "200" in out
    code, out, _ = _cli(
        capsys, "models", "list", "--destination", str(dest), "--model", "tiny", "--json"
    )
    assert code == 0 and [json.loads(line)["version"] for line in out.splitlines()] == [100, 200]
    # a later push keeps the unusable entry in the file: nothing is lost
    _version_dirs(dest, [300])
    registry.update_index(str(dest), "tiny", add={"version": 300, "run_id": "run-300"})
    data = json.loads(index.read_text())
    assert [e["version"] for e in data["versions"]] == [100, 200, 300]
    assert data["unusable_entries"] == [{"version": "abc", "run_id": "hand-edited"}]


def test_the_baseline_is_a_servable_version_never_one_still_being_copied(tmp_path):
    """A version folder without saved_model.pb yet (a hand copy in two steps, a slow object
    store) is not what TF Serving serves: evaluate compares with the one it does serve."""
    for v in (3, 7):
        (tmp_path / "m" / str(v)).mkdir(parents=True)
    (tmp_path / "m" / "3" / "saved_model.pb").write_bytes(b"")
    assert registry.served_version(str(tmp_path), "m") == 3
    assert registry.baseline_version(str(tmp_path), "m") == 3
    from graft.core.config import parse_config
    from graft.pipeline import dag

    raw = {"data": {"path": str(tmp_path)}, "push": {"destination": str(tmp_path)}}
    cfg = parse_config({**raw, "export": {"model_name": "m"}})
    assert dag._served_key(cfg, {}) == "3"  # drift's cache key: the version it compares with
    (tmp_path / "m" / "7" / "saved_model.pb").write_bytes(b"")
    assert registry.baseline_version(str(tmp_path), "m") == 7
    assert dag._served_key(cfg, {}) == "7"
