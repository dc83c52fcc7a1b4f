"""Progress bars: one per kind on a terminal, with count/total; nothing at all elsewhere."""
from __future__ import annotations

import io
import re

from click.testing import CliRunner
from rich.console import Console

from trackport.cli.main import cli
from trackport.cli.progress import ProgressBars
from trackport.transfer import ProgressEvent
from trackport.transfer.summary import OUTCOMES, Summary

_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\r\x1b]")


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, color_system=None), out


def finished(summary: Summary, kind: str, plural: str, outcome: str = "done", **planned) -> ProgressEvent:
    """One more unit of that kind with an outcome, as the engine counts it, then its event."""
    summary.counts.setdefault(plural, dict.fromkeys(OUTCOMES, 0))
    summary.add(plural, outcome)
    return ProgressEvent(kind, f"id-{sum(summary.counts[plural].values())}", "", outcome, summary, dict(planned))


def last_lines(out: io.StringIO) -> dict[str, str]:
    """The last line drawn for each bar, by its label, without control characters."""
    lines = {}
    for line in _CONTROL.sub("\n", out.getvalue()).splitlines():
        words = line.split()
        if words:
            lines[words[0]] = line
    return lines


def test_one_bar_per_kind_with_count_and_total():
    console, out = terminal()
    bars = ProgressBars(console=console)
    summary = Summary()
    # Experiments are planned from the start; runs and notes as listings proceed.
    bars(finished(summary, "run", "runs", experiment=2, run=2))
    bars(finished(summary, "run", "runs", "skipped", experiment=2, run=3))
    bars(finished(summary, "experiment", "experiments", experiment=2, run=3))
    bars(finished(summary, "note", "notes", experiment=2, run=3, note=4))
    bars(finished(summary, "run", "runs", "failed", experiment=2, run=3, note=4))
    bars.close()
    lines = last_lines(out)
    assert "1/2" in lines["experiments"], lines
    assert "3/3" in lines["runs"], lines  # done, skipped and failed all count as finished
    assert "1/4" in lines["notes"], lines
    order = [label for label in lines if label in ("experiments", "runs", "notes")]
    assert order == ["experiments", "runs", "notes"], order


def test_a_kind_of_unknown_total_shows_its_count_without_a_total_or_time_left():
    console, out = terminal()
    bars = ProgressBars(console=console)
    summary = Summary()
    for _ in range(3):
        bars(finished(summary, "run", "runs", experiment=1))  # no run total yet
    bars.close()
    runs = last_lines(out)["runs"]
    assert re.search(r"\b3\b", runs) and not re.search(r"\b3/\d", runs), runs
    assert ":" not in runs, runs  # no time left (h:mm:ss) without a total
    assert "0/1" in last_lines(out)["experiments"]


def test_a_second_transfer_starts_its_bars_again():
    """The demo exports, then imports, through one set of bars."""
    console, out = terminal()
    bars = ProgressBars(console=console)
    first, second = Summary(), Summary()
    for _ in range(5):
        bars(finished(first, "run", "runs", experiment=1, run=5))
    bars(finished(second, "run", "runs", experiment=1, run=5))
    bars.close()
    assert "1/5" in last_lines(out)["runs"]


def test_nothing_is_written_when_not_a_terminal():
    out = io.StringIO()
    bars = ProgressBars(console=Console(file=out, force_terminal=False))
    summary = Summary()
    for _ in range(3):
        bars(finished(summary, "run", "runs", experiment=1, run=3))
    bars.close()
    assert out.getvalue() == ""


def test_json_never_shows_bars_even_on_a_terminal():
    console, out = terminal()
    bars = ProgressBars(enabled=False, console=console)
    bars(finished(Summary(), "run", "runs", experiment=1, run=1))
    bars.close()
    assert out.getvalue() == ""


def test_the_cli_writes_no_control_characters_when_stderr_is_not_a_terminal(sample_sqlite, tmp_path):
    result = CliRunner().invoke(cli, ["export", sample_sqlite, str(tmp_path / "bundle"), "--include-deleted"])
    assert result.exit_code == 0, result.output
    assert not _CONTROL.search(result.stderr), repr(result.stderr)
    assert not _CONTROL.search(result.stdout), repr(result.stdout)
