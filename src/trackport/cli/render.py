"""How the CLI shows things: the summary table, live progress, one-line errors."""
from __future__ import annotations

import sys
import time

import click

from trackport.transfer import ProgressEvent, Summary
from trackport.transfer.summary import MEASURES, OUTCOMES

_LABELS = {
    "experiments": "experiments",
    "runs": "runs",
    "metric_points": "metric points",
    "artifact_files": "artifact files",
    "artifact_bytes": "artifact bytes",
}


def error(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def summary_table(summary: Summary) -> str:
    width = max(len(label) for label in _LABELS.values())
    lines = [" " * width + "".join(f"{o:>14}" for o in OUTCOMES)]
    for measure in MEASURES:
        counts = summary.counts[measure]
        lines.append(f"{_LABELS[measure]:<{width}}" + "".join(f"{counts[o]:>14,}" for o in OUTCOMES))
    for failure in summary.failures:
        lines.append(f"FAILED {failure.kind} {failure.name!r} ({failure.source_id}): {failure.reason}")
    for loss in summary.losses:
        lines.append(f"LOSS {loss}")
    lines.append(f"in {summary.elapsed_seconds:,.1f} s")
    return "\n".join(lines)


class ProgressLine:
    """A single self-overwriting status line on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        runs = event.summary.counts["runs"]
        points = event.summary.counts["metric_points"]["done"]
        data = event.summary.counts["artifact_bytes"]["done"]
        click.echo(
            f"\rruns {runs['done']:,} done, {runs['skipped']:,} skipped, {runs['failed']:,} failed"
            f" | {points:,} metric points | {data / 1e6:,.1f} MB artifacts ",
            nl=False,
            err=True,
        )

    def close(self) -> None:
        if self.enabled and self._last:
            click.echo("", err=True)
