"""The legacy MLflow file store (an mlruns/ directory), read by parsing its files.

MLflow's own FileStore is not used: from 3.13 it refuses to open without an environment
switch, and it reads step=0 for metric lines that carry a dataset (5 fields). MLflow 3's
logged models (`<experiment>/models/<id>/`) and the model registry (`models/<name>/`) are
read too, into the units every store builds with trackport.models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, ContextManager, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

import pyarrow as pa

from trackport.config import DEFAULT, TransferConfig
from trackport.domain import (
    ACTIVE,
    DELETED,
    RUN_NAME_TAG,
    ArtifactFile,
    DatasetInput,
    Experiment,
    Run,
)
from trackport.errors import BadInputError, UnitError
from trackport.kinds import LOGGED_MODEL, Unit
from trackport.models import LoggedModelFields, ModelMetric, logged_model_unit
from trackport.stores._history import history_batches, key_history
from trackport.stores._localfs import LocalArtifacts, local_artifact_dir, open_local_artifact, walk_artifacts
from trackport.stores.base import Selection, SourceStore, StoreDescription, Unreadable
from trackport.stores.mlruns_registry import MODELS, MlrunsRegistry, read_key_values
from trackport.selection import resolve_experiments, run_order, select_runs

_TRASH = ".trash"
_RUN_STATUS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
# Folders of an experiment directory that are not runs.
_NOT_RUNS = {"tags", "datasets", "models", "traces"}


def _yaml() -> Any:
    try:
        import yaml
    except ImportError as exc:
        raise BadInputError(
            "reading an mlruns store needs PyYAML: pip install 'trackport[local]'"
        ) from exc
    return yaml


def _as_path(path_or_uri: str | Path) -> Path:
    text = str(path_or_uri)
    if text.startswith("file:"):
        return Path(url2pathname(urlparse(text).path)).absolute()
    return Path(text).expanduser().absolute()


def _is_experiment_dir(path: Path) -> bool:
    return path.is_dir() and path.name.isdigit() and (path / "meta.yaml").is_file()


def looks_like_mlruns(path: str | Path) -> bool:
    """True if path holds at least one MLflow file-store experiment (live or trashed)."""
    root = _as_path(path)
    if not root.is_dir():
        return False
    for base in (root, root / _TRASH):
        if base.is_dir() and any(_is_experiment_dir(child) for child in base.iterdir()):
            return True
    return False


def _parse_metric_file(path: Path) -> tuple[list[int], list[int], list[float]]:
    steps: list[int] = []
    stamps: list[int] = []
    values: list[float] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            # "timestamp value step [dataset_name dataset_digest]"; very old files lack step.
            stamps.append(int(fields[0]))
            values.append(float(fields[1]))  # float() reads nan, inf, -inf
            steps.append(int(fields[2]) if len(fields) > 2 else 0)
    return steps, stamps, values


class MlrunsStore(MlrunsRegistry, LocalArtifacts, SourceStore):
    def __init__(self, path: str | Path, *, config: TransferConfig = DEFAULT) -> None:
        self.root = _as_path(path)
        self._config = config
        if not self.root.exists():
            raise BadInputError(f"no mlruns store at {self.root}: check the path")
        if not looks_like_mlruns(self.root):
            raise BadInputError(
                f"{self.root} is not an MLflow file store (no <experiment id>/meta.yaml inside); "
                "point at the mlruns directory itself"
            )
        self._yaml = _yaml()

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="mlruns", uri=str(self.root), mlflow_version=None)

    # -------------------------------------------------------------- helpers

    def _load_meta(self, path: Path) -> dict:
        with open(path, encoding="utf-8") as f:
            data = self._yaml.safe_load(f)
        return data or {}

    def _experiment_dirs(self) -> list[tuple[Path, bool]]:
        """(directory, in trash) for every experiment."""
        out: list[tuple[Path, bool]] = []
        for base, trashed in ((self.root, False), (self.root / _TRASH, True)):
            if base.is_dir():
                out.extend((child, trashed) for child in sorted(base.iterdir()) if _is_experiment_dir(child))
        return out

    def _read_experiment(self, directory: Path, trashed: bool) -> Experiment:
        meta = self._load_meta(directory / "meta.yaml")
        stage = DELETED if trashed else (meta.get("lifecycle_stage") or ACTIVE)
        return Experiment(
            experiment_id=str(meta.get("experiment_id", directory.name)),
            name=str(meta.get("name", "")),
            lifecycle_stage=stage,
            artifact_location=meta.get("artifact_location"),
            creation_time=meta.get("creation_time"),
            last_update_time=meta.get("last_update_time"),
            tags=read_key_values(directory / "tags"),
        )

    def _all_experiments(self) -> list[tuple[Experiment, Path]]:
        return [(self._read_experiment(d, t), d) for d, t in self._experiment_dirs()]

    def _experiment_dir(self, experiment: Experiment) -> Path:
        for base in (self.root, self.root / _TRASH):
            candidate = base / experiment.experiment_id
            if _is_experiment_dir(candidate):
                return candidate
        raise UnitError(f"experiment {experiment.experiment_id} vanished from {self.root}")

    @staticmethod
    def _run_dirs(exp_dir: Path) -> list[Path]:
        return [
            child
            for child in sorted(exp_dir.iterdir())
            if child.is_dir() and child.name not in _NOT_RUNS and (child / "meta.yaml").is_file()
        ]

    # -------------------------------------------------------------- source

    def list_experiments(self, selection: Selection) -> Iterator[Experiment]:
        experiments = [e for e, _ in self._all_experiments()]
        return iter(resolve_experiments(selection, experiments, self._locate_runs, str(self.root)))

    def _locate_runs(self, run_ids: list[str]) -> dict[str, str]:
        wanted = set(run_ids)
        return {
            r.name: exp.experiment_id for exp, d in self._all_experiments() for r in self._run_dirs(d) if r.name in wanted
        }

    def count_runs(self, experiment: Experiment, selection: Selection) -> int | None:
        if not selection.include_deleted:
            return None  # their state is inside each run's meta.yaml
        names = [d.name for d in self._run_dirs(self._experiment_dir(experiment))]
        return sum(1 for n in names if not selection.run_ids or n in selection.run_ids)

    def iter_runs(self, experiment: Experiment, selection: Selection) -> Iterator[Run | Unreadable]:
        exp_dir = self._experiment_dir(experiment)
        datasets = self._datasets(exp_dir)
        runs = []
        for run_dir in self._run_dirs(exp_dir):
            if selection.run_ids and run_dir.name not in selection.run_ids:
                continue
            try:
                runs.append(self._read_run(run_dir, experiment.experiment_id, datasets))
            except (OSError, ValueError, self._yaml.YAMLError) as exc:
                # One damaged run costs that run only; the engine records it by id.
                yield Unreadable("run", run_dir.name, f"{run_dir}: {exc}")
        yield from select_runs(sorted(runs, key=run_order), selection)

    def _datasets(self, exp_dir: Path) -> dict[str, dict]:
        root = exp_dir / "datasets"
        if not root.is_dir():
            return {}
        return {
            d.name: self._load_meta(d / "meta.yaml")
            for d in sorted(root.iterdir())
            if (d / "meta.yaml").is_file()
        }

    def _read_run(self, run_dir: Path, experiment_id: str, datasets: dict[str, dict]) -> Run:
        meta = self._load_meta(run_dir / "meta.yaml")
        tags = read_key_values(run_dir / "tags")
        status = meta.get("status")
        status = _RUN_STATUS.get(status, str(status)) if isinstance(status, int) else str(status)
        inputs = []
        inputs_dir = run_dir / "inputs"
        if inputs_dir.is_dir():
            for d in sorted(inputs_dir.iterdir()):
                if not (d / "meta.yaml").is_file():
                    continue
                im = self._load_meta(d / "meta.yaml")
                if im.get("source_type") != "DATASET" or im.get("destination_type") != "RUN":
                    continue
                ds = datasets.get(str(im.get("source_id")))
                if ds is None:
                    continue
                inputs.append(
                    DatasetInput(
                        name=str(ds.get("name")),
                        digest=str(ds.get("digest")),
                        source_type=str(ds.get("source_type")),
                        source=str(ds.get("source")),
                        schema=ds.get("schema"),
                        profile=ds.get("profile"),
                        tags={str(k): str(v) for k, v in (im.get("tags") or {}).items()},
                    )
                )
        inputs.sort(key=lambda i: (i.name, i.digest))
        run_id = str(meta.get("run_id") or meta.get("run_uuid") or run_dir.name)
        return Run(
            run_id=run_id,
            experiment_id=experiment_id,
            run_name=meta.get("run_name") or tags.get(RUN_NAME_TAG, ""),
            user_id=meta.get("user_id") or "",
            status=status,
            start_time=meta.get("start_time"),
            end_time=meta.get("end_time"),
            lifecycle_stage=meta.get("lifecycle_stage") or ACTIVE,
            deleted_time=meta.get("deleted_time"),
            artifact_uri=meta.get("artifact_uri"),
            params=read_key_values(run_dir / "params"),
            tags=tags,
            inputs=tuple(inputs),
        )

    def _run_dir(self, run: Run) -> Path:
        for base in (self.root, self.root / _TRASH):
            candidate = base / run.experiment_id / run.run_id
            if (candidate / "meta.yaml").is_file():
                return candidate
        raise UnitError(f"run {run.run_id} vanished from {self.root}")

    def iter_metric_batches(self, run: Run) -> Iterator[pa.RecordBatch]:
        metrics_dir = self._run_dir(run) / "metrics"
        if not metrics_dir.is_dir():
            return
        files = {
            f.relative_to(metrics_dir).as_posix(): f for f in metrics_dir.rglob("*") if f.is_file()
        }
        yield from history_batches(
            sorted(files), lambda key: key_history(key, *_parse_metric_file(files[key])), self._config.metric_batch_rows
        )


    def _artifact_dir(self, run: Run) -> Path | None:
        directory = local_artifact_dir(run.artifact_uri, run.run_id)
        if directory is not None and not directory.exists():
            # A store moved or copied elsewhere still holds its artifacts beside meta.yaml.
            beside = self._run_dir(run) / "artifacts"
            if beside.is_dir():
                return beside
        return directory

    # -------------------------------------------------------------- logged models

    def iter_logged_models(self, experiment: Experiment) -> Iterator[Unit | Unreadable]:
        """The experiment's logged models, deleted ones too, oldest first (then by id)."""
        exp_dir = self._experiment_dir(experiment)
        models_dir = exp_dir / MODELS
        if not models_dir.is_dir():
            return
        links = self._model_links(exp_dir)
        units = []
        for model_dir in sorted(d for d in models_dir.iterdir() if (d / "meta.yaml").is_file()):
            try:
                meta = self._load_meta(model_dir / "meta.yaml")
                model_id = str(meta.get("model_id") or model_dir.name)
                units.append(logged_model_unit(LoggedModelFields(
                    model_id=model_id, experiment_id=experiment.experiment_id, name=str(meta.get("name") or ""),
                    source_run_id=meta.get("source_run_id"), model_type=meta.get("model_type"),
                    status=meta.get("status"), status_message=meta.get("status_message"),
                    lifecycle_stage=meta.get("lifecycle_stage") or ACTIVE,
                    creation_timestamp=meta.get("creation_timestamp"), last_updated_timestamp=meta.get("last_updated_timestamp"),
                    artifact_location=meta.get("artifact_location"), params=read_key_values(model_dir / "params"),
                    tags=read_key_values(model_dir / "tags"), metrics=_model_metrics(model_dir / "metrics"),
                    links=links.get(model_id, []),
                )))
            except (OSError, ValueError, self._yaml.YAMLError) as exc:
                yield Unreadable(LOGGED_MODEL.name, model_dir.name, f"{model_dir}: {exc}")
        yield from sorted(units, key=lambda u: (u.body["creation_timestamp"] is None, u.body["creation_timestamp"] or 0, u.unit_id))

    def _model_links(self, exp_dir: Path) -> dict[str, list[tuple[str, str, int]]]:
        """model id -> (run id, "output" | "input", step), from the experiment's runs: a run's
        outputs/<model id>/meta.yaml (with the step) and its inputs of source_type MODEL.
        (The file store writes the model id where the run id belongs; the run is the folder.)"""
        links: dict[str, list[tuple[str, str, int]]] = {}
        for run_dir in self._run_dirs(exp_dir):
            for meta_file in sorted(run_dir.glob("outputs/*/meta.yaml")):
                meta = self._load_meta(meta_file)
                links.setdefault(meta_file.parent.name, []).append((run_dir.name, "output", int(meta.get("step") or 0)))
            for meta_file in sorted(run_dir.glob("inputs/*/meta.yaml")):
                meta = self._load_meta(meta_file)
                if meta.get("source_type") == "MODEL":
                    links.setdefault(str(meta.get("source_id")), []).append((run_dir.name, "input", 0))
        return links

    def _model_dir(self, unit: Unit) -> Path | None:
        """A logged model's artifacts: where its location names, else beside its meta.yaml
        (a store moved or copied elsewhere)."""
        if unit.kind != LOGGED_MODEL.name:
            raise UnitError(f"{unit.kind} {unit.unit_id}: units of this kind have no files")
        try:
            directory = local_artifact_dir(unit.body.get("artifact_location"), unit.unit_id)
        except UnitError as exc:
            raise UnitError(str(exc).replace(f"run {unit.unit_id}", f"logged model {unit.unit_id}")) from None
        beside = self.root / str(unit.experiment_id) / MODELS / unit.unit_id / "artifacts"
        return beside if (directory is None or not directory.exists()) and beside.is_dir() else directory

    def list_unit_artifacts(self, unit: Unit) -> Iterator[ArtifactFile]:
        return walk_artifacts(self._model_dir(unit))

    def open_unit_artifact(self, unit: Unit, path: str) -> ContextManager[BinaryIO]:
        return open_local_artifact(self._model_dir(unit), path, unit.unit_id)


def _model_metrics(metrics_dir: Path) -> list[ModelMetric]:
    """metrics/<key> of a logged model: lines "timestamp value step run_id [dataset_name dataset_digest]"."""
    out: list[ModelMetric] = []
    if not metrics_dir.is_dir():
        return out
    for file in sorted(f for f in metrics_dir.rglob("*") if f.is_file()):
        for line in file.read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) >= 4:
                dataset = fields[4:6] if len(fields) >= 6 else [None, None]
                out.append(ModelMetric(file.relative_to(metrics_dir).as_posix(), float(fields[1]), int(fields[0]),
                                       int(fields[2]), fields[3], dataset[0], dataset[1]))
    return out
