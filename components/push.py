"""Push: copy a blessed version to the serving destination atomically; keep the newest K.

The version is copied to a hidden temporary sibling (TF Serving ignores names that are not
integers) and renamed into place, so a poller never sees a half-written version. An
existing version is never overwritten.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field

import tensorflow as tf

from graft.core.config import PushConfig
from graft.core.log import log
from graft.core.paths import join as _join

gfile = tf.io.gfile


def versions(destination: str, model_name: str) -> list[int]:
    root = _join(destination, model_name)
    if not gfile.isdir(root):
        return []
    return sorted(int(d.rstrip("/")) for d in gfile.listdir(root) if d.rstrip("/").isdigit())


def latest_version(destination: str, model_name: str) -> int | None:
    v = versions(destination, model_name)
    return v[-1] if v else None


def version_path(destination: str, model_name: str, version: int) -> str:
    return _join(destination, model_name, str(version))


MARKER = "graft_push.json"


def file_sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with gfile.GFile(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pushed_model_sha(destination: str, model_name: str, version: int) -> str | None:
    path = _join(version_path(destination, model_name, version), MARKER)
    if not gfile.exists(path):
        return None
    with gfile.GFile(path) as f:
        return json.load(f).get("model_sha256")


def baseline_version(
    destination: str, model_name: str, candidate_sha: str | None = None
) -> int | None:
    """The newest version at the destination that is not the candidate itself."""
    for v in reversed(versions(destination, model_name)):
        if candidate_sha is None or pushed_model_sha(destination, model_name, v) != candidate_sha:
            return v
    return None


def _copy_tree(src: str, dst: str) -> int:
    n = 0
    for dirpath, _, files in gfile.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = dst if rel == "." else _join(dst, rel)
        gfile.makedirs(target)
        for f in files:
            gfile.copy(_join(dirpath, f), _join(target, f), overwrite=False)
            n += 1
    return n


def _clean_stale_tmp(root: str) -> None:
    for d in gfile.listdir(root):
        if d.startswith(".tmp-"):
            gfile.rmtree(_join(root, d.rstrip("/")))


@dataclass
class PushResult:
    pushed: bool
    blessed: bool
    forced: bool
    version: int
    reasons: list[str]
    destination: str | None = None
    already_at_destination: bool = False
    files: int = 0
    removed_versions: list[int] = field(default_factory=list)


def push(
    export_dir: str,
    evaluation_dir: str,
    out_dir: str,
    *,
    cfg: PushConfig,
    model_name: str,
    force: bool | None = None,
) -> PushResult:
    """Copy <export_dir>/<model>/<version> to <destination>/<model>/<version> if blessed."""
    os.makedirs(out_dir, exist_ok=True)
    force = cfg.force if force is None else force
    with open(os.path.join(evaluation_dir, "evaluation.json")) as f:
        evaluation = json.load(f)
    with open(os.path.join(export_dir, "export.json")) as f:
        exported = json.load(f)
    src, version = exported["path"], int(exported["version"])
    result = PushResult(
        pushed=False,
        blessed=evaluation["blessed"],
        forced=False,
        version=version,
        reasons=evaluation["reasons"],
    )
    same = [
        v
        for v in versions(cfg.destination, model_name)
        if pushed_model_sha(cfg.destination, model_name, v) == exported.get("model_sha256")
    ]
    if same:
        result.already_at_destination, result.version = True, same[-1]
        result.destination = version_path(cfg.destination, model_name, same[-1])
        log(f"push: this model is already at the destination as version {same[-1]}; nothing to do")
    elif not evaluation["blessed"] and not force:
        log(
            "push: model not blessed; nothing pushed (" + "; ".join(evaluation["reasons"]) + ")",
            level="warn",
        )
    else:
        root = _join(cfg.destination, model_name)
        gfile.makedirs(root)
        _clean_stale_tmp(root)
        existing = versions(cfg.destination, model_name)
        if version in existing or (existing and version < existing[-1]):
            version = max(existing[-1] + 1, int(time.time()))  # never overwrite, always newest
        final = _join(root, str(version))
        tmp = _join(root, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
        n = _copy_tree(src, tmp)
        with gfile.GFile(_join(tmp, MARKER), "w") as f:
            json.dump(
                {
                    "model_sha256": exported.get("model_sha256"),
                    "pushed": time.time(),
                    "blessed": evaluation["blessed"],
                    "forced": not evaluation["blessed"],
                },
                f,
            )
        if os.environ.get("GRAFT_TEST_CRASH_BEFORE_RENAME"):
            os._exit(17)  # tests: simulate a kill between the copy and the rename
        gfile.rename(tmp, final, overwrite=False)
        removed = []
        for old in versions(cfg.destination, model_name)[: -cfg.keep]:
            gfile.rmtree(version_path(cfg.destination, model_name, old))
            removed.append(old)
        result.pushed, result.forced, result.destination = True, not evaluation["blessed"], final
        result.version, result.files, result.removed_versions = version, n, removed
        log(
            f"push: {'FORCED ' if result.forced else ''}pushed version {version} to {final}"
            + (f"; removed old versions {removed}" if removed else ""),
            level="ok",
        )
    with open(os.path.join(out_dir, "push.json"), "w") as f:
        json.dump(asdict(result), f, indent=2)
    return result
