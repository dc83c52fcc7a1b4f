"""Sharded transfers from the command line (docs/scale-out.md): `trackport plan`, the
`--plan/--shard` options of export, import and copy, and `trackport bundle merge`."""
from __future__ import annotations

from pathlib import Path

import click

from trackport.cli import render
from trackport.cli.options import selection_options
from trackport.cli.running import check_target, fail_cleanly, resolve_selection
from trackport.errors import BadInputError
from trackport.opening import open_bundle_source, open_source
from trackport.stores.registry import PATH, locate
from trackport.transfer.shards import INDEX_VARIABLE, ShardPlan, ShardSource, load_plan, make_plan, save_plan, shard_index


@click.command("plan")
@click.argument("source")
@click.argument("plan_path", metavar="PLAN")
@click.option("--shards", type=click.IntRange(min=1), required=True, help="How many shards to split the transfer into.")
@selection_options
@fail_cleanly
def plan_command(source, plan_path, shards, selection):
    """List SOURCE's selected runs once and split them into shards, written to the file PLAN.
    Each shard is then run on its own: `trackport export --plan PLAN --shard K PART`."""
    if Path(plan_path).exists():
        raise BadInputError(f"{plan_path} exists; give a new file for the plan")
    opener = open_bundle_source if locate(source).kind == PATH else open_source
    with opener(source) as store:
        plan = make_plan(store, resolve_selection(store, **selection), shards)
    save_plan(plan, Path(plan_path))
    weights = [s.weight for s in plan.shards]
    click.echo(
        f"{render.plural(plan.runs, 'run')} in {render.plural(len(plan.shards), 'shard')}"
        + (f" (only {len(plan.shards)} run families to share out)" if len(plan.shards) < shards else "")
        + f"; weights {min(weights)} to {max(weights)}; plan {plan.plan_id} written to {plan_path}"
    )


def shard_options(command):
    """--plan PLAN and --shard K, handed to the command as plan_path and shard_number."""
    command = click.option(
        "--shard", "shard_number", type=click.IntRange(min=0), default=None, metavar="K",
        help=f"Which shard of --plan to run (default: ${INDEX_VARIABLE}, as a Kubernetes Indexed Job sets it).",
    )(command)
    return click.option(
        "--plan", "plan_path", metavar="PLAN", default=None,
        help="Run one shard of the plan `trackport plan` wrote: its source and selection come from the plan.",
    )(command)


def planned_source(plan_path: str, shard_number: int | None, first: str, second: str | None, selection: dict, opener):
    """(the shard's view of the plan's source, the target) for a command run with --plan,
    whose one store argument is the target; refuses a source or selection beside the plan."""
    if second is not None:
        raise click.UsageError("with --plan, give only the target: the plan names the source")
    if any(value not in (None, False, ()) for value in selection.values()):
        raise click.UsageError("with --plan, the plan holds the selection: give no selection options")
    plan = load_plan(plan_path)
    index = shard_index(shard_number)
    plan.shard(index)  # a number the plan does not have: refused before anything is opened
    check_target(plan.source, first)
    return ShardSource(opener(plan.source), plan, index), first, plan


def everything(plan: ShardPlan) -> dict:
    """The selection a shard runs with: all the ShardSource shows (the plan selected)."""
    options = {"experiments": (), "run_ids": (), "include_deleted": True, "filter_string": None}
    if "trace" in plan.selection.leave_kinds:
        options["no_traces"] = True
    return options


@click.command("merge")
@click.argument("out")
@click.argument("parts", nargs=-1, required=True)
@click.option("--plan", "plan_path", metavar="PLAN", required=True, help="The plan the parts were exported by.")
@fail_cleanly
def merge_command(out, parts, plan_path):
    """Merge the bundle PARTS of a sharded export into one bundle OUT (new)."""
    from trackport.bundle.merge import merge_parts

    plan = load_plan(plan_path)
    result = merge_parts(
        Path(out), [Path(p) for p in parts], [frozenset(s.run_ids) for s in plan.shards],
        source_uri=plan.source, selection=plan.selection.to_json(), plan_id=plan.plan_id, plan_path=plan_path,
    )
    for note in result.notes:
        render.notice(note)
    counts = result.counts
    click.echo(
        f"{render.plural(result.parts, 'part')} merged into {out}: {render.plural(counts['experiments'], 'experiment')},"
        f" {render.plural(counts['runs'], 'run')}, {render.plural(result.files, 'file')}"
        f" ({result.linked} hard-linked); check it with `trackport bundle verify {out}`"
    )
