"""MLflow 3 traces through tracking servers: copied server -> server and server -> bundle ->
server, re-run, and into the server that holds them under another experiment name (new
trace ids, mapped).

The traces are made by MLflow's own client (trackport.samples.trace_store, in a process of
its own): two with their spans in the server's tracking store, one with its spans in the
trace's artifact. Everything is compared through MLflow's client (search_traces and
get_trace): every span with its attributes, events and status, every assessment, tag and
metadata entry, and the original request time; run and logged model ids (which a copy
changes) are replaced by their names on both sides.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from trackport.cli.main import cli
from trackport.errors import TransientError
from trackport.opening import open_bundle_sink, open_bundle_source, open_sink, open_source
from trackport.provenance import SOURCE_UNIT_TAG
from trackport.renames import Renames
from trackport.samples.trace_store import EXPERIMENT, TRACE_NAMES
from trackport.stores.base import Selection
from trackport.stores.rest.http import RestClient
from trackport.transfer import transfer
from mlflow_tracking import tracking

EVERYTHING = Selection(include_deleted=True)
# Where a server keeps the spans of a trace: its own business (the target keeps them all in
# its tracking store), so not compared.
LOCATION_TAGS = ("mlflow.trace.spansLocation", "mlflow.artifactLocation")


@pytest.fixture(scope="module")
def servers(server_pool, target_server):
    """The source and the bundle's target from the pool; the copy goes to the session's
    shared target (the sample's experiment name is this module's own)."""
    with server_pool.taken("source", "imported") as servers:
        yield {**servers, "copied": target_server}


@pytest.fixture(scope="module")
def sample(servers) -> dict[str, str]:
    """The traces, made on the source server; their ids."""
    url = servers["source"].url
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    done = subprocess.run([sys.executable, "-m", "trackport.samples.trace_store", url], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _transfer(source_uri: str, target_uri: str, selection: Selection = EVERYTHING):
    opener = open_bundle_source if Path(source_uri).is_dir() else open_source
    sink_opener = open_bundle_sink if not target_uri.startswith("http") else open_sink
    with opener(source_uri) as source, sink_opener(target_uri) as target:
        return transfer(source, target, selection)


@pytest.fixture(scope="module")
def bundle(sample, servers, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("traces") / "bundle"
    summary = _transfer(servers["source"].url, str(path))
    assert summary.failed == 0, summary.failures
    return path


def _traces(url: str, experiment_name: str = EXPERIMENT) -> dict[str, dict]:
    """An experiment's traces as MLflow's client shows them, by trace id."""
    with tracking(url) as client:
        experiment = client.get_experiment_by_name(experiment_name)
        names = {r.info.run_id: f"<run {r.info.run_name}>" for r in client.search_runs([experiment.experiment_id])}
        names.update({m.model_id: f"<model {m.name}>" for m in client.search_logged_models([experiment.experiment_id])})
        found = {}
        for listed in client.search_traces(locations=[experiment.experiment_id], max_results=100):
            trace = client.get_trace(listed.info.trace_id)
            info = trace.info
            found[info.trace_id] = {
                "request_time": info.request_time,
                "execution_duration": info.execution_duration,
                "state": str(info.state),
                "client_request_id": info.client_request_id,
                "request_preview": info.request_preview,
                "response_preview": info.response_preview,
                "tags": {k: v for k, v in info.tags.items() if k not in LOCATION_TAGS},
                "metadata": {k: names.get(v, v) for k, v in info.trace_metadata.items()},
                "assessments": sorted((a.to_dictionary() for a in info.assessments), key=lambda a: a["assessment_id"]),
                "spans": sorted((s.to_dict() for s in trace.data.spans), key=lambda s: s["span_id"]),
                "spans_location": info.tags.get("mlflow.trace.spansLocation"),
            }
        return found


@pytest.fixture(scope="module")
def expected(sample, servers) -> dict[str, dict]:
    traces = _traces(servers["source"].url)
    assert set(traces) == {sample[n] for n in TRACE_NAMES}
    return traces


def _same(actual: dict[str, dict], expected: dict[str, dict]) -> None:
    assert sorted(actual) == sorted(expected)
    for trace_id, want in expected.items():
        got = actual[trace_id]
        for key in want:
            if key != "spans_location":
                assert got[key] == want[key], f"{trace_id}: {key} differs"


def test_the_sample_has_spans_in_both_places(sample, expected):
    """Two traces keep their spans in the tracking store, one in its artifact: both reads are used."""
    assert expected[sample["answer"]]["spans_location"] == "TRACKING_STORE"
    assert expected[sample["fails"]]["spans_location"] == "TRACKING_STORE"
    assert expected[sample["legacy"]]["spans_location"] is None
    answer = expected[sample["answer"]]
    assert len(answer["spans"]) == 4 and len(answer["assessments"]) == 3
    assert answer["metadata"]["mlflow.sourceRun"] == "<run agent-run>"
    assert expected[sample["fails"]]["metadata"]["mlflow.modelId"] == "<model agent>"
    assert len(expected[sample["legacy"]]["spans"]) == 2


@pytest.fixture(scope="module")
def copied(servers, sample):
    """The traces copied from the source server into an empty one."""
    return _transfer(servers["source"].url, servers["copied"].url)


def test_server_to_server_keeps_every_trace_and_rerun_changes_nothing(servers, sample, expected, copied):
    assert copied.failed == 0, copied.failures
    assert copied.counts["traces"]["done"] == 3
    copied = _traces(servers["copied"].url)
    _same(copied, expected)
    # The run and logged model they name are the target's copies (names compared above).
    with tracking(servers["copied"].url) as client:
        answer = client.get_trace(sample["answer"]).info
        assert client.get_run(answer.trace_metadata["mlflow.sourceRun"]).info.run_name == "agent-run"
        assert answer.trace_metadata["mlflow.sourceRun"] != sample["run"]
    # The artifact-kept spans arrive in the target's tracking store, as its client sends them.
    assert copied[sample["legacy"]]["spans_location"] == "TRACKING_STORE"

    again = _transfer(servers["source"].url, servers["copied"].url)
    assert again.failed == 0, again.failures
    assert again.counts["traces"]["done"] == 0 and again.counts["traces"]["skipped"] == 3
    assert _traces(servers["copied"].url) == copied


def test_server_to_bundle_to_server_resuming_a_cut_write(servers, sample, expected, bundle, monkeypatch):
    """The first import is cut between a trace's two calls (its spans sent, its info not):
    the next one writes that trace again and skips the others; a third changes nothing."""
    documents = sorted(p.stem for p in bundle.glob("experiments/*/units/trace/*.json"))
    assert documents == sorted(sample[n] for n in TRACE_NAMES)
    cut = sample["answer"]
    real_call = RestClient.call

    def cut_before_the_info(self, method, endpoint, **kwargs):
        if method == "POST" and endpoint == "/api/3.0/mlflow/traces" and kwargs["body"]["trace"]["trace_info"]["trace_id"] == cut:
            raise TransientError("connection reset (injected between the spans and the info)")
        return real_call(self, method, endpoint, **kwargs)

    monkeypatch.setattr(RestClient, "call", cut_before_the_info)
    first = _transfer(str(bundle), servers["imported"].url)
    monkeypatch.undo()
    assert first.counts["traces"]["done"] == 2 and first.failed == 1
    with tracking(servers["imported"].url) as client:  # the spans are there, the info is not finalized
        partial = client.get_trace(cut)
        assert len(partial.data.spans) == 4 and "mlflow.trace.infoFinalized" not in partial.info.trace_metadata

    resumed = _transfer(str(bundle), servers["imported"].url)
    assert resumed.failed == 0, resumed.failures
    assert resumed.counts["traces"]["done"] == 1 and resumed.counts["traces"]["skipped"] == 2
    imported = _traces(servers["imported"].url)
    _same(imported, expected)
    again = _transfer(str(bundle), servers["imported"].url)
    assert again.counts["traces"]["done"] == 0 and again.counts["traces"]["skipped"] == 3
    assert _traces(servers["imported"].url) == imported


def test_a_copy_within_one_server_takes_new_trace_ids_mapped(servers, sample, expected, bundle, monkeypatch):
    """The bundle imported back into its own server under another experiment name. The server
    holds every trace id (and assessment id) in the first experiment, so each copy gets a new
    id, made from the source id and the target experiment: a write cut between a trace's two
    calls is finished by the next run, and a third changes nothing. The copies name the
    copied run and logged model, carry every span and assessment (new assessment ids), name
    their source trace in trackport.source.id; the originals are untouched; verify is clean."""
    url, again = servers["source"].url, EXPERIMENT + "-again"
    renames = Renames(names=((EXPERIMENT, again),))
    cut = sample["answer"]
    real_call = RestClient.call

    def cut_before_the_info(self, method, endpoint, **kwargs):
        if method == "POST" and endpoint == "/api/3.0/mlflow/traces":
            if kwargs["body"]["trace"]["trace_info"]["tags"].get(SOURCE_UNIT_TAG) == cut:
                raise TransientError("connection reset (injected between the spans and the info)")
        return real_call(self, method, endpoint, **kwargs)

    def import_again():
        with open_bundle_source(str(bundle)) as source, open_sink(url) as sink:
            return transfer(source, sink, EVERYTHING, renames=renames)

    monkeypatch.setattr(RestClient, "call", cut_before_the_info)
    first = import_again()
    monkeypatch.undo()
    assert first.failed == 1 and first.counts["traces"]["done"] == 2, first.failures
    looked_up = []

    def counting_trace_gets(self, method, endpoint, **kwargs):
        if method == "GET" and endpoint.startswith("/api/3.0/mlflow/traces/tr-"):
            looked_up.append(endpoint)
        return real_call(self, method, endpoint, **kwargs)

    monkeypatch.setattr(RestClient, "call", counting_trace_gets)
    resumed = import_again()
    monkeypatch.undo()
    assert resumed.failed == 0, resumed.failures
    assert resumed.counts["traces"]["done"] == 1 and resumed.counts["traces"]["skipped"] == 2
    # Each trace looked up under its own id and its new one, once: put_trace takes what find_trace decided.
    assert len(looked_up) == 2 * 3 and len(set(looked_up)) == 2 * 3, looked_up

    assert _traces(url) == expected  # the originals, untouched
    copies = _traces(url, again)
    assert len(copies) == 3 and not set(copies) & set(expected)
    by_source = {trace["tags"].pop(SOURCE_UNIT_TAG): (trace_id, trace) for trace_id, trace in copies.items()}
    assert set(by_source) == set(expected)
    for source_id, want in expected.items():
        new_id, got = by_source[source_id]
        assert _without_ids(got, new_id) == _without_ids(want, source_id), source_id
        assert not {a["assessment_id"] for a in got["assessments"]} & {a["assessment_id"] for a in want["assessments"]}
    assert by_source[cut][1]["metadata"]["mlflow.sourceRun"] == "<run agent-run>"  # the copied run, in the new experiment
    assert by_source[sample["fails"]][1]["metadata"]["mlflow.modelId"] == "<model agent>"

    rerun = import_again()
    assert rerun.failed == 0 and rerun.counts["traces"]["done"] == 0 and rerun.counts["traces"]["skipped"] == 3
    assert {k: {**v, "tags": {t: x for t, x in v["tags"].items() if t != SOURCE_UNIT_TAG}} for k, v in _traces(url, again).items()} == copies
    verified = CliRunner().invoke(cli, ["verify", str(bundle), url, "--experiment", EXPERIMENT, "--rename-experiment", f"{EXPERIMENT}={again}"])
    assert verified.exit_code == 0, verified.output


def _without_ids(trace: dict, trace_id: str) -> dict:
    """A trace as _traces gives it with its own id (in each form MLflow shows it: "tr-...",
    and the OpenTelemetry id in base64) and its assessments' ids as placeholders, the
    assessments in an order of their content."""
    def content(a: dict) -> str:
        return json.dumps({k: v for k, v in a.items() if k not in ("assessment_id", "trace_id", "overrides")}, sort_keys=True)

    assessments = sorted(trace["assessments"], key=content)
    names = {trace_id: "<trace>", base64.b64encode(bytes.fromhex(trace_id[3:])).decode(): "<otel trace>"}
    names.update({a["assessment_id"]: f"<assessment {i}>" for i, a in enumerate(assessments)})
    text = json.dumps({**trace, "assessments": assessments, "spans_location": None}, sort_keys=True)
    for name, placeholder in names.items():
        text = text.replace(name, placeholder)
    return json.loads(text)


def test_verify_compares_traces_and_no_traces_leaves_them(servers, copied, tmp_path):
    """verify compares traces (a copy: none differ; a bundle without them: missing); --no-traces
    leaves traces out of an export and of verify."""
    source, target = servers["source"].url, servers["copied"].url
    runner = CliRunner()
    same = runner.invoke(cli, ["verify", source, target, "--experiment", EXPERIMENT])
    assert same.exit_code == 0, same.output
    without = tmp_path / "no-traces"
    exported = runner.invoke(cli, ["export", source, str(without), "--experiment", EXPERIMENT, "--no-traces", "--json"])
    assert exported.exit_code == 0, exported.output
    assert not list(without.glob("experiments/*/units/trace")) and list(without.glob("experiments/*/runs/*"))
    left = runner.invoke(cli, ["verify", source, str(without), "--experiment", EXPERIMENT, "--no-traces"])
    assert left.exit_code == 0, left.output
    missing = runner.invoke(cli, ["verify", source, str(without), "--experiment", EXPERIMENT])
    assert missing.exit_code != 0 and "trace" in missing.output


def test_the_bundle_keeps_spans_in_parquet_that_duckdb_rebuilds_tree_by_tree(sample, expected, bundle):
    """The export's spans are one Parquet file per experiment (format 1.5): one recursive
    DuckDB query per trace gives its tree as the source server has it, and every span's
    name, times, status and attributes."""
    import duckdb

    files = list(bundle.glob("experiments/*/spans.parquet"))
    assert len(files) == 1
    con = duckdb.connect()
    tree = """
        with recursive tree(span_id, parent_span_id, depth) as (
            select span_id, parent_span_id, 0 from read_parquet($file) where trace_id = $trace and parent_span_id is null
          union all
            select s.span_id, s.parent_span_id, t.depth + 1
            from read_parquet($file) s join tree t on s.parent_span_id = t.span_id where s.trace_id = $trace
        ) select span_id, parent_span_id, depth from tree order by span_id"""
    for trace_id, want in expected.items():
        spans = {_hex(s["span_id"]): {**s, "parent_span_id": _hex(s["parent_span_id"])} for s in want["spans"]}
        got = con.execute(tree, {"file": str(files[0]), "trace": trace_id}).fetchall()
        assert [(s, p) for s, p, _ in got] == sorted((s, x["parent_span_id"]) for s, x in spans.items()), trace_id
        for s, _, depth in got:
            parent, steps = spans[s]["parent_span_id"], 0
            while parent:
                parent, steps = spans[parent]["parent_span_id"], steps + 1
            assert depth == steps
        rows = con.execute("select span_id, name, start_time_ns, end_time_ns, status_code, attributes from read_parquet($file)"
                           " where trace_id = $trace", {"file": str(files[0]), "trace": trace_id}).fetchall()
        for span_id, name, start, end, code, attributes in rows:
            assert (name, start, end) == (spans[span_id]["name"], spans[span_id]["start_time_unix_nano"], spans[span_id]["end_time_unix_nano"])
            assert code == spans[span_id]["status"]["code"]
            assert json.loads(attributes) == spans[span_id]["attributes"]


def _hex(b64: str | None) -> str | None:
    """A span id as MLflow's span.to_dict() gives it (base64) in the hex the bundle keeps."""
    import base64

    return base64.b64decode(b64).hex() if b64 else None
