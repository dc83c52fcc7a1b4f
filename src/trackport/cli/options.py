"""The options that several commands share: what to take, how to write, how to run."""
from __future__ import annotations

import click

from trackport.config import TransferConfig
from trackport.stores.base import LONG_VALUE_POLICIES


def selection_options(command):
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


def sink_options(command):
    command = click.option(
        "--on-long-value",
        type=click.Choice(LONG_VALUE_POLICIES),
        default="error",
        show_default=True,
        help="A param or tag value longer than the target holds: fail its run, or cut it (recorded).",
    )(command)
    command = click.option("--artifact-root", metavar="DIR", help="Where a new local store keeps artifacts.")(command)
    return command


def transfer_options(command):
    command = click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")(command)
    command = click.option(
        "--workers",
        type=click.IntRange(1, 64),
        default=TransferConfig().workers,
        show_default=True,
        help="Units moved at the same time.",
    )(command)
    return command
