"""The trace unit's pieces without a server: proto JSON times, the two span forms a server
sends (trace artifact, OTLP proto JSON) giving one span, the OTLP request a sink sends,
and a body that names refs, never the run's or logged model's id."""
from __future__ import annotations

import base64
import json

import pytest

from trackport import kinds
from trackport.bundle import schemas
from trackport.traces import (
    TraceFields,
    any_value,
    duration_from_ms,
    ms_from_duration,
    ms_from_timestamp,
    otlp_request,
    span_from_artifact,
    span_from_otel_json,
    timestamp_from_ms,
    to_any_value,
    trace_unit,
)

TRACE_ID = "tr-2af8a474f4bbc397d02b9015c1cfb6fd"
SPAN, PARENT = "7388efee5d342ea8", "6109629193c64def"


def b64(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


@pytest.mark.parametrize("text, ms", [
    ("2026-12-03T12:13:51.574Z", 1796300031574),
    ("2026-12-03T12:13:51Z", 1796300031000),
    ("2026-12-03T12:13:51.574999999Z", 1796300031574),
    ("2026-12-03T13:13:51.5+01:00", 1796300031500),
])
def test_proto_timestamps_to_ms_and_back(text, ms):
    assert ms_from_timestamp(text) == ms
    assert ms_from_timestamp(timestamp_from_ms(ms)) == ms


@pytest.mark.parametrize("text, ms", [("0.263s", 263), ("12s", 12000), ("0.000999s", 0), ("3.5s", 3500)])
def test_proto_durations_to_ms_and_back(text, ms):
    assert ms_from_duration(text) == ms
    assert ms_from_duration(duration_from_ms(ms)) == ms


def test_bad_times_are_refused():
    with pytest.raises(ValueError):
        ms_from_timestamp("yesterday")
    with pytest.raises(ValueError):
        ms_from_duration("1 minute")


VALUES = ["text", "ünïcode", 3, 0.25, True, None, [1, 2.5, None], {"lang": "en", "n": [1, {"deep": False}]}]


@pytest.mark.parametrize("value", VALUES)
def test_any_value_round_trip(value):
    assert any_value(to_any_value(value)) == value


def test_any_value_reads_the_snake_case_a_server_sends():
    sent = {"kvlist_value": {"values": [{"key": "q", "value": {"string_value": "hi"}},
                                        {"key": "n", "value": {"array_value": {"values": [{"int_value": 10}, {"double_value": 0.5}]}}},
                                        {"key": "ok", "value": {"bool_value": True}}, {"key": "none", "value": {}}]}}
    assert any_value(sent) == {"q": "hi", "n": [10, 0.5], "ok": True, "none": None}


def test_the_two_span_forms_give_one_span():
    """A trace artifact's span and traces/get's span of the same span are the same span."""
    attributes = {"mlflow.spanType": '"RETRIEVER"', "k": "3", "filter": '{"lang": "en", "n": [1, 2.5]}'}
    artifact = {
        "trace_id": b64("2af8a474f4bbc397d02b9015c1cfb6fd"), "span_id": b64(SPAN), "parent_span_id": b64(PARENT),
        "name": "retrieve", "start_time_unix_nano": 10, "end_time_unix_nano": 20,
        "events": [{"name": "miss", "time_unix_nano": 15, "attributes": {"key": "q1", "tries": 2}}],
        "status": {"code": "STATUS_CODE_OK", "message": ""}, "attributes": attributes, "links": [],
    }
    otel = {
        "trace_id": artifact["trace_id"], "span_id": b64(SPAN), "parent_span_id": b64(PARENT), "name": "retrieve",
        "start_time_unix_nano": "10", "end_time_unix_nano": 20,
        "attributes": [{"key": k, "value": to_any_value(json.loads(v))} for k, v in attributes.items()],
        "events": [{"name": "miss", "time_unix_nano": "15", "attributes": [
            {"key": "key", "value": {"string_value": "q1"}}, {"key": "tries", "value": {"int_value": "2"}}]}],
        "status": {"code": "STATUS_CODE_OK"},
    }
    one, other = span_from_artifact(artifact), span_from_otel_json(otel)
    assert one == other
    assert one["span_id"] == SPAN and one["parent_span_id"] == PARENT and one["end_time_unix_nano"] == 20


def test_otlp_request_keeps_ids_times_and_attribute_text():
    span = span_from_artifact({
        "span_id": b64(SPAN), "parent_span_id": None, "name": "root", "start_time_unix_nano": 1796300031574355032,
        "end_time_unix_nano": None, "events": [], "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
        "attributes": {"x": '{"a": [1, 2.5]}', "n": "NaN"},
    })
    sent = otlp_request(TRACE_ID, [span])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert sent["traceId"] == TRACE_ID[3:] and sent["spanId"] == SPAN and "parentSpanId" not in sent
    assert sent["startTimeUnixNano"] == "1796300031574355032" and "endTimeUnixNano" not in sent
    assert sent["status"] == {"code": "STATUS_CODE_ERROR", "message": "boom"}
    values = {a["key"]: a["value"] for a in sent["attributes"]}
    assert json.dumps(any_value(values["x"])) == '{"a": [1, 2.5]}'  # what the server stores again
    assert values["n"] == {"doubleValue": "NaN"}
    with pytest.raises(ValueError, match="32 hex"):
        otlp_request("trace:/catalog.schema/abc", [span])


def test_a_trace_body_names_refs_and_passes_its_schema():
    unit = trace_unit(TraceFields(
        trace_id=TRACE_ID, experiment_id="7", request_time=1796300031574, execution_duration=263, state="OK",
        tags={"mlflow.traceName": "answer", "mlflow.trace.spansLocation": "TRACKING_STORE", "team": "a"},
        metadata={"mlflow.sourceRun": "r1", "mlflow.modelId": "m-1", "mlflow.user": "bob"},
        assessments=[{"assessment_id": "a-1", "assessment_name": "ok", "trace_id": TRACE_ID,
                      "create_time": "2026-12-03T12:13:52.067Z", "feedback": {"value": True}}],
        spans=[span_from_artifact({"span_id": b64(SPAN), "name": "s", "start_time_unix_nano": 1, "attributes": {}})],
    ))
    assert unit.kind == kinds.TRACE.name and unit.name == "answer"
    assert unit.refs == {"experiment": "7", "run": "r1", "logged_model": "m-1"}
    assert "r1" not in json.dumps(unit.body) and "m-1" not in json.dumps(unit.body)
    assert unit.body["tags"] == {"mlflow.traceName": "answer", "team": "a"}
    assert unit.body["spans_location"] == "TRACKING_STORE"
    assert unit.body["assessments"] == [{"assessment_id": "a-1", "assessment_name": "ok", "create_time": 1796300032067,
                                         "feedback": {"value": True}}]
    assert schemas.body_errors(kinds.TRACE.schema, unit.body) == []
    broken = {**unit.body, "spans": [{**unit.body["spans"][0], "span_id": "not hex"}]}
    assert schemas.body_errors(kinds.TRACE.schema, broken) != []


def test_verify_names_a_missing_or_changed_span():
    """compare_units (what verify runs) compares a trace's spans and assessments one by one."""
    import dataclasses

    from trackport.transfer.compare_units import compare_units
    from trackport.transfer.units import DocumentUnits

    def span(hex_id: str, name: str, k: str) -> dict:
        return span_from_artifact({"span_id": b64(hex_id), "name": name, "start_time_unix_nano": int(hex_id[:4], 16),
                                   "attributes": {"k": k}})

    spans = [span(PARENT, "root", "1"), span(SPAN, "retrieve", "2"), span("00000000000000aa", "llm", "3")]
    mine = trace_unit(TraceFields(trace_id=TRACE_ID, experiment_id="1", request_time=1, spans=spans,
                                  assessments=[{"assessment_id": "a-1", "assessment_name": "ok", "rationale": "fine"}]))
    changed = [spans[0], span(SPAN, "retrieve", "20")]  # one attribute changed, one span gone
    theirs = dataclasses.replace(mine, experiment_id="9", refs={"experiment": "9"}, body={
        **mine.body, "spans": changed, "assessments": [{"assessment_id": "a-1", "assessment_name": "ok", "rationale": "bad"}],
    })

    def differences(a, b):
        return [what for _, what in compare_units("here", DocumentUnits(kinds.TRACE), None, [a], None, [b],
                                                  lambda kind, i: i, {}, "full")]

    assert differences(mine, dataclasses.replace(mine, experiment_id="9", refs={"experiment": "9"})) == []
    found = differences(mine, theirs)
    assert found == [
        "assessment a-1: rationale: 'fine' != 'bad'",
        "span 00000000000000aa ('llm') missing",
        f"span {SPAN} ('retrieve'): attributes: {{'k': '2'}} != {{'k': '20'}}",
    ]
