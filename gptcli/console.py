"""Everything gptcli says on stderr: notes, warnings, and progress.

stdout is left to the product. On a terminal, progress is a rich bar (colour unless
NO_COLOR is set); otherwise it is plain lines a log file can keep. Imports rich lazily,
so `gptcli --help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from gptcli.errors import printable


def say(text: str) -> None:
    """A line on stderr. If stderr is gone (its reader left, its disk is full), the line is
    dropped and later ones go to /dev/null: the work and the exit code matter more."""
    try:
        print(printable(text), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)


class Console:
    def __init__(self, quiet: bool = False, silent: bool = False):
        """quiet: warnings and errors only; silent: nothing (torchrun's ranks but 0)."""
        self.quiet, self.silent = quiet or silent, silent
        self.tty = sys.stderr.isatty()
        self._rich = None

    @property
    def rich(self):
        if self._rich is None:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(stderr=True, highlight=False)
        return self._rich

    def info(self, msg: str) -> None:
        if not self.quiet:
            say(msg)

    def warn(self, msg: str) -> None:
        if not self.silent:
            say(f"warning: {msg}")

    def progress(self, description: str, total: float | None, unit: str = "") -> "Progress":
        if self.quiet:
            return Progress(None, description, total, unit, quiet=True)
        return Progress(self.rich if self.tty else None, description, total, unit)


class Progress:
    """A rich bar on a terminal; otherwise `line()` prints plain status lines."""

    def __init__(self, rich_console, description: str, total: float | None, unit: str, quiet: bool = False):
        self.description, self.total, self.unit, self.quiet = description, total, unit, quiet
        self._bar = None
        self._task = None
        self._t0 = time.monotonic()
        if rich_console is not None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            count = MofNCompleteColumn() if unit == "steps" else TaskProgressColumn()
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), count,
                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(), console=rich_console, transient=False,
            )

    def __enter__(self) -> "Progress":
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, status="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, completed: float, status: str | None = None, total: float | None = None) -> None:
        """Move the bar; a status of None keeps the last one."""
        if total is not None:
            self.total = total
        if self._bar is not None:
            fields = {} if status is None else {"status": status}
            self._bar.update(self._task, completed=completed, total=self.total, **fields)

    def line(self, text: str) -> None:
        """A milestone: printed as a line above the bar, or as a plain line."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False)
        else:
            say(text)

    @property
    def is_bar(self) -> bool:
        return self._bar is not None
