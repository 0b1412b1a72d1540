"""Model registry: what each pushed version is and where it came from (lineage), and rollbacks.

Two records, written by push (components/push.py) and kept in step:

- each version dir's completion marker, `<destination>/<model>/<version>/graft_push.json`,
  holds that version's entry: it travels with the directory;
- the index, `<destination>/<model>/registry.json`, holds every version's entry, also of
  versions pruned since (marked `removed`) and of rollbacks. It is rewritten whole, atomically
  (a temp file renamed over it), under push's destination lock; readers need no lock.
  TF Serving and `graft serve` load integer-named directories only, so the file beside them
  is ignored by both.

An entry: `version`, `kind` (`push` or `rollback`), `created`, `run_id` (the run that pushed),
`pushed_by`, `forced`, `model_sha256`, `weights_sha256`, `lineage`, `drift` (the drift step's
verdict on the data: `verdict` none / flagged / blocked / not checked, `against_version`,
`reasons`, `flagged_measures`) and, for a rollback, `rollback` (`to`, `from`, `by`, `at`,
`reason`). The lineage (written by export into the model
card, see `build_lineage`): the run id, config hash and code version that exported the model,
the data snapshot (ingest output dir, its fingerprints and counts), the base and its weights
checksum, the test metrics with their 95% intervals, the blessing and the baseline it beat. A
rollback copy's lineage is the original version's, so the data it was trained on stays known.

This module reads local destinations without TensorFlow (`graft models list` stays fast) and
remote ones (gs://, s3://...) through tf.io.gfile.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

from graft.components.fs import (
    exists,
    gfile,
    isdir,
    listdir,
    read_json,
    read_text,
    write_json_atomic,
)
from graft.components.hashing import file_sha256_or_none, weights_sha256
from graft.core.config import ConfigError
from graft.core.log import log
from graft.core.paths import is_remote
from graft.core.paths import join as _join
from graft.core.versions import version_number

__all__ = [
    "COLUMNS",
    "INDEX",
    "MARKER",
    "RUN_ID_ENV",
    "UnknownVersion",
    "baseline_version",
    "build_lineage",
    "training_record",
    "code_version",
    "code_version_text",
    "drift_verdict",
    "edge_models",
    "entries",
    "entry",
    "index_path",
    "latest_version",
    "lineage_for_push",
    "load_problem",
    "models_at",
    "now_iso",
    "pushed_model_sha",
    "pushed_weights_sha",
    "read_index",
    "read_marker",
    "require_model",
    "run_id",
    "same_model_version",
    "served_entry",
    "served_version",
    "table_row",
    "update_index",
    "version_path",
    "versions",
    "who",
]

MARKER = "graft_push.json"  # written last into a pushed version: it is complete; its entry
INDEX = "registry.json"  # <destination>/<model>/registry.json: every version's entry
RUN_ID_ENV = "GRAFT_RUN_ID"  # set by the local runner for the steps of a run
GIT_COMMIT_ENV = "GRAFT_GIT_COMMIT"  # e.g. set at image build time, where there is no .git
LINEAGE_FORMAT = 1


class UnknownVersion(ConfigError):
    """No such model or version at the destination (the message names what there is)."""


# ---------------------------------------------------------------- versions at a destination


def version_path(destination: str, model_name: str, version: int) -> str:
    """A version's folder: <destination>/<model>/<version>, as TF Serving reads it.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.
        version: the version number.

    Returns:
        The path.
    """
    return _join(destination, model_name, str(version))


def versions(destination: str, model_name: str) -> list[int]:
    """The version directories (core.versions' rule, as the server reads them), oldest first.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.

    Returns:
        The version numbers, ascending; [] when the model has none.
    """
    root = _join(destination, model_name)
    if not isdir(root):
        return []
    found = (version_number(d) for d in listdir(root))
    return sorted(v for v in found if v is not None)


def _servable(destination: str, model_name: str, version: int) -> bool:
    """Whether TF Serving would try the version: it has a saved_model.pb (not still copied in)."""
    return exists(_join(version_path(destination, model_name, version), "saved_model.pb"))


def served_version(destination: str, model_name: str) -> int | None:
    """What TF Serving's default policy serves: the newest version with a saved_model.pb.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.

    Returns:
        The version number, or None.
    """
    for v in reversed(versions(destination, model_name)):
        if _servable(destination, model_name, v):
            return v
    return None


def latest_version(destination: str, model_name: str) -> int | None:
    """The newest version directory of a model, whether or not it loads.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.

    Returns:
        The version number, or None when there is none.
    """
    v = versions(destination, model_name)
    return v[-1] if v else None


def pushed_model_sha(destination: str, model_name: str, version: int) -> str | None:
    """The model.keras checksum a pushed version's marker records.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.
        version: the version number.

    Returns:
        The sha256, or None without a marker (or one that lacks it).
    """
    m = read_marker(version_path(destination, model_name, version))
    return m.get("model_sha256") if m else None


def pushed_weights_sha(destination: str, model_name: str, version: int) -> str | None:
    """The version's weights checksum: from its marker, else computed (a hand-copied version).

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.
        version: the version number.

    Returns:
        The weights_sha256, or None when the version holds no readable checkpoint.
    """
    path = version_path(destination, model_name, version)
    m = read_marker(path)
    if m and m.get("weights_sha256"):
        return m["weights_sha256"]
    return weights_sha256(path)


def baseline_version(
    destination: str, model_name: str, candidate_sha: str | None = None
) -> int | None:
    """The newest servable version at the destination (one with a saved_model.pb, as
    served_version: a version still being copied in is not what is served) that is not the
    candidate itself.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.
        candidate_sha: the candidate's model sha256; a version holding it is skipped.

    Returns:
        The version number, or None when there is none.
    """
    for v in reversed(versions(destination, model_name)):
        if not _servable(destination, model_name, v):
            continue
        if candidate_sha is None or pushed_model_sha(destination, model_name, v) != candidate_sha:
            return v
    return None


def same_model_version(
    destination: str, model_name: str, model_sha: str | None, weights_sha: str | None
) -> int | None:
    """The newest version that is this model: the same model file or the same weights.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.
        model_sha: the candidate's model.keras sha256, or None.
        weights_sha: the candidate's weights_sha256, or None.

    Returns:
        The version number, or None when no version is this model.
    """
    for v in reversed(versions(destination, model_name)):
        if model_sha and pushed_model_sha(destination, model_name, v) == model_sha:
            return v
        if weights_sha and pushed_weights_sha(destination, model_name, v) == weights_sha:
            return v
    return None


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _top_level_fields(buf: bytes) -> list[int]:
    """The field numbers of a serialized protobuf message; ValueError if it does not parse."""
    i, fields = 0, []
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")
        if field == 0 or i > len(buf):
            raise ValueError("truncated or not a protobuf message")
        fields.append(field)
    return fields


def load_problem(version_dir: str) -> str | None:
    """Why TF Serving could not load this version dir, from a cheap look without TensorFlow:
    saved_model.pb must parse as a SavedModel holding a MetaGraphDef (field 2), and a
    variables/ folder needs its variables.index. None when it looks loadable.

    Args:
        version_dir: the version's folder.

    Returns:
        The reason, or None.
    """
    pb = _join(version_dir, "saved_model.pb")
    try:
        if is_remote(pb):
            with gfile().GFile(pb, "rb") as f:
                data = f.read()
        else:
            with open(pb, "rb") as f:
                data = f.read()
    except Exception as e:  # noqa: BLE001 - OSError or tf.errors.OpError alike
        return f"saved_model.pb unreadable ({type(e).__name__})"
    try:
        fields = _top_level_fields(data)
    except ValueError as e:
        return f"saved_model.pb does not parse ({e})"
    if 2 not in fields:
        return "saved_model.pb holds no MetaGraphDef"
    variables = _join(version_dir, "variables")
    if isdir(variables) and not exists(_join(variables, "variables.index")):
        return "variables/variables.index is missing"
    return None


def read_marker(version_dir: str) -> dict | None:
    """A pushed version's graft_push.json: written last by push, so its presence means complete.

    Args:
        version_dir: the version's folder.

    Returns:
        The marker, or None when it is missing or unreadable.
    """
    return read_json(_join(version_dir, MARKER))


def edge_models(destination: str, model_name: str, version: int) -> list[dict]:
    """The TFLite files a version ships in assets.extra/ (export.tflite), each with what its
    tflite.json measured (bytes, test accuracy, agreement, ms/image); [] when none.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.
        version: the version number.

    Returns:
        One dict per .tflite file: its path and measurements.
    """
    folder = _join(version_path(destination, model_name, version), "assets.extra")
    if not isdir(folder):
        return []
    rows = (read_json(_join(folder, "tflite.json")) or {}).get("variants", [])
    measured = {r.get("file"): r for r in rows if isinstance(r, dict)}
    return [
        {"path": _join(folder, f), **measured.get(f, {})}
        for f in sorted(listdir(folder))
        if f.endswith(".tflite")
    ]


def models_at(destination: str) -> list[str]:
    """Model names at a destination: folders holding a version or an index.

    Args:
        destination: the push destination (a local folder or a URL).

    Returns:
        The names, sorted; [] when the destination does not exist.
    """
    if not isdir(destination):
        return []
    out = []
    for d in sorted(listdir(destination)):
        root = _join(destination, d)
        if d.startswith(".") or not isdir(root):
            continue
        if exists(_join(root, INDEX)) or any(x.isdigit() for x in listdir(root)):
            out.append(d)
    return out


# ---------------------------------------------------------------- who, which code, which run


def now_iso(t: float | None = None) -> str:
    """A UTC time as ISO 8601 to the second, as every registry entry and lineage writes it.

    Args:
        t: seconds since the epoch; None: now.

    Returns:
        e.g. "2026-01-31T12:00:00Z".
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def run_id() -> str:
    """The run this process works for: GRAFT_RUN_ID (the local runner sets it), else unknown.

    On Kubeflow nothing sets it yet, so steps there record "unknown".

    Returns:
        The run id, or "unknown".
    """
    return os.environ.get(RUN_ID_ENV) or "unknown"


def who() -> str:
    """Who pushed: user@host, for the registry entry (a container without a user: uid<N>).

    Returns:
        The text.
    """
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - a container user without a passwd entry
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """Graft's package version, and the git commit of its source when there is one.

    Returns:
        A dict: graft (the package version), git_commit ("unknown" when neither the
        environment nor a git checkout tells), git_dirty (None when unknown).
    """
    import importlib.metadata

    try:
        version = importlib.metadata.version("graft")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    commit, dirty = os.environ.get(GIT_COMMIT_ENV) or None, None
    root = Path(__file__).resolve().parent.parent  # the checkout, for an editable install
    if commit is None and (root / ".git").exists():
        try:
            git = ["git", "-C", str(root)]
            out = subprocess.run(
                [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            )
            if out.returncode == 0:
                commit = out.stdout.strip()
                status = subprocess.run(
                    [*git, "status", "--porcelain", "--untracked-files=no"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"graft": version, "git_commit": commit or "unknown", "git_dirty": dirty}


def code_version_text(code: dict | None) -> str:
    """code_version's dict in words, for the model card export writes.

    Args:
        code: what code_version returned, or None for a version pushed before it was recorded.

    Returns:
        "graft 0.1.0 @ <commit>", marked when the commit is unknown or had uncommitted changes.
    """
    if not code:
        return "unknown"
    commit = code.get("git_commit") or "unknown"
    text = f"graft {code.get('graft', '?')}"
    if commit == "unknown":
        return text + " (commit unknown)"
    return text + f" @ {commit[:12]}" + (" (uncommitted changes)" if code.get("git_dirty") else "")


# ---------------------------------------------------------------- lineage


def _config_hash(step_dir: str | None, settings: dict) -> tuple[str, str]:
    """The export step's fingerprint (every config section and input upstream of it) when the
    local runner made the dir, else a hash of the config the step read."""
    name = os.path.basename(os.path.normpath(step_dir)) if step_dir else ""
    if len(name) == 16 and all(c in "0123456789abcdef" for c in name):
        return name, "export step fingerprint: every config section and input upstream"
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16], "sha256 of the config the export step read"


def drift_verdict(drift_dir: str | None) -> dict | None:
    """The drift step's verdict (drift.json), short: what the registry entry records.

    `verdict` is none, flagged or blocked, or not checked (then `reasons` says why).

    Args:
        drift_dir: the drift step's output, or None when it did not run.

    Returns:
        A dict: verdict, against_version, reasons, flagged_measures; None without drift.json.
    """
    d = read_json(_join(drift_dir, "drift.json")) if drift_dir else None
    if d is None:
        return None
    if not d.get("checked"):
        verdict = "not checked"
    else:
        verdict = "blocked" if d.get("blocked") else "flagged" if d.get("flagged") else "none"
    return {
        "verdict": verdict,
        "against_version": d.get("served_version"),
        "reasons": list(d.get("reasons") or []),
        "flagged_measures": [k for k, m in (d.get("metrics") or {}).items() if m.get("flagged")],
    }


def base_weights_sha256(weights: str | None) -> str | None:
    """Checksum of the base's pretrained weights file; None for imagenet (Keras' own download)
    and for no weights."""
    if weights in (None, "imagenet"):
        return None
    if weights == "demo":
        from graft.core.paths import demo_weights

        weights = demo_weights()
    return file_sha256_or_none(weights)


def _interval(ev: dict, model: str, key: str) -> list | None:
    value = (ev.get("intervals") or {}).get(model, {}).get(key)
    if value is not None:
        return list(value)
    m = ev.get(model) or {}
    return [m[key]] if key in m else None  # no interval recorded: the value alone


def _data_snapshot(examples_dir: str) -> dict:
    stats = read_json(_join(examples_dir, "stats.json")) or {}
    counts = stats.get("counts") or {}
    fp = stats.get("data_fingerprint")
    if not fp:  # an older ingest output: the manifest's bytes stand for its content
        manifest = file_sha256_or_none(_join(examples_dir, "manifest.jsonl"))
        fp = manifest[:16] if manifest else None
    return {
        "examples_dir": examples_dir,
        "fingerprint": fp,
        "source": stats.get("source"),
        "source_fingerprint": stats.get("source_fingerprint"),
        "counts": counts,
        "split_sizes": {s: sum(c.values()) for s, c in counts.items()},
        "images": sum(sum(c.values()) for c in counts.values()),
        "quarantined": stats.get("quarantined"),
    }


def build_lineage(
    *,
    examples_dir: str,
    evaluation: dict,
    base: dict,
    settings: dict,
    step_dir: str | None = None,
    trained_model: str | None = None,
) -> dict:
    """What export records in the model card and push copies into the registry.

    Args:
        examples_dir: the ingest output the model was trained on.
        evaluation: evaluation.json's content.
        base: the base config (name, weights, kwargs).
        settings: the config the export step read (hashed when step_dir is no fingerprint).
        step_dir: the export step's output folder.
        trained_model: the trained model.keras the SavedModel was exported from.

    Returns:
        The lineage: run id, times, config hash, code version, data, base, metrics, blessing.
    """
    config_hash, covers = _config_hash(step_dir, settings)
    intervals = (evaluation.get("intervals") or {}).get("candidate") or {}
    cand = evaluation.get("candidate") or {}
    metrics = {
        "test_images": intervals.get("n", evaluation.get("test_examples")),
        "accuracy": _interval(evaluation, "candidate", "accuracy"),
    }
    for k, v in intervals.items():
        if k.startswith("top_"):
            metrics[k] = list(v)
    kept = ("balanced_accuracy", "macro_f1", "log_loss", "ece")
    metrics.update({k: cand[k] for k in kept if k in cand})
    baseline = None
    if evaluation.get("baseline_compared") is False:
        baseline = {"version": None, "compared": False, "off": "evaluate.compare_baseline: false"}
    elif evaluation.get("baseline_version") is not None:
        comparison = (evaluation.get("comparisons") or {}).get("candidate - served baseline")
        baseline = {
            "version": evaluation["baseline_version"],
            "accuracy": _interval(evaluation, "baseline", "accuracy"),
            "difference": comparison,  # paired bootstrap: difference, low, high
            "compared": evaluation.get("baseline") is not None,
        }
    return {
        "format": LINEAGE_FORMAT,
        "run_id": run_id(),
        "exported": now_iso(),
        "config_hash": config_hash,
        "config_hash_covers": covers,
        "code_version": code_version(),
        "data": _data_snapshot(examples_dir),
        "base": {
            "name": base.get("name"),
            "weights": base.get("weights"),
            "kwargs": base.get("kwargs") or {},
            "weights_sha256": base_weights_sha256(base.get("weights")),
        },
        "metrics": metrics,
        "head_only_accuracy": _interval(evaluation, "head_only", "accuracy"),
        "blessed": evaluation.get("blessed"),
        "blessing_reasons": list(evaluation.get("reasons") or []),
        "baseline": baseline,
        "trained_model": trained_model,
        "training": training_record(evaluation),
    }


def training_record(evaluation: dict) -> dict:
    """Which model shipped and the splits it trained on (evaluation.json's account of the
    fine_tune step): drift reads `trained_on` to score the served model on what it never saw.

    Args:
        evaluation: evaluation.json's content.

    Returns:
        {"shipped", "trained_on", "refit"}: trained_on is ["train", "val"] for a head refit
        on train + val, else ["train"] (val only early-stopped it and guarded fine-tuning).
    """
    refit = evaluation.get("refit")
    return {
        "shipped": evaluation.get("shipped"),
        "trained_on": ["train", "val"] if refit else ["train"],
        "refit": refit,
    }


def lineage_for_push(card: dict | None, evaluation: dict) -> dict:
    """The lineage push records: the model card's, or, for a card exported before lineage was
    recorded, what the card and evaluation.json still tell.

    Args:
        card: model_card.json's content, or None.
        evaluation: evaluation.json's content.

    Returns:
        The lineage.
    """
    card = card or {}
    lineage = card.get("lineage") or {}
    if lineage.get("format"):
        return lineage
    examples = lineage.get("examples") or ""
    out = build_lineage(
        examples_dir=examples,
        evaluation=evaluation,
        base=card.get("base") or {},
        settings=card.get("config") or {},
        trained_model=lineage.get("trained_model"),
    )
    out.update(run_id="unknown", code_version=None, exported=card.get("created"))
    if not examples:
        out["data"] = {"examples_dir": None, "fingerprint": None, "images": None}
    return out


# ---------------------------------------------------------------- the index


def index_path(destination: str, model_name: str) -> str:
    """Where a model's registry index lives: <destination>/<model>/registry.json.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.

    Returns:
        The path.
    """
    return _join(destination, model_name, INDEX)


def _version_of(e) -> int | None:
    """An entry's version number, None when it has none a reader can use ("abc", -1, 1.5)."""
    v = e.get("version") if isinstance(e, dict) else None
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if v >= 0 else None
    if isinstance(v, str) and v.isdigit() and v.isascii():
        return int(v)
    return None


def _salvage(text: str) -> list:
    """The entries a torn index still holds whole: its `versions` list read element by
    element up to the first that does not parse (a truncated write loses only its tail)."""
    start = text.find('"versions"')
    start = text.find("[", start) if start >= 0 else -1
    if start < 0:
        return []
    decoder, out, i = json.JSONDecoder(), [], start + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return out
        try:
            item, i = decoder.raw_decode(text, i)
        except ValueError:
            return out
        out.append(item)


class _Index:
    """What registry.json holds: usable entries, unusable ones (kept), and whether it parsed."""

    def __init__(self, path: str):
        self.path, self.corrupt, self.error = path, False, ""
        self.unusable: list = []
        text = read_text(path)
        raw: list = []
        if text is not None:
            try:
                data = json.loads(text)
                if not isinstance(data, dict) or not isinstance(data.get("versions"), list):
                    raise ValueError("no 'versions' list")
                raw = data["versions"]
                self.unusable = list(data.get("unusable_entries") or [])  # kept by earlier pushes
            except ValueError as e:
                self.corrupt, self.error = True, str(e)
                raw = _salvage(text)
        self.entries: dict[int, dict] = {}
        for e in raw:
            v = _version_of(e)
            if v is None:
                self.unusable.append(e)
            else:
                self.entries[v] = {**e, "version": v}


_warned: set[tuple[str, str]] = set()


def _warn_once(path: str, what: str) -> None:
    if (path, what) not in _warned:
        _warned.add((path, what))
        log(f"registry: {path}: {what}", level="warn")


def _load_index(destination: str, model_name: str) -> _Index:
    index = _Index(index_path(destination, model_name))
    if index.corrupt:
        _warn_once(
            index.path,
            f"not valid JSON ({index.error}); read the {len(index.entries)} whole entries it "
            "still holds and each version dir's graft_push.json; the next push keeps the file "
            "aside and rewrites the index",
        )
    if index.unusable:
        _warn_once(
            index.path,
            f"{len(index.unusable)} entry(ies) without a usable version number skipped "
            f"(e.g. {json.dumps(index.unusable[0], default=str)[:80]}); kept in the file",
        )
    return index


def read_index(destination: str, model_name: str) -> list[dict]:
    """The index's entries, oldest version first ([] when there is no index). A corrupt index
    gives the entries it still holds whole, with a warning; entries without a usable version
    number are skipped, with a warning.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.

    Returns:
        The entries.
    """
    index = _load_index(destination, model_name)
    return [index.entries[v] for v in sorted(index.entries)]


def _keep_aside(path: str) -> str:
    """Move a corrupt index out of the way, never over an earlier one; returns where."""
    aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    if is_remote(path):
        gfile().rename(path, aside, overwrite=False)
    else:
        os.rename(path, aside)
    return aside


def update_index(
    destination: str,
    model_name: str,
    *,
    add: dict | None = None,
    removed: list[int] | tuple[int, ...] = (),
) -> None:
    """Add or replace one entry and mark pruned versions. Call under push's destination lock.

    Never loses an entry: a corrupt index is kept aside as `registry.json.corrupt-<time>` and
    rebuilt from what it still holds whole plus each version dir's graft_push.json; entries
    without a usable version number are carried over in `unusable_entries`.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.
        add: the entry to add or replace (its `version` says which).
        removed: versions push pruned.
    """
    index = _load_index(destination, model_name)
    entries = index.entries
    if index.corrupt:
        aside = _keep_aside(index.path)
        log(
            f"registry: kept the corrupt {index.path} aside as {aside}; rebuilt the index from "
            f"its {len(entries)} whole entries and the version dirs",
            level="warn",
        )
    for v in versions(destination, model_name):  # a version the index lacks: from its dir
        if v not in entries:
            entries[v] = _entry_from_dir(destination, model_name, v)
    if add is not None:
        entries[int(add["version"])] = add
    for v in removed:
        if v in entries:
            entries[v]["removed"] = now_iso()
    root = _join(destination, model_name)
    if not is_remote(root):  # temp files of writers killed before their rename
        for name in os.listdir(root):
            if name.startswith(f".{INDEX}.tmp-"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))
    data = {
        "format": LINEAGE_FORMAT,
        "model": model_name,
        "updated": now_iso(),
        "versions": [entries[v] for v in sorted(entries)],
    }
    if index.unusable:
        data["unusable_entries"] = index.unusable
    write_json_atomic(index_path(destination, model_name), data)


def _entry_from_dir(destination: str, model_name: str, version: int) -> dict:
    """An entry for a version the index lacks: from its marker, else its model card."""
    path = version_path(destination, model_name, version)
    marker = read_marker(path) or {}
    if marker.get("entry"):
        return {**marker["entry"], "version": version}
    card = read_json(_join(path, "model_card.json"))
    created = marker.get("pushed")
    return {
        "version": version,
        "kind": "push",
        "created": now_iso(created) if created else (card or {}).get("created"),
        "run_id": "unknown",
        "pushed_by": marker.get("host"),
        "forced": marker.get("forced"),
        "model_sha256": marker.get("model_sha256"),
        "weights_sha256": marker.get("weights_sha256"),
        "lineage": lineage_for_push(card, {}) if card else {},
        "reconstructed": "from the version dir (not in the index)",
    }


def entries(destination: str, model_name: str, *, include_removed: bool = True) -> list[dict]:
    """Every version's entry, oldest first, with `status`: served, available, broken (on disk
    but would not load: `load_problem` says why), removed (pruned) or deleted (its dir gone
    without push pruning it); versions the index lacks are read from their dirs.

    `served` is the newest version that loads: what TF Serving keeps serving when a newer one
    fails to load.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.
        include_removed: also list pruned versions.

    Returns:
        The entries, oldest first.
    """
    on_disk = versions(destination, model_name)
    problems = {}
    for v in on_disk:
        problem = load_problem(version_path(destination, model_name, v))
        if problem:
            problems[v] = problem
    served = next((v for v in reversed(on_disk) if v not in problems), None)
    by_version = {int(e["version"]): dict(e) for e in read_index(destination, model_name)}
    for v in on_disk:
        if v not in by_version:
            by_version[v] = _entry_from_dir(destination, model_name, v)
    out = []
    for v in sorted(by_version):
        e = by_version[v]
        if v == served:
            e["status"] = "served"
        elif v in problems:
            e["status"], e["load_problem"] = "broken", problems[v]
        elif v in on_disk:
            e["status"] = "available"
        elif e.get("removed"):
            e["status"] = "removed"
        else:
            e["status"] = "deleted"
        if include_removed or v in on_disk:
            out.append(e)
    return out


def _unknown_model(destination: str, model_name: str) -> UnknownVersion:
    there = models_at(destination)
    return UnknownVersion(
        f"no model '{model_name}' at {destination}; "
        + (f"models there: {', '.join(there)}" if there else "it holds no models")
    )


def entry(destination: str, model_name: str, version: int) -> dict:
    """One version's entry; UnknownVersion naming the versions there are.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.
        version: the version number.

    Returns:
        The entry, with its status.

    Raises:
        UnknownVersion: no such model or version.
    """
    all_entries = entries(destination, model_name)
    if not all_entries:
        raise _unknown_model(destination, model_name)
    for e in all_entries:
        if int(e["version"]) == version:
            return e
    known = ", ".join(
        f"{e['version']}" + ("" if e["status"] in ("served", "available") else f" ({e['status']})")
        for e in all_entries
    )
    raise UnknownVersion(f"model '{model_name}' at {destination} has no version {version}: {known}")


def served_entry(destination: str, model_name: str) -> dict | None:
    """The entry of the version served now (the newest), None when nothing is served.

    For a rollback copy its `lineage` is the original version's, so
    `served_entry(...)["lineage"]["data"]["examples_dir"]` is the ingest output the served
    model was trained on in either case (None for a version pushed before lineage existed).

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.

    Returns:
        The entry, or None.
    """
    v = served_version(destination, model_name)
    if v is None:
        return None
    for e in entries(destination, model_name):
        if int(e["version"]) == v:
            return e
    return None


def require_model(destination: str, model_name: str) -> list[dict]:
    """Every version's entry of a model that must exist, as `graft models` commands need.

    Args:
        destination: the push destination (a local folder or a URL).
        model_name: the model's name.

    Returns:
        What `entries` returns, never empty.

    Raises:
        UnknownVersion: no such model at the destination (the message names those there are).
    """
    all_entries = entries(destination, model_name)
    if not all_entries:
        raise _unknown_model(destination, model_name)
    return all_entries


# ---------------------------------------------------------------- for `graft models list`

COLUMNS = ("version", "status", "run id", "data", "base", "accuracy [95%]", "blessed")
# the rest (data fingerprint, weights file and checksums, the baseline beaten, who pushed, the
# blessing's reasons) is in `graft models show VERSION`


def _accuracy_text(acc: list | None, digits: int = 3) -> str:
    if not acc:
        return "-"
    if len(acc) == 3:
        return f"{acc[0]:.3f} [{acc[1]:.{digits}f}, {acc[2]:.{digits}f}]"
    return f"{acc[0]:.3f}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def data_text(data: dict) -> str:
    """The data a version was trained on, short: its folder's name and image count (the
    fingerprint and split sizes are in `graft models show`)."""
    source = str(data.get("source") or data.get("examples_dir") or "").rstrip("/")
    name = _short(source.rsplit("/", 1)[-1], 10) if source else "?"
    images = data.get("images")
    return "-" if not data else f"{name} {images}" if images is not None else name


def base_text(base: dict) -> str:
    """The base's short name; its weights (file and checksum) are in `graft models show`."""
    return str(base.get("name") or "-")


def table_row(e: dict) -> dict[str, str]:
    """One entry as the cells of `graft models list`: short enough for 100 columns.

    Args:
        e: one registry entry, as `entries` returns it.

    Returns:
        Cell text by column name (COLUMNS).
    """
    lin = e.get("lineage") or {}
    rb = e.get("rollback")
    if e.get("kind") == "rollback":
        blessed = f"rollback of {rb.get('to')}" if rb else "rollback"
    elif e.get("forced"):
        blessed = "forced"
    elif lin.get("blessed") is None:
        blessed = "-"
    else:
        blessed = "yes" if lin.get("blessed") else "no"
    return dict(
        zip(
            COLUMNS,
            (
                str(e.get("version")),
                e.get("status", ""),
                str(e.get("run_id") or ("-" if e.get("kind") == "rollback" else "unknown")),
                data_text(lin.get("data") or {}),
                base_text(lin.get("base") or {}),
                _accuracy_text((lin.get("metrics") or {}).get("accuracy"), digits=2),
                blessed,
            ),
            strict=True,
        )
    )
