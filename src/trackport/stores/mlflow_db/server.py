"""A tracking server's PostgreSQL or MySQL database as a source, in read-only sessions."""
from __future__ import annotations

from typing import Any

from trackport.config import DEFAULT, TransferConfig
from trackport.errors import BadInputError
from trackport.stores.mlflow_db.source import MlflowDatabaseSource
from trackport.stores.mlflow_db.tables import import_sqlalchemy


class ServerDatabaseSource(MlflowDatabaseSource):
    """A tracking server's PostgreSQL or MySQL database, through SQLAlchemy core, in
    read-only sessions. The database driver (psycopg2, pymysql, ...) is the user's."""

    kind = "database"

    def __init__(
        self, uri: str, *, artifacts_destination: str | None = None, config: TransferConfig = DEFAULT
    ) -> None:
        sa = import_sqlalchemy()
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
        super().__init__(display, artifacts_destination=artifacts_destination, config=config)
        try:
            self._db  # noqa: B018 -- refuse a database that is unreachable or not MLflow's now
        except sa.exc.OperationalError as exc:
            engine.dispose()
            raise BadInputError(f"cannot read {display}: {str(exc.orig).strip().splitlines()[0]}") from None

    def _make_engine(self) -> Any:
        return self._engine
