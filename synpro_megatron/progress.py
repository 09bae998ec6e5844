"""Progress that shows in a log as well as on a terminal.

On a TTY: a tqdm bar. Otherwise (Slurm, nohup, a pipe) a bar would print nothing useful (tqdm's
`disable=None` prints nothing at all), so a Megatron-style line goes out every `every_n` items or
`every_s` seconds, whichever comes first, and once at the end:

    [pretrain] 40/100 step (40.0%) | 2.13 step/s | elapsed 0:00:19 | ETA 0:00:28 | loss=3.412

`progress(...)` takes tqdm's common arguments (iterable, total, desc, unit, initial, disable, file)
so a call site changes by its name only.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Optional

# seconds between log lines when nothing else says; SYNPRO_PROGRESS_EVERY_S overrides it
DEFAULT_EVERY_S = 30.0


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class LogProgress:
    """The no-TTY progress: log lines with done/total, rate and ETA."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", initial: int = 0, file=None, every_n: Optional[int] = None,
                 every_s: Optional[float] = None):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc or "progress", unit
        self.n = self.initial = initial
        self.file = file or sys.stderr
        self.every_n = every_n if every_n else (max(1, total // 10) if total else None)
        self.every_s = every_s if every_s is not None else float(os.environ.get("SYNPRO_PROGRESS_EVERY_S",
                                                                                  DEFAULT_EVERY_S))
        self.postfix = ""
        self._start = self._last_t = time.monotonic()
        self._last_n = initial
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:  # the error message says what happened; no progress line after it
            self._closed = True
        self.close()
        return False

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if ((self.every_n and self.n - self._last_n >= self.every_n) or now - self._last_t >= self.every_s):
            self._emit(now)

    def line(self, now: Optional[float] = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = now - self._start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"[{self.desc}] {self.n}/{self.total if self.total is not None else '?'} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.1f}%)"
        parts.append(f"{rate:.2f} {self.unit}/s")
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return " | ".join(parts)

    def _emit(self, now: float) -> None:
        print(self.line(now), file=self.file, flush=True)
        self._last_t, self._last_n = now, self.n

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._last_n or self.n == self.initial:
                self._emit(time.monotonic())


class _Silent(LogProgress):
    def _emit(self, now: float) -> None:
        pass


def progress(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False, file=None, every_n: Optional[int] = None,
             every_s: Optional[float] = None, **tqdm_kwargs):
    """A tqdm bar on a TTY, log lines elsewhere, nothing with disable=True."""
    stream = file or sys.stderr
    if disable:
        return _Silent(iterable, total, desc, unit, initial, stream)
    if hasattr(stream, "isatty") and stream.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream, **tqdm_kwargs)
    return LogProgress(iterable, total, desc, unit, initial, stream, every_n, every_s)
