"""The runs table of any store, as `trackport runs list` writes it: one row per run with its
params and latest metric values, streamed so that a million runs never sit in memory.

Rules (docs/design-decisions.md, "Listing runs"):
- rows come in trackport.selection's order: experiments oldest first, runs oldest first;
- the CSV has exactly the columns of the Databricks runs-table download,
  `Run ID,Name,Source Type,Source Name,User,Status,<params...>,<metrics...>`, params and
  metrics each sorted by key and named by it (a param and a metric of one key are two
  columns: params come first); extra columns go where Databricks puts them: `Start Time`
  and `Duration` first, the run's tags (one column per key, `mlflow.*` ones left out) last;
- a value a run does not have is an empty cell; a metric value is the repr of the float
  (0.1, nan, inf, -inf); a time is ISO 8601 in UTC with milliseconds; a duration is in
  seconds, empty while the run has no end time.

The CSV header needs every key before the first row, so `RunTable` spools the rows to an
anonymous temporary file while it collects the keys, and reads them back from it."""
from __future__ import annotations

import datetime
import json
import tempfile
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Iterable, Iterator

from trackport.domain import RUN_NAME_TAG, Experiment, Run
from trackport.models import metric_value_from_json, metric_value_to_json
from trackport.search import SUMMARY_BATCH, metric_summaries
from trackport.selection import runs_of
from trackport.stores.base import Selection, SourceStore, Unreadable

SOURCE_TYPE_TAG = "mlflow.source.type"
SOURCE_NAME_TAG = "mlflow.source.name"
USER_TAG = "mlflow.user"
SYSTEM_TAG_PREFIX = "mlflow."

START_TIME, DURATION, TAGS = "start_time", "duration", "tags"
EXTRA_COLUMNS = (START_TIME, DURATION, TAGS)  # what --columns may add
FIXED_HEADER = ("Run ID", "Name", "Source Type", "Source Name", "User", "Status")


def iso_time(ms: int | None) -> str:
    """Epoch milliseconds as ISO 8601 in UTC, '' for none: 2023-11-14T22:13:20.000Z."""
    if ms is None:
        return ""
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def duration_ms(start_time: int | None, end_time: int | None) -> int | None:
    """How long a run ran; None while it has no end (running) or no start."""
    return None if start_time is None or end_time is None else end_time - start_time


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    """The tags a user set: not MLflow's own `mlflow.*` ones."""
    return {k: v for k, v in tags.items() if not k.startswith(SYSTEM_TAG_PREFIX)}


@dataclass(frozen=True)
class RunRow:
    """One run as the runs table shows it."""

    run_id: str
    experiment_id: str
    experiment_name: str
    name: str
    source_type: str  # "" when the run has no such tag
    source_name: str
    user: str
    status: str
    lifecycle_stage: str
    start_time: int | None
    end_time: int | None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest values
    tags: dict[str, str] = field(default_factory=dict)  # user tags only

    @classmethod
    def of(cls, run: Run, experiment: Experiment, metrics: dict[str, float]) -> RunRow:
        return cls(
            run.run_id, run.experiment_id, experiment.name, run.run_name or run.tags.get(RUN_NAME_TAG, ""),
            run.tags.get(SOURCE_TYPE_TAG, ""), run.tags.get(SOURCE_NAME_TAG, ""), run.user_id or run.tags.get(USER_TAG, ""),
            run.status, run.lifecycle_stage, run.start_time, run.end_time, dict(run.params), metrics, user_tags(run.tags),
        )

    @property
    def duration_ms(self) -> int | None:
        return duration_ms(self.start_time, self.end_time)

    def to_json(self) -> dict:
        """JSON-able, metric values as bundle documents hold them (NaN and ±inf as strings)."""
        return {**vars(self), "metrics": {k: metric_value_to_json(v) for k, v in self.metrics.items()}}

    @classmethod
    def from_json(cls, data: dict) -> RunRow:
        return cls(**{**data, "metrics": {k: metric_value_from_json(v) for k, v in data["metrics"].items()}})


def run_rows(
    source: SourceStore, selection: Selection, *, with_metrics: bool = True, batch_runs: int = SUMMARY_BATCH
) -> Iterator[RunRow | Unreadable]:
    """Every run the selection takes, as rows, in trackport.selection's order; an Unreadable
    in place of each experiment or run the source cannot read. Latest metric values are read
    batch_runs runs at a time: no more runs than that are held at once."""
    for experiment in source.list_experiments(selection):
        if isinstance(experiment, Unreadable):
            yield experiment
            continue
        runs = runs_of(source, experiment, selection)
        while batch := list(islice(runs, batch_runs)):
            readable = [r for r in batch if isinstance(r, Run)]
            summaries = metric_summaries(source, readable, None, whole_history=False) if with_metrics else {}
            for run in batch:
                if isinstance(run, Unreadable):
                    yield run
                    continue
                latest = {key: s.latest for key, s in summaries.get(run.run_id, {}).items()}
                yield RunRow.of(run, experiment, latest)
            del batch, readable, summaries  # let the batch go before the next one is read


class RunTable:
    """Rows spooled to an anonymous temporary file (gone when closed, or when the process
    ends) while the keys of their params, metrics and tags are collected; iterate it to read
    the rows back, as often as needed. Use it as a context manager."""

    def __init__(self, rows: Iterable[RunRow | Unreadable]) -> None:
        self.unreadable: list[Unreadable] = []
        self.count = 0
        params: set[str] = set()
        metrics: set[str] = set()
        tags: set[str] = set()
        self._spool: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8")
        try:
            for row in rows:
                if isinstance(row, Unreadable):
                    self.unreadable.append(row)
                    continue
                self._spool.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
                self.count += 1
                params.update(row.params)
                metrics.update(row.metrics)
                tags.update(row.tags)
        except BaseException:
            self.close()
            raise
        self.param_keys, self.metric_keys, self.tag_keys = sorted(params), sorted(metrics), sorted(tags)

    def __iter__(self) -> Iterator[RunRow]:
        self._spool.seek(0)
        for line in self._spool:
            yield RunRow.from_json(json.loads(line))

    def close(self) -> None:
        self._spool.close()

    def __enter__(self) -> RunTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def csv_records(table: RunTable, columns: Iterable[str] = ()) -> Iterator[list[str]]:
    """The header, then one record per run: the cells of the CSV (see the module's rules).
    columns: which of EXTRA_COLUMNS to add."""
    extra = set(columns)
    times = [name for name in (START_TIME, DURATION) if name in extra]
    tag_keys = table.tag_keys if TAGS in extra else []
    yield [{START_TIME: "Start Time", DURATION: "Duration"}[t] for t in times] + list(FIXED_HEADER) \
        + table.param_keys + table.metric_keys + tag_keys
    for row in table:
        cells = {START_TIME: iso_time(row.start_time), DURATION: seconds(row.duration_ms)}
        yield [cells[t] for t in times] \
            + [row.run_id, row.name, row.source_type, row.source_name, row.user, row.status] \
            + [row.params.get(k, "") for k in table.param_keys] \
            + [metric_cell(row.metrics.get(k)) for k in table.metric_keys] \
            + [row.tags.get(k, "") for k in tag_keys]


def metric_cell(value: float | None) -> str:
    """repr of the float: 0.1 stays 0.1; nan, inf, -inf; '' when the run has no such metric."""
    return "" if value is None else repr(float(value))


def seconds(ms: int | None) -> str:
    """A duration in seconds ('60.0', '0.25'); '' when there is none."""
    return "" if ms is None else repr(ms / 1000)
