"""trackport status, idmap and verify SOURCE TARGET."""
from __future__ import annotations

import csv
import io
import json
import sqlite3

from click.testing import CliRunner

from test_cli import assert_one_line_error, trackport
from trackport.cli.main import cli
from trackport.samples.sample_store import SAMPLE_COUNTS


def _import(bundle, target):
    result = CliRunner().invoke(cli, ["import", str(bundle), target, "--include-deleted"])
    assert result.exit_code == 0, result.output


def test_status_idmap_and_verify_after_an_import(sample_bundle, sample_sqlite, tmp_path):
    target = f"sqlite:///{tmp_path / 'target' / 'mlflow.db'}"
    _import(sample_bundle, target)

    status = trackport("status", target, "--json")
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)["counts"]
    assert counts["run"] == {"done": SAMPLE_COUNTS["runs"], "skipped": 0, "failed": 0, "not_selected": 0}

    rows = list(csv.DictReader(io.StringIO(trackport("idmap", target, "--kind", "run").stdout)))
    assert len(rows) == SAMPLE_COUNTS["runs"] and all(r["source_id"] == r["target_id"] for r in rows)

    for source in (str(sample_bundle), sample_sqlite):
        for level in ("fast", "full"):
            result = trackport("verify", source, target, "--include-deleted", "--level", level)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "0 differences" in result.stdout


def test_verify_prints_each_difference_and_fails(sample_bundle, tmp_path):
    target = f"sqlite:///{tmp_path / 'target' / 'mlflow.db'}"
    _import(sample_bundle, target)
    with sqlite3.connect(tmp_path / "target" / "mlflow.db") as db:
        db.execute("update runs set status = 'KILLED' where name = 'child'")
        db.execute("delete from metrics where key = 'loss' and step = 5")
    full = trackport("verify", str(sample_bundle), target, "--include-deleted")
    assert full.returncode == 4
    assert "run 'child'" in full.stdout and "status 'FINISHED' != 'KILLED'" in full.stdout
    assert "metric points expected" in full.stdout
    fast = trackport("verify", str(sample_bundle), target, "--include-deleted", "--level", "fast")
    assert fast.returncode == 4 and "metric points expected" in fast.stdout and "status" not in fast.stdout


def test_status_counts_the_latest_outcome_of_each_unit(bundle_copy, tmp_path):
    target = f"sqlite:///{tmp_path / 'target' / 'mlflow.db'}"
    victim = next(bundle_copy.rglob("artifacts/gone.txt"))  # of a run without children
    data = victim.read_bytes()
    victim.unlink()
    result = CliRunner().invoke(cli, ["import", str(bundle_copy), target, "--include-deleted"])
    assert result.exit_code == 1
    failed = json.loads(trackport("status", target, "--json").stdout)
    assert failed["counts"]["run"]["failed"] == 1 and failed["failed"][0]["reason"]
    text = trackport("status", target).stdout
    assert "FAILED run" in text

    victim.write_bytes(data)  # repaired: the next run retries only what failed
    result = CliRunner().invoke(cli, ["import", str(bundle_copy), target, "--include-deleted", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["runs"] == {"done": 1, "skipped": SAMPLE_COUNTS["runs"] - 1, "failed": 0, "not_selected": 0}
    after = json.loads(trackport("status", target, "--json").stdout)
    assert after["counts"]["run"]["failed"] == 0 and after["failed"] == []


def test_status_of_a_target_without_transfers(tmp_path):
    assert_one_line_error(trackport("status", str(tmp_path / "nothing")), 3, "no transfer")
    assert_one_line_error(trackport("idmap", f"sqlite:///{tmp_path / 'x.db'}"), 3, "no id map")
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "x.db").exists()
