"""The bundle index and validator the reader (import) and verify share: one strict parser
of manifest lines and documents, problems that say which unit they cost, verify reporting
every problem where the reader stops at the first."""
from __future__ import annotations

import io
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pytest

from trackport.bundle import BundleSink, BundleSource, verify_bundle
from trackport.bundle.documents import (
    dumps,
    experiment_doc,
    experiment_from_doc,
    loads,
    run_doc,
    run_from_doc,
    unit_doc,
    unit_from_doc,
)
from trackport.bundle.index import Problem, read_index, unit_of
from trackport.bundle.layout import MANIFEST_FILE, ROOT_FILE
from trackport.bundle.manifest import parse_line, write_manifest
from trackport.domain import METRIC_SCHEMA, ArtifactFile, DatasetInput, Experiment, Run
from trackport.errors import BadInputError, UnitError
from trackport.kinds import Unit
from trackport.stores.base import Selection, StoreDescription

SHA = "0" * 64
EXPERIMENT = Experiment("1", "exp", creation_time=5, tags={"a": "b"})
RUN = Run("r1", "1", "run", "me", "FINISHED", 10, 20, params={"p": "1"}, tags={"t": "v"},
          inputs=(DatasetInput("d", "x", "local", "/d", None, None, {"k": "v"}),))


class Content:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def metric_batches(self):
        yield pa.RecordBatch.from_arrays(
            [pa.array(["m", "m"]), pa.array([0, 1]), pa.array([1, 2]), pa.array([0.5, 1.5])], schema=METRIC_SCHEMA
        )

    def artifact_files(self):
        return iter([ArtifactFile(p, len(b)) for p, b in sorted(self.files.items())])

    @contextmanager
    def open_artifact(self, path):
        yield io.BytesIO(self.files[path])


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "bundle"
    sink = BundleSink(path)
    sink.begin(StoreDescription("mlruns", "file:///x"), Selection())
    teid = sink.put_experiment(EXPERIMENT).target_experiment_id
    sink.put_run(RUN, teid, Content({"a.txt": b"a", "b/c.txt": b"c" * 100}))
    sink.put_run(Run("r2", "1", "other", "me", "FINISHED", 30, 40), teid, Content({}))
    sink.finish({})
    sink.close()
    return path


@pytest.fixture
def bundle(small_bundle, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(small_bundle, copy)
    return copy


# ---------------------------------------------------------------- one strict parser
@pytest.mark.parametrize(
    "raw, words",
    [
        (b'{"path":"a\xff","sha256":"%s","size":1}' % SHA.encode(), "is not UTF-8"),
        (b'{"path":"a","path":"b","sha256":"%s","size":1}' % SHA.encode(), "'path' appears twice"),
        (b'{"path":"a","sha256":"%s","size":NaN}' % SHA.encode(), "NaN is not JSON"),
        (b'{"path":"a","sha256":"%s","size":true}' % SHA.encode(), "size: missing or not a non-negative integer"),
        (b'{"path":"a","sha256":"%s","size":-1}' % SHA.encode(), "size"),
        (b'{"path":"a","sha256":"%s","size":1}' % (b"A" * 64), "sha256: missing"),
        (b'{"path":"../a","sha256":"%s","size":1}' % SHA.encode(), "lists an unsafe path '../a'"),
        (b'{"path":"a//b","sha256":"%s","size":1}' % SHA.encode(), "unsafe"),
        (b'["a"]', "not a JSON object"),
        (b"{", "not JSON"),
    ],
)
def test_a_manifest_line_is_parsed_strictly(raw, words):
    entry, problem = parse_line(raw)
    assert entry is None and words in problem and "\n" not in problem


def test_strict_json_documents():
    assert loads(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}
    for bad, words in [(b'{"a": 1, "a": 2}', "'a' appears twice"), (b'{"a": Infinity}', "Infinity is not JSON"),
                       (b'{"a": -Infinity}', "-Infinity is not JSON"), (b'{"a": "\xff"}', "utf-8"),
                       (b"[" * 100_000 + b"]" * 100_000, "nested too deeply")]:
        with pytest.raises(ValueError, match=words):
            loads(bad)
    with pytest.raises(ValueError):
        dumps({"a": float("nan")})


def test_documents_convert_both_ways():
    assert experiment_from_doc(loads(dumps(experiment_doc(EXPERIMENT)))) == EXPERIMENT
    assert run_from_doc(loads(dumps(run_doc(RUN, "1", None, [])))) == RUN
    unit = Unit("note", "n1", "7", "name", {"run": "r1"}, {"text": "x"})
    assert unit_from_doc(loads(dumps(unit_doc(unit, "7")))) == unit
    assert unit_doc(unit, "9")["experiment_id"] == "9"  # the target's experiment


# ---------------------------------------------------------------- the index
def test_unit_of_names_the_unit_a_path_belongs_to():
    assert unit_of("experiments/1/experiment.json") == ("experiment", "1")
    assert unit_of("experiments/1/runs/r1/run.json") == ("run", "r1")
    assert unit_of("experiments/1/runs/r1/artifacts/a/b.txt") == ("run", "r1")
    assert unit_of("experiments/1/units/note/n1.json") == ("note", "n1")
    # A unit's files are in the folder named like its document (format 1.3).
    assert unit_of("experiments/1/units/note/sub/n1.json") == ("note", "sub")
    assert unit_of("units/model_version/churn%2F3.json") == ("model_version", "churn%2F3")
    assert unit_of("experiments/1/units/logged_model/m-1/artifacts/MLmodel") == ("logged_model", "m-1")
    for bundle_wide in [ROOT_FILE, "transfer/ledger.jsonl", "experiments/1/notes.txt",
                        "experiments/1/runs/.r1.tmp-abc/run.json", "experiments/1/units/note/.n1.json.tmp-abc",
                        "experiments/1/units/note/n1.txt", "experiments/1/units/run/r1.json",
                        "experiments/1/units/note/.sub/n1.json"]:
        assert unit_of(bundle_wide) is None, bundle_wide


def test_the_index_reports_every_damaged_line_and_keeps_the_others(bundle):
    lines = (bundle / MANIFEST_FILE).read_bytes().splitlines(keepends=True)
    lines[1] = b"not json\n"
    lines[3] = lines[3].replace(b'"size":', b'"size":-')
    lines.insert(5, lines[5])  # lines 6 and 7 the same
    (bundle / MANIFEST_FILE).write_bytes(b"".join(lines))
    index = read_index(bundle)
    assert [p.message.split(":")[0].split(" is ")[0] for p in index.problems] == ["line 2", "line 4", "line 7"]
    assert all(p.path == MANIFEST_FILE and p.unit is None for p in index.problems)
    assert "listed twice" in index.problems[2].message
    with pytest.raises(BadInputError, match="manifest.jsonl: line 2 is invalid"):
        BundleSource(bundle)  # the reader: the first one, fatal
    report = verify_bundle(bundle, "fast")
    assert [p for p in report.problems if p.path == MANIFEST_FILE] == index.problems


def test_an_unsorted_manifest_still_gives_each_run_its_lines(bundle):
    # verify reads on past a manifest out of order: a run's lines need not be together.
    lines = (bundle / MANIFEST_FILE).read_text().splitlines(keepends=True)
    r1 = [i for i, line in enumerate(lines) if "/runs/r1/" in line]
    lines.append(lines.pop(r1[0]))  # one line of run r1 moved to the end
    (bundle / MANIFEST_FILE).write_text("".join(lines))
    index = read_index(bundle)
    assert len(index.problems) == 1 and "out of path order" in index.problems[0].message
    assert len(index.runs["1"]["r1"]) == 2  # two spans
    assert len(index.run_entries("1", "r1")) == len(r1)
    report = verify_bundle(bundle, "full")
    assert report.problems == index.problems  # the run itself is fine


def test_a_problem_names_its_file_and_the_unit_it_costs(bundle):
    assert str(Problem("a/b", "is wrong")) == "a/b: is wrong"
    assert Problem("a/b", "is wrong").in_bundle(bundle) == f"{bundle}/a/b: is wrong"
    (bundle / "experiments/1/runs/r1/artifacts/a.txt").unlink()
    report = verify_bundle(bundle, "full")
    assert report.to_json()["problems"] == [
        {"path": "experiments/1/runs/r1/artifacts/a.txt", "message": "is listed in manifest.jsonl but missing",
         "unit": ["run", "r1"]}
    ]


# ---------------------------------------------------------------- one validator, two uses
def test_verify_reports_every_problem_of_a_run_where_import_stops_at_the_first(bundle):
    run_dir = bundle / "experiments/1/runs/r1"
    (run_dir / "artifacts/a.txt").unlink()
    (run_dir / "artifacts/b/c.txt").write_bytes(b"c" * 99)
    src = BundleSource(bundle)
    (bad,) = [r for r in src.iter_runs(EXPERIMENT, Selection()) if not isinstance(r, Run)]
    assert bad.source_id == "r1" and bad.reason == f"{run_dir}/artifacts/a.txt: is listed in manifest.jsonl but missing"
    problems = verify_bundle(bundle, "full").problems
    assert [(p.path.split("/r1/")[1], p.unit) for p in problems] == [
        ("artifacts/a.txt", ("run", "r1")), ("artifacts/b/c.txt", ("run", "r1"))]
    assert "99 bytes" in problems[1].message


def test_a_run_json_with_a_repeated_key_fails_verify_at_full_only(bundle):
    run_json = bundle / "experiments/1/runs/r1/run.json"
    run_json.write_text(run_json.read_text().replace('"p": "1"', '"p": "1", "p": "2"'))
    write_manifest(bundle)
    assert verify_bundle(bundle, "complete").ok  # sizes and hashes agree with the manifest
    problems = verify_bundle(bundle, "full").problems
    assert [(p.path, p.unit) for p in problems] == [("experiments/1/runs/r1/run.json", ("run", "r1"))]
    assert "'p' appears twice" in problems[0].message
    with pytest.raises(UnitError, match="'p' appears twice"):
        list(BundleSource(bundle).list_artifacts(RUN))


def test_a_metric_file_is_checked_alike(bundle):
    run_json = bundle / "experiments/1/runs/r1/run.json"
    doc = json.loads(run_json.read_text())
    doc["metrics"]["points"] = 3
    run_json.write_text(json.dumps(doc))
    write_manifest(bundle)
    problems = verify_bundle(bundle, "full").problems
    assert [(p.path, p.message) for p in problems] == [
        ("experiments/1/runs/r1/metrics.parquet", "holds 2 points but run.json says 3")]
    src = BundleSource(bundle)
    with pytest.raises(UnitError, match="metrics.parquet: holds 2 points but run.json says 3"):
        list(src.iter_metric_batches(RUN))


def test_the_root_descriptor_is_read_strictly_by_both(bundle):
    root = bundle / ROOT_FILE
    root.write_text(root.read_text().replace('"format": "trackport-bundle"', '"format": "trackport-bundle", "format": "x"'))
    write_manifest(bundle)
    with pytest.raises(BadInputError, match="trackport-bundle.json: cannot be read as JSON: key 'format' appears twice"):
        BundleSource(bundle)
    assert [(p.path, "appears twice" in p.message) for p in verify_bundle(bundle, "fast").problems] == [(ROOT_FILE, True)]
