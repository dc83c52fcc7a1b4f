"""Which kind of store a URI names, decided in one place, before anything is opened.

A URI with a scheme (`<scheme>://...`) must name a kind trackport knows; anything else is
refused with the list of known kinds, so `s3://bucket/prefix` or a typo never becomes a
local folder named `s3:`. Without a scheme it is a path (a `.db` file is a sqlite store),
so a folder named `databricks-backup` is a folder. Two URIs that name the same place
compare equal by `location_key`, which is how `copy S S` is refused before either side
is opened.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from trackport.errors import BadInputError

REST = "rest"  # an MLflow tracking server: http(s)://... or Databricks
SQLITE = "sqlite"  # a local MLflow sqlite store (also a tracking server's sqlite database)
DATABASE = "database"  # a tracking server's PostgreSQL / MySQL database (stores.mlflow_db, stores.serverdb)
PATH = "path"  # a local directory: a bundle or a legacy mlruns/ store
S3 = "s3"  # a bundle at s3://bucket/prefix

KNOWN = (
    "http(s)://tracking-server, databricks[://PROFILE], sqlite:///path/mlflow.db (or path.db),"
    " postgresql://... or mysql://... (a tracking server's database),"
    " file:///path or a local path (a bundle directory or an mlruns/ directory),"
    " s3://bucket/prefix (a bundle on S3)"
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_SERVER_DB_SCHEMES = ("postgresql", "postgres", "mysql", "mariadb", "mssql")
_LATER = {"gs": "bundles on Google Cloud Storage", "abfss": "bundles on Azure"}


@dataclass(frozen=True)
class Location:
    kind: str
    uri: str


def locate(uri: str) -> Location:
    """The kind of store uri names; BadInputError for an empty or unknown one."""
    if not uri or not uri.strip():
        raise BadInputError(f"no store given; expected {KNOWN}")
    if uri == "databricks":
        return Location(REST, uri)
    match = _SCHEME.match(uri)
    if match is None:
        if uri.startswith("sqlite:"):
            return Location(SQLITE, uri)
        return Location(SQLITE if uri.endswith(".db") else PATH, uri)
    scheme = match.group(1).lower()
    if scheme in ("http", "https", "databricks"):
        return Location(REST, uri)
    if scheme == "sqlite":
        return Location(SQLITE, uri)
    if scheme == "file":
        return Location(PATH, uri)
    if scheme == "s3":
        return Location(S3, uri)
    if scheme.split("+", 1)[0] in _SERVER_DB_SCHEMES:
        return Location(DATABASE, uri)
    later = f" ({_LATER[scheme]} are not supported yet)" if scheme in _LATER else ""
    raise BadInputError(f"{_shown(uri)}: unknown kind of store {scheme!r}{later}; expected {KNOWN}")


def local_path(uri: str) -> Path:
    """The directory a PATH location names."""
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()


def location_key(uri: str) -> str:
    """What two URIs of the same store have in common, without opening either: the file or
    directory itself (device and inode once it exists, so links and other spellings of
    the path agree), a server's normalised URL. Extra query parameters (such as
    artifacts_destination=) do not make another store."""
    location = locate(uri)
    if location.kind in (SQLITE, PATH):
        if location.kind == SQLITE:
            from trackport.stores.sqlite.files import sqlite_path_from_uri

            path = sqlite_path_from_uri(uri)
        else:
            path = local_path(uri)
        try:
            st = os.stat(path)
            return f"file:{st.st_dev}:{st.st_ino}"
        except OSError:
            return f"file:{os.path.realpath(path)}"
    if uri == "databricks" or uri.startswith("databricks://"):
        return uri.rstrip("/")
    if location.kind == S3:
        return uri.split("?", 1)[0].rstrip("/")
    scheme, host, port, path = _server(uri)
    return f"{scheme}://{host}:{port}{path}"


def refuse_same_store(source: str, target: str) -> None:
    """One store as both source and target would read what it is writing. A server named
    by two host names (localhost, 127.0.0.1) is one server when the names resolve to a
    common address."""
    same = location_key(source) == location_key(target)
    if not same and locate(source).kind == locate(target).kind == REST and "://" in source and "://" in target:
        (s_scheme, s_host, s_port, s_path), (t_scheme, t_host, t_port, t_path) = _server(source), _server(target)
        same = (s_scheme, s_port, s_path) == (t_scheme, t_port, t_path) and bool(
            _addresses(s_host, s_port) & _addresses(t_host, t_port)
        )
    if same:
        raise BadInputError(
            f"{_shown(target)} is the source itself; give another target (a new sqlite file, bundle directory or server)"
        )


def _server(uri: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(uri.split("?", 1)[0])
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/")


def _addresses(host: str, port: int | None) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return set()


def _shown(uri: str) -> str:
    """A URI safe to show: no credentials, no query string (a database URL may carry them)."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.hostname or ""
    try:
        netloc += f":{parts.port}" if parts.port else ""
    except ValueError:
        pass
    return f"{parts.scheme}://{netloc}{parts.path}"
