"""A local MLflow sqlite tracking store, as a source and as a sink.

MLflow's own store layer opens, creates and checks the database (so the schema is always
one MLflow knows); reads and writes then go through its SQLAlchemy tables directly, which
is the only way to keep run ids, experiment ids, times and deleted state, and is far
faster than the store's per-entity API for large metric histories.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, BinaryIO, ContextManager, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from trackport.domain import (
    ACTIVE,
    DELETED,
    METRIC_SCHEMA,
    RUN_NAME_TAG,
    ArtifactFile,
    Capabilities,
    DatasetInput,
    Experiment,
    Run,
    TargetExperimentId,
    TargetRunId,
)
from trackport.errors import BadInputError, UnitError
from trackport.stores._localfs import (
    COPY_CHUNK,
    local_artifact_dir,
    open_local_artifact,
    walk_artifacts,
)
from trackport.stores.base import (
    RunContent,
    RunWriteResult,
    Selection,
    SinkStore,
    SourceStore,
    StoreDescription,
)

BATCH_ROWS = 65_536
_IN_CHUNK = 500  # ids per IN (...) clause, well under sqlite's bound-parameter limit
_DEFAULT_WORKSPACE = "default"
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
    """sqlite:///rel/path.db, sqlite:////abs/path.db, or a plain path ending in .db."""
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


def _chunks(items: list, size: int = _IN_CHUNK) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _looks_like_mlflow_db(path: Path) -> bool:
    """Checked with plain sqlite3, read-only, because SqlAlchemyStore would happily
    create MLflow's tables in any database it is given."""
    import sqlite3

    try:
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return False
    return {"experiments", "runs", "metrics", "alembic_version"} <= names


class SqliteStore(SourceStore, SinkStore):
    supports_filter = True
    capabilities = Capabilities(
        keeps_run_ids=True,
        keeps_experiment_ids=True,
        keeps_times=True,
        keeps_users=True,
        keeps_deleted_state=True,
        keeps_infinity=True,
    )

    def __init__(self, uri: str, *, create: bool, artifact_root: str | None = None) -> None:
        self.uri = uri
        self.path = sqlite_path_from_uri(uri)
        if not create:
            if not self.path.is_file():
                raise BadInputError(
                    f"no MLflow sqlite store at {self.path}: check the path (sqlite:///relative "
                    "or sqlite:////absolute)"
                )
            if not _looks_like_mlflow_db(self.path):
                raise BadInputError(f"{self.path} is not an MLflow tracking database")
        mlflow = _mlflow()
        from mlflow.exceptions import MlflowException
        from mlflow.store.tracking.dbmodels import models
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        self._mlflow_version: str = mlflow.__version__
        # MLflow puts a `Default` experiment into every database it creates; in a database
        # we create, that experiment is ours to make equal to the source's.
        self._created_here = create and not self.path.exists()
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        root = artifact_root or str(self.path.parent / "mlartifacts")
        try:
            self._store = SqlAlchemyStore(f"sqlite:///{self.path}", root)
        except MlflowException as exc:
            raise BadInputError(
                f"cannot open {self.path} with MLflow {mlflow.__version__} ({exc.message.splitlines()[0]}); "
                f"if its schema is older, back it up and run: mlflow db upgrade sqlite:///{self.path}"
            ) from exc
        self._engine = self._store.engine
        self._t_exp = models.SqlExperiment.__table__
        self._t_exp_tag = models.SqlExperimentTag.__table__
        self._t_run = models.SqlRun.__table__
        self._t_tag = models.SqlTag.__table__
        self._t_param = models.SqlParam.__table__
        self._t_metric = models.SqlMetric.__table__
        self._t_latest = models.SqlLatestMetric.__table__
        self._t_dataset = models.SqlDataset.__table__
        self._t_input = models.SqlInput.__table__
        self._t_input_tag = models.SqlInputTag.__table__
        # sqlite has a single writer anyway; serializing here turns "database is locked"
        # errors into waiting.
        self._write_lock = threading.Lock()

    # ---------------------------------------------------------------- common

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="sqlite", uri=self.uri, mlflow_version=self._mlflow_version)

    def close(self) -> None:
        # The engine is cached by MLflow per URI and shared; disposing only drops pooled
        # connections, which is what we want at the end of a transfer.
        self._engine.dispose()

    # ---------------------------------------------------------------- source

    def _experiment_from_row(self, row: Any, tags: dict[str, str]) -> Experiment:
        return Experiment(
            experiment_id=str(row.experiment_id),
            name=row.name,
            lifecycle_stage=row.lifecycle_stage or ACTIVE,
            artifact_location=row.artifact_location,
            creation_time=row.creation_time,
            last_update_time=row.last_update_time,
            tags=tags,
        )

    def list_experiments(self, selection: Selection) -> Iterator[Experiment]:
        import sqlalchemy as sa

        e = self._t_exp
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(e).order_by(e.c.experiment_id)).all()
            wanted_ids: set[str] | None = None
            if selection.experiments:
                wanted_ids = set()
                by_id = {str(r.experiment_id): r for r in rows}
                by_name = {r.name: r for r in rows}
                for ref in selection.experiments:
                    row = by_name.get(ref) or by_id.get(ref)
                    if row is None:
                        raise BadInputError(f"experiment {ref!r} not found in {self.uri}")
                    wanted_ids.add(str(row.experiment_id))
            if selection.run_ids:
                r = self._t_run
                found: dict[str, str] = {}
                for chunk in _chunks(list(selection.run_ids)):
                    q = sa.select(r.c.run_uuid, r.c.experiment_id).where(r.c.run_uuid.in_(chunk))
                    found.update({row.run_uuid: str(row.experiment_id) for row in conn.execute(q)})
                missing = [rid for rid in selection.run_ids if rid not in found]
                if missing:
                    raise BadInputError(f"run(s) not found in {self.uri}: {', '.join(missing)}")
                run_exps = set(found.values())
                wanted_ids = run_exps if wanted_ids is None else wanted_ids & run_exps
            selected = [
                row
                for row in rows
                if (wanted_ids is None or str(row.experiment_id) in wanted_ids)
                and (selection.include_deleted or row.lifecycle_stage != DELETED)
            ]
            tags: dict[str, dict[str, str]] = {}
            t = self._t_exp_tag
            for row in conn.execute(sa.select(t.c.experiment_id, t.c.key, t.c.value)):
                tags.setdefault(str(row.experiment_id), {})[row.key] = row.value
        for row in selected:
            yield self._experiment_from_row(row, tags.get(str(row.experiment_id), {}))

    def iter_runs(self, experiment: Experiment, selection: Selection) -> Iterator[Run]:
        import sqlalchemy as sa

        r = self._t_run
        q = sa.select(r).where(r.c.experiment_id == int(experiment.experiment_id))
        if not selection.include_deleted:
            q = q.where(r.c.lifecycle_stage != DELETED)
        if selection.run_ids:
            q = q.where(r.c.run_uuid.in_(list(selection.run_ids)))
        q = q.order_by(sa.func.coalesce(r.c.start_time, 0), r.c.run_uuid)
        with self._engine.connect() as conn:
            run_rows = conn.execute(q).all()
        if selection.filter:
            matched = self._search_run_ids(experiment.experiment_id, selection)
            run_rows = [row for row in run_rows if row.run_uuid in matched]
        for chunk in _chunks(run_rows):
            yield from self._runs_from_rows(chunk)

    def _search_run_ids(self, experiment_id: str, selection: Selection) -> set[str]:
        """Run ids matching the filter, by MLflow's own search (same syntax and meaning
        as on a tracking server)."""
        from mlflow.entities import ViewType
        from mlflow.exceptions import MlflowException

        view = ViewType.ALL if selection.include_deleted else ViewType.ACTIVE_ONLY
        matched: set[str] = set()
        token = None
        while True:
            try:
                page = self._store.search_runs(
                    [experiment_id], selection.filter, view, max_results=50_000, page_token=token
                )
            except MlflowException as exc:
                raise BadInputError(f"--filter {selection.filter!r}: {exc.message.splitlines()[0]}") from None
            matched.update(run.info.run_id for run in page)
            token = page.token
            if not token:
                return matched

    def _runs_from_rows(self, rows: list) -> Iterator[Run]:
        import sqlalchemy as sa

        ids = [row.run_uuid for row in rows]
        params: dict[str, dict[str, str]] = {i: {} for i in ids}
        tags: dict[str, dict[str, str]] = {i: {} for i in ids}
        inputs: dict[str, list[DatasetInput]] = {i: [] for i in ids}
        p, t = self._t_param, self._t_tag
        d, inp, it = self._t_dataset, self._t_input, self._t_input_tag
        with self._engine.connect() as conn:
            for row in conn.execute(sa.select(p).where(p.c.run_uuid.in_(ids))):
                params[row.run_uuid][row.key] = row.value
            for row in conn.execute(sa.select(t).where(t.c.run_uuid.in_(ids))):
                tags[row.run_uuid][row.key] = row.value
            q = (
                sa.select(inp.c.input_uuid, inp.c.destination_id, d)
                .join(d, d.c.dataset_uuid == inp.c.source_id)
                .where(
                    inp.c.source_type == "DATASET",
                    inp.c.destination_type == "RUN",
                    inp.c.destination_id.in_(ids),
                )
                .order_by(d.c.name, d.c.digest, inp.c.input_uuid)
            )
            input_rows = conn.execute(q).all()
            input_tags: dict[str, dict[str, str]] = {}
            for chunk in _chunks([row.input_uuid for row in input_rows]):
                for row in conn.execute(sa.select(it).where(it.c.input_uuid.in_(chunk))):
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
                deleted_time=row.deleted_time,
                artifact_uri=row.artifact_uri,
                params=params[rid],
                tags=tags[rid],
                inputs=tuple(inputs[rid]),
            )

    def iter_metric_batches(self, run: Run) -> Iterator[pa.RecordBatch]:
        sql = (
            "SELECT key, step, timestamp, value, is_nan FROM metrics WHERE run_uuid = ? "
            "ORDER BY key, step, timestamp, value"
        )
        with self._engine.connect() as conn:
            result = conn.exec_driver_sql(sql, (run.run_id,))
            while True:
                rows = result.fetchmany(BATCH_ROWS)
                if not rows:
                    break
                keys, steps, stamps, values, nans = zip(*rows)
                value_arr = pa.array(values, pa.float64())
                nan_mask = pa.array(nans, pa.int64()).cast(pa.bool_())
                value_arr = pc.if_else(nan_mask, pa.scalar(math.nan, pa.float64()), value_arr)
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array(keys, pa.string()),
                        pa.array(steps, pa.int64()),
                        pa.array(stamps, pa.int64()),
                        value_arr,
                    ],
                    schema=METRIC_SCHEMA,
                )

    def list_artifacts(self, run: Run) -> Iterator[ArtifactFile]:
        return walk_artifacts(local_artifact_dir(run.artifact_uri, run.run_id))

    def open_artifact(self, run: Run, path: str) -> ContextManager[BinaryIO]:
        return open_local_artifact(local_artifact_dir(run.artifact_uri, run.run_id), path, run.run_id)

    # ---------------------------------------------------------------- sink

    def state_dir(self) -> Path:
        path = Path(str(self.path) + ".trackport")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put_experiment(self, experiment: Experiment) -> TargetExperimentId:
        import sqlalchemy as sa

        e, et = self._t_exp, self._t_exp_tag
        with self._write_lock, self._engine.begin() as conn:
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
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(r.c.run_uuid).where(r.c.run_uuid == run.run_id)).first()
        return TargetRunId(row.run_uuid) if row is not None else None

    def put_run(
        self, run: Run, target_experiment_id: TargetExperimentId, content: RunContent
    ) -> RunWriteResult:
        import sqlalchemy as sa
        from mlflow.utils.uri import append_to_uri_path

        e = self._t_exp
        exp_id = int(target_experiment_id)
        with self._engine.connect() as conn:
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

        # Artifacts and metrics are read from the source before the write lock is taken,
        # so slow sources do not hold up the other writers.
        with tempfile.TemporaryDirectory(dir=self.state_dir(), prefix="spool-") as spool_dir:
            try:
                self._copy_artifacts(content, artifact_dir, result)
                spool = Path(spool_dir) / "metrics.arrow"
                source_points = _spool_metrics(content.metric_batches(), spool)
                with self._write_lock, self._engine.begin() as conn:
                    self._insert_run(conn, run, exp_id, artifact_uri)
                    self._insert_metrics(conn, run.run_id, spool)
                    self._insert_inputs(conn, run, exp_id)
                    result.metric_points = conn.exec_driver_sql(
                        "SELECT COUNT(*) FROM metrics WHERE run_uuid = ?", (run.run_id,)
                    ).scalar_one()
            except BaseException:
                if artifact_dir is not None:
                    shutil.rmtree(artifact_dir.parent, ignore_errors=True)
                raise
        if result.metric_points < source_points:
            result.losses.append(
                f"{source_points - result.metric_points} exact duplicate metric points collapsed "
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

    def _insert_run(self, conn: Any, run: Run, exp_id: int, artifact_uri: str) -> None:
        import sqlalchemy as sa

        tags = dict(run.tags)
        name = run.run_name or tags.get(RUN_NAME_TAG, "")
        if name:
            tags[RUN_NAME_TAG] = name  # MLflow keeps runs.name and this tag equal
        conn.execute(
            sa.insert(self._t_run).values(
                run_uuid=run.run_id,
                name=name,
                source_type="UNKNOWN",
                source_name="",
                entry_point_name="",
                user_id=run.user_id,
                status=run.status,
                start_time=run.start_time,
                end_time=run.end_time,
                deleted_time=run.deleted_time,
                source_version="",
                lifecycle_stage=run.lifecycle_stage,
                artifact_uri=artifact_uri,
                experiment_id=exp_id,
            )
        )
        if run.params:
            conn.execute(
                sa.insert(self._t_param),
                [{"key": k, "value": v, "run_uuid": run.run_id} for k, v in run.params.items()],
            )
        if tags:
            conn.execute(
                sa.insert(self._t_tag),
                [{"key": k, "value": v, "run_uuid": run.run_id} for k, v in tags.items()],
            )

    def _insert_metrics(self, conn: Any, run_id: str, spool: Path) -> None:
        # OR IGNORE collapses exact duplicates, which the primary key forbids; MLflow's
        # SQL store drops them the same way.
        insert = (
            "INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
            "VALUES (?, ?, ?, ?, ?, ?)"
        )
        with pa.memory_map(str(spool)) as source:
            reader = pa.ipc.open_stream(source)
            for batch in reader:
                values = batch.column("value")
                is_nan = pc.fill_null(pc.is_nan(values), False)
                # MLflow stores NaN as 0 with is_nan set; infinities stay real (sqlite REAL).
                stored = pc.if_else(is_nan, pa.scalar(0.0, pa.float64()), values)
                rows = zip(
                    batch.column("key").to_pylist(),
                    stored.to_pylist(),
                    batch.column("timestamp").to_pylist(),
                    [run_id] * batch.num_rows,
                    batch.column("step").to_pylist(),
                    pc.cast(is_nan, pa.int8()).to_pylist(),
                )
                conn.exec_driver_sql(insert, list(rows))
        # The latest point per key, chosen by (step, timestamp, value) as MLflow does.
        conn.exec_driver_sql(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
            "SELECT key, value, timestamp, step, is_nan, run_uuid FROM ("
            "  SELECT *, ROW_NUMBER() OVER (PARTITION BY key "
            "    ORDER BY step DESC, timestamp DESC, value DESC) AS rn "
            "  FROM metrics WHERE run_uuid = ?) WHERE rn = 1",
            (run_id,),
        )

    def _insert_inputs(self, conn: Any, run: Run, exp_id: int) -> None:
        import sqlalchemy as sa

        d = self._t_dataset
        for ds in run.inputs:
            row = conn.execute(
                sa.select(d.c.dataset_uuid).where(
                    d.c.experiment_id == exp_id, d.c.name == ds.name, d.c.digest == ds.digest
                )
            ).first()
            if row is not None:
                dataset_uuid = row.dataset_uuid
            else:
                dataset_uuid = uuid.uuid4().hex
                conn.execute(
                    sa.insert(d).values(
                        dataset_uuid=dataset_uuid,
                        experiment_id=exp_id,
                        name=ds.name,
                        digest=ds.digest,
                        dataset_source_type=ds.source_type,
                        dataset_source=ds.source,
                        dataset_schema=ds.schema,
                        dataset_profile=ds.profile,
                    )
                )
            input_uuid = uuid.uuid4().hex
            conn.execute(
                sa.insert(self._t_input).values(
                    input_uuid=input_uuid,
                    source_type="DATASET",
                    source_id=dataset_uuid,
                    destination_type="RUN",
                    destination_id=run.run_id,
                    step=0,
                )
            )
            if ds.tags:
                conn.execute(
                    sa.insert(self._t_input_tag),
                    [{"input_uuid": input_uuid, "name": k, "value": v} for k, v in ds.tags.items()],
                )


def _int_or_none(value: str) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < 2**63 else None


def _spool_metrics(batches: Iterator[pa.RecordBatch], path: Path) -> int:
    """Write the source's metric batches to a local Arrow stream; return the point count."""
    count = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, METRIC_SCHEMA) as writer:
        for batch in batches:
            if batch.schema != METRIC_SCHEMA:
                batch = pa.RecordBatch.from_arrays(
                    [batch.column(f.name).cast(f.type) for f in METRIC_SCHEMA], schema=METRIC_SCHEMA
                )
            writer.write_batch(batch)
            count += batch.num_rows
    return count
