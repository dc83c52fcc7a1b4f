"""`trackport sync SOURCE TARGET`: keep TARGET in step with SOURCE, run after run."""
from __future__ import annotations

import functools
import json

import click

from trackport.cli.options import rename_options, selection_options, sink_options, transfer_options
from trackport.cli.running import check_target, fail_cleanly, resolve_selection, run_transfer, show, transfer_config
from trackport.opening import open_sink, open_source, state_dir_for
from trackport.transfer.sync import dry_run, sync
from trackport.transfer.sync_runs import ON_CONFLICT, SyncOptions

_SHOWN = {"new": "new", "update": "update", "conflict": "conflict", "gone": "gone", "rename": "rename", "unreadable": "unreadable"}


@click.command("sync")
@click.argument("source")
@click.argument("target")
@selection_options
@transfer_options
@sink_options
@rename_options
@click.option("--full", is_flag=True, help="Compare every run whole, not only those whose fingerprint moved.")
@click.option(
    "--on-conflict",
    type=click.Choice(ON_CONFLICT),
    default="fail",
    show_default=True,
    help="A copy edited in the target since the last sync: fail that run (exit 1), skip it, or make it"
    " equal to the source.",
)
@click.option("--dry-run", is_flag=True, help="List what would change, run by run; write nothing.")
@fail_cleanly
def sync_command(source, target, selection, workers, as_json, sink, renames, full, on_conflict, dry_run):
    """Bring TARGET (a tracking server or a local sqlite store) up to date with SOURCE: new runs
    are copied; runs changed at the source are updated in place (target ids stay); runs deleted
    or purged at the source are deleted in the target (unless --exclude-deleted); runs edited in
    the target since the last sync are conflicts. Run it again and again."""
    check_target(source, target)
    if selection["include_deleted"] is None and selection["status"] is None:
        selection = {**selection, "include_deleted": True}  # deletions follow the source
    options = SyncOptions(full=full, on_conflict=on_conflict)
    config = transfer_config(workers)
    if dry_run:
        _dry_run(source, target, selection, options, renames, as_json)
        return
    make_sink = lambda: open_sink(target, config=config, **sink)  # noqa: E731
    move = functools.partial(sync, options=options, renames=renames)
    show(run_transfer(open_source(source, config=config), make_sink, selection, config, as_json, renames, move=move), as_json)


def _dry_run(source_uri, target_uri, selection, options, renames, as_json) -> None:
    source = open_source(source_uri)
    try:
        reader = open_source(target_uri)
    except BaseException:
        source.close()
        raise
    counts: dict[str, int] = {}
    try:
        changes = dry_run(
            source, reader, reader.describe(), state_dir_for(target_uri), resolve_selection(source, **selection),
            options=options, renames=renames,
        )
        for change in changes:
            counts[change.action] = counts.get(change.action, 0) + 1
            if as_json:
                click.echo(json.dumps(vars(change), sort_keys=True))
            elif change.action in _SHOWN:
                what = f"{change.kind} {change.name!r} ({change.source_id})" if change.name else f"{change.kind} {change.source_id}"
                click.echo(f"{_SHOWN[change.action]:<10} {change.experiment}: {what}" + (f": {change.detail}" if change.detail else ""))
    finally:
        reader.close()
        source.close()
    if not as_json:
        click.echo("dry run: " + (", ".join(f"{n:,} {a}" for a, n in sorted(counts.items())) or "nothing selected") + "; nothing written")
