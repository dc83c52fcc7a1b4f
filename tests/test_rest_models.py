"""MLflow 3's model objects through tracking servers: logged models, registered models,
prompts and model versions, copied server -> server and server -> bundle -> server, re-run,
interrupted and resumed, and written next to a registered model trackport did not write.

Everything is checked through MLflow's own client against real `mlflow server`s, with the
ids a copy changes (runs, logged models) replaced by names on both sides.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from trackport.cli.main import cli
from trackport.config import DEFAULT, TransferConfig
from trackport.opening import open_bundle_sink, open_bundle_source, open_sink, open_source
from trackport.samples.model_store import EXPERIMENT, MODEL_SAMPLE_COUNTS, ModelSample, build_model_sample
from trackport.stores.base import Selection
from trackport.transfer import transfer
from trackport.transfer.ledger import LEDGER_FILE
from mlflow_tracking import tracking

EVERYTHING = Selection(include_deleted=True)
PROMPTS = "tags.`mlflow.prompt.is_prompt` = 'true'"
# A server never lists deleted logged models: the sample's deleted one is not read from one.
LOGGED_MODELS_SEEN = MODEL_SAMPLE_COUNTS["logged_models"] - 1


@pytest.fixture(scope="module")
def servers(server_pool):
    """The module's servers, from the session's pool: the sample's source and one target per story."""
    with server_pool.taken("source", "copied", "imported", "resumed", "existing", "from-sqlite") as servers:
        yield servers


@pytest.fixture(scope="module")
def sample(servers) -> ModelSample:
    return build_model_sample(servers["source"].url)


@pytest.fixture(scope="module")
def bundle(sample, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models-bundle") / "bundle"
    with open_source(sample.uri) as source, open_bundle_sink(str(path)) as sink:
        summary = transfer(source, sink, EVERYTHING)
    assert summary.failed == 0, summary.failures
    return path


@pytest.fixture(scope="module")
def copied(servers, sample):
    """The sample copied from the source server into an empty one."""
    return _transfer(sample.uri, servers["copied"].url)


def _transfer(source_uri: str, target_url: str, sink=None, config: TransferConfig = DEFAULT):
    opener = open_bundle_source if Path(source_uri).is_dir() else open_source
    with opener(source_uri) as source, (sink or open_sink(target_url)) as target:
        return transfer(source, target, EVERYTHING, config=config)


def _done(summary) -> dict:
    return {kind: counts["done"] for kind, counts in summary.counts.items() if counts["done"]}


# -- what a server holds, as MLflow's client shows it ------------------------------------------


def _client(url: str):
    from mlflow import MlflowClient

    return MlflowClient(url)


def _names(url: str) -> dict[str, str]:
    """Run and logged model ids -> their names (unique in the sample)."""
    from mlflow.entities import ViewType

    client, names = _client(url), {}
    for experiment in client.search_experiments(view_type=ViewType.ALL):
        for run in client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL):
            names[run.info.run_id] = run.info.run_name
        for model in client.search_logged_models([experiment.experiment_id]):
            names[model.model_id] = model.name
    return names


def _named(text: str | None, names: dict[str, str]) -> str | None:
    for object_id, name in names.items():
        text = text.replace(object_id, f"<{name}>") if text else text
    return text


def _own(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not k.startswith("trackport.")}


def _registrations(value: str) -> list[tuple[str, str]]:
    """mlflow.modelVersions as a set: the server writes its versions as numbers or text."""
    return sorted({(str(e["name"]), str(e["version"])) for e in json.loads(value)})


def _download(url: str, artifact_uri: str, where: Path) -> Path:
    import mlflow

    with tracking(url):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(where / url.rsplit(":", 1)[1])))


def _files(url: str, artifact_uri: str, where: Path) -> dict[str, str]:
    """path -> sha256 of every file under artifact_uri."""
    local = _download(url, artifact_uri, where)
    return {str(p.relative_to(local)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(local.rglob("*")) if p.is_file()}


def _logged_models(url: str) -> dict:
    client = _client(url)
    return {m.name: m for m in client.search_logged_models([client.get_experiment_by_name(EXPERIMENT).experiment_id])}


def logged_models_view(url: str, where: Path) -> dict:
    client, names = _client(url), _names(url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    links: dict[str, list] = {}
    for run_id, run_name in names.items():
        if run_id.startswith("m-"):
            continue
        run = client.get_run(run_id)
        for output in run.outputs.model_outputs if run.outputs else ():
            links.setdefault(output.model_id, []).append(("output", run_name, output.step))
        for model_input in run.inputs.model_inputs or ():
            links.setdefault(model_input.model_id, []).append(("input", run_name))
    view = {}
    for model in client.search_logged_models([experiment.experiment_id]):
        tags = _own(model.tags)
        if "mlflow.modelVersions" in tags:
            tags["mlflow.modelVersions"] = _registrations(tags["mlflow.modelVersions"])
        files = _files(url, model.artifact_location, where / model.name)
        view[model.name] = {
            "source_run": names.get(model.source_run_id),
            "status": str(model.status),
            "model_type": model.model_type,
            "params": model.params,
            "tags": tags,
            "metrics": sorted((m.key, m.value, m.step, m.timestamp, names.get(m.run_id), m.dataset_name, m.dataset_digest)
                              for m in model.metrics),
            "links": sorted(links.get(model.model_id, [])),
            "files": {path: digest for path, digest in files.items() if path != "MLmodel"},
        }
    return view


def registry_view(url: str) -> dict:
    """Registered models and prompts with their versions (numbers as they are), aliases and
    stages; ids named, trackport's tags left out."""
    client, names = _client(url), _names(url)
    view = {}
    for prompt, found in ((False, client.search_registered_models(max_results=1000)),
                          (True, client.search_registered_models(filter_string=PROMPTS, max_results=1000))):
        for model in found:
            clause = f"name='{model.name}'" + (f" AND {PROMPTS}" if prompt else "")
            versions = {
                int(v.version): {
                    "source": _named(v.source, names),
                    "run": names.get(v.run_id),
                    "stage": v.current_stage,
                    "description": v.description,
                    "tags": _own(v.tags),
                    "status": v.status,
                }
                for v in client.search_model_versions(clause)
            }
            view[model.name] = {
                "description": model.description,
                "tags": _own(model.tags),
                "aliases": dict(model.aliases),
                "versions": versions,
            }
    return view


def raw_registry(url: str) -> dict:
    """Everything of the registry as the server holds it, trackport's tags included."""
    client = _client(url)
    found = client.search_registered_models(max_results=1000) + client.search_registered_models(filter_string=PROMPTS)
    raw = {}
    for model in found:
        clause = f"name='{model.name}'" + (f" AND {PROMPTS}" if model.name == "greet" else "")
        versions = {v.version: (v.source, v.tags, v.current_stage) for v in client.search_model_versions(clause)}
        raw[model.name] = (model.tags, dict(model.aliases), versions)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    raw["logged models"] = sorted((m.model_id, tuple(sorted(m.tags.items()))) for m in client.search_logged_models([experiment.experiment_id]))
    return raw


def _expected_registry(sample_view: dict) -> dict:
    """The sample's registry as the sample script made it (an independent statement of it)."""
    churn = sample_view["churn"]
    assert sorted(churn["versions"]) == [1, 3, 4]
    assert churn["aliases"] == {"champion": "3", "challenger": "1"}
    assert churn["versions"][1]["stage"] == "Staging" and churn["versions"][1]["description"] == "first good one"
    assert churn["versions"][1]["source"] == "models:/<model>" and churn["versions"][4]["source"] == "runs:/<train>/model"
    assert sample_view["greet"]["aliases"] == {"production": "1"}
    assert [v["description"] for _, v in sorted(sample_view["greet"]["versions"].items())] == ["first", "second"]
    return sample_view


# -- server -> server --------------------------------------------------------------------------


def test_copy_between_servers_keeps_logged_models_and_the_registry(servers, sample, copied, tmp_path):
    assert copied.failed == 0, copied.failures
    assert _done(copied)["logged_models"] == LOGGED_MODELS_SEEN
    assert _done(copied)["registered_models"] == MODEL_SAMPLE_COUNTS["registered_models"]
    assert _done(copied)["model_versions"] == MODEL_SAMPLE_COUNTS["model_versions"]
    assert copied.losses == []
    assert any("logged model ids" in line for line in copied.planned_losses)
    assert any("registered models and versions" in line for line in copied.planned_losses)

    source, target = sample.uri, servers["copied"].url
    expected = logged_models_view(source, tmp_path)
    assert sorted(expected) == ["model", "model2"]
    assert expected["model"]["links"] == [("input", "evaluate"), ("output", "train", 0)]
    assert [m[:3] + m[4:] for m in expected["model"]["metrics"]] == [
        ("accuracy", 0.875, 1, "evaluate", None, None), ("rmse", 0.5, 2, "train", "train-x", "d1g3st")]
    assert expected["model"]["tags"]["mlflow.modelVersions"] == [("churn", "1"), ("churn", "3")]
    assert "model.skops" in expected["model"]["files"]
    assert logged_models_view(target, tmp_path) == expected
    assert registry_view(target) == _expected_registry(registry_view(source))


def test_copying_again_skips_everything_and_writes_nothing(servers, sample, copied):
    before = raw_registry(servers["copied"].url)
    again = _transfer(sample.uri, servers["copied"].url)
    assert again.failed == 0 and _done(again) == {}
    for kind in ("runs", "logged_models", "registered_models", "model_versions"):
        assert again.counts[kind]["skipped"] == copied.counts[kind]["done"], kind
    assert raw_registry(servers["copied"].url) == before


def test_a_logged_model_of_a_deleted_run_is_written_into_it(servers):
    """A server refuses writes into a deleted run: the copy of one is restored for the
    model's metrics and output link, and deleted again."""
    import math

    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, ViewType

    source, target = servers["existing"].url, servers["copied"].url
    client = _client(source)
    experiment = client.create_experiment("deleted run with a model")
    run = client.create_run(experiment, run_name="gone").info.run_id
    model = client.create_logged_model(experiment, name="kept", source_run_id=run, params={"p": "1"})
    client.log_metric(run, "loss", float("nan"), step=3, model_id=model.model_id)
    client.log_outputs(run, [LoggedModelOutput(model.model_id, step=7)])
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.delete_run(run)

    with open_source(source) as reader, open_sink(target) as sink:
        summary = transfer(reader, sink, Selection(experiments=("deleted run with a model",), include_deleted=True))
    assert summary.failed == 0 and _done(summary)["logged_models"] == 1 and summary.losses == []
    copies = _client(target)
    copied_experiment = copies.get_experiment_by_name("deleted run with a model").experiment_id
    (copy,) = copies.search_logged_models([copied_experiment])
    (copied_run,) = copies.search_runs([copied_experiment], run_view_type=ViewType.ALL)
    assert copied_run.info.lifecycle_stage == "deleted" and copied_run.info.run_id != run
    assert (copy.name, copy.source_run_id, copy.params, str(copy.status)) == ("kept", copied_run.info.run_id, {"p": "1"}, "READY")
    # A SQL-backed server keeps a logged model's NaN as 0.0 (its table has no NaN flag): the
    # source reads 0.0 already, and the copy holds what the source holds.
    assert [(m.key, m.value, m.step) for m in client.get_logged_model(model.model_id).metrics] == [("loss", 0.0, 3)]
    assert [(m.key, m.value, m.step, m.run_id) for m in copy.metrics] == [("loss", 0.0, 3, copied_run.info.run_id)]
    assert math.isnan(copies.get_metric_history(copied_run.info.run_id, "loss")[0].value)  # the run's own point
    outputs = copies.get_run(copied_run.info.run_id).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [(copy.model_id, 7)]


def test_logged_model_files_are_read_and_unsafe_paths_refused(sample, tmp_path):
    from trackport.errors import UnitError

    with open_source(sample.uri) as source:
        (experiment,) = [e for e in source.list_experiments(EVERYTHING) if e.name == EXPERIMENT]
        list(source.iter_runs(experiment, EVERYTHING))
        model = next(u for u in source.iter_logged_models(experiment) if u.unit_id == sample.model_id)
        listed = {f.path: f.size for f in source.list_unit_artifacts(model)}
        read = {}
        for path in listed:
            with source.open_unit_artifact(model, path) as stream:
                read[path] = hashlib.sha256(stream.read()).hexdigest()
        for unsafe in ("../MLmodel", "/etc/passwd", "a/../../b"):
            with pytest.raises(UnitError, match="artifact path refused"), source.open_unit_artifact(model, unsafe):
                pass
    local = _download(sample.uri, model.body["artifact_location"], tmp_path)
    downloaded = {str(p.relative_to(local)): p for p in local.rglob("*") if p.is_file()}
    assert "MLmodel" in listed and listed == {path: p.stat().st_size for path, p in downloaded.items()}
    assert read == {path: hashlib.sha256(p.read_bytes()).hexdigest() for path, p in downloaded.items()}


# -- server -> bundle -> server ----------------------------------------------------------------


def test_bundle_into_a_fresh_server_serves_the_same_models(servers, sample, bundle, tmp_path):
    source, target = sample.uri, servers["imported"].url
    imported = _transfer(str(bundle), target)
    assert imported.failed == 0, imported.failures
    assert _done(imported)["model_versions"] == MODEL_SAMPLE_COUNTS["model_versions"]
    assert logged_models_view(target, tmp_path) == logged_models_view(source, tmp_path)
    assert registry_view(target) == _expected_registry(registry_view(source))

    predictions = {}
    for url in (source, target):
        with tracking(url):
            import mlflow

            model = mlflow.pyfunc.load_model("models:/churn@champion")
            predictions[url] = [float(x) for x in model.predict(np.array([[1.0], [2.0]]))]
            prompt = mlflow.genai.load_prompt("prompts:/greet@production")
            assert (prompt.template, prompt.commit_message) == ("Hello {{name}}", "first")
            assert mlflow.genai.load_prompt("prompts:/greet/2").template == "Hi {{name}}!"
    assert predictions[source] == predictions[target] == pytest.approx([2.0, 4.0])

    # The files behind models:/churn/1 are the same bytes; MLmodel names the copies.
    files = {url: _files(url, "models:/churn/1", tmp_path / "v1") for url in (source, target)}
    assert "model.skops" in files[source] and files[source].keys() == files[target].keys()
    assert {p: h for p, h in files[source].items() if p != "MLmodel"} == {p: h for p, h in files[target].items() if p != "MLmodel"}
    mlmodels = {url: yaml.safe_load((_download(url, "models:/churn/1", tmp_path / "mlmodel") / "MLmodel").read_text())
                for url in (source, target)}
    copy = _logged_models(target)["model"]
    assert copy.model_id != sample.model_id and copy.source_run_id != sample.train_run
    names_the_copies = {"model_id": copy.model_id, "model_uuid": copy.model_id, "run_id": copy.source_run_id,
                        "artifact_path": copy.artifact_location}
    assert mlmodels[source]["model_id"] == sample.model_id
    assert mlmodels[target] == {**mlmodels[source], **names_the_copies}

    again = _transfer(str(bundle), target)
    assert again.failed == 0 and _done(again) == {}


def test_a_deleted_logged_model_of_a_database_is_written_deleted_and_found_again(servers, model_sample_sqlite):
    """Only a database shows deleted logged models (read here through the sqlite store): the
    copy is deleted once the transfer's versions are written, recorded on its experiment,
    found there by the next transfer and read back by a REST source."""
    database = model_sample_sqlite
    target = servers["from-sqlite"].url
    first = _transfer(database.uri, target)
    assert first.failed == 0 and first.losses == [], (first.failures, first.losses)
    assert _done(first)["logged_models"] == MODEL_SAMPLE_COUNTS["logged_models"]
    assert sorted(_logged_models(target)) == ["model", "model2"]  # the deleted one is not listed
    experiment = _client(target).get_experiment_by_name(EXPERIMENT)
    (recorded,) = [v for k, v in experiment.tags.items() if k == f"trackport.deleted_logged_model.{database.deleted_model_id}"]
    import requests  # MLflow's client has no way to ask for a deleted logged model

    found = requests.get(f"{target}/api/2.0/mlflow/logged-models/{recorded}", params={"allow_deleted": "true"}, timeout=30)
    assert found.json()["model"]["info"]["name"] == "scratch"
    assert requests.get(f"{target}/api/2.0/mlflow/logged-models/{recorded}", timeout=30).status_code == 404  # deleted
    again = _transfer(database.uri, target)
    assert again.failed == 0 and _done(again) == {}
    assert again.counts["logged_models"]["skipped"] == MODEL_SAMPLE_COUNTS["logged_models"]
    code, verified = _cli("verify", database.uri, target, "--include-deleted")
    assert (code, verified["differences"]) == (0, [])


# -- interrupted in the registry, resumed ------------------------------------------------------


class _Killed(BaseException):
    """Stands for the process being killed: nothing after it runs, nothing catches it."""


def _killed_after(sink, endpoint: str, when) -> object:
    """The sink, with its client "killed" right after the server answered a call to
    endpoint that when(request body, answer) picks: that call and every later one (of any
    worker) raise _Killed, as nothing runs on in a killed process."""
    call, killed = sink.client.call, []

    def killing(method, path, **kwargs):
        if killed:
            raise _Killed("killed before " + path)
        answer = call(method, path, **kwargs)
        if path.endswith("/" + endpoint) and when(kwargs.get("body") or {}, answer):
            killed.append(path)
            raise _Killed(f"killed after {method} {path}")
        return answer

    sink.client.call = killing
    return sink


def test_import_killed_in_the_registry_resumes_to_the_same_result(servers, sample, bundle, tmp_path):
    target = servers["resumed"].url

    def version_made(name: str, number: str):
        return lambda body, answer: body.get("name") == name and answer["model_version"]["version"] == number

    # Each kill lands in a phase the runs before it never reached, or further along churn's
    # chain of versions (written one after another): every one of them is met.
    kills = [
        ("logged-models", lambda body, answer: body.get("name") == "model"),  # a logged model without its files
        ("registered-models/create", lambda body, answer: body.get("name") == "churn"),  # a model not yet complete
        ("registered-models/set-tag", lambda body, answer: body.get("name") == "greet" and body.get("key") == "trackport.complete"),
        ("model-versions/create", version_made("churn", "2")),  # number 2 used up for churn/3, not yet deleted
        ("model-versions/create", version_made("churn", "3")),  # churn/3 made, its alias not yet set
        ("registered-models/alias", lambda body, answer: body.get("alias") == "champion"),  # churn/3 not complete
        ("model-versions/create", version_made("churn", "4")),  # churn/4 made complete at once (nothing follows)
    ]
    one_at_a_time = TransferConfig(workers=1)  # churn, the first registered model, is made before greet
    for endpoint, when in kills:
        with pytest.raises(_Killed):
            summary = _transfer(str(bundle), target, sink=_killed_after(open_sink(target), endpoint, when), config=one_at_a_time)
            pytest.fail(f"not killed after {endpoint}: {summary.counts}, {summary.failures}")
    resumed = _transfer(str(bundle), target)
    assert resumed.failed == 0, resumed.failures
    assert resumed.losses == []

    assert registry_view(target) == _expected_registry(registry_view(sample.uri))
    assert logged_models_view(target, tmp_path) == logged_models_view(sample.uri, tmp_path)
    client = _client(target)
    raw = raw_registry(target)
    del raw["logged models"]
    assert sorted(raw) == ["churn", "churn2", "greet"]
    for name, (tags, _, versions) in raw.items():
        assert tags["trackport.complete"] == "true", name
        assert all(v[1]["trackport.complete"] == "true" for v in versions.values()), name
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert len(client.search_logged_models([experiment.experiment_id])) == LOGGED_MODELS_SEEN  # the partial one is gone
    # Number 2 was used up once: the next version gets the number it gets in the source.
    train = _logged_models(target)["model"].source_run_id
    assert client.create_model_version("churn", f"runs:/{train}/model", run_id=train).version == "5"


# -- a registered model trackport did not write ------------------------------------------------


def _cli(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def _last_ledger(url: str) -> list[dict]:
    sink = open_sink(url)
    try:
        lines = [json.loads(line) for line in (sink.state_dir() / LEDGER_FILE).read_text().splitlines()]
    finally:
        sink.close()
    return [line for line in lines if line["transfer_id"] == lines[-1]["transfer_id"]]


def test_existing_model_not_written_by_trackport_fails_is_skipped_or_is_appended_to(servers, sample):
    target = servers["existing"].url
    client = _client(target)
    theirs = client.create_experiment("theirs")
    run = client.create_run(theirs).info.run_id
    client.create_registered_model("churn", tags={"owner": "them"}, description="their churn")
    for _ in range(2):
        client.create_model_version("churn", f"runs:/{run}/m", run_id=run)
    client.set_registered_model_alias("churn", "champion", "1")
    untouched = registry_view(target)["churn"]

    code, failed = _cli("copy", sample.uri, target, "--on-existing-model", "fail")
    assert code == 1
    failures = {(f["kind"], f["source_id"]): f["reason"] for f in failed["failures"]}
    assert "exists in the target and was not written by trackport" in failures[("registered_model", "churn")]
    assert "--on-existing-model" in failures[("registered_model", "churn")]
    assert {k for k in failures if k[0] == "model_version"} == {("model_version", f"churn/{n}") for n in (1, 3, 4)}
    # Each version fails with the model (churn/1 names it; the others the version before them).
    assert [failures[("model_version", f"churn/{n}")] for n in (1, 3, 4)] == [
        "its registered_model churn failed", "its model_version churn/1 failed", "its model_version churn/3 failed"]
    assert failed["counts"]["registered_models"]["done"] == 2  # churn2 and the prompt
    assert registry_view(target)["churn"] == untouched

    code, skipped = _cli("copy", sample.uri, target, "--on-existing-model", "skip")
    assert code == 0 and skipped["failures"] == []
    assert skipped["counts"]["model_versions"] == {"done": 0, "skipped": 6, "failed": 0, "not_selected": 0}
    reasons = {(line["kind"], line["source_id"]): line["reason"] for line in _last_ledger(target)}
    assert "--on-existing-model skip" in reasons[("registered_model", "churn")]
    assert all("--on-existing-model skip" in reasons[("model_version", f"churn/{n}")] for n in (1, 3, 4))
    assert registry_view(target)["churn"] == untouched

    code, appended = _cli("copy", sample.uri, target, "--on-existing-model", "append")
    assert code == 0 and appended["failures"] == []
    assert appended["counts"]["model_versions"]["done"] == 3
    assert "model_version churn/1: version 1 became 3: appended to a model trackport did not write" in appended["losses"]
    assert "model_version churn/3: version 3 became 4: appended to a model trackport did not write" in appended["losses"]
    assert any(line.startswith("model_version churn/3: alias 'champion' not moved") for line in appended["losses"])
    churn = registry_view(target)["churn"]
    assert (churn["description"], churn["tags"]) == (untouched["description"], untouched["tags"])
    assert churn["aliases"] == {"champion": "1", "challenger": "3"}  # theirs kept, the source's added
    assert sorted(churn["versions"]) == [1, 2, 3, 4, 5]
    assert {n: churn["versions"][n] for n in (1, 2)} == untouched["versions"]
    source_versions = registry_view(sample.uri)["churn"]["versions"]
    assert [churn["versions"][n] for n in (3, 4, 5)] == [source_versions[n] for n in (1, 3, 4)]
    sources = {v.version: v.tags["trackport.source.id"] for v in client.search_model_versions("name='churn'") if int(v.version) > 2}
    assert sources == {"3": "churn/1", "4": "churn/3", "5": "churn/4"}

    code, again = _cli("copy", sample.uri, target, "--on-existing-model", "append")
    assert code == 0 and again["counts"]["model_versions"] == {"done": 0, "skipped": 6, "failed": 0, "not_selected": 0}
    assert sorted(registry_view(target)["churn"]["versions"]) == [1, 2, 3, 4, 5]


def test_versions_of_models_named_with_quotes_are_read(servers):
    url = servers["existing"].url
    client = _client(url)
    run = client.create_run(client.create_experiment("quotes")).info.run_id
    names = ("it's", 'say "hi"', "both ' and \"")
    for name in names:
        client.create_registered_model(name)
        client.create_model_version(name, f"runs:/{run}/m", run_id=run)
    with open_source(url) as source:
        units = list(source.iter_model_versions(Selection(models=names)))
    assert sorted(u.unit_id for u in units) == sorted(f"{name}/1" for name in names)
    assert all(u.refs["run"] == run for u in units)


def test_the_next_version_registered_gets_the_same_number_on_both_sides(servers, sample, bundle):
    """Run last: it registers a version in the source, after the tests that read it."""
    numbers = []
    for url in (sample.uri, servers["imported"].url):
        client = _client(url)
        run = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id).info.run_id
        numbers.append(client.create_model_version("churn", f"runs:/{run}/model", run_id=run).version)
    assert numbers == ["5", "5"]
