"""MLflow 3's model objects read from a tracking database: logged models (with their files)
and the model registry (registered models, prompts among them, and their versions).

Each object's rows are read in bulk, one query per table for a whole experiment (logged
models) or the whole registry, and handed to trackport.models' builders, so the units are
the ones every other store gives for the same objects. A schema without these tables (an
older MLflow's database) holds none of them: the listings are empty.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, ContextManager, Iterator

from trackport.domain import ACTIVE, ArtifactFile, Experiment
from trackport.errors import UnitError
from trackport.kinds import LOGGED_MODEL, Unit
from trackport.models import (
    LoggedModelFields,
    ModelMetric,
    VersionFields,
    logged_model_unit,
    model_id_in_source,
    name_matches,
    registered_model_unit,
    version_units,
)
from trackport.stores._localfs import open_local_artifact, walk_artifacts
from trackport.stores.base import Selection
from trackport.stores.mlflow_db.tables import Database, chunks

DEFAULT_WORKSPACE = "default"  # the rows of a database without workspaces enabled
DELETED_VERSION_STAGE = "Deleted_Internal"  # MLflow keeps a deleted version's row with this stage
NO_STAGE = "None"  # what MLflow stores for a version in no stage; a unit's body says null
MODEL_OUTPUT = ("RUN_OUTPUT", "MODEL_OUTPUT")  # inputs rows: (source_type, destination_type)
MODEL_INPUT = ("RUN_INPUT", "MODEL_INPUT")


class ModelReading:
    """The logged models and registry of an MLflow database, for MlflowDatabaseSource: it
    gives `_db` (the schema) and `_local_folder` (an artifact URI as a local folder)."""

    _db: Database

    def _local_folder(self, uri: str | None, what: str, unit_id: str) -> Path | None:
        raise NotImplementedError

    def _locate_runs(self, run_ids: list[str]) -> dict[str, str]:
        raise NotImplementedError

    # ---------------------------------------------------------------- logged models

    def iter_logged_models(self, experiment: Experiment) -> Iterator[Unit]:
        """Every logged model of the experiment, deleted ones too, oldest first (then by id)."""
        db = self._db
        if not db.has_logged_models:
            return
        sa = db.sa
        lm = db.tables["logged_models"]
        experiment_id = int(experiment.experiment_id)
        columns = [c for c in lm.c if db.has("logged_models", c.name)]
        with db.engine.connect() as conn:
            rows = conn.execute(sa.select(*columns).where(lm.c.experiment_id == experiment_id)).all()
            if not rows:
                return
            params = _by_model(conn, sa, db.tables["logged_model_params"], experiment_id, "param_key", "param_value")
            tags = _by_model(conn, sa, db.tables["logged_model_tags"], experiment_id, "tag_key", "tag_value")
            metrics = _model_metrics(conn, sa, db.tables["logged_model_metrics"], experiment_id)
            links = _model_links(conn, db, [row.model_id for row in rows])
        rows = sorted(rows, key=lambda row: (row.creation_timestamp_ms is None, row.creation_timestamp_ms or 0, row.model_id))
        for row in rows:
            mapping = row._mapping
            yield logged_model_unit(LoggedModelFields(
                model_id=row.model_id,
                experiment_id=str(row.experiment_id),
                name=row.name,
                source_run_id=row.source_run_id or None,
                model_type=mapping.get("model_type") or None,
                status=row.status,
                status_message=mapping.get("status_message") or None,
                lifecycle_stage=mapping.get("lifecycle_stage") or ACTIVE,
                creation_timestamp=row.creation_timestamp_ms,
                last_updated_timestamp=row.last_updated_timestamp_ms,
                artifact_location=row.artifact_location,
                params=params.get(row.model_id, {}),
                tags=tags.get(row.model_id, {}),
                metrics=metrics.get(row.model_id, []),
                links=links.get(row.model_id, []),
            ))

    def _model_folder(self, unit: Unit) -> Path | None:
        if unit.kind != LOGGED_MODEL.name:
            raise UnitError(f"{unit.kind} {unit.unit_id}: units of this kind have no files")
        with _about_model(unit.unit_id):
            return self._local_folder(unit.body.get("artifact_location"), "logged model", unit.unit_id)

    def list_unit_artifacts(self, unit: Unit) -> Iterator[ArtifactFile]:
        """The files under the logged model's artifact location, sorted by path."""
        folder = self._model_folder(unit)
        with _about_model(unit.unit_id):
            return iter(list(walk_artifacts(folder)))

    def open_unit_artifact(self, unit: Unit, path: str) -> ContextManager[BinaryIO]:
        folder = self._model_folder(unit)
        with _about_model(unit.unit_id):
            return open_local_artifact(folder, path, unit.unit_id)

    # ---------------------------------------------------------------- registry

    def iter_registered_models(self, selection: Selection) -> Iterator[Unit]:
        """Every registered model and prompt (one table), by name."""
        db = self._db
        if not db.has_registry:
            return
        sa = db.sa
        rm, rmt = db.tables["registered_models"], db.tables["registered_model_tags"]
        with db.engine.connect() as conn:
            q = sa.select(rm.c.name, rm.c.creation_time, rm.c.last_updated_time, rm.c.description)
            rows = conn.execute(_in_workspace(db, q, "registered_models", rm)).all()
            tags: dict[str, dict[str, str]] = {}
            q = _in_workspace(db, sa.select(rmt.c.name, rmt.c.key, rmt.c.value), "registered_model_tags", rmt)
            for row in conn.execute(q):
                tags.setdefault(row.name, {})[row.key] = row.value
        for row in sorted(rows, key=lambda r: r.name):
            if selection.models and not name_matches(row.name, selection.models):
                continue
            yield registered_model_unit(
                row.name, row.description, tags.get(row.name, {}), row.creation_time, row.last_updated_time
            )

    def iter_model_versions(self, selection: Selection) -> Iterator[Unit]:
        """The live versions of every registered model, model by model in name order, each
        naming the numbers deleted before it (MLflow keeps their rows, Deleted_Internal)."""
        db = self._db
        if not db.has_registry:
            return
        sa = db.sa
        mv, mvt = db.tables["model_versions"], db.tables["model_version_tags"]
        columns = [c for c in mv.c if db.has("model_versions", c.name) and c.name != "workspace"]
        with db.engine.connect() as conn:
            rows = conn.execute(_in_workspace(db, sa.select(*columns), "model_versions", mv)).all()
            tags: dict[tuple[str, int], dict[str, str]] = {}
            q = _in_workspace(db, sa.select(mvt.c.name, mvt.c.version, mvt.c.key, mvt.c.value), "model_version_tags", mvt)
            for row in conn.execute(q):
                tags.setdefault((row.name, int(row.version)), {})[row.key] = row.value
            aliases: dict[tuple[str, int], list[str]] = {}
            if db.has("registered_model_aliases"):
                rma = db.tables["registered_model_aliases"]
                q = _in_workspace(db, sa.select(rma.c.name, rma.c.alias, rma.c.version), "registered_model_aliases", rma)
                for row in conn.execute(q):
                    aliases.setdefault((row.name, int(row.version)), []).append(row.alias)
        if selection.models:
            rows = [row for row in rows if name_matches(row.name, selection.models)]
        live = [row for row in rows if row.current_stage != DELETED_VERSION_STAGE]
        experiments = self._version_experiments(live)
        by_name: dict[str, list[VersionFields]] = {}
        deleted: dict[str, list[int]] = {}
        for row in rows:
            number = int(row.version)
            if row.current_stage == DELETED_VERSION_STAGE:
                deleted.setdefault(row.name, []).append(number)
                continue
            mapping = row._mapping
            model_id = model_id_in_source(row.source)
            by_name.setdefault(row.name, []).append(VersionFields(
                version=number,
                source=row.source or "",
                run_id=row.run_id or None,
                model_id=model_id,
                experiment_id=experiments.get(model_id or "") or experiments.get(row.run_id or ""),
                description=row.description,
                tags=tags.get((row.name, number), {}),
                aliases=aliases.get((row.name, number), []),
                run_link=mapping.get("run_link"),
                status=row.status or "READY",
                status_message=mapping.get("status_message"),
                current_stage=stage_or_none(row.current_stage),
                user_id=row.user_id,
                creation_timestamp=row.creation_time,
                last_updated_timestamp=row.last_updated_time,
            ))
        for name in sorted(by_name):
            yield from version_units(name, by_name[name], deleted.get(name, ()))

    def _version_experiments(self, rows: list) -> dict[str, str]:
        """The experiment of each logged model and run the versions name (model or run id ->
        experiment id), looked up in bulk."""
        db = self._db
        model_ids = sorted({m for m in (model_id_in_source(row.source) for row in rows) if m})
        found: dict[str, str] = {}
        if model_ids and db.has_logged_models:
            lm = db.tables["logged_models"]
            with db.engine.connect() as conn:
                for chunk in chunks(model_ids):
                    q = db.sa.select(lm.c.model_id, lm.c.experiment_id).where(lm.c.model_id.in_(chunk))
                    found.update({row.model_id: str(row.experiment_id) for row in conn.execute(q)})
        run_ids = sorted({row.run_id for row in rows if row.run_id})
        if run_ids:
            found.update(self._locate_runs(run_ids))
        return found


def stage_or_none(stage: str | None) -> str | None:
    """A version's stage as bodies hold it: MLflow's "None" (no stage) as null."""
    return None if not stage or stage == NO_STAGE else stage


def _in_workspace(db: Database, query: Any, table_name: str, table: Any) -> Any:
    """The query on the default workspace's rows, where the schema has workspaces."""
    return query.where(table.c.workspace == DEFAULT_WORKSPACE) if db.has(table_name, "workspace") else query


def _by_model(conn: Any, sa: Any, table: Any, experiment_id: int, key: str, value: str) -> dict[str, dict[str, str]]:
    """{model id: {key: value}} of an experiment's logged model params or tags."""
    out: dict[str, dict[str, str]] = {}
    q = sa.select(table.c.model_id, table.c[key], table.c[value]).where(table.c.experiment_id == experiment_id)
    for model_id, k, v in conn.execute(q):
        out.setdefault(model_id, {})[k] = v
    return out


def _model_metrics(conn: Any, sa: Any, table: Any, experiment_id: int) -> dict[str, list[ModelMetric]]:
    out: dict[str, list[ModelMetric]] = {}
    q = sa.select(
        table.c.model_id, table.c.metric_name, table.c.metric_value, table.c.metric_timestamp_ms,
        table.c.metric_step, table.c.run_id, table.c.dataset_name, table.c.dataset_digest,
    ).where(table.c.experiment_id == experiment_id)
    for row in conn.execute(q):
        out.setdefault(row.model_id, []).append(ModelMetric(
            key=row.metric_name,
            # The column is nullable; MLflow itself never leaves it empty (a NaN is stored as 0).
            value=math.nan if row.metric_value is None else float(row.metric_value),
            timestamp=row.metric_timestamp_ms,
            step=row.metric_step,
            run_id=row.run_id or None,
            dataset_name=row.dataset_name,
            dataset_digest=row.dataset_digest,
        ))
    return out


def _model_links(conn: Any, db: Database, model_ids: list[str]) -> dict[str, list[tuple[str, str, int]]]:
    """{model id: [(run id, "output" | "input", step)]} from the inputs table: a run's model
    outputs (with the step it logged them at) and model inputs (MLflow gives them no step)."""
    out: dict[str, list[tuple[str, str, int]]] = {}
    if not db.has("inputs"):
        return out
    sa, inputs = db.sa, db.tables["inputs"]
    has_step = db.has("inputs", "step")
    columns = [inputs.c.source_type, inputs.c.source_id, inputs.c.destination_id]
    if has_step:
        columns.append(inputs.c.step)
    for chunk in chunks(model_ids):
        q = sa.select(*columns).where(
            inputs.c.destination_type.in_([MODEL_OUTPUT[1], MODEL_INPUT[1]]), inputs.c.destination_id.in_(chunk)
        )
        for row in conn.execute(q):
            if row.source_type == MODEL_OUTPUT[0]:
                out.setdefault(row.destination_id, []).append((row.source_id, "output", int(row.step or 0) if has_step else 0))
            elif row.source_type == MODEL_INPUT[0]:
                out.setdefault(row.destination_id, []).append((row.source_id, "input", 0))
    return out


@contextmanager
def _about_model(model_id: str) -> Iterator[None]:
    """The local-artifact helpers word their errors for runs: these name the logged model."""
    try:
        yield
    except UnitError as exc:
        raise UnitError(str(exc).replace(f"run {model_id}", f"logged model {model_id}")) from None
