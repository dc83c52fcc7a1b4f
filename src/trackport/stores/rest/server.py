"""Connecting to a tracking server: check, before anything is written, that it is there,
that it is MLflow, and that it accepts our credentials; learn what it can do."""
from __future__ import annotations

from dataclasses import dataclass

from trackport.config import DEFAULT, TransferConfig
from trackport.errors import BadInputError
from trackport.stores.rest.auth import resolve_connection
from trackport.stores.rest.http import API, NotFoundError, RestClient, RestError


@dataclass(frozen=True)
class ServerInfo:
    mlflow_version: str | None
    store_type: str | None  # "SqlStore", "FileStore", or None (Databricks, older servers)
    multipart_uploads: bool
    # Which server this is: its Default experiment's creation time, set when its store
    # was made and never changed (a server reset at the same URL has another). None where
    # there is no experiment 0 (Databricks).
    identity: str | None = None

    @property
    def clamps_infinity(self) -> bool:
        """SQL-backed servers store ±inf as ±1.7976931348623157e308; FileStore keeps it."""
        return self.store_type != "FileStore"


def connect(uri: str, side: str, *, config: TransferConfig = DEFAULT) -> tuple[RestClient, ServerInfo]:
    """A client for the server at uri, checked with one quick call. side is "source" or
    "target" (it picks TRACKPORT_SOURCE_* / TRACKPORT_TARGET_* settings first). Its
    connection pool keeps two connections per worker of config."""
    client = RestClient(resolve_connection(uri, side), pool_size=2 * config.workers, retries=config.retries)
    try:
        answer = client.probe(f"{API}/experiments/search", {"max_results": 1})
        if not isinstance(answer, dict):
            raise BadInputError(f"{client.base_url} does not answer like an MLflow tracking server")
        return client, _server_info(client)
    except BaseException:
        client.close()
        raise


def _server_info(client: RestClient) -> ServerInfo:
    version = None
    try:
        version = client.request("GET", "/version").text.strip()[:40] or None
    except (NotFoundError, RestError, BadInputError):
        pass  # Databricks and some proxies do not serve /version
    try:
        info = client.call("GET", "/api/3.0/mlflow/server-info")
    except (NotFoundError, RestError, BadInputError):
        info = {}
    return ServerInfo(
        mlflow_version=version,
        store_type=info.get("store_type"),
        multipart_uploads=bool(info.get("multipart_uploads_enabled")),
        identity=_identity(client),
    )


def _identity(client: RestClient) -> str | None:
    try:
        answer = client.call("GET", f"{API}/experiments/get", params={"experiment_id": "0"})
    except (NotFoundError, RestError, BadInputError):
        return None
    created = (answer.get("experiment") or {}).get("creation_time")
    return f"{client.base_url}#experiment-0-created-{created}" if created is not None else None
