"""One conformance suite for every store: each source kind into each sink kind, then the
sink read back as a source must equal the source field by field, point by point, byte by byte."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from trackport.cli.main import cli
from trackport.config import TransferConfig
from trackport.samples.sample_store import SAMPLE_COUNTS
from trackport.opening import open_sink, open_source
from trackport.stores.base import Selection
from trackport.transfer import transfer
from trackport.transfer.compare import compare_stores

EVERYTHING = Selection(include_deleted=True)


def run_transfer(source: str, target: str, **options):
    """A transfer as the library's users write it: both stores closed afterwards (the
    target's lock is released)."""
    with open_source(source) as src, open_sink(target) as dst:
        return transfer(src, dst, EVERYTHING, **options)
SOURCES = ["sqlite", "mlruns", "bundle"]
SINKS = ["sqlite", "bundle"]


@pytest.fixture
def source_uri(request, sample_sqlite, sample_mlruns, sample_bundle) -> str:
    return {"sqlite": sample_sqlite, "mlruns": sample_mlruns, "bundle": str(sample_bundle)}[request.param]


def sink_uri(kind: str, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'target' / 'mlflow.db'}" if kind == "sqlite" else str(tmp_path / "bundle-out")


@pytest.mark.parametrize("source_uri", SOURCES, indirect=True)
@pytest.mark.parametrize("sink_kind", SINKS)
def test_transfer_then_compare(source_uri, sink_kind, tmp_path):
    target = sink_uri(sink_kind, tmp_path)
    summary = run_transfer(source_uri, target, config=TransferConfig(workers=3))
    assert summary.failed == 0, summary.failures
    assert summary.counts["runs"]["done"] == SAMPLE_COUNTS["runs"]
    assert summary.counts["metric_points"]["done"] == SAMPLE_COUNTS["metric_points"]
    assert summary.counts["artifact_bytes"]["done"] == SAMPLE_COUNTS["artifact_bytes"]
    differences = list(compare_stores(open_source(source_uri), open_source(target), EVERYTHING))
    assert differences == []


@pytest.mark.parametrize("source_uri", ["sqlite"], indirect=True)
def test_compare_detects_a_difference(source_uri, tmp_path):
    """The comparison used above can fail: an altered target is caught."""
    import sqlite3

    target = sink_uri("sqlite", tmp_path)
    run_transfer(source_uri, target)
    with sqlite3.connect(target[len("sqlite:///"):]) as db:
        db.execute("update metrics set value = value + 1 where rowid = (select min(rowid) from metrics where is_nan = 0)")
        db.execute("update params set value = 'changed' where rowid = (select min(rowid) from params)")
    differences = [str(d) for d in compare_stores(open_source(source_uri), open_source(target), EVERYTHING)]
    assert any("metric point" in d for d in differences)
    assert any("'changed'" in d for d in differences)


@pytest.mark.parametrize("sink_kind", SINKS)
def test_running_again_writes_nothing(sample_sqlite, sink_kind, tmp_path):
    target = sink_uri(sink_kind, tmp_path)
    run_transfer(sample_sqlite, target)
    if sink_kind == "bundle":
        return  # a complete bundle is refused, tested in test_cli
    again = run_transfer(sample_sqlite, target)
    assert again.counts["runs"] == {"done": 0, "skipped": SAMPLE_COUNTS["runs"], "failed": 0, "not_selected": 0}
    assert again.counts["metric_points"]["done"] == 0
    assert list(compare_stores(open_source(sample_sqlite), open_source(target), EVERYTHING)) == []


def test_a_failed_run_is_counted_reported_and_the_rest_arrives(bundle_copy, tmp_path):
    # Damage one run's artifact in the bundle: that run must fail, by name, and only it.
    victim = next(bundle_copy.rglob("artifacts/gone.txt"))  # of a run without children
    victim.unlink()
    target = sink_uri("sqlite", tmp_path)
    result = CliRunner().invoke(cli, ["import", str(bundle_copy), target, "--include-deleted", "--json"])
    assert result.exit_code == 1, result.output
    import json

    report = json.loads(result.stdout)
    assert report["counts"]["runs"]["failed"] == 1
    assert report["counts"]["runs"]["done"] == SAMPLE_COUNTS["runs"] - 1
    (failure,) = report["failures"]
    run_dir = victim.relative_to(bundle_copy).parts[3]
    assert failure["source_id"] == run_dir
    # The failed run left nothing visible in the target.
    runs = {r.run_id for e in open_source(target).list_experiments(EVERYTHING)
            for r in open_source(target).iter_runs(e, EVERYTHING)}
    assert run_dir not in runs and len(runs) == SAMPLE_COUNTS["runs"] - 1


def test_the_readme_library_example_runs(sample_sqlite, tmp_path):
    """The example in README.md's "As a library", with its paths pointed at the sample."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("### As a library", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    example = example.replace("sqlite:///old/mlflow.db", sample_sqlite).replace(
        "sqlite:///new/mlflow.db", f"sqlite:///{tmp_path / 'new.db'}"
    ).replace('experiments=("churn",)', "experiments=()")
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["summary"].counts["runs"]["done"] == SAMPLE_COUNTS["runs"]


def test_progress_knows_the_totals_from_the_start(sample_bundle, tmp_path):
    """Every progress event says how many units of each kind the transfer plans: from a
    source that counts runs without listing them, from the first event on."""
    events = []
    run_transfer(str(sample_bundle), f"sqlite:///{tmp_path / 't.db'}", on_progress=events.append)
    assert {e.kind for e in events} == {"experiment", "run"}
    assert all(e.planned == {"experiment": SAMPLE_COUNTS["experiments"], "run": SAMPLE_COUNTS["runs"]} for e in events)
    assert len([e for e in events if e.kind == "run"]) == SAMPLE_COUNTS["runs"]
