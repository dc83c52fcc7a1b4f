"""Real `mlflow server` processes for tests: sqlite backend (or any backend store URI, e.g. a
PostgreSQL or MariaDB database of tests/dbservers.py), proxied artifacts, 127.0.0.1, random
free ports, stopped (with their children) when the test session ends."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
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
    ) -> None:
        self.workdir = workdir
        self.backend_store_uri = backend_store_uri  # default: sqlite:///<workdir>/mlflow.db
        self.artifacts_destination = artifacts_destination  # e.g. s3://bucket/prefix (with extra_env for its endpoint)
        self.workers = workers
        self.basic_auth = basic_auth
        self.extra_env = extra_env or {}
        self.fixed_port = port  # a server that replaces another at the same URL
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.fixed_port or free_port()
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **self.extra_env,
        }
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_store_uri or f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--artifacts-destination", self.artifacts_destination or str(self.workdir / "mlartifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
        ]
        if self.basic_auth:
            command += ["--app-name", "basic-auth"]
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

    def _refill(self, count: int) -> None:
        while len(self._booting) < count:
            server = MlflowServer(self.root / f"server-{len(self._started)}").start()
            self._started.append(server)
            self._booting.append(server)

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
