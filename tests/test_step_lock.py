"""Two runs of one config never share a step output that a live process is writing (issue 29.5):
real processes, a real lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from graft.core.config import parse_config

HOLD = """
import sys
from graft.core.locks import step_lock
with step_lock(sys.argv[1], "ingest", "the-other-run", 0):
    print("locked", flush=True)
    sys.stdin.readline()  # holds the step output until the test says so (or closes stdin)
"""


def _setup(tmp_path: Path, data: Path) -> tuple[Path, str]:
    """A config file and the ingest output dir a run of it uses."""
    from graft.pipeline import dag, runner

    raw = tiny_config(tmp_path, data)
    config = tmp_path / "graft.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw)
    fp = runner.fingerprint(dag.step("ingest"), cfg, {}, {})
    return config, os.path.join(cfg.runner.run_root, "steps", "ingest", fp)


def _holder(out: str) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, out],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def _graft_run(config: Path, wait: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "graft", "run", "--config", str(config), "--only", "ingest"]
        + ["--set", f"runner.lock_wait_seconds={wait}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def test_a_step_output_held_by_a_live_process_is_refused_naming_it(tmp_path, tiny_data):
    config, out = _setup(tmp_path, tiny_data)
    holder = _holder(out)
    try:
        run = _graft_run(config, wait=0)
        err = run.communicate(timeout=300)[1]
        assert run.returncode == 1, err[-2000:]
        assert f"ingest: its output {out} is being written by pid {holder.pid}" in err
        assert "run the-other-run" in err and "runner.lock_wait_seconds" in err
        assert not os.path.exists(out)  # neither read nor written
    finally:
        holder.kill()
        holder.wait()


def test_a_second_run_waits_for_the_first_then_goes_on(tmp_path, tiny_data):
    config, out = _setup(tmp_path, tiny_data)
    holder = _holder(out)
    try:
        run = _graft_run(config, wait=120)
        seen = []
        for line in run.stderr:  # the second run says whom it waits for, and waits
            seen.append(line)
            if "waiting up to 120s" in line:
                break
        assert f"being written by pid {holder.pid}" in seen[-1], "".join(seen)[-2000:]
        assert run.poll() is None and not os.path.exists(out)
        # listed while it runs (run.json from its start), and as stopped once its process is gone
        from graft.pipeline.cli import run_row

        (record,) = Path(out).parents[2].glob("*/run.json")
        live = json.loads(record.read_text())
        assert live["status"] == "running" and live["pid"] == run.pid
        assert run_row(live)[2] == "running"
        dead = subprocess.Popen(["true"])
        dead.wait()  # a pid whose process is gone, as a killed run's
        assert run_row({**live, "pid": dead.pid})[2] == "stopped"
        holder.communicate("done\n", timeout=30)  # the first run finishes: the lock is free
        err = run.communicate(timeout=300)[1]
        assert run.returncode == 0, err[-2000:]
        assert os.path.exists(os.path.join(out, "_SUCCESS"))
        assert not os.path.exists(out + ".owner.json")  # released with the run
    finally:
        holder.kill()
        holder.wait()


READ = """
import sys
from graft.core.locks import readers_lock
with readers_lock(sys.argv[1], "validate (examples)", True, 0):
    print("reading", flush=True)
    sys.stdin.readline()  # a step of another run reads the output until the test says so
"""


def test_an_output_another_run_reads_is_rewritten_only_after_it(tmp_path, tiny_data):
    """--only / --no-cache / --from re-run a step from scratch: never while a live run's step
    reads that output (it would read a half-deleted or half-written folder)."""
    config, out = _setup(tmp_path, tiny_data)
    first = _graft_run(config, wait=0)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    done = os.path.join(out, "_SUCCESS")
    assert os.path.exists(done)
    reader = subprocess.Popen(
        [sys.executable, "-c", READ, out], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout.readline().strip() == "reading"
        refused = _graft_run(config, wait=0)  # --only ingest re-runs it from scratch
        err = refused.communicate(timeout=300)[1]
        assert refused.returncode == 1 and "is being read by another run" in err, err[-2000:]
        assert os.path.exists(done)  # untouched
        waiting = _graft_run(config, wait=120)
        seen = []
        for line in waiting.stderr:
            seen.append(line)
            if "waiting up to 120s" in line:
                break
        assert "being read by another run" in seen[-1], "".join(seen)[-2000:]
        assert os.path.exists(done) and waiting.poll() is None  # still the reader's
        reader.communicate("done\n", timeout=30)
        err = waiting.communicate(timeout=300)[1]
        assert waiting.returncode == 0, err[-2000:]
        assert os.path.exists(done)  # rewritten whole
    finally:
        reader.kill()
        reader.wait()


def test_a_step_re_run_alone_makes_what_reads_it_re_run(tmp_path, tiny_data):
    """--only ingest rewrites ingest in place (same fingerprint): validate, built from the
    output it replaced, is not served from the cache afterwards; it runs under a new key,
    and the earlier run's output stays where that run's links point."""
    from graft.pipeline.runner import run_pipeline

    cfg = parse_config(tiny_config(tmp_path, tiny_data))
    first = run_pipeline(cfg, until="validate")["steps"]["validate"]
    again = run_pipeline(cfg, until="validate")["steps"]["validate"]
    assert again["status"] == "cached" and again["fingerprint"] == first["fingerprint"]
    assert run_pipeline(cfg, only="ingest")["steps"]["ingest"]["status"] == "ran"
    after = run_pipeline(cfg, until="validate")["steps"]["validate"]
    assert after["status"] == "ran" and after["fingerprint"] != first["fingerprint"]
    assert os.path.exists(os.path.join(first["output"], "_SUCCESS"))  # kept, not rewritten
    settled = run_pipeline(cfg, until="validate")["steps"]["validate"]
    assert settled["status"] == "cached" and settled["fingerprint"] == after["fingerprint"]


def test_a_kill_mid_delete_leaves_nothing_at_the_outputs_path(tmp_path, monkeypatch):
    """A re-run (--no-cache, --from) deletes a finished output first. Deleted in place, a kill
    midway could leave its _SUCCESS beside half its files: a torn output taken as cached."""
    import shutil

    from graft.pipeline import runner

    steps = tmp_path / "steps" / "train_head"
    for fp in ("aaaa", "bbbb"):
        (steps / fp).mkdir(parents=True)
        (steps / fp / "_SUCCESS").write_text("")
        (steps / fp / "model.keras").write_text("weights")

    def killed(path, ignore_errors=False):
        raise KeyboardInterrupt  # the process dies inside the delete

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        runner._discard(str(steps / "aaaa"))
    assert not (steps / "aaaa").exists()  # renamed away before any file went
    monkeypatch.undo()
    runner._discard(str(steps / "bbbb"))
    assert os.listdir(steps) == []  # the killed delete's leftover went with the next one
