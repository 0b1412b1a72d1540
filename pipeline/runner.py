"""Local runner: walks pipeline.dag.STEPS in-process, with per-step caching and resume.

Step outputs live in content-addressed dirs `<run_root>/steps/<step>/<fingerprint>/`, where
the fingerprint covers the step's config sections and its inputs' fingerprints. So a step
whose inputs and config are unchanged reuses its output; a killed step re-run with the same
fingerprint finds its own checkpoint and resumes. Each run gets `<run_root>/<run_id>/`
with run.json and a link per step.

Two runs of the same config share those dirs, so each step holds a lock on its output dir
(`<dir>.lock`, with the holder's pid, host and run id in `<dir>.owner.json`) while it checks,
reuses, resumes or writes it: an output a live process is writing is never read or resumed by
another, which waits for it (runner.lock_wait_seconds) or stops naming that process. A step
also holds its inputs shared (`<dir>.readers`, flock) while it runs, and a run that rewrites an
output from scratch (--only, --from, --no-cache) takes that exclusively first: an output
another run is reading is never deleted under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import yaml

from graft.components.fs import write_text_atomic
from graft.components.registry import RUN_ID_ENV
from graft.core.config import (
    RUN_RECORD,
    GraftConfig,
    apply_overrides,
    parse_config,
    with_absolute_paths,
)
from graft.core.locks import readers_lock, step_lock
from graft.core.log import log
from graft.core.paths import mark_output_dir
from graft.pipeline import dag

__all__ = ["fingerprint", "run_pipeline"]


SUCCESS = "_SUCCESS"


@dataclass
class StepRecord:
    name: str
    status: str = "pending"  # pending | ran | cached | skipped | failed
    output: str | None = None
    fingerprint: str | None = None
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    config_read: list[str] = field(default_factory=list)  # dotted keys the step read


def fingerprint(
    s: dag.Step, cfg: GraftConfig, input_fps: dict[str, str], inputs: dict[str, str]
) -> str:
    """A step's cache key: its config values, its inputs' fingerprints and its
    external key, hashed; the same key means the same output.

    Args:
        s: the step.
        cfg: the config.
        input_fps: input name -> that input's fingerprint.
        inputs: input name -> upstream output directory.

    Returns:
        16 hex digits.
    """
    payload = {
        "step": s.name,
        "config": dag.step_values(s, cfg),
        "inputs": input_fps,
        "external": dag.external_key(s, cfg, inputs),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _made_by(fp: str, out: str) -> str:
    """An input's identity in its reader's key: its fingerprint and the run that wrote it
    (its _SUCCESS). An output re-run in place (--only, --from, --no-cache keep its
    fingerprint) thus gives every step reading it a new key: they re-run instead of serving
    what they built from the output it replaced."""
    try:
        with open(os.path.join(out, SUCCESS)) as f:
            return f"{fp}:{f.read().strip()}"
    except OSError:
        return fp


def _when_unmet(s: dag.Step, cfg: GraftConfig, records: dict[str, StepRecord]) -> str | None:
    """Why the step's `when` holds it back, or None when it runs."""
    if s.when is None or dag.forced(s, cfg):
        return None
    upstream = records[s.when.step].summary
    if upstream.get(s.when.output):
        return None
    return f"{s.when.step}.{s.when.output} is false"


def _banner(i: int, n: int, s: dag.Step, status: str) -> None:
    log(f"[{i}/{n}] {s.name}: {status} - {s.doc}")


@dataclass
class _Run:
    """One run's settings and what its steps have produced so far, shared by its phases."""

    cfg: GraftConfig
    root: str
    run_id: str
    run_dir: str
    use_cache: bool
    only: str | None
    forced_from: int | None  # the index of --from's step
    records: dict[str, StepRecord] = field(default_factory=dict)
    fps: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def run_pipeline(
    cfg: GraftConfig,
    *,
    use_cache: bool | None = None,
    only: str | None = None,
    from_step: str | None = None,
    force_push: bool = False,
    run_id: str | None = None,
    until: str | None = None,
) -> dict:
    """Run the pipeline locally, re-running only the steps whose key changed.

    Args:
        cfg: the config.
        use_cache: reuse unchanged steps' outputs (runner.cache when None).
        only: run this step alone, from cached inputs.
        from_step: re-run this step and what follows it.
        force_push: export and push even if evaluate did not bless (push.force).
        run_id: the run's id (a timestamp when None).
        until: stop after this step (graft advise runs up to advise).

    Returns:
        The run record (also written to run.json): config, per-step status, seconds, outputs.
    """
    use_cache = cfg.runner.cache if use_cache is None else use_cache
    for name in (only, from_step, until):
        if name:
            dag.step(name)  # raises with the valid names
    dag.check_resources(cfg)  # a misspelt step under kubeflow.resources fails here too
    root = os.path.abspath(cfg.runner.run_root)
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid() % 10000:04d}"
    run_dir = os.path.join(root, run_id)
    os.makedirs(run_dir, exist_ok=True)
    t_run = time.time()
    forced_from = dag.STEP_NAMES.index(from_step) if from_step else None
    cfg = _resolved(cfg, force_push, root)
    state = _Run(cfg, root, run_id, run_dir, use_cache, only, forced_from)
    config_file = write_config_file(cfg, os.path.join(run_dir, CONFIG_FILE))
    run = {
        "run_id": run_id,
        "run_dir": run_dir,
        "config_file": config_file,
        "config": cfg.to_dict(),
        "steps": state.records,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "status": "running",
        "host": socket.gethostname(),  # with pid: `graft runs list` tells a killed run
        "pid": os.getpid(),
    }
    _save_run(state, run, t_run)  # listed from the start: running, or killed part-way
    outer_run_id = os.environ.get(RUN_ID_ENV)
    os.environ[RUN_ID_ENV] = run_id  # steps record it: model card and registry lineage
    try:
        for i, s in enumerate(dag.STEPS, start=1):
            if until and dag.STEP_NAMES.index(s.name) > dag.STEP_NAMES.index(until):
                break  # the steps after `until` are not part of this run
            _step(state, i, s)
            _save_run(state, run, t_run)
        run["status"] = "succeeded"
    except BaseException:
        run["status"] = "failed"
        raise
    finally:
        if outer_run_id is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = outer_run_id
        run["seconds"] = round(time.time() - t_run, 2)
        _write_run(state, run, config_file)
    return run


def _resolved(cfg: GraftConfig, force_push: bool, root: str) -> GraftConfig:
    """The config the run fingerprints and records: push.force as asked, paths absolute; the
    run root, feature store and push destination marked as Graft's own outputs."""
    if force_push:
        cfg = parse_config(apply_overrides(cfg.to_dict(), ["push.force=true"]))
    cfg = with_absolute_paths(cfg)  # one path rule: fingerprints and config.yaml agree
    for own in (root, cfg.features.store):
        mark_output_dir(own)  # never read as data, even inside data.path (push marks its own)
    if os.path.isdir(cfg.push.destination):
        mark_output_dir(cfg.push.destination)
    return cfg


def _save_run(state: _Run, run: dict, t_run: float | None = None) -> None:
    """run.json as the run stands (replaced whole: a reader never sees half of it)."""
    run["steps"] = {k: vars(v) for k, v in state.records.items()}
    if t_run is not None:
        run["seconds"] = round(time.time() - t_run, 2)
    path = os.path.join(state.run_dir, RUN_RECORD)
    with open(path + ".tmp", "w") as f:
        json.dump(run, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


def _write_run(state: _Run, run: dict, config_file: str) -> None:
    """run.json, and advise's notes into config.yaml's header: also when a step failed."""
    records, outputs = state.records, state.outputs
    notes = dag.plan_notes({k: v for k, v in outputs.items() if records[k].status != "skipped"})
    if notes:
        write_config_file(state.cfg, config_file, notes)
    _save_run(state, run)


def _step(state: _Run, i: int, s: dag.Step) -> None:
    """One step: fingerprinted, then under its lock skipped, taken from the cache, or run."""
    cfg, outputs, fps = state.cfg, state.outputs, state.fps
    rec = state.records[s.name] = StepRecord(s.name)
    inputs = {k: outputs[v] for k, v in {**s.shows, **s.inputs}.items()}
    made = {k: _made_by(fps[v], outputs[v]) for k, v in s.inputs.items()}
    fp = fps[s.name] = fingerprint(s, cfg, made, inputs)
    rec.fingerprint = fp
    out = outputs[s.name] = os.path.join(state.root, "steps", s.name, fp)
    rec.output = out
    n = len(dag.STEPS)
    with step_lock(out, s.name, state.run_id, cfg.runner.lock_wait_seconds):
        done = os.path.exists(os.path.join(out, SUCCESS))
        forced = (
            state.forced_from is not None and i - 1 >= state.forced_from
        ) or state.only == s.name
        if state.only and s.name != state.only:
            _outside_only(rec, s, state.only, done, out)
            return
        unmet = _when_unmet(s, cfg, state.records)
        if unmet:
            rec.status, rec.summary = "skipped", {"reason": unmet}
            _banner(i, n, s, f"skipped ({unmet})")
            return
        if done and state.use_cache and s.cacheable and not forced:
            rec.status = "cached"
            rec.summary = json.load(open(os.path.join(out, dag.RESULT_FILE)))
            _banner(i, n, s, f"cached ({fp})")
            _link(state.run_dir, s.name, out)
            return
        wait = cfg.runner.lock_wait_seconds
        with contextlib.ExitStack() as held:
            if os.path.exists(out) and (done or not state.use_cache or forced or not s.cacheable):
                # re-run from scratch, once no other run reads it; an unfinished dir is kept to
                # resume. A step that is never cached (push) never writes _SUCCESS.
                held.enter_context(readers_lock(out, s.name, False, wait))
                _discard(out)
            elif os.path.exists(out):
                log(f"{s.name}: found an unfinished output in {out}; resuming")
            for name, path in inputs.items():  # no run rewrites them while this step reads
                held.enter_context(readers_lock(path, f"{s.name} ({name})", True, wait))
                upstream = dag.step({**s.shows, **s.inputs}[name])
                if (
                    upstream.cacheable
                    and os.path.isdir(path)
                    and not os.path.exists(os.path.join(path, SUCCESS))
                ):
                    raise RuntimeError(
                        f"{s.name}: its input {name} ({path}) is incomplete: the run that "
                        "rewrote it did not finish; run again"
                    )
            _banner(i, n, s, "running")
            _execute(state, rec, s, inputs, out)
        log(f"[{i}/{n}] {s.name}: done in {rec.seconds:.1f}s", level="ok")


DISCARDED = ".discarded-"  # a step output being deleted: first renamed to this prefix


def _discard(out: str) -> None:
    """Delete a step output by renaming it away first: a kill mid-delete then leaves nothing
    at its path (rmtree goes file by file: a surviving _SUCCESS made a torn output pass for
    a cached one, and every later run failed on it). Leftovers of killed deletes go too."""
    parent = os.path.dirname(out)
    gone = os.path.join(parent, f"{DISCARDED}{os.path.basename(out)}-{uuid.uuid4().hex[:8]}")
    os.rename(out, gone)
    for name in os.listdir(parent):
        if name.startswith(DISCARDED):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _outside_only(rec: StepRecord, s: dag.Step, only: str, done: bool, out: str) -> None:
    """--only another step: this one's output is only looked up, and must exist upstream."""
    if not done and dag.STEP_NAMES.index(s.name) < dag.STEP_NAMES.index(only):
        raise RuntimeError(
            f"--only {only}: upstream step '{s.name}' has no output for this "
            "config yet; run the pipeline (or --from) first"
        )
    rec.status = "cached" if done else "skipped"
    if done:
        rec.summary = json.load(open(os.path.join(out, dag.RESULT_FILE)))


def _execute(state: _Run, rec: StepRecord, s: dag.Step, inputs: dict, out: str) -> None:
    """Run the step into `out`, recording its summary, time and the config keys it read;
    a cacheable step that finished gets its _SUCCESS mark."""
    t0 = time.time()
    reads: set[str] = set()
    try:
        rec.summary = dag.run_step(s.name, state.cfg, inputs, out, reads)
    except Exception as e:
        rec.status, rec.error = "failed", f"{type(e).__name__}: {e}"
        rec.seconds = round(time.time() - t0, 2)
        raise
    finally:
        rec.config_read = sorted(reads)
    rec.seconds = round(time.time() - t0, 2)
    rec.status = "ran"
    if s.cacheable:
        with open(os.path.join(out, SUCCESS), "w") as f:
            f.write(state.run_id)
    _link(state.run_dir, s.name, out)


CONFIG_FILE = "config.yaml"


def write_config_file(cfg: GraftConfig, path: str, notes: list[str] | None = None) -> str:
    """The run's resolved config as a file `graft run --config` reproduces the run from.

    `cfg` comes with its local paths absolute (`with_absolute_paths`): the values the run was
    fingerprinted with, so re-running the file re-runs nothing that is unchanged. `notes` say
    what advise chose (not written below: re-running plans again) and what it kept.
    """
    header = (
        "# The resolved config of this run: every key, defaults included. The keys in\n"
        "# advise.keep are your settings: recipe auto plans around them, and around any\n"
        "# key you edit here (checked against run.json).\n"
        + "".join(f"# {n}\n" for n in notes or [])
        + "# Edit and re-run with: graft run --config "
        + path
        + "\n"
    )
    # replaced whole: a kill never leaves half a config
    write_text_atomic(path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def _link(run_dir: str, name: str, target: str) -> None:
    link = os.path.join(run_dir, name)
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(target, link)
