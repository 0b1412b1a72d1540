"""Ingest: any image source -> gzip TFRecord shards per split, labels, stats, quarantine.

An Apache Beam pipeline (DirectRunner multi-processing locally; any runner through
`data.beam_args`). Every file is decoded exactly once; a file that cannot be used is
quarantined with its reason, never dropped. Splits come from a hash of the image bytes,
so adding images never moves an old one to another split.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from graft.components.example_proto import serialize
from graft.components.images import BadImage, normalise, sha256
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
from graft.core.log import Progress, log
from graft.core.paths import is_remote as _is_remote
from graft.core.paths import join as _join
from graft.core.quiet import native_stderr_captured

LABELS_FILE = "labels.json"
FORMAT_HISTOGRAM_BINS = (64, 128, 256, 512, 1024, 2048)


@dataclass
class IngestResult:
    out_dir: str
    labels: list[str]
    counts: dict[str, dict[str, int]]  # split -> label -> n
    written: int
    quarantined: int
    input_files: int


def source_fingerprint(data: DataConfig) -> str:
    """What ingest reads, cheaply: every file's name, size and mtime (no reads). Keys its cache."""
    h = hashlib.sha256()
    path = data.path
    if data.source in ("folder", "csv") and path and not _is_remote(path) and os.path.exists(path):
        if os.path.isfile(path):
            st = os.stat(path)
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            for root, dirs, files in os.walk(path):
                dirs.sort()
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


def data_fingerprint(manifest: list[dict]) -> str:
    """The written examples' content: every image's sha256 with its label and split.

    Same images, labels and splits, same fingerprint, wherever the files live or however they
    are named. 16 hex digits, like the step fingerprints.
    """
    h = hashlib.sha256()
    for key in sorted((m["split"], m["label"], m["sha256"]) for m in manifest):
        h.update(("\t".join(key) + "\n").encode())
    return h.hexdigest()[:16]


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


# ------------------------------------------------------------------ the Beam part


def split_of(digest: str, fractions: dict[str, float]) -> str:
    """The split from a hash (of the bytes, or of the group): adding data moves nothing."""
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
    ):
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
            img = normalise(data, self.max_side)
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
        key = sha256(group.encode()) if group else digest
        split = item.get("split") or split_of(key, self.fractions)
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
    """data.num_workers, or for 0: all cores when the input is big enough to gain from them."""
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


def _write_text(path: str, text: str) -> None:
    if _is_remote(path):
        with _gfile().GFile(path, "w") as f:
            f.write(text)
    else:
        Path(path).write_text(text, encoding="utf-8")


def _list(data: DataConfig) -> tuple[Listing, list[str]]:
    """The source's items, rejects and labels; group keys set from data.group_by."""
    if data.source == "folder":
        listing = list_folder(data.path)
    elif data.source == "csv":
        listing = list_csv(data.path, data.group_by)
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


def ingest(data: DataConfig, out_dir: str) -> IngestResult:
    """Run the ingest pipeline for `data` and write its artifact to `out_dir`."""
    t0 = time.time()
    if not _is_remote(out_dir):
        os.makedirs(out_dir, exist_ok=True)
    listing, labels = _list(data)
    items = listing.items
    source = data.path or data.tfds_name
    if not items:
        raise DataLayoutError(f"no readable image files found in {source}")
    label_ids = {name: i for i, name in enumerate(labels)}
    n_input = len(items) + len(listing.rejected)
    log(f"ingest: {n_input} files, {len(labels)} classes from {source}")
    fractions = _carve(listing, data.splits.model_dump(), source)
    try:
        run_beam(items, label_ids, data, out_dir, fractions)
    except BaseException:
        _cleanup(out_dir)
        raise

    meta = sorted(
        _read_jsonl_glob(_join(out_dir, "_beam", "meta*")),
        key=lambda m: (m["split"], m["label"], m["sha256"], m["path"]),
    )
    quarantine = sorted(
        listing.rejected + _read_jsonl_glob(_join(out_dir, "_beam", "quarantine*")),
        key=lambda q: q["path"],
    )
    counts: dict[str, dict[str, int]] = {s: {lab: 0 for lab in labels} for s in SPLITS}
    sizes: dict[str, Counter] = defaultdict(Counter)
    formats: Counter = Counter()
    modes: Counter = Counter()
    for m in meta:
        counts[m["split"]][m["label"]] += 1
        sizes[m["split"]][_size_bin(max(m["height"], m["width"]))] += 1
        formats[m["format"]] += 1
        modes[m["mode"]] += 1
    inputs_per_class = Counter(i["label"] for i in items + listing.rejected)
    q_per_class = Counter(q["label"] for q in quarantine)
    stats = {
        "input_files": n_input,  # == written + quarantined
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
        "empty_classes": sorted(n["label"] for n in listing.notes),
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
        "seconds": round(time.time() - t0, 2),
    }
    write_labels(out_dir, labels)
    _write_text(_join(out_dir, "stats.json"), json.dumps(stats, indent=2))
    _write_text(_join(out_dir, "quarantine.json"), json.dumps(quarantine, indent=2))
    _write_text(
        _join(out_dir, "manifest.jsonl"),
        "".join(json.dumps(m, sort_keys=True) + "\n" for m in meta),
    )
    _cleanup(out_dir)
    for q in quarantine:
        log(f"ingest: quarantined {q['path']}: {q['reason']}", level="warn")
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
    )


def _cleanup(out_dir: str) -> None:
    import shutil

    if _is_remote(out_dir):
        for sub in ("_beam",):
            if _gfile().exists(_join(out_dir, sub)):
                _gfile().rmtree(_join(out_dir, sub))
        return
    for sub in ("_beam", "_progress"):
        shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
