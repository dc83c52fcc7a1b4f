"""One filter language on every store (trackport/search): each filter selects the same runs
from a tracking server, a local sqlite store, the same database read directly and a bundle,
all holding the same runs; the same runs MLflow's own search returns where MLflow reads the
filter; and MIN/MAX/LATEST select what the histories below say they should."""
from __future__ import annotations

import json
import math
import uuid

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.search_utils import SearchUtils

from trackport.cli.main import cli
from trackport.config import TransferConfig
from trackport.opening import open_source
from trackport.search import FilterError, parse
from trackport.search.pushdown import mlflow_filter
from trackport.selection import runs_of
from trackport.stores.base import Selection
from trackport.stores.mlflow_db.sqlite import SqliteSource
from trackport.stores.sqlite.files import sqlite_path_from_uri

BASE = 1_750_000_000_000
NAN, INF = math.nan, math.inf

# name: (start offset, status, deleted, params, tags, {metric: [values by step]})
RUNS = {
    "a": (0, "FINISHED", False, {"elasticNetParam": "0.5", "regParam": "0.1"},
          {"color": "blue", "size": "5", "my custom tag": "my value"},
          {"r2": [0.1, 0.4], "avg_areaUnderROC": [0.35], "rmse": [2.0, 0.8, 1.5], "memUsage": [0.5, 0.95, 0.0]}),
    "b": (1_000, "FINISHED", False, {"elasticNetParam": "0.50"}, {"color": "blue", "size": "6"},
          {"r2": [0.5, 0.2], "rmse": [NAN, 0.9], "memUsage": [0.2, NAN]}),
    "c": (2_000, "FAILED", False, {"elasticNetParam": "0.5"}, {"color": "Blue", "my custom tag": "my value "},
          {"r2": [0.31], "avg_areaUnderROC": [0.3], "rmse": [1.0], "memUsage": [NAN, NAN]}),
    "d": (3_000, "FINISHED", False, {}, {"size": "5"}, {"r2": [INF], "rmse": [-INF, 3.0]}),
    "e-run": (4_000, "KILLED", False, {"elasticNetParam": "0.5"}, {"color": "green"},
              {"r2": [0.35], "avg_areaUnderROC": [0.9, 0.2], "memUsage": [1.0, 0.0]}),
    "f": (5_000, "FINISHED", True, {"elasticNetParam": "0.5"}, {"color": "blue"}, {"r2": [0.9]}),
    "g": (6_000, "RUNNING", False, {}, {"color": "blue"}, {}),
}

FILTERS = [
    # the examples
    "metrics.r2 > 0.3",
    "params.elasticNetParam = 0.5",
    "params.elasticNetParam = 0.5 AND metrics.avg_areaUnderROC > 0.3",
    'tags.`my custom tag` = "my value"',
    'tags.color="blue" AND tags.size=5',
    "MIN(metrics.rmse) <= 1",
    "MAX(metrics.memUsage) > 0.9",
    "LATEST(metrics.memUsage) = 0",
    # attributes
    "attributes.status = 'KILLED'",
    "attributes.run_name = 'e-run'",
    "run_name LIKE '%-run'",
    "attributes.user_id = 'bob'",
    f"attributes.start_time >= {BASE + 2_000}",
    f"attributes.created < {BASE + 2_000}",
    f"attributes.end_time <= {BASE + 2_500}",
    # strings
    "tags.color LIKE 'b%'",
    "tags.color ILIKE 'b%'",
    "tags.color != 'blue'",
    "params.elasticNetParam != '0.5'",
    "params.elasticNetParam IS NULL",
    "tags.size IS NOT NULL",
    # metrics
    "metrics.r2 != 0.4",
    "metrics.r2 >= 0.35 AND metrics.r2 < 1",
    "MIN(metrics.rmse) < 0",
    "MAX(metrics.r2) >= 0.5 AND LATEST(metrics.r2) < 0.5",
    "MIN(metrics.memUsage) >= 0",
    "metrics.memUsage = 0",
    # datasets
    "datasets.name = 'iris'",
    "datasets.context = 'training'",
]
# The filters above with an unquoted number against a param or tag, as MLflow's search takes them.
AS_MLFLOW_WRITES_IT = {
    "params.elasticNetParam = 0.5": "params.elasticNetParam = '0.5'",
    "params.elasticNetParam = 0.5 AND metrics.avg_areaUnderROC > 0.3": "params.elasticNetParam = '0.5' AND metrics.avg_areaUnderROC > 0.3",
    'tags.color="blue" AND tags.size=5': "tags.color='blue' AND tags.size='5'",
}


def _history(values: list[float]) -> list[tuple[int, float]]:
    return list(enumerate(values))


def _expected_aggregate(name: str, aggregate: str, key: str) -> float | None:
    values = RUNS[name][5].get(key)
    if not values:
        return None
    numbers = [v for v in values if not math.isnan(v)]
    if aggregate == "LATEST":
        return values[-1]
    if not numbers:
        return None
    return min(numbers) if aggregate == "MIN" else max(numbers)


@pytest.fixture(scope="module")
def stores(target_server, tmp_path_factory):
    """The runs above written by MLflow's client into the session's server, copied into a
    sqlite store by trackport and exported from it into a bundle."""
    client = MlflowClient(target_server.url)
    name = f"filters-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name)
    ids = {}
    for run_name, (offset, status, deleted, params, tags, metrics) in RUNS.items():
        run = client.create_run(experiment_id, start_time=BASE + offset, run_name=run_name, tags={"mlflow.user": "bob" if run_name == "e-run" else "alice"})
        ids[run_name] = run_id = run.info.run_id
        points = [Metric(k, v, BASE + offset + step, step) for k, history in metrics.items() for step, v in _history(history)]
        client.log_batch(run_id, metrics=points, params=[Param(k, v) for k, v in params.items()], tags=[RunTag(k, v) for k, v in tags.items()])
        if run_name == "g":
            tags = [InputTag("mlflow.data.context", "training")]
            client.log_inputs(run_id, [DatasetInput(Dataset("iris", "abc", "local", "{}"), tags)])
        if status != "RUNNING":
            client.set_terminated(run_id, status, end_time=BASE + offset + 500)
        if deleted:
            client.delete_run(run_id)
    root = tmp_path_factory.mktemp("filters")
    sqlite = f"sqlite:///{root / 'runs.db'}"
    for args in (["copy", target_server.url, sqlite], ["export", sqlite, str(root / "bundle")]):
        result = CliRunner().invoke(cli, [*args, "--experiment", name, "--include-deleted"])
        assert result.exit_code == 0, result.output
    opened = {
        "rest": open_source(target_server.url),
        "sqlite": open_source(sqlite),
        "database": SqliteSource(sqlite, sqlite_path_from_uri(sqlite)),
        "bundle": open_source(str(root / "bundle")),
        # The same filters evaluated by trackport alone, with nothing pushed down to the store.
        "rest, all here": open_source(target_server.url, config=TransferConfig(search_pushdown=False)),
        "sqlite, all here": open_source(sqlite, config=TransferConfig(search_pushdown=False)),
    }
    yield {"sources": opened, "experiment": name, "experiment_id": experiment_id, "ids": ids, "client": client}
    for source in opened.values():
        source.close()


def _names(source, selection: Selection) -> list[str]:
    return [run.run_name for experiment in source.list_experiments(selection) for run in runs_of(source, experiment, selection)]


def _mlflow_search(stores, text: str, deleted: bool = False) -> list[str] | None:
    """What MLflow's own search of the server returns for the filter, in trackport's order;
    None when MLflow does not read it (MIN/MAX/LATEST; an unquoted number for a param)."""
    try:
        SearchUtils.parse_search_filter(text)
    except MlflowException:
        return None
    runs = stores["client"].search_runs([stores["experiment_id"]], text, run_view_type=3 if deleted else 1, order_by=["attributes.start_time ASC"])
    return [r.info.run_name for r in runs]


@pytest.mark.parametrize("text", FILTERS)
def test_a_filter_selects_the_same_runs_on_every_store(stores, text):
    selection = Selection(experiments=(stores["experiment"],), filter=text)
    found = {kind: _names(source, selection) for kind, source in stores["sources"].items()}
    for kind, names in found.items():
        assert names == found["sqlite"], (kind, found)
    mlflow = _mlflow_search(stores, text)
    if mlflow is not None:
        assert found["rest"] == mlflow, (text, mlflow)
    if text in AS_MLFLOW_WRITES_IT:  # an unquoted number against a param or tag is the text as written
        assert found["rest"] == _mlflow_search(stores, AS_MLFLOW_WRITES_IT[text]), text


@pytest.mark.parametrize(
    "text",
    ["MIN(metrics.rmse) <= 1", "MAX(metrics.memUsage) > 0.9", "LATEST(metrics.memUsage) = 0", "MIN(metrics.rmse) < 0",
     "MAX(metrics.r2) >= 0.5", "MIN(metrics.memUsage) >= 0", "LATEST(metrics.r2) > 0.3"],
)
def test_aggregates_match_the_histories(stores, text):
    """MIN/MAX/LATEST against values computed from the histories logged (NaN left out of MIN
    and MAX; a server clamps ±inf, which keeps every comparison here)."""
    clause = parse(text).clauses[0]
    import operator

    compare = {"<=": operator.le, "<": operator.lt, ">": operator.gt, ">=": operator.ge, "=": operator.eq}[clause.comparator]
    expected = []
    for name, spec in RUNS.items():
        value = _expected_aggregate(name, clause.aggregate, clause.key)
        if not spec[2] and value is not None and compare(value, clause.value):
            expected.append(name)
    assert expected, text
    selection = Selection(experiments=(stores["experiment"],), filter=text)
    for kind, source in stores["sources"].items():
        assert _names(source, selection) == expected, kind


def test_status_and_creation_time_select_the_same_runs(stores):
    experiment = (stores["experiment"],)
    cases = {
        Selection(experiments=experiment, include_deleted=True, deleted_only=True): ["f"],
        Selection(experiments=experiment, include_deleted=True, filter="metrics.r2 > 0.8"): ["d", "f"],
        Selection(experiments=experiment, created_after=BASE + 1_000, created_before=BASE + 3_000): ["b", "c", "d"],
        Selection(experiments=experiment, include_deleted=True, created_after=BASE + 4_000): ["e-run", "f", "g"],
    }
    for selection, expected in cases.items():
        for kind, source in stores["sources"].items():
            assert _names(source, selection) == expected, (kind, selection)


def test_run_ids_in_a_filter(stores):
    ids = stores["ids"]
    text = f"attributes.run_id IN ('{ids['a']}', '{ids['d']}') AND metrics.r2 > 0.3"
    selection = Selection(experiments=(stores["experiment"],), filter=text)
    for kind, source in stores["sources"].items():
        assert _names(source, selection) == ["a", "d"], kind
    assert _mlflow_search(stores, text) == ["a", "d"]


def test_what_a_store_is_asked_to_do_it_does(stores):
    """Pushdown: the store's own listing (before trackport's evaluator) is already narrowed
    where the filter lets it; without pushdown it is every run."""
    selection = Selection(experiments=(stores["experiment"],), filter="MIN(metrics.rmse) < 0 AND tags.size = '5'")
    for kind, source in stores["sources"].items():
        experiment = next(iter(source.list_experiments(selection)))
        listed = [run.run_name for run in source.iter_runs(experiment, selection)]
        if kind in ("sqlite", "database"):
            assert listed == ["d"], kind
        elif kind == "rest":
            assert listed == ["a", "d"], kind  # MIN() stays with trackport: no server has it
        else:
            assert len(listed) == len(RUNS) - 1, kind


def test_what_a_server_is_asked_is_a_superset(stores):
    """Pushdown: the server gets only what it reads as trackport does; MIN/MAX, != on a
    metric and IS NULL stay with trackport's evaluator."""
    assert mlflow_filter(Selection(filter="MIN(metrics.rmse) <= 1 AND metrics.r2 != 0.4 AND tags.x IS NULL")) is None
    assert mlflow_filter(Selection(filter="params.elasticNetParam = 0.5 AND LATEST(metrics.r2) > 0.3")) == (
        "params.`elasticNetParam` = '0.5' AND metrics.`r2` > 0.3"
    )


@pytest.mark.parametrize(
    "text, position",
    [("metrics.r2 >> 0.3", 13), ("metrics.r2 > 0.3 OR metrics.r2 < 0", 18), ("MIN(params.a) <= 1", 1),
     ("metrics.r2 > 'high'", 14), ("tags.a = 'x' AND", 17), ("metric.r2 > 0.3 AND nothing = 1", 21)],
)
def test_a_malformed_filter_points_at_the_problem(text, position):
    with pytest.raises(FilterError, match=f", position {position}: "):
        parse(text)


def test_a_malformed_filter_is_a_bad_argument_on_the_command_line(sample_sqlite, tmp_path):
    result = CliRunner().invoke(cli, ["export", sample_sqlite, str(tmp_path / "b"), "--filter", "metrics.r2 >> 0.3"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == ["error: --filter 'metrics.r2 >> 0.3', position 13: expected a number or a quoted string, found '>'"]
    assert not (tmp_path / "b").exists()


def test_status_and_times_on_the_command_line(sample_sqlite, tmp_path):
    """--status deleted takes the deleted runs only; --created-before takes an ISO date or
    epoch ms; contradictions and bad times are bad arguments (exit 2), in one line."""
    target = f"sqlite:///{tmp_path / 'deleted.db'}"
    result = CliRunner().invoke(cli, ["copy", sample_sqlite, target, "--status", "deleted", "--json"])
    assert result.exit_code == 0, result.output
    with open_source(target) as copied:
        everything = Selection(include_deleted=True)
        assert _names(copied, everything) == ["deleted run"]
    for args, message in [
        (["--status", "active", "--include-deleted"], "--status active contradicts --include-deleted"),
        (["--created-before", "last tuesday"], "'last tuesday' is neither epoch milliseconds nor an ISO date"),
        (["--created-after", "2030-01-01", "--created-before", "2020-01-01"], "--created-after is later than --created-before"),
    ]:
        result = CliRunner().invoke(cli, ["export", sample_sqlite, str(tmp_path / "b"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and message in result.output, result.output
    assert not (tmp_path / "b").exists()
    result = CliRunner().invoke(cli, ["export", sample_sqlite, str(tmp_path / "early"), "--created-before", "2023-11-14T22:13:21Z", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"]["runs"]["done"] == 2  # parent run and child, started by then
