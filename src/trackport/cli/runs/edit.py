"""`trackport runs tag | rename | delete | restore`: runs of a tracking server or a local
sqlite store edited in place (trackport.editing), deleted and restored in bulk by time
(trackport.runs.bulk)."""
from __future__ import annotations

import json
import sys
from typing import Callable, Iterator

import click

from trackport.cli import render
from trackport.cli.options import TIME
from trackport.cli.running import fail_cleanly
from trackport.cli.runs.group import runs_group
from trackport.editing import DONE, FAILED, SKIPPED, RunEditor, check_tags
from trackport.errors import BadInputError, ExitCode
from trackport.opening import open_editor
from trackport.runs.bulk import DELETE, MAX_RUNS, PLANNED, RESTORE, BulkResult, RunOutcome, apply, plan_delete, plan_restore
from trackport.runs.listing import iso_time

LISTED = 20  # runs listed per group of skipped or failed runs; --json lists them all
_DONE = {DELETE: "deleted", RESTORE: "restored"}  # the action (delete, restore) once done


@runs_group.command("tag")
@click.argument("target")
@click.argument("run_id")
@click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
@click.option("--delete", "delete_keys", multiple=True, metavar="KEY", help="Delete this tag (repeatable).")
@fail_cleanly
def tag_command(target, run_id, pairs, delete_keys):
    """Set tags of the run RUN_ID in TARGET (KEY=VALUE, as many as given) and delete others."""
    set_tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.UsageError(f"{pair!r} is not KEY=VALUE")
        set_tags[key] = value
    delete_keys = tuple(dict.fromkeys(delete_keys))
    if not set_tags and not delete_keys:
        raise click.UsageError("give tags to set (KEY=VALUE) or to delete (--delete KEY)")
    both = sorted(set(set_tags) & set(delete_keys))
    if both:
        raise click.UsageError(f"tag {both[0]!r} is both set and deleted")
    try:
        check_tags(set_tags)
    except BadInputError as exc:
        raise click.UsageError(str(exc)) from None
    with open_editor(target) as editor:
        editor.edit_tags(run_id, set_tags, delete_keys)
    click.echo(f"run {run_id}: {render.plural(len(set_tags), 'tag')} set, {render.plural(len(delete_keys), 'tag')} deleted")


@runs_group.command("rename")
@click.argument("target")
@click.argument("run_id")
@click.argument("name")
@fail_cleanly
def rename_command(target, run_id, name):
    """Rename the run RUN_ID in TARGET to NAME (its name and its mlflow.runName tag)."""
    if not name:
        raise click.UsageError("NAME cannot be empty")
    with open_editor(target) as editor:
        editor.rename(run_id, name)
    click.echo(f"run {run_id} renamed to {name!r}")


def _bulk_options(command):
    command = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON, one entry per run.")(command)
    command = click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal).")(command)
    command = click.option("--dry-run", is_flag=True, help="List what would change, and change nothing.")(command)
    command = click.option(
        "--max-runs", type=click.IntRange(1, MAX_RUNS), default=MAX_RUNS, show_default=True,
        help="Change at most this many runs, oldest first; run the command again for the rest.",
    )(command)
    return click.option(
        "--experiment", required=True, metavar="NAME_OR_ID",
        help="The experiment: a name or an id, or id:ID / name:NAME where one experiment's name is another's id.",
    )(command)


@runs_group.command("delete")
@click.argument("target")
@click.option("--created-before", type=TIME, required=True, help="Runs created (started) at or before TIME: epoch ms or an ISO date.")
@click.option("--no-children", is_flag=True, help="Leave the runs descending from them (created later) active.")
@_bulk_options
@fail_cleanly
def delete_command(target, created_before, no_children, experiment, max_runs, dry_run, yes, as_json):
    """Soft-delete the runs of one experiment created at or before a time, and the runs
    descending from them; prints the number deleted. `runs restore` brings them back."""
    _bulk(target, dry_run, yes, as_json, lambda editor: plan_delete(
        editor, experiment, created_before, max_runs=max_runs, children=not no_children))


@runs_group.command("restore")
@click.argument("target")
@click.option("--deleted-after", type=TIME, required=True, help="Runs deleted at or after TIME: epoch ms or an ISO date.")
@click.option(
    "--include-unknown", is_flag=True,
    help="Also restore deleted runs whose deletion time is not known (on a server: deleted outside trackport).",
)
@_bulk_options
@fail_cleanly
def restore_command(target, deleted_after, include_unknown, experiment, max_runs, dry_run, yes, as_json):
    """Restore the runs of one experiment deleted at or after a time. A server does not say
    when a run was deleted: there the times are those trackport recorded when it deleted
    them, and runs deleted otherwise are listed as unknown, not restored."""
    _bulk(target, dry_run, yes, as_json, lambda editor: plan_restore(
        editor, experiment, deleted_after, max_runs=max_runs, include_unknown=include_unknown))


def _bulk(target: str, dry_run: bool, yes: bool, as_json: bool, plan: Callable[[RunEditor], BulkResult]) -> None:
    """Plan, confirm on a terminal, apply, show. Off a terminal nothing is asked: --yes says go."""
    ask = not (dry_run or yes)
    if ask and not sys.stdin.isatty():
        raise click.UsageError("stdin is not a terminal, so nothing can be confirmed: add --yes to go ahead (--dry-run shows what would change)")
    with open_editor(target, write=not dry_run) as editor:
        result = plan(editor)
        if not dry_run:
            if ask and result.count(PLANNED) and not click.confirm(_question(result), default=False, err=True):
                render.error("cancelled; nothing was changed")
                sys.exit(ExitCode.UNITS_FAILED)
            result = apply(editor, result)
    click.echo(json.dumps(result.to_json(), indent=2, ensure_ascii=False) if as_json else "\n".join(_lines(result)))
    if result.count(FAILED):
        sys.exit(ExitCode.UNITS_FAILED)


def _what(result: BulkResult) -> str:
    experiment = result.experiment
    where = f"of experiment {experiment.name!r} ({experiment.experiment_id}) in {result.store}"
    if result.action == DELETE:
        family = ", with the runs descending from them" if result.children else ""
        return f"{where}, created at or before {iso_time(result.time)}{family}"
    return f"{where}, deleted at or after {iso_time(result.time)}"


def _question(result: BulkResult) -> str:
    left = result.count(SKIPPED)
    also = f"; {render.plural(left, 'run')} skipped (--dry-run lists them)" if left else " (--dry-run lists them)"
    return f"{result.action} {render.plural(result.count(PLANNED), 'run')} {_what(result)}{also}?"


def _lines(result: BulkResult) -> Iterator[str]:
    if result.dry_run:
        yield f"would {result.action} {render.plural(result.count(PLANNED), 'run')} {_what(result)}" + (":" if result.count(PLANNED) else "")
        yield from (_run_line(o) for o in result.outcomes if o.outcome == PLANNED)
    else:
        how = " (through the server's bulk endpoint)" if result.bulk_endpoint else ""
        yield f"{_DONE[result.action]} {render.plural(result.count(DONE), 'run')} {_what(result)}{how}"
    for outcome in (SKIPPED, FAILED):
        groups: dict[str, list[RunOutcome]] = {}
        for o in result.outcomes:
            if o.outcome == outcome:
                groups.setdefault(o.reason or "", []).append(o)
        for reason, runs in groups.items():
            yield f"{outcome} {render.plural(len(runs), 'run')}: {reason}"
            yield from (_run_line(o) for o in runs[:LISTED])
            if len(runs) > LISTED:
                yield f"  ... and {len(runs) - LISTED:,} more (--json lists them all)"


def _run_line(o: RunOutcome) -> str:
    parts = [o.run.run_id, repr(o.run.run_name), f"started {iso_time(o.run.start_time) or 'never'}"]
    if o.run.deleted_time is not None:
        parts.append(f"deleted {iso_time(o.run.deleted_time)}")
    if o.via:
        parts.append(f"descends from {o.via}")
    return "  " + "  ".join(parts)
