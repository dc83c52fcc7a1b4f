"""Metric summaries of a server's runs, for filters and run tables, in few calls.

Latest values come with every run runs/search returns (the source remembers them). A whole
history (for MIN and MAX) comes from the UI's get-history-bulk route, up to 100 runs per
call: it answers at most 25000 points in all and cuts silently, so an answer of fewer points
is whole and one of 25000 is read again run by run with get-history. A server without the
route (it is not part of the REST API) is asked run by run from then on.
"""
from __future__ import annotations

from typing import Any, Callable

from trackport.domain import MetricSummary, Run, summarize
from trackport.stores._history import key_history
from trackport.stores.rest.http import NotFoundError, RestClient

BULK_ROUTE = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
BULK_RUNS = 100  # the route's limit
BULK_POINTS = 25000  # its cap on the points of one answer


def latest_summaries(metrics: list[dict], keys: frozenset[str] | None) -> dict[str, MetricSummary]:
    """The latest points of runs/search's `data.metrics` (absent fields are zero in proto JSON)."""
    return {
        m["key"]: MetricSummary(float(m.get("value", 0.0)), int(m.get("step", 0)), int(m.get("timestamp", 0)))
        for m in metrics
        if "key" in m and (keys is None or m["key"] in keys)
    }


class HistorySummaries:
    """Whole-history summaries, bulk where the server allows."""

    def __init__(self, client: RestClient, history: Callable[[str, str], Any]) -> None:
        self._client = client
        self._history = history  # (run id, key) -> the key's whole history as a METRIC_SCHEMA table
        self._bulk = True

    def read(self, runs: list[Run], keys_of: dict[str, list[str]]) -> dict[str, dict[str, MetricSummary]]:
        """keys_of: for each run id, the metric keys to summarise."""
        found: dict[str, dict[str, MetricSummary]] = {run.run_id: {} for run in runs}
        for key in sorted({k for keys in keys_of.values() for k in keys}):
            holders = [run_id for run_id, keys in keys_of.items() if key in keys]
            for i in range(0, len(holders), BULK_RUNS):
                chunk = holders[i : i + BULK_RUNS]
                for run_id, table in self._histories(chunk, key).items():
                    found[run_id].update(summarize(table.to_batches()))
        return found

    def _histories(self, run_ids: list[str], key: str) -> dict[str, Any]:
        points = self._bulk_points(run_ids, key) if self._bulk else None
        if points is None:
            return {run_id: self._history(run_id, key) for run_id in run_ids}
        columns: dict[str, tuple[list, list, list]] = {run_id: ([], [], []) for run_id in run_ids}
        for m in points:
            steps, stamps, values = columns[m["run_id"]]
            steps.append(int(m.get("step", 0)))
            stamps.append(int(m.get("timestamp", 0)))
            values.append(float(m.get("value", 0.0)))
        return {run_id: key_history(key, *columns[run_id]) for run_id in run_ids}

    def _bulk_points(self, run_ids: list[str], key: str) -> list[dict] | None:
        """The points of every run's history of key in one call; None when the answer may be
        cut (then ask run by run) or the server has no such route."""
        try:
            answer = self._client.call(
                "GET", BULK_ROUTE, params={"run_id": run_ids, "metric_key": key, "max_results": BULK_POINTS}
            )
        except NotFoundError:
            self._bulk = False
            return None
        points = answer.get("metrics") or []
        return points if len(points) < BULK_POINTS else None
