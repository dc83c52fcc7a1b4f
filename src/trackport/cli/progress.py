"""Live progress on a terminal: one bar per kind of unit (experiments, runs, and any other
kind the transfer moves), with count/total, rate and time left.

Only when stderr is a terminal: redirected to a file or a CI log, the CLI stays quiet
until the summary (bars there would be control characters and noise). The bars are
cleared when the transfer ends, so what stays on screen is the summary, as without a
terminal.
"""
from __future__ import annotations

import sys
import threading

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeRemainingColumn
from rich.text import Text

from trackport.kinds import kind
from trackport.transfer import ProgressEvent

_ALWAYS = ("experiment", "run")  # every transfer moves these: their bars come first


class _Count(ProgressColumn):
    """'12/40' when the total is known, '12' while it is not."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        return Text(f"{done:,}" if task.total is None else f"{done:,}/{int(task.total):,}", style="progress.download")


class _Rate(ProgressColumn):
    """Units per second over rich's recent samples; blank until there are two."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")


class ProgressBars:
    """The `on_progress` callback of a transfer, drawing the bars. Call close() before
    printing anything else (the summary, an error): it clears them."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        if console is None:
            # stderr's own isatty decides, not FORCE_COLOR or TTY_COMPATIBLE, which a CI
            # job may set for colours: bars in its log would be noise.
            console = Console(stderr=True, force_terminal=sys.stderr.isatty())
        self.console = console
        self.enabled = enabled and console.is_terminal
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._summary: object | None = None  # the transfer being shown, known by its summary
        # Workers report from their own threads: one of them starts the display and adds bars.
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        # A kind without a total yet (its listing has not started, or a server that counts
        # only by listing) shows count and rate, without a total or time left.
        planned = event.planned
        with self._lock:
            progress = self._start()
            if event.summary is not self._summary:
                # A new transfer (the demo runs two in turn): its counts start again at 0.
                self._summary = event.summary
                for task in self._tasks.values():
                    progress.reset(task, total=None)
            for name in [event.kind, *planned]:
                if name not in self._tasks:
                    self._tasks[name] = progress.add_task(kind(name).plural, total=None)
            for name, task in self._tasks.items():
                progress.update(task, completed=_finished(event, name), total=planned.get(name))

    def _start(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description:<12}"),
                BarColumn(),
                _Count(),
                _Rate(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            for name in _ALWAYS:
                self._tasks[name] = self._progress.add_task(kind(name).plural, total=None)
        return self._progress

    def close(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
                self._tasks.clear()
                self._summary = None


def _finished(event: ProgressEvent, name: str) -> int:
    """Units of that kind with an outcome so far, from the summary: it is shared by all
    workers, so it is current however the events of several threads interleave."""
    counts = event.summary.counts.get(kind(name).plural) or {}
    return sum(counts.values())
