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
import sys
import tempfile
from collections.abc import Iterator

VERBOSE_ENV = "GRAFT_VERBOSE"


def verbose() -> bool:
    """`graft -v` (or GRAFT_VERBOSE=1 / GRAFT_DEBUG=1): show library output as it comes."""
    return bool(os.environ.get(VERBOSE_ENV) or os.environ.get("GRAFT_DEBUG"))


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Send fd 2 (what C/C++ code writes) to a temp file; Python's sys.stderr is unaffected.

    The capture is dropped on success and written to stderr if the block raises. A no-op in
    verbose mode, or when fd 2 cannot be duplicated (e.g. no stderr at all).
    """
    if verbose():
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    capture = tempfile.TemporaryFile()
    py_stderr = sys.stderr
    try:
        py_stderr.flush()
    except (OSError, ValueError):
        pass
    # Python-level writes go on to the real stderr through a duplicate of the saved fd
    real = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    if py_stderr is sys.__stderr__:
        sys.stderr = real
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
        if sys.stderr is real:
            sys.stderr = py_stderr
        real.close()
        capture.close()


def import_tensorflow_quietly():
    """Import TensorFlow and query its devices with native stderr captured; returns the module.

    The device query is included because CUDA's "failed call to cuInit" on a machine without
    a GPU is printed then, not at import time. Later calls are cheap: TF is imported once.
    """
    with native_stderr_captured():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf
