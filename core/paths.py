"""Path helpers shared by steps that read or write local paths and tf.io.gfile URLs alike."""

from __future__ import annotations

import os


def is_remote(path: str) -> bool:
    """gs://, s3://, hdfs:// ... (anything tf.io.gfile handles that os does not)."""
    return "://" in path


def join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts) if is_remote(parts[0]) else os.path.join(*parts)
