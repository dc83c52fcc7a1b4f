"""One pooled HTTP session per server, retries through urllib3, MLflow's errors mapped to
trackport's three kinds.

Transient failures (429, 5xx, timeouts, resets) are retried by urllib3's Retry with
exponential backoff and jitter, honouring Retry-After. Calls that are not idempotent
(creating a run) are retried only when the server cannot have acted (429, 503, refused
connections). 401/403 stop the transfer at once. No message ever carries credentials or a
URL's query string (presigned URLs hold signatures).
"""
from __future__ import annotations

import json
import os
from typing import Any, BinaryIO, Iterator
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from trackport.config import DEFAULT
from trackport.errors import AuthError, BadInputError, TransientError, UnitError, UnreachableError
from trackport.stores.rest.auth import Connection

API = "/api/2.0/mlflow"  # MLflow's tracking API
ARTIFACTS_API = "/api/2.0/mlflow-artifacts"  # the server's proxied artifact service
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
NOT_PROCESSED_STATUSES = frozenset({429, 503})


class RestError(UnitError):
    """MLflow answered with an error about this request (4xx with a JSON body)."""

    def __init__(self, message: str, status: int, error_code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class NotFoundError(RestError):
    pass


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _retry(idempotent: bool, attempts: int, connect: int | None = None) -> Retry:
    return Retry(
        total=attempts,
        connect=attempts if connect is None else connect,
        read=attempts if idempotent else 0,
        status=attempts,
        other=0,
        allowed_methods=None,  # every method: idempotence is decided by which session is used
        status_forcelist=RETRY_STATUSES if idempotent else NOT_PROCESSED_STATUSES,
        backoff_factor=_env_number("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 1),
        backoff_jitter=_env_number("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", 1.0),
        backoff_max=60,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


def _session(
    connection: Connection, idempotent: bool, pool_size: int, attempts: int, connect: int | None = None
) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(
        pool_connections=4, pool_maxsize=pool_size, max_retries=_retry(idempotent, attempts, connect)
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.auth = connection.auth
    session.verify = connection.verify
    session.cert = connection.cert
    session.trust_env = False  # proxies and .netrc from the environment would bypass our auth rules
    session.headers["User-Agent"] = "trackport"
    return session


def _where(url: str) -> str:
    """A URL safe to show: no query string, no credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"


class RestClient:
    def __init__(self, connection: Connection, *, pool_size: int = 32, retries: int = DEFAULT.retries) -> None:
        self.connection = connection
        self.base_url = connection.base_url
        self.timeout = _env_number("MLFLOW_HTTP_REQUEST_TIMEOUT", 120)
        # MLflow's own setting, which its users may have set already, wins over ours.
        attempts = int(_env_number("MLFLOW_HTTP_REQUEST_MAX_RETRIES", retries))
        self._idempotent = _session(connection, True, pool_size, attempts)
        self._once = _session(connection, False, pool_size, attempts)
        # The first call of a transfer tells at once whether the server is there at all:
        # a mistyped URL (refused connection, unknown host) should not cost minutes of
        # backoff. A server that answers, even with 429/503 or a dropped connection, is
        # there: those are retried like any other call.
        self._probe = _session(connection, True, 1, attempts, connect=1)

    def close(self) -> None:
        for session in (self._idempotent, self._once, self._probe):
            session.close()

    def probe(self, endpoint: str, params: dict) -> dict[str, Any]:
        """A GET for checking a server before a transfer: one retry when the connection
        cannot be made, the usual ones once the server answers."""
        response = self.request("GET", endpoint, params=params, session=self._probe)
        try:
            return response.json()
        except ValueError:
            raise self._not_mlflow(response) from None

    # -- requests ---------------------------------------------------------------------

    def call(
        self,
        method: str,
        endpoint: str,
        *,
        params: dict | None = None,
        body: dict | bytes | None = None,
        idempotent: bool = True,
    ) -> dict[str, Any]:
        """One MLflow API call; the parsed JSON answer. endpoint starts with /api/...; body
        is a dict or JSON already encoded."""
        data = None
        headers = {}
        if body is not None:
            # allow_nan=False: a bare NaN token is silently stored as 0 by MLflow's server;
            # callers must send "NaN" / "Infinity" strings.
            data = body if isinstance(body, bytes) else json.dumps(body, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        response = self.request(method, endpoint, params=params, data=data, headers=headers, idempotent=idempotent)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise self._not_mlflow(response) from None

    def pages(self, method: str, endpoint: str, request: dict, *, in_body: bool = True) -> Iterator[dict]:
        """Every page of a paged MLflow call, following next_page_token (a token seen
        twice ends the loop: a server bug must not become an endless transfer)."""
        request = dict(request)
        seen: set[str] = set()
        while True:
            if in_body:
                answer = self.call(method, endpoint, body=request)
            else:
                answer = self.call(method, endpoint, params=request)
            yield answer
            token = answer.get("next_page_token")
            if not token or token in seen:
                return
            seen.add(token)
            request["page_token"] = token

    def request(
        self,
        method: str,
        endpoint_or_url: str,
        *,
        params: dict | None = None,
        data: bytes | BinaryIO | None = None,
        headers: dict | None = None,
        stream: bool = False,
        idempotent: bool = True,
        authenticated: bool = True,
        session: requests.Session | None = None,
    ) -> requests.Response:
        """A raw request with errors mapped; 2xx responses only. A full URL (presigned
        upload) is sent without our credentials when authenticated is False."""
        url = endpoint_or_url if "://" in endpoint_or_url else self.base_url + endpoint_or_url
        session = session or (self._idempotent if idempotent else self._once)
        try:
            response = session.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                stream=stream,
                timeout=self.timeout,
                auth=None if authenticated else _NoAuth(),
            )
        except requests.exceptions.SSLError as exc:
            raise UnreachableError(
                f"TLS handshake with {_where(url)} failed ({_first_line(exc)}); set MLFLOW_TRACKING_SERVER_CERT_PATH "
                "to its CA bundle, or MLFLOW_TRACKING_INSECURE_TLS=true to skip verification"
            ) from None
        except requests.exceptions.Timeout:
            raise TransientError(f"{method} {_where(url)} timed out after retries") from None
        except requests.exceptions.ConnectionError as exc:
            raise UnreachableError(
                f"cannot reach {_where(url)} ({_reason(exc)}); check the URL and that the server is running"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise TransientError(f"{method} {_where(url)} failed: {_first_line(exc)}") from None
        if response.status_code < 400:
            return response
        raise self._error(method, url, response)

    # -- errors ---------------------------------------------------------------------------

    def _error(self, method: str, url: str, response: requests.Response) -> Exception:
        status = response.status_code
        if status in (401, 403):
            hint = (
                "check DATABRICKS_TOKEN or the profile in ~/.databrickscfg (is the token for this workspace?)"
                if self.connection.is_databricks
                else "check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
            )
            word = "authentication" if status == 401 else "permission"
            return AuthError(f"{_where(self.base_url)} refused {word} (HTTP {status}) for {method} {urlsplit(url).path}; {hint}")
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or "error_code" not in payload and "message" not in payload:
            if status >= 500:
                return TransientError(f"{method} {_where(url)} failed with HTTP {status} after retries")
            return self._not_mlflow(response)
        code = payload.get("error_code")
        message = f"{code}: {payload.get('message', '')}".strip() if code else str(payload.get("message"))
        if status >= 500:
            return TransientError(f"{method} {urlsplit(url).path} failed with HTTP {status} after retries: {message}")
        error_type = NotFoundError if status == 404 else RestError
        return error_type(message, status, code)

    def _not_mlflow(self, response: requests.Response) -> BadInputError:
        kind = response.headers.get("Content-Type", "no content type").split(";")[0]
        return BadInputError(
            f"{_where(response.url)} answered HTTP {response.status_code} ({kind}), not MLflow's JSON API; "
            f"is {_where(self.base_url)} an MLflow tracking server?"
        )


class _NoAuth(requests.auth.AuthBase):
    """Presigned URLs carry their own authorization; ours must not leak to another host."""

    def __call__(self, request):
        request.headers.pop("Authorization", None)
        return request


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _reason(exc: requests.exceptions.ConnectionError) -> str:
    """The root cause of a connection failure, without the URL (which may carry a query)."""
    cause: BaseException | None = exc
    while cause is not None and cause.__cause__ is not None and cause is not cause.__cause__:
        cause = cause.__cause__
    text = str(exc)
    for phrase in ("Connection refused", "Name or service not known", "Temporary failure in name resolution",
                   "Connection reset", "Max retries exceeded", "timed out", "No route to host"):
        if phrase in text:
            return phrase.lower()
    return type(cause).__name__ if cause is not None else "connection failed"
