"""Progress on long work: a bar on a terminal, plain periodic lines in CI logs.

The library never prints; it calls a callback. :class:`Progress` is the callback the
CLI gives it: calling it with a message prints ``[  1.2s] message``; its
:meth:`Progress.step` reports ``done`` of ``total`` units of a long loop (evaluation
batches, training steps). On a terminal (stderr is a TTY) that is one bar redrawn in
place with ``\\r``, at most ten times a second; in a CI log (not a TTY, or
``TERM=dumb``) it is a plain line at most every ``interval`` seconds plus one when the
loop ends, so logs stay short and free of carriage-return spam.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from ci_compress.redaction import redact

Step = Callable[[str, int, "int | None"], None]
"""``step(task, done, total)``: ``done`` units of ``task`` finished, of ``total`` (or unknown)."""

Warn = Callable[[str], None]
"""``warn(message)``: something the user should know that does not stop the work (an
export skipped, MLflow unreachable but optional). The message has no ``warning:`` prefix;
the sink decides how to show it."""


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class Progress:
    """Messages and step progress on a stream (stderr by default), TTY-aware."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet: bool = False,
        tty: bool | None = None,
        interval: float = 10.0,
        width: int = 28,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self.quiet = quiet
        self._tty = tty
        self.interval = interval
        self.width = width
        self._clock = clock
        self._start = clock()
        self._bar_open = False
        self._last_draw: dict[str, float] = {}

    @property
    def stream(self) -> TextIO:
        # Resolved at call time so a redirected sys.stderr (pytest, click) is honoured.
        return self._stream if self._stream is not None else sys.stderr

    @property
    def tty(self) -> bool:
        return _is_tty(self.stream) if self._tty is None else self._tty

    def _stamp(self) -> str:
        return f"[{self._clock() - self._start:6.1f}s]"

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _close_bar(self) -> None:
        if self._bar_open:
            self._write("\n")
            self._bar_open = False

    def __call__(self, msg: str) -> None:
        """One message line, secrets redacted; warnings are shown even when quiet."""

        if self.quiet and not msg.startswith("warning:"):
            return
        self._close_bar()
        self._write(f"{self._stamp()} {redact(msg)}\n")

    def warning(self, message: str) -> None:
        """A warning line, ``warning: <message>``; shown even when quiet."""
        self(f"warning: {message}")

    def step(self, task: str, done: int, total: int | None = None) -> None:
        """``done`` units of ``task`` finished out of ``total`` (None: unknown)."""
        if self.quiet:
            return
        now = self._clock()
        finished = total is not None and done >= total
        last = self._last_draw.get(task)
        if self.tty:
            if not finished and last is not None and now - last < 0.1:
                return
            self._last_draw[task] = now
            self._write(f"\r{self._stamp()} {task} {self._bar(done, total)}\x1b[K")
            self._bar_open = True
            if finished:
                self._close_bar()
                self._last_draw.pop(task, None)
            return
        if finished or last is None or now - last >= self.interval:
            if last is None and not finished:
                # The first plain line waits one interval: short loops print only their end.
                self._last_draw[task] = now
                return
            self._write(f"{self._stamp()} {task} {self._count(done, total)}\n")
            self._last_draw[task] = now
            if finished:
                self._last_draw.pop(task, None)

    def _count(self, done: int, total: int | None) -> str:
        if total is None or total <= 0:
            return f"{done:,}"
        return f"{done:,}/{total:,} ({100.0 * min(done, total) / total:.0f}%)"

    def _bar(self, done: int, total: int | None) -> str:
        if total is None or total <= 0:
            return f"{done:,}"
        filled = int(self.width * min(done, total) / total)
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {self._count(done, total)}"


def step_of(progress: object) -> Step | None:
    """The ``step`` method of a progress callback, if it has one (a plain function has not)."""
    step = getattr(progress, "step", None)
    return step if callable(step) else None


def warn_of(progress: object) -> Warn:
    """Where warnings go for a progress callback: its ``warning`` method (a
    :class:`Progress`), else a ``warning: <message>`` line through the callback itself,
    else nowhere."""
    warning = getattr(progress, "warning", None)
    if callable(warning):
        return warning  # type: ignore[no-any-return]
    if callable(progress):
        return lambda message: progress(f"warning: {message}")
    return lambda _message: None


class Warnings:
    """The warnings of one run, in order; each is also passed on to ``sink`` as it happens
    (the CLI shows it at once, the report lists them all at the end)."""

    def __init__(self, sink: Warn | None = None) -> None:
        self._sink = sink
        self._items: list[str] = []

    def __call__(self, message: str) -> None:
        self._items.append(message)
        if self._sink is not None:
            self._sink(message)

    @property
    def items(self) -> tuple[str, ...]:
        return tuple(self._items)
