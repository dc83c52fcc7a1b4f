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
from trackport.stores.base import Unreadable
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

    def iter_traces(self, experiment: Experiment) -> Iterator[Unit | Unreadable]:
        """The experiment's traces, a page at a time: each page's spans read on
        config.workers threads, yielded in the server's order."""
        body = {
            "locations": [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": experiment.experiment_id}}],
            "max_results": TRACES_PAGE,
        }
        pages = self.client.pages("POST", f"{TRACES_API}/search", body)
        try:
            first = next(pages)
        except (NotFoundError, BadInputError):  # a server before MLflow 3 has no v3 trace API
            return
        workers = max(1, self._config.workers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trackport-traces") as pool:
            window: deque[Future] = deque()  # traces read ahead, in order: bounded (a listing stopped early waits for few)
            for answer in itertools.chain([first], pages):
                for info in answer.get("traces") or ():
                    window.append(pool.submit(self._read_trace, info))
                    while len(window) > 2 * workers:
                        if (unit := window.popleft().result()) is not None:
                            yield unit
            while window:
                if (unit := window.popleft().result()) is not None:
                    yield unit

    def _read_trace(self, info: Any) -> Unit | Unreadable | None:
        """One listed trace with its spans; None when it was deleted since it was listed."""
        trace_id = str(info.get("trace_id") or "?") if isinstance(info, dict) else "?"
        try:
            return self._trace(info)
        except NotFoundError:
            return None
        except (RestError, TransientError) as exc:
            return Unreadable(TRACE.name, trace_id, f"the server did not send its spans: {exc}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return Unreadable(TRACE.name, trace_id, f"server sent an unusable trace ({exc!r})")

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
