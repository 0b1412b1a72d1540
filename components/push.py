"""Push: copy a blessed version to the serving destination atomically; keep the newest K.

Two pushes may overlap (a manual run and a scheduled one), so every step is owned:

- each push copies into its own hidden temp dir, `.tmp-push-<host>-<pid>-<id>` (TF Serving
  ignores names that are not integers), and on a local disk holds an flock on
  `<that name>.lock` beside it for as long as it runs;
- stale temp dirs are removed only when their owner is gone: its lock can be taken (locks die
  with their process), or, without a lock file, its pid on this host no longer exists;
- the copy is verified (file count and bytes, the completion marker written last) before it
  may be renamed; a partial tree is never renamed into place;
- the version number is chosen, and the rename and pruning done, under a destination lock;
- a model the destination already has (same weights checksum) is never pushed again;
- under the destination lock push re-reads what is served now: when that is not the version
  evaluate compared against (another run pushed meanwhile), the candidate goes in only if its
  test accuracy is above the served version's recorded one (`--force` overrides), and
  push.json and the log say which it was. The TFX Pusher trusts the blessing alone; a
  blessing against a baseline that is no longer served is stale;
- each version's lineage goes into its marker and, under the destination lock, into the
  registry index beside the versions (components/registry.py);
- `rollback` serves an older version again by publishing a copy of it as the newest version,
  through the same temp dir, verification and locked rename.

Remote destinations (gs://, s3://, ...) have no flock: the destination lock there is a local
file, so it orders pushes from this host only, and a temp dir's owner can be checked only
from the host that wrote it (other hosts remove unknown temp dirs after STALE_SECONDS).
Object-store renames are copies, not atomic: push to one remote model path from one host.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field

from graft.components import registry
from graft.components.fs import any_gfile as gfile
from graft.components.fs import is_not_found, read_json, sync_to_disk
from graft.components.hashing import weights_sha256
from graft.components.registry import (
    MARKER,
    pushed_weights_sha,
    read_marker,
    same_model_version,
    version_path,
    versions,
)
from graft.core.config import ConfigError, PushConfig
from graft.core.log import log
from graft.core.paths import is_remote, mark_output_dir
from graft.core.paths import join as _join

__all__ = [
    "TMP_PREFIX",
    "IncompleteCopy",
    "PushResult",
    "push",
    "RollbackResult",
    "rollback",
]

TMP_PREFIX = ".tmp-push-"
STALE_SECONDS = 24 * 3600  # temp dirs whose owner cannot be checked are removed after this


def _walk_files(root: str) -> dict[str, int]:
    """Relative path -> size of every file under root."""
    out = {}
    for dirpath, _, files in gfile.walk(root):
        rel = os.path.relpath(dirpath, root) if not is_remote(root) else dirpath[len(root) :]
        rel = rel.strip("/")
        for f in files:
            key = f if rel in ("", ".") else f"{rel}/{f}"
            out[key] = gfile.stat(_join(dirpath, f)).length
    return out


def _copy_tree(src: str, dst: str, skip: tuple[str, ...] = ()) -> dict[str, int]:
    files = {k: v for k, v in _walk_files(src).items() if k not in skip}
    for rel in sorted(files):
        target = _join(dst, *rel.split("/"))
        gfile.makedirs(target.rsplit("/", 1)[0])
        gfile.copy(_join(src, *rel.split("/")), target, overwrite=False)
        sync_to_disk(target)
    return files


class IncompleteCopy(RuntimeError):
    """The temp copy does not match its source: it must not become a version."""


def _verify(tmp: str, expected: dict[str, int]) -> None:
    got = _walk_files(tmp)
    marker = got.pop(MARKER, None)
    if marker is None:
        raise IncompleteCopy(f"{tmp}: no {MARKER}")
    if "saved_model.pb" not in got:
        raise IncompleteCopy(f"{tmp}: no saved_model.pb")
    if got != expected:
        missing = sorted(set(expected) - set(got))
        sizes = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise IncompleteCopy(
            f"{tmp}: {len(got)} of {len(expected)} files, {sum(got.values())} of "
            f"{sum(expected.values())} bytes (missing e.g. {missing[:3]}, wrong size {sizes[:3]})"
        )


# ---------------------------------------------------------------- locks and owners


@contextlib.contextmanager
def _flock(path: str):
    """An exclusive flock on path, removed on release; safe against a concurrent unlink.

    Not filelock.FileLock: it leaves the lock file in place by design (its waiters share the
    inode), and push leaves nothing but versions and the index beside them; removing the file
    is safe only with the inode re-check below, which filelock does not do."""
    import fcntl

    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder before us unlinked it: lock the new file instead
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _destination_lock(root: str):
    """Orders choosing the version number, the rename and pruning between pushes."""
    if is_remote(root):
        key = hashlib.sha256(root.encode()).hexdigest()[:16]
        return _flock(os.path.join(tempfile.gettempdir(), f"graft-push-{key}.lock"))
    return _flock(os.path.join(root, ".push.lock"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_gone(root: str, name: str) -> bool:
    """True only when the push that made temp dir `name` cannot still be running."""
    import fcntl

    if not is_remote(root):
        try:
            fd = os.open(os.path.join(root, name + ".lock"), os.O_RDWR)
        except FileNotFoundError:
            pass  # no owner lock: an older push, a remote-style name, or a hand-made dir
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return False  # its owner holds it
                raise
            finally:
                os.close(fd)
            return True
    if name.startswith(TMP_PREFIX):
        try:
            host, pid, _ = name[len(TMP_PREFIX) :].rsplit("-", 2)
            if host == socket.gethostname():
                return not _pid_alive(int(pid))
        except ValueError:
            pass
    try:
        mtime = gfile.stat(_join(root, name)).mtime_nsec / 1e9
    except Exception as e:  # noqa: BLE001 - FileNotFoundError, or tf's at a URL
        if is_not_found(e):
            return False
        raise
    return time.time() - mtime > STALE_SECONDS


def _rmtree_if_there(path: str) -> None:
    """Remove a folder; one that another process removed first is not an error."""
    try:
        gfile.rmtree(path)
    except Exception as e:  # noqa: BLE001 - FileNotFoundError, or tf's at a URL
        if not is_not_found(e):
            raise


def _remove_stale_tmp(root: str) -> list[str]:
    removed = []
    for entry in gfile.listdir(root):
        name = entry.rstrip("/")
        if not name.startswith(".tmp-") or name.endswith(".lock"):
            continue
        if not _owner_gone(root, name):
            continue
        _rmtree_if_there(_join(root, name))
        if not is_remote(root):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(root, name + ".lock"))
        removed.append(name)
    if not is_remote(root):  # lock files of owners that died before making their dir
        for name in os.listdir(root):
            if name.startswith(TMP_PREFIX) and name.endswith(".lock"):
                tmp = name[: -len(".lock")]
                if not os.path.exists(os.path.join(root, tmp)) and _owner_gone(root, tmp):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(root, name))
    if removed:
        log(f"push: removed temp dirs of pushes that are gone: {removed}", level="warn")
    return removed


def _tmp_name() -> str:
    """A temp name owned by this process: the stale-temp clean-up reads host and pid from it."""
    return f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def _owned_tmp(root: str):
    """A fresh temp dir that only this process uses; removed unless renamed away."""
    name = _tmp_name()
    tmp = _join(root, name)
    owner = (
        contextlib.nullcontext() if is_remote(root) else _flock(os.path.join(root, name + ".lock"))
    )
    with owner:  # taken before the dir exists, so no cleaner ever sees it unowned
        gfile.makedirs(tmp)
        try:
            yield tmp
        finally:
            if gfile.exists(tmp):
                _rmtree_if_there(tmp)


# ---------------------------------------------------------------- push


@dataclass
class PushResult:
    """Whether the version was pushed and why (or why not), and what pushing removed;
    written as push.json."""

    pushed: bool
    blessed: bool
    forced: bool
    version: int
    reasons: list[str]
    destination: str | None = None
    already_at_destination: bool = False
    files: int = 0
    removed_versions: list[int] = field(default_factory=list)
    # what was served when the version was renamed in, if not evaluate's baseline: served
    # version, its recorded accuracy, the candidate's, and the outcome (pushed, refused, forced)
    recheck: dict | None = None


def _recorded_accuracy(destination: str, model_name: str, version: int) -> float | None:
    """The test accuracy the registry recorded for a version (its lineage), if any."""
    try:
        e = registry.entry(destination, model_name, version)
    except registry.UnknownVersion:
        return None
    acc = ((e.get("lineage") or {}).get("metrics") or {}).get("accuracy")
    return float(acc[0]) if acc and isinstance(acc[0], int | float) else None


def recheck_served(
    destination: str, model_name: str, evaluation: dict, force: bool
) -> tuple[bool, dict | None]:
    """Under the destination lock: may the candidate go in over what is served now?

    (True, None) when evaluate's comparison still holds: nothing is served, or the served
    version is the one it compared against. Otherwise the candidate's test accuracy must beat
    the served version's recorded one (each measured on its own run's test split; a tie is
    refused, as evaluate refuses ties by default); `force` pushes anyway."""
    served = registry.served_version(destination, model_name)
    compared = evaluation.get("baseline_version")
    if served is None or served == compared:
        return True, None
    cand = (evaluation.get("candidate") or {}).get("accuracy")
    served_acc = _recorded_accuracy(destination, model_name, served)
    info = {
        "served_version": served,
        "evaluated_against": compared,
        "served_accuracy": served_acc,
        "candidate_accuracy": cand,
    }
    better = cand is not None and served_acc is not None and cand > served_acc
    if better:
        info["outcome"] = "pushed: still better than the version served now"
    elif force:
        info["outcome"] = "forced: not better than the version served now, pushed anyway"
    else:
        info["outcome"] = "refused: not better than the version served now"
    return better or force, info


def _recheck_text(info: dict) -> str:
    acc = info["served_accuracy"]
    served = f"{acc:.4f}" if acc is not None else "no recorded accuracy"
    evaluated = info["evaluated_against"]
    return (
        f"version {info['served_version']} was pushed since evaluate compared against "
        + (f"version {evaluated}" if evaluated is not None else "no baseline")
        + f"; candidate test accuracy {info['candidate_accuracy']} vs its {served}"
    )


def _already(result: PushResult, destination: str, model_name: str, version: int) -> None:
    result.already_at_destination, result.version = True, version
    result.destination = version_path(destination, model_name, version)
    served = registry.served_version(destination, model_name)
    if served is not None and served != version:
        log(
            f"push: this model is already at the destination as version {version}, which is not "
            f"the served one (version {served} is, e.g. after a rollback); not pushed again. To "
            f"serve it: graft rollback --destination {destination} --model-name {model_name} "
            f"--to {version}",
            level="warn",
        )
        return
    log(f"push: this model is already at the destination as version {version}; nothing to do")


def _prune(destination: str, model_name: str, keep: int) -> list[int]:
    """Remove all but the newest `keep` versions, except the original of a kept rollback copy:
    the version a rollback went back to stays while its copy is kept. Under the lock."""
    existing = versions(destination, model_name)
    if len(existing) <= keep:
        return []
    kept = existing[-keep:]
    pinned = set()
    for v in kept:
        rb = (read_marker(version_path(destination, model_name, v)) or {}).get("rollback") or {}
        if rb.get("to") is not None:
            pinned.add(int(rb["to"]))
    removed = []
    for old in existing[:-keep]:
        if old in pinned:
            continue
        _remove_version(version_path(destination, model_name, old))
        removed.append(old)
    return removed


def _remove_version(path: str) -> None:
    """Delete a version folder. Locally it is first renamed to a temp name of this process, so
    a kill mid-delete leaves no half version where TF Serving (policy all or specific) or a
    rollback would take it for whole; the stale-temp clean-up removes the rest. A bucket has
    no atomic rename (a copy of every file): there it is deleted in place."""
    if is_remote(path):
        gfile.rmtree(path)
        return
    gone = os.path.join(os.path.dirname(path.rstrip("/")), _tmp_name())
    os.rename(path, gone)
    shutil.rmtree(gone)


def _record(destination: str, model_name: str, entry: dict, removed: list[int]) -> None:
    """The index entry of a version just renamed into place. Under the lock. A failure here
    leaves a correct destination (the entry is also in the version's marker): it warns."""
    try:
        registry.update_index(destination, model_name, add=entry, removed=removed)
    except Exception as e:  # noqa: BLE001 - the version is in place; the index can be rebuilt
        log(
            f"push: could not update {registry.index_path(destination, model_name)}: "
            f"{type(e).__name__}: {e}; `graft models list` reads the version dirs instead",
            level="warn",
        )


def _write_marker(tmp: str, marker: dict) -> None:
    with gfile.GFile(_join(tmp, MARKER), "w") as f:  # last: the copy is complete
        json.dump(marker, f)
    sync_to_disk(_join(tmp, MARKER))


@dataclass
class _Candidate:
    """The exported version push copies, and the evaluation that judged it."""

    src: str
    version: int
    model_sha: str | None
    weights: str | None
    evaluation: dict


def push(
    export_dir: str,
    evaluation_dir: str,
    out_dir: str,
    *,
    cfg: PushConfig,
    model_name: str,
    force: bool | None = None,
    recheck: bool = True,
    drift_dir: str | None = None,
) -> PushResult:
    """Copy <export_dir>/<model>/<version> to <destination>/<model>/<version> if blessed,
    and record the version's lineage and the drift step's verdict on its data in the registry
    (components/registry.py).

    `recheck` (evaluate.compare_baseline): compare with what is served at push time too.

    Args:
        export_dir: the export step's output (export.json, the version directory).
        evaluation_dir: the evaluate step's output (evaluation.json: blessed and why).
        out_dir: where push.json is written.
        cfg: the `push` section (destination, keep, force).
        model_name: the served model's name, the folder under the destination.
        force: push an unblessed model; None takes `cfg.force`.
        recheck: under the destination lock, compare with what is served now too.
        drift_dir: the drift step's output, whose verdict the registry records; or None.

    Returns:
        The PushResult, also written to `out_dir`/push.json.

    Raises:
        IncompleteCopy: the copy does not match the exported version; nothing is published.
    """
    os.makedirs(out_dir, exist_ok=True)
    force = cfg.force if force is None else force
    with open(os.path.join(evaluation_dir, "evaluation.json")) as f:
        evaluation = json.load(f)
    with open(os.path.join(export_dir, "export.json")) as f:
        exported = json.load(f)
    src, version = exported["path"], int(exported["version"])
    # export read the weights' checksum (an older export.json has none: read it here)
    weights = exported.get("weights_sha256") or weights_sha256(src)
    cand = _Candidate(src, version, exported.get("model_sha256"), weights, evaluation)
    result = PushResult(
        pushed=False,
        blessed=evaluation["blessed"],
        forced=False,
        version=version,
        reasons=evaluation["reasons"],
    )
    same = same_model_version(cfg.destination, model_name, cand.model_sha, cand.weights)
    if same is not None:
        _already(result, cfg.destination, model_name, same)
    elif not evaluation["blessed"] and not force:
        log(
            "push: model not blessed; nothing pushed (" + "; ".join(evaluation["reasons"]) + ")",
            level="warn",
        )
    else:
        _copy_and_publish(result, cand, cfg, model_name, force, recheck, drift_dir)
        _say_pushed(result)
    with open(os.path.join(out_dir, "push.json"), "w") as f:
        json.dump(asdict(result), f, indent=2)
    return result


def _push_entry(cand: _Candidate, pushed_at: float, drift_dir: str | None) -> dict:
    """The version's index entry: who, when, what and its lineage; numbered under the lock."""
    evaluation = cand.evaluation
    return {
        "kind": "push",
        "created": registry.now_iso(pushed_at),
        "run_id": registry.run_id(),
        "pushed_by": registry.who(),
        "forced": not evaluation["blessed"],
        "model_sha256": cand.model_sha,
        "weights_sha256": cand.weights,
        "lineage": registry.lineage_for_push(
            read_json(_join(cand.src, "model_card.json")), evaluation
        ),
        "drift": registry.drift_verdict(drift_dir),
    }


def _copy_and_publish(
    result: PushResult, cand: _Candidate, cfg: PushConfig, model_name, force, recheck, drift_dir
) -> None:
    """Copy into a private temp dir and verify it, then publish it under the destination lock."""
    root = _join(cfg.destination, model_name)
    gfile.makedirs(root)
    mark_output_dir(cfg.destination)  # never read as data, wherever it sits
    _remove_stale_tmp(root)
    pushed_at = time.time()
    entry = _push_entry(cand, pushed_at, drift_dir)
    with _owned_tmp(root) as tmp:
        files = _copy_tree(cand.src, tmp)
        marker = {
            "model_sha256": cand.model_sha,
            "weights_sha256": cand.weights,
            "files": len(files),
            "bytes": sum(files.values()),
            "pushed": pushed_at,
            "blessed": cand.evaluation["blessed"],
            "forced": not cand.evaluation["blessed"],
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "entry": entry,
        }
        _write_marker(tmp, marker)
        _verify(tmp, files)
        with _destination_lock(root):
            _publish(result, cand, tmp, marker, len(files), cfg, model_name, force, recheck)


def _publish(
    result: PushResult, cand, tmp, marker, n_files, cfg: PushConfig, model_name, force, recheck
) -> None:
    """Under the lock: unless the same model arrived meanwhile, or (recheck) the version served
    now is better, rename the copy in as the newest version, prune, and index it."""
    same = same_model_version(cfg.destination, model_name, cand.model_sha, cand.weights)
    go, info = (
        recheck_served(cfg.destination, model_name, cand.evaluation, force)
        if same is None and recheck
        else (same is None, None)
    )
    result.recheck = info
    if same is not None:  # another push brought the same model meanwhile
        _already(result, cfg.destination, model_name, same)
        return
    if not go:
        result.reasons = [*result.reasons, f"{info['outcome']}: {_recheck_text(info)}"]
        log(
            f"push: not pushed: {_recheck_text(info)}; the version served now stays "
            "(--force to push anyway)",
            level="warn",
        )
        return
    entry = marker["entry"]
    if info is not None:  # the marker and the index say what it was pushed over
        entry["recheck"] = info
        if info["outcome"].startswith("forced"):  # blessed, but pushed over a better one
            entry["forced"] = marker["forced"] = True
        _write_marker(tmp, marker)
    version = cand.version
    existing = versions(cfg.destination, model_name)
    if version in existing or (existing and version < existing[-1]):
        version = max(existing[-1] + 1, int(time.time()))  # newest, never over
    final = _join(_join(cfg.destination, model_name), str(version))
    _rename_marker_last(tmp, final, marker)
    removed = _prune(cfg.destination, model_name, cfg.keep)
    _record(cfg.destination, model_name, {"version": version, **entry}, removed)
    result.pushed, result.forced = True, bool(entry["forced"])
    result.destination, result.version = final, version
    result.files, result.removed_versions = n_files, removed


def _rename_marker_last(tmp: str, final: str, marker: dict) -> None:
    """Rename the verified copy in as a version. Locally one atomic rename. A bucket's rename
    copies file by file, in name order, so the marker (graft_push.json, which says the
    version is whole) would land before saved_model.pb and variables/: a kill midway left a
    version Graft took as pushed ("already at the destination") and TF Serving could not
    load. There the marker is set aside and written after everything else."""
    if not is_remote(final):
        for folder, _, _ in os.walk(tmp):  # every entry of the copy is on disk before the rename
            sync_to_disk(folder)
        gfile.rename(tmp, final, overwrite=False)
        sync_to_disk(os.path.dirname(final))  # and the rename itself
        return
    gfile.remove(_join(tmp, MARKER))
    gfile.rename(tmp, final, overwrite=False)
    _write_marker(final, marker)


def _say_pushed(result: PushResult) -> None:
    if result.pushed and result.recheck:
        log(f"push: {result.recheck['outcome']}: {_recheck_text(result.recheck)}")
    if result.pushed:
        log(
            f"push: {'FORCED ' if result.forced else ''}pushed version {result.version} to "
            f"{result.destination} ({result.files} files, verified)"
            + (
                f"; removed old versions {result.removed_versions}"
                if result.removed_versions
                else ""
            ),
            level="ok",
        )


# ---------------------------------------------------------------- rollback


@dataclass
class RollbackResult:
    """Which version serves which model after a rollback, and what was served before."""

    rolled_back: bool
    version: int  # the version served now
    to: int  # the version whose model it serves
    previous: int | None  # the version served before
    destination: str | None = None
    files: int = 0


def rollback(
    destination: str, model_name: str, to: int, *, reason: str | None = None
) -> RollbackResult:
    """Serve version `to` again: publish a copy of it as the newest version.

    TF Serving (and `graft serve`) serve the newest integer version, so the copy goes through
    push's own path: a private temp dir, a verified copy, a new number and a rename under the
    destination lock. A server polling the destination loads the copy once it is complete and
    then unloads the version it served before: no request fails. Nothing is pruned; later
    pushes prune as `push.keep` says but keep `to` while its copy is kept. The index records
    the copy as kind `rollback` with the original's lineage. If the served version already
    holds this model (the same weights), nothing is done.

    Args:
        destination: the push destination (local or remote) that serving polls.
        model_name: the served model's name, the folder under the destination.
        to: the version to serve again.
        reason: why, recorded in the registry's index.

    Returns:
        The RollbackResult: the version served now and the one served before.

    Raises:
        registry.UnknownVersion: `to` is not in the index or its directory is gone; the
            message names the versions there are.
        ConfigError: version `to` would not load (registry.load_problem).
        IncompleteCopy: the copy does not match version `to`; nothing is published.
    """
    root = _join(destination, model_name)
    _require_version(destination, model_name, to)
    src = version_path(destination, model_name, to)
    previous = registry.served_version(destination, model_name)
    problem = registry.load_problem(src)
    if problem:  # its copy would not load either: TF Serving would go on serving `previous`
        raise ConfigError(
            f"version {to} of {model_name} would not load ({problem}): rolling back to it would "
            f"leave version {previous} served. `graft models list` shows each version's status"
        )
    weights = pushed_weights_sha(destination, model_name, to)
    if previous is not None and (
        previous == to
        or (weights and pushed_weights_sha(destination, model_name, previous) == weights)
    ):
        log(f"rollback: version {previous} already serves version {to}'s model; nothing to do")
        return RollbackResult(
            False, previous, to, previous, version_path(destination, model_name, previous)
        )
    source_marker = read_marker(src) or {}
    at = time.time()
    entry = _rollback_entry(
        destination, model_name, to, previous, source_marker, weights, at, reason
    )
    result = RollbackResult(False, to, to, previous)
    _remove_stale_tmp(root)
    with _owned_tmp(root) as tmp:
        files = _copy_tree(src, tmp, skip=(MARKER,))
        marker = {
            "model_sha256": entry["model_sha256"],
            "weights_sha256": weights,
            "files": len(files),
            "bytes": sum(files.values()),
            "pushed": at,
            "blessed": source_marker.get("blessed"),
            "forced": False,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "rollback": entry["rollback"],
            "entry": entry,
        }
        _write_marker(tmp, marker)
        _verify(tmp, files)
        with _destination_lock(root):
            _publish_rollback(result, destination, model_name, tmp, marker, len(files))
    log(
        f"rollback: version {result.version} (a copy of version {to}) is now the newest and "
        f"served; it was version {result.previous}",
        level="ok",
    )
    return result


def _require_version(destination: str, model_name: str, to: int) -> None:
    """Raise UnknownVersion, naming the versions there, unless `to` is at the destination."""
    registry.require_model(destination, model_name)
    existing = versions(destination, model_name)
    if to not in existing:
        registry.entry(destination, model_name, to)  # raises UnknownVersion naming the others
        raise registry.UnknownVersion(  # in the index but its dir is gone
            f"version {to} of '{model_name}' is no longer at {destination} (pruned or deleted); "
            f"versions there: {', '.join(map(str, existing)) or 'none'}"
        )


def _rollback_entry(
    destination, model_name, to, previous, source_marker, weights, at, reason
) -> dict:
    """The copy's index entry: kind rollback, with the original's lineage and hashes."""
    original = registry.entry(destination, model_name, to)
    by = registry.who()
    return {
        "kind": "rollback",
        "created": registry.now_iso(at),
        "run_id": None,
        "pushed_by": by,
        "forced": False,
        "model_sha256": source_marker.get("model_sha256") or original.get("model_sha256"),
        "weights_sha256": weights,
        "lineage": original.get("lineage") or {},
        "rollback": {
            "to": to,
            "from": previous,
            "by": by,
            "at": registry.now_iso(at),
            "reason": reason,
        },
    }


def _publish_rollback(result: RollbackResult, destination, model_name, tmp, marker, n_files):
    """Under the lock: the copy becomes a version newer than every one, also those only in
    the index, so no record is overwritten. The version rolled back from is known only now:
    the marker says it too (rewritten locally, written last in a bucket)."""
    entry = marker["entry"]
    to = result.to
    existing = versions(destination, model_name)
    if to not in existing:
        raise registry.UnknownVersion(
            f"version {to} of '{model_name}' was removed while it was being copied"
        )
    indexed = [int(e["version"]) for e in registry.read_index(destination, model_name)]
    version = max([*existing, *indexed]) + 1
    entry["rollback"]["from"] = result.previous = existing[-1]
    final = _join(destination, model_name, str(version))
    if not is_remote(final):
        _write_marker(tmp, marker)  # with the version rolled back from, set above
    _rename_marker_last(tmp, final, marker)
    _record(destination, model_name, {"version": version, **entry}, [])
    result.rolled_back, result.version = True, version
    result.destination, result.files = final, n_files
