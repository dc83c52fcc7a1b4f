"""Every unit accounted for: done, skipped, failed, not selected (with why) or still to do,
in the summary, --json, the ledger and status; failures in every stage of the engine
reach the ledger and the summary."""
from __future__ import annotations

import json
import random
import shutil
import sqlite3
from pathlib import Path

from click.testing import CliRunner
from test_cli import trackport
from test_resume import _trackport_command, kill_and_rerun

from trackport.cli.main import cli
from trackport.errors import TransientError, UnitError
from trackport.samples import sample_store
from trackport.samples.sample_store import SAMPLE_COUNTS, SAMPLE_COUNTS_ACTIVE
from trackport.opening import open_sink, open_source
from trackport.stores.base import Selection
from trackport.transfer import transfer
from trackport.transfer.jsonl import read_jsonl

DELETED = "deleted; add --include-deleted to take it"


def _json(args: list[str]) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, [*args, "--json"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.stdout)


def _adds_up(summary: dict, bundle: Path) -> None:
    """done + skipped + failed + not selected is what the bundle holds, per kind."""
    held = json.loads((bundle / "trackport-bundle.json").read_text())["counts"]
    for measure in ("experiments", "runs"):
        assert sum(summary["counts"][measure].values()) == held[measure], (measure, summary["counts"], held)


def test_a_plain_import_replays_what_the_bundle_holds(sample_bundle, tmp_path):
    """The sample bundle was exported with --include-deleted: a plain import brings all of
    it, deleted run included; --exclude-deleted leaves that run out, and says so."""
    code, summary = _json(["import", str(sample_bundle), f"sqlite:///{tmp_path / 'all.db'}"])
    assert code == 0
    assert summary["counts"]["runs"] == {"done": SAMPLE_COUNTS["runs"], "skipped": 0, "failed": 0, "not_selected": 0}
    _adds_up(summary, sample_bundle)

    target = f"sqlite:///{tmp_path / 'active.db'}"
    code, summary = _json(["import", str(sample_bundle), target, "--exclude-deleted"])
    assert code == 0
    assert summary["counts"]["runs"]["done"] == SAMPLE_COUNTS_ACTIVE["runs"]
    assert summary["not_selected"] == [{"kind": "run", "reason": DELETED, "units": 1}]
    _adds_up(summary, sample_bundle)
    ledger = list(read_jsonl(Path(str(tmp_path / "active.db") + ".trackport") / "ledger.jsonl"))
    (left_out,) = [line for line in ledger if line["outcome"] == "not_selected"]
    assert left_out["kind"] == "run" and left_out["name"] == "deleted run" and left_out["reason"] == DELETED
    status = json.loads(trackport("status", target, "--json").stdout)
    assert status["counts"]["run"]["not_selected"] == 1


def test_a_deleted_experiment_and_its_runs_are_counted(sample_sqlite, tmp_path):
    db = tmp_path / "source.db"
    shutil.copy(sample_sqlite[len("sqlite:///"):], db)
    with sqlite3.connect(db) as con:  # as MLflow deletes an experiment: its runs too
        (exp_id,) = con.execute("SELECT experiment_id FROM experiments WHERE name = 'trackport sample b'").fetchone()
        con.execute("UPDATE experiments SET lifecycle_stage = 'deleted' WHERE experiment_id = ?", (exp_id,))
    bundle = tmp_path / "bundle"
    code, exported = _json(["export", f"sqlite:///{db}", str(bundle), "--include-deleted"])
    assert code == 0 and exported["counts"]["experiments"]["not_selected"] == 0
    code, summary = _json(["import", str(bundle), f"sqlite:///{tmp_path / 't.db'}", "--exclude-deleted"])
    assert code == 0
    reasons = {(n["kind"], n["reason"]): n["units"] for n in summary["not_selected"]}
    assert reasons == {
        ("experiment", DELETED): 1,
        ("run", "its experiment is deleted; add --include-deleted to take it"): 2,  # killed, still running
        ("run", DELETED): 1,
    }
    _adds_up(summary, bundle)
    # A store as the source leaves deleted units out unless asked, and counts them too.
    code, summary = _json(["export", f"sqlite:///{db}", str(tmp_path / "active")])
    assert code == 0 and sum(n["units"] for n in summary["not_selected"]) == 4


def test_status_shows_what_a_killed_import_left_to_do(tmp_path):
    from memory_source import memory_bundle

    big = memory_bundle(tmp_path / "big", runs=60, artifact_bytes=20_000, points=5_000)
    db = tmp_path / "t" / "mlflow.db"
    target = f"sqlite:///{db}"
    ledger = Path(str(db) + ".trackport") / "ledger.jsonl"
    outcomes = kill_and_rerun(
        _trackport_command() + ["import", str(big), target, "--workers", "1"], random.Random(5), kills=1,
        window=(0.05, 0.3), log=tmp_path / "log", started=lambda: ledger.exists() and ledger.stat().st_size > 0,
    )
    assert outcomes == ["killed"]
    status = trackport("status", target)
    assert status.returncode == 1, status.stdout
    assert "did not finish" in status.stdout and "STILL TO DO 1 experiment of 1" in status.stdout, status.stdout
    last = json.loads(trackport("status", target, "--json").stdout)["last_transfer"]
    assert last["ended"] is None and last["experiments_still_to_do"] == ["1"] and 0 < last["units_recorded"] < 60

    assert trackport("import", str(big), target).returncode == 0
    status = trackport("status", target)
    assert status.returncode == 0 and "finished" in status.stdout and "STILL TO DO" not in status.stdout


class _FailingFinish:
    """A real sqlite sink whose finish_experiment fails for one experiment."""

    def __init__(self, sink, name: str) -> None:
        self._sink, self._name = sink, name

    def __getattr__(self, attr):
        return getattr(self._sink, attr)

    def finish_experiment(self, experiment, target):
        if experiment.name == self._name:
            raise UnitError("the target refused to mark it deleted")
        return self._sink.finish_experiment(experiment, target)


class _ListingBreaksOff:
    """A real source whose run listing of one experiment breaks off after its first run."""

    def __init__(self, source, name: str) -> None:
        self._source, self._name = source, name

    def __getattr__(self, attr):
        return getattr(self._source, attr)

    def iter_runs(self, experiment, selection):
        for i, run in enumerate(self._source.iter_runs(experiment, selection)):
            if experiment.name == self._name and i == 1:
                raise TransientError("runs/search failed with HTTP 503 after retries")
            yield run


def test_failures_in_every_stage_reach_the_ledger_and_summary(sample_sqlite, tmp_path):
    everything = Selection(include_deleted=True)
    with open_source(sample_sqlite) as source, open_sink(f"sqlite:///{tmp_path / 'a.db'}") as sink:
        summary = transfer(source, _FailingFinish(sink, "trackport sample b"), everything)
    (failure,) = summary.failures
    assert failure.kind == "experiment" and "could not be finished" in failure.reason
    assert summary.counts["runs"]["done"] == SAMPLE_COUNTS["runs"]  # its runs were written
    lines = list(read_jsonl(Path(str(tmp_path / "a.db") + ".trackport") / "ledger.jsonl"))
    assert any(line["outcome"] == "failed" and line["kind"] == "experiment" for line in lines)

    with open_source(sample_sqlite) as source, open_sink(f"sqlite:///{tmp_path / 'b.db'}") as sink:
        summary = transfer(_ListingBreaksOff(source, "trackport-sample-a"), sink, everything)
    reasons = {f.kind: f.reason for f in summary.failures}
    assert "its runs could not all be listed" in reasons["experiment"] and "HTTP 503" in reasons["experiment"]
    # The run listed before the break was moved; the runs after it were never listed, so
    # they are still to do (the experiment's failure says why); the other experiments went on.
    assert summary.counts["runs"]["done"] == 1 + 2 and summary.counts["runs"]["failed"] == 0
    assert summary.counts["experiments"]["done"] == 2
    events = list(read_jsonl(Path(str(tmp_path / "b.db") + ".trackport") / "transfers.jsonl"))
    assert [e["event"] for e in events] == ["started", "finished"]


def test_runs_without_an_artifact_folder_are_said(source_server, tmp_path):
    db = source_server.workdir / "mlflow.db"
    wrong = tmp_path / "not-the-artifacts"
    wrong.mkdir()
    missing = trackport("export", f"sqlite:///{db}?artifacts_destination={tmp_path / 'nowhere'}", str(tmp_path / "b1"))
    assert missing.returncode == 3 and "no such directory" in missing.stderr, missing.stderr
    assert not (tmp_path / "b1").exists()
    result = trackport("export", f"sqlite:///{db}?artifacts_destination={wrong}", str(tmp_path / "b2"), "--json")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and f"{SAMPLE_COUNTS_ACTIVE['runs']} runs had no artifact folder" in notes[0], result.stderr
    assert str(wrong) in notes[0] and "artifacts_destination" in notes[0]
    assert json.loads(result.stdout)["notices"] == [notes[0][len("note: "):]]


def _target_experiments(db: Path) -> list[str]:
    with open_source(f"sqlite:///{db}") as target:
        return sorted(e.name for e in target.list_experiments(Selection(include_deleted=True)) if e.name != "Default")


def test_run_ids_from_a_bundle_create_only_the_experiments_that_hold_them(sample_bundle, tmp_path):
    """Before, a bundle source ignored --run-id when choosing experiments: every experiment
    of the bundle was created in the target, empty."""
    with open_source(str(sample_bundle)) as bundle:
        everything = Selection(include_deleted=True)
        killed = next(r.run_id for e in bundle.list_experiments(everything) for r in bundle.iter_runs(e, everything)
                      if r.run_name == "killed run")
    code, summary = _json(["import", str(sample_bundle), f"sqlite:///{tmp_path / 'one.db'}", "--run-id", killed])
    assert code == 0
    assert summary["counts"]["runs"]["done"] == 1 and summary["counts"]["experiments"]["done"] == 1
    assert _target_experiments(tmp_path / "one.db") == [sample_store.EXPERIMENT_B]


def test_a_filter_writes_only_the_experiments_it_selects_runs_in(sample_sqlite, tmp_path):
    """An experiment with no run matching --filter is not selected, said why, and not
    created in the target: no selected unit needs it."""
    db = tmp_path / "killed.db"
    code, summary = _json(["copy", sample_sqlite, f"sqlite:///{db}", "--filter", "attributes.status = 'KILLED'"])
    assert code == 0
    assert summary["counts"]["runs"]["done"] == 1
    assert summary["counts"]["experiments"]["done"] == 1
    assert {"kind": "experiment", "reason": "no run in it matches the filter", "units": 2} in summary["not_selected"]
    assert _target_experiments(db) == [sample_store.EXPERIMENT_B]


def test_a_listing_that_breaks_off_before_a_selected_run_fails_its_experiment(tmp_path):
    """With a selection that picks runs, the engine reads an experiment's listing up to its
    first selected run before writing the experiment: a listing that breaks off there
    fails the experiment with the reason, it is not taken for "nothing selected"."""
    from memory_source import MemorySource

    class Breaking(MemorySource):
        def iter_runs(self, experiment, selection):
            raise TransientError("the server went away")
            yield  # a generator: the error comes with the first run asked for

    source = Breaking.workload(runs=2, artifact_bytes=1)
    selection = Selection(experiments=("1",), run_ids=(source.runs[0].run_id,))
    with open_sink(f"sqlite:///{tmp_path / 't.db'}") as sink:
        summary = transfer(source, sink, selection)
    assert [(f.kind, f.source_id) for f in summary.failures] == [("experiment", "1")]
    assert "could not all be listed: the server went away" in summary.failures[0].reason
    assert not summary.not_selected
