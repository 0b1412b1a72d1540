"""Ingest: any image source -> gzip TFRecord shards per split, labels, stats, quarantine.

An Apache Beam pipeline (DirectRunner multi-processing locally; any runner through
`data.beam_args`). Every file is decoded exactly once; a file that cannot be used is
quarantined with its reason, never dropped. Splits come from a hash of the image bytes,
so adding images never moves an old one to another split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
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
from graft.core.config import DataConfig
from graft.core.log import log
from graft.core.paths import is_remote as _is_remote
from graft.core.paths import join as _join

SPLITS = ("train", "val", "test")
SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
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


# ------------------------------------------------------------------ listing


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _listdir(path: str) -> list[str]:
    if _is_remote(path):
        return sorted(p.rstrip("/") for p in _gfile().listdir(path))
    return sorted(os.listdir(path))


def _isdir(path: str) -> bool:
    return _gfile().isdir(path) if _is_remote(path) else os.path.isdir(path)


def _read_bytes(path: str) -> bytes:
    if _is_remote(path):
        with _gfile().GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def list_folder(root: str) -> tuple[list[dict], list[dict]]:
    """Items (path, label, split-or-None) of root/<class>/* or root/<split>/<class>/*.

    Returns (items, folder_problems); an empty class folder is a problem, reported.
    """
    if not _isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    top = [d for d in _listdir(root) if _isdir(_join(root, d)) and not d.startswith(".")]
    presplit = bool(top) and all(d.lower() in SPLIT_DIRS for d in top)
    layers = [(SPLIT_DIRS[d.lower()], _join(root, d)) for d in top] if presplit else [(None, root)]
    items, problems = [], []
    for split, base in layers:
        for cls in _listdir(base):
            cdir = _join(base, cls)
            if not _isdir(cdir) or cls.startswith("."):
                if not presplit and not _isdir(cdir):
                    problems.append(
                        {"path": cdir, "label": None, "reason": "file outside any class folder"}
                    )
                continue
            files = [f for f in _listdir(cdir) if not _isdir(_join(cdir, f))]
            if not files:
                problems.append({"path": cdir, "label": cls, "reason": "empty class folder"})
            for f in files:
                items.append({"path": _join(cdir, f), "label": cls, "split": split})
    return items, problems


def list_csv(manifest: str) -> list[dict]:
    """Rows `path,label[,split]` (header optional); relative paths are beside the CSV."""
    text = _read_bytes(manifest).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    base = os.path.dirname(manifest)
    items = []
    for n, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise ValueError(f"{manifest} line {n}: expected path,label[,split], got {row}")
        path, label = row[0].strip(), row[1].strip()
        split = row[2].strip().lower() if len(row) > 2 and row[2].strip() else None
        if split is not None and split not in SPLIT_DIRS:
            raise ValueError(f"{manifest} line {n}: split must be train/val/test, got '{split}'")
        if not _is_remote(path) and not os.path.isabs(path):
            path = os.path.join(base, path)
        items.append(
            {"path": path, "label": label, "split": SPLIT_DIRS.get(split) if split else None}
        )
    return items


def list_tfds(cfg: DataConfig) -> tuple[list[dict], list[str]]:
    """Encoded bytes from a prepared TFDS dataset, without decoding or downloading."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(cfg.tfds_name, data_dir=cfg.tfds_data_dir)
    if cfg.tfds_download:
        builder.download_and_prepare()
    elif not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset '{cfg.tfds_name}' is not prepared in {builder.data_dir} and "
            "data.tfds_download is false"
        )
    info = builder.info
    image_key = next(k for k, v in info.features.items() if type(v).__name__ == "Image")
    label_key = next(k for k, v in info.features.items() if type(v).__name__ == "ClassLabel")
    names = list(info.features[label_key].names)
    mapping = cfg.tfds_splits or {s: "auto" for s in info.splits}
    items = []
    for tfds_split, graft_split in mapping.items():
        ds = builder.as_dataset(split=tfds_split, decoders={image_key: tfds.decode.SkipDecoding()})
        for i, ex in enumerate(ds.as_numpy_iterator()):
            items.append(
                {
                    "path": f"tfds://{cfg.tfds_name}/{tfds_split}/{i}",
                    "label": names[int(ex[label_key])],
                    "split": None if graft_split == "auto" else graft_split,
                    "data": bytes(ex[image_key]),
                }
            )
    return items, names


# ------------------------------------------------------------------ the Beam part


def split_of(digest: str, fractions: dict[str, float]) -> str:
    """Deterministic split from the content hash: a stable function of the bytes."""
    u = int(digest[:15], 16) / float(16**15)
    if u < fractions["train"]:
        return "train"
    if u < fractions["train"] + fractions["val"]:
        return "val"
    return "test"


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
    ):
        self.label_ids = label_ids
        self.fractions = fractions
        self.max_side = max_side
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

    def process(self, item: dict):
        path, label = item["path"], item["label"]
        try:
            data = item.get("data")
            if data is None:
                data = _read_bytes(path)
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
        split = item.get("split") or split_of(digest, self.fractions)
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
        }
        self._tick()
        yield (split, example, json.dumps(meta, sort_keys=True))


# Below this much input, DirectRunner multi-processing is slower than one in-memory worker:
# spawning the SDK workers and the extra Fn API round trips cost ~4 s on 2 cores, more than
# a second core saves (benchmarks/ingest_bench.py measures both sides of the crossover).
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
    start = time.time()
    last = -1
    while not stop.wait(2.0):
        done = 0
        for name in os.listdir(progress_dir):
            try:
                done += int(Path(progress_dir, name).read_text() or 0)
            except (OSError, ValueError):
                pass
        if done != last:
            rate = done / max(1e-9, time.time() - start)
            log(f"ingest: {done}/{total} files ({rate:.0f}/s)")
            last = done


def run_beam(items: list[dict], label_ids: dict[str, int], cfg: DataConfig, out_dir: str) -> None:
    tmp = _join(out_dir, "_beam")
    progress_dir = None
    if not _is_remote(out_dir):
        progress_dir = os.path.join(out_dir, "_progress")
        os.makedirs(progress_dir, exist_ok=True)
    fractions = cfg.splits.model_dump()
    opts = _beam_options(cfg, items)
    stop = threading.Event()
    printer = None
    if progress_dir and len(items) >= cfg.progress_every:
        printer = threading.Thread(
            target=_progress_printer, args=(progress_dir, len(items), stop), daemon=True
        )
        printer.start()
    try:
        with beam.Pipeline(runner=local_runner(opts), options=opts) as p:
            decoded = (
                p
                | "Files" >> beam.Create(items, reshuffle=True)
                | "Decode"
                >> beam.ParDo(
                    DecodeFn(label_ids, fractions, cfg.max_side, progress_dir, cfg.progress_every)
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


def _write_text(path: str, text: str) -> None:
    if _is_remote(path):
        with _gfile().GFile(path, "w") as f:
            f.write(text)
    else:
        Path(path).write_text(text)


def ingest(data: DataConfig, out_dir: str) -> IngestResult:
    """Run the ingest pipeline for `data` and write its artifact to `out_dir`."""
    t0 = time.time()
    if not _is_remote(out_dir):
        os.makedirs(out_dir, exist_ok=True)
    problems: list[dict] = []
    if data.source == "folder":
        items, problems = list_folder(data.path)
        labels = sorted({i["label"] for i in items})
    elif data.source == "csv":
        items = list_csv(data.path)
        labels = sorted({i["label"] for i in items})
    else:
        items, labels = list_tfds(data)
    if not items:
        raise ValueError(f"no input files found in {data.path or data.tfds_name}")
    label_ids = {name: i for i, name in enumerate(labels)}
    log(f"ingest: {len(items)} files, {len(labels)} classes from {data.path or data.tfds_name}")
    run_beam(items, label_ids, data, out_dir)

    meta = sorted(
        _read_jsonl_glob(_join(out_dir, "_beam", "meta*")),
        key=lambda m: (m["split"], m["label"], m["sha256"], m["path"]),
    )
    quarantine = problems + sorted(
        _read_jsonl_glob(_join(out_dir, "_beam", "quarantine*")), key=lambda q: q["path"]
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
    inputs_per_class = Counter(i["label"] for i in items)
    q_per_class = Counter(q["label"] for q in quarantine if q["reason"] != "empty class folder")
    stats = {
        "input_files": len(items),
        "written": len(meta),
        "quarantined": len(quarantine)
        - sum(1 for q in quarantine if q["reason"] == "empty class folder"),
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
            q["label"] for q in quarantine if q["reason"] == "empty class folder"
        ),
        "size_histogram": {s: dict(sorted(c.items())) for s, c in sizes.items()},
        "format_histogram": dict(sorted(formats.items())),
        "mode_histogram": dict(sorted(modes.items())),
        "resized": sum(1 for m in meta if m["resized"]),
        "source": data.path or f"tfds:{data.tfds_name}",
        "seconds": round(time.time() - t0, 2),
    }
    _write_text(_join(out_dir, "labels.txt"), "".join(f"{lab}\n" for lab in labels))
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
    return IngestResult(out_dir, labels, counts, len(meta), stats["quarantined"], len(items))


def _cleanup(out_dir: str) -> None:
    import shutil

    if _is_remote(out_dir):
        for sub in ("_beam",):
            if _gfile().exists(_join(out_dir, sub)):
                _gfile().rmtree(_join(out_dir, sub))
        return
    for sub in ("_beam", "_progress"):
        shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
