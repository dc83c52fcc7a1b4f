"""MLflow 3's evaluation datasets and registered scorers through tracking servers: copied
server -> server and server -> bundle -> server, re-run, verified.

The sample is made by MLflow's own client on a source server from the pool: two datasets
with records and tags (one linked to two experiments), and two registered scorers (one with
two versions). Everything is compared through MLflow's client: each dataset's name, tags,
schema, profile, experiments (by name) and records (inputs, outputs, expectations, tags,
source), and every scorer version's serialized form.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from trackport.cli.main import cli
from trackport.opening import open_bundle_sink, open_bundle_source, open_sink, open_source
from trackport.stores.base import Selection
from trackport.transfer import transfer
from mlflow_tracking import tracking

EVERYTHING = Selection(include_deleted=True)
EXPERIMENT, OTHER = "genai-datasets-sample", "genai-datasets-other"


@pytest.fixture(scope="module")
def servers(server_pool):
    with server_pool.taken("source", "copied", "imported") as servers:
        yield servers


@pytest.fixture(scope="module")
def sample(servers) -> None:
    from mlflow.genai.datasets import create_dataset
    from mlflow.genai.scorers import Guidelines

    with tracking(servers["source"].url) as client:
        exp = client.create_experiment(EXPERIMENT)
        other = client.create_experiment(OTHER)
        qa = create_dataset(name="qa", experiment_id=[exp], tags={"team": "search", "stage": "gold"})
        qa.merge_records([
            {"inputs": {"question": "2+2?"}, "expectations": {"answer": "4"}, "tags": {"difficulty": "easy"}},
            {"inputs": {"question": "capital of France?"}, "expectations": {"answer": "Paris"}},
        ])
        chat = create_dataset(name="chat", experiment_id=[exp, other], tags={"team": "chat"})
        chat.merge_records([
            {"inputs": {"messages": [{"role": "user", "content": f"hello {i}"}]}, "outputs": {"reply": f"hi {i}"},
             "expectations": {"polite": True}} for i in range(3)
        ])
        Guidelines(name="polite", guidelines="Be polite").register(experiment_id=exp)
        Guidelines(name="polite", guidelines="Be polite and brief").register(experiment_id=exp)
        Guidelines(name="concise", guidelines="Answer in one sentence").register(experiment_id=exp)


def genai_state(url: str) -> dict:
    """What MLflow's client shows of the datasets and scorers, ids replaced by names."""
    from mlflow.genai.datasets import search_datasets
    from mlflow.tracking._tracking_service.utils import _get_store

    with tracking(url) as client:
        names = {e.experiment_id: e.name for e in client.search_experiments()}
        datasets = {}
        for ds in search_datasets():
            frame = ds.to_df()
            records = sorted(  # compared as values: a bundle keeps JSON objects with their keys sorted
                ({k: row[k] for k in ("inputs", "outputs", "expectations", "tags", "source_type")} | {"source": row["source"].to_dict()}
                 for row in frame.to_dict("records")),
                key=lambda r: json.dumps(r["inputs"], sort_keys=True),
            )
            datasets[ds.name] = {
                "tags": {k: v for k, v in ds.tags.items() if not k.startswith("trackport.")},
                "schema": ds.schema, "profile": ds.profile, "created_by": ds.created_by,
                "experiments": sorted(names[e] for e in ds.experiment_ids),
                "records": records,
            }
        store = _get_store()
        exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
        scorers = {
            s.scorer_name: [(v.scorer_version, v._serialized_scorer) for v in store.list_scorer_versions(exp, s.scorer_name)]
            for s in store.list_scorers(exp)
        }
    return {"datasets": datasets, "scorers": scorers}


@pytest.fixture(scope="module")
def expected(sample, servers) -> dict:
    state = genai_state(servers["source"].url)
    assert sorted(state["datasets"]) == ["chat", "qa"] and len(state["datasets"]["chat"]["records"]) == 3
    assert [v for v, _ in state["scorers"]["polite"]] == [1, 2]
    return state


def _same(actual: dict, expected: dict) -> None:
    assert sorted(actual["datasets"]) == sorted(expected["datasets"])
    for name, want in expected["datasets"].items():
        for key, value in want.items():
            assert actual["datasets"][name][key] == value, (name, key)
    assert actual["scorers"] == expected["scorers"]


def _transfer(source_uri: str, target_uri: str):
    opener = open_bundle_source if Path(source_uri).is_dir() else open_source
    sink_opener = open_sink if target_uri.startswith("http") else open_bundle_sink
    with opener(source_uri) as source, sink_opener(target_uri) as target:
        return transfer(source, target, EVERYTHING)


def _moved(summary, kind: str) -> tuple[int, int]:
    counts = summary.counts[kind]
    return counts["done"], counts["skipped"]


def test_server_to_server_keeps_datasets_and_scorers_and_rerun_writes_nothing(servers, expected):
    first = _transfer(servers["source"].url, servers["copied"].url)
    assert first.failed == 0, first.failures
    assert _moved(first, "evaluation_datasets") == (2, 0) and _moved(first, "scorers") == (2, 0)
    assert any("evaluation datasets: the target gives new dataset and record ids" in loss for loss in first.planned_losses)
    _same(genai_state(servers["copied"].url), expected)
    again = _transfer(servers["source"].url, servers["copied"].url)
    assert again.failed == 0, again.failures
    assert _moved(again, "evaluation_datasets") == (0, 2) and _moved(again, "scorers") == (0, 2)
    _same(genai_state(servers["copied"].url), expected)  # nothing duplicated


def test_server_to_bundle_to_server(servers, expected, tmp_path):
    bundle = tmp_path / "bundle"
    exported = _transfer(servers["source"].url, str(bundle))
    assert exported.failed == 0, exported.failures
    assert len(list((bundle / "units" / "evaluation_dataset").glob("*.json"))) == 2
    assert len(list(bundle.glob("experiments/*/units/scorer/*.json"))) == 2
    imported = _transfer(str(bundle), servers["imported"].url)
    assert imported.failed == 0, imported.failures
    assert _moved(imported, "evaluation_datasets") == (2, 0) and _moved(imported, "scorers") == (2, 0)
    _same(genai_state(servers["imported"].url), expected)
    again = _transfer(str(bundle), servers["imported"].url)
    assert _moved(again, "evaluation_datasets") == (0, 2) and _moved(again, "scorers") == (0, 2)


def test_verify_reports_a_changed_record(servers, expected):
    from mlflow.genai.datasets import search_datasets

    _transfer(servers["source"].url, servers["copied"].url)  # a copy (skipped when the first test made it)
    runner = CliRunner()
    clean = runner.invoke(cli, ["verify", servers["source"].url, servers["copied"].url, "--level", "full"])
    assert clean.exit_code == 0, clean.output
    with tracking(servers["copied"].url):
        qa = next(d for d in search_datasets() if d.name == "qa")
        qa.merge_records([{"inputs": {"question": "2+2?"}, "expectations": {"answer": "5"}}])
    try:
        changed = runner.invoke(cli, ["verify", servers["source"].url, servers["copied"].url, "--level", "full"])
        assert changed.exit_code != 0
        assert "record" in changed.output and "expectations" in changed.output and "'5'" in changed.output, changed.output
    finally:
        with tracking(servers["copied"].url):
            qa.merge_records([{"inputs": {"question": "2+2?"}, "expectations": {"answer": "4"}}])
