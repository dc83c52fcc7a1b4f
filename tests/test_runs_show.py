"""`trackport runs show`: the run page of the sample's parent run (note, history lengths,
artifacts tree, its legacy model with the line that loads it and its conda.yaml) from a
sqlite store and a server; a run with an MLflow 3 logged model, from a store and a bundle;
an unknown run id."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from trackport.cli.main import cli
from trackport.runs.show import ENVIRONMENT_BYTES
from trackport.samples.sample_store import NOTE, PARENT_ARTIFACTS

mlflow = pytest.importorskip("mlflow")

PARENT = "8530d99ea2aa4365b5cccadf70356e67"  # the sample's parent run (its ids are seeded)
REQUIREMENTS = "scikit-learn==1.5.2\n" + "".join(f"package-{i}==1.0\n" for i in range(400))  # over ENVIRONMENT_BYTES


def runs_show(*args: str):
    result = CliRunner().invoke(cli, ["runs", "show", *args])
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def test_page_of_the_sample_parent_run(sample_sqlite):
    text = runs_show(sample_sqlite, PARENT)
    assert text.startswith(f"Run {PARENT} 'parent run' in experiment 'trackport-sample-a'")
    for line in (
        "  start         2023-11-14T22:13:20.000Z",
        "  duration      1m 00s",
        "  source        LOCAL train.py",
        "  git commit    0123456789abcdef0123456789abcdef01234567",
        "  with *markdown*,",  # the note
        "  paramètre spécial  oui",
        "  stage            dev",
        "  iris (digest abc123, training)",
        "Artifacts (6 files, 1,265 bytes)",
        "  model/\n    conda.yaml  (38 bytes)\n    sub/\n      deep.txt  (12 bytes)\n  notes with space.txt  (17 bytes)",
        "  legacy model 'model' (at model/, flavors python_function)",
        f'    mlflow.pyfunc.load_model("runs:/{PARENT}/model")',
        "  model: model/conda.yaml (38 bytes)\n    name: env\n    dependencies: [python=3.11]",
    ):
        assert line in text, line
    loss = next(line for line in text.splitlines() if line.startswith("  loss "))
    assert loss.split() == ["loss", "0.001", "999", "1,000", "0.001", "1.0"]  # latest, step, points, min, max
    assert "mlflow.log-model.history" not in text and "mlflow.note.content" not in text  # shown in their own places


def test_page_as_json_from_a_server(source_server):
    """A server gives new run ids: the run is found by name in the listing first."""
    rows = CliRunner().invoke(cli, ["runs", "list", source_server.url, "--format", "json"]).stdout.splitlines()
    run_id = next(row["run_id"] for row in map(json.loads, rows) if row["name"] == "parent run")
    page = json.loads(runs_show(source_server.url, run_id, "--json"))
    assert page["note"] == NOTE and page["git"]["commit"] == "0123456789abcdef0123456789abcdef01234567"
    points = {m["key"]: m["points"] for m in page["metrics"]}
    assert points == {"eval_acc": 2, "loss": 1000, "loss val": 5, "métrique précision": 4, "train/acc": 2}
    assert [a["path"] for a in page["artifacts"]] == sorted(PARENT_ARTIFACTS)
    [model] = page["models"]
    assert model["load"] == f'mlflow.pyfunc.load_model("runs:/{run_id}/model")'
    assert model["environment"][0]["text"] == PARENT_ARTIFACTS["model/conda.yaml"].decode()
    assert page["inputs"][0]["tags"] == {"mlflow.data.context": "training", "split": "80/20"}


@pytest.fixture(scope="module")
def logged_model_store(sample_sqlite, tmp_path_factory) -> tuple[str, str, str]:
    """A copy of the sample store (its schema made already) with a run that logged an MLflow 3
    model, written with MLflow's own client: (store URI, run id, model id)."""
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    root = tmp_path_factory.mktemp("logged-model")
    shutil.copy(sample_sqlite[len("sqlite:///"):], root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("runs-show-models", artifact_location=(root / "artifacts").as_uri())
    run = client.create_run(experiment, run_name="train", tags={"mlflow.source.type": "PROJECT", "mlflow.source.name": "https://github.com/acme/churn",
                                                                "mlflow.source.git.commit": "feedbeef", "mlflow.project.entryPoint": "main"})
    client.log_param(run.info.run_id, "alpha", "0.5")
    model = client.create_logged_model(experiment, name="churn-model", source_run_id=run.info.run_id)
    files = root / "model-files"
    files.mkdir()
    (files / "MLmodel").write_text("artifact_path: churn-model\nflavors:\n  python_function: {}\n")
    (files / "requirements.txt").write_text(REQUIREMENTS)
    client.log_model_artifacts(model.model_id, str(files))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.set_terminated(run.info.run_id)
    return uri, run.info.run_id, model.model_id


def test_page_of_a_run_with_a_logged_model(logged_model_store, tmp_path):
    """The same page from the store and from a bundle exported from it (a bundle holds logged
    models as documents): the snippet, the requirements (cut at ENVIRONMENT_BYTES), how to
    reproduce an MLflow project."""
    uri, run_id, model_id = logged_model_store
    bundle = tmp_path / "bundle"
    export = CliRunner().invoke(cli, ["export", uri, str(bundle), "--experiment", "runs-show-models"])
    assert export.exit_code == 0, export.stderr
    pages = [json.loads(runs_show(store, run_id, "--json")) for store in (uri, str(bundle))]
    for page in pages:
        [model] = page["models"]
        assert (model["kind"], model["name"], model["model_id"]) == ("logged model", "churn-model", model_id)
        assert model["load"] == f'mlflow.pyfunc.load_model("models:/{model_id}")'
        [requirements] = model["environment"]
        assert requirements["path"] == "requirements.txt" and requirements["size"] == len(REQUIREMENTS)
        assert requirements["truncated"] and requirements["text"] == REQUIREMENTS[:ENVIRONMENT_BYTES]
        assert page["reproduce_command"] == "mlflow run https://github.com/acme/churn --version feedbeef --entry-point main -P alpha=0.5"
    assert {k: v for k, v in pages[0].items() if k != "artifact_uri"} == {k: v for k, v in pages[1].items() if k != "artifact_uri"}
    text = runs_show(uri, run_id)
    assert f'    mlflow.pyfunc.load_model("models:/{model_id}")' in text
    assert f"  churn-model: requirements.txt ({len(REQUIREMENTS):,} bytes, the first {ENVIRONMENT_BYTES:,} shown)\n    scikit-learn==1.5.2\n" in text


def test_unknown_run_is_one_line_exit_3(sample_sqlite):
    result = CliRunner().invoke(cli, ["runs", "show", sample_sqlite, "0" * 32])
    assert result.exit_code == 3, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and "0" * 32 in result.stderr
