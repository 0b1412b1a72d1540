"""Locks on step outputs, shared by the runner and the steps that read beside their inputs.

`step_lock`: one writer per output folder. `readers_lock`: a rewrite of a folder waits for the
runs reading it, so no run deletes what another is reading (flock: dies with its process).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time

from filelock import FileLock, Timeout

from graft.core.log import log

__all__ = ["READERS", "StepBusy", "readers_lock", "step_lock"]


class StepBusy(RuntimeError):
    """Another live process holds a step output's lock past runner.lock_wait_seconds."""


def _owner_text(out: str) -> str:
    try:
        with open(out + ".owner.json") as f:
            o = json.load(f)
        return f"pid {o['pid']} on {o['host']} (run {o['run_id']}, since {o['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its pid yet)"


@contextlib.contextmanager
def step_lock(out: str, step: str, run_id: str, wait_seconds: float):
    """Hold the lock on a step output dir: wait up to wait_seconds, or raise StepBusy naming
    the holder. The lock dies with its process, so a killed run's output is resumable.

    Args:
        out: the step's output folder.
        step: the step's name, for the messages.
        run_id: the run that holds it, written beside the lock for others to read.
        wait_seconds: how long to wait for another holder.

    Yields:
        Nothing; the lock is held inside the with block.

    Raises:
        StepBusy: another process held it past wait_seconds.
    """
    os.makedirs(os.path.dirname(out), exist_ok=True)
    lock = FileLock(out + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = _owner_text(out)
        if wait_seconds <= 0:
            raise StepBusy(
                f"{step}: its output {out} is being written by {who}; not touched "
                "(runner.lock_wait_seconds is 0: wait for that run, or set it to wait)"
            ) from None
        log(
            f"{step}: its output {out} is being written by {who}; waiting up to "
            f"{wait_seconds:g}s (runner.lock_wait_seconds)",
            level="warn",
        )
        try:
            lock.acquire(timeout=wait_seconds)
        except Timeout:
            raise StepBusy(
                f"{step}: its output {out} is still being written by {_owner_text(out)} after "
                f"{wait_seconds:g}s (runner.lock_wait_seconds); not touched"
            ) from None
    try:
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_id": run_id,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with open(out + ".owner.json", "w") as f:
            json.dump(owner, f)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out + ".owner.json")
        lock.release()


READERS = ".readers"  # beside a step output: shared while a step reads it, exclusive to redo it


@contextlib.contextmanager
def readers_lock(out: str, step: str, shared: bool, wait_seconds: float):
    """Hold a step output for reading (shared: a running step reads it as an input) or for
    rewriting it (exclusive: --no-cache, --from, a step that is never cached). A rewrite waits
    for the readers and new readers wait for the rewrite, up to wait_seconds, else StepBusy;
    so a run never deletes an output that another live run is reading. flock: released with
    the process, also a killed one.

    Args:
        out: the step's output folder.
        step: who asks, for the messages.
        shared: True to read it, False to rewrite it.
        wait_seconds: how long to wait for the other side.

    Yields:
        Nothing; the lock is held inside the with block.

    Raises:
        StepBusy: the other side held it past wait_seconds.
    """
    fd = os.open(out + READERS, os.O_CREAT | os.O_RDWR, 0o644)
    deadline, said = time.monotonic() + max(wait_seconds, 0), False
    try:
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                doing = "rewritten by another run" if shared else "read by another run"
                if time.monotonic() >= deadline:
                    raise StepBusy(
                        f"{step}: {out} is being {doing} after {wait_seconds:g}s "
                        "(runner.lock_wait_seconds); not touched"
                    ) from None
                if not said:
                    log(
                        f"{step}: {out} is being {doing}; waiting up to {wait_seconds:g}s "
                        "(runner.lock_wait_seconds)",
                        level="warn",
                    )
                    said = True
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the flock
