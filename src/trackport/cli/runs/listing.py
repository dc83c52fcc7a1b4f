"""`trackport runs list`: the runs of a store as a table, CSV (the Databricks runs-table
download) or JSON lines; the rows come from trackport.runs.listing, streamed."""
from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import sys
from pathlib import Path
from typing import IO, Iterator

import click

from trackport._files import atomic_open
from trackport.cli import render
from trackport.cli.options import run_filter_options
from trackport.cli.running import fail_cleanly, resolve_selection
from trackport.cli.runs.group import runs_group
from trackport.errors import ExitCode
from trackport.opening import open_source
from trackport.runs.listing import (
    EXTRA_COLUMNS,
    TAGS,
    RunRow,
    RunTable,
    csv_records,
    run_rows,
)
from trackport.stores.base import Unreadable

# The table's columns and the widest each may be (longer values are cut with "…"); params and
# metrics are left to --format csv or json, and to `trackport runs compare`.
TABLE_COLUMNS = {
    "Run ID": 32, "Experiment": 24, "Name": 24, "Start Time": 19, "Duration": 9, "User": 16, "Status": 20, "Source": 30,
}
TAGS_WIDTH = 40


class Columns(click.ParamType):
    """--columns start_time,duration,tags: which of EXTRA_COLUMNS to add."""

    name = "COLUMNS"

    def convert(self, value, param, ctx):
        names = [part.strip() for part in str(value).split(",") if part.strip()]
        unknown = [n for n in names if n not in EXTRA_COLUMNS]
        if unknown:
            self.fail(f"unknown column(s) {', '.join(unknown)}; choose from {', '.join(EXTRA_COLUMNS)}", param, ctx)
        return tuple(names)


@runs_group.command("list")
@click.argument("source")
@click.option(
    "--experiment", "experiments", multiple=True, metavar="NAME_OR_ID",
    help="Only this experiment (repeatable; default: all): a name or an id, or id:ID / name:NAME.",
)
@click.option("--run-id", "run_ids", multiple=True, metavar="ID", help="Only this run (repeatable).")
@run_filter_options
@click.option(
    "--format", "output_format", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
    help="table: for people; csv: the Databricks runs-table download; json: one JSON object per run and line.",
)
@click.option(
    "--columns", "columns", type=Columns(), multiple=True,
    help="Add start_time, duration and/or tags (comma-separated) to the CSV: Start Time and Duration first, as"
    " Databricks puts them, one column per tag key last. The table always shows times; tags adds a Tags column.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE (whole or not at all) instead of stdout.")
@fail_cleanly
def list_command(
    source, experiments, run_ids, filter_string, status, created_after, created_before, since, output_format, columns, output,
):
    """List the runs of SOURCE (a store or a bundle), oldest first, with their params and latest metric values."""
    store = open_source(source)
    try:
        selection = resolve_selection(
            store, experiments, run_ids, None, filter_string, status=status, created_after=created_after, created_before=created_before,
            since=since,
        )
        extra = {name for group in columns for name in group}
        rows = run_rows(store, selection, with_metrics=output_format != "table")
        with _output(output) as out:
            if output_format == "json":
                unreadable = _write_json(rows, out)
            else:
                with RunTable(rows) as table:
                    if output_format == "csv":
                        csv.writer(out, lineterminator="\n").writerows(csv_records(table, extra))
                    elif table.count:
                        out.writelines(line + "\n" for line in table_lines(table, TAGS in extra))
                    else:
                        click.echo("no runs match", err=True)
                    unreadable = table.unreadable
    finally:
        store.close()
    for unit in unreadable:
        render.error(f"{unit.kind} {unit.source_id} could not be read: {unit.reason}")
    if unreadable:
        sys.exit(ExitCode.UNITS_FAILED)


def _write_json(rows: Iterator[RunRow | Unreadable], out: IO[str]) -> list[Unreadable]:
    unreadable = []
    for row in rows:
        if isinstance(row, Unreadable):
            unreadable.append(row)
        else:
            out.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
    return unreadable


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    """The file (appearing only whole) or stdout; a reader of stdout that stops early (`| head`)
    ends the listing quietly."""
    if path is not None:
        with atomic_open(path, "w", encoding="utf-8", newline="") as f:
            yield f
        return
    try:
        yield sys.stdout
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(ExitCode.OK)


def table_lines(table: RunTable, with_tags: bool) -> Iterator[str]:
    """The human table: a header, then one line per run, each column as wide as its widest
    value up to its limit."""
    widths = dict(TABLE_COLUMNS, **({"Tags": TAGS_WIDTH} if with_tags else {}))
    used = {name: len(name) for name in widths}
    for row in table:
        for name, value in _table_cells(row, with_tags).items():
            used[name] = min(widths[name], max(used[name], len(value)))
    yield "  ".join(name.ljust(used[name]) for name in used).rstrip()
    for row in table:
        yield "  ".join(_cut(value, used[name]).ljust(used[name]) for name, value in _table_cells(row, with_tags).items()).rstrip()


def _table_cells(row: RunRow, with_tags: bool) -> dict[str, str]:
    cells = {
        "Run ID": row.run_id,
        "Experiment": row.experiment_name,
        "Name": row.name,
        "Start Time": _table_time(row.start_time),
        "Duration": human_duration(row.duration_ms),
        "User": row.user,
        "Status": row.status + (" (deleted)" if row.lifecycle_stage == "deleted" else ""),
        "Source": f"{row.source_type} {row.source_name}".strip(),
    }
    if with_tags:
        cells["Tags"] = ", ".join(f"{k}={v}" for k, v in sorted(row.tags.items()))
    return cells


def _cut(value: str, width: int) -> str:
    """One line (whitespace runs as one space), cut to width with an ellipsis."""
    flat = " ".join(value.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _table_time(ms: int | None) -> str:
    """To the second, UTC, as people read it: 2023-11-14 22:13:20."""
    if ms is None:
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def human_duration(ms: int | None) -> str:
    """950ms, 12.3s, 5m 03s, 2h 05m; '' while a run has no end."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, secs = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"

