"""MLflow's backend-store database read directly, without MLflow and without its server.

The reader is strictly read-only: sqlite files are opened with `mode=ro`, server databases
(PostgreSQL, MySQL) in read-only sessions, and nothing here ever creates a table, runs a
migration or takes a write lock, so it is safe on a live server's database. It reads only
MLflow's core tables (experiments, experiment_tags, runs, params, tags, metrics,
latest_metrics for --filter, datasets, inputs, input_tags) through SQLAlchemy core with
lightweight table constructs (no ORM, no MLflow models), so the same queries serve every
dialect and reserved words such as `key` are quoted per dialect.

Metric histories, the bulk of the data, are streamed into Arrow in batches of BATCH_ROWS:
from sqlite through ADBC (`adbc-driver-sqlite`, column-wise, no Python object per value)
when it is installed, otherwise through the sqlite3 module; from server databases key by
key through SQLAlchemy with server-side cursors.

Runs of a tracking server name their artifacts `mlflow-artifacts:/<path>`: only the server
knows where that is (its --artifacts-destination), so the URI says it:
`sqlite:///srv/mlflow.db?artifacts_destination=/srv/mlartifacts`.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ContextManager, Iterator
from urllib.parse import parse_qsl, unquote, urlencode, urlparse

import pyarrow as pa
import pyarrow.compute as pc

from trackport.domain import (
    ACTIVE,
    DELETED,
    METRIC_BATCH_ROWS as BATCH_ROWS,
    METRIC_SCHEMA,
    RUN_NAME_TAG,
    ArtifactFile,
    DatasetInput,
    Experiment,
    Run,
    rebatch,
)
from trackport.errors import BadInputError, UnitError
from trackport.stores._localfs import local_artifact_dir, open_local_artifact, walk_artifacts
from trackport.stores.base import Selection, SourceStore, StoreDescription
from trackport.stores.experiment_refs import pick_experiment

_IN_CHUNK = 500  # ids per IN (...) clause, well under every dialect's bound-parameter limit
ARTIFACTS_PARAM = "artifacts_destination"
SERVER_SCHEMES = ("postgresql", "postgres", "mysql", "mariadb", "mssql")
_MISSING_SQLALCHEMY = (
    "reading an MLflow database directly needs SQLAlchemy: pip install 'trackport[db]' "
    "(or 'trackport[local]')"
)
_REQUIRED_TABLES = {"experiments", "runs", "metrics", "alembic_version"}


def _sa() -> Any:
    try:
        import sqlalchemy
    except ImportError as exc:
        raise BadInputError(_MISSING_SQLALCHEMY) from exc
    return sqlalchemy


def _adbc_sqlite() -> Any | None:
    try:
        import adbc_driver_sqlite.dbapi as adbc
    except ImportError:
        return None
    return adbc


def _chunks(items: list, size: int = _IN_CHUNK) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ------------------------------------------------------------------------ URIs


def split_uri_options(uri: str) -> tuple[str, str | None]:
    """(uri without trackport's own query parameter, artifacts destination or None).
    Other query parameters (a server URL's sslmode=..., say) stay in the URI."""
    base, sep, query = uri.partition("?")
    if not sep:
        return uri, None
    pairs = parse_qsl(query, keep_blank_values=True)
    dest = [v for k, v in pairs if k == ARTIFACTS_PARAM]
    if not dest:
        return uri, None
    if not dest[-1]:
        raise BadInputError(f"{uri}: {ARTIFACTS_PARAM}= names no directory")
    rest = urlencode([(k, v) for k, v in pairs if k != ARTIFACTS_PARAM])
    return (f"{base}?{rest}" if rest else base), dest[-1]


def is_server_db_uri(uri: str) -> bool:
    scheme = uri.split(":", 1)[0].lower()
    return "://" in uri and scheme.split("+", 1)[0] in SERVER_SCHEMES


def _artifacts_root(dest: str | None) -> Path | None:
    if dest is None:
        return None
    parsed = urlparse(dest)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise BadInputError(
            f"{ARTIFACTS_PARAM}={dest}: only a local directory (or file:// URI) is supported; "
            "export through the tracking server for artifacts elsewhere"
        )
    return Path(dest).expanduser().absolute()


# ------------------------------------------------------------------------ tables


def _tables(sa: Any) -> dict[str, Any]:
    t = lambda name, *cols: sa.table(name, *(sa.column(c) for c in cols))  # noqa: E731
    return {
        "experiments": t(
            "experiments", "experiment_id", "name", "artifact_location", "lifecycle_stage",
            "creation_time", "last_update_time",
        ),
        "experiment_tags": t("experiment_tags", "experiment_id", "key", "value"),
        "runs": t(
            "runs", "run_uuid", "name", "user_id", "status", "start_time", "end_time",
            "lifecycle_stage", "artifact_uri", "experiment_id", "deleted_time",
        ),
        "params": t("params", "run_uuid", "key", "value"),
        "tags": t("tags", "run_uuid", "key", "value"),
        "metrics": t("metrics", "run_uuid", "key", "step", "timestamp", "value", "is_nan"),
        "latest_metrics": t("latest_metrics", "run_uuid", "key", "step", "timestamp", "value", "is_nan"),
        "datasets": t(
            "datasets", "dataset_uuid", "experiment_id", "name", "digest", "dataset_source_type",
            "dataset_source", "dataset_schema", "dataset_profile",
        ),
        "inputs": t("inputs", "input_uuid", "source_type", "source_id", "destination_type", "destination_id"),
        "input_tags": t("input_tags", "input_uuid", "name", "value"),
    }


# ------------------------------------------------------------------------ metric batches


def _rows_to_batch(rows: list, key: str | None = None) -> pa.RecordBatch:
    """DB rows (key, step, timestamp, value, is_nan), or (step, ...) with key given, as a
    METRIC_SCHEMA batch with NaN restored from is_nan."""
    cols = list(zip(*rows))
    if key is not None:
        cols.insert(0, [key] * len(rows))
    keys, steps, stamps, values, nans = cols
    return _to_batch(
        pa.array(keys, pa.string()), pa.array(steps, pa.int64()), pa.array(stamps, pa.int64()),
        pa.array(values, pa.float64()), pa.array(nans),
    )


def _to_batch(keys: pa.Array, steps: pa.Array, stamps: pa.Array, values: pa.Array, nans: pa.Array) -> pa.RecordBatch:
    if nans.type != pa.bool_():
        nans = nans.cast(pa.bool_())
    if values.type != pa.float64():
        values = values.cast(pa.float64())
    if pc.any(nans).as_py():
        values = pc.if_else(nans, pa.scalar(math.nan, pa.float64()), values)
    return pa.RecordBatch.from_arrays(
        [keys.cast(pa.string()), steps.cast(pa.int64()), stamps.cast(pa.int64()), values], schema=METRIC_SCHEMA
    )


_FULL_ORDER = [("key", "ascending"), ("step", "ascending"), ("timestamp", "ascending"), ("value", "ascending")]


def _ordered(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Batches of (key, step, timestamp, value, is_nan) that arrive ordered by (key, step)
    only, as METRIC_SCHEMA batches ordered by (key, step, timestamp, value).

    Ordering by (key, step) is what MLflow's index on (run_uuid, key, step) gives for free;
    the rare points that share a step are put in order here, by the stored value (a NaN
    is stored as 0) as MLflow's ORDER BY would. The last (key, step) group of each batch
    is held back until the next batch, which may continue it. Output comes in batches of
    BATCH_ROWS (rebatch), as the REST source yields them, so both give byte-identical
    bundles for runs of up to BATCH_ROWS points."""
    for batch in rebatch(_in_order(batches), BATCH_ROWS):
        yield _to_batch(*(batch.column(i) for i in range(5)))


def _in_order(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    pending: pa.Table | None = None
    for batch in batches:
        if not batch.num_rows:
            continue
        table = pa.Table.from_batches([batch])
        if pending is not None:
            table = pa.concat_tables([pending, table])
        keys, steps = table.column("key"), table.column("step")
        last_key, last_step = keys[-1], steps[-1]
        tail = pc.and_(pc.equal(keys, last_key), pc.equal(steps, last_step))
        cut = pc.index(tail, True).as_py()
        pending = table.slice(cut)
        if cut:
            yield _sorted(table.slice(0, cut))
    if pending is not None and pending.num_rows:
        yield _sorted(pending)


def _sorted(table: pa.Table) -> pa.Table:
    table = table.combine_chunks()
    n = table.num_rows
    if n > 1:
        k, s = table.column("key"), table.column("step")
        same = pc.and_(pc.equal(k.slice(1), k.slice(0, n - 1)), pc.equal(s.slice(1), s.slice(0, n - 1)))
        if pc.any(same).as_py():
            table = table.sort_by(_FULL_ORDER)
    return table


# ------------------------------------------------------------------------ the reader


@dataclass(frozen=True)
class _Database:
    sa: Any  # the sqlalchemy module
    engine: Any
    tables: dict[str, Any]
    has_inputs: bool
    has_deleted_time: bool

    @classmethod
    def inspect(cls, engine: Any, uri: str) -> _Database:
        sa = _sa()
        names = set(sa.inspect(engine).get_table_names())
        missing = _REQUIRED_TABLES - names
        if missing:
            raise BadInputError(f"{uri} is not an MLflow tracking database (no {', '.join(sorted(missing))} table)")
        run_columns = {c["name"] for c in sa.inspect(engine).get_columns("runs")}
        return cls(sa, engine, _tables(sa), {"datasets", "inputs", "input_tags"} <= names, "deleted_time" in run_columns)


class MlflowDatabaseSource(SourceStore):
    """An MLflow tracking database as a source: sqlite file or server database."""

    supports_filter = True
    kind = "database"

    def __init__(self, uri: str, *, artifacts_destination: str | None = None) -> None:
        self.uri = uri
        self._artifacts_root = _artifacts_root(artifacts_destination)
        if self._artifacts_root is not None and not self._artifacts_root.is_dir():
            raise BadInputError(
                f"{ARTIFACTS_PARAM}={artifacts_destination}: no such directory; give the directory the tracking"
                " server was started with (--artifacts-destination)"
            )
        self._artifacts_destination = artifacts_destination
        self._db_lock = threading.Lock()
        self._db_opened: _Database | None = None

    def _make_engine(self) -> Any:
        raise NotImplementedError

    @property
    def _db(self) -> _Database:
        """SQLAlchemy's engine and what the schema has, made on first use: a store opened
        only to be written (SqliteStore) never needs them, and importing SQLAlchemy and
        inspecting the schema take a third of a second."""
        with self._db_lock:
            if self._db_opened is None:
                self._db_opened = _Database.inspect(self._make_engine(), self.uri)
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
        e, r, et = db.tables["experiments"], db.tables["runs"], db.tables["experiment_tags"]
        with db.engine.connect() as conn:
            rows = conn.execute(sa.select(e).order_by(e.c.experiment_id)).all()
            wanted_ids: set[str] | None = None
            if selection.experiments:
                by_id = {str(row.experiment_id): row for row in rows}
                by_name = {row.name: row for row in rows}
                wanted_ids = {
                    str(pick_experiment(ref, by_id.get, by_name.get, self.uri).experiment_id)
                    for ref in selection.experiments
                }
            if selection.run_ids:
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
            for row in conn.execute(sa.select(et.c.experiment_id, et.c.key, et.c.value)):
                tags.setdefault(str(row.experiment_id), {})[row.key] = row.value
        for row in selected:
            yield Experiment(
                experiment_id=str(row.experiment_id),
                name=row.name,
                lifecycle_stage=row.lifecycle_stage or ACTIVE,
                artifact_location=row.artifact_location,
                creation_time=row.creation_time,
                last_update_time=row.last_update_time,
                tags=tags.get(str(row.experiment_id), {}),
            )

    # ---------------------------------------------------------------- runs

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
        q = q.order_by(sa.func.coalesce(r.c.start_time, 0), r.c.run_uuid)
        if selection.filter:
            self._filter([], selection.filter)  # a bad filter is refused even without runs
        with db.engine.connect() as conn:
            run_rows = conn.execute(q).all()
        for chunk in _chunks(run_rows):
            runs = list(self._runs_from_rows(chunk))
            if selection.filter:
                runs = self._filter(runs, selection.filter)
            yield from runs

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
                    .order_by(d.c.name, d.c.digest, inp.c.input_uuid)
                )
                input_rows = conn.execute(q).all()
                for chunk in _chunks([row.input_uuid for row in input_rows]):
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

    def _filter(self, runs: list[Run], filter_string: str) -> list[Run]:
        """MLflow's own search semantics, evaluated on the runs read here (MLflow's
        SearchUtils, the same code its file store searches with)."""
        try:
            from mlflow.entities import (
                Dataset, DatasetInput as MlDatasetInput, InputTag, Metric, Param, RunData, RunInfo,
                RunInputs, RunTag,
            )
            from mlflow.entities import Run as MlRun
            from mlflow.exceptions import MlflowException
            from mlflow.utils.search_utils import SearchUtils
        except ImportError as exc:
            raise BadInputError("--filter needs MLflow's search parser: pip install 'trackport[local]'") from exc
        db = self._db
        sa = db.sa
        lm = db.tables["latest_metrics"]
        if not runs:
            try:
                SearchUtils.parse_search_filter(filter_string)
            except MlflowException as exc:
                raise BadInputError(f"--filter {filter_string!r}: {exc.message.splitlines()[0]}") from None
            return []
        latest: dict[str, list] = {r.run_id: [] for r in runs}
        with db.engine.connect() as conn:
            q = sa.select(lm.c.run_uuid, lm.c.key, lm.c.value, lm.c.timestamp, lm.c.step, lm.c.is_nan).where(
                lm.c.run_uuid.in_(list(latest))
            )
            for row in conn.execute(q):
                value = math.nan if row.is_nan else row.value
                latest[row.run_uuid].append(Metric(row.key, value, row.timestamp, row.step))
        by_id: dict[str, Run] = {}
        entities = []
        for run in runs:
            by_id[run.run_id] = run
            info = RunInfo(
                run_id=run.run_id, experiment_id=run.experiment_id, user_id=run.user_id, status=run.status,
                start_time=run.start_time, end_time=run.end_time, lifecycle_stage=run.lifecycle_stage,
                artifact_uri=run.artifact_uri, run_name=run.run_name,
            )
            data = RunData(
                metrics=latest[run.run_id],
                params=[Param(k, v) for k, v in run.params.items()],
                tags=[RunTag(k, v) for k, v in run.tags.items()],
            )
            run_inputs = RunInputs(
                dataset_inputs=[
                    MlDatasetInput(
                        Dataset(i.name, i.digest, i.source_type, i.source, i.schema, i.profile),
                        [InputTag(k, v) for k, v in i.tags.items()],
                    )
                    for i in run.inputs
                ]
            )
            entities.append(MlRun(info, data, run_inputs))
        try:
            matched = SearchUtils.filter(entities, filter_string)
        except MlflowException as exc:
            raise BadInputError(f"--filter {filter_string!r}: {exc.message.splitlines()[0]}") from None
        return [by_id[m.info.run_id] for m in matched]

    # ---------------------------------------------------------------- metrics

    def iter_metric_batches(self, run: Run) -> Iterator[pa.RecordBatch]:
        """Key by key (the keys sorted here, by code point, whatever the database's
        collation), each key's points through the (run_uuid, key, step) index."""
        db = self._db
        sa = db.sa
        m = db.tables["metrics"]
        with db.engine.connect() as conn:
            keys = sorted(
                row[0] for row in conn.execute(sa.select(m.c.key).where(m.c.run_uuid == run.run_id).distinct())
            )
        yield from rebatch(self._key_batches(run.run_id, keys), BATCH_ROWS)

    def _key_batches(self, run_id: str, keys: list[str]) -> Iterator[pa.RecordBatch]:
        db = self._db
        sa = db.sa
        m = db.tables["metrics"]
        for key in keys:
            q = (
                sa.select(m.c.step, m.c.timestamp, m.c.value, m.c.is_nan)
                .where(m.c.run_uuid == run_id, m.c.key == key)
                .order_by(m.c.step, m.c.timestamp, m.c.value)
            )
            with db.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, max_row_buffer=BATCH_ROWS).execute(q)
                while rows := result.fetchmany(BATCH_ROWS):
                    yield _rows_to_batch(rows, key)

    # ---------------------------------------------------------------- artifacts

    def _artifact_dir(self, run: Run) -> Path | None:
        uri = run.artifact_uri
        if uri and uri.startswith("mlflow-artifacts:"):
            if self._artifacts_root is None:
                raise UnitError(
                    f"run {run.run_id}: artifacts at {uri} are kept by the tracking server; add "
                    f"?{ARTIFACTS_PARAM}=<the server's --artifacts-destination directory> to the "
                    "source URI, or export through the server"
                )
            rel = unquote(urlparse(uri).path).lstrip("/")
            root = self._artifacts_root.resolve()
            full = (root / rel).resolve()
            if not full.is_relative_to(root):
                raise UnitError(f"run {run.run_id}: artifact URI {uri} points outside {root}")
            return full
        return local_artifact_dir(uri, run.run_id)

    def list_artifacts(self, run: Run) -> Iterator[ArtifactFile]:
        return walk_artifacts(self._artifact_dir(run))

    def missing_artifact_folder(self, run: Run) -> str | None:
        directory = self._artifact_dir(run)
        return str(directory) if directory is not None and not directory.is_dir() else None

    def open_artifact(self, run: Run, path: str) -> ContextManager[BinaryIO]:
        return open_local_artifact(self._artifact_dir(run), path, run.run_id)


# ------------------------------------------------------------------------ sqlite


def sqlite_identity(path: Path) -> str | None:
    """Which database is at path: the stamp trackport puts into each database it makes
    (sqlite's user_version, unused by MLflow), else its first experiment's creation time,
    which MLflow sets when it makes the database and nothing changes afterwards."""
    try:
        with closing(read_only_connection(path)) as con:
            stamp = con.execute("PRAGMA user_version").fetchone()[0]
            first = con.execute(
                "SELECT experiment_id, creation_time FROM experiments ORDER BY experiment_id LIMIT 1"
            ).fetchone()
    except sqlite3.Error:
        return None
    where = f"sqlite:{os.path.realpath(path)}"
    if stamp:
        return f"{where}#stamp-{stamp}"
    if first is not None and first[1] is not None:
        return f"{where}#experiment-{first[0]}-created-{first[1]}"
    return None


def read_only_uri(path: Path) -> str:
    """The URI of the sqlite file at path opened so that nothing can write it (`mode=ro`)."""
    return f"{path.as_uri()}?mode=ro"


def read_only_connection(path: Path, **options: Any) -> sqlite3.Connection:
    return sqlite3.connect(read_only_uri(path), uri=True, **options)


def looks_like_mlflow_db(path: Path) -> bool:
    """Checked with plain sqlite3, read-only: MLflow's store would create its tables in
    any database it is given."""
    try:
        con = read_only_connection(path)
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return False
    return _REQUIRED_TABLES <= names


class SqliteSource(MlflowDatabaseSource):
    """An MLflow sqlite database, opened read-only (sqlite `mode=ro`): the file is never
    written, created, migrated or locked for writing, so a live server's database is safe."""

    kind = "sqlite"

    def __init__(self, uri: str, path: Path, *, artifacts_destination: str | None = None) -> None:
        if importlib.util.find_spec("sqlalchemy") is None:  # imported on first read
            raise BadInputError(_MISSING_SQLALCHEMY)
        if not path.is_file():
            raise BadInputError(
                f"no MLflow sqlite store at {path}: check the path (sqlite:///relative or sqlite:////absolute)"
            )
        if not looks_like_mlflow_db(path):
            if Path(f"{path}-journal").exists():  # only a writer can roll it back
                raise BadInputError(
                    f"{path} has the journal of a write that never finished ({path.name}-journal), which a "
                    "read-only reader cannot roll back: start its MLflow server once (or run "
                    f"`sqlite3 {path} 'PRAGMA quick_check'`), then export again"
                )
            raise BadInputError(f"{path} is not an MLflow tracking database")
        self.path = path
        self._ro_uri = read_only_uri(path)
        super().__init__(uri, artifacts_destination=artifacts_destination)
        self._index_order = self._has_key_step_index()

    def _make_engine(self) -> Any:
        return _sa().create_engine(
            "sqlite://", creator=lambda: sqlite3.connect(self._ro_uri, uri=True, check_same_thread=False)
        )

    @functools.cached_property
    def identity(self) -> str | None:
        return sqlite_identity(self.path)

    def describe(self) -> StoreDescription:
        return StoreDescription(kind=self.kind, uri=self.uri, identity=self.identity)

    @functools.cached_property
    def _adbc(self) -> Any | None:
        return _adbc_sqlite()  # imported on first read: it brings pandas, half a second

    def _has_key_step_index(self) -> bool:
        with sqlite3.connect(self._ro_uri, uri=True) as con:
            for (sql,) in con.execute("SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name='metrics'"):
                text = (sql or "").replace('"', "").replace(" ", "").lower()
                if "(run_uuid,key,step" in text:
                    return True
        return False

    def iter_metric_batches(self, run: Run) -> Iterator[pa.RecordBatch]:
        # With MLflow's (run_uuid, key, step) index, ORDER BY key, step costs nothing; the
        # few points sharing a step are ordered in Arrow (see _ordered). Without it, the
        # database sorts.
        order = "key, step" if self._index_order else "key, step, timestamp, value"
        sql = f"SELECT key, step, timestamp, value, is_nan FROM metrics WHERE run_uuid = ? ORDER BY {order}"
        return _ordered(self._adbc_batches(sql, run.run_id) if self._adbc else self._sqlite3_batches(sql, run.run_id))

    def _adbc_batches(self, sql: str, run_id: str) -> Iterator[pa.RecordBatch]:
        con = self._adbc.connect(self._ro_uri)
        try:
            cur = con.cursor()
            try:
                cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
                cur.execute(sql, (run_id,))
                yield from cur.fetch_record_batch()
            finally:
                cur.close()
        finally:
            con.close()

    def _sqlite3_batches(self, sql: str, run_id: str) -> Iterator[pa.RecordBatch]:
        con = sqlite3.connect(self._ro_uri, uri=True)
        try:
            cur = con.execute(sql, (run_id,))
            while rows := cur.fetchmany(BATCH_ROWS):
                keys, steps, stamps, values, nans = zip(*rows)
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array(keys, pa.string()), pa.array(steps, pa.int64()), pa.array(stamps, pa.int64()),
                        pa.array(values, pa.float64()), pa.array(nans, pa.int64()),
                    ],
                    names=["key", "step", "timestamp", "value", "is_nan"],
                )
        finally:
            con.close()


# ------------------------------------------------------------------------ server databases


class ServerDatabaseSource(MlflowDatabaseSource):
    """A tracking server's PostgreSQL or MySQL database, through SQLAlchemy core, in
    read-only sessions. The database driver (psycopg2, pymysql, ...) is the user's."""

    kind = "database"

    def __init__(self, uri: str, *, artifacts_destination: str | None = None) -> None:
        sa = _sa()
        url = sa.engine.make_url(uri)
        if url.drivername in ("postgres",):
            url = url.set(drivername="postgresql")
        try:
            engine = sa.create_engine(url, pool_pre_ping=True)
        except ImportError as exc:
            raise BadInputError(f"{url.drivername}: the database driver is not installed ({exc})") from exc
        backend = engine.dialect.name

        @sa.event.listens_for(engine, "connect")
        def _read_only(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            try:
                if backend == "postgresql":
                    cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                elif backend in ("mysql", "mariadb"):
                    cur.execute("SET SESSION TRANSACTION READ ONLY")
            finally:
                cur.close()

        display = url.render_as_string(hide_password=True)
        self._engine = engine
        super().__init__(display, artifacts_destination=artifacts_destination)
        try:
            self._db  # noqa: B018 -- refuse a database that is unreachable or not MLflow's now
        except sa.exc.OperationalError as exc:
            engine.dispose()
            raise BadInputError(f"cannot read {display}: {str(exc.orig).strip().splitlines()[0]}") from None

    def _make_engine(self) -> Any:
        return self._engine
