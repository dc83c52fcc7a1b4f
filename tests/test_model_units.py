"""Logged models, registered models and versions through the engine, the bundle and the
comparison, from an in-memory source (tests/model_memory.py): the parts every store shares.
The stores' own adapters are tested against real MLflow stores in test_rest_models.py and
test_sqlite_models.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model_memory import model_source
from trackport.bundle import BundleSink, BundleSource, verify_bundle
from trackport.bundle.layout import FORMAT_VERSION
from trackport.errors import BadInputError, UnitError
from trackport.opening import open_bundle_sink, open_bundle_source
from trackport.stores.base import Selection
from trackport.transfer import transfer
from trackport.transfer.compare import compare_stores
from trackport.transfer.plan import plan_transfer

EVERYTHING = Selection(include_deleted=True)


def _export(path: Path, selection: Selection = EVERYTHING, source=None):
    source = source or model_source()
    with open_bundle_sink(str(path)) as sink:
        summary = transfer(source, sink, selection)
    assert summary.failed == 0, summary.failures
    return source, summary


def test_models_round_trip_through_a_bundle(tmp_path):
    source, summary = _export(tmp_path / "b")
    counts = summary.counts
    assert counts["logged_models"]["done"] == 2
    assert counts["registered_models"]["done"] == 3
    assert counts["model_versions"]["done"] == 6
    bundle = tmp_path / "b"
    assert verify_bundle(bundle, "full").ok
    root = json.loads((bundle / "trackport-bundle.json").read_text())
    assert root["format_version"] == FORMAT_VERSION
    assert root["counts"]["logged_models"] == 2 and root["counts"]["model_versions"] == 6
    # Runs' artifacts (2 files each) and the logged models' files.
    assert root["counts"]["artifact_files"] == 2 * 4 + 4
    assert (bundle / "experiments/1/units/logged_model/m-1111/sub dir/é.txt").read_bytes() == "ünïcode\n".encode()
    version = json.loads((bundle / "units/model_version/churn%2F3.json").read_text())
    assert version["id"] == "churn/3" and version["body"]["deleted_before"] == [2]
    assert version["refs"] == {"registered_model": "churn", "model_version": "churn/1", "experiment": "1",
                               "run": source.runs[0].run_id, "logged_model": "m-1111"}
    with BundleSource(bundle) as exported:
        assert list(compare_stores(source, exported, EVERYTHING)) == []
        assert list(compare_stores(exported, source, EVERYTHING)) == []
    # Bundle to bundle: ids kept, files equal, nothing differs; again: everything skipped.
    for attempt in range(2):
        with open_bundle_source(str(bundle)) as src, open_bundle_sink(str(tmp_path / "c")) as sink:
            again = transfer(src, sink, EVERYTHING)
        outcome = "done" if attempt == 0 else "skipped"
        assert again.counts["model_versions"][outcome] == 6, again.counts
        assert again.counts["logged_models"][outcome] == 2
    with BundleSource(tmp_path / "c") as copy:
        assert list(compare_stores(source, copy, EVERYTHING)) == []


def test_verify_reports_a_version_whose_number_or_alias_differs(tmp_path):
    source, _ = _export(tmp_path / "b")
    shutil.copytree(tmp_path / "b", tmp_path / "edited")
    edited = tmp_path / "edited"
    doc_path = edited / "units/model_version/churn%2F3.json"
    doc = json.loads(doc_path.read_text())
    doc["body"]["aliases"] = []
    doc_path.write_text(json.dumps(doc))
    four = edited / "units/model_version/churn%2F4.json"
    doc = json.loads(four.read_text())
    doc["body"]["version"] = 5
    four.write_text(json.dumps(doc))
    model_file = edited / "experiments/1/units/logged_model/m-1111/model.pkl"
    model_file.write_bytes(b"x" + model_file.read_bytes()[1:])
    model_doc = edited / "experiments/1/units/logged_model/m-1111.json"
    doc = json.loads(model_doc.read_text())
    doc["files"] = [dict(f, sha256=_sha(model_file)) if f["path"] == "model.pkl" else f for f in doc["files"]]
    model_doc.write_text(json.dumps(doc))
    _rehash(edited)
    with BundleSource(edited) as copy:
        found = [str(d) for d in compare_stores(source, copy, EVERYTHING)]
    assert found == [
        "experiment 'models', logged_model 'model': file 'model.pkl': content differs (sha256)",
        "the workspace, model_version 'churn/3': aliases: ['champion'] != []",
        "the workspace, model_version 'churn/4': version: 4 != 5",
    ]


def test_model_selection_brings_the_runs_and_logged_models_behind_the_versions(tmp_path):
    source = model_source(runs=5)
    plan = plan_transfer(source, Selection(models=("other",)))
    third = source.runs[2].run_id
    assert plan.selection.run_ids == (third,) and plan.selection.include_deleted
    _, summary = _export(tmp_path / "b", Selection(models=("oth*",)), source)
    assert summary.counts["registered_models"]["done"] == 1
    assert summary.counts["model_versions"]["done"] == 1
    assert summary.counts["runs"]["done"] == 1  # the run behind other/1 only
    assert summary.counts["logged_models"]["done"] == 1  # m-2222, whose source run came along
    bundle = tmp_path / "b"
    assert sorted(p.name for p in bundle.glob("units/*/*.json")) == ["other%2F1.json", "other.json"]
    assert [p.name for p in bundle.glob("experiments/1/units/logged_model/*.json")] == ["m-2222.json"]
    with BundleSource(bundle) as exported:
        taken = plan_transfer(source, Selection(models=("oth*",))).selection
        assert list(compare_stores(source, exported, taken)) == []


def test_models_only_moves_the_registry_and_records_what_it_names_outside(tmp_path):
    _, summary = _export(tmp_path / "b", Selection(models=("churn", "greet"), models_only=True))
    assert summary.counts["runs"] == {"done": 0, "skipped": 0, "failed": 0, "not_selected": 0}
    assert summary.counts["model_versions"]["done"] == 5
    assert not (tmp_path / "b/experiments").exists() or not any((tmp_path / "b/experiments").iterdir())
    # Their runs and logged models are not in the target: each such reference is a loss.
    assert any("churn/1" in loss and "its logged_model m-1111 is not in the target" in loss for loss in summary.losses)


def test_a_selection_naming_no_model_or_mixing_models_and_runs_is_refused(tmp_path):
    source = model_source()
    with pytest.raises(BadInputError, match="no registered model or prompt matches --model nope"):
        plan_transfer(source, Selection(models=("nope",)))
    with pytest.raises(BadInputError, match="combined with --experiment"):
        plan_transfer(source, Selection(models=("churn",), experiments=("models",)))
    assert not (tmp_path / "b").exists()


def test_narrowed_runs_take_only_their_logged_models_and_no_registry(tmp_path):
    source = model_source()
    first = source.runs[0].run_id
    _, summary = _export(tmp_path / "b", Selection(run_ids=(first,)), source)
    assert summary.counts["logged_models"]["done"] == 1  # m-1111, whose source run is selected
    assert "registered_models" not in summary.counts  # the registry is not in a narrowed selection


class RefusingSink(BundleSink):
    """A bundle sink that refuses one unit once (by kind and id)."""

    def __init__(self, path, refuse: tuple[str, str]) -> None:
        super().__init__(path)
        self.refuse = refuse

    def put_unit(self, unit, target_experiment_id, content=None):
        if (unit.kind, unit.unit_id) == self.refuse:
            raise UnitError(f"{unit.unit_id} refused")
        return super().put_unit(unit, target_experiment_id, content)


def test_a_version_after_a_failed_version_waits_for_it_so_numbers_are_kept(tmp_path):
    source = model_source()
    with RefusingSink(tmp_path / "b", ("model_version", "churn/1")) as sink:
        first = transfer(source, sink, EVERYTHING)
    failures = {(f.kind, f.source_id): f.reason for f in first.failures}
    assert failures == {
        ("model_version", "churn/1"): "churn/1 refused",
        ("model_version", "churn/3"): "its model_version churn/1 failed",
        ("model_version", "churn/4"): "its model_version churn/3 failed",
    }
    assert first.counts["model_versions"]["done"] == 3  # greet's and other's
    with open_bundle_sink(str(tmp_path / "b")) as sink:
        second = transfer(source, sink, EVERYTHING)
    assert second.failed == 0
    assert second.counts["model_versions"] == {"done": 3, "skipped": 3, "failed": 0, "not_selected": 0}


def test_versions_of_a_logged_model_that_failed_fail_with_it(tmp_path):
    source = model_source()
    with RefusingSink(tmp_path / "b", ("logged_model", "m-2222")) as sink:
        summary = transfer(source, sink, EVERYTHING)
    failures = {(f.kind, f.source_id): f.reason for f in summary.failures}
    assert failures == {("logged_model", "m-2222"): "m-2222 refused", ("model_version", "other/1"): "its logged_model m-2222 failed"}


def test_damaged_model_files_are_refused_by_verify_and_import_alike(tmp_path):
    _export(tmp_path / "b")
    bundle = tmp_path / "b"
    damaged = bundle / "experiments/1/units/logged_model/m-1111/model.pkl"
    damaged.write_bytes(b"\x00" * damaged.stat().st_size)  # same size, other bytes
    report = verify_bundle(bundle, "full")
    assert [p.unit for p in report.problems] == [("logged_model", "m-1111")]
    with open_bundle_source(str(bundle)) as src, open_bundle_sink(str(tmp_path / "c")) as sink:
        summary = transfer(src, sink, EVERYTHING)
    failed = sorted((f.kind, f.source_id) for f in summary.failures)
    # The model's versions fail with it; the run behind it and the other units arrive.
    assert failed == [("logged_model", "m-1111"), ("model_version", "churn/1"), ("model_version", "churn/3"),
                      ("model_version", "churn/4")]
    assert not (tmp_path / "c/experiments/1/units/logged_model/m-1111").exists()
    assert summary.counts["runs"]["done"] == 4


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rehash(bundle: Path) -> None:
    """Rewrite the manifest's sizes and hashes for the files as they are now."""
    import hashlib

    manifest = bundle / "manifest.jsonl"
    lines = []
    for line in manifest.read_text().splitlines():
        entry = json.loads(line)
        data = (bundle / entry["path"]).read_bytes()
        entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        lines.append(json.dumps(entry, sort_keys=True))
    manifest.write_text("\n".join(lines) + "\n")


# -- the command line ------------------------------------------------------------------------
def _cli(*args: str):
    from click.testing import CliRunner

    from trackport.cli.main import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_the_command_line_takes_models_and_says_what_it_did(tmp_path):
    _export(tmp_path / "b")
    bundle, target = str(tmp_path / "b"), str(tmp_path / "c")
    mixed = _cli("copy", bundle, target, "--model", "churn", "--experiment", "models")
    assert mixed.exit_code == 2 and "cannot be combined with --experiment" in mixed.output
    assert not (tmp_path / "c").exists()
    typo = _cli("import", bundle, f"sqlite:///{tmp_path / 'x.db'}", "--on-existing-model", "merge")
    assert typo.exit_code == 2 and "merge" in typo.output
    none = _cli("copy", bundle, target, "--model", "nope")
    assert none.exit_code == 3 and "no registered model or prompt matches --model nope" in none.output
    copied = _cli("copy", bundle, target, "--model", "churn", "--json")
    assert copied.exit_code == 0, copied.output
    counts = json.loads(copied.output)["counts"]
    assert counts["model_versions"]["done"] == 3 and counts["registered_models"]["done"] == 1
    # The runs behind churn 1, 3 and 4, and the logged models of those runs (m-2222 too: its run came along).
    assert counts["runs"]["done"] == 2 and counts["logged_models"]["done"] == 2
    verified = _cli("verify", bundle, target, "--model", "churn")
    assert verified.exit_code == 0, verified.output
    idmap = _cli("idmap", target, "--kind", "model_version")
    assert idmap.output.splitlines() == [
        "kind,source_id,target_id", "model_version,churn/1,churn/1", "model_version,churn/3,churn/3",
        "model_version,churn/4,churn/4",
    ]
    inspect = _cli("bundle", "inspect", bundle)
    assert "logged_models" in inspect.output.replace(" ", "_") or "logged models" in inspect.output


def test_refs_are_named_alike_in_stores_that_give_other_ids():
    """A body names its refs, and ref names hold no ids: a prompt linked to experiment 1 in
    the source and to its copy, 2, in the target has the same refs but their ids."""
    from trackport import models

    source = models.registered_model_unit("greet", None, {models.PROMPT_EXPERIMENTS_TAG: ",1,7,"}, None, None)
    target = models.registered_model_unit("greet", None, {models.PROMPT_EXPERIMENTS_TAG: ",2,9,"}, None, None)
    assert source.refs == {"experiment#1": "1", "experiment#2": "7"}
    assert target.refs.keys() == source.refs.keys()
    lm = models.logged_model_unit(models.LoggedModelFields("m-1", "1", "m", source_run_id="aa", metrics=[
        models.ModelMetric("acc", 0.5, 1, 0, "zz"), models.ModelMetric("acc", 0.6, 2, 0, "bb")]))
    copy = models.logged_model_unit(models.LoggedModelFields("m-2", "4", "m", source_run_id="cc", metrics=[
        models.ModelMetric("acc", 0.5, 1, 0, "yy"), models.ModelMetric("acc", 0.6, 2, 0, "xx")]))
    assert lm.refs.keys() == copy.refs.keys() and lm.body == copy.body
