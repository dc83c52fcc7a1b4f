"""The options that several commands share: what to take, how to write, how to run."""
from __future__ import annotations

import datetime
import functools
from pathlib import Path

import click

from trackport.config import TransferConfig
from trackport.errors import TrackportError
from trackport.renames import Renames
from trackport.stores.base import EXISTING_MODEL_POLICIES, LONG_VALUE_POLICIES

SELECTION_NAMES = (
    "experiments", "run_ids", "include_deleted", "filter_string", "models", "models_only", "status", "created_after", "created_before",
    "since", "no_traces", "trace_filter", "traces_since",
)
STATUSES = ("active", "deleted", "all")


class Time(click.ParamType):
    """A point in time: epoch milliseconds, or an ISO date or date-time (UTC unless it says
    otherwise), as epoch milliseconds."""

    name = "TIME"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is neither epoch milliseconds nor an ISO date (2026-12-01 or 2026-12-01T08:00:00Z)", param, ctx)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return int(moment.timestamp() * 1000)


TIME = Time()
SINK_NAMES = ("artifact_root", "on_long_value", "on_existing_model", "artifacts_direct", "server_stopped", "bulk_load")
RENAME_NAMES = (
    "rename_experiment", "rename_experiment_prefix", "target_experiment", "rename_model", "rename_model_prefix", "rename_file",
)


def _packed(names: tuple[str, ...], into: str):
    """The command receives the options named as one dict argument `into`."""

    def wrap(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            kwargs[into] = {name: kwargs.pop(name) for name in names}
            return command(*args, **kwargs)

        return wrapper

    return wrap


def _models_alone(command):
    """--model and --models-only pick runs themselves: refused beside the options that pick runs."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        picks_runs = kwargs["experiments"] or kwargs["run_ids"] or kwargs["filter_string"] or kwargs["status"] == "deleted"
        picks_runs = picks_runs or any(kwargs[k] is not None for k in ("created_after", "created_before", "since"))
        if (kwargs["models"] or kwargs["models_only"]) and picks_runs:
            which = "--model" if kwargs["models"] else "--models-only"
            raise click.UsageError(
                f"{which} takes the registry (and with --model the runs behind it); it cannot be combined with"
                " --experiment, --run-id, --filter, --status deleted, --created-* or --since: run two transfers"
            )
        return command(*args, **kwargs)

    return wrapper


def selection_options(command):
    """--experiment, --run-id, --include-deleted, --filter, --model, --models-only, handed to
    the command as the dict `selection` (the arguments of running.resolve_selection)."""
    command = _models_alone(_packed(SELECTION_NAMES, "selection")(command))
    command = click.option(
        "--models-only",
        is_flag=True,
        help="Take the registered models and prompts (all, or those --model names) without the runs and"
        " logged models behind their versions.",
    )(command)
    command = click.option(
        "--model",
        "models",
        multiple=True,
        metavar="NAME",
        help="Only this registered model or prompt, with its versions and the runs and logged models behind"
        " them (repeatable; * and ? are wildcards; default: every one, unless --experiment, --run-id or"
        " --filter narrow the transfer to some runs).",
    )(command)
    command = run_filter_options(command)
    command = click.option(
        "--traces-since", type=Time(), default=None, metavar="TIME",
        help="Only the traces requested at or after TIME (epoch ms or an ISO date, as --since); the others are counted as not selected.",
    )(command)
    command = click.option(
        "--trace-filter", default=None, metavar="FILTER",
        help="Only the traces MLflow's trace search finds with FILTER (its syntax: \"tag.team = 'x'\", \"trace.status = 'OK'\","
        " \"trace.timestamp_ms > 1767225600000\"; applied by the source tracking server); the others are counted as not selected.",
    )(command)
    command = click.option(
        "--no-traces", is_flag=True, help="Leave the experiments' traces where they are (default: traces move with their experiments)."
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


def run_filter_options(command):
    """--filter, --status, --created-after, --created-before, --since: which runs, on any source."""
    command = click.option(
        "--since",
        type=TIME,
        help="Only runs started or changed at or after TIME (epoch ms or an ISO date): start, end or"
        " deletion time, or a metric's latest point, at or after it. A tag or param edit moves no time.",
    )(command)
    command = click.option(
        "--created-before", type=TIME, help="Only runs created (started) at or before TIME: epoch ms or an ISO date."
    )(command)
    command = click.option(
        "--created-after", type=TIME, help="Only runs created (started) at or after TIME: epoch ms or an ISO date."
    )(command)
    command = click.option(
        "--status",
        type=click.Choice(STATUSES),
        default=None,
        help="Active runs, deleted runs or all (default: active from a store, all a bundle holds;"
        " same as --exclude-deleted / --include-deleted).",
    )(command)
    command = click.option(
        "--filter",
        "filter_string",
        metavar="SEARCH",
        help="Only runs matching MLflow's search syntax, with MIN(), MAX() and LATEST() over a metric's"
        " history, e.g. \"metrics.r2 > 0.3 AND MIN(metrics.rmse) <= 1\" (any source).",
    )(command)
    return command


def _pairs(option: str, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        old, sep, new = value.partition("=")
        if not sep or not old or not new:
            raise click.UsageError(f"{option} {value!r}: expected OLD=NEW")
        pairs.append((old, new))
    return tuple(pairs)


def rename_options(command):
    """--rename-experiment, --rename-experiment-prefix, --target-experiment, --rename-model,
    --rename-model-prefix, --rename-file, handed to the command as one
    trackport.renames.Renames `renames`."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        names, prefixes, target, models, model_prefixes, path = (kwargs.pop(k) for k in RENAME_NAMES)
        try:
            renames = Renames(
                _pairs("--rename-experiment", names), _pairs("--rename-experiment-prefix", prefixes), target,
                _pairs("--rename-model", models), _pairs("--rename-model-prefix", model_prefixes),
            )
        except TrackportError as exc:
            raise click.UsageError(str(exc)) from None
        try:
            from_file = Renames.from_file(Path(path)) if path else Renames()
        except TrackportError as exc:  # this wrapper runs outside the command's fail_cleanly
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None
        try:
            kwargs["renames"] = renames.merged(from_file)
        except TrackportError as exc:  # the file and the options contradict each other
            raise click.UsageError(f"--rename-file {path}: {exc}") from None
        return command(*args, **kwargs)

    decorated = click.option(
        "--rename-file",
        metavar="FILE",
        help="Names to change: a CSV with the header old,new (experiments) or old,new,kind (kind: experiment or"
        " model), or JSON: {old: new} (experiments) or {\"experiments\": {old: new}, \"models\": {old: new}}.",
    )(wrapper)
    decorated = click.option(
        "--rename-model-prefix",
        multiple=True,
        metavar="OLD=NEW",
        help="Registered models and prompts whose names start with OLD take NEW instead (repeatable; the longest"
        " matching prefix wins; an exact --rename-model before any prefix).",
    )(decorated)
    decorated = click.option(
        "--rename-model",
        multiple=True,
        metavar="OLD=NEW",
        help="Write registered model (or prompt) OLD, its versions and aliases, as NEW in the target (repeatable).",
    )(decorated)
    decorated = click.option(
        "--target-experiment",
        metavar="NAME",
        help="Write every selected run into the one experiment NAME (a deliberate merge; the runs keep their"
        " provenance). Not with --rename-experiment*.",
    )(decorated)
    decorated = click.option(
        "--rename-experiment-prefix",
        multiple=True,
        metavar="OLD=NEW",
        help="Experiments whose names start with OLD take NEW instead, e.g. /Users/a/=/Shared/b/ (repeatable;"
        " the longest matching prefix wins; an exact --rename-experiment before any prefix).",
    )(decorated)
    return click.option(
        "--rename-experiment", multiple=True, metavar="OLD=NEW", help="Write experiment OLD as NEW in the target (repeatable)."
    )(decorated)


def sink_options(command):
    """--artifact-root, --on-long-value, --on-existing-model, --artifacts-direct, --server-stopped, --bulk-load, handed to the command as the
    dict `sink` (keyword arguments of opening.open_sink)."""
    command = _packed(SINK_NAMES, "sink")(command)
    command = click.option(
        "--on-existing-model",
        type=click.Choice(EXISTING_MODEL_POLICIES),
        default="fail",
        show_default=True,
        help="A registered model the target holds already and trackport did not write: fail its versions,"
        " skip them, or append them (as new version numbers, recorded).",
    )(command)
    command = click.option(
        "--on-long-value",
        type=click.Choice(LONG_VALUE_POLICIES),
        default="error",
        show_default=True,
        help="A param or tag value longer than the target holds: fail its run, or cut it (recorded).",
    )(command)
    command = click.option("--artifact-root", metavar="DIR", help="Where a new local store keeps artifacts.")(command)
    command = click.option(
        "--server-stopped",
        is_flag=True,
        help="Write into a tracking server's database even though a server seems to use it: for sqlite, an MLflow"
        " server on this machine names or holds the file; for PostgreSQL/MySQL, other sessions are connected to the"
        " database (you know it is stopped, or they are not a server). Without it such a target is refused.",
    )(command)
    command = click.option(
        "--bulk-load",
        is_flag=True,
        help="Into a PostgreSQL database that holds no runs yet: the whole restore in one transaction, the metrics"
        " table's keys and indexes dropped for the load and made again (the same definitions) before the commit;"
        " several times faster, but a killed or failed load keeps nothing and starts again from the beginning"
        " (without it, runs are committed one by one and a killed restore resumes).",
    )(command)
    command = click.option(
        "--artifacts-direct",
        is_flag=True,
        help="Write a tracking server's artifacts straight into its S3 bucket with your AWS credentials, not"
        " through the server (s3:// artifact URIs, or ?artifacts_destination=s3://... on the target URL).",
    )(command)
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
