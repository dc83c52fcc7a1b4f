"""MLflow 3's model objects for tests: logged models, registered models and prompts, built
with MLflow's own public client (never with trackport code) into any tracking URI (a
server or a sqlite store), so tests compare trackport against an independent origin.

What it holds (MODEL_SAMPLE_COUNTS counts it):

* experiment `trackport-models` with runs `train`, `train2` and `evaluate`;
* logged model `model` (a scikit-learn pyfunc, with params, tags and a metric logged
  against a dataset) from `train`, output of `train` at step 0, input of `evaluate`, with a
  metric logged from `evaluate`; logged model `model2` from `train2`; a deleted logged
  model `scratch`;
* registered model `churn`: versions 1 (model, Staging, tags, description), 2 (model2,
  deleted, leaving a gap), 3 (model), 4 (runs:/ source of `train`); aliases champion -> 3,
  challenger -> 1; a tag and a description;
* registered model `churn2`: one version from a runs:/ source;
* prompt `greet`: versions 1 and 2 with commit messages and tags, alias production -> 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

EXPERIMENT = "trackport-models"
MODEL_SAMPLE_COUNTS = {"logged_models": 3, "registered_models": 3, "model_versions": 6}
X = [[1.0], [2.0], [3.0]]
REQUIREMENTS = ["scikit-learn"]  # given, so MLflow does not spend seconds inferring them


@dataclass(frozen=True)
class ModelSample:
    uri: str
    experiment_id: str
    model_id: str  # `model`, behind churn v1 and v3
    model2_id: str
    deleted_model_id: str
    train_run: str
    evaluate_run: str


def build_model_sample(tracking_uri: str) -> ModelSample:
    """Fill the store at tracking_uri (a server URL or sqlite:///...) with the objects above."""
    import mlflow
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelInput
    from sklearn.linear_model import LinearRegression

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # proxied artifacts find their server through it
    mlflow.set_tracking_uri(tracking_uri)
    try:
        client = MlflowClient(tracking_uri)
        location = None
        if tracking_uri.startswith("sqlite:///"):  # artifacts beside the database, not under the cwd
            location = (Path(tracking_uri[len("sqlite:///"):]).parent / "model-artifacts").as_uri()
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=location, tags={"kind": "models"})
        x, y = np.array(X), np.array([2.0, 4.0, 6.0])
        with mlflow.start_run(experiment_id=experiment_id, run_name="train") as train:
            mlflow.log_param("alpha", "0.1")
            model = mlflow.sklearn.log_model(
                LinearRegression().fit(x, y), name="model", input_example=x, params={"fit_intercept": "true"},
                pip_requirements=REQUIREMENTS,
            )
            client.set_logged_model_tags(model.model_id, {"owner": "alice", "stage note": "ünïcode"})
            dataset = mlflow.data.from_numpy(x, name="train-x", digest="d1g3st")
            mlflow.log_input(dataset)
            mlflow.log_metric("rmse", 0.5, step=2, model_id=model.model_id, dataset=dataset)
        with mlflow.start_run(experiment_id=experiment_id, run_name="train2") as train2:
            model2 = mlflow.sklearn.log_model(LinearRegression().fit(x, y * 2), name="model2", pip_requirements=REQUIREMENTS)
            scratch = mlflow.sklearn.log_model(LinearRegression().fit(x, y * 3), name="scratch", pip_requirements=REQUIREMENTS)
        with mlflow.start_run(experiment_id=experiment_id, run_name="evaluate") as evaluate:
            client.log_inputs(evaluate.info.run_id, models=[LoggedModelInput(model.model_id)])
            mlflow.log_metric("accuracy", 0.875, step=1, model_id=model.model_id)
        client.delete_logged_model(scratch.model_id)

        client.create_registered_model("churn", tags={"team": "growth"}, description="predicts churn")
        for source in (model, model2, model):
            client.create_model_version("churn", f"models:/{source.model_id}", model_id=source.model_id)
        client.create_model_version("churn", f"runs:/{train.info.run_id}/model", run_id=train.info.run_id)
        client.delete_model_version("churn", "2")
        client.set_model_version_tag("churn", "1", "validated", "yes")
        client.update_model_version("churn", "1", description="first good one")
        client.transition_model_version_stage("churn", "1", "Staging")
        client.set_registered_model_alias("churn", "champion", "3")
        client.set_registered_model_alias("churn", "challenger", "1")
        client.create_registered_model("churn2")
        client.create_model_version("churn2", f"runs:/{train2.info.run_id}/model2", run_id=train2.info.run_id)

        mlflow.genai.register_prompt(name="greet", template="Hello {{name}}", commit_message="first", tags={"lang": "en"})
        mlflow.genai.register_prompt(name="greet", template="Hi {{name}}!", commit_message="second")
        mlflow.genai.set_prompt_alias("greet", "production", 1)
        return ModelSample(
            tracking_uri, experiment_id, model.model_id, model2.model_id, scratch.model_id,
            train.info.run_id, evaluate.info.run_id,
        )
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
        mlflow.set_tracking_uri(previous)  # None: MLflow's default again, not the sample's store
