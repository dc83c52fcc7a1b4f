"""One run's page, as MLflow's run page shows it, from any store: where it came from (source,
entry point, git commit), when and by whom it ran, its params, metrics with their latest
value and history length, tags, note, dataset inputs, artifacts, the models it logged with
the line that loads each, and what it takes to reproduce it (the source, the commit, the
command of an MLflow project, the model's requirements.txt or conda.yaml).

Rules (docs/design-decisions.md, "Showing a run"): the page's tags are the user's; MLflow's
own `mlflow.*` tags that the page shows elsewhere (source, git, user, name, parent, note,
the model history it read) are not repeated, the others are listed as system tags. Models are the MLflow
3 logged models whose source run this is, and the legacy models of the run's
`mlflow.log-model.history` tag (MLflow 2), each with its requirements.txt and conda.yaml
when logged, their first ENVIRONMENT_BYTES bytes."""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import BinaryIO, Callable, ContextManager, Iterable

from trackport.domain import (
    DELETED,
    PARENT_RUN_ID_TAG,
    RUN_NAME_TAG,
    ArtifactFile,
    Experiment,
    MetricSummary,
    Run,
)
from trackport.errors import BadInputError
from trackport.kinds import LOGGED_MODEL
from trackport.models import metric_value_to_json
from trackport.runs.listing import (
    SOURCE_NAME_TAG,
    SOURCE_TYPE_TAG,
    SYSTEM_TAG_PREFIX,
    USER_TAG,
    duration_ms,
    user_tags,
)
from trackport.search import metric_summaries
from trackport.selection import runs_of
from trackport.stores.base import Selection, SourceStore, Unreadable, read_units

NOTE_TAG = "mlflow.note.content"
ENTRY_POINT_TAG = "mlflow.project.entryPoint"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_REPO_TAG = "mlflow.source.git.repoURL"
MODEL_HISTORY_TAG = "mlflow.log-model.history"
# MLflow's tags that the page shows in a place of their own.
SHOWN_ELSEWHERE = frozenset({
    SOURCE_TYPE_TAG, SOURCE_NAME_TAG, ENTRY_POINT_TAG, GIT_COMMIT_TAG, GIT_REPO_TAG, USER_TAG, RUN_NAME_TAG,
    PARENT_RUN_ID_TAG, NOTE_TAG, MODEL_HISTORY_TAG,
})
ENVIRONMENT_FILES = ("requirements.txt", "conda.yaml")  # a model's environment, as MLflow logs it
ENVIRONMENT_BYTES = 4096  # of each environment file, shown on the page
LOGGED, LEGACY = "logged model", "legacy model"


@dataclass(frozen=True)
class MetricLine:
    key: str
    summary: MetricSummary  # latest value, its step and time, min, max, points

    def to_json(self) -> dict:
        s = self.summary
        return {
            "key": self.key, "latest": metric_value_to_json(s.latest), "step": s.step, "timestamp": s.timestamp,
            "min": None if s.min is None else metric_value_to_json(s.min),
            "max": None if s.max is None else metric_value_to_json(s.max), "points": s.points,
        }


@dataclass(frozen=True)
class EnvironmentFile:
    path: str  # among the model's files
    size: int
    text: str  # its first ENVIRONMENT_BYTES bytes, as UTF-8 (undecodable bytes replaced)
    truncated: bool


@dataclass(frozen=True)
class ModelEntry:
    """A model the run logged and how to load it."""

    kind: str  # LOGGED or LEGACY
    name: str  # a logged model's name; a legacy model's artifact path
    model_id: str | None  # a logged model's id
    artifact_path: str | None  # a legacy model's path among the run's artifacts
    deleted: bool
    flavors: tuple[str, ...]  # as a legacy model's history entry names them (a logged model's: in its MLmodel, not read)
    environment: tuple[EnvironmentFile, ...]

    def load_snippet(self, run_id: str) -> str | None:
        """The line that loads it with MLflow; None for a deleted model, which cannot be loaded."""
        if self.deleted:
            return None
        uri = f"models:/{self.model_id}" if self.kind == LOGGED else f"runs:/{run_id}/{self.artifact_path}"
        return f'mlflow.pyfunc.load_model("{uri}")'


@dataclass(frozen=True)
class RunPage:
    run: Run  # params, inputs, times, user, status, lifecycle stage, all tags
    experiment_name: str
    metrics: tuple[MetricLine, ...]
    artifacts: tuple[ArtifactFile, ...]
    models: tuple[ModelEntry, ...]
    # Where the source looked for the run's artifacts and found no folder (see SourceStore).
    missing_artifact_folder: str | None = None
    unreadable_models: tuple[Unreadable, ...] = ()  # logged models of the experiment it could not read

    def tag(self, key: str) -> str | None:
        return self.run.tags.get(key) or None

    @property
    def user(self) -> str:
        return self.run.user_id or self.run.tags.get(USER_TAG, "")

    @property
    def duration_ms(self) -> int | None:
        return duration_ms(self.run.start_time, self.run.end_time)

    @property
    def user_tags(self) -> dict[str, str]:
        return dict(sorted(user_tags(self.run.tags).items()))

    @property
    def system_tags(self) -> dict[str, str]:
        """MLflow's own tags the page does not show in a place of their own (a model history
        it could not read as one is shown here)."""
        hidden = SHOWN_ELSEWHERE if any(m.kind == LEGACY for m in self.models) else SHOWN_ELSEWHERE - {MODEL_HISTORY_TAG}
        return {k: v for k, v in sorted(self.run.tags.items()) if k.startswith(SYSTEM_TAG_PREFIX) and k not in hidden}

    def reproduce_command(self) -> str | None:
        """`mlflow run` of an MLflow project at its commit, with its entry point and params."""
        uri = self.tag(GIT_REPO_TAG) or self.tag(SOURCE_NAME_TAG)
        if self.tag(SOURCE_TYPE_TAG) != "PROJECT" or not uri:
            return None
        words = ["mlflow", "run", uri]
        if self.tag(GIT_COMMIT_TAG):
            words += ["--version", self.tag(GIT_COMMIT_TAG)]
        if self.tag(ENTRY_POINT_TAG):
            words += ["--entry-point", self.tag(ENTRY_POINT_TAG)]
        for key, value in sorted(self.run.params.items()):
            words += ["-P", f"{key}={value}"]
        return shlex.join(words)

    def to_json(self) -> dict:
        run = self.run
        return {
            "run_id": run.run_id, "run_name": run.run_name, "experiment_id": run.experiment_id,
            "experiment_name": self.experiment_name, "parent_run_id": run.parent_run_id,
            "source": {"type": self.tag(SOURCE_TYPE_TAG), "name": self.tag(SOURCE_NAME_TAG), "entry_point": self.tag(ENTRY_POINT_TAG)},
            "git": {"commit": self.tag(GIT_COMMIT_TAG), "repo_url": self.tag(GIT_REPO_TAG)},
            "start_time": run.start_time, "end_time": run.end_time, "duration_ms": self.duration_ms,
            "user": self.user, "status": run.status, "lifecycle_stage": run.lifecycle_stage, "deleted_time": run.deleted_time,
            "params": dict(sorted(run.params.items())), "metrics": [m.to_json() for m in self.metrics],
            "tags": self.user_tags, "system_tags": self.system_tags, "note": self.tag(NOTE_TAG),
            "inputs": [
                {"name": d.name, "digest": d.digest, "source_type": d.source_type, "source": d.source, "tags": d.tags}
                for d in run.inputs
            ],
            "artifact_uri": run.artifact_uri, "missing_artifact_folder": self.missing_artifact_folder,
            "artifacts": [{"path": a.path, "size": a.size} for a in self.artifacts],
            "models": [
                {
                    "kind": m.kind, "name": m.name, "model_id": m.model_id, "artifact_path": m.artifact_path,
                    "deleted": m.deleted, "flavors": list(m.flavors), "load": m.load_snippet(run.run_id),
                    "environment": [{"path": e.path, "size": e.size, "text": e.text, "truncated": e.truncated} for e in m.environment],
                }
                for m in self.models
            ],
            "unreadable_models": [{"model_id": u.source_id, "reason": u.reason} for u in self.unreadable_models],
            "reproduce_command": self.reproduce_command(),
        }


def run_page(source: SourceStore, run_id: str) -> RunPage:
    """The page of the run with that id, deleted or not; BadInputError when the source does
    not hold it or cannot read it."""
    experiment, run = find_run(source, run_id)
    summaries = metric_summaries(source, [run], None, whole_history=True).get(run.run_id, {})
    artifacts = tuple(source.list_artifacts(run))
    models, unreadable = _logged_models(source, experiment, run)
    return RunPage(
        run, experiment.name, tuple(MetricLine(key, summaries[key]) for key in sorted(summaries)), artifacts,
        models + _legacy_models(source, run, artifacts), source.missing_artifact_folder(run), unreadable,
    )


def find_run(source: SourceStore, run_id: str) -> tuple[Experiment, Run]:
    selection = Selection(run_ids=(run_id,), include_deleted=True)
    for experiment in source.list_experiments(selection):  # refuses an id the source does not hold
        if isinstance(experiment, Unreadable):
            raise BadInputError(f"run {run_id}: its experiment {experiment.source_id} cannot be read: {experiment.reason}")
        for run in runs_of(source, experiment, selection):
            if isinstance(run, Unreadable):
                raise BadInputError(f"run {run_id} cannot be read: {run.reason}")
            return experiment, run
    raise BadInputError(f"run not found in {source.describe().uri}: {run_id}")


def _logged_models(source: SourceStore, experiment: Experiment, run: Run) -> tuple[tuple[ModelEntry, ...], tuple[Unreadable, ...]]:
    """The logged models whose source run this is, and the experiment's logged models the
    source could not read (one of them may be this run's)."""
    entries, unreadable = [], []
    for unit in read_units(source, LOGGED_MODEL, experiment, Selection(include_deleted=True)) or ():
        if isinstance(unit, Unreadable):
            unreadable.append(unit)
        elif unit.refs.get("run") == run.run_id:
            files = {f.path: f.size for f in source.list_unit_artifacts(unit)}
            entries.append(ModelEntry(
                LOGGED, unit.name, unit.unit_id, None, unit.body.get("lifecycle_stage") == DELETED, (),
                _environment(files, "", lambda path, u=unit: source.open_unit_artifact(u, path)),
            ))
    return tuple(entries), tuple(unreadable)


def _legacy_models(source: SourceStore, run: Run, artifacts: Iterable[ArtifactFile]) -> tuple[ModelEntry, ...]:
    """The models of the run's `mlflow.log-model.history` tag (the latest entry of each
    path); none when the tag is absent or is not the JSON list MLflow writes (it is then
    shown among the system tags)."""
    try:
        history = json.loads(run.tags.get(MODEL_HISTORY_TAG) or "[]")
    except ValueError:
        return ()
    if not isinstance(history, list):
        return ()
    by_path = {e["artifact_path"]: e for e in history if isinstance(e, dict) and isinstance(e.get("artifact_path"), str)}
    files = {f.path: f.size for f in artifacts}
    return tuple(
        ModelEntry(
            LEGACY, path, None, path, False, _flavors(entry.get("flavors")),
            _environment(files, path.strip("/") + "/", lambda p: source.open_artifact(run, p)),
        )
        for path, entry in sorted(by_path.items())
    )


def _flavors(flavors: object) -> tuple[str, ...]:
    return tuple(sorted(flavors)) if isinstance(flavors, dict) else ()


def _environment(files: dict[str, int], folder: str, open_file: Callable[[str], ContextManager[BinaryIO]]) -> tuple[EnvironmentFile, ...]:
    """The model's environment files among files (path -> size) under folder ('' or 'model/')."""
    found = []
    for name in ENVIRONMENT_FILES:
        path = folder + name
        if path in files:
            with open_file(path) as stream:
                head = _read_up_to(stream, ENVIRONMENT_BYTES)
            found.append(EnvironmentFile(path, files[path], head.decode("utf-8", "replace"), files[path] > ENVIRONMENT_BYTES))
    return tuple(found)


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """The first size bytes (fewer at the end): a network stream may answer a read with less."""
    parts, left = [], size
    while left and (chunk := stream.read(left)):
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)
