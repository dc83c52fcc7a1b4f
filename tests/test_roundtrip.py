"""Must-show of the foundation: local store -> bundle -> fresh local store loses nothing."""
from __future__ import annotations

import hashlib
import math

import pyarrow.parquet as pq
from click.testing import CliRunner

from mlflow_snapshot import count_points, snapshot
from trackport.cli.main import cli
from trackport.samples.sample_store import SAMPLE_COUNTS

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _depth(run_id: str, parent_of: dict) -> int:
    return 1 + (_depth(parent_of[run_id], parent_of) if parent_of.get(run_id) in parent_of else 0)


def test_round_trip_through_a_bundle_keeps_every_field(sample_sqlite, tmp_path):
    bundle = tmp_path / "bundle"
    target = f"sqlite:///{tmp_path / 'target' / 'mlflow.db'}"
    runner = CliRunner()
    exported = runner.invoke(cli, ["export", sample_sqlite, str(bundle), "--include-deleted", "--json"])
    assert exported.exit_code == 0, exported.output
    imported = runner.invoke(cli, ["import", str(bundle), target, "--include-deleted", "--json"])
    assert imported.exit_code == 0, imported.output

    before, after = snapshot(sample_sqlite), snapshot(target)
    # The sample must really hold the hard cases, or this comparison proves little.
    runs = [r for e in before.values() for r in e["runs"].values()]
    assert len(runs) == SAMPLE_COUNTS["runs"]
    assert any(r["lifecycle_stage"] == "deleted" and r["deleted_time"] for r in runs)
    assert {r["status"] for r in runs} >= {"FINISHED", "FAILED"}
    assert any("mlflow.note.content" in r["tags"] for r in runs)
    assert any(r["inputs"] for r in runs)
    assert any(EMPTY_SHA256 in r["artifacts"].values() for r in runs)
    assert any(p.count("/") >= 2 for r in runs for p in r["artifacts"])
    values = [v for r in runs for h in r["metrics"].values() for _, _, v in h]
    assert "nan" in values
    parent_of = {rid: r["tags"].get("mlflow.parentRunId") for e in before.values() for rid, r in e["runs"].items()}
    assert max(_depth(rid, parent_of) for rid in parent_of) >= 3
    assert count_points(before) == SAMPLE_COUNTS["metric_points"]

    # Field by field: ids, names, times, users, states, params, tags, every metric point,
    # dataset inputs, every artifact byte (sha256), parent links and deleted state.
    assert sorted(after) == sorted(before)
    for name, experiment in before.items():
        assert after[name] == experiment, name


def test_bundle_metrics_read_as_plain_tables(sample_bundle):
    import duckdb

    files = sorted(sample_bundle.rglob("*.parquet"))
    assert files
    table = pq.read_table(files[0])
    assert table.column_names[:5] == ["run_id", "key", "step", "timestamp", "value"]
    total = sum(pq.read_metadata(f).num_rows for f in files)
    assert total == SAMPLE_COUNTS["metric_points"]
    pattern = str(sample_bundle / "experiments" / "*" / "runs" / "*" / "metrics.parquet")
    (count, nans, infs) = duckdb.connect().execute(
        f"select count(*), count(*) filter (where isnan(value)), count(*) filter (where isinf(value))"
        f" from read_parquet('{pattern}')"
    ).fetchone()
    assert count == total and nans >= 1
    values = [v for f in files for v in pq.read_table(f).column("value").to_pylist()]
    assert sum(math.isnan(v) for v in values) == nans
    assert sum(math.isinf(v) for v in values) == infs
