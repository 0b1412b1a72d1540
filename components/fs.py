"""Files at a local path or a tf.io.gfile URL (gs://, s3://, hdfs://...), read and written alike.

One set of helpers for every step: local paths go through `os` and `open` (exactly as a
user's shell sees them), URLs through tf.io.gfile, imported only when a URL is met so that
local work never loads TensorFlow for a file listing. Not fsspec: it reads gs:// and s3://
only through gcsfs and s3fs (not dependencies here), which tf.io.gfile reads natively.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import uuid
from types import SimpleNamespace

from graft.core.paths import is_remote, join

__all__ = [
    "any_gfile",
    "exists",
    "gfile",
    "is_not_found",
    "isdir",
    "listdir",
    "open_file",
    "read_json",
    "read_text",
    "sync_to_disk",
    "write_json_atomic",
    "write_text_atomic",
    "write_text",
]


def gfile():
    """tf.io.gfile, imported on first use (TensorFlow is slow to import).

    Returns:
        The tf.io.gfile module.
    """
    import tensorflow as tf

    return tf.io.gfile


def open_file(path: str, mode: str = "r"):
    """`open` for a local path, GFile for a URL (text modes are UTF-8 on both).

    Args:
        path: a local path or a tf.io.gfile URL.
        mode: as for `open`: "r", "w", "rb", "wb"...

    Returns:
        An open file object, to use in a `with` block.
    """
    if is_remote(path):
        return gfile().GFile(path, mode)
    return open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def exists(path: str) -> bool:
    """Whether path exists, locally or at a URL (a URL checked through tf.io.gfile).

    Args:
        path: a local path or a tf.io.gfile URL.

    Returns:
        True when there is a file or folder at path.
    """
    return gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    """Whether path is a folder, locally or at a URL (a URL checked through tf.io.gfile).

    Args:
        path: a local path or a tf.io.gfile URL.

    Returns:
        True when path is a folder.
    """
    return gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """Entry names, in the store's order (gfile's trailing '/' on folders removed).

    Args:
        path: a local folder or a tf.io.gfile URL.

    Returns:
        The entry names (not full paths).
    """
    if is_remote(path):
        return [d.rstrip("/") for d in gfile().listdir(path)]
    return os.listdir(path)


class _LocalGFile:
    """The tf.io.gfile calls a push makes, on local paths: os and shutil, with gfile's
    semantics (rename and copy refuse an existing target unless overwrite)."""

    listdir = staticmethod(os.listdir)
    exists = staticmethod(os.path.exists)
    remove = staticmethod(os.remove)
    GFile = staticmethod(open_file)

    @staticmethod
    def walk(top: str):
        return os.walk(top, followlinks=True)  # as gfile: a linked folder's files are copied

    @staticmethod
    def rmtree(path: str) -> None:
        """Like gfile's: entries another process removed meanwhile are skipped, not fatal
        (only a missing top folder is an error)."""
        if not os.path.lexists(path):
            raise FileNotFoundError(path)

        def gone_already(func, p, exc_info):
            if not isinstance(exc_info[1], FileNotFoundError):
                raise exc_info[1]

        shutil.rmtree(path, onerror=gone_already)  # Python 3.11: onerror

    @staticmethod
    def stat(path: str) -> SimpleNamespace:
        st = os.stat(path)
        return SimpleNamespace(length=st.st_size, mtime_nsec=st.st_mtime_ns)

    @staticmethod
    def makedirs(path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def copy(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(f"{dst} exists")
        shutil.copyfile(src, dst)

    @staticmethod
    def rename(src: str, dst: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(f"{dst} exists")
        os.rename(src, dst)


class _AnyGFile:
    """tf.io.gfile's interface for a path of either kind: a call that names a URL goes
    through tf.io.gfile, one on local paths through _LocalGFile, so a local push never
    imports TensorFlow (~5 s of a Kubeflow pod's start on 2 cores)."""

    def __getattr__(self, name: str):
        if not hasattr(_LocalGFile, name):  # a call only tf.io.gfile has: fail here, not later
            raise AttributeError(f"fs.any_gfile has no {name!r}: add it to _LocalGFile")

        def call(*args, **kwargs):
            urls = any(isinstance(a, str) and is_remote(a) for a in args)
            return getattr(gfile() if urls else _LocalGFile, name)(*args, **kwargs)

        return call


any_gfile = _AnyGFile()


def is_not_found(e: Exception) -> bool:
    """Whether e says a path does not exist: FileNotFoundError locally, tf.errors.NotFoundError
    at a URL (told without importing TensorFlow).

    Args:
        e: the exception caught.

    Returns:
        True for a missing path.
    """
    return isinstance(e, FileNotFoundError) or (
        _is_tf_error(e) and type(e).__name__ == "NotFoundError"
    )


def _is_tf_error(e: Exception) -> bool:
    """tf.errors.OpError (a missing or unreadable URL) without importing TensorFlow here."""
    return type(e).__module__.startswith("tensorflow")


def read_json(path: str) -> dict | None:
    """The JSON object in path; None when it is missing or unreadable (a torn hand edit).

    Args:
        path: a local path or a tf.io.gfile URL.

    Returns:
        The dict, or None (missing, unreadable, not JSON, or not an object).
    """
    try:
        with open_file(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    except Exception as e:  # noqa: BLE001 - tf.errors.OpError on a URL
        if _is_tf_error(e):
            return None
        raise
    return data if isinstance(data, dict) else None


def read_text(path: str) -> str | None:
    """The file's text (undecodable bytes replaced); None only when it does not exist: any
    other failure raises, so that a caller never takes an unreadable file for an absent one.

    Args:
        path: a local path or a tf.io.gfile URL.

    Returns:
        The text, or None when the file does not exist.
    """
    try:
        if is_remote(path) and not gfile().exists(path):
            return None
        with open_file(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def write_text(path: str, text: str) -> None:
    """Write text to a local path or a URL, replacing what was there (not atomic).

    Args:
        path: a local path or a tf.io.gfile URL.
        text: written as UTF-8.
    """
    with open_file(path, "w") as f:
        f.write(text)


def write_json_atomic(path: str, data: dict) -> None:
    """Readers see the old file or the new one, never a part: a temp file renamed over it.

    Args:
        path: a local path or a tf.io.gfile URL.
        data: JSON-serialisable; other values are written as their str().
    """
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str))


def write_text_atomic(path: str, text: str) -> None:
    """Readers see the old file or the new one, never a part: a temp file renamed over it
    (locally synced to disk first).

    Args:
        path: a local path or a tf.io.gfile URL.
        text: written as UTF-8.
    """
    folder, name = path.rsplit("/", 1) if is_remote(path) else os.path.split(path)
    tmp = join(folder, f".{name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if is_remote(path):
        g = gfile()
        with g.GFile(tmp, "w") as f:
            f.write(text)
        g.rename(tmp, path, overwrite=True)
        return
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def sync_to_disk(path: str) -> None:
    """fsync a local file or folder (a URL: nothing to do), so what is written before a marker
    that says it exists reaches the disk before the marker does.

    Args:
        path: a local file or folder, or a URL.
    """
    if is_remote(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
