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
        try:  # in this process: a subprocess per file costs a second of imports each
            result = CliRunner().invoke(cli, ["bundle", "verify", str(bundle_copy), "--level", "full"])
            relative = path.relative_to(bundle_copy).as_posix()
            assert result.exit_code in (3, 4), relative
            assert relative in result.output, (relative, result.output)
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


# -- bundle inspect ------------------------------------------------------------------------


def test_inspect_text_shows_the_descriptor_and_each_experiment_in_columns(sample_bundle):
    result = CliRunner().invoke(cli, ["bundle", "inspect", str(sample_bundle)])
    assert result.exit_code == 0, result.output
    info = json.loads(CliRunner().invoke(cli, ["bundle", "inspect", str(sample_bundle), "--json"]).stdout)
    lines = result.stdout.splitlines()
    fields = {line.split("  ")[0]: line for line in lines if line and not line.startswith(" ")}
    for label in ("format", "producer", "source", "created at", "counts: runs", "counts: metric points"):
        assert label in fields, (label, result.stdout)
    assert info["created_at"] in fields["created at"]
    assert f"{SAMPLE_COUNTS['metric_points']:,}" in fields["counts: metric points"]
    # The values start in one column.
    starts = {len(line) - len(line[len(label):].lstrip()) for label, line in fields.items() if label in (
        "format", "producer", "created at", "counts: runs")}
    assert len(starts) == 1, result.stdout
    header = next(line for line in lines if line.split() == ["id", "name", "state", "runs"])
    table = lines[lines.index(header) + 1:]
    assert len(table) == len(info["experiments"])
    for experiment, row in zip(info["experiments"], table):
        assert row.split()[0] == experiment["experiment_id"] and repr(experiment["name"]) in row
        assert row.split()[-1] == f"{experiment['runs']:,}" and experiment["lifecycle_stage"] in row


def test_inspect_text_tolerates_missing_keys_and_shows_the_selection():
    from trackport.cli.render import inspect_text

    bare = inspect_text({"format": "trackport-bundle", "format_version": "1.0", "experiments": []})
    assert "trackport-bundle 1.0" in bare and "producer" in bare
    full = inspect_text({
        "format": "trackport-bundle", "format_version": "1.1", "created_at": "2024-01-02T03:04:05+00:00",
        "producer": {"name": "trackport", "version": "9.9"},
        "source": {"kind": "sqlite", "uri": "sqlite:///x.db", "mlflow_version": "3.1"},
        "selection": {"experiments": ["churn"], "run_ids": [], "include_deleted": True, "filter": "metrics.r2 > 0.3"},
        "counts": {"experiments": 1, "runs": 1, "notes": 2, "metric_points": 12345},
        "deleted": {"experiments": 0, "runs": 1},
        "experiments": [
            {"experiment_id": "7", "name": "churn", "lifecycle_stage": "active", "runs": 1},
            {"experiment_id": "8", "name": None, "unreadable": "experiment.json is damaged"},
        ],
    })
    lines = [" ".join(line.split()) for line in full.splitlines()]  # the columns' padding aside
    for expected in ("selection: experiments churn", "selection: run ids all", "selection: include deleted yes",
                     "selection: filter metrics.r2 > 0.3", "counts: notes 2", "counts: metric points 12,345",
                     "deleted: runs 1", "2 experiments:", "7 'churn' active 1", "8 unreadable ?",
                     "experiment 8 is unreadable: experiment.json is damaged"):
        assert expected in lines, (expected, full)


# -- plurals ----------------------------------------------------------------------------------


def test_the_summary_table_has_a_row_per_measure_and_says_one_run():
    from trackport.cli.render import summary_table
    from trackport.transfer.summary import OUTCOMES, Failure, Summary

    summary = Summary()
    summary.counts = {
        "experiments": dict.fromkeys(OUTCOMES, 0), "runs": dict.fromkeys(OUTCOMES, 0),
        "notes": dict(dict.fromkeys(OUTCOMES, 0), done=3),
        "metric_points": dict(dict.fromkeys(OUTCOMES, 0), done=12345),
        "artifact_files": dict.fromkeys(OUTCOMES, 0), "artifact_bytes": dict.fromkeys(OUTCOMES, 0),
    }
    summary.failures.append(Failure("run", "r1", "train", "boom"))
    summary.not_selected[("run", "it is deleted")] = 1
    summary.not_selected[("experiment", "it is deleted")] = 2
    lines = summary_table(summary).splitlines()
    labels = [line.split("  ")[0] for line in lines[1:7]]
    assert labels == ["experiments", "runs", "notes", "metric points", "artifact files", "artifact bytes"], lines
    assert "12,345" in lines[4]
    assert "NOT SELECTED 1 run: it is deleted" in lines
    assert "NOT SELECTED 2 experiments: it is deleted" in lines
    assert "FAILED run 'train' (r1): boom" in lines


def test_counts_of_one_are_singular(sample_bundle, tmp_path):
    result = CliRunner().invoke(cli, ["verify", str(sample_bundle), str(sample_bundle), "--level", "fast"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("0 differences")
    from trackport.cli.render import plural

    assert (plural(1, "difference"), plural(2, "problem"), plural(1234, "file")) == ("1 difference", "2 problems", "1,234 files")


# -- internal errors: exit 70, one line --------------------------------------------------------

REPORT_IT = "(a bug in trackport; please report it with the traceback: run again with TRACKPORT_DEBUG=1)"


def broken_inspect(exc: Exception):
    def inspect_bundle(path):
        raise exc

    return inspect_bundle


def test_an_unexpected_exception_is_one_line_and_exit_70(monkeypatch, sample_bundle):
    monkeypatch.delenv("TRACKPORT_DEBUG", raising=False)
    monkeypatch.setattr("trackport.bundle.inspect_bundle", broken_inspect(RuntimeError("gremlin")))
    result = CliRunner().invoke(cli, ["bundle", "inspect", str(sample_bundle)])
    assert result.exit_code == 70, (result.exit_code, result.output, result.exception)
    assert result.stderr.splitlines() == [f"error: internal error: RuntimeError: gremlin {REPORT_IT}"]


def test_trackport_debug_adds_the_traceback(monkeypatch, sample_bundle):
    monkeypatch.setenv("TRACKPORT_DEBUG", "1")
    monkeypatch.setattr("trackport.bundle.inspect_bundle", broken_inspect(RuntimeError("gremlin")))
    result = CliRunner().invoke(cli, ["bundle", "inspect", str(sample_bundle)])
    assert result.exit_code == 70
    assert "Traceback (most recent call last)" in result.stderr and "in inspect_bundle" in result.stderr
    assert result.stderr.splitlines()[-1] == f"error: internal error: RuntimeError: gremlin {REPORT_IT}"


def internal_error(kind: str, source_id: str):
    from trackport.errors import InternalError

    try:
        raise ValueError("no such column")
    except ValueError as cause:
        error = InternalError(f"internal error in {kind} {source_id}: ValueError: no such column", kind, source_id)
        error.__cause__ = cause
        return error


@pytest.mark.parametrize("debug", [False, True])
def test_an_internal_error_names_its_unit(monkeypatch, sample_bundle, debug):
    if debug:
        monkeypatch.setenv("TRACKPORT_DEBUG", "1")
    else:
        monkeypatch.delenv("TRACKPORT_DEBUG", raising=False)
    monkeypatch.setattr("trackport.bundle.inspect_bundle", broken_inspect(internal_error("run", "abc123")))
    result = CliRunner().invoke(cli, ["bundle", "inspect", str(sample_bundle)])
    assert result.exit_code == 70
    line = f"error: internal error in run abc123: ValueError: no such column {REPORT_IT}"
    assert result.stderr.splitlines()[-1] == line
    if debug:  # the traceback of the adapter's exception, not of the InternalError
        assert 'raise ValueError("no such column")' in result.stderr
    else:
        assert result.stderr.splitlines() == [line]


def test_an_adapter_bug_during_a_transfer_stops_it_with_exit_70(monkeypatch, sample_sqlite, tmp_path):
    from trackport.bundle.writer import BundleSink

    def put_run(self, *args, **kwargs):
        raise RuntimeError("gremlin in put_run")

    monkeypatch.delenv("TRACKPORT_DEBUG", raising=False)
    monkeypatch.setattr(BundleSink, "put_run", put_run)
    result = CliRunner().invoke(cli, ["export", sample_sqlite, str(tmp_path / "bundle")])
    assert result.exit_code == 70, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: internal error in run "), result.stderr
    assert "RuntimeError: gremlin in put_run" in lines[0] and lines[0].endswith(REPORT_IT)
    assert "runs" in result.stdout  # what was done before the stop
