"""Running a transfer from the command line: the selection a command means, the checks
made before anything is opened, the sink opened only after planning, progress, the
summary, and trackport's errors as one line with their exit code."""
from __future__ import annotations

import json
import os
import sys
import traceback
from functools import wraps
from typing import NoReturn

import click

from trackport.cli import render
from trackport.cli.progress import ProgressBars
from trackport.config import TransferConfig
from trackport.errors import BadInputError, ExitCode, InternalError, TrackportError, reason, storage_error
from trackport.renames import Renames
from trackport.stores.base import Selection, SinkStore, SourceStore
from trackport.stores.registry import locate, refuse_same_store
from trackport.transfer import Summary, transfer
from trackport.transfer.plan import declared_losses, not_read_by_source, plan_transfer

DEBUG_VARIABLE = "TRACKPORT_DEBUG"
_REPORT_IT = f"(a bug in trackport; please report it with the traceback: run again with {DEBUG_VARIABLE}=1)"


def internal_error(exc: BaseException) -> NoReturn:
    """A bug, in trackport or an adapter: one line saying so and how to get the traceback
    (printed too when TRACKPORT_DEBUG=1), and exit 70. Never a bare Python traceback: it
    would bury the one line that says what happened."""
    if isinstance(exc, InternalError):
        where = " ".join(part for part in (exc.kind, exc.source_id) if part)
        # The adapter's exception is what a bug report needs: its type and text here, its
        # traceback with TRACKPORT_DEBUG.
        cause = exc.__cause__ or exc
        message = f"internal error{' in ' + where if where else ''}: {reason(cause) if exc.__cause__ else exc}"
    else:
        message = f"internal error: {type(exc).__name__}: {exc}"
        cause = exc
    if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
        click.echo("".join(traceback.format_exception(type(cause), cause, cause.__traceback__)).rstrip(), err=True)
    render.error(f"{message} {_REPORT_IT}")
    sys.exit(ExitCode.INTERNAL)


def fail_cleanly(command):
    """Turns trackport's errors into one line on stderr and the documented exit code."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InternalError as exc:  # before TrackportError: it is one, with its own line
            internal_error(exc)
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
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own (Exit and Abort are RuntimeErrors): its group handles them
        except Exception as exc:  # noqa: BLE001 - anything else is a bug: one line, exit 70
            internal_error(exc)

    return wrapper


def transfer_config(workers: int) -> TransferConfig:
    """The one TransferConfig of a command, from its options."""
    return TransferConfig(workers=workers)


def resolve_selection(
    source: SourceStore, experiments, run_ids, include_deleted, filter_string, models=(), models_only=False,
    status=None, created_after=None, created_before=None, since=None, no_traces=False, trace_filter=None, traces_since=None,
) -> Selection:
    """A bundle source takes deleted units unless told otherwise (it holds what its export
    selected); a store leaves them out unless asked. --status all is --include-deleted,
    active is --exclude-deleted, deleted takes deleted runs only. since: --since (runs started
    or changed at or after it, Selection.changed_since)."""
    if status is not None and include_deleted is not None and include_deleted != (status != "active"):
        raise click.UsageError(f"--status {status} contradicts --{'include' if include_deleted else 'exclude'}-deleted; give one of them")
    if status is not None:
        include_deleted = status != "active"
    deleted = source.takes_deleted_by_default if include_deleted is None else include_deleted
    if no_traces and (trace_filter or traces_since is not None):
        raise click.UsageError("--no-traces leaves every trace; --trace-filter and --traces-since choose some: give one of them")
    if created_after is not None and created_before is not None and created_after > created_before:
        raise click.UsageError("--created-after is later than --created-before: no run can match")
    return Selection(
        tuple(experiments), tuple(run_ids), deleted, filter_string or None, tuple(models), bool(models_only),
        created_after=created_after, created_before=created_before, deleted_only=status == "deleted", changed_since=since,
        leave_kinds=("trace",) if no_traces else (), trace_filter=trace_filter or None, traces_since=traces_since,
    )


def run_transfer(
    source: SourceStore, make_sink, options: dict, config: TransferConfig, as_json: bool = False,
    renames: Renames = Renames(), move=transfer,
) -> Summary:
    """move: transfer, or a function called as it is (sync)."""
    try:
        selection = resolve_selection(source, **options)
        # Plan before the sink exists, so that bad input leaves nothing behind in the target.
        plan = plan_transfer(source, selection, renames)
        sink: SinkStore = make_sink()
    except BaseException:
        source.close()
        raise
    if not as_json:
        for loss in declared_losses(source, sink):
            click.echo(f"the target cannot hold: {loss}", err=True)
        for loss in not_read_by_source(source):
            click.echo(f"not read from the source: {loss}", err=True)
    progress = ProgressBars(enabled=not as_json)  # JSON is for programs: never bars
    try:
        return move(source, sink, selection, config=config, on_progress=progress, plan=plan)
    except TrackportError as exc:
        done = getattr(exc, "summary", None)
        if done is not None:  # what was done before the stop, then the one-line error
            progress.close()
            click.echo(json.dumps(done.to_json(), indent=2, sort_keys=True) if as_json else render.summary_table(done))
        raise
    finally:
        progress.close()  # the bars are gone before the summary or an error is printed
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
        if summary.sync is not None:
            click.echo(render.sync_line(summary.sync))
    if summary.failed:
        sys.exit(ExitCode.UNITS_FAILED)
