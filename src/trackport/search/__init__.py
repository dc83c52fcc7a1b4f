"""The run filter language of every store: MLflow's search syntax with MIN(), MAX() and
LATEST() over a metric's history (parser), one evaluator (evaluate), and what a store may be
asked to do itself (pushdown). `filter_runs` applies a filter to any source's runs."""
from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator

from trackport.domain import MetricSummary, Run
from trackport.search.evaluate import matches
from trackport.search.parser import Clause, Filter, FilterError, parse
from trackport.stores.base import SourceStore, Unreadable

__all__ = ["Clause", "Filter", "FilterError", "MetricSummary", "filter_runs", "matches", "metric_summaries", "parse"]

# Runs whose metric summaries are asked for at once: few enough that memory stays flat, many
# enough that a database or server answers them in one round trip.
SUMMARY_BATCH = 500


def metric_summaries(
    source: SourceStore, runs: list[Run], keys: frozenset[str] | None = None, whole_history: bool = True
) -> dict[str, dict[str, MetricSummary]]:
    """For each run id, its metrics' summaries as the source reads them: the latest points,
    and with whole_history their min, max and number of points too."""
    return source.metric_summaries(runs, keys, whole_history) if runs else {}


def filter_runs(source: SourceStore, runs: Iterable[Run | Unreadable], text: str) -> Iterator[Run | Unreadable]:
    """The runs the filter matches, in the order given, a batch at a time; an unreadable run
    is passed on (it is counted as failed where it is met, never dropped)."""
    flt = parse(text)
    keys = flt.metric_keys()
    listing = iter(runs)
    while batch := list(islice(listing, SUMMARY_BATCH)):
        readable = [r for r in batch if isinstance(r, Run)]
        summaries = metric_summaries(source, readable, keys, flt.aggregates()) if keys else {}
        for run in batch:
            if isinstance(run, Unreadable) or matches(flt, run, summaries.get(run.run_id, {})):
                yield run
