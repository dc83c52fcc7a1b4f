"""Credentials and TLS settings for a tracking server, found the way MLflow clients find them.

Each setting is looked up first as TRACKPORT_SOURCE_<NAME> or TRACKPORT_TARGET_<NAME> (so a
copy between two servers can use two identities), then as <NAME> itself.
"""
from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from trackport.errors import BadInputError


@dataclass(frozen=True, repr=False)
class Connection:
    """Where a server is and how to talk to it. repr() never shows the secrets."""

    base_url: str  # scheme://host[:port][/prefix], no credentials, no trailing slash
    auth: requests.auth.AuthBase | None
    verify: bool | str
    cert: str | None
    is_databricks: bool

    def __repr__(self) -> str:
        return f"Connection({self.base_url!r})"


class _Bearer(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "Bearer(***)"


def _setting(name: str, side: str, environ: dict) -> str | None:
    return environ.get(f"TRACKPORT_{side.upper()}_{name}") or environ.get(name) or None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _mlflow_credentials_file(environ: dict) -> tuple[str | None, str | None]:
    path = Path(environ.get("MLFLOW_CREDENTIALS_PATH") or Path.home() / ".mlflow" / "credentials")
    parser = configparser.ConfigParser()
    if path.is_file():
        parser.read(path)
    section = parser["mlflow"] if parser.has_section("mlflow") else {}
    return section.get("mlflow_tracking_username"), section.get("mlflow_tracking_password")


def _databricks_profile(profile: str, environ: dict) -> dict[str, str]:
    path = Path(environ.get("DATABRICKS_CONFIG_FILE") or Path.home() / ".databrickscfg")
    parser = configparser.ConfigParser()
    if path.is_file():
        parser.read(path)
    if profile == "DEFAULT":
        return dict(parser.defaults())
    if not parser.has_section(profile):
        raise BadInputError(f"no profile [{profile}] in {path}: add it or set DATABRICKS_HOST and DATABRICKS_TOKEN")
    return dict(parser[profile])


def resolve_connection(uri: str, side: str, environ: dict | None = None) -> Connection:
    """The Connection for a tracking URI: http(s)://..., databricks or databricks://PROFILE."""
    env = dict(os.environ if environ is None else environ)
    verify: bool | str = True
    if _truthy(_setting("MLFLOW_TRACKING_INSECURE_TLS", side, env)):
        verify = False
    elif ca := _setting("MLFLOW_TRACKING_SERVER_CERT_PATH", side, env):
        verify = ca
    cert = _setting("MLFLOW_TRACKING_CLIENT_CERT_PATH", side, env)

    if uri == "databricks" or uri.startswith("databricks://"):
        profile = uri[len("databricks://") :] or _setting("DATABRICKS_CONFIG_PROFILE", side, env) or "DEFAULT"
        host = _setting("DATABRICKS_HOST", side, env)
        token = _setting("DATABRICKS_TOKEN", side, env)
        if not (host and token) or uri.startswith("databricks://"):
            config = _databricks_profile(profile, env)
            host, token = config.get("host") or host, config.get("token") or token
            if _truthy(config.get("insecure")):
                verify = False
        if not host or not token:
            raise BadInputError(
                f"no Databricks workspace for {uri!r}: set DATABRICKS_HOST and DATABRICKS_TOKEN or add a profile to ~/.databrickscfg"
            )
        if "://" not in host:
            host = "https://" + host
        return Connection(host.rstrip("/"), _Bearer(token), verify, cert, is_databricks=True)

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInputError(f"{uri!r} is not a tracking server URL: use http(s)://host[:port] or databricks[://PROFILE]")
    if parts.username or parts.password:
        raise BadInputError(
            "credentials in the URL are not accepted (they would end up in logs): "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
        )
    base_url = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
    username = _setting("MLFLOW_TRACKING_USERNAME", side, env)
    password = _setting("MLFLOW_TRACKING_PASSWORD", side, env)
    if not (username and password):
        file_user, file_password = _mlflow_credentials_file(env)
        username, password = username or file_user, password or file_password
    auth: requests.auth.AuthBase | None = None
    if username and password:  # Basic takes precedence over a token, as in MLflow's client
        auth = requests.auth.HTTPBasicAuth(username, password)
    elif token := _setting("MLFLOW_TRACKING_TOKEN", side, env):
        auth = _Bearer(token)
    return Connection(base_url, auth, verify, cert, is_databricks=False)
