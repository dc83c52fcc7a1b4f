"""The command line: bad input, verify levels, determinism, the demo."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from trackport.cli.main import cli
from trackport.samples.sample_store import SAMPLE_COUNTS

ROOT_FILE = "trackport-bundle.json"
MANIFEST = "manifest.jsonl"


def trackport(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    return subprocess.run(["trackport", *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# -- bad input: one line, non-zero exit, nothing written ------------------------------


def test_missing_store_path(tmp_path):
    bundle = tmp_path / "bundle"
    result = trackport("export", str(tmp_path / "nowhere" / "mlflow.db"), str(bundle))
    assert_one_line_error(result, 3, "nowhere")
    assert not bundle.exists() and not (tmp_path / "nowhere").exists()


def test_empty_store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the schema and Default
    result = trackport("export", uri, str(tmp_path / "bundle"))
    assert_one_line_error(result, 3, "no runs")
    assert not (tmp_path / "bundle").exists()


def test_folder_that_is_not_a_bundle(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    target = tmp_path / "target" / "mlflow.db"
    result = trackport("import", str(folder), f"sqlite:///{target}")
    assert_one_line_error(result, 3, "photos")
    assert not target.parent.exists()


def test_partly_written_bundle(bundle_copy, tmp_path):
    (bundle_copy / MANIFEST).unlink()
    target = tmp_path / "target" / "mlflow.db"
    result = trackport("import", str(bundle_copy), f"sqlite:///{target}")
    assert_one_line_error(result, 3, "incomplete")
    assert not target.parent.exists()


@pytest.mark.parametrize("command", ["export", "import", "copy"])
def test_unknown_option(command, tmp_path):
    result = trackport(command, "a", "b", "--frobnicate")
    assert_one_line_error(result, 2, "--frobnicate", "--help")


def test_unknown_experiment(sample_sqlite, tmp_path):
    result = trackport("export", sample_sqlite, str(tmp_path / "b"), "--experiment", "no such experiment")
    assert_one_line_error(result, 3, "no such experiment")
    assert not (tmp_path / "b").exists()


def test_export_into_a_complete_bundle_of_the_same_source_adds_what_is_new(sample_sqlite, tmp_path):
    bundle = tmp_path / "bundle"
    first = CliRunner().invoke(cli, ["export", sample_sqlite, str(bundle), "--experiment", "trackport sample b"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(cli, ["export", sample_sqlite, str(bundle), "--include-deleted", "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["counts"]["runs"] == {"done": SAMPLE_COUNTS["runs"] - 2, "skipped": 2, "failed": 0, "not_selected": 0}
    assert 0 < summary["elapsed_seconds"] < 60  # the transfer's own time
    assert verify(bundle, "full").returncode == 0
    info = json.loads(trackport("bundle", "inspect", str(bundle), "--json").stdout)
    assert info["counts"]["runs"] == SAMPLE_COUNTS["runs"]


def test_export_refuses_a_bundle_of_another_source(sample_bundle, tmp_path):
    other = tmp_path / "other.db"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{other}")
    client.create_run(client.create_experiment("x"))
    before = tree(sample_bundle)
    result = trackport("export", f"sqlite:///{other}", str(sample_bundle))
    assert_one_line_error(result, 3, "export to a new path")
    assert tree(sample_bundle) == before


# -- bundle verify ----------------------------------------------------------------------


def verify(bundle: Path, level: str) -> subprocess.CompletedProcess:
    return trackport("bundle", "verify", str(bundle), "--level", level)


@pytest.mark.parametrize("level", ["fast", "complete", "full"])
def test_verify_passes_on_a_fresh_bundle(sample_bundle, level):
    result = verify(sample_bundle, level)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problems" in result.stdout


def test_verify_full_names_any_file_with_one_changed_byte(bundle_copy):
    from trackport.bundle.layout import UNLISTED

    files = [
        p for p in sorted(bundle_copy.rglob("*"))
        if p.is_file() and p.stat().st_size > 0 and p.relative_to(bundle_copy).as_posix() not in UNLISTED
    ]
    kinds = {p.suffix for p in files}
    assert {".json", ".parquet", ".jsonl"} <= kinds and len(files) > 10
    for path in files:
        original = path.read_bytes()
        position = len(original) // 2
        path.write_bytes(original[:position] + bytes([original[position] ^ 0x01]) + original[position + 1 :])
        try:
            result = verify(bundle_copy, "full")
            relative = path.relative_to(bundle_copy).as_posix()
            assert result.returncode in (3, 4), relative
            assert relative in result.stdout + result.stderr, (relative, result.stdout, result.stderr)
        finally:
            path.write_bytes(original)


@pytest.mark.parametrize("level", ["fast", "complete", "full"])
def test_verify_names_a_removed_file(bundle_copy, level):
    victim = next(p for p in sorted(bundle_copy.rglob("*.parquet")))
    victim.unlink()
    result = verify(bundle_copy, level)
    assert result.returncode == 4
    assert victim.relative_to(bundle_copy).as_posix() in result.stdout


@pytest.mark.parametrize("level", ["fast", "complete", "full"])
def test_verify_refuses_an_unknown_major_version(bundle_copy, level):
    root = bundle_copy / ROOT_FILE
    descriptor = json.loads(root.read_text())
    descriptor["format_version"] = "2.0"
    root.write_text(json.dumps(descriptor))
    result = verify(bundle_copy, level)
    assert result.returncode in (3, 4)
    output = result.stdout + result.stderr
    assert ROOT_FILE in output and "2.0" in output


def test_inspect_describes_the_bundle(sample_bundle):
    result = trackport("bundle", "inspect", str(sample_bundle), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == "trackport-bundle" and info["format_version"].startswith("1.")
    assert info["counts"]["runs"] == SAMPLE_COUNTS["runs"]
    assert info["counts"]["metric_points"] == SAMPLE_COUNTS["metric_points"]


# -- determinism --------------------------------------------------------------------------


def manifest_lines(bundle: Path) -> dict[str, str]:
    lines = {}
    for line in (bundle / MANIFEST).read_text().splitlines():
        entry = json.loads(line)
        lines[entry["path"]] = line
    return lines


def test_exporting_twice_gives_identical_manifests_except_timestamps(sample_sqlite, tmp_path):
    runner = CliRunner()
    for name in ("one", "two"):
        result = runner.invoke(cli, ["export", sample_sqlite, str(tmp_path / name), "--include-deleted"])
        assert result.exit_code == 0, result.output
    one, two = manifest_lines(tmp_path / "one"), manifest_lines(tmp_path / "two")
    assert one.keys() == two.keys()
    # Only the root descriptor (created_at) and the ledger (a time per line) carry timestamps.
    differing = {path for path in one if one[path] != two[path]}
    assert differing <= {ROOT_FILE, "transfer/ledger.jsonl", "transfer/transfers.jsonl"}, differing
    assert len(one) > 10


# -- the demo -------------------------------------------------------------------------------


def test_demo_prints_a_summary_matching_the_sample(tmp_path):
    result = trackport("demo", "--workdir", str(tmp_path / "demo"), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    for phase in ("export", "import"):
        counts = report[phase]["counts"]
        for measure, expected in SAMPLE_COUNTS.items():
            assert counts[measure]["done"] == expected, (phase, measure, counts[measure])
            assert counts[measure]["failed"] == 0
    assert report["bundle_problems"] == [] and report["differences"] == []


def test_demo_text_output(tmp_path):
    result = trackport("demo", "--workdir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 differences" in result.stdout and "0 problems" in result.stdout
    assert f"{SAMPLE_COUNTS['metric_points']:,}" in result.stdout
