"""Traces through real servers at some scale: an import and an export SIGKILLed half-way and
run again (every trace once, spans once, verify clean; a finished copy re-run changes
nothing, seen through MLflow's client), and the trace selection (--trace-filter,
--traces-since, unselected traces counted as not selected).

One server from the pool, loaded by the killed import of a synthetic bundle (48 traces of
8 spans in one experiment: made without a server, in a second), is the source of the rest.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_resume import _trackport_command, kill_and_rerun

from trackport import kinds
from trackport.bundle import BundleSink, verify_bundle
from trackport.bundle.reader import BundleSource
from trackport.cli.main import cli
from trackport.domain import Experiment
from trackport.opening import open_sink
from trackport.samples.synthetic_traces import synthetic_spans
from trackport.stores.base import Selection, StoreDescription
from trackport.traces import TraceFields, trace_unit

EXPERIMENT = "trace-copies"
TRACES = 48
SPANS = 8
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z; trace t is requested t hours later
SEED = 20261203


def _trace(rng: random.Random, t: int):
    """Trace t as MLflow's client makes one (each span names its trace in mlflow.traceRequestId,
    which a server's span intake adds where a client did not)."""
    trace_id = f"tr-{rng.getrandbits(128):032x}"
    spans = synthetic_spans(rng, trace_id, (BASE_MS + t * 3_600_000) * 1_000_000, SPANS, label=str(t))
    fields = TraceFields(trace_id, "1", request_time=BASE_MS + t * 3_600_000, execution_duration=5,
                         state="OK" if t % 3 else "ERROR", request_preview=f"q{t}", response_preview="a",
                         tags={"mlflow.traceName": f"t{t}", "group": "even" if t % 2 == 0 else "odd"}, spans=spans)
    return trace_unit(fields)


@pytest.fixture(scope="module")
def trace_bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trace-copies") / "bundle"
    rng = random.Random(SEED)
    sink = BundleSink(path)
    sink.begin(StoreDescription(kind="rest", uri="http://synthetic.example"), Selection(include_deleted=True))
    sink.put_experiment(Experiment("1", EXPERIMENT))
    for t in range(TRACES):
        sink.put_unit(_trace(rng, t), "1")
    sink.finish({})
    sink.close()
    return path


def _bundle_traces(bundle: Path) -> dict[str, int]:
    """trace id -> how many spans the bundle holds of it (duplicates counted)."""
    table = pq.read_table(next(bundle.glob("experiments/*/spans.parquet")), columns=["trace_id", "span_id"]).to_pylist()
    counts: dict[str, int] = {}
    for row in table:
        counts[row["trace_id"]] = counts.get(row["trace_id"], 0) + 1
    assert len({(r["trace_id"], r["span_id"]) for r in table}) == len(table), "a span twice"
    return counts


def _server_traces(url: str) -> dict[str, dict]:
    """The experiment's traces through MLflow's client: info and spans, by trace id."""
    import mlflow

    client = mlflow.MlflowClient(url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found: dict[str, dict] = {}
    token = None
    while True:
        page = client.search_traces(locations=[experiment.experiment_id], max_results=500, page_token=token)
        for trace in page:
            assert trace.info.trace_id not in found, f"{trace.info.trace_id} listed twice"
            found[trace.info.trace_id] = {"info": trace.info.to_dict(), "spans": sorted(s.to_dict()["span_id"] for s in trace.data.spans)}
        token = page.token
        if not token:
            return found


def _counts(result) -> dict:
    """The traces' counts of a CLI run's --json summary (the output's last line)."""
    return json.loads(result.stdout)["counts"]["traces"]


def _state_dir(url: str) -> Path:
    sink = open_sink(url)
    try:
        return Path(sink.state_dir())
    finally:
        sink.close()


def _ledger_has_a_trace(state: Path):
    def check() -> bool:
        return any(b'"trace"' in p.read_bytes() for p in state.glob("ledger*.jsonl")) if state.is_dir() else False
    return check


@pytest.fixture(scope="module")
def loaded(server_pool, trace_bundle, tmp_path_factory):
    """The bundle imported into a server of the pool, SIGKILLed half-way a few times, then
    run to its end: (server, attempts, log, the final summary)."""
    server = server_pool.take()
    log = tmp_path_factory.mktemp("trace-copies-log") / "attempts.log"
    command = _trackport_command() + ["import", str(trace_bundle), server.url]
    outcomes = kill_and_rerun(command, random.Random(SEED), kills=2, window=(0.2, 0.8), log=log,
                              started=_ledger_has_a_trace(_state_dir(server.url)))
    result = CliRunner().invoke(cli, ["import", str(trace_bundle), server.url, "--json"])
    yield server, outcomes, log, result
    server_pool.give_back(server)


def test_an_import_killed_half_way_resumes_with_every_trace_once(loaded, trace_bundle):
    server, outcomes, log, result = loaded
    assert outcomes.count("killed") >= 1, (outcomes, log.read_text()[-3000:])
    assert result.exit_code == 0, result.output[-3000:]
    summary = _counts(result)
    assert summary["failed"] == 0 and summary["done"] < TRACES, summary  # the rest were there: skipped
    traces = _server_traces(server.url)
    assert {t: len(v["spans"]) for t, v in traces.items()} == _bundle_traces(trace_bundle)
    verified = CliRunner().invoke(cli, ["verify", str(trace_bundle), server.url, "--level", "full"])
    assert verified.exit_code == 0, verified.output[-3000:]
    # the finished import again: nothing written, nothing changed
    again = CliRunner().invoke(cli, ["import", str(trace_bundle), server.url, "--json"])
    assert again.exit_code == 0, again.output[-3000:]
    counts = _counts(again)
    assert counts["done"] == 0 and counts["skipped"] == TRACES, counts
    assert _server_traces(server.url) == traces


def test_an_export_killed_half_way_resumes_with_every_trace_once(loaded, trace_bundle, tmp_path):
    server = loaded[0]
    bundle = tmp_path / "exported"
    command = _trackport_command() + ["export", server.url, str(bundle)]
    log = tmp_path / "attempts.log"
    outcomes = kill_and_rerun(command, random.Random(SEED + 1), kills=2, window=(0.1, 0.6), log=log,
                              started=_ledger_has_a_trace(bundle / "transfer"), done=lambda: (bundle / "manifest.jsonl").exists())
    assert outcomes.count("killed") >= 1, (outcomes, log.read_text()[-3000:])
    if not (bundle / "manifest.jsonl").exists():
        final = CliRunner().invoke(cli, ["export", server.url, str(bundle)])
        assert final.exit_code == 0, final.output[-3000:]
    assert verify_bundle(bundle, "full").ok
    assert _bundle_traces(bundle) == _bundle_traces(trace_bundle)
    assert len(list(bundle.glob("experiments/*/units/trace/*.json"))) == TRACES
    verified = CliRunner().invoke(cli, ["verify", server.url, str(bundle), "--level", "full"])
    assert verified.exit_code == 0, verified.output[-3000:]


def _documents(bundle: Path) -> set[str]:
    return {p.stem for p in bundle.glob("experiments/*/units/trace/*.json")}


def test_trace_filter_and_traces_since_take_some_traces_and_count_the_rest(loaded, trace_bundle, tmp_path):
    """--trace-filter goes to the server's v3 search, --traces-since is the trace's request
    time: the traces left out are counted as not selected, and verify with the same options
    is clean. Trace t is requested t hours after BASE_MS; even t are tagged group=even."""
    server = loaded[0]
    by_name = {}
    with BundleSource(trace_bundle) as source:
        experiment = next(iter(source.list_experiments(Selection(include_deleted=True))))
        by_name = {u.name: u.unit_id for u in source.iter_units(kinds.TRACE, experiment)}
    cut = TRACES * 3 // 4  # traces cut.. are requested at or after --traces-since
    since = BASE_MS + cut * 3_600_000
    options = ["--trace-filter", "tag.group = 'even'", "--traces-since", str(since)]
    bundle = tmp_path / "some"
    exported = CliRunner().invoke(cli, ["export", server.url, str(bundle), "--json", *options])
    assert exported.exit_code == 0, exported.output[-3000:]
    counts = _counts(exported)
    taken = {by_name[f"t{t}"] for t in range(cut, TRACES, 2)}
    assert (counts["done"], counts["not_selected"], counts["failed"]) == (len(taken), TRACES - len(taken), 0), counts
    assert _documents(bundle) == taken
    assert sum(_bundle_traces(bundle).values()) == len(taken) * SPANS
    verified = CliRunner().invoke(cli, ["verify", server.url, str(bundle), *options])
    assert verified.exit_code == 0, verified.output[-3000:]
    missing = CliRunner().invoke(cli, ["verify", server.url, str(bundle)])  # without them: the others are missing
    assert missing.exit_code != 0

    # --traces-since from a bundle (any source): by each trace's request time
    later = tmp_path / "later"
    copied = CliRunner().invoke(cli, ["export", str(trace_bundle), str(later), "--json", "--traces-since", str(since)])
    assert copied.exit_code == 0, copied.output[-3000:]
    assert _counts(copied)["not_selected"] == cut and _documents(later) == {by_name[f"t{t}"] for t in range(cut, TRACES)}


def test_a_trace_filter_the_source_cannot_apply_is_refused_before_writing(loaded, trace_bundle, tmp_path):
    server = loaded[0]
    for source, filter_string, says in ((str(trace_bundle), "tag.group = 'even'", "only a tracking server"),
                                        (server.url, "tag.group === nonsense", "the server refused it")):
        target = tmp_path / "refused"
        refused = CliRunner().invoke(cli, ["export", source, str(target), "--trace-filter", filter_string])
        assert refused.exit_code == 3, refused.output[-3000:]  # bad input
        assert says in refused.output and not target.exists()
