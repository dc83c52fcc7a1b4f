"""MLflow 3 traces for tests, made with MLflow's own public client (never with trackport
code) on a tracking server, so tests compare trackport against an independent origin.

Run as a program (`python -m trackport.samples.trace_store URL`): tracing keeps global
state in the process (its exporter, the tracking URI), and one trace here is made the
way an older client or a server without span intake makes it, which takes patching the
client; a process of its own keeps both away from the caller. It prints the ids as JSON.

What it holds, in experiment `trackport-traces`:

* `answer` (in run `agent-run`: metadata mlflow.sourceRun): a root span with two children,
  one with a grandchild; attributes of every JSON type, an event, inputs and outputs; a
  feedback on the trace (human source, rationale) and one on a child span, an expectation;
* `fails` (tied to logged model `agent` by set_active_model: metadata mlflow.modelId): a
  span that raises (state ERROR, an exception event), a trace tag, a client request id;
* `legacy`: spans kept in the trace's artifact (traces.json), as a client that cannot send
  spans leaves them, with a nested span and a feedback.

The first two have their spans in the server's tracking store (what the client does
against a 3.4+ server).
"""
from __future__ import annotations

import json
import os
import sys

EXPERIMENT = "trackport-traces"
TRACE_NAMES = ("answer", "fails", "legacy")


def build(url: str) -> dict[str, str]:
    os.environ["MLFLOW_TRACKING_URI"] = url  # proxied artifacts find their server through it
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # each trace on the server when made
    import mlflow
    from mlflow.entities import AssessmentSource, SpanEvent
    from mlflow.store.tracking.rest_store import RestStore

    mlflow.set_tracking_uri(url)
    experiment_id = mlflow.set_experiment(EXPERIMENT).experiment_id
    ids: dict[str, str] = {"experiment": experiment_id}

    with mlflow.start_run(run_name="agent-run") as run:
        ids["run"] = run.info.run_id
        with mlflow.start_span("answer", span_type="CHAIN") as root:
            root.set_inputs({"question": "what is 2+2?", "ünïcode": "ok"})
            with mlflow.start_span("retrieve", span_type="RETRIEVER") as child:
                child.set_attributes({"k": 3, "score": 0.25, "exact": True, "none": None,
                                      "docs": ["a", "b"], "filter": {"lang": "en", "n": [1, 2.5]}})
                child.add_event(SpanEvent("cache miss", attributes={"key": "q1", "tries": 2}))
                with mlflow.start_span("embed") as grandchild:
                    grandchild.set_attribute("dims", 384)
                ids["retrieve_span"] = child.span_id
            with mlflow.start_span("generate", span_type="LLM") as llm:
                llm.set_inputs([{"role": "user", "content": "what is 2+2?"}])
                llm.set_outputs("4")
            root.set_outputs({"answer": "4"})
        ids["answer"] = root.trace_id
    mlflow.log_feedback(trace_id=ids["answer"], name="correct", value=True, rationale="2+2 is 4",
                        source=AssessmentSource(source_type="HUMAN", source_id="alice"))
    mlflow.log_feedback(trace_id=ids["answer"], name="relevance", value=0.75, span_id=ids["retrieve_span"],
                        source=AssessmentSource(source_type="LLM_JUDGE", source_id="judge-1"))
    mlflow.log_expectation(trace_id=ids["answer"], name="expected_answer", value={"answer": "4"})

    ids["model"] = mlflow.set_active_model(name="agent").model_id

    @mlflow.trace(name="fails")
    def fails(x: int) -> int:
        mlflow.update_current_trace(client_request_id="req-42", tags={"team": "search"})
        raise ValueError(f"no answer for {x}")

    try:
        fails(7)
    except ValueError:
        pass
    ids["fails"] = mlflow.get_last_active_trace_id()
    mlflow.clear_active_model()
    mlflow.set_trace_tag(ids["fails"], "reviewed", "no")

    def no_span_intake(*args, **kwargs):
        raise NotImplementedError("spans go to the trace artifact")

    RestStore.log_spans = no_span_intake  # the client falls back to the artifact, as an old one does
    with mlflow.start_span("legacy") as root:
        root.set_inputs({"q": "old"})
        with mlflow.start_span("step") as step:
            step.set_attribute("n", 1)
    ids["legacy"] = root.trace_id
    mlflow.log_feedback(trace_id=ids["legacy"], name="ok", value="yes", source=AssessmentSource(source_type="CODE", source_id="check"))
    return ids


if __name__ == "__main__":
    print(json.dumps(build(sys.argv[1])))
