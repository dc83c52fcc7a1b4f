"""Shared fixtures: the sample stores, built once per test session with MLflow's own client."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from trackport.samples.sample_store import build_sample_store

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # lets MLflow's client read mlruns/ in tests


@pytest.fixture(autouse=True, scope="session")
def _trackport_home(tmp_path_factory):
    """Id maps of transfers into servers go to a temporary home, not the user's."""
    os.environ["TRACKPORT_HOME"] = str(tmp_path_factory.mktemp("trackport-home"))


@pytest.fixture(scope="session")
def sample_sqlite(tmp_path_factory) -> str:
    """URI of the sample sqlite store. Read it; never write into it."""
    return build_sample_store(tmp_path_factory.mktemp("sample-sqlite"), "sqlite")


@pytest.fixture(scope="session")
def sample_mlruns(tmp_path_factory) -> str:
    return build_sample_store(tmp_path_factory.mktemp("sample-mlruns"), "mlruns")


@pytest.fixture(scope="session")
def sample_bundle(tmp_path_factory, sample_sqlite) -> Path:
    """A complete bundle exported from the sample sqlite store. Copy it before damaging it."""
    from trackport.opening import open_bundle_sink, open_source
    from trackport.stores.base import Selection
    from trackport.transfer import transfer

    path = tmp_path_factory.mktemp("bundle") / "sample"
    with open_source(sample_sqlite) as source, open_bundle_sink(str(path)) as sink:
        summary = transfer(source, sink, Selection(include_deleted=True))
    assert summary.failed == 0, summary.failures
    return path


@pytest.fixture(scope="session")
def model_sample_sqlite(tmp_path_factory):
    """samples/model_store.py's logged models and registry in a sqlite store, built once
    (scikit-learn models logged by MLflow's client: slow). Read it through trackport only:
    never write into it, nor load its prompts with MLflow (that links them to the active
    experiment: a write)."""
    from trackport.samples.model_store import build_model_sample

    return build_model_sample(f"sqlite:///{tmp_path_factory.mktemp('origin') / 'mlflow.db'}")


@pytest.fixture
def bundle_copy(sample_bundle, tmp_path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(sample_bundle, target, symlinks=True)
    return target


# -- real MLflow tracking servers ------------------------------------------------------------

from servers import ADMIN_PASSWORD, ADMIN_USER, MlflowServer, ServerPool, start_all  # noqa: E402


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """moto in server mode (tests/s3server.py), shared by the session: tests make their own buckets."""
    from s3server import MotoServer

    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    """This process's boto3 pointed at moto, with its test credentials."""
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return moto_server


@pytest.fixture(scope="session")
def _servers(tmp_path_factory):
    """The session's shared servers, booted together: a source filled with the sample, an
    empty target, and a basic-auth server."""
    root = tmp_path_factory.mktemp("servers")
    servers = {
        "source": MlflowServer(root / "source"),
        "target": MlflowServer(root / "target"),
        "auth": MlflowServer(root / "auth", basic_auth=True),
    }
    start_all(list(servers.values()))
    build_sample_store(root / "unused", "server", tracking_uri=servers["source"].url)
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def source_server(_servers) -> MlflowServer:
    """A server holding the sample. Read it; never write into it."""
    return _servers["source"]


@pytest.fixture(scope="session")
def target_server(_servers) -> MlflowServer:
    """An initially empty server shared by the session: tests write under their own names."""
    return _servers["target"]


@pytest.fixture(scope="session")
def auth_server(_servers) -> MlflowServer:
    return _servers["auth"]


@pytest.fixture(scope="session")
def server_pool(tmp_path_factory):
    """Empty servers booted ahead of the tests that take them (servers.ServerPool)."""
    pool = ServerPool(tmp_path_factory.mktemp("server-pool"))
    yield pool
    pool.close()


@pytest.fixture
def fresh_server(server_pool):
    """A new, empty server of this test's own, from the pool (booted while earlier tests ran)."""
    server = server_pool.take()
    yield server
    server_pool.give_back(server)


@pytest.fixture
def auth_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)


# -- every kind of sink, for the contract suites -----------------------------------------------


@pytest.fixture(params=["sqlite", "bundle", "rest"])
def sink_uri(request, tmp_path) -> str:
    """A target of each kind a transfer can write: a new sqlite store, a new bundle, and the
    session's shared server (tests write under names of their own there)."""
    if request.param == "rest":
        return request.getfixturevalue("target_server").url
    return f"sqlite:///{tmp_path / 'target.db'}" if request.param == "sqlite" else str(tmp_path / "bundle")


def open_target(uri: str):
    """The sink at a sink_uri (a bundle is a plain path)."""
    from trackport.opening import open_bundle_sink, open_sink

    return open_bundle_sink(uri) if uri.startswith("/") else open_sink(uri)


# -- real database servers (tests/dbservers.py) -------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster of the session's own (Debian's `postgresql`), started on first
    use; tests make databases of their own in it (create_database)."""
    from dbservers import PostgresCluster

    server = PostgresCluster()
    try:
        server.start().wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mariadb_server():
    """A MariaDB server of the session's own (Debian's `mariadb-server`), started on first use."""
    from dbservers import MariaDBServer

    server = MariaDBServer()
    try:
        server.start().wait_ready()
        yield server
    finally:
        server.stop()
