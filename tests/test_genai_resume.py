"""Evaluation datasets and scorers after a stopped transfer: a copy SIGKILLed while a dataset's
records are being written, then run again, gives the dataset once with every record once
(verify clean, a further run writes nothing); a scorer the target holds only the first
versions of is finished.

The source is a server of the pool filled by MLflow's own client: a dataset of RECORDS
records (several upsert requests of 500, each taking a second or more on a test server) and
a scorer of three versions. The kill is not timed: it lands once the target shows the copy
with some records (the first request done), and the test checks that it held some, not all.
"""
from __future__ import annotations

import json
import random

import pytest
import requests
from click.testing import CliRunner
from test_resume import _trackport_command, kill_and_rerun

from trackport.cli.main import cli
from trackport.provenance import COMPLETE_TAG, SOURCE_UNIT_TAG
from mlflow_tracking import tracking

EXPERIMENT = "genai-resume"
DATASET = "resume-big"
RECORDS = 1_500  # three upsert requests of 500
SCORER_VERSIONS = ["Rule one", "Rule two", "Rule three"]
SEED = 20261204
DATASETS_API = "/api/3.0/mlflow/datasets"


@pytest.fixture(scope="module")
def servers(server_pool):
    with server_pool.taken("source", "target") as servers:
        yield servers


@pytest.fixture(scope="module")
def source(servers) -> str:
    from mlflow.genai.datasets import create_dataset
    from mlflow.genai.scorers import Guidelines

    url = servers["source"].url
    with tracking(url) as client:
        exp = client.create_experiment(EXPERIMENT)
        dataset = create_dataset(name=DATASET, experiment_id=[exp], tags={"size": "big"})
        records = [{"inputs": {"question": f"question {i}: " + "x" * 150}, "outputs": {"answer": f"answer {i}"},
                    "expectations": {"expected": str(i)}, "tags": {"n": str(i % 7)}} for i in range(RECORDS)]
        for start in range(0, RECORDS, 1000):
            dataset.merge_records(records[start : start + 1000])
        for text in SCORER_VERSIONS:
            Guidelines(name="rules", guidelines=text).register(experiment_id=exp)
    return url


def _copies(url: str) -> list[dict]:
    """The target's datasets trackport made (they carry trackport.source.id), as the server sends them."""
    answer = requests.post(url + DATASETS_API + "/search", json={"max_results": 1000}, timeout=10)
    answer.raise_for_status()
    return [d for d in answer.json().get("datasets") or () if SOURCE_UNIT_TAG in json.loads(d.get("tags") or "{}")]


def _some_records_written(url: str):
    """Whether the target shows a copy of the dataset holding at least one record."""
    def check() -> bool:
        for copy in _copies(url):
            page = requests.get(f"{url}{DATASETS_API}/{copy['dataset_id']}/records", params={"max_results": 1}, timeout=10).json()
            if json.loads(page.get("records") or "[]"):
                return True
        return False
    return check


def _datasets(url: str) -> dict[str, list[dict]]:
    """name -> records (content only, sorted), through MLflow's client; a name listed twice fails."""
    from mlflow.genai.datasets import search_datasets

    found: dict[str, list[dict]] = {}
    with tracking(url):
        for ds in search_datasets():
            assert ds.name not in found, f"dataset {ds.name!r} listed twice"
            rows = ds.to_df().to_dict("records")
            found[ds.name] = sorted(({k: row[k] for k in ("inputs", "outputs", "expectations", "tags")} for row in rows),
                                    key=lambda r: json.dumps(r["inputs"], sort_keys=True))
    return found


def _scorer(url: str) -> list[tuple[int, str]]:
    from mlflow.tracking._tracking_service.utils import _get_store

    with tracking(url) as client:
        exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
        return [(v.scorer_version, json.loads(v._serialized_scorer)["builtin_scorer_pydantic_data"]["guidelines"])
                for v in _get_store().list_scorer_versions(exp, "rules")]


def _counts(result) -> dict:
    return json.loads(result.stdout)["counts"]


def test_a_copy_killed_while_writing_records_resumes_with_the_dataset_once_and_every_record_once(servers, source, tmp_path):
    target = servers["target"].url
    log = tmp_path / "attempts.log"
    command = _trackport_command() + ["copy", source, target]
    outcomes = kill_and_rerun(command, random.Random(SEED), kills=1, window=(0.0, 0.2), log=log,
                              started=_some_records_written(target))
    assert outcomes == ["killed"], (outcomes, log.read_text()[-3000:])
    # The kill landed mid-write: one copy, not marked complete, holding some records, not all.
    [partial] = _copies(target)
    assert COMPLETE_TAG not in json.loads(partial["tags"])
    held = len(_datasets(target)[DATASET])
    assert 0 < held < RECORDS, held

    resumed = CliRunner().invoke(cli, ["copy", source, target, "--json"])
    assert resumed.exit_code == 0, resumed.output[-3000:]
    assert _counts(resumed)["evaluation_datasets"] == {"done": 1, "skipped": 0, "failed": 0, "not_selected": 0}
    [finished] = _copies(target)
    assert finished["dataset_id"] == partial["dataset_id"]  # the stopped copy finished, no second one
    assert json.loads(finished["tags"])[COMPLETE_TAG] == "true"
    expected = _datasets(source)
    assert len(expected[DATASET]) == RECORDS
    assert _datasets(target) == expected  # every record once, each equal to the source's
    assert _scorer(target) == _scorer(source)
    verified = CliRunner().invoke(cli, ["verify", source, target, "--level", "full"])
    assert verified.exit_code == 0, verified.output[-3000:]
    # The id map names the one copy.
    idmap = CliRunner().invoke(cli, ["idmap", target, "--kind", "evaluation_dataset", "--format", "json"])
    assert {e["target_id"] for e in json.loads(idmap.stdout)} == {partial["dataset_id"]}

    again = CliRunner().invoke(cli, ["copy", source, target, "--json"])
    assert again.exit_code == 0, again.output[-3000:]
    assert _counts(again)["evaluation_datasets"]["skipped"] == 1 and _counts(again)["scorers"]["skipped"] == 1
    assert _datasets(target) == expected


def test_a_scorer_the_target_holds_in_part_is_finished(servers, source):
    """A transfer stopped between two registrations leaves the first versions: the state is
    made by deleting the copy's last version with MLflow's client, and a re-run registers it."""
    from mlflow.genai.scorers import delete_scorer

    target = servers["target"].url
    first = CliRunner().invoke(cli, ["copy", source, target, "--json"])  # complete (made by the test above, if it ran)
    assert first.exit_code == 0, first.output[-3000:]
    with tracking(target) as client:
        delete_scorer(name="rules", experiment_id=client.get_experiment_by_name(EXPERIMENT).experiment_id, version=3)
    assert [n for n, _ in _scorer(target)] == [1, 2]
    resumed = CliRunner().invoke(cli, ["copy", source, target, "--json"])
    assert resumed.exit_code == 0, resumed.output[-3000:]
    assert _counts(resumed)["scorers"] == {"done": 1, "skipped": 0, "failed": 0, "not_selected": 0}
    assert _scorer(target) == [(1, "Rule one"), (2, "Rule two"), (3, "Rule three")]
