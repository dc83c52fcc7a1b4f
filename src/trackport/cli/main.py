"""The `trackport` command: parse options, open stores, call the library, render results."""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import click

from trackport import __version__
from trackport.cli import render
from trackport.cli.running import check_target, fail_cleanly, resolve_selection, run_transfer, show
from trackport.domain import DEFAULT_WORKERS
from trackport.errors import ExitCode, VerifyError
from trackport.stores import open_bundle_sink, open_bundle_source, open_sink, open_source
from trackport.stores.base import Selection
from trackport.stores.registry import locate
from trackport.transfer.plan import LONG_VALUE_POLICIES


def _selection_options(command):
    command = click.option(
        "--filter",
        "filter_string",
        metavar="SEARCH",
        help="Only runs matching MLflow's search syntax, e.g. \"metrics.r2 > 0.3\" (server or sqlite source).",
    )(command)
    command = click.option(
        "--include-deleted/--exclude-deleted",
        default=None,
        help="Take deleted experiments and runs too, or leave them out (default: from a bundle, all it"
        " holds; from a store, leave them out). Left-out units are counted as not selected.",
    )(command)
    command = click.option(
        "--run-id", "run_ids", multiple=True, metavar="ID", help="Only this run (repeatable)."
    )(command)
    command = click.option(
        "--experiment",
        "experiments",
        multiple=True,
        metavar="NAME_OR_ID",
        help="Only this experiment (repeatable; default: all): a name or an id, or id:ID / name:NAME"
        " where one experiment's name is another's id.",
    )(command)
    return command


def _sink_options(command):
    command = click.option(
        "--on-long-value",
        type=click.Choice(LONG_VALUE_POLICIES),
        default="error",
        show_default=True,
        help="A param or tag value longer than the target holds: fail its run, or cut it (recorded).",
    )(command)
    command = click.option("--artifact-root", metavar="DIR", help="Where a new local store keeps artifacts.")(command)
    return command


def _transfer_options(command):
    command = click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")(command)
    command = click.option(
        "--workers",
        type=click.IntRange(1, 64),
        default=DEFAULT_WORKERS,
        show_default=True,
        help="Runs moved at the same time.",
    )(command)
    return command


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
@click.argument("bundle")
@_selection_options
@_transfer_options
@fail_cleanly
def export_command(source, bundle, experiments, run_ids, include_deleted, filter_string, workers, as_json):
    """Write SOURCE's experiments and runs into the bundle directory BUNDLE."""
    check_target(source, bundle)
    options = (experiments, run_ids, include_deleted, filter_string)
    summary = run_transfer(
        open_source(source, workers=workers), lambda: open_bundle_sink(bundle), options, workers, as_json
    )
    show(summary, as_json)


@cli.command("import")
@click.argument("bundle")
@click.argument("target")
@_selection_options
@_transfer_options
@_sink_options
@fail_cleanly
def import_command(bundle, target, experiments, run_ids, include_deleted, filter_string, workers, as_json,
                   artifact_root, on_long_value):
    """Replay the bundle BUNDLE into the store TARGET (all it holds, deleted units included,
    unless --exclude-deleted or another selection says otherwise)."""
    check_target(bundle, target)
    options = (experiments, run_ids, include_deleted, filter_string)
    sink = lambda: open_sink(target, artifact_root=artifact_root, on_long_value=on_long_value, workers=workers)  # noqa: E731
    show(run_transfer(open_bundle_source(bundle), sink, options, workers, as_json), as_json)


@cli.command("copy")
@click.argument("source")
@click.argument("target")
@_selection_options
@_transfer_options
@_sink_options
@fail_cleanly
def copy_command(source, target, experiments, run_ids, include_deleted, filter_string, workers, as_json,
                 artifact_root, on_long_value):
    """Copy straight from store SOURCE to store TARGET, without a bundle."""
    check_target(source, target)
    options = (experiments, run_ids, include_deleted, filter_string)
    sink = lambda: open_sink(target, artifact_root=artifact_root, on_long_value=on_long_value, workers=workers)  # noqa: E731
    show(run_transfer(open_source(source, workers=workers), sink, options, workers, as_json), as_json)


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
@_selection_options
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@fail_cleanly
def verify_stores_command(source, target, level, experiments, run_ids, include_deleted, filter_string, as_json):
    """Prove that TARGET holds what SOURCE holds (a store or a bundle on either side)."""
    from trackport.stores.rest.source import RestSource
    from trackport.transfer.compare import compare_stores

    locate(target)
    expected = open_source(source)
    try:
        actual = open_source(target)
    except BaseException:
        expected.close()
        raise
    try:
        selection = resolve_selection(expected, experiments, run_ids, include_deleted, filter_string)
        clamps = isinstance(actual, RestSource) and actual.info.clamps_infinity
        differences = [str(d) for d in compare_stores(expected, actual, selection, level=level, clamps_infinity=clamps)]
    finally:
        expected.close()
        actual.close()
    if as_json:
        click.echo(json.dumps({"level": level, "differences": differences}, indent=2))
    else:
        for difference in differences:
            click.echo(difference)
        click.echo(f"verify --level {level}: {len(differences)} differences")
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
    from trackport.stores import state_dir_for
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
@click.option("--kind", type=click.Choice(["run", "experiment", "all"]), default="all", show_default=True)
@fail_cleanly
def idmap_command(target, fmt, kind):
    """Print the map of source ids to TARGET's ids."""
    import csv

    from trackport.stores import state_dir_for
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
    from trackport.bundle import verify_bundle

    report = verify_bundle(Path(bundle), level)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        for problem in report.problems:
            click.echo(f"{problem.path}: {problem.message}")
        click.echo(f"{report.files_checked:,} files checked at level {level}: {len(report.problems)} problems")
    if report.problems:
        sys.exit(ExitCode.VERIFY_FAILED)


@bundle_group.command("inspect")
@click.argument("bundle")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@fail_cleanly
def inspect_command(bundle, as_json):
    """Describe BUNDLE: format, producer, source, selection and contents."""
    from trackport.bundle import inspect_bundle

    info = inspect_bundle(Path(bundle))
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    click.echo(f"format      {info['format']} {info['format_version']}")
    click.echo(f"producer    {info['producer']['name']} {info['producer']['version']}")
    source = info["source"]
    click.echo(f"source      {source['kind']} {source['uri']} (MLflow {source.get('mlflow_version') or '?'})")
    click.echo(f"created at  {info['created_at']}")
    for measure, value in (info.get("counts") or {}).items():
        click.echo(f"{measure.replace('_', ' '):<12}{value:,}")
    for experiment in info.get("experiments", []):
        click.echo(f"  experiment {experiment['experiment_id']} {experiment['name']!r}: {experiment['runs']} runs")


@cli.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where to put the demo's stores (default: a new temp dir).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document.")
@fail_cleanly
def demo_command(workdir, as_json):
    """Build the sample store, export it, import it into a fresh store and verify."""
    from trackport.bundle import verify_bundle
    from trackport.samples.sample_store import build_sample_store
    from trackport.transfer.compare import compare_stores

    root = Path(workdir or tempfile.mkdtemp(prefix="trackport-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    source_uri = build_sample_store(root / "source")
    bundle = root / "bundle"
    target_uri = f"sqlite:///{root / 'target' / 'mlflow.db'}"
    everything = Selection(include_deleted=True)

    take_all = ((), (), True, None)
    exported = run_transfer(open_source(source_uri), lambda: open_bundle_sink(str(bundle)), take_all, DEFAULT_WORKERS)
    report = verify_bundle(bundle, "full")
    imported = run_transfer(open_bundle_source(str(bundle)), lambda: open_sink(target_uri), take_all, DEFAULT_WORKERS)
    source, target = open_source(source_uri), open_source(target_uri)
    try:
        differences = [str(d) for d in compare_stores(source, target, everything, level="full")]
    finally:
        source.close()
        target.close()

    if as_json:
        result = {
            "source": source_uri,
            "bundle": str(bundle),
            "target": target_uri,
            "export": exported.to_json(),
            "bundle_problems": [f"{p.path}: {p.message}" for p in report.problems],
            "import": imported.to_json(),
            "differences": differences,
        }
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(f"sample store: {source_uri}\n\n== export -> {bundle}")
        click.echo(render.summary_table(exported))
        click.echo(f"\n== bundle verify --level full: {report.files_checked:,} files, {len(report.problems)} problems")
        for problem in report.problems:
            click.echo(f"  {problem.path}: {problem.message}")
        click.echo(f"\n== import -> {target_uri}")
        click.echo(render.summary_table(imported))
        click.echo(f"\n== verify source vs target, field by field: {len(differences)} differences")
        for difference in differences:
            click.echo(f"  {difference}")
    if exported.failed or imported.failed:
        sys.exit(ExitCode.UNITS_FAILED)
    if report.problems or differences:
        raise VerifyError(f"the demo found {len(report.problems) + len(differences)} problems (listed above)")


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
        render.error(f"internal error: {type(exc).__name__}: {exc} (please report this)")
        sys.exit(ExitCode.INTERNAL)


if __name__ == "__main__":
    main()
