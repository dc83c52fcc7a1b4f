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
