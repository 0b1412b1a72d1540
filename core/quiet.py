"""Keep TensorFlow's C++ start-up chatter off the user's terminal.

TensorFlow's native code logs through absl before absl::InitializeLog() has run, and such
messages go straight to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL says ("WARNING: All
log messages before absl::InitializeLog() ...", cudart_stub, cpu_feature_guard, and the
"failed call to cuInit" of the first device query). The one lever that works from Python is
pointing fd 2 elsewhere while TensorFlow loads and enumerates devices. Python's own stderr
(warnings, logging, tracebacks) keeps going to the real stderr all the while, and if the
import fails the captured native output is replayed before the exception propagates.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

__all__ = [
    "VERBOSE_ENV",
    "import_tensorflow_quietly",
    "native_stderr_captured",
    "native_stderr_filtered",
    "verbose",
]


VERBOSE_ENV = "GRAFT_VERBOSE"


def verbose() -> bool:
    """`graft -v` (or GRAFT_VERBOSE=1 / GRAFT_DEBUG=1): show library output as it comes.

    Returns:
        True in verbose mode.
    """
    return bool(os.environ.get(VERBOSE_ENV) or os.environ.get("GRAFT_DEBUG"))


@contextlib.contextmanager
def _python_stderr_kept() -> Iterator[tuple[int, object] | None]:
    """Duplicate fd 2 and keep Python's own writes going to it while the caller points fd 2
    elsewhere; yields (the saved fd, that stream), or None in verbose mode or without an fd 2.
    The caller restores and closes the saved fd; Python's stderr is restored here."""
    if verbose():
        yield None
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield None
        return
    py_stderr = sys.stderr
    try:
        py_stderr.flush()
    except (OSError, ValueError):
        pass
    real = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    if py_stderr is sys.__stderr__:
        sys.stderr = real  # Python's own writes skip the redirect: no delay, no reordering
    try:
        yield saved, real
    finally:
        if sys.stderr is real:
            sys.stderr = py_stderr
        real.close()


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Send fd 2 (what C/C++ code writes) to a temp file; Python's sys.stderr is unaffected.

    The capture is dropped on success and written to stderr if the block raises. A no-op in
    verbose mode, or when fd 2 cannot be duplicated (e.g. no stderr at all).

    Yields:
        None, with fd 2 captured for the block.
    """
    with _python_stderr_kept() as kept:
        if kept is None:
            yield
            return
        saved, real = kept
        capture = tempfile.TemporaryFile()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            if text:
                real.write(text)
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.close()


def import_tensorflow_quietly():
    """Import TensorFlow and query its devices with native stderr captured.

    The device query is included because CUDA's "failed call to cuInit" on a machine without
    a GPU is printed then, not at import time. Later calls are cheap: TF is imported once.

    Returns:
        The tensorflow module.
    """
    with native_stderr_captured():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf


# libjpeg's complaints about a damaged JPEG, as TensorFlow logs them at ERROR level
# ("E0000 00:00:17... jpeg_mem.cc:331] Premature end of JPEG data. Stopped at line 30/40") or
# as libjpeg prints them itself. The image's failure reaches the user as Graft's own message
# (quarantine, a prediction error, an INVALID_ARGUMENT status); these lines only repeat it.
# Also TensorFlow's "NodeDef mentions attribute use_unbounded_threadpool which is not in the op
# definition" (tf.data graphs from a newer Keras; ignored by TF, as the line itself says).
NATIVE_NOISE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+ +\d+ (?:jpeg_mem\.cc:\d+\] .*"
    rb"|node_def_util\.cc:\d+\] NodeDef mentions attribute .* not in the op definition.*)"
    rb"|Premature end of JPEG data.*|Corrupt JPEG data: .*|Improper call to JPEG library.*)$"
)


@contextlib.contextmanager
def native_stderr_filtered(noise: re.Pattern = NATIVE_NOISE) -> Iterator[None]:
    """Pass what native code writes to fd 2 on, line by line, except the lines `noise` matches.

    Unlike native_stderr_captured this is for long stretches (a whole command, a server): a
    thread forwards each line as it comes, so real errors are seen at once. Processes started
    meanwhile (Beam workers) inherit the filter. A no-op in verbose mode or without an fd 2.

    Args:
        noise: the lines to drop (TensorFlow's and CUDA's start-up notes by default).

    Yields:
        None, with fd 2 filtered for the block.
    """
    with _python_stderr_kept() as kept:
        if kept is None:
            yield
            return
        saved, _ = kept
        read_end, write_end = os.pipe()

        def forward() -> None:
            with os.fdopen(read_end, "rb", buffering=0) as pipe:
                for line in iter(pipe.readline, b""):
                    if not noise.match(line.rstrip(b"\r\n")):
                        try:
                            os.write(saved, line)
                        except OSError:
                            return

        thread = threading.Thread(target=forward, name="graft-stderr-filter", daemon=True)
        thread.start()
        os.dup2(write_end, 2)
        os.close(write_end)
        try:
            yield
        finally:
            os.dup2(saved, 2)  # the pipe's last write end here: the thread sees EOF and ends
            thread.join(timeout=2.0)  # longer only if a child still holds the pipe
            if not thread.is_alive():  # else it may still forward a straggler's lines
                os.close(saved)
