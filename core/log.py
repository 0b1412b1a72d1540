"""One place for progress output: the `graft` logger, so every step reports in the same shape.

On a terminal the lines go through rich's RichHandler (colour, aligned times); elsewhere
(CI, KFP pod logs, files) they are plain timestamped lines. Always on stderr: stdout stays
clean for JSON output.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["Progress", "log", "setup"]


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


_CONSOLE = []  # the one rich Console on a terminal: log lines print above progress bars


def _console():
    if not _CONSOLE:
        from rich.console import Console

        _CONSOLE.append(Console(stderr=True))
    return _CONSOLE[0]


def _handler() -> logging.Handler:
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        h: logging.Handler = RichHandler(
            console=_console(), show_path=False, markup=False, log_time_format="%H:%M:%S"
        )
        h.setFormatter(logging.Formatter("%(message)s"))
    else:
        h = _StderrHandler()
        fmt = "[graft %(asctime)s] %(levelname)s %(message)s"
        h.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    return h


def setup(verbose: bool = False) -> logging.Logger:
    """Attach Graft's log handler once (idempotent); DEBUG with verbose.

    Args:
        verbose: log debug lines too.

    Returns:
        The `graft` logger.
    """
    if not any(getattr(h, "_graft", False) for h in LOGGER.handlers):
        h = _handler()
        h._graft = True  # type: ignore[attr-defined]
        LOGGER.addHandler(h)
        LOGGER.propagate = False
    LOGGER.setLevel(logging.DEBUG if verbose else logging.INFO)
    return LOGGER


def log(msg: str, level: str = "info") -> None:
    """Log one progress line on the `graft` logger; level is info, ok, warn or error.

    Args:
        msg: the line.
        level: "info", "ok" (a step done), "warn" or "error".
    """
    if not LOGGER.handlers:
        setup()
    LOGGER.log(_LEVELS.get(level, logging.INFO), ("✓ " if level == "ok" else "") + msg)


class Progress:
    """Work of known size: a rich bar with ETA on a terminal, else a plain line now and then.

    `update(done)` may be called as often as wanted. Plain lines (CI, KFP pod logs) come at
    most every `every` seconds and at the end, each with the rate and the time left.
    """

    def __init__(self, what: str, total: int, unit: str, every: float = 10.0):
        self.what, self.total, self.unit, self.every = what, max(1, total), unit, every
        self.t0 = self.last = time.time()
        self.done = 0
        self._bar = None

    def __enter__(self) -> Progress:
        if not LOGGER.handlers:
            setup()
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=_console(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def update(self, done: int) -> None:
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
            return
        now = time.time()
        if now - self.last >= self.every or done >= self.total:
            self.last = now
            rate = done / max(1e-9, now - self.t0)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            log(f"{self.what}: {done}/{self.total} {self.unit} ({rate:.1f}/s, ETA {eta:.0f}s)")

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
