"""Traces copied server to server (issue 18): trackport against a minimal script making the
same calls, in one run.

    python benchmarks/traces.py [--traces 10000] [--spans 20] [--workers 4] [--server-workers 2]

1. A source server gets --traces traces of --spans spans each (a tree: a root, then each span
   a child of an earlier one; attributes as MLflow's client writes them), sent by this script
   as MLflow's client sends them: the spans over OTLP, then StartTraceV3 (timed: "populate").
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
import random
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

TRACES_API = "/api/3.0/mlflow/traces"
EXPERIMENT = "bench-traces"


# -- the traces ---------------------------------------------------------------------------------
def make_trace(rng: random.Random, t: int, spans: int, base_ms: int) -> tuple[str, list[dict], dict]:
    """(trace id, OTLP spans, trace info) of trace t."""
    from trackport.traces import otlp_request, timestamp_from_ms

    trace_id = f"tr-{rng.getrandbits(128):032x}"
    start = (base_ms + t * 1000) * 1_000_000
    body, ids = [], []
    for s in range(spans):
        span_id = f"{rng.getrandbits(64):016x}"
        body.append({
            "span_id": span_id, "parent_span_id": rng.choice(ids) if ids else None, "name": f"step-{s}",
            "start_time_unix_nano": start + s * 10_000, "end_time_unix_nano": start + s * 10_000 + rng.randrange(1, 10**7),
            "status": {"code": "STATUS_CODE_OK", "message": ""},
            "attributes": {"mlflow.spanType": '"LLM"' if s % 4 == 1 else '"CHAIN"', "mlflow.traceRequestId": json.dumps(trace_id),
                           "mlflow.spanInputs": json.dumps({"messages": [{"role": "user", "content": f"question {t}.{s} " + "x" * 200}]}),
                           "mlflow.spanOutputs": json.dumps({"answer": f"answer {t}.{s} " + "y" * 200})},
            "events": [], "links": [],
        })
        ids.append(span_id)
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
    token = None
    with ThreadPoolExecutor(workers) as pool:
        while True:
            body = {"locations": [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": src_exp}}], "max_results": 500}
            if token:
                body["page_token"] = token
            r = session().post(f"{source}{TRACES_API}/search", json=body, timeout=60)
            r.raise_for_status()
            page = r.json()
            infos = page.get("traces") or []
            list(pool.map(copy, infos))
            copied += len(infos)
            token = page.get("next_page_token")
            if not token:
                return copied


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
    exp, n, token = experiment_id(url), 0, None
    while True:
        body = {"locations": [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": exp}}], "max_results": 500}
        if token:
            body["page_token"] = token
        page = requests.post(f"{url}{TRACES_API}/search", json=body, timeout=60).json()
        n += len(page.get("traces") or [])
        token = page.get("next_page_token")
        if not token:
            return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--spans", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4, help="trackport's --workers and the minimal script's threads")
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--minimal", nargs=2, metavar=("SOURCE", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--no-verify", action="store_true")
    args = parser.parse_args()
    if args.minimal:
        print(json.dumps({"copied": minimal_copy(*args.minimal, args.workers)}))
        return

    from servers import MlflowServer, start_all

    with tempfile.TemporaryDirectory(prefix="trackport-bench-traces-") as tmp:
        root = Path(tmp)
        servers = start_all([MlflowServer(root / n, workers=args.server_workers) for n in ("source", "trackport", "minimal")])
        source, target_a, target_b = servers
        try:
            result: dict = {"traces": args.traces, "spans_per_trace": args.spans, "workers": args.workers,
                            "server_workers": args.server_workers, "mlflow_server": "sqlite"}
            result["populate_seconds"] = round(populate(source.url, args.traces, args.spans, args.workers), 2)
            print(f"populated {args.traces} traces in {result['populate_seconds']} s", flush=True)
            result["trackport"] = timed(["trackport", "copy", source.url, target_a.url, "--workers", str(args.workers), "--json"])
            print(f"trackport: {result['trackport']['seconds']} s, {result['trackport']['peak_rss_mib']} MiB", flush=True)
            result["minimal"] = timed([sys.executable, __file__, "--minimal", source.url, target_b.url, "--workers", str(args.workers)])
            print(f"minimal: {result['minimal']['seconds']} s, {result['minimal']['peak_rss_mib']} MiB", flush=True)
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
