"""An MLflow tracking database as a source, the part every dialect shares: experiments,
runs, metric histories key by key, and the artifacts the runs name (logged models and the
registry: mlflow_db.models; traces: mlflow_db.traces)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

import pyarrow as pa

from trackport.config import DEFAULT, TransferConfig
from trackport.domain import (
    ACTIVE,
    DELETED,
    RUN_NAME_TAG,
    DatasetInput,
    Experiment,
    Run,
    rebatch,
)
from trackport.errors import BadInputError, UnitError
from trackport.stores._localfs import LocalArtifacts, local_artifact_dir
from trackport.selection import resolve_experiments, select_runs
from trackport.stores.base import Selection, SourceStore, StoreDescription
from trackport.stores.mlflow_db.metric_order import rows_to_batch
from trackport.stores.mlflow_db.models import ModelReading
from trackport.stores.mlflow_db.pushdown import conditions
from trackport.stores.mlflow_db.summaries import metric_summaries
from trackport.stores.mlflow_db.tables import Database, chunks
from trackport.stores.mlflow_db.traces import TraceReading
from trackport.stores.mlflow_db.uri import ARTIFACTS_PARAM, artifacts_root


# MLflow's tables of what the direct reader leaves to the tracking server, and their names.
NOT_READ_TABLES = (("evaluation_datasets", "evaluation datasets"), ("scorers", "scorers"))

class MlflowDatabaseSource(ModelReading, TraceReading, LocalArtifacts, SourceStore):
    """An MLflow tracking database as a source: sqlite file or server database, with
    MLflow 3's logged models and model registry (ModelReading) and traces (TraceReading)."""

    kind = "database"

    def __init__(
        self, uri: str, *, artifacts_destination: str | None = None, config: TransferConfig = DEFAULT
    ) -> None:
        self.uri = uri
        self._config = config
        self._artifacts_root = artifacts_root(artifacts_destination)
        if self._artifacts_root is not None and not self._artifacts_root.is_dir():
            raise BadInputError(
                f"{ARTIFACTS_PARAM}={artifacts_destination}: no such directory; give the directory the tracking"
                " server was started with (--artifacts-destination)"
            )
        self._db_lock = threading.Lock()
        self._db_opened: Database | None = None

    def _make_engine(self) -> Any:
        raise NotImplementedError

    @property
    def _db(self) -> Database:
        """SQLAlchemy's engine and what the schema has, made on first use: a store opened
        only to be written (SqliteStore) never needs them, and importing SQLAlchemy and
        inspecting the schema take a third of a second."""
        with self._db_lock:
            if self._db_opened is None:
                self._db_opened = Database.inspect(self._make_engine(), self.uri)
            return self._db_opened

    # ---------------------------------------------------------------- common

    def describe(self) -> StoreDescription:
        return StoreDescription(kind=self.kind, uri=self.uri)

    def close(self) -> None:
        if getattr(self, "_db_opened", None) is not None:
            self._db_opened.engine.dispose()
            self._db_opened = None

    # ---------------------------------------------------------------- experiments

    def list_experiments(self, selection: Selection) -> Iterator[Experiment]:
        db = self._db
        sa = db.sa
        e, et = db.tables["experiments"], db.tables["experiment_tags"]
        with db.engine.connect() as conn:
            rows = conn.execute(sa.select(e)).all()
            tags: dict[str, dict[str, str]] = {}
            for row in conn.execute(sa.select(et.c.experiment_id, et.c.key, et.c.value)):
                tags.setdefault(str(row.experiment_id), {})[row.key] = row.value
        experiments = [
            Experiment(
                experiment_id=str(row.experiment_id),
                name=row.name,
                lifecycle_stage=row.lifecycle_stage or ACTIVE,
                artifact_location=row.artifact_location,
                creation_time=row.creation_time,
                last_update_time=row.last_update_time,
                tags=tags.get(str(row.experiment_id), {}),
            )
            for row in rows
        ]
        return iter(resolve_experiments(selection, experiments, self._locate_runs, self.uri))

    def _locate_runs(self, run_ids: list[str]) -> dict[str, str]:
        db = self._db
        r = db.tables["runs"]
        found: dict[str, str] = {}
        with db.engine.connect() as conn:
            for chunk in chunks(run_ids):
                q = db.sa.select(r.c.run_uuid, r.c.experiment_id).where(r.c.run_uuid.in_(chunk))
                found.update({row.run_uuid: str(row.experiment_id) for row in conn.execute(q)})
        return found

    # ---------------------------------------------------------------- runs

    def not_read(self) -> list[str]:
        """What the database holds that this reader does not read (evaluation datasets and
        scorers: through the tracking server only, for now), one line each, said before
        anything is written."""
        db = self._db
        lines = []
        for table, what in NOT_READ_TABLES:
            if table not in db.table_names:
                continue
            with db.engine.connect() as conn:
                count = conn.execute(db.sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
            if count:
                lines.append(
                    f"{what}: the database holds {count:,}, which are not read from a database yet;"
                    " export them through its tracking server (http(s)://...)"
                )
        return lines

    def metric_summaries(self, runs: list[Run], keys: frozenset[str] | None, whole_history: bool = True) -> dict:
        return metric_summaries(self._db, runs, keys, whole_history)

    def count_runs(self, experiment: Experiment, selection: Selection) -> int | None:
        db = self._db
        r = db.tables["runs"]
        q = db.sa.select(db.sa.func.count()).select_from(r).where(r.c.experiment_id == int(experiment.experiment_id))
        if not selection.include_deleted:
            q = q.where(r.c.lifecycle_stage != DELETED)
        if selection.run_ids:
            q = q.where(r.c.run_uuid.in_(list(selection.run_ids)))
        with db.engine.connect() as conn:
            return conn.execute(q).scalar_one()

    def iter_runs(self, experiment: Experiment, selection: Selection) -> Iterator[Run]:
        db = self._db
        sa = db.sa
        r = db.tables["runs"]
        cols = [c for c in r.c if c.name != "deleted_time" or db.has_deleted_time]
        q = sa.select(*cols).where(r.c.experiment_id == int(experiment.experiment_id))
        if not selection.include_deleted:
            q = q.where(r.c.lifecycle_stage != DELETED)
        if selection.run_ids:
            q = q.where(r.c.run_uuid.in_(list(selection.run_ids)))
        if self._config.search_pushdown:
            q = q.where(*conditions(db, selection))
        # trackport.selection.run_order: no start time last, then oldest first, then by id.
        q = q.order_by(r.c.start_time.is_(None), r.c.start_time, r.c.run_uuid)
        with db.engine.connect() as conn:
            run_rows = conn.execute(q).all()
        for chunk in chunks(run_rows):
            yield from select_runs(self._runs_from_rows(chunk), selection)

    def _runs_from_rows(self, rows: list) -> Iterator[Run]:
        db = self._db
        sa = db.sa
        ids = [row.run_uuid for row in rows]
        params: dict[str, dict[str, str]] = {i: {} for i in ids}
        tags: dict[str, dict[str, str]] = {i: {} for i in ids}
        inputs: dict[str, list[DatasetInput]] = {i: [] for i in ids}
        p, t = db.tables["params"], db.tables["tags"]
        input_rows: list = []
        input_tags: dict[str, dict[str, str]] = {}
        with db.engine.connect() as conn:
            for row in conn.execute(sa.select(p.c.run_uuid, p.c.key, p.c.value).where(p.c.run_uuid.in_(ids))):
                params[row.run_uuid][row.key] = row.value
            for row in conn.execute(sa.select(t.c.run_uuid, t.c.key, t.c.value).where(t.c.run_uuid.in_(ids))):
                tags[row.run_uuid][row.key] = row.value
            if db.has_inputs:
                d, inp, it = db.tables["datasets"], db.tables["inputs"], db.tables["input_tags"]
                q = (
                    sa.select(
                        inp.c.input_uuid, inp.c.destination_id, d.c.name, d.c.digest,
                        d.c.dataset_source_type, d.c.dataset_source, d.c.dataset_schema, d.c.dataset_profile,
                    )
                    .join(d, d.c.dataset_uuid == inp.c.source_id)
                    .where(
                        inp.c.source_type == "DATASET",
                        inp.c.destination_type == "RUN",
                        inp.c.destination_id.in_(ids),
                    )
                )
                # Ordered here, by code point: ORDER BY would follow the database's collation.
                input_rows = sorted(conn.execute(q).all(), key=lambda row: (row.name, row.digest, row.input_uuid))
                for chunk in chunks([row.input_uuid for row in input_rows]):
                    q = sa.select(it.c.input_uuid, it.c.name, it.c.value).where(it.c.input_uuid.in_(chunk))
                    for row in conn.execute(q):
                        input_tags.setdefault(row.input_uuid, {})[row.name] = row.value
        for row in input_rows:
            inputs[row.destination_id].append(
                DatasetInput(
                    name=row.name,
                    digest=row.digest,
                    source_type=row.dataset_source_type,
                    source=row.dataset_source,
                    schema=row.dataset_schema,
                    profile=row.dataset_profile,
                    tags=input_tags.get(row.input_uuid, {}),
                )
            )
        for row in rows:
            rid = row.run_uuid
            yield Run(
                run_id=rid,
                experiment_id=str(row.experiment_id),
                run_name=row.name or tags[rid].get(RUN_NAME_TAG, ""),
                user_id=row.user_id or "",
                status=row.status,
                start_time=row.start_time,
                end_time=row.end_time,
                lifecycle_stage=row.lifecycle_stage or ACTIVE,
                deleted_time=row.deleted_time if db.has_deleted_time else None,
                artifact_uri=row.artifact_uri,
                params=params[rid],
                tags=tags[rid],
                inputs=tuple(inputs[rid]),
            )

    # ---------------------------------------------------------------- metrics

    def iter_metric_batches(self, run: Run) -> Iterator[pa.RecordBatch]:
        """Key by key (the keys sorted here, by code point, whatever the database's
        collation), each key's points through the (run_uuid, key, step) index, streamed
        (a key's points are never all in memory at once)."""
        db = self._db
        sa = db.sa
        m = db.tables["metrics"]
        with db.engine.connect() as conn:
            keys = sorted(
                row[0] for row in conn.execute(sa.select(m.c.key).where(m.c.run_uuid == run.run_id).distinct())
            )
        yield from rebatch(self._key_batches(run.run_id, keys), self._config.metric_batch_rows)

    def _key_batches(self, run_id: str, keys: list[str]) -> Iterator[pa.RecordBatch]:
        db = self._db
        sa = db.sa
        m = db.tables["metrics"]
        rows = self._config.metric_batch_rows
        with db.engine.connect() as conn:
            streaming = conn.execution_options(stream_results=True, max_row_buffer=rows)
            for key in keys:
                q = (
                    sa.select(m.c.step, m.c.timestamp, m.c.value, m.c.is_nan)
                    .where(m.c.run_uuid == run_id, m.c.key == key)
                    .order_by(m.c.step, m.c.timestamp, m.c.value)
                )
                result = streaming.execute(q)  # a server-side cursor (PostgreSQL, MySQL)
                while fetched := result.fetchmany(rows):
                    yield rows_to_batch(fetched, key)

    # ---------------------------------------------------------------- artifacts

    def _artifact_dir(self, run: Run) -> Path | None:
        return self._local_folder(run.artifact_uri, "run", run.run_id)

    def _local_folder(self, uri: str | None, what: str, unit_id: str) -> Path | None:
        """The local folder an artifact URI of a run or logged model names (`what` and
        unit_id name it in messages); a tracking server's `mlflow-artifacts:` URI is
        resolved under its --artifacts-destination, given in the source URI."""
        if uri and uri.startswith("mlflow-artifacts:"):
            if self._artifacts_root is None:
                raise UnitError(
                    f"{what} {unit_id}: artifacts at {uri} are kept by the tracking server; add "
                    f"?{ARTIFACTS_PARAM}=<the server's --artifacts-destination directory> to the "
                    "source URI, or export through the server"
                )
            rel = unquote(urlparse(uri).path).lstrip("/")
            root = self._artifacts_root.resolve()
            full = (root / rel).resolve()
            if not full.is_relative_to(root):
                raise UnitError(f"{what} {unit_id}: artifact URI {uri} points outside {root}")
            return full
        return local_artifact_dir(uri, unit_id)
