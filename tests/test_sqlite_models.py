"""MLflow 3's model objects between MLflow databases and local sqlite stores: logged models
(with their files), registered models, prompts and versions, read from a tracking database
directly and written into a sqlite store with their ids and version numbers kept.

The origin is built with MLflow's own client (samples/model_store.py); every target is
read back with MLflow's client and with SQL."""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

from trackport.errors import UnitError  # noqa: E402
from trackport.opening import open_bundle_sink, open_bundle_source, open_sink, open_source  # noqa: E402
from trackport.provenance import SOURCE_UNIT_TAG, rewrite_mlmodel  # noqa: E402
from trackport.samples.model_store import MODEL_SAMPLE_COUNTS, X, ModelSample, build_model_sample  # noqa: E402
from trackport.stores.base import Selection  # noqa: E402
from trackport.stores.sqlite.store import SqliteStore  # noqa: E402
from trackport.transfer import transfer  # noqa: E402
from trackport.transfer.compare import compare_stores  # noqa: E402

ALL = Selection(include_deleted=True)
MODEL_KINDS = ("logged_models", "registered_models", "model_versions")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> ModelSample:
    """The origin: read it, never write into it (MLflow's own loaders write beside a local
    model's files, so they are always given a dst_path). This module's own, not the
    session's model_sample_sqlite: loading a prompt through MLflow links it to the active
    experiment, a write into the origin that other modules' state would change."""
    return build_model_sample(f"sqlite:///{tmp_path_factory.mktemp('origin') / 'mlflow.db'}")


def copy(source_uri: str, target_uri: str, selection: Selection = ALL, **sink_options):
    with open_source(source_uri) as source, open_sink(target_uri, **sink_options) as sink:
        return transfer(source, sink, selection)


@pytest.fixture(scope="module")
def targets(sample, tmp_path_factory) -> dict[str, Path]:
    """The sample copied sqlite -> sqlite, and sqlite -> bundle -> sqlite."""
    root = tmp_path_factory.mktemp("targets")
    direct = root / "direct" / "mlflow.db"
    summary = copy(sample.uri, f"sqlite:///{direct}")
    assert summary.failed == 0, summary.failures
    assert summary.losses == []
    bundle = root / "bundle"
    with open_source(sample.uri) as source, open_bundle_sink(str(bundle)) as sink:
        assert transfer(source, sink, ALL).failed == 0
    imported = root / "imported" / "mlflow.db"
    with open_bundle_source(str(bundle)) as source, open_sink(f"sqlite:///{imported}") as sink:
        summary = transfer(source, sink, ALL)
    assert summary.failed == 0, summary.failures
    for kind in MODEL_KINDS:
        assert summary.counts[kind]["done"] == MODEL_SAMPLE_COUNTS[kind], summary.counts
    return {"sqlite": direct, "bundle": imported}


ROUTES = ["sqlite", "bundle"]
VERSION_COLUMNS = "name, version, creation_time, last_updated_time, description, user_id, current_stage, status, " \
    "status_message, source, run_id, run_link"


def db_of(uri: str) -> Path:
    return Path(uri[len("sqlite:///"):])


def sql(db: Path, query: str, *args) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(query, args).fetchall()


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def local(location: str) -> Path:
    return Path(location[len("file://"):]) if location.startswith("file://") else Path(location)


def digest(rows) -> str:
    return hashlib.sha256(repr(sorted(rows, key=repr)).encode()).hexdigest()


# -- logged models ------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_logged_models_keep_ids_params_tags_metrics_and_links(sample, targets, route):
    db = targets[route]
    ours, theirs = MlflowClient(f"sqlite:///{db}"), MlflowClient(sample.uri)
    for model_id in (sample.model_id, sample.model2_id):
        mine, copied = theirs.get_logged_model(model_id), ours.get_logged_model(model_id)
        assert (copied.name, copied.experiment_id, copied.source_run_id, copied.status) == (
            mine.name, mine.experiment_id, mine.source_run_id, mine.status)
        assert (copied.params, copied.tags) == (mine.params, mine.tags)
        assert (copied.creation_timestamp, copied.last_updated_timestamp) == (mine.creation_timestamp, mine.last_updated_timestamp)

        def metrics(model):
            return sorted((m.key, m.value, m.step, m.timestamp, m.run_id, m.dataset_name, m.dataset_digest) for m in model.metrics or [])

        assert metrics(copied) == metrics(mine)
    rmse = [m for m in ours.get_logged_model(sample.model_id).metrics if m.key == "rmse"]
    assert [(m.run_id, m.step, m.dataset_name, m.dataset_digest) for m in rmse] == [(sample.train_run, 2, "train-x", "d1g3st")]
    accuracy = [m for m in ours.get_logged_model(sample.model_id).metrics if m.key == "accuracy"]
    assert [m.run_id for m in accuracy] == [sample.evaluate_run]  # logged from another run
    # Links: the run that output it (at its step) and the run that took it as an input.
    outputs = ours.get_run(sample.train_run).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [(sample.model_id, 0)]
    assert [i.model_id for i in ours.get_run(sample.evaluate_run).inputs.model_inputs] == [sample.model_id]
    # The deleted model is there, deleted: MLflow's client does not see it.
    assert sql(db, "SELECT lifecycle_stage FROM logged_models WHERE model_id = ?", sample.deleted_model_id) == [("deleted",)]
    with pytest.raises(mlflow.exceptions.MlflowException):
        ours.get_logged_model(sample.deleted_model_id)
    listed = {m.model_id for m in ours.search_logged_models(experiment_ids=[sample.experiment_id])}
    assert listed == {sample.model_id, sample.model2_id}


@pytest.mark.parametrize("route", ROUTES)
def test_logged_model_files_are_equal_and_mlmodel_names_the_new_location(sample, targets, route):
    db = targets[route]
    rows = dict(sql(db_of(sample.uri), "SELECT model_id, artifact_location FROM logged_models"))
    copied = dict(sql(db, "SELECT model_id, artifact_location FROM logged_models"))
    assert set(copied) == set(rows) == {sample.model_id, sample.model2_id, sample.deleted_model_id}
    experiment_location = sql(db, "SELECT artifact_location FROM experiments WHERE experiment_id = ?", int(sample.experiment_id))[0][0]
    for model_id, location in rows.items():
        assert copied[model_id] == f"{experiment_location}/models/{model_id}/artifacts"
        mine, theirs = files_of(local(location)), files_of(local(copied[model_id]))
        assert set(mine) == set(theirs) and "MLmodel" in mine and "model.skops" in mine
        for path, data in mine.items():
            if path == "MLmodel":  # only its artifact_path line changes: the location moved
                assert theirs[path] != data
                assert theirs[path] == rewrite_mlmodel(data, {}, {location: copied[model_id]})
                assert f"artifact_path: {copied[model_id]}\n".encode() in theirs[path]
            else:
                assert theirs[path] == data, path


# -- the registry -------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_registry_keeps_numbers_aliases_stages_tags_and_times(sample, targets, route, tmp_path):
    db = targets[route]
    origin = db_of(sample.uri)
    live = f"SELECT {VERSION_COLUMNS} FROM model_versions WHERE current_stage != 'Deleted_Internal'"
    assert sorted(sql(db, live)) == sorted(sql(origin, live))
    assert sql(db, "SELECT name, version FROM model_versions ORDER BY name, version") == sql(
        origin, "SELECT name, version FROM model_versions ORDER BY name, version")
    assert sql(db, "SELECT version, source, run_id, run_link FROM model_versions WHERE current_stage = 'Deleted_Internal'") == [
        (2, "REDACTED-SOURCE-PATH", "REDACTED-RUN-ID", "REDACTED-RUN-LINK")]
    for query in (
        "SELECT name, creation_time, last_updated_time, description, workspace FROM registered_models",
        "SELECT name, alias, version FROM registered_model_aliases",
        "SELECT name, version, key, value FROM model_version_tags",
        f"SELECT name, key, value FROM registered_model_tags WHERE key != '{SOURCE_UNIT_TAG}'",
    ):
        assert sorted(sql(db, query)) == sorted(sql(origin, query)), query
    assert sorted(sql(db, f"SELECT name, value FROM registered_model_tags WHERE key = '{SOURCE_UNIT_TAG}'")) == [
        ("churn", "churn"), ("churn2", "churn2"), ("greet", "greet")]
    # A models:/ version's files are where the target keeps its logged model.
    assert sql(db, "SELECT storage_location FROM model_versions WHERE name = 'churn' AND version = 3") == sql(
        db, "SELECT artifact_location FROM logged_models WHERE model_id = ?", sample.model_id)

    client = MlflowClient(f"sqlite:///{db}")
    churn = client.get_registered_model("churn")
    assert (churn.description, churn.tags.get("team")) == ("predicts churn", "growth")
    assert {k: int(v) for k, v in churn.aliases.items()} == {"champion": 3, "challenger": 1}
    one = client.get_model_version("churn", "1")
    assert (one.current_stage, one.description, one.tags) == ("Staging", "first good one", {"validated": "yes"})
    assert int(client.get_model_version_by_alias("churn", "champion").version) == 3
    assert sorted(int(v.version) for v in client.search_model_versions("name='churn'")) == [1, 3, 4]
    # The deleted version still holds its number: the next version is 5, as in the origin.
    for where in (origin, db):
        scratch = tmp_path / f"{where.parent.name}.db"
        shutil.copyfile(where, scratch)
        created = MlflowClient(f"sqlite:///{scratch}").create_model_version(
            "churn", f"runs:/{sample.train_run}/model", run_id=sample.train_run)
        assert int(created.version) == 5, where


@pytest.mark.parametrize("route", ROUTES)
def test_prompts_and_models_load_the_same_on_both_sides(sample, targets, route, tmp_path):
    target = f"sqlite:///{targets[route]}"
    loaded = {}
    for side, uri in (("origin", sample.uri), ("target", target)):
        mlflow.set_tracking_uri(uri)
        try:
            prompt = mlflow.genai.load_prompt("prompts:/greet@production")
            latest = mlflow.genai.load_prompt("prompts:/greet/2")
            (tmp_path / side).mkdir()
            model = mlflow.pyfunc.load_model("models:/churn@champion", dst_path=str(tmp_path / side))
            loaded[side] = (prompt.template, prompt.version, latest.template, model.predict(np.array(X)).tolist())
        finally:
            mlflow.set_tracking_uri(None)
    assert loaded["target"] == loaded["origin"]
    assert loaded["target"][:3] == ("Hello {{name}}", 1, "Hi {{name}}!")
    # The prompt's link to its experiment names the target's experiment.
    assert sql(targets[route], "SELECT value FROM registered_model_tags WHERE name = 'greet' AND key = '_mlflow_experiment_ids'") == [(",0,",)]


@pytest.mark.parametrize("route", ROUTES)
def test_the_copies_compare_equal_and_a_second_run_skips_everything(sample, targets, route, tmp_path):
    target = targets[route]
    with open_source(sample.uri) as mine, open_source(f"sqlite:///{target}") as theirs:
        assert list(compare_stores(mine, theirs, ALL, level="full")) == []
    before = {t: digest(sql(target, f"SELECT * FROM {t}")) for t in ("logged_models", "model_versions", "registered_model_aliases", "inputs")}
    summary = copy(sample.uri, f"sqlite:///{target}")
    assert summary.failed == 0, summary.failures
    for kind in ("experiments", "runs", *MODEL_KINDS):
        assert summary.counts[kind]["done"] == 0 and summary.counts[kind]["skipped"] > 0, (kind, summary.counts)
    assert {t: digest(sql(target, f"SELECT * FROM {t}")) for t in before} == before


def test_a_copy_that_differs_is_found_by_compare(sample, targets, tmp_path):
    """The comparison the tests above rely on sees a changed model param and version tag."""
    changed = tmp_path / "changed.db"
    shutil.copyfile(targets["sqlite"], changed)
    sql(changed, "UPDATE logged_model_params SET param_value = '0.2' WHERE param_key = 'alpha'")
    sql(changed, "UPDATE model_version_tags SET value = 'no' WHERE key = 'validated'")
    with open_source(sample.uri) as mine, open_source(f"sqlite:///{changed}") as theirs:
        found = [str(d) for d in compare_stores(mine, theirs, ALL, level="full")]
    assert any("params" in d for d in found) and any("churn/1" in d and "tags" in d for d in found), found


# -- failures and resuming ----------------------------------------------------------------


class FailingOnce(SqliteStore):
    """A sink whose write of one version fails inside its transaction, after its rows and
    the deleted version before it were inserted."""

    fail_version = "churn/3"

    def _set_aliases(self, cursor, name, number, aliases, *, move):
        if f"{name}/{number}" == self.fail_version:
            raise UnitError("the disk went away (test)")
        return super()._set_aliases(cursor, name, number, aliases, move=move)


def test_a_transfer_failing_in_the_registry_resumes_to_the_same_result(sample, targets, tmp_path):
    db = tmp_path / "resumed.db"
    with open_source(sample.uri) as source, FailingOnce(f"sqlite:///{db}", create=True) as sink:
        summary = transfer(source, sink, ALL)
    failed = {(f.kind, f.source_id) for f in summary.failures}
    # The version failed, and the one written after it, with it; nothing of it is left.
    assert failed == {("model_version", "churn/3"), ("model_version", "churn/4")}, summary.failures
    assert sql(db, "SELECT version FROM model_versions WHERE name = 'churn' ORDER BY version") == [(1,)]
    assert sql(db, "SELECT alias FROM registered_model_aliases WHERE name = 'churn'") == [("challenger",)]
    assert summary.counts["registered_models"]["done"] == 3 and summary.counts["logged_models"]["done"] == 3

    summary = copy(sample.uri, f"sqlite:///{db}")
    assert summary.failed == 0, summary.failures
    assert summary.counts["model_versions"] == {"done": 2, "skipped": 4, "failed": 0, "not_selected": 0}
    versions = f"SELECT {VERSION_COLUMNS}, workspace FROM model_versions"  # storage_location: under each store's root
    for query in (versions, "SELECT * FROM registered_model_aliases", "SELECT * FROM model_version_tags"):
        assert sorted(sql(db, query)) == sorted(sql(targets["sqlite"], query)), query


class RefusingModelRows(SqliteStore):
    """A sink whose database refuses the rows of one logged model, after its files were written."""

    refused = ""

    def _write(self, unit, what):
        if what == f"logged model {self.refused}":
            raise UnitError("the database refused the rows (test)")
        return super()._write(unit, what)


def test_a_logged_model_whose_rows_fail_leaves_no_files(sample, tmp_path):
    db = tmp_path / "refused.db"
    RefusingModelRows.refused = sample.model_id
    with open_source(sample.uri) as source, RefusingModelRows(f"sqlite:///{db}", create=True) as sink:
        summary = transfer(source, sink, ALL)
    failed = {(f.kind, f.source_id) for f in summary.failures}
    # The versions registered from it fail with it; the later version of churn waits for those.
    assert failed == {("logged_model", sample.model_id), ("model_version", "churn/1"), ("model_version", "churn/3"),
                      ("model_version", "churn/4")}, summary.failures
    models_folder = tmp_path / "refused-artifacts" / sample.experiment_id / "models"
    assert sorted(p.name for p in models_folder.iterdir()) == sorted([sample.model2_id, sample.deleted_model_id])
    assert list((Path(f"{db}.trackport") / "claims").iterdir()) == []
    assert sql(db, "SELECT count(*) FROM logged_models WHERE model_id = ?", sample.model_id) == [(0,)]
    assert sql(db, "SELECT count(*) FROM inputs WHERE destination_id = ?", sample.model_id) == [(0,)]
    again = copy(sample.uri, f"sqlite:///{db}")
    assert again.failed == 0 and again.counts["logged_models"]["done"] == 1, again.failures
    assert (models_folder / sample.model_id / "artifacts" / "MLmodel").is_file()


def test_a_killed_model_write_is_settled_when_the_store_is_opened(sample, targets, tmp_path):
    """A claim left by a killed transfer: the folder of a model never committed is removed,
    the claim of one that was committed is dropped and its folder kept."""
    db = tmp_path / "killed.db"
    shutil.copyfile(targets["sqlite"], db)
    state = Path(f"{db}.trackport") / "claims"
    state.mkdir(parents=True)
    with open_sink(f"sqlite:///{db}") as sink:  # the store's identity, as its claims record it
        store_identity = sink.describe().identity
    committed = local(sql(db, "SELECT artifact_location FROM logged_models WHERE model_id = ?", sample.model_id)[0][0]).parent
    lost = committed.parent / "m-0123456789abcdef0123456789abcdef"
    (lost / ".artifacts.tmp-1").mkdir(parents=True)
    for model_id, folder in ((sample.model_id, committed), (lost.name, lost)):
        claim = {"folder": str(folder), "store": store_identity, "kind": "logged model"}
        (state / f"{model_id}.json").write_text(json.dumps(claim))
    with open_sink(f"sqlite:///{db}"):
        pass
    assert not lost.exists() and (committed / "artifacts" / "MLmodel").is_file()
    assert list(state.iterdir()) == []


def test_two_stores_side_by_side_do_not_share_a_model_folder(sample, tmp_path):
    folder = tmp_path / "stores"
    shared = folder / "mlartifacts"
    first = copy(sample.uri, f"sqlite:///{folder / 'a.db'}", artifact_root=str(shared))
    assert first.failed == 0, first.failures
    before = {p.relative_to(shared).as_posix(): p.read_bytes() for p in shared.rglob("*") if p.is_file()}
    assert any(p.startswith("1/models/") for p in before)

    second = copy(f"sqlite:///{folder / 'a.db'}", f"sqlite:///{folder / 'b.db'}", artifact_root=str(shared))
    refused = {f.source_id: f.reason for f in second.failures if f.kind == "logged_model"}
    assert set(refused) == {sample.model_id, sample.model2_id, sample.deleted_model_id}
    for model_id, reason in refused.items():
        assert f"logged model {model_id}: its artifact folder {shared / '1' / 'models' / model_id} exists" in reason, reason
    after = {p.relative_to(shared).as_posix(): p.read_bytes() for p in shared.rglob("*") if p.is_file()}
    assert after == before
    assert sql(folder / "b.db", "SELECT count(*) FROM logged_models") == [(0,)]
    # By default each store has a folder of its own, and the copy is whole.
    third = copy(f"sqlite:///{folder / 'a.db'}", f"sqlite:///{folder / 'c.db'}")
    assert third.failed == 0, third.failures
    assert (folder / "c-artifacts" / "1" / "models" / sample.model_id / "artifacts" / "MLmodel").is_file()


# -- a registered model of the target trackport did not write -----------------------------


@pytest.fixture(scope="module")
def foreign_target(tmp_path_factory) -> Path:
    """A store whose own `churn` (versions 1 and 2, alias champion -> 1) MLflow made."""
    db = tmp_path_factory.mktemp("foreign") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    client.create_registered_model("churn", description="someone else's")
    for n in (1, 2):
        client.create_model_version("churn", f"s3://elsewhere/model-{n}")
    client.set_registered_model_alias("churn", "champion", "1")
    return db


def ledger(db: Path) -> list[dict]:
    path = Path(f"{db}.trackport") / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def foreign_churn(db: Path) -> list:
    return sorted(sql(db, "SELECT version, source, description FROM model_versions WHERE name = 'churn'")) + sorted(
        sql(db, "SELECT alias, version FROM registered_model_aliases WHERE name = 'churn'")) + sorted(
        sql(db, "SELECT key, value FROM registered_model_tags WHERE name = 'churn'"))


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_a_foreign_model_fails_or_is_skipped_untouched(sample, foreign_target, policy, tmp_path):
    db = tmp_path / "target.db"
    shutil.copyfile(foreign_target, db)
    before = foreign_churn(db)
    summary = copy(sample.uri, f"sqlite:///{db}", on_existing_model=policy)
    assert foreign_churn(db) == before
    churn = [e for e in ledger(db) if e["kind"] in ("registered_model", "model_version") and e["source_id"].split("/")[0] == "churn"]
    assert len(churn) == 4
    if policy == "fail":
        reasons = {(f.kind, f.source_id): f.reason for f in summary.failures}
        assert set(reasons) == {("registered_model", "churn"), ("model_version", "churn/1"),
                                ("model_version", "churn/3"), ("model_version", "churn/4")}
        assert "was not written by trackport" in reasons[("registered_model", "churn")]
        assert "--on-existing-model skip" in reasons[("registered_model", "churn")]
        assert all(e["outcome"] == "failed" for e in churn)
    else:
        assert summary.failed == 0, summary.failures
        assert all(e["outcome"] == "skipped" and "--on-existing-model skip" in e["reason"] for e in churn), churn
    # The other models arrive either way.
    assert sql(db, "SELECT name, version FROM model_versions WHERE name != 'churn' ORDER BY name, version") == [
        ("churn2", 1), ("greet", 1), ("greet", 2)]


def test_versions_are_appended_to_a_foreign_model(sample, foreign_target, tmp_path):
    db = tmp_path / "target.db"
    shutil.copyfile(foreign_target, db)
    summary = copy(sample.uri, f"sqlite:///{db}", on_existing_model="append")
    assert summary.failed == 0, summary.failures
    assert summary.counts["registered_models"]["skipped"] == 1
    # Versions 1, 3, 4 come after the target's 1 and 2, as 3, 4, 5 (the deleted 2 is not taken).
    rows = sql(db, "SELECT version, source, description FROM model_versions WHERE name = 'churn' ORDER BY version")
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[:2] == [(1, "s3://elsewhere/model-1", None), (2, "s3://elsewhere/model-2", None)]
    assert rows[2] == (3, f"models:/{sample.model_id}", "first good one")
    assert rows[4][1] == f"runs:/{sample.train_run}/model"
    lost = [loss for loss in summary.losses if "churn" in loss]
    assert any("version 1 became 3" in loss for loss in lost) and any("version 4 became 5" in loss for loss in lost), lost
    assert any("alias 'champion' stays on the target's version 1" in loss for loss in lost), lost
    # The target's alias stays; the source's other alias names the appended version.
    assert sorted(sql(db, "SELECT alias, version FROM registered_model_aliases WHERE name = 'churn'")) == [
        ("challenger", 3), ("champion", 1)]
    assert sql(db, f"SELECT value FROM registered_model_tags WHERE name = 'churn' AND key = '{SOURCE_UNIT_TAG}'") == []
    # A second transfer finds the appended versions by their provenance and appends nothing.
    again = copy(sample.uri, f"sqlite:///{db}", on_existing_model="append")
    assert again.failed == 0 and again.counts["model_versions"]["done"] == 0, again.counts
    assert sql(db, "SELECT max(version) FROM model_versions WHERE name = 'churn'") == [(5,)]


# -- the direct reader of a tracking server's database ------------------------------------


@pytest.fixture(scope="module")
def server_sample(server_pool, tmp_path_factory):
    from servers import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("model-server"), template_db=server_pool.template_db).start().wait_ready()
    try:
        yield server, build_model_sample(server.url)
    finally:
        server.stop()


def test_the_direct_reader_of_a_server_database_reads_what_the_server_serves(server_sample, tmp_path):
    server, made = server_sample
    db, destination = server.workdir / "mlflow.db", server.workdir / "mlartifacts"
    direct = f"sqlite:///{db}?artifacts_destination={destination}"
    client = MlflowClient(server.url)
    with open_source(direct) as source:
        experiment = next(e for e in source.list_experiments(ALL) if e.experiment_id == made.experiment_id)
        units = {u.unit_id: u for u in source.iter_logged_models(experiment)}
        assert set(units) == {made.model_id, made.model2_id, made.deleted_model_id}
        assert units[made.deleted_model_id].body["lifecycle_stage"] == "deleted"
        for model_id in (made.model_id, made.model2_id):
            unit, served = units[model_id], client.get_logged_model(model_id)
            assert unit.body["artifact_location"].startswith("mlflow-artifacts:/")
            assert (unit.name, unit.body["params"], unit.body["tags"]) == (served.name, served.params, served.tags)
            metrics = sorted((m["key"], m["value"], m["step"], unit.refs[m["run"]], m["dataset_name"]) for m in unit.body["metrics"])
            assert metrics == sorted((m.key, m.value, m.step, m.run_id, m.dataset_name) for m in served.metrics)
            (tmp_path / model_id).mkdir()
            downloaded = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=served.artifact_location, dst_path=str(tmp_path / model_id), tracking_uri=server.url))
            files = {f.path: f.size for f in source.list_unit_artifacts(unit)}
            assert files == {p: len(b) for p, b in files_of(downloaded).items()}
            for path, data in files_of(downloaded).items():
                with source.open_unit_artifact(unit, path) as stream:
                    assert stream.read() == data
        versions = {u.unit_id: u for u in source.iter_model_versions(ALL)}
        assert set(versions) == {"churn/1", "churn/3", "churn/4", "churn2/1", "greet/1", "greet/2"}
        for unit_id, unit in versions.items():
            name, number = unit_id.split("/")
            if name == "greet":  # a prompt: MLflow's client serves it as one
                served = client.get_prompt_version(name, number)
                assert (unit.body["tags"]["mlflow.prompt.text"], unit.body["description"]) == (served.template, served.commit_message)
                continue
            served = client.get_model_version(name, number)
            # A version in no stage: MLflow says "None", a unit's body null.
            assert (unit.body["source"], unit.body["current_stage"] or "None", unit.body["tags"], sorted(unit.body["aliases"])) == (
                served.source, served.current_stage, served.tags, sorted(served.aliases))
        assert versions["greet/1"].body["aliases"] == ["production"] and client.get_prompt_version_by_alias("greet", "production").version == 1
        assert versions["churn/3"].body["deleted_before"] == [2]
        models = {u.unit_id: u for u in source.iter_registered_models(ALL)}
        assert models["churn"].body["tags"] == client.get_registered_model("churn").tags
        assert models["greet"].body["tags"]["mlflow.prompt.is_prompt"] == "true"

    # The reader every server database (PostgreSQL, MySQL) gets, on the same file, gives the same units.
    from trackport.stores.mlflow_db.server import ServerDatabaseSource

    with open_source(direct) as store, ServerDatabaseSource(f"sqlite:///{db}", artifacts_destination=str(destination)) as generic:
        for reader in (store, generic):
            experiment = next(e for e in reader.list_experiments(ALL) if e.experiment_id == made.experiment_id)
            files = {u.unit_id: [(f.path, f.size) for f in reader.list_unit_artifacts(u)] for u in reader.iter_logged_models(experiment)}
            read = [list(reader.iter_logged_models(experiment)), list(reader.iter_registered_models(ALL)),
                    list(reader.iter_model_versions(ALL)), files]
            if reader is store:
                expected = read
        assert read == expected and len(read[0]) == 3 and len(read[2]) == 6

    # Copied from the database into a sqlite store, the copy equals it and its model loads.
    target = tmp_path / "copy.db"
    summary = copy(direct, f"sqlite:///{target}")
    assert summary.failed == 0, summary.failures
    with open_source(direct) as mine, open_source(f"sqlite:///{target}") as theirs:
        assert list(compare_stores(mine, theirs, ALL, level="full")) == []
    predictions = []
    for side, uri in (("served", server.url), ("copied", f"sqlite:///{target}")):
        mlflow.set_tracking_uri(uri)
        try:
            (tmp_path / side).mkdir()
            model = mlflow.pyfunc.load_model("models:/churn@champion", dst_path=str(tmp_path / side))
            predictions.append(model.predict(np.array(X)).tolist())
        finally:
            mlflow.set_tracking_uri(None)
    assert predictions[0] == predictions[1] and np.allclose(predictions[1], [2.0, 4.0, 6.0])


def test_server_model_files_need_the_artifacts_destination(server_sample):
    server, made = server_sample
    with open_source(f"sqlite:///{server.workdir / 'mlflow.db'}") as source:
        experiment = next(e for e in source.list_experiments(ALL) if e.experiment_id == made.experiment_id)
        unit = next(u for u in source.iter_logged_models(experiment) if u.unit_id == made.model_id)
        with pytest.raises(UnitError, match=f"logged model {made.model_id}: .*artifacts_destination"):
            list(source.list_unit_artifacts(unit))


def test_a_database_without_model_tables_holds_none(sample, tmp_path):
    """An older MLflow's database: no logged model or registry tables, so no such units."""
    db = tmp_path / "old.db"
    shutil.copyfile(db_of(sample.uri), db)
    for table in ("logged_model_metrics", "logged_model_params", "logged_model_tags", "logged_models",
                  "registered_model_aliases", "model_version_tags", "model_versions", "registered_model_tags",
                  "registered_models"):
        sql(db, f"DROP TABLE {table}")
    with open_source(f"sqlite:///{db}") as source:
        experiments = list(source.list_experiments(ALL))
        assert len(experiments) == 2
        assert [u for e in experiments for u in source.iter_logged_models(e)] == []
        assert list(source.iter_registered_models(ALL)) == [] and list(source.iter_model_versions(ALL)) == []


# -- a legacy mlruns file store -----------------------------------------------------------


def test_an_mlruns_store_gives_its_models_and_registry(tmp_path_factory, monkeypatch, tmp_path):
    """MLflow's file store, read by parsing its folders: the copy in a sqlite store is what
    MLflow's own client reads from the file store."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlruns = tmp_path_factory.mktemp("file-store") / "mlruns"
    made = build_model_sample(mlruns.as_uri())
    target = tmp_path / "from-mlruns.db"
    summary = copy(str(mlruns), f"sqlite:///{target}")
    assert summary.failed == 0, summary.failures
    for kind in MODEL_KINDS:
        assert summary.counts[kind]["done"] == MODEL_SAMPLE_COUNTS[kind], summary.counts
    with open_source(str(mlruns)) as mine, open_source(f"sqlite:///{target}") as theirs:
        assert list(compare_stores(mine, theirs, ALL, level="full")) == []
    theirs, ours = MlflowClient(mlruns.as_uri()), MlflowClient(f"sqlite:///{target}")
    mine, copied = theirs.get_logged_model(made.model_id), ours.get_logged_model(made.model_id)
    assert (copied.params, copied.tags, copied.source_run_id) == (mine.params, mine.tags, mine.source_run_id)
    assert sorted((m.key, m.value, m.step, m.run_id, m.dataset_name) for m in copied.metrics) == sorted(
        (m.key, m.value, m.step, m.run_id, m.dataset_name) for m in mine.metrics)
    assert [(o.model_id, o.step) for o in ours.get_run(made.train_run).outputs.model_outputs] == [(made.model_id, 0)]
    assert [i.model_id for i in ours.get_run(made.evaluate_run).inputs.model_inputs] == [made.model_id]
    assert sql(target, "SELECT lifecycle_stage FROM logged_models WHERE model_id = ?", made.deleted_model_id) == [("deleted",)]
    assert sql(target, "SELECT version, current_stage FROM model_versions WHERE name = 'churn' ORDER BY version") == [
        (1, "Staging"), (2, "Deleted_Internal"), (3, "None"), (4, "None")]
    for client in (theirs, ours):
        assert {k: int(v) for k, v in client.get_registered_model("churn").aliases.items()} == {"champion": 3, "challenger": 1}
        assert client.get_prompt_version("greet", 2).template == "Hi {{name}}!"
    mlflow.set_tracking_uri(f"sqlite:///{target}")
    try:
        (tmp_path / "loaded").mkdir()
        model = mlflow.pyfunc.load_model("models:/churn@champion", dst_path=str(tmp_path / "loaded"))
        assert np.allclose(model.predict(np.array(X)), [2.0, 4.0, 6.0])
        assert mlflow.genai.load_prompt("prompts:/greet@production").template == "Hello {{name}}"
    finally:
        mlflow.set_tracking_uri(None)
