"""MLflow 3 traces as units: the trace's info, its assessments and its spans, built the same
way by every store that reads them, and the OTLP form a tracking server takes spans in.

A trace keeps its id wherever it can (MLflow's trace ids are made by the client, "tr-" and
the 32 hex digits of the OpenTelemetry trace id, and a server takes them as sent), so its
spans and the span ids its assessments name need no remapping. Trace ids and assessment
ids are unique per server, though: a target that holds the trace's id in another
experiment (a copy within one server, or a second copy under another experiment name)
gets it under a new id, made from the source id and the target experiment
(`remapped_trace_id`, so a re-run finds what it wrote), with new assessment ids made the
same way (`renamed_trace`). What differs from store to store are the ids of the run and
logged model it is linked to (metadata `mlflow.sourceRun` and `mlflow.modelId`): they are
the unit's refs "run" and "logged_model", and the body holds neither. The JSON Schema of
the body is schemas/trace.schema.json.

Spans travel inside the body, one object per span in the form MLflow keeps in a trace
artifact (`traces.json`), with hex ids: span id, parent span id, name, start and end
(ns), status, attributes (each value the JSON text MLflow stores) and events. A bundle
keeps them in one Parquet file per experiment (bundle/spans.py), rows of this form.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from trackport.kinds import TRACE, Unit

SOURCE_RUN_KEY = "mlflow.sourceRun"  # metadata: the run a trace was made in
MODEL_ID_KEY = "mlflow.modelId"  # metadata: the logged model a trace belongs to
SPANS_LOCATION_TAG = "mlflow.trace.spansLocation"  # where a server keeps the spans
ARTIFACT_LOCATION_TAG = "mlflow.artifactLocation"  # the trace's artifact folder on its server
TRACKING_STORE = "TRACKING_STORE"
# Tags that say where one server keeps a trace: each server sets its own.
LOCATION_TAGS = (SPANS_LOCATION_TAG, ARTIFACT_LOCATION_TAG)
# Metadata a server sets when StartTraceV3 writes a trace's info, which a writer cannot
# leave out: a trace whose client never sent its info (only its spans) lacks it.
FINALIZED_KEY = "mlflow.trace.infoFinalized"
REQUEST_ID_ATTRIBUTE = "mlflow.traceRequestId"  # a span's trace id; a server's span intake sets it
_TRACE_ID = re.compile(r"^tr-([0-9a-f]{32})$")
_DURATION = re.compile(r"^(-?\d+)(?:\.(\d{1,9}))?s$")


def otel_trace_id(trace_id: str) -> str | None:
    """The 32 hex digits of the OpenTelemetry trace id behind an MLflow trace id, None for
    an id of another shape (which a server's span intake cannot take as it is)."""
    m = _TRACE_ID.match(trace_id)
    return m.group(1) if m else None


# -- times as MLflow's proto JSON writes them -------------------------------------------------
def ms_from_timestamp(text: Any) -> int | None:
    """'2026-12-03T12:13:51.574Z' (a proto Timestamp) -> ms since the epoch."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return int(text)
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$", str(text))
    if not m:
        raise ValueError(f"not a timestamp: {text!r}")
    whole = datetime.fromisoformat(m.group(1) + (m.group(3).replace("Z", "+00:00")))
    return int(whole.timestamp()) * 1000 + int((m.group(2) or "0").ljust(9, "0")[:3])


def timestamp_from_ms(ms: int) -> str:
    seconds, rest = divmod(int(ms), 1000)
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest:03d}Z"


def ms_from_duration(text: Any) -> int | None:
    """'0.263s' (a proto Duration) -> 263."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return int(text)
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return int(m.group(1)) * 1000 + int((m.group(2) or "0").ljust(9, "0")[:3])


def duration_from_ms(ms: int) -> str:
    return f"{int(ms) // 1000}.{int(ms) % 1000:03d}s"


# -- spans ----------------------------------------------------------------------------------
def _hex(b64: str | None) -> str | None:
    return base64.b64decode(b64).hex() if b64 else None


def span_from_artifact(data: dict) -> dict:
    """A span as a trace artifact (traces.json) or get-trace-artifact holds it: ids in
    base64, attribute values as JSON text."""
    status = data.get("status") or {}
    return _span(
        span_id=_hex(data["span_id"]), parent=_hex(data.get("parent_span_id")), name=data.get("name") or "",
        start=data.get("start_time_unix_nano"), end=data.get("end_time_unix_nano"),
        status=(status.get("code") or "STATUS_CODE_UNSET", status.get("message") or ""),
        attributes={k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in (data.get("attributes") or {}).items()},
        events=[(e.get("name") or "", e.get("time_unix_nano"), dict(e.get("attributes") or {})) for e in data.get("events") or ()],
        links=list(data.get("links") or ()),
    )


def span_from_otel_json(data: dict) -> dict:
    """A span as GET /api/3.0/mlflow/traces/get sends it (OpenTelemetry's proto as JSON:
    ids in base64, attributes as typed values)."""
    status = data.get("status") or {}
    return _span(
        span_id=_hex(data["span_id"]), parent=_hex(data.get("parent_span_id")), name=data.get("name") or "",
        start=data.get("start_time_unix_nano"), end=data.get("end_time_unix_nano"),
        status=(status.get("code") or "STATUS_CODE_UNSET", status.get("message") or ""),
        attributes={a["key"]: json.dumps(any_value(a.get("value")), ensure_ascii=False) for a in data.get("attributes") or ()},
        events=[(e.get("name") or "", e.get("time_unix_nano"), {a["key"]: any_value(a.get("value")) for a in e.get("attributes") or ()})
                for e in data.get("events") or ()],
        links=list(data.get("links") or ()),
    )


def _span(*, span_id, parent, name, start, end, status, attributes, events, links) -> dict:
    if not span_id:
        raise ValueError("a span without an id")
    return {
        "span_id": span_id,
        "parent_span_id": parent or None,
        "name": name,
        "start_time_unix_nano": int(start or 0),
        "end_time_unix_nano": None if end in (None, "", 0, "0") else int(end),
        "status": {"code": status[0], "message": status[1]},
        "attributes": dict(sorted(attributes.items())),
        "events": [{"name": n, "time_unix_nano": int(t or 0), "attributes": a} for n, t, a in events],
        "links": links,
    }


def any_value(value: dict | None) -> Any:
    """An OpenTelemetry AnyValue (proto JSON, snake or camel case) as a Python value."""
    if not value:
        return None
    for key, read in (("string_value", str), ("stringValue", str), ("bool_value", bool), ("boolValue", bool),
                      ("int_value", int), ("intValue", int), ("double_value", float), ("doubleValue", float)):
        if key in value:
            return read(value[key])
    array = value.get("array_value") or value.get("arrayValue")
    if array is not None:
        return [any_value(v) for v in array.get("values") or ()]
    kvlist = value.get("kvlist_value") or value.get("kvlistValue")
    if kvlist is not None:
        return {kv["key"]: any_value(kv.get("value")) for kv in kvlist.get("values") or ()}
    raw = value.get("bytes_value") or value.get("bytesValue")
    return None if raw is None else base64.b64decode(raw).decode("utf-8", "replace")


def to_any_value(value: Any) -> dict:
    """A Python value (decoded from a span attribute's JSON) as an OTLP JSON AnyValue."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value if math.isfinite(value) else str(value).replace("inf", "Infinity").replace("nan", "NaN")}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [to_any_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [{"key": str(k), "value": to_any_value(v)} for k, v in value.items()]}}
    return {"stringValue": str(value)}


def otlp_request(trace_id: str, spans: list[dict]) -> dict:
    """The OTLP/HTTP JSON export request (ids in hex, as OTLP's JSON has them) of one
    trace's spans; each attribute's JSON text decoded, so that the server, which stores
    an attribute as the JSON of the value it receives, stores the same text again."""
    hex_trace = otel_trace_id(trace_id)
    if hex_trace is None:
        raise ValueError(f"trace id {trace_id!r} is not 'tr-' and 32 hex digits")
    out = []
    for s in spans:
        span: dict[str, Any] = {
            "traceId": hex_trace,
            "spanId": s["span_id"],
            "name": s["name"],
            "startTimeUnixNano": str(s["start_time_unix_nano"]),
            "attributes": [{"key": k, "value": to_any_value(json.loads(v))} for k, v in s["attributes"].items()],
            "events": [
                {"name": e["name"], "timeUnixNano": str(e["time_unix_nano"]),
                 "attributes": [{"key": k, "value": to_any_value(v)} for k, v in e["attributes"].items()]}
                for e in s["events"]
            ],
            "status": {"code": s["status"]["code"], "message": s["status"]["message"]},
        }
        if s.get("parent_span_id"):
            span["parentSpanId"] = s["parent_span_id"]
        if s.get("end_time_unix_nano") is not None:
            span["endTimeUnixNano"] = str(s["end_time_unix_nano"])
        out.append(span)
    return {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"scope": {}, "spans": out}]}]}


# -- the unit ---------------------------------------------------------------------------------
@dataclass
class TraceFields:
    """A trace as a store reads it (MLflow's fields; ids as that store has them)."""

    trace_id: str
    experiment_id: str
    request_time: int  # ms
    execution_duration: int | None = None  # ms
    state: str = "STATE_UNSPECIFIED"
    request_preview: str | None = None
    response_preview: str | None = None
    client_request_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    assessments: list[dict] = field(default_factory=list)  # proto JSON, as a server sends them
    spans: list[dict] = field(default_factory=list)  # span_from_artifact / span_from_otel_json


_ASSESSMENT_TIMES = ("create_time", "last_update_time")


def _assessment(data: dict) -> dict:
    """An assessment without its trace id (the unit's), its times in ms."""
    out = {k: v for k, v in data.items() if k != "trace_id"}
    for key in _ASSESSMENT_TIMES:
        if key in out:
            out[key] = ms_from_timestamp(out[key])
    return dict(sorted(out.items()))


def assessment_to_json(data: dict, trace_id: str) -> dict:
    """An assessment of a body as a server takes it (proto JSON)."""
    out = {**data, "trace_id": trace_id}
    for key in _ASSESSMENT_TIMES:
        if out.get(key) is not None:
            out[key] = timestamp_from_ms(out[key])
    return out


def trace_unit(t: TraceFields) -> Unit:
    refs = {"experiment": t.experiment_id}
    metadata = dict(t.metadata)
    finalized = metadata.pop(FINALIZED_KEY, None)
    for key, kind in ((SOURCE_RUN_KEY, "run"), (MODEL_ID_KEY, "logged_model")):
        if metadata.get(key):
            refs[kind] = metadata.pop(key)
    body = {
        "request_time": int(t.request_time),
        "execution_duration": t.execution_duration,
        "state": t.state or "STATE_UNSPECIFIED",
        "request_preview": t.request_preview,
        "response_preview": t.response_preview,
        "client_request_id": t.client_request_id or None,
        "tags": {k: v for k, v in sorted(t.tags.items()) if k not in LOCATION_TAGS},
        "trace_metadata": dict(sorted(metadata.items())),
        "assessments": sorted((_assessment(a) for a in t.assessments), key=lambda a: str(a.get("assessment_id"))),
        "spans": sorted(t.spans, key=lambda s: (s["start_time_unix_nano"], s["span_id"])),
        "spans_location": t.tags.get(SPANS_LOCATION_TAG),
        "info_finalized": finalized == "true",
        "artifact_location": t.tags.get(ARTIFACT_LOCATION_TAG),
    }
    return Unit(TRACE.name, t.trace_id, t.experiment_id, t.tags.get("mlflow.traceName", ""), refs, body)


# -- a trace under another id ------------------------------------------------------------------
def remapped_trace_id(source_trace_id: str, target_experiment_id: str) -> str:
    """The id a trace takes in a target whose other experiment holds its own id: made from
    both, so the same copy always gets the same id (a re-run or a resume finds it) and
    copies into two experiments get two."""
    digest = hashlib.sha256(f"{source_trace_id}\0{target_experiment_id}".encode()).hexdigest()
    return f"tr-{digest[:32]}"


def _remapped_assessment_id(assessment_id: str, trace_id: str) -> str:
    return "a-" + hashlib.sha256(f"{assessment_id}\0{trace_id}".encode()).hexdigest()[:32]


def renamed_trace(unit: Unit, trace_id: str) -> Unit:
    """The trace as it is written, and read back, under another id: the spans name it in
    mlflow.traceRequestId, its assessments get ids of their own (an assessment that
    overrides another names the other's new id). Span ids stay: they are unique within a
    trace only."""
    if trace_id == unit.unit_id:
        return unit
    own = json.dumps(unit.unit_id)
    spans = [
        {**s, "attributes": {**s["attributes"], REQUEST_ID_ATTRIBUTE: json.dumps(trace_id)}}
        if s.get("attributes", {}).get(REQUEST_ID_ATTRIBUTE) == own else s
        for s in unit.body.get("spans") or ()
    ]
    ids = {a["assessment_id"]: _remapped_assessment_id(a["assessment_id"], trace_id)
           for a in unit.body.get("assessments") or () if a.get("assessment_id")}
    assessments = sorted(
        ({**a, **{k: ids[a[k]] for k in ("assessment_id", "overrides") if a.get(k) in ids}} for a in unit.body.get("assessments") or ()),
        key=lambda a: str(a.get("assessment_id")),
    )
    body = {**unit.body, "spans": spans, "assessments": assessments}
    return dataclasses.replace(unit, unit_id=trace_id, body=body)
