"""Must-shows of the REST store: server -> bundle -> fresh server loses nothing; re-runs
write nothing twice; basic auth works; a rejected run is reported and the rest arrives."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mlflow_snapshot import snapshot
from trackport.bundle.manifest import write_manifest
from trackport.cli.main import cli
from trackport.samples.sample_store import SAMPLE_COUNTS
from trackport.opening import open_sink, open_source
from trackport.stores.base import Selection
from trackport.transfer.compare import compare_stores
from trackport.transfer.idmap import IdMap

EVERYTHING = Selection(include_deleted=True)
MAX_FLOAT = 1.7976931348623157e308


def invoke(*args: str) -> dict:
    result = CliRunner().invoke(cli, [*args, "--include-deleted", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run_id_map(target_url: str) -> dict[str, str]:
    sink = open_sink(target_url)
    try:
        idmap = IdMap(sink.state_dir())
        return {source: idmap.get("run", source) for source in idmap.source_ids("run")}
    finally:
        sink.close()


def normalized(snap: dict, ids: dict[str, str]) -> dict:
    """A snapshot with source run ids replaced by target ids and trackport's provenance
    tags, experiment ids and the artifacts' run ids (MLmodel) left out."""
    result = {}
    for name, experiment in snap.items():
        runs = {}
        for run_id, run in experiment["runs"].items():
            target_id = ids.get(run_id, run_id)
            tags = {k: v.replace(run_id, target_id) for k, v in run["tags"].items() if not k.startswith("trackport.")}
            if "mlflow.parentRunId" in tags:
                tags["mlflow.parentRunId"] = ids.get(tags["mlflow.parentRunId"], tags["mlflow.parentRunId"])
            runs[target_id] = {
                **run,
                "experiment_id": None,
                "deleted_time": None,
                "tags": tags,
                "artifacts": {p: h for p, h in run["artifacts"].items() if p != "MLmodel"},
            }
        result[name] = {"lifecycle_stage": experiment["lifecycle_stage"], "tags": {
            k: v for k, v in experiment["tags"].items() if not k.startswith("trackport.")}, "runs": runs}
    return result


def clamp_infinity(snap: dict) -> dict:
    for experiment in snap.values():
        for run in experiment["runs"].values():
            for key, history in run["metrics"].items():
                run["metrics"][key] = [
                    (s, t, repr(MAX_FLOAT) if v == "inf" else repr(-MAX_FLOAT) if v == "-inf" else v)
                    for s, t, v in history
                ]
    return snap


def test_server_to_bundle_to_fresh_server_keeps_every_field(source_server, fresh_server, tmp_path):
    bundle = tmp_path / "bundle"
    exported = invoke("export", source_server.url, str(bundle))
    assert exported["counts"]["runs"] == {"done": SAMPLE_COUNTS["runs"], "skipped": 0, "failed": 0, "not_selected": 0}
    imported = invoke("import", str(bundle), fresh_server.url)
    assert imported["counts"]["runs"]["done"] == SAMPLE_COUNTS["runs"]
    assert imported["counts"]["metric_points"]["done"] == SAMPLE_COUNTS["metric_points"]
    assert any("run ids" in line for line in imported["planned_losses"])

    ids = run_id_map(fresh_server.url)
    assert len(ids) == SAMPLE_COUNTS["runs"] and all(s != t for s, t in ids.items())
    before = clamp_infinity(normalized(snapshot(source_server.url), ids))
    after = normalized(snapshot(fresh_server.url), {})
    assert sorted(after) == sorted(before)
    for name in before:
        assert after[name] == before[name], name

    # The parts a normalized snapshot leaves out, checked on their own.
    raw_after = snapshot(fresh_server.url)
    for experiment in raw_after.values():
        for target_id, run in experiment["runs"].items():
            source_id = run["tags"]["trackport.source.run_id"]
            assert ids[source_id] == target_id and run["tags"]["trackport.complete"] == "true"
    # trackport's own comparison agrees (MLmodel run ids rewritten, ±inf clamped).
    differences = list(compare_stores(open_source(source_server.url), open_source(fresh_server.url), EVERYTHING,
                                      run_id_map=ids.get, clamps_infinity=True))
    assert differences == []


def test_importing_twice_and_copying_again_write_nothing(source_server, sample_bundle, fresh_server):
    first = invoke("import", str(sample_bundle), fresh_server.url)
    assert first["counts"]["runs"]["done"] == SAMPLE_COUNTS["runs"]
    before = snapshot(fresh_server.url)
    second = invoke("import", str(sample_bundle), fresh_server.url)
    assert second["counts"]["runs"] == {"done": 0, "skipped": SAMPLE_COUNTS["runs"], "failed": 0, "not_selected": 0}
    assert second["counts"]["metric_points"]["done"] == 0
    assert snapshot(fresh_server.url) == before  # exactly one copy of each run, nothing touched

    copied = invoke("copy", source_server.url, fresh_server.url, "--experiment", "trackport sample b")
    assert copied["counts"]["runs"]["done"] == 2
    middle = snapshot(fresh_server.url)
    again = invoke("copy", source_server.url, fresh_server.url, "--experiment", "trackport sample b")
    assert again["counts"]["runs"] == {"done": 0, "skipped": 2, "failed": 0, "not_selected": 0}
    assert snapshot(fresh_server.url) == middle


def test_copy_server_to_server(source_server, fresh_server):
    copied = invoke("copy", source_server.url, fresh_server.url)
    assert copied["counts"]["runs"]["done"] == SAMPLE_COUNTS["runs"]
    ids = run_id_map(fresh_server.url)
    differences = list(compare_stores(open_source(source_server.url), open_source(fresh_server.url), EVERYTHING,
                                      run_id_map=ids.get, clamps_infinity=True))
    assert differences == []


def test_basic_auth_with_username_and_password(auth_server, sample_bundle, auth_env, tmp_path):
    imported = invoke("import", str(sample_bundle), auth_server.url, "--experiment", "trackport sample b")
    assert imported["counts"]["runs"]["done"] == 2
    exported = invoke("export", auth_server.url, str(tmp_path / "back"), "--experiment", "trackport sample b")
    assert exported["counts"]["runs"]["done"] == 2


def test_a_rejected_run_is_reported_by_name_and_the_rest_arrive(bundle_copy, fresh_server):
    # A key MLflow refuses ('@' is not allowed), on a run without children.
    run_json = next(p for p in bundle_copy.rglob("run.json") if json.loads(p.read_text())["info"]["run_name"] == "killed run")
    doc = json.loads(run_json.read_text())
    doc["params"]["bad@key"] = "1"
    run_json.write_text(json.dumps(doc))
    write_manifest(bundle_copy)  # the bundle agrees with itself: the server refuses the key
    result = CliRunner().invoke(cli, ["import", str(bundle_copy), fresh_server.url, "--include-deleted", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["counts"]["runs"] == {"done": SAMPLE_COUNTS["runs"] - 1, "skipped": 0, "failed": 1, "not_selected": 0}
    (failure,) = report["failures"]
    assert failure["name"] == "killed run" and "bad@key" in failure["reason"]
    names = {r["run_name"] for e in snapshot(fresh_server.url).values() for r in e["runs"].values()
             if r["lifecycle_stage"] == "active"}
    assert "killed run" not in names and len(names) == SAMPLE_COUNTS["runs"] - 2  # minus the deleted one


@pytest.mark.parametrize("sink_kind", ["sqlite", "bundle"])
def test_server_to_local_stores(source_server, sink_kind, tmp_path):
    target = f"sqlite:///{tmp_path / 'mlflow.db'}" if sink_kind == "sqlite" else str(tmp_path / "bundle")
    invoke("copy", source_server.url, target)
    assert list(compare_stores(open_source(source_server.url), open_source(target), EVERYTHING)) == []


def test_local_store_to_server(sample_sqlite, fresh_server):
    invoke("copy", sample_sqlite, fresh_server.url)
    ids = run_id_map(fresh_server.url)
    assert list(compare_stores(open_source(sample_sqlite), open_source(fresh_server.url), EVERYTHING,
                               run_id_map=ids.get, clamps_infinity=True)) == []
