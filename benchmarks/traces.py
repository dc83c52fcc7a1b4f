"""Traces copied server to server (issue 18): trackport against a minimal script making the
same calls, in one run.

    python benchmarks/traces.py [--traces 10000] [--spans 20] [--workers 4] [--server-workers 2]

1. A source server gets --traces traces of --spans spans each (a tree: a root, then each span
   a child of an earlier one; attributes as MLflow's client writes them): by default written
   into its database before it starts with the calls its OTLP and StartTraceV3 handlers make
   (--populate database), or sent to it as MLflow's client sends them (--populate server:
   the spans over OTLP, then StartTraceV3). Timed: "populate".
2. `trackport copy SOURCE TARGET_A --workers W` under /usr/bin/time -v: time and peak RSS.
3. The minimal script (this file, --minimal) copies SOURCE to TARGET_B with the same calls and
   the same concurrency: the v3 search a page at a time, traces/get per trace, then per trace
   the spans over OTLP and StartTraceV3, on W threads; no ids kept on the side, no ledger, no
   checks. Also under /usr/bin/time -v.
4. `trackport verify SOURCE TARGET_A` (every span compared), and trace counts of both targets.
All servers: sqlite, `mlflow server` with --server-workers workers. Results go to
benchmarks/results/traces-<N>-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

TRACES_API = "/api/3.0/mlflow/traces"
EXPERIMENT = "bench-traces"


# -- the traces ---------------------------------------------------------------------------------
def make_trace(rng: random.Random, t: int, spans: int, base_ms: int) -> tuple[str, list[dict], dict]:
    """(trace id, OTLP spans, trace info) of trace t."""
    from trackport.samples.synthetic_traces import synthetic_spans
    from trackport.traces import otlp_request, timestamp_from_ms

    trace_id = f"tr-{rng.getrandbits(128):032x}"
    body = synthetic_spans(rng, trace_id, (base_ms + t * 1000) * 1_000_000, spans, label=str(t), padding=200)
    info = {
        "trace_id": trace_id,
        "request_time": timestamp_from_ms(base_ms + t * 1000),
        "execution_duration": "0.250s",
        "state": "OK",
        "request_preview": f"question {t}", "response_preview": f"answer {t}",
        "tags": {"mlflow.traceName": f"bench-{t}", "team": "bench"},
        "trace_metadata": {"mlflow.trace_schema.version": "3"},
    }
    return trace_id, otlp_request(trace_id, body)["resourceSpans"], info


def write_trace(session: requests.Session, url: str, experiment_id: str, spans_request: list, info: dict) -> None:
    """The two calls of MLflow's client: the spans over OTLP, then StartTraceV3 with the info;
    both again after a dropped connection (a loaded server's worker can drop one; both
    calls merge, so writing twice is safe)."""
    for attempt in range(4):
        try:
            return _write_trace(session, url, experiment_id, spans_request, info)
        except requests.ConnectionError:
            if attempt == 3:
                raise
            time.sleep(2 ** attempt)


def _write_trace(session: requests.Session, url: str, experiment_id: str, spans_request: list, info: dict) -> None:
    r = session.post(f"{url}/v1/traces", data=json.dumps({"resourceSpans": spans_request}),
                     headers={"Content-Type": "application/json", "x-mlflow-experiment-id": experiment_id}, timeout=60)
    r.raise_for_status()
    info = {**info, "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": experiment_id}}}
    r = session.post(f"{url}{TRACES_API}", json={"trace": {"trace_info": info}}, timeout=60)
    r.raise_for_status()


def experiment_id(url: str, name: str = EXPERIMENT) -> str:
    r = requests.get(f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}, timeout=30)
    if r.status_code == 200:
        return r.json()["experiment"]["experiment_id"]
    r = requests.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": name}, timeout=30)
    r.raise_for_status()
    return r.json()["experiment_id"]


def populate_database(database: Path, artifacts: Path, traces: int, spans: int) -> float:
    """The source's traces written into its database before its server starts, the way the
    server's two handlers write them (OTLP intake: Span.from_otel_proto, log_spans;
    StartTraceV3: TraceInfo.from_proto, start_trace), in this process: the same rows as
    populate() sends, several times faster on this machine (no HTTP, no second process)."""
    from google.protobuf.json_format import Parse, ParseDict
    from mlflow.entities import Span, TraceInfo
    from mlflow.protos.service_pb2 import TraceInfoV3
    from mlflow.server.otel_api import _convert_otlp_json_ids_to_base64
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    database.parent.mkdir(parents=True, exist_ok=True)
    store = SqlAlchemyStore(f"sqlite:///{database}", str(artifacts))
    exp = store.create_experiment(EXPERIMENT)
    rng = random.Random(20261203)
    base_ms = int(time.time() * 1000) - traces * 1000
    started = time.perf_counter()
    for t in range(traces):
        trace_id, spans_request, info = make_trace(rng, t, spans, base_ms)
        request = Parse(_convert_otlp_json_ids_to_base64(json.dumps({"resourceSpans": spans_request}).encode()), ExportTraceServiceRequest())
        store.log_spans(exp, [Span.from_otel_proto(s, resource=r.resource) for r in request.resource_spans
                              for scope in r.scope_spans for s in scope.spans])
        info = {**info, "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": exp}}}
        store.start_trace(TraceInfo.from_proto(ParseDict(info, TraceInfoV3())))
    store.engine.dispose()
    return time.perf_counter() - started


def populate(url: str, traces: int, spans: int, workers: int) -> float:
    exp = experiment_id(url)
    rng = random.Random(20261203)
    base_ms = int(time.time() * 1000) - traces * 1000
    made = (make_trace(rng, t, spans, base_ms) for t in range(traces))
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        sessions: dict = {}

        def send(item):
            import threading
            session = sessions.setdefault(threading.get_ident(), requests.Session())
            write_trace(session, url, exp, item[1], item[2])

        list(pool.map(send, made))
    return time.perf_counter() - started


# -- the minimal copy ------------------------------------------------------------------------------
def minimal_copy(source: str, target: str, workers: int) -> int:
    """The same calls as trackport's copy of traces, nothing else."""
    import threading

    from trackport.traces import otlp_request, span_from_otel_json

    src_exp, dst_exp = experiment_id(source), experiment_id(target)
    sessions: dict = {}

    def session() -> requests.Session:
        return sessions.setdefault(threading.get_ident(), requests.Session())

    def copy(info: dict) -> None:
        s = session()
        r = s.get(f"{source}{TRACES_API}/get", params={"trace_id": info["trace_id"], "allow_partial": "true"}, timeout=60)
        r.raise_for_status()
        trace = r.json()["trace"]
        spans = [span_from_otel_json(x) for x in trace.get("spans") or ()]
        full = trace.get("trace_info") or info
        out = {k: full[k] for k in ("trace_id", "request_time", "execution_duration", "state", "request_preview",
                                     "response_preview", "tags", "trace_metadata") if k in full}
        out["tags"] = {k: v for k, v in out.get("tags", {}).items() if k not in ("mlflow.trace.spansLocation", "mlflow.artifactLocation")}
        write_trace(s, target, dst_exp, otlp_request(info["trace_id"], spans)["resourceSpans"], out)

    copied = 0
    with ThreadPoolExecutor(workers) as pool:
        for infos in search_pages(session(), source, src_exp):
            list(pool.map(copy, infos))
            copied += len(infos)
    return copied


def search_pages(session: requests.Session, url: str, experiment: str) -> Iterator[list[dict]]:
    """An experiment's trace infos, a v3 search page (500) at a time."""
    token = None
    while True:
        body = {"locations": [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": experiment}}], "max_results": 500}
        if token:
            body["page_token"] = token
        r = session.post(f"{url}{TRACES_API}/search", json=body, timeout=60)
        r.raise_for_status()
        page = r.json()
        yield page.get("traces") or []
        token = page.get("next_page_token")
        if not token:
            return


# -- measuring --------------------------------------------------------------------------------------
def timed(command: list[str]) -> dict:
    """Run under /usr/bin/time -v: wall seconds and peak RSS (MiB)."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({done.returncode}): {done.stderr[-2000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(int(rss.group(1)) / 1024, 1) if rss else None}


def count_traces(url: str) -> int:
    return sum(len(infos) for infos in search_pages(requests.Session(), url, experiment_id(url)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--spans", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4, help="trackport's --workers and the minimal script's threads")
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--minimal", nargs=2, metavar=("SOURCE", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--populate", choices=("database", "server"), default="database",
                        help="write the source's traces into its database before its server starts (the server's own"
                             " store calls, in this process), or send them to the running server as a client does")
    args = parser.parse_args()
    if args.minimal:
        print(json.dumps({"copied": minimal_copy(*args.minimal, args.workers)}))
        return

    from servers import MlflowServer, start_all

    with tempfile.TemporaryDirectory(prefix="trackport-bench-traces-") as tmp:
        root = Path(tmp)
        result: dict = {"traces": args.traces, "spans_per_trace": args.spans, "workers": args.workers,
                        "server_workers": args.server_workers, "mlflow_server": "sqlite", "populate": args.populate}
        if args.populate == "database":
            result["populate_seconds"] = round(populate_database(root / "source" / "mlflow.db", root / "source" / "artifacts",
                                                                 args.traces, args.spans), 2)
        servers = start_all([MlflowServer(root / n, workers=args.server_workers) for n in ("source", "trackport", "minimal")])
        source, target_a, target_b = servers
        try:
            if args.populate == "server":
                result["populate_seconds"] = round(populate(source.url, args.traces, args.spans, args.workers), 2)
            print(f"populated {args.traces} traces in {result['populate_seconds']} s", flush=True)
            result["load_average_before"] = os.getloadavg()
            result["trackport"] = timed(["trackport", "copy", source.url, target_a.url, "--workers", str(args.workers), "--json"])
            print(f"trackport: {result['trackport']['seconds']} s, {result['trackport']['peak_rss_mib']} MiB", flush=True)
            result["minimal"] = timed([sys.executable, __file__, "--minimal", source.url, target_b.url, "--workers", str(args.workers)])
            print(f"minimal: {result['minimal']['seconds']} s, {result['minimal']['peak_rss_mib']} MiB", flush=True)
            result["load_average_after"] = os.getloadavg()
            result["copied"] = {"trackport": count_traces(target_a.url), "minimal": count_traces(target_b.url)}
            for side in ("trackport", "minimal"):
                result[side]["ms_per_trace"] = round(1000 * result[side]["seconds"] / max(1, args.traces), 2)
            if not args.no_verify:
                started = time.perf_counter()
                verify = subprocess.run(["trackport", "verify", source.url, target_a.url, "--experiment", EXPERIMENT],
                                        capture_output=True, text=True)
                result["verify"] = {"exit": verify.returncode, "seconds": round(time.perf_counter() - started, 2),
                                    "tail": verify.stdout[-300:]}
        finally:
            for server in servers:
                server.stop()
    out = HERE / "results" / f"traces-{args.traces}-{int(time.time())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
