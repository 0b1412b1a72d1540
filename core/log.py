"""One place for progress output, so every step reports in the same shape."""

from __future__ import annotations

import sys
import time

_COLORS = {"warn": "\033[33m", "error": "\033[31m", "ok": "\033[32m"}


def log(msg: str, level: str = "info") -> None:
    """A timestamped line on stderr (stdout stays clean for JSON output)."""
    stamp = time.strftime("%H:%M:%S")
    color = _COLORS.get(level, "") if sys.stderr.isatty() else ""
    reset = "\033[0m" if color else ""
    prefix = {"warn": "WARNING: ", "error": "ERROR: "}.get(level, "")
    print(f"[graft {stamp}] {color}{prefix}{msg}{reset}", file=sys.stderr, flush=True)
