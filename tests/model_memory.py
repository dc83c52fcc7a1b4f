"""An in-memory source that also holds MLflow 3 model objects, built with trackport.models
as every store builds them: two logged models (one with files and an MLmodel naming its
ids) in experiment 1, registered models `churn` (versions 1, 3 and 4: 2 deleted) and
`other` (version 1), and the prompt `greet` (versions 1 and 2)."""
from __future__ import annotations

import contextlib
import io

from memory_source import BASE_TIME, MemorySource, metric_batch
from trackport import models
from trackport.kinds import Unit


class ModelMemorySource(MemorySource):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        first, second, third = (r.run_id for r in self.runs[:3])
        location = "/src/artifacts/1/models/{}/artifacts"
        self.logged_models = [
            models.logged_model_unit(models.LoggedModelFields(
                "m-1111", "1", "model", source_run_id=first, status="LOGGED_MODEL_READY",
                creation_timestamp=BASE_TIME, last_updated_timestamp=BASE_TIME + 5, artifact_location=location.format("m-1111"),
                params={"alpha": "0.5"}, tags={"owner": "alice"},
                metrics=[models.ModelMetric("rmse", 0.25, BASE_TIME, 3, first, "train", "d1"),
                         models.ModelMetric("acc", float("nan"), BASE_TIME, 1, second)],
                links=[(first, "output", 0), (second, "input", 0)],
            )),
            models.logged_model_unit(models.LoggedModelFields(
                "m-2222", "1", "model2", source_run_id=third, artifact_location=location.format("m-2222"),
            )),
        ]
        # MLflow logs a model's metric into its run too: the runs' histories hold the points.
        for unit in self.logged_models:
            for metric in unit.body["metrics"]:
                run_id = unit.refs[metric["run"]]
                rows = self.metrics[run_id].to_pylist() if run_id in self.metrics else []
                rows = [(r["key"], r["step"], r["timestamp"], r["value"]) for r in rows]
                rows.append((metric["key"], metric["step"], metric["timestamp"], float(metric["value"])))
                self.metrics[run_id] = metric_batch(rows)
        self.model_files = {
            "m-1111": {
                "MLmodel": f"artifact_path: {location.format('m-1111')}\nmodel_id: m-1111\nrun_id: {first}\n".encode(),
                "model.pkl": bytes(range(256)),
                "sub dir/é.txt": "ünïcode\n".encode(),
            },
            "m-2222": {"MLmodel": b"model_id: m-2222\n"},
        }
        self.registered = [
            models.registered_model_unit("churn", "predicts churn", {"team": "growth"}, BASE_TIME, BASE_TIME + 9),
            models.registered_model_unit("greet", "first", {models.PROMPT_TAG: "true", models.PROMPT_EXPERIMENTS_TAG: ",1,"}, BASE_TIME, None),
            models.registered_model_unit("other", None, {}, BASE_TIME, None),
        ]
        v = models.VersionFields
        self.versions = [
            *models.version_units("churn", [
                v(1, "models:/m-1111", run_id=first, experiment_id="1", aliases=["challenger"], current_stage="Staging"),
                v(3, "models:/m-1111", run_id=first, experiment_id="1", aliases=["champion"], tags={"ok": "yes"}),
                v(4, f"runs:/{third}/model", run_id=third, experiment_id="1", description="from a run"),
            ]),
            *models.version_units("greet", [
                v(1, "dummy-source", tags={models.PROMPT_TAG: "true", "mlflow.prompt.text": "Hello {{name}}"},
                  description="first", aliases=["production"]),
                v(2, "dummy-source", tags={models.PROMPT_TAG: "true", "mlflow.prompt.text": "Hi {{name}}!"}, description="second"),
            ]),
            *models.version_units("other", [v(1, "models:/m-2222", run_id=third, experiment_id="1")]),
        ]

    def iter_logged_models(self, experiment):
        return iter([m for m in self.logged_models if m.experiment_id == experiment.experiment_id])

    def list_unit_artifacts(self, unit: Unit):
        from trackport.domain import ArtifactFile

        return iter(ArtifactFile(p, len(d)) for p, d in sorted(self.model_files.get(unit.unit_id, {}).items()))

    def open_unit_artifact(self, unit: Unit, path: str):
        return contextlib.nullcontext(io.BytesIO(self.model_files[unit.unit_id][path]))

    def iter_registered_models(self, selection):
        return iter(self.registered)

    def iter_model_versions(self, selection):
        return iter(self.versions)


def model_source(runs: int = 4) -> ModelMemorySource:
    base = MemorySource.workload(runs=runs, artifact_bytes=10, name="models")
    return ModelMemorySource(base.experiments, base.runs, base.metrics, base.artifacts, uri="memory:models")
