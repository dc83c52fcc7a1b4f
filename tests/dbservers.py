"""Throwaway database servers for tests: a PostgreSQL cluster and a MariaDB server from
Debian's packages (`postgresql`, `mariadb-server`), started on free 127.0.0.1 ports with
their data and unix sockets under a temporary directory, as an unprivileged user when the
tests run as root (PostgreSQL refuses root), stopped and deleted at the end of the session.
Each test makes a database of its own (`create_database`). Neither touches a cluster the
packages may have started as a service (port 5432/3306, /var/run sockets)."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from servers import free_port

USER = "trackport"
PASSWORD = "Db-Pass-7f3e1a"  # a test secret: tests check it never reaches a message


def _run_as(preferred: str) -> str | None:
    """The user to run a server as: None (this one) unless this is root, then `preferred`
    (the package's own user) or nobody."""
    if os.geteuid() != 0:
        return None
    for name in (preferred, "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user to start a database server as")


def _own_dir(prefix: str, user: str | None) -> Path:
    # Not under pytest's tmp_path: /tmp/pytest-of-root is closed to other users.
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    return base


def _stop(process: subprocess.Popen | None, sig: int) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def _log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class DatabaseServer:
    """What both kinds share: a data directory, a process, a port."""

    name = ""

    def __init__(self) -> None:
        self.base: Path | None = None
        self.process: subprocess.Popen | None = None
        self.port = 0
        self._made = 0

    def url(self, database: str, *, password: str = PASSWORD, driver: str | None = None, port: int | None = None) -> str:
        raise NotImplementedError

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database of this server; its name."""
        self._made += 1
        name = f"{prefix}_{self._made}_{os.getpid()}"
        self._admin(f"CREATE DATABASE {name}")
        return name

    def _admin(self, sql: str) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float = 60) -> "DatabaseServer":
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                self._admin("SELECT 1")
                return self
            except Exception as exc:  # not accepting connections yet
                last = exc
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def log_tail(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM)
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None


def _pg_bin(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {tool} not found: apt-get install postgresql")
    return candidates[-1]


class PostgresCluster(DatabaseServer):
    """A PostgreSQL cluster of its own (initdb), password (scram) authentication over TCP."""

    name = "postgresql"

    def start(self) -> "PostgresCluster":
        self.user = _run_as("postgres")
        self.base = _own_dir("trackport-pg-", self.user)
        pwfile = self.base / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self.data = self.base / "data"
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth-local=trust",
             "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            user=self.user, check=True, capture_output=True, cwd=self.base,
        )
        self.port = free_port()
        log = open(self.base / "server.log", "ab")
        self.process = subprocess.Popen(
            [_pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.base),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200"],
            user=self.user, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.base,
        )
        log.close()
        return self

    def url(self, database: str, *, password: str = PASSWORD, driver: str | None = "psycopg", port: int | None = None) -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{USER}:{password}@127.0.0.1:{port or self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname=database,
                               autocommit=True, connect_timeout=5)

    def _admin(self, sql: str) -> None:
        with self.connect() as conn:
            conn.execute(sql)

    def log_tail(self) -> str:
        return _log_tail(self.base / "server.log")

    def stop(self) -> None:
        _stop(self.process, signal.SIGINT)  # fast shutdown: disconnect clients, then stop
        super().stop()


def _sbin(tool: str) -> str:
    """A MariaDB program: on PATH, or in /usr/sbin (not on a non-root user's PATH)."""
    for found in (shutil.which(tool), f"/usr/sbin/{tool}", f"/usr/bin/{tool}"):
        if found and os.access(found, os.X_OK):
            return found
    raise RuntimeError(f"MariaDB's {tool} not found: apt-get install mariadb-server")


class MariaDBServer(DatabaseServer):
    """A MariaDB server of its own (mariadb-install-db), utf8mb4 as Debian configures it;
    tests connect as a password user over TCP."""

    name = "mariadb"

    def start(self) -> "MariaDBServer":
        self.user = _run_as("mysql")
        self.base = _own_dir("trackport-mariadb-", self.user)
        self.data = self.base / "data"
        as_user = [f"--user={self.user}"] if self.user else []
        subprocess.run(
            [_sbin("mariadb-install-db"), "--no-defaults", f"--datadir={self.data}", "--auth-root-authentication-method=normal",
             "--skip-test-db", "--skip-name-resolve", *as_user],
            check=True, capture_output=True, cwd=self.base,
        )
        self.port = free_port()
        self.socket = self.base / "mysqld.sock"
        log = open(self.base / "server.log", "ab")
        self.process = subprocess.Popen(
            [_sbin("mariadbd"), "--no-defaults", f"--datadir={self.data}", f"--socket={self.socket}", f"--port={self.port}",
             "--bind-address=127.0.0.1", "--skip-name-resolve", f"--pid-file={self.base / 'mysqld.pid'}",
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci", "--skip-log-bin",
             "--innodb-flush-log-at-trx-commit=0", "--innodb-buffer-pool-size=64M", "--innodb-doublewrite=0",
             "--max-connections=300", *as_user],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.base,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 60) -> "MariaDBServer":
        self._connect_as_root_until_ready(timeout)
        return self

    def _connect_as_root_until_ready(self, timeout: float) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadb exited early:\n{self.log_tail()}")
            try:
                conn = pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True)
                break
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mariadb not ready after {timeout}s:\n{self.log_tail()}") from None
                time.sleep(0.2)
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
            cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%'")

    def url(self, database: str, *, password: str = PASSWORD, driver: str | None = "pymysql", port: int | None = None) -> str:
        scheme = f"mysql+{driver}" if driver else "mysql"
        return f"{scheme}://{USER}:{password}@127.0.0.1:{port or self.port}/{database}"

    def connect(self, database: str | None = None):
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, database=database,
                               autocommit=True, connect_timeout=5)

    def _admin(self, sql: str) -> None:
        conn = self.connect()
        with conn, conn.cursor() as cur:
            cur.execute(sql)

    def log_tail(self) -> str:
        return _log_tail(self.base / "server.log")
