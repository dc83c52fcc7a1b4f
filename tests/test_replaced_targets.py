"""A target replaced at the same place since the last transfer into it: a staging server
reset behind the same URL, a sqlite file deleted and made again. The records kept beside
it (id map, ledger) are another store's: they are set aside, said in one line, and the
target is treated as new; every reference is to a run the target holds."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import requests
from servers import MlflowServer, free_port, start_all
from test_cli import trackport

from trackport.samples.sample_store import SAMPLE_COUNTS

SOURCE_RUN_TAG = "trackport.source.run_id"


def _runs(url: str) -> dict[str, dict]:
    """Every run of the server (deleted ones too) by its own id."""
    experiments = requests.post(f"{url}/api/2.0/mlflow/experiments/search",
                                json={"max_results": 1000, "view_type": "ALL"}, timeout=30).json()["experiments"]
    body = {"experiment_ids": [e["experiment_id"] for e in experiments], "run_view_type": "ALL", "max_results": 1000}
    runs = requests.post(f"{url}/api/2.0/mlflow/runs/search", json=body, timeout=30).json().get("runs", [])
    return {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}


def _copy(source: str, target: str) -> tuple[dict, str]:
    result = trackport("copy", source, target, "--include-deleted", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout), result.stderr


def _parent_links_name_the_right_runs(source_url: str, target_url: str) -> None:
    source_runs, target_runs = _runs(source_url), _runs(target_url)
    by_source_id = {tags[SOURCE_RUN_TAG]: run_id for run_id, tags in target_runs.items()}
    children = 0
    for run_id, tags in target_runs.items():
        parent = tags.get("mlflow.parentRunId")
        if parent is None:
            continue
        children += 1
        assert parent in target_runs, f"{run_id} names a parent the target does not hold: {parent}"
        source_parent = source_runs[tags[SOURCE_RUN_TAG]]["mlflow.parentRunId"]
        assert by_source_id[source_parent] == parent
    assert children == 2  # the sample's child and grandchild


def test_a_server_replaced_at_the_same_url(source_server, server_pool, tmp_path):
    port = free_port()
    first = start_all([MlflowServer(tmp_path / "first", port=port, template_db=server_pool.template_db)])[0]
    try:
        summary, _ = _copy(source_server.url, first.url)
        assert summary["counts"]["runs"]["done"] == SAMPLE_COUNTS["runs"]
    finally:
        first.stop()
    second = start_all([MlflowServer(tmp_path / "second", port=port, template_db=server_pool.template_db)])[0]
    try:
        summary, stderr = _copy(source_server.url, second.url)
        # Said once, and everything written again: nothing is "skipped" on a fresh server.
        notes = [line for line in stderr.splitlines() if line.startswith("note: ")]
        assert len(notes) == 1 and "is not the store the earlier transfers into it wrote" in notes[0], stderr
        assert summary["counts"]["runs"] == {"done": SAMPLE_COUNTS["runs"], "skipped": 0, "failed": 0, "not_selected": 0}
        assert summary["counts"]["experiments"]["done"] == 2  # made; Default is the server's own
        verified = trackport("verify", source_server.url, second.url, "--include-deleted", "--level", "full")
        assert verified.returncode == 0 and "0 differences" in verified.stdout, verified.stdout
        _parent_links_name_the_right_runs(source_server.url, second.url)
        # The records now are those of this server; the old ones were moved aside, not lost.
        status = json.loads(trackport("status", second.url, "--json").stdout)
        assert status["counts"]["run"]["done"] == SAMPLE_COUNTS["runs"]
        state = Path(status["state_dir"])
        (aside,) = state.glob("replaced-*")
        assert (aside / "ledger.jsonl").is_file() and (aside / "idmap.jsonl").is_file()
        # The same command again: everything found, nothing written, no notice.
        again, stderr = _copy(source_server.url, second.url)
        assert again["counts"]["runs"]["skipped"] == SAMPLE_COUNTS["runs"] and "note:" not in stderr
    finally:
        second.stop()


def test_a_sqlite_store_deleted_and_made_again(sample_bundle, tmp_path):
    db = tmp_path / "t" / "mlflow.db"
    target = f"sqlite:///{db}"
    assert trackport("import", str(sample_bundle), target).returncode == 0
    db.unlink()
    shutil.rmtree(tmp_path / "t" / "mlflow-artifacts")  # made again from nothing; its records stay beside it
    result = trackport("import", str(sample_bundle), target, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is not the store the earlier transfers into it wrote" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["runs"]["done"] == SAMPLE_COUNTS["runs"]
    verified = trackport("verify", str(sample_bundle), target, "--level", "full")
    assert verified.returncode == 0 and "0 differences" in verified.stdout, verified.stdout


def test_a_sqlite_store_replaced_by_one_mlflow_made(sample_bundle, tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "t" / "mlflow.db"
    target = f"sqlite:///{db}"
    assert trackport("import", str(sample_bundle), target).returncode == 0
    state = Path(str(db) + ".trackport")
    db.unlink()
    shutil.rmtree(tmp_path / "t" / "mlflow-artifacts")
    MlflowClient(tracking_uri=target).search_experiments()  # MLflow makes a new, empty database there
    result = trackport("import", str(sample_bundle), target, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is not the store the earlier transfers into it wrote" in result.stderr
    assert json.loads(result.stdout)["counts"]["runs"]["done"] == SAMPLE_COUNTS["runs"]
    assert len(list(state.glob("replaced-*"))) == 1
    verified = trackport("verify", str(sample_bundle), target, "--level", "full")
    assert verified.returncode == 0, verified.stdout
