"""Running a transfer from the command line: the selection a command means, the checks
made before anything is opened, the sink opened only after planning, progress, the
summary, and trackport's errors as one line with their exit code."""
from __future__ import annotations

import json
import sys
from functools import wraps

import click

from trackport.cli import render
from trackport.errors import BadInputError, ExitCode, TrackportError, storage_error
from trackport.stores.base import Selection, SinkStore, SourceStore
from trackport.stores.registry import locate, refuse_same_store
from trackport.transfer import Summary, transfer
from trackport.transfer.engine import plan_experiments
from trackport.transfer.plan import planned_losses


def fail_cleanly(command):
    """Turns trackport's errors into one line on stderr and the documented exit code."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TrackportError as exc:
            render.error(str(exc))
            sys.exit(exc.exit_code)
        except OSError as exc:  # one that no store turned into its own error: still one line
            error = storage_error(exc, exc.filename or "a file") or BadInputError(f"{exc.filename}: {exc.strerror}")
            render.error(str(error))
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            render.error("interrupted; run the same command again to resume")
            sys.exit(ExitCode.INTERRUPTED)

    return wrapper


def resolve_selection(source: SourceStore, experiments, run_ids, include_deleted, filter_string) -> Selection:
    """A bundle source takes deleted units unless told otherwise (it holds what its export
    selected); a store leaves them out unless asked."""
    deleted = source.takes_deleted_by_default if include_deleted is None else include_deleted
    return Selection(experiments, run_ids, deleted, filter_string)


def run_transfer(source: SourceStore, make_sink, options: tuple, workers: int, as_json: bool = False) -> Summary:
    try:
        selection = resolve_selection(source, *options)
        # Plan before the sink exists, so that bad input leaves nothing behind in the target.
        planned = plan_experiments(source, selection)
        sink: SinkStore = make_sink()
    except BaseException:
        source.close()
        raise
    if not as_json:
        for loss in planned_losses(sink.capabilities, sink.on_long_value):
            click.echo(f"the target cannot hold: {loss}", err=True)
    progress = render.ProgressLine(enabled=False if as_json else None)
    try:
        return transfer(source, sink, selection, workers=workers, on_progress=progress, experiments=planned)
    except TrackportError as exc:
        done = getattr(exc, "summary", None)
        if done is not None:  # what was done before the stop, then the one-line error
            progress.close()
            click.echo(json.dumps(done.to_json(), indent=2, sort_keys=True) if as_json else render.summary_table(done))
        raise
    finally:
        progress.close()
        try:
            sink.close()
        finally:
            source.close()


def check_target(source: str, target: str) -> None:
    """Before anything is opened: a target URI of a known kind, not the source itself."""
    locate(target)
    refuse_same_store(source, target)


def show(summary: Summary, as_json: bool) -> None:
    for notice in summary.all_notices():
        render.notice(notice)
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(render.summary_table(summary))
    if summary.failed:
        sys.exit(ExitCode.UNITS_FAILED)
