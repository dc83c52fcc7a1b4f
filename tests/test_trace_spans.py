"""Trace spans in Parquet (bundle format 1.5): one file per experiment, written by finish()
from the trace documents, read back exactly, opened by DuckDB, made whole again after a kill
between its two steps, checked by the reader and verify, and joined by bundle merge. Fast:
no server (tests/test_traces.py and test_trace_copies.py move traces through real servers)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from trackport import kinds
from trackport.bundle import BundleSink, spans as spans_module, verify_bundle
from trackport.bundle.reader import BundleSource
from trackport.domain import Experiment, Run
from trackport.stores.base import Selection, StoreDescription
from trackport.traces import TraceFields, trace_unit

SOURCE = StoreDescription(kind="rest", uri="http://source.example")
EVERYTHING = Selection(include_deleted=True)


def _span(rng: random.Random, span_id: str, parent: str | None, start: int) -> dict:
    return {
        "span_id": span_id, "parent_span_id": parent, "name": f"step {span_id[:4]} é",
        "start_time_unix_nano": start, "end_time_unix_nano": None if rng.random() < 0.1 else start + rng.randrange(10**6),
        "status": {"code": rng.choice(["STATUS_CODE_OK", "STATUS_CODE_ERROR", "STATUS_CODE_UNSET"]), "message": rng.choice(["", "boom"])},
        "attributes": {"mlflow.spanType": '"LLM"', "mlflow.spanInputs": json.dumps({"q": "x" * rng.randrange(50), "n": [1, 2.5]}),
                       "weird key \u00e9": "1.0"},
        "events": [{"name": "exception", "time_unix_nano": start + 5, "attributes": {"exception.message": "bad", "n": 3}}]
        if rng.random() < 0.3 else [],
        "links": [],
    }


def _traces(experiment_id: str, n: int, seed: int = 1) -> list:
    """n traces with a random tree of spans each (one with none)."""
    rng = random.Random(seed)
    units = []
    for t in range(n):
        spans, ids = [], []
        for s in range(0 if t == 3 else rng.randrange(1, 25)):
            span_id = f"{rng.getrandbits(64):016x}"
            spans.append(_span(rng, span_id, rng.choice(ids) if ids else None, 1_700_000_000_000_000_000 + s * 1000))
            ids.append(span_id)
        trace_id = f"tr-{rng.getrandbits(128):032x}"
        units.append(trace_unit(TraceFields(trace_id, experiment_id, request_time=1_700_000_000_000 + t, state="OK",
                                            tags={"mlflow.traceName": f"t{t}"}, spans=spans)))
    return units


class _NoContent:
    def metric_batches(self):
        return iter(())

    def artifact_files(self):
        return iter(())


def _export(path: Path, experiments: dict[str, list], *, run: str | None = None) -> None:
    """The traces of each experiment exported into a bundle at path (with run: and that run)."""
    sink = BundleSink(path)
    sink.begin(SOURCE, EVERYTHING)
    for eid, units in experiments.items():
        sink.put_experiment(Experiment(eid, f"exp {eid}"))
        if run:
            sink.put_run(Run(run, eid, run, "u", "FINISHED", 1, 2), eid, _NoContent())
        for unit in units:
            sink.put_unit(unit, eid)
    sink.finish({})
    sink.close()


def _read(path: Path) -> dict[str, dict]:
    with BundleSource(path) as source:
        found = {}
        for experiment in source.list_experiments(EVERYTHING):
            for unit in source.iter_units(kinds.TRACE, experiment):
                assert not hasattr(unit, "reason"), unit
                found[unit.unit_id] = unit.body
        return found


def _bodies(units) -> dict[str, dict]:
    return {u.unit_id: u.body for u in units}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("spans") / "b"
    experiments = {"1": _traces("1", 40), "2": _traces("2", 5, seed=2)}
    _export(path, experiments)
    return path, experiments


def test_spans_go_to_one_parquet_file_per_experiment_and_read_back_exactly(written):
    path, experiments = written
    for eid, units in experiments.items():
        table = pq.read_table(path / "experiments" / eid / "spans.parquet")
        assert table.num_rows == sum(len(u.body["spans"]) for u in units)
        assert table.schema.metadata[b"trackport.content"] == b"trace-spans"
        for unit in units:  # each document points at the file, with its count, and holds no spans
            doc = json.loads((path / "experiments" / eid / "units" / "trace" / f"{unit.unit_id}.json").read_text())
            assert "spans" not in doc["body"] and doc["body"]["span_file"] == {"file": "spans.parquet", "count": len(unit.body["spans"])}
    manifest = [json.loads(line)["path"] for line in (path / "manifest.jsonl").read_text().splitlines()]
    assert "experiments/1/spans.parquet" in manifest and "experiments/2/spans.parquet" in manifest
    assert _read(path) == {**_bodies(experiments["1"]), **_bodies(experiments["2"])}
    assert verify_bundle(path, "full").ok
    root = json.loads((path / "trackport-bundle.json").read_text())
    assert root["format_version"] == "1.6"


def test_row_groups_bound_the_memory_of_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(spans_module, "ROW_GROUP_SPANS", 50)
    units = _traces("1", 30)
    _export(tmp_path / "b", {"1": units})
    meta = pq.ParquetFile(tmp_path / "b" / "experiments" / "1" / "spans.parquet").metadata
    assert meta.num_row_groups > 3 and max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 50
    assert _read(tmp_path / "b") == _bodies(units)


TREE = """
with recursive tree(span_id, name, depth, path) as (
    select span_id, name, 0, span_id from read_parquet($file)
    where trace_id = $trace and parent_span_id is null
  union all
    select s.span_id, s.name, t.depth + 1, t.path || '/' || s.span_id
    from read_parquet($file) s join tree t on s.parent_span_id = t.span_id
    where s.trace_id = $trace
)
select span_id, depth, path from tree order by path
"""


def _tree_from(spans: list[dict]) -> list[tuple]:
    parent = {s["span_id"]: s["parent_span_id"] for s in spans}

    def path(span_id):
        return span_id if parent[span_id] is None else path(parent[span_id]) + "/" + span_id
    return sorted((s, path(s).count("/"), path(s)) for s in parent)


def test_duckdb_rebuilds_each_trace_tree_with_one_query(written):
    path, experiments = written
    file = str(path / "experiments" / "1" / "spans.parquet")
    con = duckdb.connect()
    for unit in experiments["1"]:
        got = con.execute(TREE, {"file": file, "trace": unit.unit_id}).fetchall()
        assert sorted(got, key=lambda r: r[2]) == sorted(_tree_from(unit.body["spans"]), key=lambda r: r[2]), unit.unit_id
    # attributes are JSON text (each value MLflow's own JSON text): DuckDB's JSON functions read them
    kind = con.execute("select distinct attributes->>'$.\"mlflow.spanType\"' from read_parquet($file)", {"file": file}).fetchall()
    assert kind == [('"LLM"',)]


def test_a_kill_between_the_file_and_the_documents_is_made_whole_by_the_next_finish(tmp_path, monkeypatch):
    """finish() killed after the spans file is in place but before every document points
    at it; then more traces are exported into the bundle: the next finish builds the file
    from both, once each."""
    units = _traces("1", 12)
    path = tmp_path / "b"
    real_replace, real_fsync, rewritten = spans_module.os.replace, spans_module.fsync_dir, []

    def file_in_place(directory):  # finish() put the spans file in place: the documents come next
        rewritten.append("file")
        real_fsync(directory)

    def cut(src, dst):
        if rewritten:
            rewritten.append(dst)
            if len(rewritten) == 5:  # three documents rewritten: the kill
                raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(spans_module, "fsync_dir", file_in_place)
    monkeypatch.setattr(spans_module.os, "replace", cut)
    with pytest.raises(KeyboardInterrupt):
        _export(path, {"1": units})
    monkeypatch.undo()
    docs = [json.loads(p.read_text())["body"] for p in (path / "experiments/1/units/trace").glob("*.json")]
    assert sum("span_file" in d for d in docs) == 3 and sum("spans" in d for d in docs) == 9
    more = _traces("1", 4, seed=9)
    _export(path, {"1": more})
    assert _read(path) == _bodies(units + more)
    table = pq.read_table(path / "experiments/1/spans.parquet")
    assert table.num_rows == sum(len(u.body["spans"]) for u in units + more)  # no span twice
    assert verify_bundle(path, "full").ok


def test_a_bundle_whose_spans_are_in_the_documents_is_read_as_before(tmp_path, monkeypatch):
    """Format 1.4 kept spans in each document: such a bundle is read (and verified) as it is."""
    monkeypatch.setattr(spans_module, "consolidate_all", lambda root: None)
    units = _traces("1", 6)
    _export(tmp_path / "b", {"1": units})
    assert not (tmp_path / "b/experiments/1/spans.parquet").exists()
    assert _read(tmp_path / "b") == _bodies(units)
    assert verify_bundle(tmp_path / "b", "full").ok


def _rewrite_file(path: Path, table) -> None:
    """A damaged spans file, listed in the manifest with its new size and sha256 (so only
    its content is wrong)."""
    import hashlib

    file = path / "experiments/1/spans.parquet"
    pq.write_table(table, file)
    data = file.read_bytes()
    lines = [json.loads(line) for line in (path / "manifest.jsonl").read_text().splitlines()]
    for line in lines:
        if line["path"] == "experiments/1/spans.parquet":
            line.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (path / "manifest.jsonl").write_text("".join(json.dumps(x, sort_keys=True, separators=(",", ":")) + "\n" for x in lines))


def test_a_damaged_spans_file_refuses_its_traces_and_verify_reports_it(tmp_path):
    units = _traces("1", 8)
    path = tmp_path / "b"
    _export(path, {"1": units})
    file = path / "experiments/1/spans.parquet"
    table = pq.read_table(file)
    victim = units[5]
    _rewrite_file(path, table.filter(pc.not_equal(table["span_id"], victim.body["spans"][0]["span_id"])))
    with BundleSource(path) as source:
        listed = list(source.iter_units(kinds.TRACE, Experiment("1", "exp 1")))
    refused = [u for u in listed if hasattr(u, "reason")]
    assert [u.source_id for u in refused] == [victim.unit_id] and "spans" in refused[0].reason
    report = verify_bundle(path, "full")
    assert not report.ok and any(victim.unit_id in p.message for p in report.problems)
    # a changed byte (manifest left as it was): every trace of the experiment refused
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 1
    file.write_bytes(bytes(data))
    with BundleSource(path) as source:
        listed = list(source.iter_units(kinds.TRACE, Experiment("1", "exp 1")))
    assert len(listed) == 8 and all(hasattr(u, "reason") and "sha256" in u.reason for u in listed)


def test_merge_joins_the_parts_spans_of_one_experiment(tmp_path):
    from trackport.bundle.merge import merge_parts

    first, second = _traces("1", 7), _traces("1", 6, seed=5)
    for name, units in (("p0", first), ("p1", second)):
        _export(tmp_path / name, {"1": units}, run=f"run-{name}")
    merge_parts(tmp_path / "merged", [tmp_path / "p0", tmp_path / "p1"], [frozenset({"run-p0"}), frozenset({"run-p1"})], source_uri=SOURCE.uri,
                selection=EVERYTHING.to_json(), plan_id="p", plan_path="plan.json")
    assert _read(tmp_path / "merged") == _bodies(first + second)
    assert verify_bundle(tmp_path / "merged", "full").ok
