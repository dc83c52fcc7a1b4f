"""What a target cannot keep of evaluation datasets and registered scorers, said and recorded:
a scorer whose versions have gaps arrives renumbered (its loss in the summary and the
ledger, a re-run changes nothing), and a local store that cannot hold these kinds says so
before writing and records each unit as skipped.

The source is a server of the pool, filled by MLflow's own client: a dataset, and two
scorers: "steady" (versions 1, 2) and "gappy" (versions 1, 2, 3, then version 2 deleted with
mlflow.genai.scorers.delete_scorer, as a user removes one: the server keeps 1 and 3).
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from trackport.cli.main import cli
from trackport.opening import open_sink, open_source
from trackport.stores.base import Selection
from trackport.transfer import transfer
from mlflow_tracking import tracking

EXPERIMENT = "genai-losses"
GUIDELINES = {"steady": ["Be kind", "Be kind and brief"], "gappy": ["First rule", "Second rule (deleted)", "Third rule"]}
RENUMBERED = "versions renumbered: 1, 3 are registered as 1, 2 (a target numbers them in order)"


@pytest.fixture(scope="module")
def servers(server_pool):
    with server_pool.taken("source", "target") as servers:
        yield servers


@pytest.fixture(scope="module")
def source(servers) -> str:
    from mlflow.genai.datasets import create_dataset
    from mlflow.genai.scorers import Guidelines, delete_scorer

    url = servers["source"].url
    with tracking(url) as client:
        exp = client.create_experiment(EXPERIMENT)
        dataset = create_dataset(name="losses-qa", experiment_id=[exp], tags={"team": "eval"})
        dataset.merge_records([{"inputs": {"q": f"question {i}"}, "expectations": {"a": str(i)}} for i in range(3)])
        for name, guidelines in GUIDELINES.items():
            for text in guidelines:
                Guidelines(name=name, guidelines=text).register(experiment_id=exp)
        delete_scorer(name="gappy", experiment_id=exp, version=2)
    assert _scorer_versions(url) == {"steady": [1, 2], "gappy": [1, 3]}  # the gap is there
    return url


def _scorers(url: str) -> dict[str, list[tuple[int, str]]]:
    """Every scorer's versions in the experiment, through MLflow's client: (number, guidelines)."""
    from mlflow.tracking._tracking_service.utils import _get_store

    with tracking(url) as client:
        store = _get_store()
        exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
        return {
            s.scorer_name: [(v.scorer_version, json.loads(v._serialized_scorer)["builtin_scorer_pydantic_data"]["guidelines"])
                            for v in store.list_scorer_versions(exp, s.scorer_name)]
            for s in store.list_scorers(exp)
        }


def _scorer_versions(url: str) -> dict[str, list[int]]:
    return {name: [n for n, _ in versions] for name, versions in _scorers(url).items()}


def _copy(source_url: str, target_url: str):
    with open_source(source_url) as src, open_sink(target_url) as sink:
        return transfer(src, sink, Selection(include_deleted=True))


def test_a_scorer_with_gaps_arrives_renumbered_with_its_loss_recorded_and_a_rerun_changes_nothing(servers, source):
    target = servers["target"].url
    first = _copy(source, target)
    assert first.failed == 0, first.failures
    assert first.counts["scorers"]["done"] == 2
    # Said before writing, and recorded for that scorer alone.
    assert any("a scorer whose source versions have gaps is renumbered" in loss for loss in first.planned_losses)
    scorer_losses = [loss for loss in first.losses if loss.startswith("scorer ")]
    assert len(scorer_losses) == 1 and scorer_losses[0].startswith("scorer 'gappy'") and scorer_losses[0].endswith(RENUMBERED), scorer_losses
    # The versions, in order, under the numbers the target gave them.
    assert _scorers(target) == {
        "steady": [(1, "Be kind"), (2, "Be kind and brief")],
        "gappy": [(1, "First rule"), (2, "Third rule")],
    }
    # The ledger beside the target keeps the loss with the scorer's outcome.
    state = Path(json.loads(CliRunner().invoke(cli, ["status", target, "--json"]).stdout)["state_dir"])
    recorded = {e["name"]: e["losses"] for e in _ledger(state) if e["kind"] == "scorer" and e["outcome"] == "done"}
    assert recorded == {"steady": [], "gappy": [RENUMBERED]}, recorded
    # verify compares a scorer's versions in order (the renumbering is the recorded loss): equal.
    verified = CliRunner().invoke(cli, ["verify", source, target, "--level", "full"])
    assert verified.exit_code == 0, verified.output[-3000:]

    again = _copy(source, target)
    assert again.failed == 0, again.failures
    assert (again.counts["scorers"]["done"], again.counts["scorers"]["skipped"]) == (0, 2)
    assert _scorers(target)["gappy"] == [(1, "First rule"), (2, "Third rule")]  # nothing registered again


def _ledger(state: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(state.glob("ledger*.jsonl")) for line in p.read_text().splitlines() if line.strip()]


def test_a_local_store_says_before_writing_that_it_cannot_hold_datasets_and_scorers(source, tmp_path):
    db = tmp_path / "local" / "mlflow.db"
    result = CliRunner().invoke(cli, ["copy", source, f"sqlite:///{db}"])
    # Skipped units are not failures: the transfer exits 0, as for every kind a target cannot hold.
    assert result.exit_code == 0, (result.stdout + result.stderr)[-3000:]
    for plural in ("evaluation_datasets", "scorers"):
        said = f"the target cannot hold: {plural}: the target cannot hold them; each is recorded as skipped"
        assert said in result.stderr, result.stderr
        # before the transfer's table (output holds stderr and stdout in the order written)
        assert result.output.index(said) < result.output.index(result.stdout.strip().splitlines()[0])
    # Each unit recorded as skipped with the reason, in the ledger beside the store.
    entries = {(e["kind"], e["name"]): e for e in _ledger(Path(f"{db}.trackport"))}
    for key, reason in ((("evaluation_dataset", "losses-qa"), "evaluation_datasets"), (("scorer", "steady"), "scorers"), (("scorer", "gappy"), "scorers")):
        assert entries[key]["outcome"] == "skipped" and entries[key]["reason"] == f"the target cannot hold {reason}", entries.get(key)
    summary = CliRunner().invoke(cli, ["copy", source, f"sqlite:///{db}", "--json"])  # again: the same, counted
    counts = json.loads(summary.stdout)["counts"]
    assert counts["evaluation_datasets"]["skipped"] == 1 and counts["scorers"]["skipped"] == 2, counts
    assert counts["evaluation_datasets"]["failed"] == counts["scorers"]["failed"] == 0
    # The experiment was written; nothing of the datasets or scorers is in the database.
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM experiments WHERE name = ?", (EXPERIMENT,)).fetchone() == (1,)
        for table in ("evaluation_datasets", "scorers"):
            if conn.execute("SELECT count(*) FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]:
                assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_an_mlruns_folder_is_refused_as_a_target_before_anything_is_written(source, tmp_path):
    """The legacy file store is read only for trackport: a transfer into one stops before
    writing (exit 3), so datasets and scorers never half-arrive there."""
    mlruns = tmp_path / "mlruns"
    (mlruns / "0").mkdir(parents=True)
    (mlruns / "0" / "meta.yaml").write_text("artifact_location: x\nexperiment_id: '0'\nlifecycle_stage: active\nname: Default\n")
    before = sorted(p.relative_to(mlruns) for p in mlruns.rglob("*"))
    result = CliRunner().invoke(cli, ["copy", source, str(mlruns)])
    assert result.exit_code == 3, (result.stdout + result.stderr)[-3000:]
    assert "legacy mlruns/ file store is read-only" in result.stderr
    assert sorted(p.relative_to(mlruns) for p in mlruns.rglob("*")) == before
