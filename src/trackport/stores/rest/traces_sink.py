"""Writing MLflow 3 traces into a tracking server, with their own ids and times. Mixed
into RestSink.

The route is the one MLflow's client takes against a 3.4+ server: the spans first, over
OTLP (`POST /v1/traces`, JSON, with the experiment in `x-mlflow-experiment-id`), which
keeps the span ids and times and makes the server keep the spans in its tracking store;
then StartTraceV3 with the whole trace info (id, request time, duration, state, previews,
tags, metadata, assessments with their ids and times), which the server takes as sent and
merges over what the spans made. A trace whose spans the source kept in an artifact is
written the same way: the target keeps its spans in its tracking store.

Ids: a server takes a trace's id from the client, and trace ids (and assessment ids) are
unique per server. A trace goes in under its own id unless the target holds that id in
another experiment (a copy within one server, through a bundle or under another
experiment name): then under `remapped_trace_id` (the source id and the target
experiment, so every re-run finds the same one), with its assessments renamed to match
and the provenance tag `trackport.source.id` naming the source's trace. Either way a trace
already there with its info finalized (metadata `mlflow.trace.infoFinalized`, set by
StartTraceV3, the last call) is complete and skipped; one that is not is written again
(both calls merge). The id is decided before the spans are sent: spans sent under an id
another experiment holds would be merged into that experiment's trace. find_trace, which
the engine calls just before put_trace, decides it and leaves it for put_trace: no trace
is looked up twice.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from trackport.errors import UnitError
from trackport.kinds import Unit
from trackport.provenance import SOURCE_UNIT_TAG
from trackport.stores.base import UnitWriteResult
from trackport.stores.rest.http import NotFoundError, RestClient, RestError
from trackport.traces import (
    FINALIZED_KEY,
    MODEL_ID_KEY,
    SOURCE_RUN_KEY,
    assessment_to_json,
    duration_from_ms,
    otlp_request,
    remapped_trace_id,
    renamed_trace,
    timestamp_from_ms,
)

TRACES_API = "/api/3.0/mlflow/traces"
OTLP_TRACES = "/v1/traces"
EXPERIMENT_HEADER = "x-mlflow-experiment-id"
SPANS_PER_REQUEST = 1000  # bounds one OTLP request of a trace with very many spans


class RestTracesSink:
    """Traces into a tracking server (RestSink's part)."""

    client: RestClient
    _trace_ids: dict[tuple[str, str], str]  # (source id, target experiment) -> the id find_trace decided

    def _target_trace(self, trace_id: str) -> dict | None:
        try:
            return self.client.call("GET", f"{TRACES_API}/{quote(trace_id, safe='')}")["trace"]["trace_info"]
        except NotFoundError:
            return None

    def _trace_id(self, source_id: str, target_experiment_id: str) -> tuple[str, dict | None]:
        """(the id the trace has in that target experiment, the target's info under it or None)."""
        info = self._target_trace(source_id)
        if info is None or _experiment_of(info) == str(target_experiment_id):
            return source_id, info
        new_id = remapped_trace_id(source_id, str(target_experiment_id))
        info = self._target_trace(new_id)
        if info is not None and _experiment_of(info) != str(target_experiment_id):
            raise UnitError(f"trace {source_id}: the target holds both its id and {new_id} in other experiments; nothing written")
        return new_id, info

    def find_trace(self, unit: Unit, target_experiment_id: str) -> str | None:
        trace_id, info = self._trace_id(unit.unit_id, target_experiment_id)
        if info is not None and (info.get("trace_metadata") or {}).get(FINALIZED_KEY) == "true":
            return trace_id
        self._trace_ids[(unit.unit_id, str(target_experiment_id))] = trace_id  # put_trace, next, writes it there
        return None

    def lookup_trace(self, source_id: str, target_experiment_id: str | None) -> str | None:
        if target_experiment_id is None:
            return source_id if self._target_trace(source_id) is not None else None
        trace_id, info = self._trace_id(source_id, target_experiment_id)
        return trace_id if info is not None else None

    def put_trace(self, unit: Unit, target_experiment_id: str) -> UnitWriteResult:
        exp_id = str(target_experiment_id)
        trace_id = self._trace_ids.pop((unit.unit_id, exp_id), None) or self._trace_id(unit.unit_id, exp_id)[0]
        body = renamed_trace(unit, trace_id).body
        result = UnitWriteResult(trace_id)
        spans = body.get("spans") or []
        if any(s.get("links") for s in spans):
            result.losses.append("span links not written: a server's span intake is not sent them yet")
        for start in range(0, len(spans), SPANS_PER_REQUEST):  # spans of one trace sent apart are merged
            try:
                request = otlp_request(trace_id, spans[start : start + SPANS_PER_REQUEST])
                data = json.dumps(request, allow_nan=False).encode()
            except (ValueError, TypeError, KeyError) as exc:
                raise UnitError(f"trace {trace_id}: its spans cannot be sent: {exc}") from None
            self.client.request("POST", OTLP_TRACES, data=data, headers={"Content-Type": "application/json", EXPERIMENT_HEADER: exp_id})
        metadata = dict(body.get("trace_metadata") or {})
        for key, ref in ((SOURCE_RUN_KEY, "run"), (MODEL_ID_KEY, "logged_model")):
            if ref in unit.refs:  # the target's id where it holds it, else the source's (a recorded loss)
                metadata[key] = unit.refs[ref]
        info: dict[str, Any] = {
            "trace_id": trace_id,
            "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": exp_id}},
            "request_time": timestamp_from_ms(body["request_time"]),
            "state": body.get("state") or "STATE_UNSPECIFIED",
            "trace_metadata": metadata,
            "tags": dict(body.get("tags") or {}, **({SOURCE_UNIT_TAG: unit.unit_id} if trace_id != unit.unit_id else {})),
            "assessments": [assessment_to_json(a, trace_id) for a in body.get("assessments") or ()],
        }
        if body.get("execution_duration") is not None:
            info["execution_duration"] = duration_from_ms(body["execution_duration"])
        info.update({k: body[k] for k in ("request_preview", "response_preview", "client_request_id") if body.get(k) is not None})
        try:
            self.client.call("POST", TRACES_API, body={"trace": {"trace_info": info}})
        except RestError as exc:
            raise UnitError(f"trace {trace_id}: the target refused it: {exc}") from None
        return result


def _experiment_of(info: dict) -> str:
    return str(((info.get("trace_location") or {}).get("mlflow_experiment") or {}).get("experiment_id"))
