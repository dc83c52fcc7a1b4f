"""`trackport runs compare` on the sample: the same table from a local store and a server,
--only-diff, the plotted params and metrics, the PNG, and its errors. The HTML page in a
browser: tests/test_compare_browser.py."""
from __future__ import annotations

import json
import math
import struct

import pytest
from click.testing import CliRunner

from trackport.cli.main import cli
from trackport.opening import open_source
from trackport.runs.compare import compare_runs, load_runs, same
from trackport.runs.plots import choose
from trackport.selection import runs_of
from trackport.stores.base import Selection

THREE = ["parent run", "child", "grandchild"]  # one experiment; users, statuses and params differ
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_ids_by_name(uri: str) -> dict[str, str]:
    """Each sample run's id in the store at uri (a server gives runs ids of its own)."""
    selection = Selection(include_deleted=True)
    with open_source(uri) as source:
        return {run.run_name: run.run_id for e in source.list_experiments(selection) for run in runs_of(source, e, selection)}


def compare(*args: str):
    return CliRunner().invoke(cli, ["runs", "compare", *args])


def rows(result) -> dict[tuple[str, str], list]:
    assert result.exit_code == 0, (result.output, result.stderr)
    return {(row["section"], row["key"]): row["values"] for row in json.loads(result.stdout)["rows"]}


def assert_one_line_error(result, code: int, *words: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_a_local_store_and_a_server_give_the_same_table(sample_sqlite, source_server):
    tables, texts = [], []
    for uri in (sample_sqlite, source_server.url):
        ids = run_ids_by_name(uri)
        args = [uri, *(ids[name] for name in THREE)]
        result = compare(*args, "--json")
        assert [run["run_name"] for run in json.loads(result.stdout)["runs"]] == THREE
        tables.append(rows(result))
        text = compare(*args).stdout.splitlines()
        texts.append([line for line in text if not line.lstrip().startswith("run id")])  # ids differ: values do not
    assert tables[0] == tables[1]
    assert texts[0] == texts[1]
    table = tables[0]
    assert table["attribute", "user"] == ["alice", "alice", "bob"]
    assert table["attribute", "status"] == ["FINISHED", "FINISHED", "FAILED"]
    assert table["attribute", "duration"] == [60_000, 29_000, 18_000]
    assert table["param", "depth"] == [None, "1", None]
    # Latest values, MLflow's rule: the point of the greatest step (then timestamp, value).
    assert table["metric", "loss"] == [1 / 1000, None, None]
    assert table["metric", "loss val"] == [0.2, None, None]
    assert table["metric", "métrique précision"] == [0.5, None, None]  # NaN and infinities came before
    assert table["metric", "gc"] == [None, None, 42.0]


def test_only_diff_hides_the_rows_equal_in_every_run(sample_sqlite):
    ids = run_ids_by_name(sample_sqlite)
    args = [sample_sqlite, *(ids[name] for name in THREE)]
    every, differing = rows(compare(*args, "--json")), rows(compare(*args, "--json", "--only-diff"))
    assert every["attribute", "experiment"] == ["trackport-sample-a"] * 3
    assert ("attribute", "experiment") not in differing and ("attribute", "lifecycle stage") not in differing
    assert differing["attribute", "status"] == every["attribute", "status"]
    assert ("param", "depth") in differing  # a key some runs lack differs
    assert list(differing) == [key for key in every if key not in (("attribute", "experiment"), ("attribute", "lifecycle stage"))]
    text = compare(*args, "--only-diff").stdout
    assert "* status" in text and "experiment" not in text


def test_what_counts_as_equal():
    nan = math.nan
    assert same([nan, nan]) and same([None, None]) and same([0.5, 0.5]) and same(["a", "a"])
    assert not same([1.0, None]) and not same([nan, 1.0]) and not same(["0.5", "0.50"]) and not same([None, "x"])


def test_the_plotted_params_and_metrics(sample_sqlite):
    ids = run_ids_by_name(sample_sqlite)
    with open_source(sample_sqlite) as source:
        loaded = load_runs(source, [ids["parent run"], ids["child"], ids["deleted run"]])
        comparison = compare_runs(source, loaded)
        named = compare_runs(source, loaded, params=["paramètre spécial", "lr"], metrics=["métrique précision"])
    # By default: the metric most runs have (loss: the parent and the deleted run), and what
    # both of those have besides (no param).
    default = choose(comparison)
    assert [d.key for d in default.metrics] == ["loss"] and default.params == () and default.chosen_by_default
    assert default.metrics[0].values == (1 / 1000, None, 8.0)
    chosen = choose(named, params=("paramètre spécial", "lr"), metrics=("métrique précision",))
    assert [(d.key, d.numeric) for d in chosen.params] == [("paramètre spécial", False), ("lr", True)]
    assert chosen.params[1].values == (0.001, None, None)  # a numeric param as a number
    assert not chosen.chosen_by_default


def test_png(sample_sqlite, tmp_path):
    ids = run_ids_by_name(sample_sqlite)
    picture = tmp_path / "compare.png"
    result = compare(sample_sqlite, ids["parent run"], ids["child"], ids["deleted run"], "--png", str(picture))
    assert result.exit_code == 0, result.output
    data = picture.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    # Two panels side by side: the scatter plot and the history of loss, 600x400 pixels each.
    assert struct.unpack(">II", data[16:24]) == (1200, 400)
    assert "(1200x400 pixels)" in result.stderr
    from matplotlib.image import imread

    pixels = imread(picture)
    assert pixels.shape[:2] == (400, 1200) and pixels.std() > 0.05  # decodes, and is not blank
    assert [p.name for p in tmp_path.iterdir()] == ["compare.png"]  # no temp file left beside it


@pytest.mark.parametrize(
    "args,code,words",
    [
        (["--only-dif"], 2, ["--only-dif"]),
        (["--html", "/nowhere/page.html"], 2, ["/nowhere"]),
        (["0" * 32], 3, ["0" * 32]),
        (["--params", "no such param"], 3, ["'no such param'"]),
    ],
    ids=["mistyped option", "html in a missing folder", "unknown run id", "unknown param"],
)
def test_errors_are_one_line(sample_sqlite, args, code, words):
    ids = run_ids_by_name(sample_sqlite)
    assert_one_line_error(compare(sample_sqlite, ids["parent run"], *args), code, *words)
