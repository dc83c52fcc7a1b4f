"""MLflow 3 trace rows of a tracking database in the form a tracking server's REST API gives
them, so that the units built from them (trackport.traces) are the REST source's.

A server does not send its rows as they are: it turns them into MLflow's entities and
protos, and the REST source reads that JSON. What that way does, and is done here the same:

* spans (the `spans` table's `content`, MLflow's span dict as JSON) go out as OpenTelemetry
  protos (traces/get): each attribute's JSON text decoded and re-encoded (an empty or
  undecodable text aside), a status message kept only on an ERROR status (OpenTelemetry
  drops it elsewhere), links with binary ids;
* assessments go out as MLflow's Assessment proto: values through protobuf's `Value` (every
  number a double), an expectation that is not a scalar as JSON text, a feedback error's
  stack trace cut to MLflow's 10,000 characters, metadata values as `str()`;
* a trace's info: MLflow 3.x keeps the trace name, session id, token usage and cost in
  trace_info's own columns where the schema has them, and gives them back as the tag and
  metadata entries they were written as.

Tag and metadata values are not cut to the lengths the REST API cuts them to (4,096 and 250
characters): the database holds them whole, and so do the units read from it.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

TRACE_NAME_TAG = "mlflow.traceName"
SESSION_KEY = "mlflow.trace.session"
TOKEN_USAGE_KEY = "mlflow.trace.tokenUsage"
COST_KEY = "mlflow.trace.cost"
# trace_info's columns of the entries MLflow promotes out of trace_request_metadata, in
# the order MLflow writes them back (mlflow.store.tracking.utils.trace_analytics).
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "total_tokens", "cache_read_input_tokens",
                 "cache_creation_input_tokens", "cache_creation_input_tokens_above_1hr")  # each its JSON key too
COST_COLUMNS = ("input_cost", "output_cost", "total_cost")
_INT64 = (-(2**63), 2**63 - 1)
_STACK_TRACE_LIMIT = 10_000  # mlflow.entities.assessment_error
_STACK_TRACE_CUT = "[Stack trace is truncated]\n...\n"
_STATUS_NAMES = {"OK": "STATUS_CODE_OK", "ERROR": "STATUS_CODE_ERROR", "UNSET": "STATUS_CODE_UNSET"}


# -- trace info ---------------------------------------------------------------------------------
def info_tags(rows: list[tuple[str, Any]], trace_name: Any, has_name_column: bool) -> dict[str, str]:
    """A trace's tags: trace_tags' rows, the name from trace_info.trace_name where the
    schema has that column (MLflow then ignores a name row)."""
    tags = {k: _text(v) for k, v in rows if not (has_name_column and k == TRACE_NAME_TAG)}
    if has_name_column and trace_name is not None:
        tags[TRACE_NAME_TAG] = _text(trace_name)
    return tags


def info_metadata(rows: list[tuple[str, Any]], info: dict[str, Any], columns: frozenset[str]) -> dict[str, str]:
    """A trace's metadata: trace_request_metadata's rows, with the entries MLflow keeps in
    trace_info's columns (where the schema has them) made again from those columns."""
    promoted = set()
    if "session_id" in columns:
        promoted.add(SESSION_KEY)
    if any(c in columns for c in TOKEN_COLUMNS):
        promoted.add(TOKEN_USAGE_KEY)
    if any(c in columns for c in COST_COLUMNS):
        promoted.add(COST_KEY)
    metadata = {k: _text(v) for k, v in rows if k not in promoted}
    if info.get("session_id") is not None:
        metadata[SESSION_KEY] = _text(info["session_id"])
    tokens = {c: n for c in TOKEN_COLUMNS if (n := _token_count(info.get(c))) is not None}
    if tokens:
        metadata[TOKEN_USAGE_KEY] = json.dumps(tokens)
    cost = {c: float(info[c]) for c in COST_COLUMNS if info.get(c) is not None}
    if cost:
        metadata[COST_KEY] = json.dumps(cost)
    return metadata


def _text(value: Any) -> str:
    return str(value)  # a server sends map values through str(), a NULL as "None"


def _token_count(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number == value and _INT64[0] <= number <= _INT64[1] else None


# -- assessments --------------------------------------------------------------------------------
def assessment(row: dict[str, Any]) -> dict:
    """An assessments row as the Assessment proto's JSON (without its trace id), times in ms."""
    kind = row["assessment_type"]
    value = json.loads(row["value"])
    out: dict[str, Any] = {"assessment_id": row["assessment_id"], "assessment_name": row["name"]}
    if row.get("span_id") is not None:
        out["span_id"] = row["span_id"]
    source = {"source_type": row["source_type"]}
    if row.get("source_id") is not None:
        source["source_id"] = row["source_id"]
    out["source"] = source
    out["create_time"] = int(row["created_timestamp"])
    out["last_update_time"] = int(row["last_updated_timestamp"])
    if kind == "feedback":
        feedback: dict[str, Any] = {"value": _proto_value(value)}
        if row.get("error") is not None:
            feedback["error"] = _error(json.loads(row["error"]))
        out["feedback"] = feedback
    elif kind == "expectation":
        if value is not None and not isinstance(value, (int, float, bool, str)):
            out["expectation"] = {"serialized_value": {"serialization_format": "JSON_FORMAT", "value": json.dumps(value)}}
        else:
            out["expectation"] = {"value": _proto_value(value)}
    elif kind == "issue":
        out["issue"] = {"issue_name": value.get("issue_name")}
    else:
        raise ValueError(f"assessment {row['assessment_id']}: unknown type {kind!r}")
    if row.get("rationale") is not None:
        out["rationale"] = row["rationale"]
    metadata = json.loads(row["assessment_metadata"]) if row.get("assessment_metadata") is not None else None
    if metadata:
        out["metadata"] = {str(k): str(v) for k, v in metadata.items()}
    if row.get("overrides"):
        out["overrides"] = row["overrides"]
    out["valid"] = bool(row["valid"]) if row.get("valid") is not None else True
    return out


def _proto_value(value: Any) -> Any:
    """A JSON value as it comes back from protobuf's Value: every number a double."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [_proto_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _proto_value(v) for k, v in value.items()}
    return value


def _error(data: dict) -> dict:
    out = {"error_code": data.get("error_code")}
    if data.get("error_message"):
        out["error_message"] = data["error_message"]
    trace = data.get("stack_trace")
    if trace:
        if len(trace) > _STACK_TRACE_LIMIT:
            trace = _STACK_TRACE_CUT + trace[-(_STACK_TRACE_LIMIT - len(_STACK_TRACE_CUT)):]
        out["stack_trace"] = trace
    return out


# -- spans --------------------------------------------------------------------------------------
def otel_span(content: str) -> dict:
    """A `spans` row's content (MLflow's span dict as JSON) as traces/get sends the span
    (OpenTelemetry's proto as JSON), for trackport.traces.span_from_otel_json."""
    data = json.loads(content)
    hex_ids = not _is_base64(data.get("trace_id"))  # MLflow 3.5.0 kept ids in hex
    status = data.get("status") or {}
    code = _STATUS_NAMES.get(status.get("code"), status.get("code") or "STATUS_CODE_UNSET")
    span: dict[str, Any] = {
        "span_id": _b64_id(data["span_id"], hex_ids),
        "name": data.get("name") or "",
        "start_time_unix_nano": int(data.get("start_time_unix_nano") or 0),
        "attributes": [{"key": k, "value": _any(_attribute(v))} for k, v in (data.get("attributes") or {}).items()],
        "events": [
            {"name": e.get("name") or "", "time_unix_nano": int(e.get("time_unix_nano") or 0),
             "attributes": [{"key": k, "value": _any(v)} for k, v in (e.get("attributes") or {}).items()]}
            for e in data.get("events") or ()
        ],
        # OpenTelemetry keeps a status message on an ERROR status only.
        "status": {"code": code, "message": (status.get("message") or "") if code == "STATUS_CODE_ERROR" else ""},
        "links": [_link(link) for link in data.get("links") or ()],
    }
    if data.get("parent_span_id"):
        span["parent_span_id"] = _b64_id(data["parent_span_id"], hex_ids)
    if data.get("end_time_unix_nano"):
        span["end_time_unix_nano"] = int(data["end_time_unix_nano"])
    return span


def _is_base64(text: Any) -> bool:
    try:
        base64.b64decode(str(text), validate=True)
        return True
    except (binascii.Error, ValueError):
        return False


def _b64_id(value: str, hex_ids: bool) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode() if hex_ids else value


def _attribute(text: Any) -> Any:
    """A span attribute's value as MLflow reads it back: its JSON text decoded (an empty
    value as None, a text that is not JSON as it is)."""
    if not text:
        return None
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _any(value: Any) -> dict:
    """A value as an OpenTelemetry AnyValue in the proto JSON a server sends."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"bool_value": value}
    if isinstance(value, str):
        return {"string_value": value}
    if isinstance(value, int):
        return {"int_value": value}
    if isinstance(value, float):
        return {"double_value": value if math.isfinite(value) else str(value).replace("inf", "Infinity").replace("nan", "NaN")}
    if isinstance(value, (list, tuple)):
        return {"array_value": {"values": [_any(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlist_value": {"values": [{"key": str(k), "value": _any(v)} for k, v in value.items()]}}
    return {"string_value": str(value)}


def _link(link: dict) -> dict:
    """A span link (MLflow's dict: an MLflow trace id, a hex span id) as OpenTelemetry's proto JSON."""
    trace_hex = str(link["trace_id"]).rsplit("/", 1)[-1].removeprefix("tr-")
    out: dict[str, Any] = {
        "trace_id": base64.b64encode(int(trace_hex, 16).to_bytes(16, "big")).decode(),
        "span_id": base64.b64encode(int(str(link["span_id"]), 16).to_bytes(8, "big")).decode(),
    }
    attributes = [{"key": k, "value": _any(v)} for k, v in (link.get("attributes") or {}).items()]
    if attributes:
        out["attributes"] = attributes
    return out
