"""One place for progress output: the `graft` logger, so every step reports in the same shape.

On a terminal the lines go through rich's RichHandler (colour, aligned times); elsewhere
(CI, KFP pod logs, files) they are plain timestamped lines. Always on stderr: stdout stays
clean for JSON output.
"""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("graft")
# "ok" marks a finished piece of work; it logs at INFO with a marker rich shows in green.
_LEVELS = {
    "info": logging.INFO,
    "ok": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test capture and redirection see it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _handler() -> logging.Handler:
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        h: logging.Handler = RichHandler(
            console=Console(stderr=True), show_path=False, markup=False, log_time_format="%H:%M:%S"
        )
        h.setFormatter(logging.Formatter("%(message)s"))
    else:
        h = _StderrHandler()
        fmt = "[graft %(asctime)s] %(levelname)s %(message)s"
        h.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    return h


def setup(verbose: bool = False) -> logging.Logger:
    """Attach the handler once (idempotent); DEBUG with verbose."""
    if not any(getattr(h, "_graft", False) for h in LOGGER.handlers):
        h = _handler()
        h._graft = True  # type: ignore[attr-defined]
        LOGGER.addHandler(h)
        LOGGER.propagate = False
    LOGGER.setLevel(logging.DEBUG if verbose else logging.INFO)
    return LOGGER


def log(msg: str, level: str = "info") -> None:
    """Log one progress line on the `graft` logger; level is info, ok, warn or error."""
    if not LOGGER.handlers:
        setup()
    LOGGER.log(_LEVELS.get(level, logging.INFO), ("✓ " if level == "ok" else "") + msg)
