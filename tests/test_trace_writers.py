"""Two imports of the same traces into one tracking server at the same time, from two
machines (two state homes, so no lock of trackport's stands between them): the paths users
walk when two colleagues, or a retried CI job, restore the same bundle at once.

MLflow keeps a trace's spans by (trace id, span id) and its info by trace id, and trackport
writes a trace under its own id (or the one derived from it), so the two writers race to
write the same rows. What must hold: every trace once, with its spans once and its
assessment once, and `trackport verify` clean.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from trackport.bundle import BundleSink
from trackport.domain import Experiment
from trackport.samples.synthetic_traces import synthetic_trace
from trackport.stores.base import Selection, StoreDescription
from mlflow_tracking import tracking

TRACES, SPANS = 40, 3
BASE_MS = 1_700_000_000_000
EXPERIMENT = Experiment("1", "two writers", creation_time=BASE_MS, last_update_time=BASE_MS)


def trace_bundle(path: Path) -> Path:
    sink = BundleSink(path)
    try:
        sink.begin(StoreDescription(kind="synthetic", uri="synthetic:two-writers"), Selection())
        sink.put_experiment(EXPERIMENT)
        rng = random.Random(2)
        for t in range(TRACES):
            sink.put_unit(synthetic_trace(rng, t, EXPERIMENT.experiment_id, spans=SPANS, base_ms=BASE_MS), EXPERIMENT.experiment_id)
        sink.finish({})
    finally:
        sink.close()
    return path


def trackport(*args: str, home: Path) -> subprocess.Popen:
    env = {**os.environ, "TRACKPORT_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "trackport.cli.main", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_imports_at_once_leave_every_trace_once(fresh_server, tmp_path):
    bundle = trace_bundle(tmp_path / "bundle")
    url = fresh_server.url
    writers = [trackport("import", str(bundle), url, "--workers", "4", home=tmp_path / f"machine-{i}") for i in (1, 2)]
    outcomes = [(w.wait(timeout=300), w.stdout.read(), w.stderr.read()) for w in writers]
    for code, _, err in outcomes:
        assert code == 0, err[-3000:]
    done = [int(line.split()[1]) for _, out, _ in outcomes for line in out.splitlines() if line.startswith("traces ")]
    # Both wrote some of the same traces (here 63 writes of 40 traces): the race was run.
    assert len(done) == 2 and sum(done) > TRACES, done

    with tracking(url) as client:
        experiment = client.get_experiment_by_name(EXPERIMENT.name)
        listed = client.search_traces(locations=[experiment.experiment_id], max_results=500)
        assert len(listed) == TRACES
        for info in (t.info for t in listed):
            trace = client.get_trace(info.trace_id)
            span_ids = [s.span_id for s in trace.data.spans]
            assert len(span_ids) == SPANS == len(set(span_ids)), info.trace_id
            assert len(trace.info.assessments) == 1, info.trace_id

    check = trackport("verify", str(bundle), url, home=tmp_path / "machine-1")
    assert check.wait(timeout=300) == 0, check.stdout.read()[-3000:] + check.stderr.read()[-3000:]
