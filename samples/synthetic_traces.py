"""Synthetic MLflow 3 trace spans, made without a server or MLflow's client, for tests and
benchmarks that need many traces quickly (trace_store.py makes a few with MLflow's own
client, as the independent origin of the trace tests).

The spans are in trackport's span form (trackport.traces: hex ids, attribute values as the
JSON text MLflow stores), as MLflow's client makes them: every span names its trace in
`mlflow.traceRequestId`, carries a span type, inputs and outputs.
"""
from __future__ import annotations

import json
import random

from trackport.kinds import Unit
from trackport.traces import TraceFields, trace_unit


def synthetic_spans(rng: random.Random, trace_id: str, start_ns: int, count: int, *, label: str = "", padding: int = 0) -> list[dict]:
    """A trace's spans: a tree (the first span the root, each other the child of a random
    earlier one), span s starting s x 10 µs after start_ns and lasting up to 10 ms, every
    fourth an LLM span, an event on the second; inputs and outputs name the trace's label
    and the span, each `padding` characters longer."""
    spans: list[dict] = []
    for s in range(count):
        span_id = f"{rng.getrandbits(64):016x}"
        start = start_ns + s * 10_000
        spans.append({
            "span_id": span_id,
            "parent_span_id": rng.choice(spans)["span_id"] if spans else None,
            "name": f"step-{s}",
            "start_time_unix_nano": start,
            "end_time_unix_nano": start + rng.randrange(1, 10**7),
            "status": {"code": "STATUS_CODE_OK", "message": ""},
            "attributes": {
                "mlflow.spanType": '"LLM"' if s % 4 == 1 else '"CHAIN"',
                "mlflow.traceRequestId": json.dumps(trace_id),
                "mlflow.spanInputs": json.dumps({"question": f"q{label}-{s}" + "x" * padding}),
                "mlflow.spanOutputs": json.dumps({"answer": f"a{label}-{s}" + "y" * padding}),
            },
            "events": [{"name": "note", "time_unix_nano": start + 5, "attributes": {"k": "v"}}] if s == 1 else [],
            "links": [],
        })
    return spans


def synthetic_trace(rng: random.Random, t: int, experiment_id: str, *, spans: int = 3, padding: int = 200,
                    base_ms: int = 1_700_000_000_000) -> Unit:
    """Trace t of an experiment as a unit: requested t ms after base_ms, synthetic_spans, one
    feedback on its root span (about 2 KB with the defaults)."""
    trace_id = f"tr-{rng.getrandbits(128):032x}"
    body = synthetic_spans(rng, trace_id, (base_ms + t) * 1_000_000, spans, label=str(t), padding=padding)
    assessment = {
        "assessment_id": f"a-{rng.getrandbits(128):032x}", "assessment_name": "relevance",
        "source": {"source_type": "HUMAN", "source_id": "synthetic"}, "create_time": base_ms + t, "last_update_time": base_ms + t,
        "feedback": {"value": t % 2 == 0}, "rationale": "synthetic", "valid": True, "span_id": body[0]["span_id"],
    }
    return trace_unit(TraceFields(
        trace_id=trace_id, experiment_id=experiment_id, request_time=base_ms + t, execution_duration=1, state="OK",
        request_preview=f"q{t}", response_preview=f"a{t}", tags={"mlflow.traceName": "agent"},
        metadata={"mlflow.trace_schema.version": "3"}, assessments=[assessment], spans=body,
    ))
