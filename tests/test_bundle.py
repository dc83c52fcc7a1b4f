"""Bundle format v1: BundleSink -> files -> BundleSource / pyarrow / DuckDB / verify."""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trackport import kinds
from trackport.bundle import BundleSink, BundleSource, FORMAT_VERSION, inspect_bundle, verify_bundle
from trackport.bundle.layout import MANIFEST_FILE, ROOT_FILE
from trackport.bundle.manifest import write_manifest
from trackport.domain import METRIC_SCHEMA, ArtifactFile, DatasetInput, Experiment, Run
from trackport.errors import BadInputError, TargetBusyError, UnitError, UnsupportedVersionError
from trackport.kinds import Unit
from trackport.stores.base import Unreadable, Selection, StoreDescription

NAN, INF = float("nan"), float("inf")
BIG_POINTS = 200_000
SMALL_ROW_GROUP = 50_000


# ---------------------------------------------------------------- a tiny fake source
def batch(rows: list[tuple[str, int, int, float]]) -> pa.RecordBatch:
    rows = sorted(rows, key=lambda r: (r[0], r[1], r[2], -math.inf if math.isnan(r[3]) else r[3]))
    cols = list(zip(*rows)) if rows else [[], [], [], []]
    return pa.RecordBatch.from_arrays([pa.array(c, t.type) for c, t in zip(cols, METRIC_SCHEMA)], schema=METRIC_SCHEMA)


def big_history(n: int) -> list[pa.RecordBatch]:
    steps = np.arange(n, dtype=np.int64)
    out = []
    for start in range(0, n, 40_000):
        s = steps[start : start + 40_000]
        out.append(
            pa.RecordBatch.from_arrays(
                [pa.array(["loss"] * len(s)), pa.array(s), pa.array(s * 10 + 1_700_000_000_000), pa.array(np.sin(s / 100.0))],
                schema=METRIC_SCHEMA,
            )
        )
    return out


class FakeContent:
    def __init__(self, batches=(), files: dict[str, bytes] | None = None):
        self.batches = list(batches)
        self.files = files or {}

    def metric_batches(self):
        yield from self.batches

    def artifact_files(self):
        for p in sorted(self.files):
            yield ArtifactFile(p, len(self.files[p]))

    @contextmanager
    def open_artifact(self, path):
        yield io.BytesIO(self.files[path])


EXPS = [
    Experiment("1", "alpha exp ü", creation_time=1, last_update_time=2, artifact_location="file:///a", tags={"team": "ml"}),
    Experiment("2", "beta", lifecycle_stage="deleted", tags={}),
]
RUNS = {
    "aaa1": Run(
        "aaa1", "1", "first run", "alice", "FINISHED", 1000, 2000,
        params={"lr": "0.1", "long": "x" * 6000, "ключ с пробелом": "значение"},
        tags={"mlflow.runName": "first run", "t": ""},
        inputs=(DatasetInput("ds", "d1g", "local", "/data", schema='{"a":1}', profile=None, tags={"mlflow.data.context": "train"}),),
    ),
    "bbb2": Run(
        "bbb2", "1", "child", "bob", "FAILED", 500, None,
        tags={"mlflow.parentRunId": "aaa1"},
    ),
    "ccc3": Run("ccc3", "1", "no metrics", "carol", "RUNNING", None, None),
    "ddd4": Run("ddd4", "2", "deleted run", "dave", "KILLED", 10, 20, lifecycle_stage="deleted", deleted_time=30),
    "eee5": Run("eee5", "1", "big", "erin", "FINISHED", 3000, 4000),
}
CONTENT = {
    "aaa1": lambda: FakeContent(
        [
            batch([
                ("acc", 0, 1, 0.5), ("acc", 0, 1, 0.7), ("acc", 0, 2, 0.5), ("acc", 1, 3, NAN),
                ("loss", 0, 1, INF), ("loss", 1, 2, -INF), ("loss", 2, 3, -0.0),
                ("ü key with space", 5, 9, 1e308), ("ü key with space", 5, 9, 5e-324),
            ])
        ],
        {"model/MLmodel": b"run_id: aaa1\n", "model/data/deep/w.bin": bytes(range(256)) * 5000,
         "empty.txt": b"", "name with space é.txt": "héllo".encode()},
    ),
    "bbb2": lambda: FakeContent([batch([("m", -1, 0, 1.0)]), batch([]), batch([("m", 7, 0, 2.0)])], {"a/b/c/d.txt": b"d"}),
    "ccc3": lambda: FakeContent(),
    "ddd4": lambda: FakeContent([batch([("x", 0, 0, 0.0)])]),
    "eee5": lambda: FakeContent(big_history(BIG_POINTS)),
}
SOURCE = StoreDescription("mlruns", "file:///src/mlruns", "3.17.2")


def export(path: Path, row_group_rows: int = SMALL_ROW_GROUP, runs=RUNS) -> BundleSink:
    sink = BundleSink(path, row_group_rows=row_group_rows)
    sink.begin(SOURCE, Selection(include_deleted=True))
    for exp in EXPS:
        teid = sink.put_experiment(exp).target_experiment_id
        for run in runs.values():
            if run.experiment_id == exp.experiment_id:
                assert sink.find_run(run, teid) is None
                sink.put_run(run, teid, CONTENT[run.run_id]())
                assert sink.find_run(run, teid) == run.run_id
        sink.finish_experiment(exp, teid)
    (sink.state_dir() / "ledger.jsonl").write_text(
        json.dumps({"kind": "run", "source_id": "aaa1", "name": "first run", "outcome": "done", "reason": None,
                    "metric_points": 9, "artifact_files": 4, "artifact_bytes": 1, "losses": [], "at": "2026-01-01T00:00:00Z"}) + "\n"
    )
    sink.finish({})
    return sink


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("b") / "bundle"
    export(path)
    return path


@pytest.fixture
def copy(bundle, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def all_points(batches) -> list[tuple]:
    out = []
    for b in batches:
        assert b.schema.equals(METRIC_SCHEMA)
        out += list(zip(*(b.column(i).to_pylist() for i in range(4))))
    return out


def same_points(a: list[tuple], b: list[tuple]) -> bool:
    def norm(p):
        k, s, t, v = p
        return (k, s, t, "nan" if math.isnan(v) else v, math.copysign(1, v) if not math.isnan(v) else 0)

    return [norm(p) for p in a] == [norm(p) for p in b]


# ---------------------------------------------------------------- round trip
def test_roundtrip_field_by_field_and_point_by_point(bundle):
    src = BundleSource(bundle)
    assert src.source_description() == SOURCE
    everything = Selection(include_deleted=True)
    exps = list(src.list_experiments(everything))
    assert exps == EXPS
    for exp in exps:
        runs = list(src.iter_runs(exp, everything))
        expected = sorted((r for r in RUNS.values() if r.experiment_id == exp.experiment_id),
                          key=lambda r: (r.start_time is None, r.start_time or 0))
        assert runs == expected  # dataclass equality: every field, params, tags, inputs
        for run in runs:
            content = CONTENT[run.run_id]()
            assert same_points(all_points(src.iter_metric_batches(run)), all_points(content.batches))
            arts = list(src.list_artifacts(run))
            assert arts == list(content.artifact_files())
            for a in arts:
                with src.open_artifact(run, a.path) as f:
                    assert f.read() == content.files[a.path]
    root = json.loads((bundle / ROOT_FILE).read_text())
    assert root["format_version"] == FORMAT_VERSION
    assert root["counts"] == {"experiments": 2, "runs": 5, "metric_points": 9 + 2 + 1 + BIG_POINTS,
                              "artifact_files": 5, "artifact_bytes": sum(len(v) for r in CONTENT.values() for v in r().files.values())}
    run_json = json.loads((bundle / "experiments/1/runs/ccc3/run.json").read_text())
    assert run_json["metrics"] is None and not (bundle / "experiments/1/runs/ccc3/metrics.parquet").exists()


def test_selection(bundle):
    src = BundleSource(bundle)
    assert [e.experiment_id for e in src.list_experiments(Selection())] == ["1"]
    assert [e.name for e in src.list_experiments(Selection(experiments=("beta",), include_deleted=True))] == ["beta"]
    with pytest.raises(BadInputError, match="nope"):
        list(src.list_experiments(Selection(experiments=("nope",))))
    exp1 = EXPS[0]
    assert [r.run_id for r in src.iter_runs(exp1, Selection())] == ["bbb2", "aaa1", "eee5", "ccc3"]
    assert [r.run_id for r in src.iter_runs(exp1, Selection(run_ids=("aaa1",)))] == ["aaa1"]
    assert list(src.iter_runs(EXPS[1], Selection())) == []


def test_parquet_is_plain_for_pyarrow_and_duckdb(bundle):
    duckdb = pytest.importorskip("duckdb")
    table = pq.read_table(bundle / "experiments/1/runs/aaa1/metrics.parquet")
    assert table.column_names == ["run_id", "key", "step", "timestamp", "value"]
    assert pa.types.is_dictionary(table.schema.field("key").type)
    values = table.column("value").to_pylist()
    assert math.isnan(values[3]) and INF in values and -INF in values
    assert set(table.column("run_id").to_pylist()) == {"aaa1"}
    glob = f"{bundle}/experiments/*/runs/*/metrics.parquet"
    total = duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall()[0][0]
    assert total == 9 + 2 + 1 + BIG_POINTS
    rows = duckdb.sql(
        f"select key, step, timestamp, value from read_parquet('{glob}') where run_id = 'aaa1'"
    ).fetchall()
    # Compared in one order of Python's: duckdb 1.x (what Python 3.10 gets) and 2.x order these points differently.
    assert same_points(sorted(rows, key=repr), sorted(all_points(CONTENT["aaa1"]().batches), key=repr))
    s = duckdb.sql(f"select count(*), sum(step) from read_parquet('{glob}') where run_id='eee5' and key='loss'").fetchall()[0]
    assert s == (BIG_POINTS, BIG_POINTS * (BIG_POINTS - 1) // 2)


def test_big_history_uses_bounded_row_groups(bundle):
    pf = pq.ParquetFile(bundle / "experiments/1/runs/eee5/metrics.parquet")
    assert pf.metadata.num_rows == BIG_POINTS
    assert pf.num_row_groups == math.ceil(BIG_POINTS / SMALL_ROW_GROUP)
    assert all(pf.metadata.row_group(i).num_rows <= SMALL_ROW_GROUP for i in range(pf.num_row_groups))
    assert pf.schema_arrow.metadata[b"trackport.format_version"] == FORMAT_VERSION.encode()
    assert pf.metadata.row_group(0).sorting_columns


# ---------------------------------------------------------------- verify
@pytest.mark.parametrize("level", ["fast", "complete", "full"])
def test_verify_fresh_bundle_passes(bundle, level):
    report = verify_bundle(bundle, level)
    assert report.ok, report.problems
    assert report.files_checked > 10


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "rel",
    [
        "experiments/1/experiment.json",
        "experiments/1/runs/aaa1/run.json",
        "experiments/1/runs/eee5/metrics.parquet",
        "experiments/1/runs/aaa1/artifacts/model/data/deep/w.bin",
        "transfer/ledger.jsonl",
        ROOT_FILE,
    ],
)
def test_verify_full_catches_one_flipped_byte(copy, rel):
    flip_byte(copy / rel)
    report = verify_bundle(copy, "full")
    assert not report.ok
    assert rel in {p.path for p in report.problems}, report.problems


@pytest.mark.parametrize("level", ["fast", "complete", "full"])
@pytest.mark.parametrize("rel", ["experiments/1/runs/bbb2/artifacts/a/b/c/d.txt", "experiments/1/runs/aaa1/artifacts/empty.txt",
                                 "experiments/2/experiment.json"])
def test_verify_catches_removed_file_at_every_level(copy, level, rel):
    (copy / rel).unlink()
    report = verify_bundle(copy, level)
    assert [(p.path, "missing" in p.message) for p in report.problems] == [(rel, True)]


def test_verify_complete_catches_extra_file(copy):
    (copy / "experiments/1/runs/aaa1/artifacts/sneaky.txt").write_text("x")
    assert verify_bundle(copy, "fast").ok
    for level in ("complete", "full"):
        assert [p.path for p in verify_bundle(copy, level).problems] == ["experiments/1/runs/aaa1/artifacts/sneaky.txt"]


@pytest.mark.parametrize("level", ["fast", "complete", "full"])
def test_newer_major_version_is_refused_everywhere(copy, level):
    root = json.loads((copy / ROOT_FILE).read_text())
    root["format_version"] = "2.0"
    (copy / ROOT_FILE).write_text(json.dumps(root))
    report = verify_bundle(copy, level)
    assert len(report.problems) == 1 and report.problems[0].path == ROOT_FILE
    assert "2.0 is newer" in report.problems[0].message and "upgrade trackport" in report.problems[0].message
    with pytest.raises(UnsupportedVersionError, match=r"trackport-bundle.json.*2\.0 is newer.*upgrade trackport"):
        BundleSource(copy)


def test_newer_minor_version_and_unknown_fields_are_read(copy):
    root = json.loads((copy / ROOT_FILE).read_text())
    root["format_version"] = "1.7"
    root["future_field"] = {"x": 1}
    (copy / ROOT_FILE).write_text(json.dumps(root))
    run_json = copy / "experiments/1/runs/bbb2/run.json"
    doc = json.loads(run_json.read_text())
    doc["info"]["new_info"] = 1
    doc["new_section"] = []
    run_json.write_text(json.dumps(doc))
    write_manifest(copy)  # the reader checks every file against the manifest
    src = BundleSource(copy)
    assert RUNS["bbb2"] in list(src.iter_runs(EXPS[0], Selection()))


# ---------------------------------------------------------------- reader refusals
def test_reader_refuses_incomplete_missing_and_foreign(copy, tmp_path):
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(BadInputError, match=r"incomplete \(no manifest.jsonl\).*re-run the export") as e:
        BundleSource(copy)
    assert "\n" not in str(e.value)
    report = verify_bundle(copy, "fast")
    assert [p.path for p in report.problems] == [MANIFEST_FILE]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hi")
    with pytest.raises(BadInputError, match="not a trackport bundle"):
        BundleSource(foreign)
    with pytest.raises(BadInputError, match="not a trackport bundle"):
        verify_bundle(foreign)
    with pytest.raises(BadInputError, match="does not exist"):
        BundleSource(tmp_path / "nowhere")
    with pytest.raises(BadInputError, match="does not exist"):
        verify_bundle(tmp_path / "nowhere")


def test_invalid_run_json_is_a_unit_failure_naming_the_file(copy):
    bad = copy / "experiments/1/runs/bbb2/run.json"
    doc = json.loads(bad.read_text())
    doc["info"]["start_time"] = "yesterday"
    bad.write_text(json.dumps(doc))
    src = BundleSource(copy)
    *valid, unreadable = src.iter_runs(EXPS[0], Selection())
    assert [run.run_id for run in valid] == ["aaa1", "eee5", "ccc3"]  # the valid runs still come
    assert isinstance(unreadable, Unreadable) and unreadable.source_id == "bbb2"
    assert "bbb2/run.json" in unreadable.reason
    assert any(p.path.endswith("bbb2/run.json") for p in verify_bundle(copy, "full").problems)


def test_artifact_path_escape_is_refused(copy, tmp_path):
    run_json = copy / "experiments/1/runs/bbb2/run.json"
    original = run_json.read_text()
    doc = json.loads(original)
    doc["artifacts"].append({"path": "../evil", "size": 1, "sha256": "0" * 64})
    run_json.write_text(json.dumps(doc))
    write_manifest(copy)  # a hostile bundle has a manifest that agrees with it
    src = BundleSource(copy)
    run = RUNS["bbb2"]
    with pytest.raises(UnitError, match="evil"):
        list(src.list_artifacts(run))
    for bad in ["../evil", "/etc/passwd", "a\\b", "C:/x", "a/\0b", "a//b", "./a"]:
        with pytest.raises(UnitError):
            src.open_artifact(run, bad)
    # a symlink inside artifacts/ pointing outside is refused too
    run_json.write_text(original)
    write_manifest(copy)
    secret = tmp_path / "secret.txt"
    secret.write_text("d")
    link = copy / "experiments/1/runs/bbb2/artifacts/a/b/c/d.txt"
    link.unlink()
    link.symlink_to(secret)
    with pytest.raises(UnitError, match="symbolic link"):
        BundleSource(copy).open_artifact(run, "a/b/c/d.txt")
    assert any("not a regular file" in p.message for p in verify_bundle(copy, "fast").problems)


def test_sink_refuses_escaping_artifact_and_leaves_nothing(tmp_path):
    sink = BundleSink(tmp_path / "b")
    sink.begin(SOURCE, Selection())
    teid = sink.put_experiment(EXPS[0]).target_experiment_id
    run = RUNS["bbb2"]
    with pytest.raises(UnitError, match="evil"):
        sink.put_run(run, teid, FakeContent([batch([("m", 0, 0, 1.0)])], {"ok.txt": b"1", "../evil": b"x"}))
    assert not (tmp_path / "b/experiments/1/runs/evil").exists()
    assert not (tmp_path / "b/experiments/1/evil").exists() and not (tmp_path / "evil").exists()
    assert os.listdir(tmp_path / "b/experiments/1/runs") == []  # no half-written run, no temp dir
    assert sink.find_run(run, teid) is None


# ---------------------------------------------------------------- writer lifecycle
def test_same_content_gives_same_manifest(bundle, tmp_path):
    export(tmp_path / "again")
    a = (bundle / MANIFEST_FILE).read_text().splitlines()
    b = (tmp_path / "again" / MANIFEST_FILE).read_text().splitlines()
    assert [json.loads(x)["path"] for x in a] == [json.loads(x)["path"] for x in b]
    differ = {json.loads(x)["path"] for x, y in zip(a, b) if x != y}
    assert differ <= {ROOT_FILE, "transfer/ledger.jsonl", "transfer/transfers.jsonl"}
    paths = [json.loads(x)["path"] for x in a]
    assert paths == sorted(paths) and MANIFEST_FILE not in paths and ROOT_FILE in paths


def test_begin_refuses_another_source_and_foreign_dir(bundle, tmp_path):
    other = StoreDescription(kind="sqlite", uri="sqlite:///elsewhere.db")
    before = sorted(p.name for p in bundle.rglob("*"))
    with pytest.raises(BadInputError, match="export to a new path"):
        BundleSink(bundle).begin(other, Selection())
    assert sorted(p.name for p in bundle.rglob("*")) == before
    # The same source reopens a complete bundle without touching it before finish().
    manifest = (bundle / MANIFEST_FILE).read_bytes()
    BundleSink(bundle).begin(SOURCE, Selection())
    assert (bundle / MANIFEST_FILE).read_bytes() == manifest
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    with pytest.raises(BadInputError, match="not empty"):
        BundleSink(foreign).begin(SOURCE, Selection())
    assert os.listdir(foreign) == ["x"]
    empty = tmp_path / "empty"
    empty.mkdir()
    BundleSink(empty).begin(SOURCE, Selection())
    assert (empty / ROOT_FILE).exists()


def test_interrupted_export_resumes(tmp_path):
    path = tmp_path / "b"
    sink = BundleSink(path)
    sink.begin(SOURCE, Selection())
    teid = sink.put_experiment(EXPS[0]).target_experiment_id
    sink.put_run(RUNS["aaa1"], teid, CONTENT["aaa1"]())
    (path / "experiments/1/runs/.bbb2.tmp-dead").mkdir()  # what a kill mid-run leaves
    (path / "experiments/1/runs/.bbb2.tmp-dead/run.json").write_text("{")
    with pytest.raises(TargetBusyError, match="being written by another trackport"):
        BundleSink(path)  # one writer at a time
    sink.close()  # as a kill would: the lock is the kernel's, released with the process
    with pytest.raises(BadInputError, match="incomplete"):
        BundleSource(path)
    other = BundleSink(path)
    with pytest.raises(BadInputError, match="holds an export of 'file:///src/mlruns'"):
        other.begin(StoreDescription("sqlite", "sqlite:///other.db"), Selection())
    other.close()
    sink2 = BundleSink(path)
    sink2.begin(SOURCE, Selection())
    assert not (path / "experiments/1/runs/.bbb2.tmp-dead").exists()
    assert sink2.find_run(RUNS["aaa1"], teid) == "aaa1"
    assert sink2.find_run(RUNS["bbb2"], teid) is None
    sink2.put_run(RUNS["bbb2"], teid, CONTENT["bbb2"]())
    sink2.finish({})
    assert verify_bundle(path, "full").ok
    assert json.loads((path / ROOT_FILE).read_text())["counts"]["runs"] == 2


def test_concurrent_put_run(tmp_path):
    path = tmp_path / "b"
    sink = BundleSink(path)
    sink.begin(SOURCE, Selection())
    teid = sink.put_experiment(EXPS[0]).target_experiment_id
    errors = []

    def work(i):
        try:
            run = Run(f"r{i:03d}", "1", f"run {i}", "u", "FINISHED", i, i + 1)
            files = {f"dir{i % 3}/f{j}.txt": f"{i}-{j}".encode() * 1000 for j in range(3)}
            res = sink.put_run(run, teid, FakeContent([batch([("k", s, s, float(i)) for s in range(100)])], files))
            assert res.metric_points == 100 and res.artifact_files == 3
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    sink.finish({})
    assert verify_bundle(path, "full").ok
    src = BundleSource(path)
    assert [r.run_id for r in src.iter_runs(EXPS[0], Selection())] == [f"r{i:03d}" for i in range(24)]


def test_an_export_killed_before_its_root_descriptor_is_taken_up_again(tmp_path):
    """What a kill between opening the sink and writing the root leaves (the lock, a temp
    file of the root) is not "a non-empty directory that is not a bundle"."""
    path = tmp_path / "b"
    (path / "transfer").mkdir(parents=True)
    (path / "transfer" / "lock").write_text("")
    (path / ".trackport-bundle.json.tmp-0123456789ab").write_text("{")
    with BundleSink(path) as sink:
        sink.begin(SOURCE, Selection())
        teid = sink.put_experiment(EXPS[0]).target_experiment_id
        sink.put_run(RUNS["aaa1"], teid, CONTENT["aaa1"]())
        sink.finish({})
    assert not (path / ".trackport-bundle.json.tmp-0123456789ab").exists()
    assert verify_bundle(path, "full").ok
    (tmp_path / "c" / "experiments").mkdir(parents=True)  # anything else: refused, untouched
    with pytest.raises(BadInputError, match="not empty"):
        BundleSink(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["experiments"]


# ---------------------------------------------------------------- units of generic kinds
NOTE = kinds.UnitKind("note", "notes", depends_on=("experiment", "run"),
                      schema={"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}})
NOTES = [
    Unit("note", "n2", "1", "second", {"run": "aaa1"}, {"text": "on a run", "extra": [1, {"ü": None}]}),
    Unit("note", "n1", "1", "first", {}, {"text": "about the experiment"}),
    Unit("note", "n3", "2", "", {}, {"text": "in the deleted experiment"}),
]


@pytest.fixture
def note_kind():
    kinds.register(NOTE)
    yield NOTE
    kinds.unregister(NOTE.name)


def export_with_notes(path: Path) -> None:
    sink = BundleSink(path)
    sink.begin(SOURCE, Selection(include_deleted=True))
    for exp in EXPS:
        teid = sink.put_experiment(exp).target_experiment_id
        for run in RUNS.values():
            if run.experiment_id == exp.experiment_id and run.run_id != "eee5":
                sink.put_run(run, teid, CONTENT[run.run_id]())
        for note in NOTES:
            if note.experiment_id == exp.experiment_id:
                assert sink.find_unit(note, teid) is None
                assert sink.put_unit(note, teid).target_id == note.unit_id
                assert sink.find_unit(note, teid) == note.unit_id
    sink.finish({})
    sink.close()


def test_units_round_trip_through_a_bundle(tmp_path, note_kind):
    path = tmp_path / "b"
    export_with_notes(path)
    listed = [json.loads(line)["path"] for line in (path / MANIFEST_FILE).read_text().splitlines()]
    assert {"experiments/1/units/note/n1.json", "experiments/1/units/note/n2.json", "experiments/2/units/note/n3.json"} <= set(listed)
    root = json.loads((path / ROOT_FILE).read_text())
    assert root["counts"]["notes"] == 3 and root["counts"]["runs"] == 4
    assert verify_bundle(path, "full").ok, verify_bundle(path, "full").problems
    src = BundleSource(path)
    assert src.unit_kinds() == ["note"]
    assert list(src.iter_units(NOTE, EXPS[0])) == [NOTES[1], NOTES[0]]  # by id
    assert list(src.iter_units(NOTE, EXPS[1])) == [NOTES[2]]
    assert list(src.iter_units(kinds.UnitKind("gadget", "gadgets"), EXPS[0])) == []
    # The same units written again: the same bytes (no time of export in a document).
    before = (path / "experiments/1/units/note/n2.json").read_bytes()
    export_with_notes(tmp_path / "again")
    assert (tmp_path / "again/experiments/1/units/note/n2.json").read_bytes() == before


def test_put_unit_refuses_what_a_reader_would_refuse_and_leaves_nothing(tmp_path, note_kind):
    sink = BundleSink(tmp_path / "b")
    sink.begin(SOURCE, Selection())
    teid = sink.put_experiment(EXPS[0]).target_experiment_id
    bad = [
        (Unit("note", "n1", "1", body={"text": 5}), "not valid for a bundle"),
        (Unit("note", "n1", "1", refs={"run": 7}, body={"text": "x"}), "not valid for a bundle"),
        (Unit("note", "n1", "1", body={"text": "x", "v": math.nan}), "cannot be written as JSON"),
        (Unit("note", "", "1", body={"text": "x"}), "is empty"),
        (Unit("no/te", "n1", "1", body={"text": "x"}), "cannot be used as a directory name"),
        (Unit("run", "n1", "1", body={}), "not a unit of a generic kind"),
    ]
    for unit, words in bad:
        with pytest.raises(UnitError, match=words):
            sink.put_unit(unit, teid)
    assert not (tmp_path / "b/experiments/1/units").exists()
    # Any id is a file name of its own inside its kind's folder (percent-encoded): none leads out.
    for unit_id, name in (("../n1", "%2E.%2Fn1"), ("churn/3", "churn%2F3"), ("x" * 300, None)):
        sink.put_unit(Unit("note", unit_id, "1", body={"text": "x"}), teid)
        written = [p.name for p in (tmp_path / "b/experiments/1/units/note").iterdir() if p.name.startswith((name or "x")[:3])]
        assert len(written) == 1 and len(written[0]) <= 205, written
        assert name is None or written == [name + ".json"]
        (tmp_path / "b/experiments/1/units/note" / written[0]).unlink()
    sink.close()


def test_a_kind_this_trackport_does_not_know_is_read_and_verified_not_refused(tmp_path, note_kind):
    path = tmp_path / "b"
    export_with_notes(path)
    kinds.unregister(NOTE.name)  # a reader that does not know notes
    assert verify_bundle(path, "full").ok
    src = BundleSource(path)
    assert src.unit_kinds() == ["note"]
    unknown = kinds.kind("note")
    assert unknown.schema is None
    assert [u.unit_id for u in src.iter_units(unknown, EXPS[0])] == ["n1", "n2"]  # bodies not checked
    kinds.register(NOTE)


def test_a_damaged_unit_is_unreadable_and_reported_by_verify(tmp_path, note_kind):
    path = tmp_path / "b"
    export_with_notes(path)
    doc = path / "experiments/1/units/note/n1.json"
    doc.write_text(doc.read_text().replace('"text": "about the experiment"', '"text": 5'))
    write_manifest(path)
    src = BundleSource(path)
    first, second = src.iter_units(NOTE, EXPS[0])
    assert isinstance(first, Unreadable) and (first.kind, first.source_id) == ("note", "n1")
    assert "n1.json" in first.reason and "body does not match" in first.reason
    assert second == NOTES[0]
    problems = verify_bundle(path, "full").problems
    assert [(p.path, p.unit) for p in problems] == [("experiments/1/units/note/n1.json", ("note", "n1"))]
    assert verify_bundle(path, "fast").ok  # sizes and the manifest agree: only the document is wrong


def test_inspect_reports_selection_producer_deleted_and_counts(tmp_path, note_kind):
    path = tmp_path / "b"
    export_with_notes(path)
    info = inspect_bundle(path)
    assert info["selection"]["include_deleted"] is True
    assert info["producer"]["name"] == "trackport"
    assert info["deleted"] == {"experiments": 1, "runs": 1}
    assert info["counts"]["notes"] == 3 and info["counts"]["runs"] == 4
    assert [e["runs"] for e in info["experiments"]] == [3, 1]
    assert info["format_version"] == FORMAT_VERSION


def test_an_interrupted_unit_write_leaves_no_document(tmp_path, note_kind):
    path = tmp_path / "b"
    sink = BundleSink(path)
    sink.begin(SOURCE, Selection())
    teid = sink.put_experiment(EXPS[0]).target_experiment_id
    sink.put_unit(NOTES[1], teid)
    stale = path / "experiments/1/units/note/.n2.json.tmp-0123456789ab"
    stale.write_text("{")  # what a kill during the write leaves
    assert sink.find_unit(NOTES[0], teid) is None
    sink.close()
    sink = BundleSink(path)
    sink.begin(SOURCE, Selection())
    assert not stale.exists()
    sink.finish({})
    sink.close()
    assert verify_bundle(path, "full").ok


def test_finish_keeps_a_newer_minor_version_and_raises_an_older_one(copy):
    for version, expected in (("1.0", FORMAT_VERSION), ("1.99", "1.99")):
        root = json.loads((copy / ROOT_FILE).read_text())
        root["format_version"] = version
        (copy / ROOT_FILE).write_text(json.dumps(root))
        write_manifest(copy)
        sink = BundleSink(copy)
        sink.begin(SOURCE, Selection())
        sink.finish({})
        sink.close()
        assert json.loads((copy / ROOT_FILE).read_text())["format_version"] == expected
