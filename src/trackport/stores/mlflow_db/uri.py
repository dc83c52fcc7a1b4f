"""What a database URI says besides the database: where the tracking server keeps artifacts.

Runs of a tracking server name their artifacts `mlflow-artifacts:/<path>`: only the server
knows where that is (its --artifacts-destination), so the URI says it:
`sqlite:///srv/mlflow.db?artifacts_destination=/srv/mlartifacts`.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlparse

from trackport.errors import BadInputError

ARTIFACTS_PARAM = "artifacts_destination"


def split_uri_options(uri: str) -> tuple[str, str | None]:
    """(uri without trackport's own query parameter, artifacts destination or None).
    Other query parameters (a server URL's sslmode=..., say) stay in the URI."""
    base, sep, query = uri.partition("?")
    if not sep:
        return uri, None
    pairs = parse_qsl(query, keep_blank_values=True)
    dest = [v for k, v in pairs if k == ARTIFACTS_PARAM]
    if not dest:
        return uri, None
    if not dest[-1]:
        raise BadInputError(f"{uri}: {ARTIFACTS_PARAM}= names no directory")
    rest = urlencode([(k, v) for k, v in pairs if k != ARTIFACTS_PARAM])
    return (f"{base}?{rest}" if rest else base), dest[-1]


def artifacts_root(dest: str | None) -> Path | None:
    """The local directory an artifacts destination names (None for none)."""
    if dest is None:
        return None
    parsed = urlparse(dest)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise BadInputError(
            f"{ARTIFACTS_PARAM}={dest}: only a local directory (or file:// URI) is supported; "
            "export through the tracking server for artifacts elsewhere"
        )
    return Path(dest).expanduser().absolute()
