"""`trackport runs list`: the CSV of the sample exactly as the Databricks download has it, the
same rows from a sqlite store, a bundle and a server, JSON lines, the table, --columns, and a
listing that never holds more than a batch of runs."""
from __future__ import annotations

import csv
import io
import json
import weakref

from click.testing import CliRunner
from memory_source import BASE_TIME

from trackport.cli.main import cli
from trackport.domain import Experiment, MetricSummary, Run
from trackport.runs.listing import RunRow, RunTable, csv_records, run_rows
from trackport.samples.sample_store import LONG_PARAM
from trackport.selection import resolve_experiments
from trackport.stores.base import Selection, SourceStore, StoreDescription

# The sample (src/trackport/samples/sample_store.py), active runs, oldest first. The sqlite
# store keeps the sample's run ids, which are seeded. loss: 1000 points, the last 1/1000;
# "loss val": the greatest step is 2 (0.2); "métrique précision": NaN, inf, -inf, then 0.5.
SAMPLE_CSV = f"""\
Run ID,Name,Source Type,Source Name,User,Status,depth,long,lr,nested/param,paramètre spécial,child_metric,eval_acc,gc,loss,loss val,métrique précision,train/acc,x
8530d99ea2aa4365b5cccadf70356e67,parent run,LOCAL,train.py,alice,FINISHED,,{LONG_PARAM},0.001,1,oui,,0.8,,0.001,0.2,0.5,0.9,
3d3b73f674ac4edeb389cfb8194e63d7,child,LOCAL,,alice,FINISHED,1,,,,,-3.5,,,,,,,
e961c9baf91c41c3a780354d5e61979d,grandchild,LOCAL,,bob,FAILED,,,,,,,,42.0,,,,,
7114c4d5a82c4be398e9454b0ab8d794,killed run,LOCAL,,carol,KILLED,,,,,,,,,,,,,0.0
404df487ed3447be8c303fd34d598ea1,still running,LOCAL,,carol,RUNNING,,,,,,,,,,,,,
"""
PARENT, DELETED = "8530d99ea2aa4365b5cccadf70356e67", "e3b19f3b9bd44bb3b992e818057a57df"


def runs_list(*args: str):
    result = CliRunner().invoke(cli, ["runs", "list", *args])
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result


def records(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_csv_of_the_sample_is_the_databricks_download(sample_sqlite):
    assert runs_list(sample_sqlite, "--format", "csv").stdout == SAMPLE_CSV


def test_every_store_gives_the_same_rows(sample_sqlite, sample_bundle, source_server):
    """A server gives new run ids; everything else is the same. A bundle lists what it holds,
    the deleted run too, unless --status active."""
    expected = [row[1:] for row in records(SAMPLE_CSV)]
    for source in (sample_sqlite, str(sample_bundle), source_server.url):
        got = records(runs_list(source, "--format", "csv", "--status", "active").stdout)
        assert [row[1:] for row in got] == expected, source
    held = records(runs_list(str(sample_bundle), "--format", "csv").stdout)
    assert [row[0] for row in held[1:]] == [r[0] for r in records(SAMPLE_CSV)[1:4]] + [DELETED] + [r[0] for r in records(SAMPLE_CSV)[4:]]


def test_columns_add_times_first_and_tags_last(sample_sqlite):
    got = records(runs_list(sample_sqlite, "--format", "csv", "--columns", "tags", "--columns", "duration,start_time").stdout)
    header = got[0]
    assert header[:8] == ["Start Time", "Duration", "Run ID", "Name", "Source Type", "Source Name", "User", "Status"]
    assert header[-3:] == ["clé avec espace", "stage", "team"]  # user tags only: no mlflow.* column
    assert not [h for h in header if h.startswith("mlflow.")]
    parent, still_running = got[1], got[-1]
    assert parent[:3] == ["2023-11-14T22:13:20.000Z", "60.0", PARENT]
    assert parent[-3:] == ["valeur ünïcode", "dev", "vision"]
    assert still_running[:2] == ["2023-11-14T22:13:40.000Z", ""]  # no end time: no duration


def test_json_lines(sample_sqlite):
    lines = runs_list(sample_sqlite, "--format", "json", "--status", "all").stdout.splitlines()
    rows = {row["run_id"]: row for row in map(json.loads, lines)}
    assert len(rows) == 6
    parent = rows[PARENT]
    assert parent["metrics"]["loss"] == 0.001 and parent["metrics"]["métrique précision"] == 0.5
    assert parent["params"]["long"] == LONG_PARAM
    assert parent["experiment_name"] == "trackport-sample-a" and parent["start_time"] == BASE_TIME
    assert rows[DELETED]["lifecycle_stage"] == "deleted" and rows[DELETED]["metrics"] == {"loss": 8.0}


def test_table(sample_sqlite):
    lines = runs_list(sample_sqlite, "--status", "all", "--columns", "tags").stdout.splitlines()
    assert lines[0].split() == ["Run", "ID", "Experiment", "Name", "Start", "Time", "Duration", "User", "Status", "Source", "Tags"]
    assert len(lines) == 7
    parent = next(line for line in lines if line.startswith(PARENT))
    assert "2023-11-14 22:13:20" in parent and "1m 00s" in parent and "LOCAL train.py" in parent
    assert parent.endswith("…")  # its tags are wider than the column
    assert "FINISHED (deleted)" in next(line for line in lines if line.startswith(DELETED))


def test_filter_and_output_file(sample_sqlite, tmp_path):
    """--filter is the filter language of every store (trackport.search); --output writes a file."""
    out = tmp_path / "runs.csv"
    assert runs_list(sample_sqlite, "--format", "csv", "--filter", "metrics.loss < 0.01", "-o", str(out)).stdout == ""
    assert [row[0] for row in records(out.read_text(encoding="utf-8"))] == ["Run ID", PARENT]


def test_no_run_matches(sample_sqlite):
    after = ["--created-after", "2030-01-01"]
    assert runs_list(sample_sqlite, "--format", "csv", *after).stdout == "Run ID,Name,Source Type,Source Name,User,Status\n"
    table = runs_list(sample_sqlite, *after)
    assert (table.stdout, table.stderr) == ("", "no runs match\n")
    assert runs_list(sample_sqlite, "--format", "json", *after).stdout == ""


def test_unknown_column_is_a_usage_error(sample_sqlite):
    result = CliRunner().invoke(cli, ["runs", "list", sample_sqlite, "--columns", "start_time,colour"])
    assert result.exit_code == 2 and "colour" in result.stderr


class ManyRuns(SourceStore):
    """An experiment of n runs, each made only when the listing reaches it; it counts how many
    of them are alive at once."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.alive = 0
        self.most_alive = 0
        self.largest_ask = 0

    def describe(self) -> StoreDescription:
        return StoreDescription("memory", "memory:many")

    def list_experiments(self, selection: Selection):
        return iter(resolve_experiments(selection, [Experiment("1", "many", creation_time=BASE_TIME)], lambda ids: {}, "memory:many"))

    def iter_runs(self, experiment: Experiment, selection: Selection):
        for i in range(self.n):
            run = Run(f"{i:032x}", "1", f"run {i}", "tester", "FINISHED", BASE_TIME + i, BASE_TIME + i + 1000, params={"i": str(i)})
            self.alive += 1
            weakref.finalize(run, self._released)
            self.most_alive = max(self.most_alive, self.alive)
            yield run

    def _released(self) -> None:
        self.alive -= 1

    def metric_summaries(self, runs, keys, whole_history=True):
        """As a source that keeps latest values answers (a database): without reading histories."""
        self.largest_ask = max(self.largest_ask, len(runs))
        return {run.run_id: {"loss": MetricSummary(int(run.params["i"]) / 2, 0, BASE_TIME)} for run in runs}

    def iter_metric_batches(self, run: Run):
        raise AssertionError("histories are not read: metric_summaries answers")

    def list_artifacts(self, run: Run):
        return iter(())

    def open_artifact(self, run: Run, path: str):
        raise FileNotFoundError(path)


def test_a_listing_holds_one_batch_of_runs_at_a_time():
    source = ManyRuns(3000)
    with RunTable(run_rows(source, Selection(), batch_runs=100)) as table:
        written = list(csv_records(table))
    assert len(written) == 3001 and written[0][-2:] == ["i", "loss"] and written[-1][-2:] == ["2999", "1499.5"]
    assert source.largest_ask == 100
    assert 100 <= source.most_alive <= 102  # a batch (whose metrics are read at once), and the one before's last
    assert source.alive == 0


def test_cells_of_special_values_and_shared_keys():
    """NaN and ±inf as Python writes them, 0.1 as 0.1, through the spool and back; a param and
    a metric of one key are two columns, the param's first."""
    row = RunRow("r1", "1", "e", "n", "", "", "u", "FINISHED", "active", None, None, params={"a": "1"},
                 metrics={"a": float("nan"), "b": float("inf"), "c": float("-inf"), "d": 0.1})
    with RunTable([row]) as table:
        assert list(csv_records(table, ("duration",))) == [
            ["Duration", "Run ID", "Name", "Source Type", "Source Name", "User", "Status", "a", "a", "b", "c", "d"],
            ["", "r1", "n", "", "", "u", "FINISHED", "1", "nan", "inf", "-inf", "0.1"],
        ]
