"""trackport sync: a source changed in every way MLflow allows, synced again and again into a
real tracking server (and a local sqlite store): the target ends equal to the source, its
run ids stay, an unchanged source writes nothing, edits made in the target are conflicts,
and a sync killed half-way converges when run again."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from trackport.cli.main import cli
from trackport.opening import open_sink, open_source
from trackport.stores.base import Selection
from trackport.transfer.compare import compare_stores
from trackport.transfer.sync import dry_run, sync
from trackport.transfer.sync_runs import SyncOptions

ALL = Selection(include_deleted=True)


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, made once (MLflow's migrations take seconds), copied by each test."""
    path = tmp_path_factory.mktemp("empty") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


class Source:
    """A local sqlite store the test changes with MLflow's own client."""

    def __init__(self, root: Path, template: Path, runs: int = 0) -> None:
        shutil.copyfile(template, root / "source.db")
        self.uri = f"sqlite:///{root / 'source.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.name = f"sync-{uuid.uuid4().hex[:8]}"
        self.experiment_id = self.client.create_experiment(self.name, artifact_location=str(root / "artifacts"))
        self.root = root
        self.runs: dict[str, str] = {}
        for i in range(runs):
            self.add(f"r{i}")

    def add(self, name: str, *, status: str = "FINISHED", parent: str | None = None, points: int = 5) -> str:
        tags = {"mlflow.parentRunId": self.runs[parent]} if parent else {}
        run = self.client.create_run(self.experiment_id, start_time=1_700_000_000_000 + len(self.runs), run_name=name, tags=tags)
        run_id = run.info.run_id
        self.client.log_batch(
            run_id,
            metrics=[Metric("loss", 1.0 / (s + 1), 1_700_000_000_000 + s, s) for s in range(points)],
            params=[],
            tags=[],
        )
        self.client.log_param(run_id, "lr", "0.1")
        self.client.set_tag(run_id, "team", "a")
        if status != "RUNNING":
            self.client.set_terminated(run_id, status, end_time=1_700_000_100_000)
        self.runs[name] = run_id
        return run_id

    def artifact(self, name: str, path: str, data: bytes) -> None:
        local = self.root / "upload" / path
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        self.client.log_artifact(self.runs[name], str(local))


def _sync(source_uri: str, target_uri: str, **options):
    with open_source(source_uri) as source, open_sink(target_uri) as sink:
        return sync(source, sink, ALL, options=SyncOptions(**options))


def _differences(source_uri: str, target_uri: str) -> list[str]:
    with open_source(source_uri) as a, open_source(target_uri) as b:
        return [str(d) for d in compare_stores(a, b, ALL)]


def _target_runs(target_uri: str, experiment: str) -> dict[str, tuple[str, str]]:
    """source run id -> (target run id, lifecycle) of the target experiment's runs."""
    client = MlflowClient(tracking_uri=target_uri)
    exp = client.get_experiment_by_name(experiment)
    found = {}
    for run in client.search_runs([exp.experiment_id], run_view_type=3, max_results=1000):
        source_id = run.data.tags.get("trackport.source.run_id", run.info.run_id)
        assert source_id not in found, f"two copies of {source_id} in the target"
        found[source_id] = (run.info.run_id, run.info.lifecycle_stage)
    return found


@pytest.fixture(params=["rest", "sqlite"])
def target_uri(request, tmp_path) -> str:
    if request.param == "rest":
        return request.getfixturevalue("target_server").url
    return f"sqlite:///{tmp_path / 'target.db'}"


def test_second_sync_brings_every_change_in_place_and_third_writes_nothing(tmp_path, empty_db, target_uri):
    src = Source(tmp_path, empty_db)
    for name in ("grows", "tagged", "renamed", "deleted", "restored", "untouched"):
        src.add(name)
    src.add("running", status="RUNNING")
    src.add("child", parent="grows")
    src.artifact("tagged", "model/weights.bin", b"w" * 1000)
    src.client.delete_run(src.runs["restored"])

    first = _sync(src.uri, target_uri)
    assert first.failed == 0, first.failures
    assert first.sync["new"] == 8 and first.sync["updated"] == 0
    assert _differences(src.uri, target_uri) == []
    before = _target_runs(target_uri, src.name)
    assert len(before) == 8

    client = src.client
    client.log_batch(src.runs["grows"], metrics=[Metric("loss", 0.01, 1_700_000_000_100, 100), Metric("acc", float("nan"), 1_700_000_000_100, 100)])
    client.set_terminated(src.runs["running"], "FINISHED", end_time=1_700_000_200_000)
    client.set_tag(src.runs["tagged"], "team", "b")
    client.set_tag(src.runs["tagged"], "stage", "prod")
    client.delete_tag(src.runs["untouched"], "team")
    src.artifact("tagged", "plots/roc.png", b"p" * 500)
    client.update_run(src.runs["renamed"], name="renamed-2")
    client.log_param(src.runs["renamed"], "new_param", "x")
    client.delete_run(src.runs["deleted"])
    client.restore_run(src.runs["restored"])
    with open_source(src.uri) as source, open_source(target_uri) as reader:
        from trackport.opening import state_dir_for

        planned = {c.name: c for c in dry_run(source, reader, reader.describe(), state_dir_for(target_uri), ALL) if c.kind == "run"}
    assert planned["grows"].action == "update" and "metrics" in planned["grows"].detail
    assert planned["tagged"].action == "update" and "artifacts" in planned["tagged"].detail
    assert planned["child"].action == "unchanged"
    assert _target_runs(target_uri, src.name) == before  # the dry run wrote nothing

    second = _sync(src.uri, target_uri)
    assert second.failed == 0, second.failures
    assert second.sync == {"new": 0, "updated": 7, "unchanged": 1, "conflicts": 0, "gone": 0}
    assert _differences(src.uri, target_uri) == []
    after = _target_runs(target_uri, src.name)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}  # ids stay
    assert after[src.runs["deleted"]][1] == "deleted" and after[src.runs["restored"]][1] == "active"

    third = _sync(src.uri, target_uri)
    assert third.sync == {"new": 0, "updated": 0, "unchanged": 8, "conflicts": 0, "gone": 0}
    assert third.counts["metric_points"]["done"] == 0 and third.counts["artifact_files"]["done"] == 0


def test_target_edits_are_conflicts_and_purged_runs_are_deleted(tmp_path, empty_db, target_uri):
    src = Source(tmp_path, empty_db, runs=3)
    assert _sync(src.uri, target_uri).failed == 0
    copies = _target_runs(target_uri, src.name)
    edited = copies[src.runs["r0"]][0]
    MlflowClient(tracking_uri=target_uri).set_tag(edited, "edited", "in staging")

    failed = _sync(src.uri, target_uri)
    assert failed.failed == 1 and "conflict" in failed.failures[0].reason and "tags" in failed.failures[0].reason
    skipped = _sync(src.uri, target_uri, on_conflict="skip")
    assert skipped.failed == 0 and skipped.sync["conflicts"] == 1
    assert MlflowClient(tracking_uri=target_uri).get_run(edited).data.tags["edited"] == "in staging"
    overwritten = _sync(src.uri, target_uri, on_conflict="source")
    assert overwritten.sync["updated"] == 1
    assert "edited" not in MlflowClient(tracking_uri=target_uri).get_run(edited).data.tags
    assert _sync(src.uri, target_uri).sync["conflicts"] == 0  # settled

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    src.client.delete_run(src.runs["r1"])
    SqlAlchemyStore(src.uri, str(tmp_path / "artifacts"))._hard_delete_run(src.runs["r1"])
    gone = _sync(src.uri, target_uri)
    assert gone.sync["gone"] == 1 and gone.failed == 0
    assert _target_runs(target_uri, src.name)[src.runs["r1"]][1] == "deleted"
    assert _sync(src.uri, target_uri).sync["gone"] == 0


def test_renamed_experiment_is_renamed_not_copied_again(tmp_path, empty_db, target_server):
    src = Source(tmp_path, empty_db, runs=2)
    assert _sync(src.uri, target_server.url).sync["new"] == 2
    src.client.rename_experiment(src.experiment_id, src.name + "-renamed")
    again = _sync(src.uri, target_server.url)
    assert again.sync["new"] == 0 and any("renamed" in n for n in again.notices)
    assert len(_target_runs(target_server.url, src.name + "-renamed")) == 2


def test_sync_under_a_prefix_rename_keeps_the_renamed_copy_in_step(tmp_path, empty_db):
    src = Source(tmp_path, empty_db, runs=2)
    target = f"sqlite:///{tmp_path / 'staging.db'}"
    rename = ("--rename-experiment-prefix", "sync-=staging-sync-")
    runner = CliRunner()
    first = runner.invoke(cli, ["sync", src.uri, target, "--json", *rename])
    assert first.exit_code == 0, first.output
    src.client.log_metric(src.runs["r1"], "loss", 0.01, timestamp=1_700_000_200_000, step=9)
    second = runner.invoke(cli, ["sync", src.uri, target, "--json", *rename])
    assert second.exit_code == 0, second.output
    assert json.loads(second.output[second.output.index("{"):])["sync"] == {
        "new": 0, "updated": 1, "unchanged": 1, "conflicts": 0, "gone": 0,
    }
    renamed = src.name.replace("sync-", "staging-sync-", 1)
    assert len(_target_runs(target, renamed)) == 2 and MlflowClient(tracking_uri=target).get_experiment_by_name(src.name) is None
    verified = runner.invoke(cli, ["verify", src.uri, target, *rename])
    assert verified.exit_code == 0 and verified.output.strip().endswith("0 differences"), verified.output


def test_cli_sync_dry_run_and_refusals(tmp_path, empty_db, target_server):
    src = Source(tmp_path, empty_db, runs=2)
    runner = CliRunner()
    dry = runner.invoke(cli, ["sync", src.uri, target_server.url, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("new ") == 2 and "nothing written" in dry.output
    assert MlflowClient(tracking_uri=target_server.url).get_experiment_by_name(src.name) is None
    done = runner.invoke(cli, ["sync", src.uri, target_server.url, "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output[done.output.index("{"):])["sync"]["new"] == 2
    bundle = runner.invoke(cli, ["sync", src.uri, str(tmp_path / "bundle")])
    assert bundle.exit_code == 3 and "cannot be synced into" in bundle.output
    assert not (tmp_path / "bundle").exists()
    typo = runner.invoke(cli, ["sync", src.uri, target_server.url, "--on-conflict", "overwrite"])
    assert typo.exit_code == 2


def test_sync_killed_midway_converges_without_duplicates(tmp_path, empty_db, target_server):
    src = Source(tmp_path, empty_db, runs=12)
    for name in list(src.runs):
        src.client.log_batch(src.runs[name], metrics=[Metric(f"m{k}", float(s), 1_700_000_000_000 + s, s) for k in range(4) for s in range(250)])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "trackport.cli.main", "sync", src.uri, target_server.url, "--workers", "1"]
    state = None
    for attempt in range(2):  # killed while copying, then (after a change to every run) while updating
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        from trackport.opening import state_dir_for

        state = state_dir_for(target_server.url) / "sync.jsonl"
        start_lines = _lines(state)
        while time.monotonic() < deadline and _lines(state) < start_lines + 4 and process.poll() is None:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL, "the sync ended before it could be killed half-way"
        again = _sync(src.uri, target_server.url)
        assert again.failed == 0 and again.sync["conflicts"] == 0, again.failures
        assert _differences(src.uri, target_server.url) == []
        assert len(_target_runs_active(target_server.url, src.name)) == 12
        for name in src.runs:
            src.client.set_tag(src.runs[name], "round", str(attempt))


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _target_runs_active(target_uri: str, experiment: str) -> list[str]:
    client = MlflowClient(tracking_uri=target_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    sources = [r.data.tags.get("trackport.source.run_id") for r in runs]
    assert len(sources) == len(set(sources)), "a source run has two active copies"
    return sources
