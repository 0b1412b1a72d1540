"""What ingest reads: a folder, a CSV manifest or a TFDS dataset, laid out as users do.

Listing never opens an image. Anything that must not reach the decoder (a file name that is
not UTF-8, a FIFO, a device, a file over the size limit, a symlink loop) is turned into a
quarantine record here, with its reason, so that nothing is lost and nothing hangs.
"""

from __future__ import annotations

import csv
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field

from graft.components import fs
from graft.components.fs import isdir as _isdir
from graft.core.config import DataConfig
from graft.core.paths import is_output_dir, is_remote
from graft.core.paths import join as _join

__all__ = [
    "SPLITS",
    "DataLayoutError",
    "Listing",
    "file_problem",
    "read_bounded",
    "list_folder",
    "list_csv",
    "list_tfds",
    "apply_group_pattern",
    "check_labels",
    "carve_fractions",
]

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "eval": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
LAYOUT_HELP = """Graft reads one of these layouts:
  ROOT/<class>/<image>                      every split carved by content hash
  ROOT/train/<class>/<image>                plus any of ROOT/val/..., ROOT/test/...; the missing
                                            splits are carved from train (aliases: training,
                                            validation, valid, eval, dev, testing)
  a CSV manifest (data.source: csv)         header path,label[,split][,other columns]"""
GROUP_HINT_COLUMNS = ("patient", "patient_id", "subject", "subject_id", "group", "case", "person")


class DataLayoutError(ValueError):
    """The input cannot be read as any supported layout; the message shows the layouts."""


@dataclass
class Listing:
    """What a source lists before any image is read: the items to ingest, the files refused
    by name or size (quarantined), and notes such as empty class folders."""

    items: list[dict] = field(default_factory=list)  # path, label, split|None, group|None
    rejected: list[dict] = field(default_factory=list)  # quarantined before reading
    notes: list[dict] = field(default_factory=list)  # empty class folders
    found_splits: list[str] = field(default_factory=list)  # pre-split folders present
    group_hint: str | None = None  # a CSV column that looks like a group, when group_by is unset


def printable(path: str) -> str:
    """A path that can be printed and JSON-encoded, whatever bytes its name holds."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def shown(path: str) -> str:
    """A path or name for an error message: control characters (a newline in a folder name)
    escaped, as repr does, so that one message stays one readable line."""
    text = printable(path)
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        return repr(text)[1:-1]
    return text


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def file_problem(path: str, max_bytes: int) -> str | None:
    """Why a local file must not be read, or None. Uses stat only: never opens the file.

    Args:
        path: the file to check (remote paths are not checked).
        max_bytes: the size limit, `data.max_file_bytes`.

    Returns:
        The reason to quarantine it (unreadable, not a regular file, too large), or None.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == getattr(os, "ELOOP", 40) or "loop" in str(e).lower():
            return "symlink loop"
        return f"unreadable: {e.strerror or e}"
    mode = st.st_mode
    if not stat.S_ISREG(mode):
        kind = (
            "FIFO"
            if stat.S_ISFIFO(mode)
            else "socket"
            if stat.S_ISSOCK(mode)
            else "device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "directory"
            if stat.S_ISDIR(mode)
            else "special file"
        )
        return f"not a regular file ({kind}); not read"
    if st.st_size > max_bytes:
        return (
            f"{st.st_size / 2**20:.1f} MB is over data.max_file_bytes "
            f"({max_bytes / 2**20:.1f} MB); not read"
        )
    return None


def read_bounded(path: str, max_bytes: int) -> bytes:
    """Read at most max_bytes (+1 to notice growth); remote paths go through tf.io.gfile.

    Args:
        path: a local or remote file.
        max_bytes: the size limit, `data.max_file_bytes`.

    Returns:
        The file's bytes.

    Raises:
        OSError: the file cannot be read (a remote one's NotFound or PermissionDenied too), or
            it is over `max_bytes` (a local one was checked before: it grew while read).
    """
    if is_remote(path):
        import tensorflow as tf

        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read(max_bytes + 1)
        except tf.errors.OpError as e:  # not OSErrors: one missing object would end the run
            raise OSError(f"{type(e).__name__}: {e.message}") from None
        if len(data) > max_bytes:  # never stat'ed before: one listing call per file is slow
            raise OSError(f"file over data.max_file_bytes ({max_bytes} bytes)")
        return data
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"file grew past data.max_file_bytes ({max_bytes} bytes) while read")
    return data


# ------------------------------------------------------------------ folders


def _reject(out: Listing, path: str, label: str | None, reason: str) -> None:
    out.rejected.append({"path": printable(path), "label": label, "reason": reason})


def _listdir(path: str) -> list[str]:
    return sorted(fs.listdir(path))


def _class_files(cdir: str, label: str, split: str | None, out: Listing) -> None:
    """Every file under a class folder (nested folders too); symlinked folders not followed."""
    if is_remote(cdir):
        for f in _listdir(cdir):
            p = _join(cdir, f)
            if not _isdir(p):
                out.items.append({"path": p, "label": label, "split": split})
        return

    def unreadable(e: OSError) -> None:  # os.walk skips it silently otherwise
        _reject(out, e.filename or cdir, label, f"unreadable folder: {e.strerror or e}")

    for dirpath, dirs, files in os.walk(cdir, followlinks=False, onerror=unreadable):
        dirs.sort()
        for d in list(dirs):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                dirs.remove(d)
                _reject(out, full, label, "symlinked folder; not followed")
        for f in sorted(files):
            if f.startswith("."):
                continue
            full = os.path.join(dirpath, f)
            if not _utf8(full):
                _reject(out, full, label, "file name is not valid UTF-8")
            else:
                out.items.append({"path": full, "label": label, "split": split})


def list_folder(root: str) -> Listing:
    """root/<class>/* or root/<split>/<class>/* with any subset of splits present.

    Args:
        root: the image folder, local or remote.

    Returns:
        The Listing: one item per file, with the splits found and the files refused.

    Raises:
        FileNotFoundError: `root` does not exist.
        DataLayoutError: `root` is no supported layout; the message shows the layouts.
    """
    dirs, files, own = _top_level(root)
    split_dirs = [d for d in dirs if d.lower() in SPLIT_ALIASES]
    if not dirs:
        what = f"{len(files)} file(s) and no class folders" if files else "nothing"
        raise DataLayoutError(f"{shown(root)} holds {what}.\n{LAYOUT_HELP}")
    if split_dirs and len(split_dirs) != len(dirs):
        others = sorted(set(dirs) - set(split_dirs))
        raise DataLayoutError(
            f"{shown(root)} mixes split folders {split_dirs} with other folders {others}; put "
            f"every class folder inside a split folder, or drop the split folders.\n{LAYOUT_HELP}"
        )
    out = Listing()
    for d in own:
        out.notes.append(
            {"path": _join(root, d), "label": None, "reason": "Graft's own output folder, not data"}
        )
    for f in files:  # beside the class folders: reported, never read
        out.rejected.append(
            {
                "path": printable(_join(root, f)),
                "label": None,
                "reason": "file outside any class folder",
            }
        )
    if split_dirs:
        out.found_splits = _found_splits(root, split_dirs)
        layers = [(SPLIT_ALIASES[d.lower()], _join(root, d)) for d in split_dirs]
    else:
        layers = [(None, root)]
    for split, base in layers:
        _list_classes(base, split, out)
    labels = {i["label"] for i in out.items}
    if len(labels) == 1:
        (only,) = labels
        raise DataLayoutError(
            f"{shown(root)}: one class folder ('{shown(only)}') holds images; a classifier needs "
            f"at least two. If {shown(_join(root, only))} holds the class folders, point "
            f"data.path at it.\n{LAYOUT_HELP}"
        )
    return out


def _top_level(root: str) -> tuple[list[str], list[str], list[str]]:
    """root's folders, its files, and Graft's own output folders among them (left out of the
    folders): runs/, models/ beside the data."""
    if not _isdir(root):
        where = root if is_remote(root) else os.path.abspath(root)
        raise FileNotFoundError(f"image folder not found: {where}")
    names = [n for n in _listdir(root) if not n.startswith(".")]
    dirs = [n for n in names if _isdir(_join(root, n))]
    files = [n for n in names if n not in dirs]
    own = [d for d in dirs if is_output_dir(_join(root, d))]
    return [d for d in dirs if d not in own], files, own


def _found_splits(root: str, split_dirs: list[str]) -> list[str]:
    """The splits the split folders name, in SPLITS order: each once, train among them."""
    seen: dict[str, str] = {}
    for d in split_dirs:
        split = SPLIT_ALIASES[d.lower()]
        if split in seen:
            raise DataLayoutError(
                f"{shown(root)}: both '{seen[split]}' and '{d}' mean split '{split}'"
            )
        seen[split] = d
    if "train" not in seen:
        raise DataLayoutError(
            f"{shown(root)} has split folders {sorted(seen.values())} but no train folder."
            f"\n{LAYOUT_HELP}"
        )
    return [s for s in SPLITS if s in seen]


def _list_classes(base: str, split: str | None, out: Listing) -> None:
    """The class folders under `base` into `out`: their files, what is rejected, the empty."""
    for cls in _listdir(base):
        cdir = _join(base, cls)
        if cls.startswith(".") or is_output_dir(cdir):
            continue
        if not _isdir(cdir):
            if split is not None:  # the root's own files were reported once, above
                _reject(out, cdir, None, "file outside any class folder")
            continue
        if not _utf8(cls):
            _reject(out, cdir, None, "class folder name is not valid UTF-8")
            continue
        before = len(out.items)
        _class_files(cdir, cls, split, out)
        if len(out.items) == before and not any(r["label"] == cls for r in out.rejected):
            out.notes.append({"path": cdir, "label": cls, "reason": "empty class folder"})


# ------------------------------------------------------------------ CSV


CSV_COLUMNS = "path,label[,split][,other columns]"
MAX_CSV_LINE = 64 * 1024  # a manifest line is a path and a label: 64 KiB is no real row


def _csv_lines(manifest: str, max_bytes: int):
    """(line number, text) of a CSV, read in 1 MiB chunks, never whole; each line ends with its
    newline. Stops with DataLayoutError at a line over MAX_CSV_LINE, a line that is not UTF-8,
    or past max_bytes (data.max_csv_bytes), naming the CSV and the line."""
    if is_remote(manifest):
        import tensorflow as tf

        f = tf.io.gfile.GFile(manifest, "rb")
    else:
        f = open(manifest, "rb")  # noqa: SIM115 - closed below, also when the caller stops
    total, n, pending = 0, 0, b""
    try:
        while True:
            chunk = f.read(1 << 20)
            total += len(chunk)
            if total > max_bytes:
                raise DataLayoutError(
                    f"{printable(manifest)} is over data.max_csv_bytes ({max_bytes} bytes); "
                    "not read further (raise data.max_csv_bytes for a larger manifest)"
                )
            pending += chunk
            lines = pending.split(b"\n")
            pending = lines.pop() if chunk else b""
            for raw in lines:
                if not raw and not chunk:
                    continue
                n += 1
                if len(raw) > MAX_CSV_LINE:
                    raise _bad_line(manifest, n, f"longer than {MAX_CSV_LINE} bytes")
                try:
                    yield n, raw.decode("utf-8") + "\n"
                except UnicodeDecodeError as e:
                    raise _bad_line(manifest, n, f"not UTF-8 text (byte {e.start + 1})") from None
            if len(pending) > MAX_CSV_LINE:
                raise _bad_line(manifest, n + 1, f"longer than {MAX_CSV_LINE} bytes")
            if not chunk:
                return
    finally:
        f.close()


def _bad_line(manifest: str, n: int, what: str) -> DataLayoutError:
    return DataLayoutError(
        f"{printable(manifest)} line {n}: {what}; expected CSV columns {CSV_COLUMNS}"
    )


def _csv_rows(manifest: str, max_bytes: int):
    """(line number, row) of the CSV, streamed; a malformed line stops it, named."""
    lines = _csv_lines(manifest, max_bytes)
    current = [0]

    def texts():
        for n, text in lines:
            current[0] = n
            if "\x00" in text:
                raise _bad_line(manifest, n, "contains NUL bytes (not a text CSV)")
            yield text

    reader = csv.reader(texts())
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise _bad_line(manifest, current[0], str(e)) from None
        yield current[0], row


def list_csv(manifest: str, group_by: str | None = None, max_bytes: int = 256 * 2**20) -> Listing:
    """Rows `path,label[,split]`; with a header, columns by name (others serve group_by).

    Streamed: the first bad line stops it, named with its number and the expected columns,
    before the rest of the file is read; a file over max_bytes is refused the same way.

    Args:
        manifest: the CSV file, local or remote.
        group_by: the column that groups images (e.g. one patient), or None.
        max_bytes: the size limit, `data.max_csv_bytes`.

    Returns:
        The Listing, with `group_hint` set when a column looks like a group and group_by is unset.

    Raises:
        DataLayoutError: a bad line (named by number), a missing group_by column, a bad split or
            a file over max_bytes.
    """
    rows = _csv_rows(manifest, max_bytes)
    first = next(rows, None)
    header = None
    if first and first[1] and first[1][0].startswith("\ufeff"):  # Excel's "CSV UTF-8"
        first[1][0] = first[1][0][1:]
    if first and [c.strip().lower() for c in first[1][:2]] == ["path", "label"]:
        header = [c.strip() for c in first[1]]
        first = None
    lower = [c.lower() for c in header] if header else ["path", "label", "split"]
    split_col = lower.index("split") if "split" in lower else None
    out = Listing()
    group_col = _group_column(manifest, header, group_by, out)
    base = os.path.dirname(manifest)
    for n, row in _chain(first, rows):
        if not row or not "".join(row).strip():
            continue
        path, label = (row[0].strip(), row[1].strip()) if len(row) >= 2 else ("", "")
        if not path or not label:
            raise _bad_line(manifest, n, f"got {row!r}")
        if not is_remote(path) and not os.path.isabs(path):
            path = os.path.join(base, path)
        item = {"path": path, "label": label, "split": _csv_split(manifest, n, row, split_col)}
        if group_col is not None and len(row) > group_col and row[group_col].strip():
            item["group_hint" if out.group_hint else "group"] = row[group_col].strip()
        out.items.append(item)
    out.found_splits = sorted({i["split"] for i in out.items if i["split"]}, key=SPLITS.index)
    return out


def _group_column(manifest: str, header, group_by: str | None, out: Listing) -> int | None:
    """The column data.group_by names (a name, not a regex); without one, a column whose name
    hints at groups (recorded as out.group_hint, for validate to check)."""
    if group_by and re.compile(group_by).groups == 0:
        if not header or group_by not in header:
            raise DataLayoutError(
                f"data.group_by column '{group_by}' is not in {manifest}'s header "
                f"({', '.join(header or ['no header'])})"
            )
        return header.index(group_by)
    if not group_by and header:
        hint = next((c for c in header if c.lower() in GROUP_HINT_COLUMNS), None)
        if hint:  # recorded for validate to check; the split stays per image
            out.group_hint = hint
            return header.index(hint)
    return None


def _csv_split(manifest: str, n: int, row: list[str], split_col: int | None) -> str | None:
    """The row's split column as train/val/test (any alias); None when absent or blank."""
    if split_col is None or len(row) <= split_col or not row[split_col].strip():
        return None
    word = row[split_col].strip().lower()
    if word not in SPLIT_ALIASES:
        raise DataLayoutError(f"{manifest} line {n}: split must be train/val/test, got {word!r}")
    return SPLIT_ALIASES[word]


def _chain(first, rest):
    if first:
        yield first
    yield from rest


# ------------------------------------------------------------------ TFDS


def list_tfds(cfg: DataConfig) -> tuple[Listing, list[str]]:
    """Encoded bytes from a prepared TFDS dataset, without decoding; downloaded only when
    data.tfds_download is set.

    Args:
        cfg: the `data` section (tfds_name, tfds_data_dir, tfds_splits, tfds_download).

    Returns:
        The Listing (each item holds its bytes under "data") and the class names in label order.

    Raises:
        FileNotFoundError: the dataset is not prepared and data.tfds_download is false.
    """
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
    out = Listing()
    for tfds_split, graft_split in mapping.items():
        ds = builder.as_dataset(split=tfds_split, decoders={image_key: tfds.decode.SkipDecoding()})
        for i, ex in enumerate(ds.as_numpy_iterator()):
            out.items.append(
                {
                    "path": f"tfds://{cfg.tfds_name}/{tfds_split}/{i}",
                    "label": names[int(ex[label_key])],
                    "split": None if graft_split == "auto" else graft_split,
                    "data": bytes(ex[image_key]),
                }
            )
    out.found_splits = sorted({i["split"] for i in out.items if i["split"]}, key=SPLITS.index)
    return out, names


# ------------------------------------------------------------------ groups, labels, carving


def apply_group_pattern(items: list[dict], pattern: str) -> int:
    """Set each item's group from the regex's capture group on its file name; returns misses.

    Args:
        items: the Listing's items, changed in place.
        pattern: `data.group_pattern`, a regex with one capture group.

    Returns:
        How many file names the pattern did not match (those keep no group).
    """
    rx = re.compile(pattern)
    misses = 0
    for it in items:
        m = rx.search(os.path.basename(it["path"]))
        if m and m.group(1):
            it["group"] = m.group(1)
        else:
            misses += 1
    return misses


def check_labels(items: list[dict]) -> None:
    """Labels must survive storage exactly and mean one class each; name the folders if not.

    Args:
        items: the Listing's items.

    Raises:
        DataLayoutError: a label is empty or holds control characters, or two labels
            differ only by case, spaces or Unicode form.
    """
    by_norm: dict[str, set[str]] = {}
    bad = []
    for label in sorted({i["label"] for i in items}):
        if not label.strip():
            bad.append(f"an empty class name ({label!r})")
        elif any(unicodedata.category(ch).startswith("C") for ch in label):
            bad.append(f"class name {label!r} contains control characters")
        norm = unicodedata.normalize("NFKC", label).strip().casefold()
        by_norm.setdefault(norm, set()).add(label)
    for names in by_norm.values():
        if len(names) > 1:
            bad.append(f"class names {sorted(names)!r} differ only by case, spaces or Unicode form")
    if bad:
        folders = {
            os.path.dirname(i["path"])
            for i in items
            if i["label"] in {n for v in by_norm.values() if len(v) > 1 for n in v}
            or not i["label"].strip()
            or any(unicodedata.category(ch).startswith("C") for ch in i["label"])
        }
        raise DataLayoutError(
            "bad class names: "
            + "; ".join(bad)
            + ". Rename these folders (or CSV labels): "
            + ", ".join(shown(f) for f in sorted(folders)[:10])
        )


def carve_fractions(found: list[str], fractions: dict[str, float]) -> dict[str, float]:
    """The fractions that images without a split are hashed into.

    Nothing pre-split: all three. Pre-split: train's images are shared between train and the
    missing splits, in the configured proportions; present splits take no carved images.

    Args:
        found: the splits present as folders or CSV values.
        fractions: `data.splits`, the configured train/val/test fractions.

    Returns:
        The fraction of unsplit images hashed into each split.
    """
    if not found:
        return dict(fractions)
    targets = ["train"] + [s for s in SPLITS if s != "train" and s not in found]
    total = sum(fractions[s] for s in targets)
    return {s: fractions[s] / total for s in targets}
