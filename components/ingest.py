"""Ingest: any image source -> gzip TFRecord shards per split, labels, stats, quarantine.

An Apache Beam pipeline (DirectRunner multi-processing locally; any runner through
`data.beam_args`). Every file is decoded exactly once; a file that cannot be used is
quarantined with its reason, never dropped. Splits come from a hash of the image bytes,
so adding images never moves an old one to another split.

Incremental (data.incremental): a run over a grown source reuses the newest earlier ingest of
the same source beside `out_dir` (the local runner's steps/ingest/<fingerprint>/ siblings; same
reuse key: source, path, max_side, record format). A file whose path, size and mtime match a
previous manifest row, and whose bytes still hash to that row's sha256 (a read and a hash: far
cheaper than a decode), is not decoded. Its record is carried over: a previous shard all of
whose records are reused unchanged is hard-linked (or copied) whole as `<split>-kept-*`; other
records are copied one by one into `<split>-reused-*` shards, their label id, split and source
rewritten when they changed (a new class shifts the ids; a new split folder changes what is
carved). Every image gets the split a fresh ingest would give it, and the output's manifest,
stats and records are a fresh ingest's. Only new and changed files are decoded: by Beam, or,
on the DirectRunner when they would get one in-memory worker anyway, by the same DecodeFn in
process (Beam's fixed ~3 s would be most of a re-ingest). Removed files drop out.
stats.json["incremental"] says added / changed / removed / reused / retried (quarantined last
time, decoded again) / decoded. On Kubeflow each run's output lives under its own run folder,
so there is no sibling to reuse and every file is decoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from graft.components import fs
from graft.components.example_proto import Example, serialize
from graft.components.fs import gfile as _gfile
from graft.components.fs import write_text as _write_text
from graft.components.images import BadImage, normalise, sha256
from graft.components.manifest import SHARD_INDEX, data_fingerprint
from graft.components.sources import (
    SPLITS,
    DataLayoutError,
    Listing,
    apply_group_pattern,
    carve_fractions,
    check_labels,
    file_problem,
    list_csv,
    list_folder,
    list_tfds,
    read_bounded,
)
from graft.core.config import DataConfig
from graft.core.locks import StepBusy, readers_lock
from graft.core.log import Progress, log
from graft.core.paths import is_output_dir
from graft.core.paths import is_remote as _is_remote
from graft.core.paths import join as _join
from graft.core.quiet import native_stderr_captured

__all__ = [
    "split_of",
    "find_previous",
    "IngestResult",
    "ingest",
    "source_fingerprint",
    "auto_workers",
    "local_runner",
    "MULTI_PROCESS_MIN_BYTES",
]

LABELS_FILE = "labels.json"
REUSE_FILE = "reuse.json"  # written last: the output is complete and may seed the next one
STAGED_DIR = "_staged"  # shards written outside Beam wait here while Beam writes its own
# What a record holds for given bytes and max_side; bump when decoding changes, so that an
# incremental ingest never copies records made by other decoding code.
RECORD_FORMAT = 2  # 2: PNG and non-RGB JPEG passed through; alpha dropped as TF does
FORMAT_HISTOGRAM_BINS = (64, 128, 256, 512, 1024, 2048)


@dataclass
class IngestResult:
    """What ingest wrote: the classes, the images per split and class, how many files were
    quarantined, and what an incremental run reused."""

    out_dir: str
    labels: list[str]
    counts: dict[str, dict[str, int]]  # split -> label -> n
    written: int
    quarantined: int
    input_files: int
    # incremental: previous (its dir or None), added, changed, removed, reused, retried, decoded
    incremental: dict = field(default_factory=dict)


def source_fingerprint(data: DataConfig) -> str:
    """What ingest reads, cheaply: every file's name, size and mtime (no reads). Keys its cache.

    Args:
        data: the `data` section (path, CSV manifest or TFDS name).

    Returns:
        A sha256 hex digest that changes when a file is added, removed or rewritten (a remote
        folder or CSV: from one listing of names, sizes and update times); for TFDS, a digest
        of the dataset's name and folder. A remote source that cannot be listed gets a key of
        its own each time (ingest re-reads it, and says why): never a stale cached ingest.
    """
    h = hashlib.sha256()
    path = data.path
    if data.source in ("folder", "csv") and path and _is_remote(path):
        h.update(f"{data.source}:{path}\n".encode())
        _remote_listing_key(path, h)
    elif data.source in ("folder", "csv") and path and os.path.exists(path):
        if os.path.isfile(path):
            st = os.stat(path)
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
            if data.source == "csv":  # and each local image it lists: one rewritten in place
                _listed_files_key(data, h)
        else:
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not is_output_dir(os.path.join(root, d)))
                for f in sorted(files):
                    full = os.path.join(root, f)
                    st = os.lstat(full)
                    h.update(
                        f"{os.path.relpath(full, path)}:{st.st_size}:{st.st_mtime_ns}\n".encode(
                            errors="surrogateescape"
                        )
                    )
                for sub in dirs:
                    h.update(
                        f"dir:{os.path.relpath(os.path.join(root, sub), path)}\n".encode(
                            errors="surrogateescape"
                        )
                    )
    else:
        h.update(f"{data.source}:{path}:{data.tfds_name}:{data.tfds_data_dir}".encode())
    return h.hexdigest()


def _listed_files_key(data: DataConfig, h) -> None:
    """Feed `h` the size and mtime of every local file a CSV source lists (a remote one is
    keyed by its name: a stat per object would be a request each)."""
    for item in list_csv(data.path, data.group_by, data.max_csv_bytes).items:
        path = item["path"]
        try:
            st = None if _is_remote(path) else os.stat(path)
        except OSError:
            st = None  # missing now: ingest quarantines it, and the key says so
        stamp = f"{st.st_size}:{st.st_mtime_ns}" if st else "-"
        h.update(f"{path}:{stamp}\n".encode(errors="surrogateescape"))


def _remote_listing_key(path: str, h) -> None:
    """Feed `h` every object under a remote folder (or the one remote file): its name, size
    and update time, from Beam's listing (one paginated call, no reads)."""
    from apache_beam.io.filesystems import FileSystems

    try:
        metas = FileSystems.match([path.rstrip("/") + "/**"])[0].metadata_list
        if not metas and FileSystems.exists(path):  # a file (the CSV): itself
            metas = FileSystems.match([path])[0].metadata_list
    except Exception as e:  # noqa: BLE001 - every filesystem raises its own errors
        log(
            f"ingest: cannot list {path} ({type(e).__name__}: {str(e)[:200]}); it is read anew "
            "(no cached ingest can be known to match it)",
            level="warn",
        )
        h.update(f"unlisted:{time.time_ns()}:{os.getpid()}".encode())
        return
    for m in sorted(metas, key=lambda m: m.path):
        h.update(f"{m.path}:{m.size_in_bytes}:{m.last_updated_in_seconds}\n".encode())


# ------------------------------------------------------------------ the Beam part


def split_of(digest: str, fractions: dict[str, float]) -> str:
    """The split from a hash (of the bytes, or of the group): adding data moves nothing.

    Args:
        digest: a sha256 hex digest.
        fractions: split -> its share of the hash range (carve_fractions).

    Returns:
        The split's name.
    """
    u = int(digest[:15], 16) / float(16**15)
    edge = 0.0
    present = [s for s in SPLITS if s in fractions]
    for split in present:
        edge += fractions[split]
        if u < edge:
            return split
    return present[-1]


class DecodeFn(beam.DoFn):
    """Read, decode, normalise; emit an Example or a tagged quarantine record."""

    QUARANTINE = "quarantine"

    def __init__(
        self,
        label_ids: dict[str, int],
        fractions: dict[str, float],
        max_side: int,
        progress_dir: str | None,
        progress_every: int,
        max_file_bytes: int,
        max_pixels: int = 50_000_000,
    ):
        self.max_pixels = max_pixels
        self.label_ids = label_ids
        self.fractions = fractions
        self.max_side = max_side
        self.max_file_bytes = max_file_bytes
        self.progress_dir = progress_dir
        self.progress_every = progress_every

    def setup(self):
        self._done = 0
        self._id = uuid.uuid4().hex

    def _tick(self):
        self._done += 1
        if self.progress_dir and self._done % self.progress_every == 0:
            self._flush()

    def _flush(self):
        if self.progress_dir:
            with open(os.path.join(self.progress_dir, self._id), "w") as f:
                f.write(str(self._done))

    def finish_bundle(self):
        self._flush()

    def _quarantine(self, item: dict, reason: str):
        self._tick()
        return beam.pvalue.TaggedOutput(
            self.QUARANTINE, {"path": item["path"], "label": item["label"], "reason": reason}
        )

    def process(self, item: dict):
        path, label = item["path"], item["label"]
        data = item.get("data")
        if data is None and not _is_remote(path):
            problem = file_problem(path, self.max_file_bytes)  # stat only: a FIFO is never opened
            if problem:
                yield self._quarantine(item, problem)
                return
        try:
            if data is None:
                data = read_bounded(path, self.max_file_bytes)
        except OSError as e:
            self._tick()
            yield beam.pvalue.TaggedOutput(
                self.QUARANTINE, {"path": path, "label": label, "reason": f"unreadable: {e}"}
            )
            return
        try:
            img = normalise(data, self.max_side, self.max_pixels)
        except BadImage as e:
            self._tick()
            yield beam.pvalue.TaggedOutput(
                self.QUARANTINE, {"path": path, "label": label, "reason": str(e)}
            )
            return
        except Exception as e:  # noqa: BLE001 - an unforeseen decoder failure still loses nothing
            self._tick()
            yield beam.pvalue.TaggedOutput(
                self.QUARANTINE,
                {"path": path, "label": label, "reason": f"decoder error: {type(e).__name__}: {e}"},
            )
            return
        digest = sha256(data)
        group = item.get("group")
        split = _split_for(item, digest, self.fractions)
        example = serialize(
            {
                "image/encoded": img.encoded,
                "image/format": img.format.encode(),
                "image/height": img.height,
                "image/width": img.width,
                "image/sha256": digest.encode(),
                "label": self.label_ids[label],
                "label/text": label.encode(),
                "source": path.encode(),
            }
        )
        meta = {
            "path": path,
            "label": label,
            "split": split,
            "sha256": digest,
            "height": img.height,
            "width": img.width,
            "format": img.source_format,
            "mode": img.source_mode,
            "resized": img.resized,
            "dhash": img.dhash,
            "grid": img.grid,
        }
        if group:
            meta["group"] = group
        if item.get("group_hint"):
            meta["group_hint"] = item["group_hint"]
        if item.get("file_size") is not None:
            meta["file_size"], meta["mtime_ns"] = item["file_size"], item["mtime_ns"]
        self._tick()
        yield (split, example, json.dumps(meta, sort_keys=True))


# Below this much input, DirectRunner multi-processing is slower than one in-memory worker:
# spawning the SDK workers and the extra Fn API round trips cost more than a second core
# saves (benchmarks/ingest_bench.py measures both sides of the crossover).
MULTI_PROCESS_MIN_BYTES = 64 * 2**20


def input_bytes(items: list[dict]) -> int | None:
    """Total bytes to decode; None when a remote listing would make stat-ing every file slow."""
    total = 0
    for it in items:
        if it.get("data") is not None:
            total += len(it["data"])
        elif _is_remote(it["path"]):
            return None
        else:
            try:
                total += os.path.getsize(it["path"])
            except OSError:
                pass  # unreadable: quarantined by the pipeline
    return total


def auto_workers(cfg: DataConfig, items: list[dict]) -> int:
    """data.num_workers, or for 0: all cores when the input is big enough to gain from them.

    Args:
        cfg: the `data` section (num_workers).
        items: the listed files, whose sizes decide.

    Returns:
        data.num_workers when set; else 1 below MULTI_PROCESS_MIN_BYTES of input, or the
        machine's cores.
    """
    if cfg.num_workers:
        return cfg.num_workers
    cores = os.cpu_count() or 1
    size = input_bytes(items)
    if cores > 1 and size is not None and size < MULTI_PROCESS_MIN_BYTES:
        log(
            f"ingest: {size / 2**20:.0f} MB of images: one in-memory worker (multi-processing "
            "pays off "
            f"from {MULTI_PROCESS_MIN_BYTES // 2**20} MB; set data.num_workers to force)"
        )
        return 1
    return cores


def _is_direct(opts: PipelineOptions) -> bool:
    """No runner, or the DirectRunner by any name Beam accepts (any case, 'Runner' optional)."""
    name = (opts.view_as(StandardOptions).runner or "direct").lower().removesuffix("runner")
    return name in ("direct", "switchingdirect")


def _beam_options(cfg: DataConfig, items: list[dict]) -> PipelineOptions:
    args = list(cfg.beam_args)
    given = PipelineOptions(args)
    if _is_direct(given):
        if any(
            a.startswith("--direct_num_workers") for a in args
        ):  # either flag form, parsed by Beam
            workers = given.get_all_options()["direct_num_workers"]
        else:
            workers = max(1, min(auto_workers(cfg, items), len(items)))
            args.append(f"--direct_num_workers={workers}")
        if not any(a.startswith("--direct_running_mode") for a in args):
            args.append(
                "--direct_running_mode=" + ("multi_processing" if workers > 1 else "in_memory")
            )
    return PipelineOptions(args)


def local_runner(opts: PipelineOptions):
    """The FnApiRunner for DirectRunner jobs (None for any other runner: Beam picks it).

    Beam 2.77's DirectRunner first tries to download its Prism runner binary from GitHub
    on every run: network at ingest time, a stray temp dir when it fails, and where it
    succeeds a different runner that ignores direct_num_workers. Going straight to the
    FnApiRunner it otherwise falls back to keeps local ingest offline and as configured.

    Args:
        opts: the Beam pipeline options.

    Returns:
        An FnApiRunner carrying `opts`, or None when the runner is not the DirectRunner.
    """
    if not _is_direct(opts):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    info = beam_provision_api_pb2.ProvisionInfo(
        pipeline_options=JobServiceHandle.encode_pipeline_options(opts.get_all_options())
    )
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(info))


def _progress_printer(progress_dir: str, total: int, stop: threading.Event):
    """Sums the workers' counters: a bar with ETA on a terminal, else a line every 10 s."""
    with Progress("ingest", total, "files", every=10.0) as bar:
        while not stop.wait(1.0):
            done = 0
            for name in os.listdir(progress_dir):
                try:
                    done += int(Path(progress_dir, name).read_text() or 0)
                except (OSError, ValueError):
                    pass
            bar.update(done)


def run_beam(
    items: list[dict],
    label_ids: dict[str, int],
    cfg: DataConfig,
    out_dir: str,
    fractions: dict[str, float],
) -> None:
    tmp = _join(out_dir, "_beam")
    progress_dir = None
    if not _is_remote(out_dir):
        progress_dir = os.path.join(out_dir, "_progress")
        os.makedirs(progress_dir, exist_ok=True)
    opts = _beam_options(cfg, items)
    stop = threading.Event()
    printer = None
    if progress_dir and len(items) >= cfg.progress_every:
        printer = threading.Thread(
            target=_progress_printer, args=(progress_dir, len(items), stop), daemon=True
        )
        printer.start()
    try:
        # Beam's worker processes inherit fd 2 and log their start-up there: kept out of sight
        # unless -v, and replayed if the pipeline fails
        with native_stderr_captured(), beam.Pipeline(runner=local_runner(opts), options=opts) as p:
            decoded = (
                p
                | "Files" >> beam.Create(items, reshuffle=True)
                | "Decode"
                >> beam.ParDo(
                    DecodeFn(
                        label_ids,
                        fractions,
                        cfg.max_side,
                        progress_dir,
                        cfg.progress_every,
                        cfg.max_file_bytes,
                        cfg.max_pixels,
                    )
                ).with_outputs(DecodeFn.QUARANTINE, main="ok")
            )
            for split in SPLITS:
                (
                    decoded.ok
                    | f"Only{split}" >> beam.Filter(lambda r, s=split: r[0] == s)
                    | f"Ser{split}" >> beam.Map(lambda r: r[1])
                    | f"Write{split}"
                    >> beam.io.WriteToTFRecord(
                        _join(out_dir, split),
                        file_name_suffix=".tfrecord.gz",
                        num_shards=cfg.shards,
                        compression_type=beam.io.filesystem.CompressionTypes.GZIP,
                    )
                )
            (
                decoded.ok
                | "Meta" >> beam.Map(lambda r: r[2])
                | "WriteMeta" >> beam.io.WriteToText(_join(tmp, "meta"), file_name_suffix=".jsonl")
            )
            (
                decoded[DecodeFn.QUARANTINE]
                | "QJson" >> beam.Map(lambda q: json.dumps(q, sort_keys=True))
                | "WriteQ"
                >> beam.io.WriteToText(_join(tmp, "quarantine"), file_name_suffix=".jsonl")
            )
    finally:
        stop.set()
        if printer:
            printer.join()


def _read_jsonl_glob(pattern: str) -> list[dict]:
    from apache_beam.io.filesystems import FileSystems

    rows = []
    for m in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(m.path) as f:
            rows += [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
    return rows


def _size_bin(side: int) -> str:
    for b in FORMAT_HISTOGRAM_BINS:
        if side <= b:
            return f"<={b}"
    return f">{FORMAT_HISTOGRAM_BINS[-1]}"


def write_labels(out_dir: str, labels: list[str]) -> None:
    """labels.json is the truth (any Unicode name round-trips); labels.txt is for people."""
    _write_text(_join(out_dir, LABELS_FILE), json.dumps(labels, ensure_ascii=False, indent=1))
    _write_text(_join(out_dir, "labels.txt"), "".join(f"{lab}\n" for lab in labels))


def _list(data: DataConfig) -> tuple[Listing, list[str]]:
    """The source's items, rejects and labels; group keys set from data.group_by."""
    if data.source == "folder":
        listing = list_folder(data.path)
    elif data.source == "csv":
        listing = list_csv(data.path, data.group_by, data.max_csv_bytes)
    else:
        listing, labels = list_tfds(data)
        return listing, labels
    if data.group_by and re.compile(data.group_by).groups == 1:
        misses = apply_group_pattern(listing.items, data.group_by)
        if misses:
            log(
                f"ingest: {misses} file name(s) do not match data.group_by '{data.group_by}'; "
                "each of those is its own group",
                level="warn",
            )
    check_labels(listing.items)
    return listing, sorted({i["label"] for i in listing.items})


def _carve(listing: Listing, fractions: dict[str, float], source: str) -> dict[str, float]:
    """Clear the split of the images that are to be carved; say what was found and carved."""
    found = listing.found_splits
    carve = carve_fractions(found, fractions)
    missing = [s for s in SPLITS if s not in found]
    if found and missing:
        for it in listing.items:
            if it["split"] in (None, "train"):
                it["split"] = None
        shares = ", ".join(f"{s} {f:.0%}" for s, f in carve.items())
        log(
            f"ingest: found split(s) {', '.join(found)} in {source}; carving {', '.join(missing)} "
            f"from train by content hash ({shares})"
        )
    elif found:
        log(f"ingest: found splits {', '.join(found)} in {source}; nothing carved")
    else:
        shares = ", ".join(f"{s} {f:.0%}" for s, f in carve.items())
        log(f"ingest: no split folders in {source}; carving every split by content hash ({shares})")
    return carve


# ------------------------------------------------------------------ incremental reuse


def reuse_key(data: DataConfig) -> dict:
    """Which earlier ingests may lend records: same source, same decoding."""
    path = data.path
    if data.source in ("folder", "csv") and path and not _is_remote(path):
        path = os.path.abspath(path)
    return {
        "format": RECORD_FORMAT,
        "source": data.source,
        "path": path,
        "tfds": [data.tfds_name, data.tfds_data_dir],
        "max_side": data.max_side,
        "max_pixels": data.max_pixels,
        # whole shards are reused as they are, and splits kept: other layouts start afresh
        "shards": data.shards,
        "splits": data.splits.model_dump(),
        "group_by": data.group_by,
    }


def _listdir_any(folder: str) -> list[str]:
    return fs.listdir(folder) if fs.isdir(folder) else []


def _read_text(path: str) -> str | None:
    """A file of an earlier ingest; None when missing or unreadable (then nothing is reused)."""
    try:
        with fs.open_file(path) as f:
            return f.read()
    except Exception:  # noqa: BLE001 - missing or unreadable (tf.errors on remote stores)
        return None


def find_previous(data: DataConfig, out_dir: str) -> str | None:
    """The newest complete ingest of the same source beside out_dir (the runner's
    steps/ingest/<fingerprint>/ siblings), or None.

    Args:
        data: the data config (its reuse_key picks the source and decoding settings).
        out_dir: this ingest's output folder.

    Returns:
        The earlier output folder, or None.
    """
    parent = os.path.dirname(out_dir.rstrip("/"))
    me = os.path.basename(out_dir.rstrip("/"))
    want = json.loads(json.dumps(reuse_key(data)))
    best: tuple[float, str] | None = None
    for name in _listdir_any(parent):
        if name == me or name.startswith((".", "_")):
            continue
        folder = _join(parent, name)
        text = _read_text(_join(folder, REUSE_FILE))
        if not text:
            continue
        try:
            info = json.loads(text)
        except ValueError:
            continue
        if info.get("key") != want:
            continue
        t = float(info.get("finished", 0))
        if best is None or t > best[0]:
            best = (t, folder)
    return best[1] if best else None


def _hold_previous(previous: str | None, held: contextlib.ExitStack) -> str | None:
    """Hold the earlier ingest for reading (the runner's readers lock, shared) while its
    records are copied and linked, so a --no-cache run cannot delete it meanwhile; one being
    rewritten right now is not waited for: it is not reused, and every file is decoded."""
    if previous is None or _is_remote(previous):
        return previous
    try:
        held.enter_context(readers_lock(previous, "ingest (previous ingest)", True, 0))
    except StepBusy:
        log(f"ingest: {previous} is being rewritten by another run: not reused; decoding all")
        return None
    except OSError as e:  # its folder is read-only: no lock file can be made, nor a rewrite
        log(f"ingest: no reader's lock beside {previous} ({e}); reused without one")
    if not _read_text(_join(previous, REUSE_FILE)):  # rewritten before the lock: not complete
        held.close()
        return None
    return previous


def _stat(item: dict) -> tuple[int, int] | None:
    """(size, mtime_ns) of an item's file; in-memory items (TFDS) have their length and 0."""
    if item.get("data") is not None:
        return len(item["data"]), 0
    path = item["path"]
    try:
        if _is_remote(path):
            st = _gfile().stat(path)
            return int(st.length), int(st.mtime_nsec)
        st = os.stat(path)
    except Exception:  # noqa: BLE001 - unreadable now: decoded, and quarantined there
        return None
    if not os.path.isfile(path):
        return None
    return st.st_size, st.st_mtime_ns


def _hash_item(item: dict, max_bytes: int) -> str | None:
    try:
        data = item.get("data")
        if data is None:
            data = read_bounded(item["path"], max_bytes)
    except OSError:
        return None
    return sha256(data)


@dataclass
class ReusePlan:
    previous: str | None
    reuse: dict[str, dict]  # path -> the previous manifest row (its record is copied)
    decode: list[dict]  # items to decode
    counts: dict[str, int]


def _previous_rows(previous: str) -> tuple[dict[str, list[dict]], set[str]]:
    """The previous output's manifest rows by path, and the paths it quarantined."""
    rows: dict[str, list[dict]] = defaultdict(list)
    for line in (_read_text(_join(previous, "manifest.jsonl")) or "").splitlines():
        if line.strip():
            m = json.loads(line)
            rows[m["path"]].append(m)
    try:
        before = json.loads(_read_text(_join(previous, "quarantine.json")) or "[]")
        quarantined = {q["path"] for q in before}
    except ValueError:
        quarantined = set()
    return rows, quarantined


def plan_reuse(items: list[dict], data: DataConfig, previous: str | None) -> ReusePlan:
    """Split the listing into files whose previous record is reused and files to decode.

    Reused: same path, size and mtime as a previous manifest row, and the bytes still hash to
    its sha256 (read + sha256: far cheaper than decode + resize + encode). Every item gets its
    stat (file_size, mtime_ns) for the manifest, which keys the next run's reuse.
    """
    stats = {}
    for it in items:
        st = _stat(it)
        if st is not None:
            it["file_size"], it["mtime_ns"] = st
            stats[it["path"]] = st
    counts = dict.fromkeys(("added", "changed", "removed", "reused", "retried"), 0)
    if previous is None:
        counts["added"] = len(items)
        return ReusePlan(None, {}, list(items), counts)
    rows, quarantined = _previous_rows(previous)
    listed = Counter(it["path"] for it in items)
    candidates, decode = [], []
    for it in items:
        prev = rows.get(it["path"])
        st = stats.get(it["path"])
        if not prev:
            counts["retried" if it["path"] in quarantined else "added"] += 1
            decode.append(it)
        elif (
            len(prev) > 1  # a path listed twice (CSV): decoded, as it is not one record
            or listed[it["path"]] > 1
            or st is None
            or st[0] > data.max_file_bytes
            or (prev[0].get("file_size"), prev[0].get("mtime_ns")) != st
        ):
            counts["changed"] += 1
            decode.append(it)
        else:
            candidates.append(it)
    if any(_is_remote(it["path"]) for it in candidates):  # latency-bound: read in parallel
        with ThreadPoolExecutor(max_workers=16) as pool:
            digests = list(pool.map(lambda it: _hash_item(it, data.max_file_bytes), candidates))
    else:
        digests = [_hash_item(it, data.max_file_bytes) for it in candidates]
    reuse = {}
    for it, digest in zip(candidates, digests, strict=True):
        prev = rows[it["path"]][0]
        if digest is not None and digest == prev["sha256"]:
            reuse[it["path"]] = prev
        else:
            counts["changed"] += 1
            decode.append(it)
    counts["reused"] = len(reuse)
    counts["removed"] = sum(1 for p in rows if p not in listed)
    return ReusePlan(previous, reuse, decode, counts)


def _field(ex, key: str):
    f = ex.features.feature[key]
    return f.bytes_list.value[0] if f.bytes_list.value else f.int64_list.value[0]


def _split_for(item: dict, digest: str, fractions: dict[str, float]) -> str:
    """The split of an image: its folder's or CSV's, else a hash of its group or its bytes."""
    group = item.get("group")
    return item.get("split") or split_of(sha256(group.encode()) if group else digest, fractions)


Row = tuple[str, str, int]  # a record's source path, sha256 and label id


def _write_shards(
    folder: str, tag: str, records: dict[str, list[tuple[tuple, bytes, Row]]], shards: int
) -> dict[str, list[Row]]:
    """gzip TFRecord shards `<split>-<tag>NNNNN-of-NNNNN.tfrecord.gz`, in (label, sha256, path)
    order dealt in turn; returns each file's rows for the shard index."""
    import gzip

    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    index = {}
    for split, recs in records.items():
        recs = sorted(recs, key=lambda r: r[0])
        n = max(1, min(shards, len(recs)))
        for i in range(n):
            name = f"{split}-{tag}{i:05d}-of-{n:05d}.tfrecord.gz"
            # one gzip member of stored blocks: encoded JPEG/PNG bytes hardly shrink, and
            # deflating them costs about what the decode a re-ingest saves (~40 MB/s)
            blob = gzip.compress(b"".join(_frame(r[1]) for r in recs[i::n]), 0, mtime=0)
            with FileSystems.create(
                _join(folder, name), compression_type=CompressionTypes.UNCOMPRESSED
            ) as f:
                f.write(blob)
            index[name] = [r[2] for r in recs[i::n]]
    return index


def _frame(record: bytes) -> bytes:
    """One TFRecord: length, its masked crc32c, the data, its masked crc32c."""
    from apache_beam.io.tfrecordio import _TFRecordUtil

    head = struct.pack("<Q", len(record))
    crc = _TFRecordUtil._masked_crc32c
    return head + struct.pack("<I", crc(head)) + record + struct.pack("<I", crc(record))


def _records(path: str):
    """The records of a gzip TFRecord file, read whole (a few MB per shard) and checked."""
    import gzip

    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.io.tfrecordio import _TFRecordUtil

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        raw = gzip.decompress(f.read())
    crc = _TFRecordUtil._masked_crc32c
    pos, end = 0, len(raw)
    while pos < end:
        (length,) = struct.unpack_from("<Q", raw, pos)
        data = raw[pos + 12 : pos + 12 + length]
        (want,) = struct.unpack_from("<I", raw, pos + 12 + length)
        if len(data) != length or crc(data) != want:
            raise ValueError(f"corrupt TFRecord in {path} at byte {pos}")
        yield data
        pos += 16 + length


def _row(ex) -> Row:
    return (_field(ex, "source").decode(), _field(ex, "image/sha256").decode(), _field(ex, "label"))


def index_shards(folder: str, known: dict[str, list[Row]]) -> dict[str, list[Row]]:
    """Every shard file of `folder` -> its records' rows; files in `known` are not read."""
    from apache_beam.io.filesystems import FileSystems

    index = {}
    for m in FileSystems.match([_join(folder, "*.tfrecord.gz")])[0].metadata_list:
        name = os.path.basename(m.path)
        rows = known.get(name)
        if rows is None:
            rows = [_row(Example.FromString(r)) for r in _records(m.path)]
        index[name] = [tuple(r) for r in rows]
    return index


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where the file system allows (shards are never written in place)."""
    if not (_is_remote(src) or _is_remote(dst)):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            import shutil

            shutil.copyfile(src, dst)
        return
    from apache_beam.io.filesystems import FileSystems

    FileSystems.copy([src], [dst])


# Whole previous shards kept per split, at most this many times data.shards: beyond, the
# smaller ones are merged record by record, so files do not pile up run after run.
MAX_KEPT_SHARDS = 4


class _Carrier:
    """A reused item's split, label and manifest row from its previous record; each path is
    carried once (`found`)."""

    def __init__(self, plan: ReusePlan, items: list[dict], fractions: dict[str, float]):
        self.reuse = plan.reuse
        self.by_path = {it["path"]: it for it in items if it["path"] in plan.reuse}
        self.fractions = fractions
        self.found: set[str] = set()

    def __call__(self, path: str, digest: str) -> tuple[str, str, dict] | None:
        """The reused item's split, label and manifest row; None if the record is not it."""
        it, prev = self.by_path.get(path), self.reuse.get(path)
        if it is None or prev is None or path in self.found or digest != prev["sha256"]:
            return None
        split = _split_for(it, digest, self.fractions)
        meta = {k: v for k, v in prev.items() if k not in ("group", "group_hint")}
        meta.update(path=path, label=it["label"], split=split)
        meta["file_size"], meta["mtime_ns"] = it["file_size"], it["mtime_ns"]
        for k in ("group", "group_hint"):
            if it.get(k):
                meta[k] = it[k]
        return split, it["label"], meta


def copy_reused(
    plan: ReusePlan,
    items: list[dict],
    label_ids: dict[str, int],
    fractions: dict[str, float],
    out_dir: str,
    shards: int,
) -> tuple[list[dict], dict[str, list[Row]]]:
    """Carry the reused records over from the previous ingest, never decoding one.

    A previous shard whose every record is reused with the same split and label id is kept
    whole (hard-linked or copied). The records of other shards are copied one by one into
    `<split>-reused-*` shards, with this run's label id, split and source path. Returns the
    manifest rows and the shard index of what was written; a record not found is decoded.
    """
    from apache_beam.io.filesystems import FileSystems

    staged = _join(out_dir, STAGED_DIR)
    try:
        known = json.loads(_read_text(_join(plan.previous, SHARD_INDEX)) or "{}")
    except ValueError:
        known = {}
    out: dict[str, list[tuple[tuple, bytes, Row]]] = defaultdict(list)
    metas: list[dict] = []
    index: dict[str, list[Row]] = {}
    kept: Counter = Counter()
    carry = _Carrier(plan, items, fractions)
    files = FileSystems.match([_join(plan.previous, "*.tfrecord.gz")])[0].metadata_list
    for m in sorted(files, key=lambda m: (-m.size_in_bytes, m.path)):
        name = os.path.basename(m.path)
        split = name.split("-", 1)[0]
        rows = [tuple(r) for r in known.get(name, ())]
        whole = [carry(p, sha) for p, sha, _ in rows]
        if kept[split] < MAX_KEPT_SHARDS * shards and _reused_whole(
            rows, whole, split, label_ids, plan
        ):
            kept[split] += 1
            dst = f"{split}-kept-{kept[split]:05d}.tfrecord.gz"
            _link_or_copy(m.path, _join(staged, dst))
            index[dst] = rows
            for (p, _, _), c in zip(rows, whole, strict=True):
                carry.found.add(p)
                metas.append(c[2])
            continue
        metas += _carry_records(m.path, carry, label_ids, out)
    _decode_missing(plan, items, carry.found)
    index.update(_write_shards(staged, "reused-", out, shards))
    return metas, index


def _reused_whole(rows, whole, split: str, label_ids, plan: ReusePlan) -> bool:
    """Whether a previous shard can be kept as it is: each of its records reused once, with
    the same split, label and label id."""
    return bool(
        rows
        and len({p for p, _, _ in rows}) == len(rows)
        and all(
            c is not None and c[0] == split and label_ids[c[1]] == lid and c[1] == prev_label
            for c, (p, _, lid), prev_label in zip(
                whole,
                rows,
                (plan.reuse.get(p, {}).get("label") for p, _, _ in rows),
                strict=True,
            )
        )
    )


def _carry_records(path: str, carry: _Carrier, label_ids, out) -> list[dict]:
    """A previous shard's reused records, one by one into `out`; their manifest rows."""
    metas = []
    for record in _records(path):
        ex = Example.FromString(record)
        source, digest, lid = _row(ex)
        c = carry(source, digest)
        if c is None:
            continue
        carry.found.add(source)
        split, label, meta = c
        if lid != label_ids[label] or _field(ex, "label/text") != label.encode():
            # a class added or removed shifts the ids; a CSV may relabel a file
            record = _relabelled(ex, digest, source, label, label_ids[label])
        out[split].append(((label, digest, source), record, (source, digest, label_ids[label])))
        metas.append(meta)
    return metas


def _relabelled(ex, digest: str, source: str, label: str, label_id: int) -> bytes:
    """A previous record with this run's label, label id and source path."""
    return serialize(
        {
            "image/encoded": _field(ex, "image/encoded"),
            "image/format": _field(ex, "image/format"),
            "image/height": _field(ex, "image/height"),
            "image/width": _field(ex, "image/width"),
            "image/sha256": digest.encode(),
            "label": label_id,
            "label/text": label.encode(),
            "source": source.encode(),
        }
    )


def _decode_missing(plan: ReusePlan, items: list[dict], found: set[str]) -> None:
    """Reused records not found in the previous shards move to the plan's decode list."""
    missing = set(plan.reuse) - found
    if missing:
        log(f"ingest: {len(missing)} reused record(s) not found in {plan.previous}; decoding them")
        for path in missing:
            del plan.reuse[path]
        plan.decode += [it for it in items if it["path"] in missing]
        plan.counts["reused"] -= len(missing)
        plan.counts["changed"] += len(missing)


def decode_in_process(
    items: list[dict],
    label_ids: dict[str, int],
    cfg: DataConfig,
    out_dir: str,
    fractions: dict[str, float],
) -> tuple[list[dict], list[dict], dict[str, list[Row]]]:
    """The few files of an incremental run, through the same DecodeFn, without a pipeline.

    On the DirectRunner with one worker, Beam's fixed cost (building and running some twenty
    stages, ~3 s) would be most of a re-ingest of a few hundred new files.
    """
    fn = DecodeFn(
        label_ids,
        fractions,
        cfg.max_side,
        None,
        cfg.progress_every,
        cfg.max_file_bytes,
        cfg.max_pixels,
    )
    fn.setup()
    records: dict[str, list[tuple[tuple, bytes, Row]]] = defaultdict(list)
    metas, quarantine = [], []
    with Progress("ingest", len(items), "files", every=10.0) as bar:
        for n, item in enumerate(items, start=1):
            for out in fn.process(item):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    quarantine.append(out.value)
                else:
                    split, example, meta = out
                    m = json.loads(meta)
                    row = (m["path"], m["sha256"], label_ids[m["label"]])
                    records[split].append(((m["label"], m["sha256"], m["path"]), example, row))
                    metas.append(m)
            bar.update(n)
    index = _write_shards(_join(out_dir, STAGED_DIR), "", records, cfg.shards)
    return metas, quarantine, index


def _in_process(cfg: DataConfig, plan: ReusePlan) -> bool:
    """Whether an incremental run decodes its few files without Beam: DirectRunner, and an
    input that auto_workers would give one in-memory worker anyway."""
    if plan.previous is None or cfg.num_workers > 1 or cfg.beam_args:
        return False
    size = input_bytes(plan.decode)
    return size is not None and size < MULTI_PROCESS_MIN_BYTES


def _place_staged(out_dir: str) -> None:
    """Move the staged shards in beside Beam's (Beam's write clears files that match its own
    output prefix, so they wait in _staged/ until it is done). A split with no record at all
    gets one empty shard, as Beam's fixed-shard write gives it: readers find every split."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    staged = _join(out_dir, STAGED_DIR)
    src = [m.path for m in FileSystems.match([_join(staged, "*")])[0].metadata_list]
    if src:
        FileSystems.rename(src, [_join(out_dir, os.path.basename(p)) for p in src])
    for split in SPLITS:
        if not FileSystems.match([_join(out_dir, f"{split}-*.tfrecord.gz")])[0].metadata_list:
            name = _join(out_dir, f"{split}-00000-of-00001.tfrecord.gz")
            FileSystems.create(name, compression_type=CompressionTypes.GZIP).close()


def _discard_staged(out_dir: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    matched = FileSystems.match([_join(out_dir, STAGED_DIR, "*")])[0].metadata_list
    if matched:
        FileSystems.delete([m.path for m in matched])


def ingest(data: DataConfig, out_dir: str, previous: str | None = None) -> IngestResult:
    """Run the ingest pipeline for `data` and write its artifact to `out_dir`.

    `previous`: an earlier ingest output to reuse records from; by default (data.incremental)
    the newest one of the same source beside out_dir.

    Args:
        data: the `data` section: the source, splits, limits and workers.
        out_dir: where the TFRecord shards, manifest.jsonl, stats.json and quarantine.json go.
        previous: an earlier ingest output to reuse records from, or None.

    Returns:
        The IngestResult; unreadable files are quarantined and counted, not raised.

    Raises:
        DataLayoutError: no readable image files, or a source in no supported layout.
        FileNotFoundError: the image folder does not exist, or the TFDS dataset is not prepared.
    """
    t0 = time.time()
    if not _is_remote(out_dir):
        os.makedirs(out_dir, exist_ok=True)
    _clear_leftovers(out_dir)
    listing, labels = _list(data)
    items = listing.items
    source = data.path or data.tfds_name
    if not items:
        raise DataLayoutError(f"no readable image files found in {source}")
    label_ids = {name: i for i, name in enumerate(labels)}
    n_input = len(items) + len(listing.rejected)
    log(f"ingest: {n_input} files, {len(labels)} classes from {source}")
    for n in listing.notes:
        if n["label"] is None:
            log(f"ingest: skipped {n['path']}: {n['reason']}")
    fractions = _carve(listing, data.splits.model_dump(), source)
    if previous is None and data.incremental:
        previous = find_previous(data, out_dir)
    try:
        with contextlib.ExitStack() as held:  # held while its records are read, not longer
            previous = _hold_previous(previous, held)
            plan = plan_reuse(items, data, previous)
            plan, reused_meta, known = _reuse_previous(
                plan, items, label_ids, fractions, out_dir, data
            )
        decoded_meta, decoded_q = _decode_the_rest(plan, label_ids, data, out_dir, fractions, known)
        _place_staged(out_dir)
    except BaseException:
        _cleanup(out_dir)
        raise

    meta = sorted(
        reused_meta + decoded_meta,
        key=lambda m: (m["split"], m["label"], m["sha256"], m["path"]),
    )
    quarantine = sorted(
        listing.rejected + decoded_q,
        key=lambda q: q["path"],
    )
    stats = _stats(data, listing, labels, meta, quarantine, fractions, plan)
    stats["seconds"] = round(time.time() - t0, 2)
    _write_artifact(data, out_dir, labels, stats, quarantine, meta, known)
    for q in quarantine:
        log(f"ingest: quarantined {q['path']}: {q['reason']}", level="warn")
    counts = stats["counts"]
    log(
        f"ingest: wrote {len(meta)} examples "
        + ", ".join(f"{s}={sum(counts[s].values())}" for s in SPLITS)
        + f"; quarantined {stats['quarantined']}; {stats['seconds']}s"
    )
    return IngestResult(
        out_dir=out_dir,
        labels=labels,
        counts=counts,
        written=len(meta),
        quarantined=stats["quarantined"],
        input_files=n_input,
        incremental=stats["incremental"],
    )


def _reuse_previous(plan: ReusePlan, items, label_ids, fractions, out_dir, data: DataConfig):
    """Copy the reused records over; a vanished or damaged previous output decodes all.

    Returns the plan (re-planned without reuse on a failure), the reused manifest rows and the
    shard index of the files written outside Beam."""
    if not plan.previous:
        return plan, [], {}
    try:
        reused_meta, known = copy_reused(plan, items, label_ids, fractions, out_dir, data.shards)
        c = plan.counts
        log(
            f"ingest: incremental from {plan.previous}: reused {c['reused']}, added "
            f"{c['added']}, changed {c['changed']}, removed {c['removed']}, retried "
            f"{c['retried']} (quarantined before); decoding {len(plan.decode)}"
        )
        return plan, reused_meta, known
    except Exception as e:  # noqa: BLE001 - a vanished or damaged previous output
        log(f"ingest: cannot reuse {plan.previous} ({e}); decoding every file", "warn")
        _discard_staged(out_dir)
        return plan_reuse(items, data, None), [], {}


def _decode_the_rest(plan: ReusePlan, label_ids, data: DataConfig, out_dir, fractions, known):
    """Decode what was not reused: in process when few, else through Beam. Adds the shards
    written in process to `known`; returns the decoded manifest rows and quarantine."""
    if plan.decode and _in_process(data, plan):
        decoded_meta, decoded_q, new = decode_in_process(
            plan.decode, label_ids, data, out_dir, fractions
        )
        known.update(new)
        return decoded_meta, decoded_q
    if plan.decode:
        run_beam(plan.decode, label_ids, data, out_dir, fractions)
        decoded_meta = _read_jsonl_glob(_join(out_dir, "_beam", "meta*"))
        decoded_q = _read_jsonl_glob(_join(out_dir, "_beam", "quarantine*"))
        return decoded_meta, decoded_q
    return [], []


def _histograms(meta: list[dict], labels: list[str]) -> tuple[dict, dict, Counter, Counter]:
    """Examples per split and class, and the size, format and mode histograms."""
    counts: dict[str, dict[str, int]] = {s: {lab: 0 for lab in labels} for s in SPLITS}
    sizes: dict[str, Counter] = defaultdict(Counter)
    formats: Counter = Counter()
    modes: Counter = Counter()
    for m in meta:
        counts[m["split"]][m["label"]] += 1
        sizes[m["split"]][_size_bin(max(m["height"], m["width"]))] += 1
        formats[m["format"]] += 1
        modes[m["mode"]] += 1
    return counts, sizes, formats, modes


def _stats(data: DataConfig, listing, labels, meta, quarantine, fractions, plan) -> dict:
    """stats.json, but for its `seconds`: what was read, written and quarantined, per class."""
    counts, sizes, formats, modes = _histograms(meta, labels)
    items = listing.items
    inputs_per_class = Counter(i["label"] for i in items + listing.rejected)
    q_per_class = Counter(q["label"] for q in quarantine)
    return {
        "input_files": len(items) + len(listing.rejected),  # == written + quarantined
        "written": len(meta),
        "quarantined": len(quarantine),
        "labels": labels,
        "counts": counts,
        "per_class": {
            lab: {
                "input": inputs_per_class[lab],
                "written": sum(counts[s][lab] for s in SPLITS),
                "quarantined": q_per_class[lab],
            }
            for lab in labels
        },
        "empty_classes": sorted(
            n["label"] for n in listing.notes if n["reason"] == "empty class folder"
        ),
        "not_data": [n["path"] for n in listing.notes if n["label"] is None],
        "found_splits": listing.found_splits,
        "carved": fractions,
        "group_by": data.group_by,
        "group_hint": listing.group_hint,
        "size_histogram": {s: dict(sorted(c.items())) for s, c in sizes.items()},
        "format_histogram": dict(sorted(formats.items())),
        "mode_histogram": dict(sorted(modes.items())),
        "resized": sum(1 for m in meta if m["resized"]),
        "source": data.path or f"tfds:{data.tfds_name}",
        # what the report names the data by: the examples' content (labels, splits, bytes),
        # and the cheap listing fingerprint that keys ingest's cache
        "data_fingerprint": data_fingerprint(meta),
        "source_fingerprint": source_fingerprint(data),
        "incremental": {"previous": plan.previous, **plan.counts, "decoded": len(plan.decode)},
    }


def _write_artifact(data: DataConfig, out_dir, labels, stats, quarantine, meta, known) -> None:
    """labels, stats, quarantine, manifest, the shard index and the reuse key, in that order:
    the reuse key last, as it marks a finished output."""
    write_labels(out_dir, labels)
    _write_text(_join(out_dir, "stats.json"), json.dumps(stats, indent=2))
    _write_text(_join(out_dir, "quarantine.json"), json.dumps(quarantine, indent=2))
    _write_text(
        _join(out_dir, "manifest.jsonl"),
        "".join(json.dumps(m, sort_keys=True) + "\n" for m in meta),
    )
    _cleanup(out_dir)
    index = index_shards(out_dir, known)
    _write_text(_join(out_dir, SHARD_INDEX), json.dumps(index, separators=(",", ":")))
    _write_text(
        _join(out_dir, REUSE_FILE),
        json.dumps({"key": reuse_key(data), "finished": time.time(), "written": len(meta)}),
    )


def _clear_leftovers(out_dir: str) -> None:
    """An attempt killed part-way (the runner re-runs ingest into the same folder) may have left
    shards, which the readers glob: a shard count or reuse that differs this time would leave
    old records beside the new ones. Ingest never resumes, so they go first."""
    from apache_beam.io.filesystems import FileSystems

    _cleanup(out_dir)
    stale = FileSystems.match([_join(out_dir, "*.tfrecord.gz")])[0].metadata_list
    stale_index = _join(out_dir, SHARD_INDEX)
    gone = [m.path for m in stale] + ([stale_index] if FileSystems.exists(stale_index) else [])
    if gone:
        FileSystems.delete(gone)
        log(f"ingest: removed {len(gone)} file(s) an earlier, unfinished attempt left in {out_dir}")


def _cleanup(out_dir: str) -> None:
    import shutil

    if _is_remote(out_dir):
        for sub in ("_beam", STAGED_DIR):
            if _gfile().exists(_join(out_dir, sub)):
                _gfile().rmtree(_join(out_dir, sub))
        return
    for sub in ("_beam", "_progress", STAGED_DIR):
        shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
