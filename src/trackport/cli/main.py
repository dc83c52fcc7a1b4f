"""The `trackport` command: parse options, open stores, call the library, render results."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from trackport import __version__, kinds
from trackport.cli import render
from trackport.cli.runs import runs_group
from trackport.cli.sync import sync_command
from trackport.cli.options import rename_options, selection_options, sink_options, transfer_options
from trackport.cli.shards import everything, merge_command, plan_command, planned_source, shard_options
from trackport.cli.running import (
    check_target, fail_cleanly, internal_error, resolve_selection, run_transfer, show, transfer_config,
)
from trackport.errors import ExitCode, VerifyError
from trackport.opening import inspect_bundle_at, open_bundle_sink, open_bundle_source, open_sink, open_source, verify_bundle_at
from trackport.stores.registry import locate


class _OneLineErrors(click.Group):
    """Usage errors as one line that says where help is, with click's exit code 2."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help())
            sys.exit(ExitCode.USAGE)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "trackport"
            render.error(f"{exc.format_message()} (see '{command} --help')")
            sys.exit(ExitCode.USAGE)
        except click.exceptions.Abort:
            render.error("interrupted; run the same command again to resume")
            sys.exit(ExitCode.INTERRUPTED)
        except click.ClickException as exc:
            render.error(exc.format_message())
            sys.exit(exc.exit_code)
        except click.exceptions.Exit as exc:  # a normal end (a RuntimeError): not one for the line below
            sys.exit(exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - a bug outside any command: one line, exit 70
            internal_error(exc)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trackport")
def cli() -> None:
    """Export, import, copy and verify MLflow tracking data.

    \b
    Stores: http(s)://tracking-server, databricks[://PROFILE], sqlite:///path/mlflow.db
    (local MLflow store), an mlruns/ directory (legacy file store, read-only) or a
    trackport bundle directory. Server credentials come from MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN or DATABRICKS_HOST / DATABRICKS_TOKEN;
    prefix any of them with TRACKPORT_SOURCE_ or TRACKPORT_TARGET_ for one side only.
    Exit codes: 0 ok, 1 some units failed, 2 usage, 3 bad input, 4 verify failed,
    5 authentication, 6 unreachable, 7 target busy, 8 disk full / read-only / no
    permission, 70 internal error, 130 interrupted.
    """


@cli.command("export")
@click.argument("source")
@click.argument("bundle", required=False)
@selection_options
@transfer_options
@click.option(
    "--since-bundle", "previous", metavar="PREVIOUS",
    help="Write only what changed since the bundle PREVIOUS (in the same directory), referring to it for the rest.",
)
@shard_options
@fail_cleanly
def export_command(source, bundle, selection, workers, as_json, previous, plan_path, shard_number):
    """Write SOURCE's experiments, runs, logged models and registry into the bundle directory
    BUNDLE (with --plan: `export --plan PLAN --shard K PART`, one shard into the bundle PART)."""
    from functools import partial

    from trackport.transfer import transfer
    from trackport.transfer.incremental import IncrementalRunUnits

    config = transfer_config(workers)
    store, bundle, selection = _source_of(source, bundle, selection, plan_path, shard_number, open_source, config, "BUNDLE")
    summary = run_transfer(
        store, lambda: open_bundle_sink(bundle, config=config, since=previous), selection,
        config, as_json, move=partial(transfer, run_units=IncrementalRunUnits()),
    )
    show(summary, as_json)


def _source_of(first, second, selection, plan_path, shard_number, opener, config, target_name="TARGET"):
    """(source store, target, selection options), the target checked before the source is
    opened: the two store arguments as given, or with --plan the shard's view of the plan's
    source and the one argument given as the target."""
    if plan_path is None:
        if second is None:
            raise click.UsageError(f"Missing argument '{target_name}'.")
        check_target(first, second)
        return opener(first, config=config), second, selection
    store, target, plan = planned_source(
        plan_path, shard_number, first, second, selection, lambda uri: opener(uri, config=config)
    )
    return store, target, everything(plan)


@cli.command("import")
@click.argument("bundle")
@click.argument("target", required=False)
@selection_options
@transfer_options
@sink_options
@rename_options
@shard_options
@fail_cleanly
def import_command(bundle, target, selection, workers, as_json, sink, renames, plan_path, shard_number):
    """Replay the bundle BUNDLE into the store TARGET (all it holds, deleted units included,
    unless --exclude-deleted or another selection says otherwise; with --plan, of a plan
    made over a bundle: `import --plan PLAN --shard K TARGET`)."""
    _into_store(open_bundle_source, bundle, target, selection, workers, as_json, sink, renames, plan_path, shard_number)


@cli.command("copy")
@click.argument("source")
@click.argument("target", required=False)
@selection_options
@transfer_options
@sink_options
@rename_options
@shard_options
@fail_cleanly
def copy_command(source, target, selection, workers, as_json, sink, renames, plan_path, shard_number):
    """Copy straight from store SOURCE to store TARGET, without a bundle (with --plan:
    `copy --plan PLAN --shard K TARGET`)."""
    _into_store(open_source, source, target, selection, workers, as_json, sink, renames, plan_path, shard_number)


def _into_store(opener, source, target, selection, workers, as_json, sink_options, renames, plan_path, shard_number) -> None:
    """import and copy: a transfer from what opener opens into the store TARGET. Shards of
    one plan keep their id maps and ledgers apart (state_scope), so they may write into one
    server at the same time: their runs differ, and experiments are made once."""
    config = transfer_config(workers)
    store, target, selection = _source_of(source, target, selection, plan_path, shard_number, opener, config)
    scope = None if plan_path is None else f"{store.plan_id}-{store.index}"
    sink = lambda: open_sink(target, config=config, state_scope=scope, **sink_options)  # noqa: E731
    show(run_transfer(store, sink, selection, config, as_json, renames), as_json)


@cli.command("verify")
@click.argument("source")
@click.argument("target")
@click.option(
    "--level",
    type=click.Choice(["fast", "full"]),
    default="full",
    show_default=True,
    help="fast: runs, point counts and artifact sizes; full: every field, point and byte.",
)
@selection_options
@rename_options
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@fail_cleanly
def verify_stores_command(source, target, level, selection, renames, as_json):
    """Prove that TARGET holds what SOURCE holds (a store or a bundle on either side)."""
    from trackport.transfer.compare import compare_stores
    from trackport.transfer.plan import plan_transfer

    locate(target)
    expected = open_source(source)
    try:
        actual = open_source(target)
    except BaseException:
        expected.close()
        raise
    try:
        plan = plan_transfer(expected, resolve_selection(expected, **selection), renames)  # with --model: the runs behind
        differences = [str(d) for d in compare_stores(expected, actual, plan.selection, level=level, renames=renames)]
    finally:
        expected.close()
        actual.close()
    if as_json:
        click.echo(json.dumps({"level": level, "differences": differences}, indent=2))
    else:
        for difference in differences:
            click.echo(difference)
        click.echo(f"verify --level {level}: {render.plural(len(differences), 'difference')}")
    if differences:
        sys.exit(ExitCode.VERIFY_FAILED)


@cli.command("status")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@fail_cleanly
def status_command(target, as_json):
    """Show what the transfers into TARGET did: units done, skipped, failed and not selected,
    with reasons, and what the last transfer left still to do. Exits 1 when a unit failed or
    the last transfer did not finish."""
    from trackport.opening import state_dir_for
    from trackport.transfer.status import read_status

    status = read_status(state_dir_for(target))
    if as_json:
        click.echo(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(render.status_text(status))
    last = status.last_transfer
    if status.failed or (last is not None and last.ended != "finished" and not last.running):
        sys.exit(ExitCode.UNITS_FAILED)


@cli.command("idmap")
@click.argument("target")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="csv", show_default=True)
@click.option("--kind", type=click.Choice(["all", *kinds.names()]), default="all", show_default=True)
@fail_cleanly
def idmap_command(target, fmt, kind):
    """Print the map of source ids to TARGET's ids."""
    import csv

    from trackport.opening import state_dir_for
    from trackport.transfer.status import read_idmap

    entries = [e for e in read_idmap(state_dir_for(target)) if kind in ("all", e["kind"])]
    if fmt == "json":
        click.echo(json.dumps(entries, indent=2))
        return
    writer = csv.DictWriter(click.get_text_stream("stdout"), fieldnames=["kind", "source_id", "target_id"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(entries)


@cli.group("bundle")
def bundle_group() -> None:
    """Check and describe bundles."""


@bundle_group.command("verify")
@click.argument("bundle")
@click.option(
    "--level",
    type=click.Choice(["fast", "complete", "full"]),
    default="full",
    show_default=True,
    help="fast: sizes; complete: plus no extra files; full: plus sha256 and schemas.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@fail_cleanly
def verify_command(bundle, level, as_json):
    """Check that BUNDLE is complete and undamaged."""
    report = verify_bundle_at(bundle, level)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        for problem in report.problems:
            click.echo(f"{problem.path}: {problem.message}")
        click.echo(
            f"{render.plural(report.files_checked, 'file')} checked at level {level}:"
            f" {render.plural(len(report.problems), 'problem')}"
        )
    if report.problems:
        sys.exit(ExitCode.VERIFY_FAILED)


@bundle_group.command("inspect")
@click.argument("bundle")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@fail_cleanly
def inspect_command(bundle, as_json):
    """Describe BUNDLE: format, producer, source, selection and contents."""
    info = inspect_bundle_at(bundle)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        click.echo(render.inspect_text(info))


cli.add_command(runs_group)
cli.add_command(sync_command)
cli.add_command(plan_command)
bundle_group.add_command(merge_command)


@cli.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where to put the demo's stores (default: a new temp dir).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document.")
@fail_cleanly
def demo_command(workdir, as_json):
    """Build the sample store, export it, import it into a fresh store and verify."""
    from trackport.cli.progress import ProgressBars
    from trackport.demo import run_demo

    progress = ProgressBars(enabled=not as_json)
    try:
        result = run_demo(Path(workdir) if workdir else None, on_progress=progress)
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        report = result.bundle_report
        click.echo(f"sample store: {result.source}\n\n== export -> {result.bundle}")
        click.echo(render.summary_table(result.exported))
        click.echo(
            f"\n== bundle verify --level full: {render.plural(report.files_checked, 'file')},"
            f" {render.plural(len(report.problems), 'problem')}"
        )
        for problem in report.problems:
            click.echo(f"  {problem.path}: {problem.message}")
        click.echo(f"\n== import -> {result.target}")
        click.echo(render.summary_table(result.imported))
        click.echo(f"\n== verify source vs target, field by field: {render.plural(len(result.differences), 'difference')}")
        for difference in result.differences:
            click.echo(f"  {difference}")
    if result.failed:
        sys.exit(ExitCode.UNITS_FAILED)
    if result.problems:
        raise VerifyError(f"the demo found {render.plural(result.problems, 'problem')} (listed above)")


def _use_system_allocator() -> None:
    """Arrow's default allocator (mimalloc) keeps a heap per thread: with 8 workers it held
    about 100 MB more at peak than the C library's allocator, at no measurable speed-up.
    ARROW_DEFAULT_MEMORY_POOL, when set, still decides."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        import pyarrow

        pyarrow.set_memory_pool(pyarrow.system_memory_pool())


def main() -> None:
    # MLflow's store layer (local stores) logs schema set-up at INFO; trackport reports itself.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _use_system_allocator()
    try:
        cli.main(prog_name="trackport")
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - last resort: one line, never a traceback dump
        internal_error(exc)


if __name__ == "__main__":
    main()
