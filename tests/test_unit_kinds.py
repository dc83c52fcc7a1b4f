"""A new unit kind is a registration and adapter methods, not an edit of the engine.

A toy kind, a "note" attached to an experiment and (optionally) to one of its runs, is
registered here with a body schema. Its stores: a memory source with `iter_notes`, a
sqlite store with `put_note` / `find_note` / `iter_notes` keeping notes as JSON files, and
the bundle, which holds documents of any kind. The note then goes through export, import,
resume, status and verify, with the engine's dependency rule (a note on a failed run
fails with it) and the declared loss of a sink that cannot hold notes.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from memory_source import MemorySource
from trackport import kinds
from trackport.bundle.verify import verify_bundle
from trackport.errors import UnitError
from trackport.opening import open_bundle_sink, open_bundle_source, open_sink
from trackport.stores.base import Selection
from trackport.stores.sqlite.store import SqliteStore
from trackport.transfer import transfer
from trackport.transfer.compare import compare_stores
from trackport.transfer.status import read_status

EVERYTHING = Selection(include_deleted=True)
NOTE = kinds.UnitKind(
    "note",
    "notes",
    depends_on=("experiment", "run"),
    schema={
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string"}},
        "additionalProperties": False,
    },
)


# A kind of the whole workspace (as the model registry is): a label that names a run of any
# experiment, moved after every experiment.
LABEL = kinds.UnitKind("label", "labels", depends_on=("experiment", "run"), scope="workspace")


@pytest.fixture(autouse=True)
def note_kind():
    kinds.register(NOTE)
    kinds.register(LABEL)
    yield
    kinds.unregister("note")
    kinds.unregister("label")


class NotedSource(MemorySource):
    """A source that also holds notes: two per experiment, one on its first run."""

    def iter_notes(self, experiment):
        first = self.runs[0].run_id
        yield kinds.Unit("note", "n1", experiment.experiment_id, "about the experiment", {}, {"text": "all good"})
        yield kinds.Unit("note", "n2", experiment.experiment_id, "about a run", {"run": first}, {"text": "best run"})

    def iter_labels(self, selection=None):
        run = self.runs[1]
        yield kinds.Unit("label", "best", None, "the best run", {"experiment": run.experiment_id, "run": run.run_id}, {})


class NotedSqlite(SqliteStore):
    """A local sqlite store that also keeps notes, as JSON files in a folder beside the
    database; its reading half lists them again."""

    def __init__(self, db: Path, refuse_once: set[str] = frozenset(), refuse_run: str | None = None) -> None:
        super().__init__(f"sqlite:///{db}", create=True)
        self.folder = db.with_name(db.name + ".notes")
        self.refuse_once = set(refuse_once)
        self.refuse_run = refuse_run

    def _path(self, unit_id: str, experiment_id: str) -> Path:
        return self.folder / experiment_id / f"{unit_id}.json"

    def put_note(self, unit, target_experiment_id):
        if unit.unit_id in self.refuse_once:
            self.refuse_once.discard(unit.unit_id)
            raise UnitError(f"note {unit.unit_id} refused once")
        path = self._path(unit.unit_id, target_experiment_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"name": unit.name, "refs": unit.refs, "body": unit.body}))
        return unit.unit_id

    def find_note(self, unit, target_experiment_id):
        return unit.unit_id if self._path(unit.unit_id, target_experiment_id).is_file() else None

    def iter_notes(self, experiment):
        for path in sorted((self.folder / experiment.experiment_id).glob("*.json")):
            doc = json.loads(path.read_text())
            yield kinds.Unit("note", path.stem, experiment.experiment_id, doc["name"], doc["refs"], doc["body"])

    def put_label(self, unit, target_experiment_id):
        assert target_experiment_id is None  # a unit of the workspace
        return self.put_note(unit, "workspace")

    def find_label(self, unit, target_experiment_id):
        return self.find_note(unit, "workspace")

    def iter_labels(self, selection=None):
        for path in sorted((self.folder / "workspace").glob("*.json")):
            doc = json.loads(path.read_text())
            yield kinds.Unit("label", path.stem, None, doc["name"], doc["refs"], doc["body"])

    def put_run(self, run, target_experiment_id, content):
        if run.run_id == self.refuse_run:
            raise UnitError("refused")
        return super().put_run(run, target_experiment_id, content)


def _export(tmp_path: Path) -> tuple[NotedSource, Path]:
    source = NotedSource.workload(runs=3, artifact_bytes=10)
    bundle = tmp_path / "bundle"
    with open_bundle_sink(str(bundle)) as sink:
        summary = transfer(source, sink, EVERYTHING)
    assert summary.failed == 0, summary.failures
    assert summary.counts["notes"]["done"] == 2
    assert summary.counts["labels"]["done"] == 1
    return source, bundle


def test_a_note_goes_through_export_import_resume_status_and_verify(tmp_path):
    source, bundle = _export(tmp_path)
    documents = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*.json") if "/units/" in p.as_posix())
    assert documents == ["experiments/1/units/note/n1.json", "experiments/1/units/note/n2.json", "units/label/best.json"]
    assert verify_bundle(bundle, level="full").ok
    assert json.loads((bundle / "trackport-bundle.json").read_text())["counts"]["notes"] == 2

    db = tmp_path / "target.db"
    with open_bundle_source(str(bundle)) as src, NotedSqlite(db, refuse_once={"n2"}) as sink:
        first = transfer(src, sink, EVERYTHING)
    assert first.counts["notes"] == {"done": 1, "skipped": 0, "failed": 1, "not_selected": 0}
    assert [(f.kind, f.source_id) for f in first.failures] == [("note", "n2")]

    with open_bundle_source(str(bundle)) as src, NotedSqlite(db) as sink:
        second = transfer(src, sink, EVERYTHING)
        state_dir = sink.state_dir()
    assert second.failed == 0, second.failures
    assert second.counts["notes"] == {"done": 1, "skipped": 1, "failed": 0, "not_selected": 0}
    assert second.counts["runs"]["skipped"] == 3

    status = read_status(state_dir)
    assert status.counts["note"] == {"done": 1, "skipped": 1, "failed": 0, "not_selected": 0}  # latest outcomes
    assert list(status.counts) == ["experiment", "run", "note", "label"]  # as the kinds were registered
    assert [line["source_id"] for line in (json.loads(x) for x in (state_dir / "idmap.jsonl").read_text().splitlines())
            if line["kind"] == "note"] == ["n1", "n2"]

    with NotedSqlite(db) as copy, open_bundle_source(str(bundle)) as exported:
        assert list(compare_stores(source, copy, EVERYTHING)) == []
        assert list(compare_stores(exported, copy, EVERYTHING)) == []
        # The comparison can fail: a note edited in the target is found.
        target_note = copy.folder / "1" / "n2.json"
        edited = json.loads(target_note.read_text())
        edited["body"]["text"] = "edited"
        target_note.write_text(json.dumps(edited))
        assert [d.what for d in compare_stores(source, copy, EVERYTHING)] == ["text: 'best run' != 'edited'"]
        label = copy.folder / "workspace" / "best.json"
        moved = json.loads(label.read_text())
        moved["refs"]["run"] = source.runs[2].run_id
        label.write_text(json.dumps(moved))
        assert [d.where for d in compare_stores(source, copy, EVERYTHING)][-1] == "the workspace, label 'the best run'"


def test_a_note_on_a_failed_run_fails_with_it(tmp_path):
    source, bundle = _export(tmp_path)
    first_run = source.runs[0].run_id

    with open_bundle_source(str(bundle)) as src, NotedSqlite(tmp_path / "t.db", refuse_run=first_run) as sink:
        summary = transfer(src, sink, EVERYTHING)
    failures = {(f.kind, f.source_id): f.reason for f in summary.failures}
    assert failures == {("run", first_run): "refused", ("note", "n2"): f"its run {first_run} failed"}
    assert summary.counts["notes"]["done"] == 1


def test_a_workspace_unit_on_a_run_of_any_experiment_fails_with_it_then_moves(tmp_path):
    """A workspace unit comes after every experiment; its run, written in this transfer,
    is found through the experiment it names; when that run failed, it fails too."""
    source, bundle = _export(tmp_path)
    labelled = source.runs[1].run_id
    db = tmp_path / "w.db"
    with open_bundle_source(str(bundle)) as src, NotedSqlite(db, refuse_run=labelled) as sink:
        first = transfer(src, sink, EVERYTHING)
    failures = {(f.kind, f.source_id): f.reason for f in first.failures}
    assert failures == {("run", labelled): "refused", ("label", "best"): f"its run {labelled} failed"}
    with open_bundle_source(str(bundle)) as src, NotedSqlite(db) as sink:
        second = transfer(src, sink, EVERYTHING)
    assert second.failed == 0, second.failures
    assert second.counts["labels"] == {"done": 1, "skipped": 0, "failed": 0, "not_selected": 0}
    assert not second.losses  # its run was found in the target, through its experiment
    with NotedSqlite(db) as copy:
        [label] = list(copy.iter_labels())
        assert label.refs == {"experiment": "1", "run": labelled}


def test_a_sink_that_cannot_hold_notes_says_so_before_and_records_each(tmp_path):
    _, bundle = _export(tmp_path)
    with open_bundle_source(str(bundle)) as src, open_sink(f"sqlite:///{tmp_path / 'plain.db'}") as sink:
        summary = transfer(src, sink, EVERYTHING)
    assert "notes: the target cannot hold them; each is recorded as skipped" in summary.planned_losses
    assert "labels: the target cannot hold them; each is recorded as skipped" in summary.planned_losses
    assert summary.counts["notes"] == {"done": 0, "skipped": 2, "failed": 0, "not_selected": 0}
    assert summary.counts["labels"] == {"done": 0, "skipped": 1, "failed": 0, "not_selected": 0}
    assert summary.failed == 0


def test_a_damaged_note_is_refused_by_verify_and_import_alike(tmp_path):
    _, bundle = _export(tmp_path)
    damaged = bundle / "experiments/1/units/note/n1.json"
    doc = json.loads(damaged.read_text())
    doc["body"]["text"] = 5  # against the kind's schema; the manifest's size and hash still match below
    damaged.write_text(json.dumps(doc))
    _rehash(bundle, "experiments/1/units/note/n1.json")
    assert not verify_bundle(bundle, level="full").ok
    with open_bundle_source(str(bundle)) as src, NotedSqlite(tmp_path / "d.db") as sink:
        summary = transfer(src, sink, EVERYTHING)
    assert [(f.kind, f.source_id) for f in summary.failures] == [("note", "n1")]


def test_a_bundle_with_a_kind_this_trackport_does_not_know_is_imported_with_a_notice(tmp_path):
    _, bundle = _export(tmp_path)
    kinds.unregister("note")
    kinds.unregister("label")
    assert verify_bundle(bundle, level="full").ok
    with open_bundle_source(str(bundle)) as src, open_sink(f"sqlite:///{tmp_path / 'u.db'}") as sink:
        summary = transfer(src, sink, EVERYTHING)
    assert summary.failed == 0
    assert any("kinds this trackport does not know (label, note)" in n for n in summary.all_notices())


def _rehash(bundle: Path, rel: str) -> None:
    import hashlib

    data = (bundle / rel).read_bytes()
    manifest = bundle / "manifest.jsonl"
    lines = []
    for line in manifest.read_text().splitlines():
        entry = json.loads(line)
        if entry["path"] == rel:
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        lines.append(json.dumps(entry, sort_keys=True))
    manifest.write_text("\n".join(lines) + "\n")


def test_a_reference_to_a_unit_an_earlier_transfer_wrote_is_found_in_the_target(tmp_path):
    """A unit that refers to another of its kind which is not in this transfer: the
    reference names the target's copy when the target holds one (asked of the target:
    the bundle's lookup_unit), else it keeps the source id, recorded as a loss."""
    _, bundle = _export(tmp_path)

    class Later(NotedSource):
        def iter_notes(self, experiment):
            yield kinds.Unit("note", "n3", experiment.experiment_id, "after n1", {"note": "n1"}, {"text": "see n1"})
            yield kinds.Unit("note", "n4", experiment.experiment_id, "after n9", {"note": "n9"}, {"text": "see n9"})

        def iter_labels(self, selection=None):
            return iter(())

    with open_bundle_sink(str(bundle)) as sink:  # the same source again: an incremental export
        summary = transfer(Later.workload(runs=3, artifact_bytes=10), sink, EVERYTHING)
    assert summary.failed == 0, summary.failures
    assert summary.counts["notes"]["done"] == 2 and summary.counts["runs"]["skipped"] == 3
    assert summary.losses == ["note 'after n9' (n4): its note n9 is not in the target; the reference keeps its source id"]
    assert verify_bundle(bundle, level="full").ok


def test_a_store_of_datasets_and_empty_experiments_is_moved_not_refused(tmp_path):
    """A workspace's evaluation datasets are something to move, like its registry: a store
    holding them and experiments without runs is copied, not refused as holding nothing."""
    from trackport.domain import Experiment
    from trackport.genai import dataset_unit
    from trackport.stores.base import StoreDescription

    source = tmp_path / "datasets"
    with open_bundle_sink(str(source)) as sink:
        sink.begin(StoreDescription(kind="synthetic", uri="synthetic:datasets"), Selection())
        sink.put_experiment(Experiment("1", "evaluation", creation_time=1, last_update_time=1))
        dataset = dataset_unit({"dataset_id": "d-1", "name": "golden", "created_time": 1, "last_update_time": 1},
                               ["1"], [{"inputs": {"q": "2+2"}, "expectations": {"answer": "4"}}])
        sink.put_unit(dataset, None)
        sink.finish({})
    with open_bundle_source(str(source)) as store, open_bundle_sink(str(tmp_path / "copy")) as target:
        summary = transfer(store, target, Selection())
    assert summary.failed == 0, summary.failures
    assert summary.counts["evaluation_datasets"]["done"] == 1, summary.counts
