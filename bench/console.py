"""Terminal output: log lines, and a one-line progress bar redrawn with '\\r' on a TTY.

When stdout is not a terminal (CI, a pipe, a log file) there is no bar: each step becomes a plain
line, so logs stay readable and nothing is lost to carriage returns.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

BAR_WIDTH = 24


class Console:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self._bar_shown = False

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.stream.write("\r\x1b[2K")
            self._bar_shown = False

    def log(self, message: str) -> None:
        """A line that stays (findings, warnings); never lost under the progress bar."""
        if self.quiet:
            return
        self._clear_bar()
        self.stream.write(message + "\n")
        self.stream.flush()

    def print(self, text: str = "") -> None:
        """Report output (tables): printed even when quiet."""
        self._clear_bar()
        self.stream.write(text + "\n")
        self.stream.flush()

    def progress(self, total: int, label: str) -> Progress:
        return Progress(self, total, label)

    def draw_bar(self, text: str) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r\x1b[2K" + text[: max(10, width - 1)])
        self.stream.flush()
        self._bar_shown = True


class Progress:
    """`advance()` once per finished item; `detail` says what just finished."""

    def __init__(self, console: Console, total: int, label: str) -> None:
        self.console = console
        self.total = max(1, total)
        self.label = label
        self.done = 0
        self.started = time.monotonic()
        self._draw("")

    def advance(self, n: int = 1, detail: str = "") -> None:
        self.done = min(self.total, self.done + n)
        self._draw(detail)

    def _draw(self, detail: str) -> None:
        c = self.console
        if c.quiet:
            return
        if c.tty:
            filled = BAR_WIDTH * self.done // self.total
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            elapsed = time.monotonic() - self.started
            c.draw_bar(f"{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s {detail}")
        elif self.done and detail:
            c.log(f"[{self.label}] {self.done}/{self.total} {detail}")

    def close(self) -> None:
        if self.console.tty and not self.console.quiet:
            self.console._clear_bar()
