"""Runs side by side: their attributes, params and latest metric values as rows, and which
rows differ; each metric's history for the plots (trackport.runs.report draws them). Runs
may come from several experiments. The library never prints; trackport.cli.runs renders.

Rules (docs/design-decisions.md, "Comparing runs"): a value a run does not have is None; a
row differs unless every run has the same value or every run has none (NaN equals NaN,
params compare as the strings MLflow keeps); a metric's value is its latest point
(MLflow's rule, from trackport.search.metric_summaries)."""
from __future__ import annotations

import datetime
import math
from dataclasses import asdict, dataclass, replace
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from trackport.domain import Run
from trackport.errors import BadInputError
from trackport.search import metric_summaries
from trackport.selection import runs_of
from trackport.stores.base import Selection, SourceStore, Unreadable

ATTRIBUTE, PARAM, METRIC = "attribute", "param", "metric"  # the sections, in order
START_TIME, DURATION = "start time", "duration"
# The attributes worth comparing, in this order; a tag's value where MLflow keeps it in one.
ATTRIBUTES = ("experiment", "user", "status", "lifecycle stage", START_TIME, DURATION, "source", "git commit")
_ATTRIBUTE_TAGS = {"source": "mlflow.source.name", "git commit": "mlflow.source.git.commit"}
MISSING = "-"  # how a value a run does not have is shown
KEYS_NAMED = 10  # of the keys the runs have, in the error about a key none of them has

Value = str | int | float | None


@dataclass(frozen=True)
class ComparedRun:
    run_id: str
    run_name: str
    experiment_id: str
    experiment_name: str


@dataclass(frozen=True)
class Row:
    section: str  # ATTRIBUTE, PARAM or METRIC
    key: str
    values: tuple[Value, ...]  # one per compared run, in Comparison.runs' order; None: the run has none
    differs: bool


@dataclass(frozen=True)
class Comparison:
    runs: tuple[ComparedRun, ...]
    rows: tuple[Row, ...]

    def section(self, name: str) -> tuple[Row, ...]:
        return tuple(row for row in self.rows if row.section == name)

    def only_differing(self) -> Comparison:
        return replace(self, rows=tuple(row for row in self.rows if row.differs))

    def to_json(self) -> dict:
        return {
            "runs": [asdict(run) for run in self.runs],
            "rows": [
                {"section": r.section, "key": r.key, "values": [_json_value(v) for v in r.values], "differs": r.differs}
                for r in self.rows
            ],
        }


@dataclass(frozen=True)
class History:
    """One metric's points in one run, in the source's order (step, timestamp, value)."""

    steps: tuple[int, ...]
    values: tuple[float, ...]


def load_runs(source: SourceStore, run_ids: Iterable[str]) -> list[tuple[str, Run]]:
    """(experiment name, run) of each run id, in the order given (repeats dropped), deleted
    runs included; BadInputError names the ids the source does not hold or cannot read."""
    wanted = tuple(dict.fromkeys(run_ids))
    selection = Selection(run_ids=wanted, include_deleted=True)
    found: dict[str, tuple[str, Run]] = {}
    for experiment in source.list_experiments(selection):
        if isinstance(experiment, Unreadable):
            raise BadInputError(f"experiment {experiment.source_id} cannot be read: {experiment.reason}")
        for run in runs_of(source, experiment, selection):
            if isinstance(run, Unreadable):
                raise BadInputError(f"run {run.source_id} cannot be read: {run.reason}")
            found[run.run_id] = (experiment.name, run)
    missing = [run_id for run_id in wanted if run_id not in found]
    if missing:  # the selection refuses them already; this keeps the promise should it change
        raise BadInputError(f"run(s) not found in {source.describe().uri}: {', '.join(missing)}")
    return [found[run_id] for run_id in wanted]


def compare_runs(
    source: SourceStore, loaded: list[tuple[str, Run]], params: Iterable[str] = (), metrics: Iterable[str] = ()
) -> Comparison:
    """The runs load_runs gave, side by side: every param and metric any of them has, or
    only those named (BadInputError names one that none of the runs has)."""
    runs = [run for _, run in loaded]
    latest = metric_summaries(source, runs, frozenset(metrics) or None, whole_history=False)
    param_keys = _keys("param", params, [run.params for run in runs])
    metric_keys = _keys("metric", metrics, [latest.get(run.run_id, {}) for run in runs])
    rows = [_row(ATTRIBUTE, name, [_attribute(name, experiment, run) for experiment, run in loaded]) for name in ATTRIBUTES]
    rows += [_row(PARAM, key, [run.params.get(key) for run in runs]) for key in param_keys]
    for key in metric_keys:
        summaries = [latest.get(run.run_id, {}).get(key) for run in runs]
        rows.append(_row(METRIC, key, [None if s is None else s.latest for s in summaries]))
    heads = tuple(ComparedRun(run.run_id, run.run_name, run.experiment_id, experiment) for experiment, run in loaded)
    return Comparison(heads, tuple(rows))


def metric_histories(source: SourceStore, runs: list[Run], keys: Iterable[str]) -> dict[str, dict[str, History]]:
    """For each run (by id), the history of each of its metrics named by keys, read one
    batch at a time."""
    wanted = pa.array(list(keys), pa.string())
    histories: dict[str, dict[str, History]] = {}
    for run in runs:
        by_key: dict[str, tuple[list[int], list[float]]] = {}
        for batch in source.iter_metric_batches(run):
            points = pa.Table.from_batches([batch]).filter(pc.is_in(batch.column("key"), wanted))
            for key, step, value in zip(*(points.column(name).to_pylist() for name in ("key", "step", "value"))):
                steps, values = by_key.setdefault(key, ([], []))
                steps.append(step)
                values.append(value)
        histories[run.run_id] = {key: History(tuple(s), tuple(v)) for key, (s, v) in by_key.items()}
    return histories


def display(row: Row, value: Value) -> str:
    """A value as the table shows it: times in UTC, durations in s/min/h, numbers exact."""
    if value is None:
        return MISSING
    if row.section == ATTRIBUTE and row.key == START_TIME:
        moment = datetime.datetime.fromtimestamp(value / 1000, tz=datetime.timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if row.section == ATTRIBUTE and row.key == DURATION:
        return _duration(value)
    return str(value)


def same(values: Iterable[Value]) -> bool:
    """Whether the values are equal: all the same value (NaN equal to NaN), or all missing."""
    values = list(values)
    first = values[0] if values else None
    return all(_equal(first, value) for value in values)


def _equal(a: Value, b: Value) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _row(section: str, key: str, values: list[Value]) -> Row:
    return Row(section, key, tuple(values), not same(values))


def _keys(what: str, named: Iterable[str], held: list[dict]) -> list[str]:
    """The keys named, in the order given, each checked to be held by a run; all keys any
    run holds, sorted, when none are named."""
    every = set().union(*held) if held else set()
    named = list(dict.fromkeys(named))
    unknown = [key for key in named if key not in every]
    if unknown:
        have = ", ".join(repr(k) for k in sorted(every)[:KEYS_NAMED]) or "none"
        more = f" and {len(every) - KEYS_NAMED} more" if len(every) > KEYS_NAMED else ""
        raise BadInputError(f"no compared run has the {what}(s) {', '.join(map(repr, unknown))} (they have: {have}{more})")
    return named or sorted(every)


def _attribute(name: str, experiment: str, run: Run) -> Value:
    if name in _ATTRIBUTE_TAGS:
        return run.tags.get(_ATTRIBUTE_TAGS[name])
    if name == DURATION:
        return None if run.start_time is None or run.end_time is None else run.end_time - run.start_time
    return {
        "experiment": experiment,
        "user": run.user_id or None,
        "status": run.status,
        "lifecycle stage": run.lifecycle_stage,
        START_TIME: run.start_time,
    }[name]


def _duration(ms: int) -> str:
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _json_value(value: Value) -> Value:
    """JSON has no NaN or infinities: they are written as the strings protobuf's JSON uses."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value

