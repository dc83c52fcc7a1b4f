"""How the CLI shows things: the summary table, live progress, one-line errors and notices."""
from __future__ import annotations

import sys
import time

import click

from trackport.transfer import ProgressEvent, Summary
from trackport.transfer.status import TransferStatus
from trackport.transfer.summary import MEASURES, OUTCOMES

_LABELS = {
    "experiments": "experiments",
    "runs": "runs",
    "metric_points": "metric points",
    "artifact_files": "artifact files",
    "artifact_bytes": "artifact bytes",
}
_KIND_PLURAL = {"experiment": "experiments", "run": "runs"}


def error(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def notice(message: str) -> None:
    click.echo(f"note: {message}", err=True)


def _units(n: int, kind: str) -> str:
    return f"{n:,} {kind if n == 1 else _KIND_PLURAL.get(kind, kind + 's')}"


def summary_table(summary: Summary) -> str:
    width = max(len(label) for label in _LABELS.values())
    lines = [" " * width + "".join(f"{o.replace('_', ' '):>14}" for o in OUTCOMES)]
    for measure in MEASURES:
        counts = summary.counts[measure]
        lines.append(f"{_LABELS[measure]:<{width}}" + "".join(f"{counts[o]:>14,}" for o in OUTCOMES))
    for failure in summary.failures:
        lines.append(f"FAILED {failure.kind} {failure.name!r} ({failure.source_id}): {failure.reason}")
    for (kind, reason), n in sorted(summary.not_selected.items()):
        lines.append(f"NOT SELECTED {_units(n, kind)}: {reason}")
    for loss in summary.losses:
        lines.append(f"LOSS {loss}")
    lines.append(f"in {summary.elapsed_seconds:,.1f} s")
    return "\n".join(lines)


def status_text(status: TransferStatus) -> str:
    lines = [f"ledger      {status.state_dir}", f"last entry  {status.last_activity}"]
    lines.append(f"{'':<12}" + "".join(f"{o.replace('_', ' '):>14}" for o in OUTCOMES))
    for kind, outcomes in status.counts.items():
        lines.append(f"{_KIND_PLURAL.get(kind, kind):<12}" + "".join(f"{outcomes.get(o, 0):>14,}" for o in OUTCOMES))
    for line in status.failed:
        lines.append(f"FAILED {line['kind']} {line['name']!r} ({line['source_id']}): {line['reason']}")
    last = status.last_transfer
    if last is not None:
        source = last.source.get("uri", "?")
        if last.ended == "finished":
            lines.append(f"last transfer from {source}: started {last.started_at}, finished {last.ended_at}")
        else:
            state = (
                f"running now ({last.running})" if last.running
                else f"stopped at {last.ended_at}: {last.reason}" if last.ended == "stopped"
                else "did not finish (it was killed)"
            )
            lines.append(f"last transfer from {source}: started {last.started_at}, {state}")
            todo = last.experiments_still_to_do
            if todo:
                shown = ", ".join(todo[:10]) + (", ..." if len(todo) > 10 else "")
                lines.append(
                    f"STILL TO DO {_units(len(todo), 'experiment')} of {last.experiments_planned:,} it planned"
                    f" ({shown}) and their runs: {last.units_recorded:,} units were recorded before it ended;"
                    " run the same command again to resume"
                )
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
            self._last = 0.0
