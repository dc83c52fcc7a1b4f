"""Whether a tracking server is known to be using a sqlite database, before it is written.

A database a tracking server is using is not written while the server runs (unless the user
says it is stopped: --server-stopped): the server's writes would wait on trackport's commits
and fail as "database is locked", and what it shows could change under its users.

"Known" means seen on this machine through /proc (Linux), in a process that is an MLflow
tracking server: `mlflow server` or `mlflow ui` (as the `mlflow` script or `python -m
mlflow`), or MLflow's server application run by uvicorn, gunicorn or waitress (an argument
starting with `mlflow.server`). Such a process uses the database when

* its command line names it (`--backend-store-uri sqlite:///...`, `--backend-store-uri=...`;
  or, without that option, MLFLOW_BACKEND_STORE_URI from its environment where it can be
  read, else MLflow's default `sqlite:///mlflow.db`), a relative path resolved against its
  working directory (or, where that cannot be read, matched as the tail of the path); or
* it holds the database, its journal or write-ahead log open (`mlflow server` from its start,
  its app's worker from its first request: MLflow's connection pool keeps them open), for
  the processes whose open files this user may list.

Command lines are readable for every process, so a server run by another user is seen
through the first rule. Not seen: a server on another machine that shares the file (NFS),
one in another container, and programs that are not MLflow servers (a notebook holding the
store open): sqlite's locks keep their writes and trackport's apart.
"""
from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
_OPEN_NAMES = ("", "-journal", "-wal")
_SERVER_COMMANDS = ("server", "ui")
_BACKEND_OPTION = "--backend-store-uri"
_BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"
_DEFAULT_BACKEND = "sqlite:///mlflow.db"  # MLflow 3's default backend store


def servers_using(path: Path) -> list[str]:
    """'pid N (command line)' for each MLflow server process on this machine, other than
    this process, that is known to use the sqlite database at path (see the module's
    docstring); empty where there is no /proc."""
    try:
        target = os.stat(path)
        pids = [int(entry) for entry in os.listdir(PROC) if entry.isdigit()]
    except OSError:
        return []
    found = []
    for pid in pids:
        if pid == os.getpid():
            continue
        argv = _argv(pid)
        if not argv or not _is_mlflow_server(argv):
            continue
        if _names(pid, argv, path, target) or _holds_open(pid, path, target):
            found.append(f"pid {pid} ({_shown(argv)})")
    return found


def _argv(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:  # gone meanwhile, or hidden
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_mlflow_server(argv: list[str]) -> bool:
    if any(arg.startswith("mlflow.server") for arg in argv):  # the app under uvicorn, gunicorn, waitress
        return True
    for i, arg in enumerate(argv):
        script = os.path.basename(arg) == "mlflow"
        module = arg == "-m" and i + 1 < len(argv) and argv[i + 1] == "mlflow"
        if script or module:
            rest = [a for a in argv[i + (2 if module else 1):] if not a.startswith("-")]
            return bool(rest) and rest[0] in _SERVER_COMMANDS
    return False


def _backend_uri(pid: int, argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == _BACKEND_OPTION and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(_BACKEND_OPTION + "="):
            return arg.split("=", 1)[1]
    try:
        environ = (PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:  # another user's process
        environ = []
    for entry in environ:
        if entry.startswith(_BACKEND_ENV.encode() + b"="):
            return entry.split(b"=", 1)[1].decode(errors="replace")
    return _DEFAULT_BACKEND


def _names(pid: int, argv: list[str], path: Path, target: os.stat_result) -> bool:
    """Whether the server's backend store URI is the sqlite database at path."""
    uri = _backend_uri(pid, argv).split("?", 1)[0]
    if not uri.startswith("sqlite:///"):
        return False
    raw = uri[len("sqlite:///"):]
    if not raw:
        return False
    if not os.path.isabs(raw):
        try:
            cwd = os.readlink(PROC / str(pid) / "cwd")
        except OSError:  # another user's process: the tail of the path has to do
            rel = os.path.normpath(raw)
            return not rel.startswith("..") and str(path).endswith(os.sep + rel)
        raw = os.path.join(cwd, raw)
    try:
        return os.path.samestat(os.stat(raw), target)
    except OSError:
        return os.path.normpath(raw) == os.path.normpath(str(path))


def _holds_open(pid: int, path: Path, target: os.stat_result) -> bool:
    fd_dir = PROC / str(pid) / "fd"
    names = {path.name + suffix for suffix in _OPEN_NAMES}
    try:
        fds = os.listdir(fd_dir)
    except OSError:  # another user's process
        return False
    real_dir = os.path.dirname(os.path.realpath(path))
    for fd in fds:
        try:
            link = os.readlink(fd_dir / fd)
        except OSError:
            continue
        name = os.path.basename(link)
        if name == path.name:
            try:
                if os.path.samestat(os.stat(fd_dir / fd), target):
                    return True
            except OSError:
                continue
        elif name in names and os.path.dirname(link) == real_dir:  # its journal or write-ahead log
            return True
    return False


def _shown(argv: list[str]) -> str:
    text = " ".join(argv)
    return text if len(text) <= 160 else text[:157] + "..."
