"""Real MLflow tracking servers for tests: sqlite backend (or any backend store URI, e.g. a
PostgreSQL or MariaDB database of tests/dbservers.py), proxied artifacts, 127.0.0.1, random
free ports, stopped (with their children) when the test session ends.

A server is started one of two ways, both serving MLflow's own ASGI app under uvicorn:
- `mlflow server ...`, MLflow's launcher: a first process imports MLflow's CLI, creates or
  upgrades the database, and starts `python -m uvicorn mlflow.server.fastapi_app:app` with the
  server's settings in its environment;
- that uvicorn command and environment started directly (`uvicorn_launch`), on a copy of a
  database the launcher's own `initialize_backend_stores` made once for the session. This skips
  the launcher's process, half a boot's CPU (about 7 of 15 s), and the pool's servers start
  this way. test_servers_smoke.py checks that the command and environment are the ones
  `mlflow server` gives its uvicorn process, so the two cannot drift apart unseen."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing, contextmanager
from pathlib import Path

import requests

ADMIN_USER = "admin"
ADMIN_PASSWORD = "Trackport-Admin-Pass-1!"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(
        self,
        workdir: Path,
        *,
        basic_auth: bool = False,
        extra_env: dict | None = None,
        workers: int = 1,
        port: int | None = None,
        artifacts_destination: str | None = None,
        backend_store_uri: str | None = None,
        template_db: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.backend_store_uri = backend_store_uri  # default: sqlite:///<workdir>/mlflow.db
        self.artifacts_destination = artifacts_destination  # e.g. s3://bucket/prefix (with extra_env for its endpoint)
        self.workers = workers
        self.basic_auth = basic_auth
        self.extra_env = extra_env or {}
        self.fixed_port = port  # a server that replaces another at the same URL
        # A database made by `initialize_backend_stores`, copied as this server's: then the
        # server starts without MLflow's launcher (module docstring).
        self.template_db = template_db
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.fixed_port or free_port()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.extra_env}
        if self.direct:
            database = self.workdir / "mlflow.db"
            if not database.exists():
                copy_template_db(self.template_db, database)
            command, settings = self.uvicorn_launch()
            env.update(settings)
        else:
            command = self.cli_command()
        if self.basic_auth:
            env.update(
                MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
                MLFLOW_FLASK_SERVER_SECRET_KEY="trackport-tests-secret",
                MLFLOW_AUTH_CONFIG_PATH=str(self._auth_config()),
            )
        log = open(self.workdir / "server.log", "ab")
        self.process = subprocess.Popen(
            command, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def direct(self) -> bool:
        """Started without MLflow's launcher: only a plain server on a template's copy (the
        launcher bootstraps basic auth's admin, and creates other backends' schemas)."""
        return self.template_db is not None and not self.basic_auth and self.backend_store_uri is None

    @property
    def _backend(self) -> str:
        return self.backend_store_uri or f"sqlite:///{self.workdir / 'mlflow.db'}"

    @property
    def _destination(self) -> str:
        return self.artifacts_destination or str(self.workdir / "mlartifacts")

    def cli_command(self) -> list[str]:
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self._backend, "--artifacts-destination", self._destination,
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
        ]
        return command + (["--app-name", "basic-auth"] if self.basic_auth else [])

    def uvicorn_launch(self) -> tuple[list[str], dict[str, str]]:
        """The command and settings `mlflow server` (3.17, as cli_command starts it) gives the
        uvicorn process it starts (mlflow/server/__init__.py `_run_server`)."""
        import mlflow.server

        log_config = Path(mlflow.server.__file__).parent / "uvicorn_log_config.yaml"
        command = [
            sys.executable, "-m", "uvicorn", "--log-config", str(log_config),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
            "mlflow.server.fastapi_app:app",
        ]
        backend = self._backend
        return command, {
            "MLFLOW_SERVER_X_FRAME_OPTIONS": "SAMEORIGIN",
            "MLFLOW_ENABLE_WORKSPACES": "false",
            "MLFLOW_TRACKING_URI": backend,
            "MLFLOW_REGISTRY_URI": backend,
            "_MLFLOW_SERVER_FILE_STORE": backend,
            "_MLFLOW_SERVER_REGISTRY_STORE": backend,
            "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
            "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
            "_MLFLOW_SERVER_ARTIFACT_DESTINATION": self._destination,
            "MLFLOW_SERVER_SECRETS_CACHE_TTL": "60",
            "MLFLOW_SERVER_SECRETS_CACHE_MAX_SIZE": "1000",
            "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex,
            "_MLFLOW_IN_JOB_EXECUTOR": "false",
            "_MLFLOW_SGI_NAME": "uvicorn",
        }

    def _auth_config(self) -> Path:
        config = self.workdir / "basic_auth.ini"
        config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{self.workdir / 'basic_auth.db'}\n"
            f"admin_username = {ADMIN_USER}\n"
            f"admin_password = {ADMIN_PASSWORD}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        return config

    def wait_ready(self, timeout: float = 180) -> "MlflowServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        path = self.workdir / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)


def start_all(servers: list[MlflowServer]) -> list[MlflowServer]:
    """Start several servers at once (they boot in parallel) and wait for each."""
    for server in servers:
        server.start()
    try:
        for server in servers:
            server.wait_ready()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


class ServerPool:
    """Fresh, empty servers booted ahead of the tests that take them. A boot is about 10 s,
    nearly all of it imports on one core, so a server started when the previous one is
    taken boots on the other core while the tests in between run, and the next test that
    needs one waits only for what is left of its boot."""

    def __init__(self, root: Path, spare: int = 2) -> None:
        self.root = root
        self.spare = spare
        self._booting: list[MlflowServer] = []
        self._started: list[MlflowServer] = []
        root.mkdir(parents=True, exist_ok=True)
        self._template_path = root / "template.db"
        self._template = start_template_db(self._template_path)

    def take(self) -> MlflowServer:
        """A ready server no test has used; the caller stops it."""
        self._refill(self.spare + 1)
        server = self._booting.pop(0)
        self._refill(self.spare)
        try:
            return server.wait_ready()
        except BaseException:
            server.stop()
            raise

    @property
    def template_db(self) -> Path:
        """The database a direct server copies (made once, in the background, from the start)."""
        if self._template.wait() != 0:
            raise RuntimeError(f"initialize_backend_stores failed for {self._template_path}")
        return self._template_path

    def _refill(self, count: int) -> None:
        while len(self._booting) < count:
            server = MlflowServer(self.root / f"server-{len(self._started)}", template_db=self.template_db).start()
            self._started.append(server)
            self._booting.append(server)

    @contextmanager
    def taken(self, *names: str):
        """A server of the pool for each name (a module's servers), given back afterwards."""
        started = [self.take() for _ in names]
        try:
            yield dict(zip(names, started))
        finally:
            for server in started:
                self.give_back(server)

    def give_back(self, server: MlflowServer) -> None:
        """Stop a taken server without waiting for its shutdown (about 2 s): close waits."""
        if server.process is not None and server.process.poll() is None:
            try:
                os.killpg(server.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for server in self._started:
            server.stop()


_last_creation_ms = 0


def copy_template_db(template: Path, database: Path) -> None:
    """A copy of the template with a Default experiment created now, as a new server's is:
    trackport tells one server from another at the same URL by that creation time."""
    global _last_creation_ms
    _last_creation_ms = max(time.time_ns() // 1_000_000, _last_creation_ms + 1)
    shutil.copyfile(template, database)
    with closing(sqlite3.connect(database)) as db, db:
        db.execute(
            "UPDATE experiments SET creation_time = ?, last_update_time = ? WHERE experiment_id = 0",
            (_last_creation_ms, _last_creation_ms),
        )


def start_template_db(path: Path) -> subprocess.Popen:
    """Start making the database every direct server copies: what `mlflow server` makes of an
    empty sqlite file before its uvicorn starts (handlers.initialize_backend_stores)."""
    uri = f"sqlite:///{path}"
    code = (
        "import sys; from mlflow.server.handlers import initialize_backend_stores as init; "
        "init(sys.argv[1], sys.argv[1], 'mlflow-artifacts:/')"
    )
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen([sys.executable, "-c", code, uri], env=env, stdout=subprocess.DEVNULL)
