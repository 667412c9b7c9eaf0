"""A one-line progress display for long commands (backup-push, restore): bytes done,
rate and time left, redrawn in place on a terminal, silent otherwise; and how every
command writes sizes, durations, counts and instants for people.

It writes to stderr, so stdout stays clean for a backup id or `--json`; and only when
stderr is a terminal, so logs and CI output never fill with carriage returns.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime
from typing import TextIO

_REDRAW_EVERY = 0.25  # seconds


def human_count(number: int, noun: str) -> str:
    """"1 backup", "3 backups": nouns whose plural takes an s, which are all pitrkit counts."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    """A duration as a person reads it: 45s, 12m05s, 5h12m, 3d04h. A negative one (an age
    measured against a clock that is behind the archive's) reads as 0s."""
    seconds = max(int(seconds + 0.5), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def show_time(moment: datetime | None) -> str:
    """A stored instant as the reader's local time, with its offset."""
    if moment is None:
        return "-"
    try:
        return moment.astimezone().isoformat(sep=" ", timespec="seconds")
    except OverflowError:  # year 1 or 9999 in a forged document: shown as it is stored
        return moment.isoformat(sep=" ", timespec="seconds")


class Progress:
    """`advance(n)` from any thread; `close()` ends the line. `total` may be unknown
    (None) or grow (`total = ...`), e.g. while files are still being found."""

    def __init__(self, what: str, total: int | None = None, stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._started = time.monotonic()
        self._drawn = 0.0
        self._lock = threading.Lock()

    def advance(self, count: int) -> None:
        with self._lock:
            self.done += count
            now = time.monotonic()
            if self._enabled and now - self._drawn >= _REDRAW_EVERY:
                self._drawn = now
                self._draw(now)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self._started, 1e-6)
        rate = self.done / elapsed
        text = f"{self.what}: {human_bytes(self.done)}"
        if self.total:
            share = min(self.done / self.total, 1.0)
            text += f" of {human_bytes(self.total)} ({share:4.0%})"
        text += f", {human_bytes(rate)}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", {human_seconds((self.total - self.done) / rate)} left"
        return text

    def _draw(self, now: float) -> None:
        self._stream.write("\r\x1b[K" + self.line(now))
        self._stream.flush()

    def close(self) -> None:
        if self._enabled:
            with self._lock:
                self._draw(time.monotonic())
                self._stream.write("\n")
                self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
