"""A local MLflow sqlite tracking store, as a source and as a sink.

As a source it is sql_reader.SqliteSource: read-only (sqlite mode=ro), never MLflow's
store layer. As a sink, MLflow's own store layer opens, creates and checks the database
once (so the schema is always one MLflow knows); runs then go into its tables over one
raw sqlite3 connection, each run in a savepoint of a transaction shared with the runs
written at the same time (_group_commit), metric points in bulk (_sqlite_metrics). That is
the only way to keep run ids, experiment ids, times and deleted state, and is far faster
than the store's per-entity API for large metric histories.

The journal mode and synchronous setting stay what the database's owner chose (WAL is
persistent, synchronous=OFF risks the owner's data); only a database made here gets a
page size of our choosing.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

from trackport.domain import (
    RUN_NAME_TAG,
    Capabilities,
    Experiment,
    Run,
    TargetExperimentId,
    TargetRunId,
)
from trackport.errors import BadInputError, UnitError
from trackport.stores._group_commit import CommitError, GroupCommitWriter
from trackport.stores._localfs import COPY_CHUNK, local_artifact_dir
from trackport.stores._sqlite_metrics import insert_points, prepare_points, remove_stale_spools
from trackport.stores.base import (
    RunContent,
    RunWriteResult,
    SinkStore,
    StoreDescription,
)
from trackport.stores.sql_reader import (
    SqliteSource,
    looks_like_mlflow_db,
    split_uri_options,
)

_DEFAULT_WORKSPACE = "default"
_NEW_DATABASE_PAGE_SIZE = 16384
_MISSING_MLFLOW = "reading or writing a local MLflow store needs MLflow: pip install 'trackport[local]'"


def _mlflow() -> Any:
    try:
        import mlflow
        import mlflow.store.tracking.dbmodels.models  # noqa: F401
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    except ImportError as exc:
        raise BadInputError(_MISSING_MLFLOW) from exc
    return mlflow


def sqlite_path_from_uri(uri: str) -> Path:
    """sqlite:///rel/path.db, sqlite:////abs/path.db, or a plain path ending in .db (a
    trailing ?artifacts_destination=... is not part of the path)."""
    uri = split_uri_options(uri)[0]
    if uri.startswith("sqlite:///"):
        raw = uri[len("sqlite:///") :]
    elif uri.startswith("sqlite:"):
        raise BadInputError(f"unsupported sqlite URI {uri!r}: use sqlite:///path/to/mlflow.db")
    elif uri.endswith(".db"):
        raw = uri
    else:
        raise BadInputError(f"{uri!r} is not a sqlite store: use sqlite:///path/to/mlflow.db")
    if not raw or raw == ":memory:":
        raise BadInputError(f"{uri!r} names no database file: use sqlite:///path/to/mlflow.db")
    return Path(raw).expanduser().absolute()


def _looks_like_mlflow_db(path: Path) -> bool:  # kept for callers of the old name
    return looks_like_mlflow_db(path)


class SqliteStore(SqliteSource, SinkStore):
    """Read through SqliteSource (read-only, never MLflow's store layer); as a sink
    (create=True), MLflow's SqlAlchemyStore opens or creates the database once, so its
    schema is always one MLflow knows, and rows are then written in bulk."""

    capabilities = Capabilities(
        keeps_run_ids=True,
        keeps_experiment_ids=True,
        keeps_times=True,
        keeps_users=True,
        keeps_deleted_state=True,
        keeps_infinity=True,
    )

    def __init__(self, uri: str, *, create: bool, artifact_root: str | None = None) -> None:
        bare, artifacts_destination = split_uri_options(uri)
        path = sqlite_path_from_uri(bare)
        self._store: Any = None
        self._mlflow_version: str | None = None
        self._created_here = False
        if create:
            self._open_for_writing(path, artifact_root)
        SqliteSource.__init__(self, uri, path, artifacts_destination=artifacts_destination)

    def _open_for_writing(self, path: Path, artifact_root: str | None) -> None:
        mlflow = _mlflow()
        from mlflow.exceptions import MlflowException
        from mlflow.store.tracking.dbmodels import models
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        self._mlflow_version = mlflow.__version__
        # MLflow puts a `Default` experiment into every database it creates; in a database
        # we create, that experiment is ours to make equal to the source's.
        self._created_here = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        root = artifact_root or str(path.parent / "mlartifacts")
        try:
            if self._created_here:
                _create_database(path, root)
            self._store = SqlAlchemyStore(f"sqlite:///{path}", root)
        except MlflowException as exc:
            raise BadInputError(
                f"cannot open {path} with MLflow {mlflow.__version__} ({exc.message.splitlines()[0]}); "
                f"if its schema is older, back it up and run: mlflow db upgrade sqlite:///{path}"
            ) from exc
        self._wengine = self._store.engine
        self._t_exp = models.SqlExperiment.__table__
        self._t_exp_tag = models.SqlExperimentTag.__table__
        self._t_run = models.SqlRun.__table__
        self._t_tag = models.SqlTag.__table__
        self._t_param = models.SqlParam.__table__
        self._t_dataset = models.SqlDataset.__table__
        self._t_input = models.SqlInput.__table__
        self._t_input_tag = models.SqlInputTag.__table__
        self._writer = GroupCommitWriter(path)
        remove_stale_spools(sqlite_state_dir(path))

    # ---------------------------------------------------------------- common

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="sqlite", uri=self.uri, mlflow_version=self._mlflow_version)

    def close(self) -> None:
        super().close()
        if self._store is not None:
            self._writer.close()
            # The engine is cached by MLflow per URI and shared; disposing only drops
            # pooled connections, which is what we want at the end of a transfer.
            self._wengine.dispose()

    def _check_writable(self) -> None:
        if self._store is None:
            raise BadInputError(f"{self.uri} was opened read-only")

    # ---------------------------------------------------------------- sink

    def state_dir(self) -> Path:
        path = sqlite_state_dir(self.path)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put_experiment(self, experiment: Experiment) -> TargetExperimentId:
        import sqlalchemy as sa

        self._check_writable()
        e, et = self._t_exp, self._t_exp_tag
        with self._writer.idle(), self._wengine.begin() as conn:
            existing = conn.execute(
                sa.select(e.c.experiment_id).where(
                    e.c.name == experiment.name, e.c.workspace == _DEFAULT_WORKSPACE
                )
            ).first()
            if existing is not None:
                exp_id = existing.experiment_id
                if self._created_here and not self._has_runs(conn, exp_id):
                    conn.execute(
                        sa.update(e)
                        .where(e.c.experiment_id == exp_id)
                        .values(
                            lifecycle_stage=experiment.lifecycle_stage,
                            creation_time=experiment.creation_time,
                            last_update_time=experiment.last_update_time,
                        )
                    )
            else:
                values: dict[str, Any] = {
                    "name": experiment.name,
                    "lifecycle_stage": experiment.lifecycle_stage,
                    "workspace": _DEFAULT_WORKSPACE,
                }
                # Omitted times take MLflow's column default (now) rather than NULL.
                if experiment.creation_time is not None:
                    values["creation_time"] = experiment.creation_time
                if experiment.last_update_time is not None:
                    values["last_update_time"] = experiment.last_update_time
                wanted = _int_or_none(experiment.experiment_id)
                if wanted is not None:
                    taken = conn.execute(
                        sa.select(e.c.experiment_id).where(e.c.experiment_id == wanted)
                    ).first()
                    if taken is None:
                        values["experiment_id"] = wanted
                exp_id = conn.execute(sa.insert(e).values(**values)).inserted_primary_key[0]
                conn.execute(
                    sa.update(e)
                    .where(e.c.experiment_id == exp_id)
                    .values(artifact_location=self._store._get_artifact_location(exp_id))
                )
            have = {
                row.key
                for row in conn.execute(sa.select(et.c.key).where(et.c.experiment_id == exp_id))
            }
            new_tags = [
                {"key": k, "value": v, "experiment_id": exp_id}
                for k, v in experiment.tags.items()
                if k not in have
            ]
            if new_tags:
                conn.execute(sa.insert(et), new_tags)
        return TargetExperimentId(str(exp_id))

    def _has_runs(self, conn: Any, experiment_id: int) -> bool:
        import sqlalchemy as sa

        r = self._t_run
        return conn.execute(sa.select(r.c.run_uuid).where(r.c.experiment_id == experiment_id).limit(1)).first() is not None

    def find_run(self, run: Run, target_experiment_id: TargetExperimentId) -> TargetRunId | None:
        import sqlalchemy as sa

        r = self._t_run
        with self._wengine.connect() as conn:
            row = conn.execute(sa.select(r.c.run_uuid).where(r.c.run_uuid == run.run_id)).first()
        return TargetRunId(row.run_uuid) if row is not None else None

    def put_run(
        self, run: Run, target_experiment_id: TargetExperimentId, content: RunContent
    ) -> RunWriteResult:
        import sqlalchemy as sa
        from mlflow.utils.uri import append_to_uri_path

        self._check_writable()
        e = self._t_exp
        exp_id = int(target_experiment_id)
        with self._wengine.connect() as conn:
            exp_row = conn.execute(
                sa.select(e.c.artifact_location).where(e.c.experiment_id == exp_id)
            ).first()
        if exp_row is None:
            raise UnitError(f"run {run.run_id}: target experiment {exp_id} does not exist")
        if self.find_run(run, target_experiment_id) is not None:
            raise UnitError(f"run {run.run_id} already exists in {self.uri}")
        artifact_uri = append_to_uri_path(exp_row.artifact_location, run.run_id, "artifacts")
        artifact_dir = local_artifact_dir(artifact_uri, run.run_id)
        result = RunWriteResult(target_run_id=TargetRunId(run.run_id))

        # Artifacts and metrics are read from the source before the writer is asked, so
        # slow sources do not hold up the other runs' rows.
        try:
            self._copy_artifacts(content, artifact_dir, result)
            with prepare_points(content.metric_batches(), self.state_dir()) as points:

                def write_rows(cursor: sqlite3.Cursor) -> int:
                    self._insert_run(cursor, run, exp_id, artifact_uri)
                    self._insert_inputs(cursor, run, exp_id)
                    return insert_points(cursor, run.run_id, points)

                try:
                    result.metric_points = self._writer.write(write_rows)
                except (sqlite3.Error, CommitError) as exc:
                    raise UnitError(f"run {run.run_id}: {exc}") from exc
        except BaseException:
            if artifact_dir is not None:
                shutil.rmtree(artifact_dir.parent, ignore_errors=True)
            raise
        if result.metric_points < points.source_points:
            result.losses.append(
                f"{points.source_points - result.metric_points} exact duplicate metric points collapsed "
                "(MLflow's SQL store keeps one of each)"
            )
        return result

    def _copy_artifacts(
        self, content: RunContent, artifact_dir: Path | None, result: RunWriteResult
    ) -> None:
        files = list(content.artifact_files())
        if not files:
            return
        if artifact_dir is None:
            raise UnitError("target run has no artifact location")
        if artifact_dir.exists():  # leftovers of an attempt that never committed
            shutil.rmtree(artifact_dir)
        root = artifact_dir.resolve()
        for f in files:
            dest = (artifact_dir / f.path).resolve()
            if not dest.is_relative_to(root):
                raise UnitError(f"artifact path {f.path!r} escapes the run's artifact directory")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with content.open_artifact(f.path) as src, open(dest, "wb") as dst:
                while chunk := src.read(COPY_CHUNK):
                    dst.write(chunk)
                    result.artifact_bytes += len(chunk)
            result.artifact_files += 1

    def _insert_run(self, cursor: sqlite3.Cursor, run: Run, exp_id: int, artifact_uri: str) -> None:
        tags = dict(run.tags)
        name = run.run_name or tags.get(RUN_NAME_TAG, "")
        if name:
            tags[RUN_NAME_TAG] = name  # MLflow keeps runs.name and this tag equal
        _insert(cursor, self._t_run, [{
            "run_uuid": run.run_id,
            "name": name,
            "source_type": "UNKNOWN",
            "source_name": "",
            "entry_point_name": "",
            "user_id": run.user_id,
            "status": run.status,
            "start_time": run.start_time,
            "end_time": run.end_time,
            "deleted_time": run.deleted_time,
            "source_version": "",
            "lifecycle_stage": run.lifecycle_stage,
            "artifact_uri": artifact_uri,
            "experiment_id": exp_id,
        }])
        _insert(cursor, self._t_param, [{"key": k, "value": v, "run_uuid": run.run_id} for k, v in run.params.items()])
        _insert(cursor, self._t_tag, [{"key": k, "value": v, "run_uuid": run.run_id} for k, v in tags.items()])

    def _insert_inputs(self, cursor: sqlite3.Cursor, run: Run, exp_id: int) -> None:
        for ds in run.inputs:
            row = cursor.execute(
                f"SELECT dataset_uuid FROM {self._t_dataset.name} WHERE experiment_id = ? AND name = ? AND digest = ?",
                (exp_id, ds.name, ds.digest),
            ).fetchone()
            if row is not None:
                dataset_uuid = row[0]
            else:
                dataset_uuid = uuid.uuid4().hex
                _insert(cursor, self._t_dataset, [{
                    "dataset_uuid": dataset_uuid,
                    "experiment_id": exp_id,
                    "name": ds.name,
                    "digest": ds.digest,
                    "dataset_source_type": ds.source_type,
                    "dataset_source": ds.source,
                    "dataset_schema": ds.schema,
                    "dataset_profile": ds.profile,
                }])
            input_uuid = uuid.uuid4().hex
            _insert(cursor, self._t_input, [{
                "input_uuid": input_uuid,
                "source_type": "DATASET",
                "source_id": dataset_uuid,
                "destination_type": "RUN",
                "destination_id": run.run_id,
                "step": 0,
            }])
            _insert(cursor, self._t_input_tag,
                    [{"input_uuid": input_uuid, "name": k, "value": v} for k, v in ds.tags.items()])


def _insert(cursor: sqlite3.Cursor, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT rows (dicts with the same keys) into one of MLflow's tables."""
    if not rows:
        return
    columns = list(rows[0])
    unknown = [c for c in columns if c not in table.c]
    if unknown:  # a column MLflow's table does not have: a bug here, not bad input
        raise RuntimeError(f"{table.name} has no column {unknown[0]!r}")
    cursor.executemany(
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [tuple(row[c] for c in columns) for row in rows],
    )


def sqlite_state_dir(db_path: Path) -> Path:
    """Where transfers into the database at db_path keep their id map and ledger."""
    return Path(str(db_path) + ".trackport")


def _create_database(path: Path, artifact_root: str) -> None:
    """A new MLflow database, made under a temporary name and renamed into place once
    MLflow has built its whole schema: a transfer killed meanwhile leaves no half-made
    database for the next run to choke on."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for stale in path.parent.glob(f".{path.name}.creating-*"):
        stale.unlink(missing_ok=True)
    temp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    # A page size is fixed when a database is made. sqlite's default (4 KiB) splits pages
    # four times as often while the metrics table and its three indexes grow; 16 KiB
    # pages write metric points about a third faster, and MLflow reads them the same.
    with closing(sqlite3.connect(temp)) as con:
        con.execute(f"PRAGMA page_size = {_NEW_DATABASE_PAGE_SIZE}")
        con.execute("VACUUM")
    SqlAlchemyStore(f"sqlite:///{temp}", artifact_root).engine.dispose()
    os.replace(temp, path)


def _int_or_none(value: str) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < 2**63 else None
