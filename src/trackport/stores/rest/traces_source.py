"""Reading MLflow 3 traces from a tracking server. Mixed into RestSource.

A server keeps a trace's spans in one of two places, and says which in the trace's tag
`mlflow.trace.spansLocation`: in its tracking store (TRACKING_STORE: what MLflow's client
does against a 3.4+ server, sending spans over OTLP), read with the v3 API's traces/get;
or in the trace's artifact `traces.json` (older clients, and servers that cannot take
spans), which only the UI's get-trace-artifact route serves.

Calls, per experiment: its traces/search pages (500 infos a page, assessments with them);
per trace, one traces/get or one get-trace-artifact, on config.workers threads.
"""
from __future__ import annotations

import itertools
import json
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

from trackport.config import TransferConfig
from trackport.domain import Experiment
from trackport.errors import BadInputError, TransientError
from trackport.kinds import TRACE, Unit
from trackport.stores.base import TRACES_BEFORE, NotSelected, Selection, Unreadable
from trackport.stores.rest.http import NotFoundError, RestClient, RestError
from trackport.traces import (
    SPANS_LOCATION_TAG,
    TRACKING_STORE,
    TraceFields,
    ms_from_duration,
    ms_from_timestamp,
    span_from_artifact,
    span_from_otel_json,
    trace_unit,
)

TRACES_API = "/api/3.0/mlflow/traces"
TRACE_ARTIFACT = "/ajax-api/3.0/mlflow/get-trace-artifact"
TRACES_PAGE = 500  # the server's limit


def trace_fields(info: dict, spans: list[dict]) -> TraceFields:
    """A trace info as proto JSON (traces/search, traces/get) and its spans."""
    location = (info.get("trace_location") or {}).get("mlflow_experiment") or {}
    return TraceFields(
        trace_id=info["trace_id"],
        experiment_id=str(location["experiment_id"]),
        request_time=ms_from_timestamp(info.get("request_time")) or 0,
        execution_duration=ms_from_duration(info.get("execution_duration")),
        state=info.get("state") or "STATE_UNSPECIFIED",
        request_preview=info.get("request_preview"),
        response_preview=info.get("response_preview"),
        client_request_id=info.get("client_request_id") or None,
        tags=dict(info.get("tags") or {}),
        metadata=dict(info.get("trace_metadata") or {}),
        assessments=list(info.get("assessments") or ()),
        spans=spans,
    )


class RestTracesSource:
    """Traces of a tracking server (RestSource's part)."""

    client: RestClient
    _config: TransferConfig

    searches_traces = True  # iter_traces applies a Selection's trace_filter and traces_since

    def _search(self, experiment: Experiment, filter_string: str | None = None) -> Iterator[dict]:
        body = {
            "locations": [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": experiment.experiment_id}}],
            "max_results": TRACES_PAGE,
        }
        if filter_string is not None:
            body["filter"] = filter_string
        return self.client.pages("POST", f"{TRACES_API}/search", body)

    def _matching(self, experiment: Experiment, filter_string: str) -> set[str]:
        """The ids of the experiment's traces the server's search with that filter finds."""
        try:
            return {str(info.get("trace_id")) for page in self._search(experiment, filter_string) for info in page.get("traces") or ()}
        except (BadInputError, RestError) as e:
            raise BadInputError(f"--trace-filter {filter_string!r}: the server refused it: {e}") from None

    def check_trace_filter(self, experiment: Experiment, filter_string: str) -> None:
        """BadInputError (one line) when the server refuses the filter: asked before anything is written."""
        try:
            next(self._search(experiment, filter_string), None)
        except NotFoundError:
            return  # no v3 trace API: the server holds no traces
        except (BadInputError, RestError) as e:
            raise BadInputError(f"--trace-filter {filter_string!r}: the server refused it: {e}") from None

    def iter_traces(self, experiment: Experiment, selection: Selection | None = None) -> Iterator[Unit | Unreadable | NotSelected]:
        """The experiment's traces, a page at a time: each page's spans read on
        config.workers threads, yielded in the server's order. With a selection, the traces
        its trace_filter (the server's search) or traces_since leave out are NotSelected
        (their spans are not read)."""
        pages = self._search(experiment)
        try:
            first = next(pages)
        except (NotFoundError, BadInputError):  # a server before MLflow 3 has no v3 trace API
            return
        matched = None if selection is None or selection.trace_filter is None else self._matching(experiment, selection.trace_filter)
        since = None if selection is None else selection.traces_since
        workers = max(1, self._config.workers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trackport-traces") as pool:
            window: deque[Future] = deque()  # traces read ahead, in order: bounded (a listing stopped early waits for few)
            for answer in itertools.chain([first], pages):
                for info in answer.get("traces") or ():
                    reason = _left_out(info, matched, since)
                    if reason is None:
                        window.append(pool.submit(self._read_trace, info))
                    else:
                        window.append(Future())
                        name = str((info.get("tags") or {}).get("mlflow.traceName", ""))
                        window[-1].set_result(NotSelected(TRACE.name, str(info.get("trace_id")), name, reason))
                    while len(window) > 2 * workers:
                        if (unit := window.popleft().result()) is not None:
                            yield unit
            while window:
                if (unit := window.popleft().result()) is not None:
                    yield unit

    def _read_trace(self, info: Any) -> Unit | Unreadable | None:
        """One listed trace with its spans; None when it was deleted since it was listed."""
        trace_id, name = "?", ""
        if isinstance(info, dict):
            trace_id, name = str(info.get("trace_id") or "?"), str((info.get("tags") or {}).get("mlflow.traceName", ""))
        try:
            return self._trace(info)
        except NotFoundError:
            return None
        except (RestError, TransientError) as exc:
            return Unreadable(TRACE.name, trace_id, f"the server did not send its spans: {exc}", name)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return Unreadable(TRACE.name, trace_id, f"server sent an unusable trace ({exc!r})", name)

    def _trace(self, info: dict) -> Unit:
        trace_id = info["trace_id"]
        if (info.get("tags") or {}).get(SPANS_LOCATION_TAG) == TRACKING_STORE:
            # allow_partial: a trace some of whose spans never reached the server (a client
            # stopped mid-export) is otherwise "not found"; it is copied as the source holds it.
            trace = self.client.call("GET", f"{TRACES_API}/get", params={"trace_id": trace_id, "allow_partial": "true"})["trace"]
            spans = [span_from_otel_json(s) for s in trace.get("spans") or ()]
            return trace_unit(trace_fields(trace.get("trace_info") or info, spans))
        response = self.client.request("GET", TRACE_ARTIFACT, params={"request_id": trace_id})
        data = json.loads(response.content or b"{}")
        return trace_unit(trace_fields(info, [span_from_artifact(s) for s in data.get("spans") or ()]))


def _left_out(info: dict, matched: set[str] | None, since: int | None) -> str | None:
    """Why the selection leaves this listed trace out, None when it takes it."""
    if matched is not None and str(info.get("trace_id")) not in matched:
        return "not matched by --trace-filter"
    if since is not None and (ms_from_timestamp(info.get("request_time")) or 0) < since:
        return TRACES_BEFORE
    return None
