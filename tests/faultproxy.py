"""A small fault-injecting HTTP proxy for tests: put it in front of a real MLflow server
and a seeded share of requests is answered with 429 or 503 (with and without
Retry-After), delayed, or has its connection dropped without an answer, either before the
request reaches the server or after the server acted on it (the dangerous case for calls
that are not idempotent). Everything else is forwarded as it is, bodies streamed both ways.

Bounded: listens on 127.0.0.1 only and forwards to a 127.0.0.1 upstream only. Every
connection is closed after one exchange (`Connection: close`), so each request is one fresh
connection and a dropped one never poisons a pool.
"""
from __future__ import annotations

import collections
import http.client
import random
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

CHUNK = 64 * 1024
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
     "transfer-encoding", "upgrade", "host", "content-length"}
)
KINDS = ("forwarded", "status_429", "status_429_retry_after", "status_503", "status_503_retry_after",
         "delayed", "dropped_before", "dropped_after")


@dataclass
class Faults:
    """Shares (0..1) of requests that get each fault; they are drawn exclusively, except
    `delay`, which is drawn independently and applied before forwarding."""

    status_429: float = 0.0
    status_503: float = 0.0
    drop_before: float = 0.0
    drop_after: float = 0.0
    delay: float = 0.0
    delay_range: tuple[float, float] = (0.05, 0.3)
    retry_after_values: tuple[str, ...] = ("0", "1")
    # Faults that must happen, whatever the dice say: (path fragment, "429" | "503" |
    # "drop_before" | "drop_after"); each is given to the first request whose path holds the
    # fragment, in order (e.g. the first runs/create is answered by the server, then dropped).
    script: tuple[tuple[str, str], ...] = ()

    @property
    def failure_share(self) -> float:
        return self.status_429 + self.status_503 + self.drop_before + self.drop_after


class FaultProxy:
    def __init__(self, upstream_url: str, faults: Faults, rng: random.Random) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or parts.hostname != "127.0.0.1" or not parts.port:
            raise ValueError(f"the fault proxy forwards to http://127.0.0.1:<port> only, not {upstream_url!r}")
        self.upstream = (parts.hostname, parts.port)
        self.faults = faults
        self._rng = rng
        self._rng_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._script = list(faults.script)
        self.requests = 0
        self.paths: collections.Counter[tuple[str, str]] = collections.Counter()  # (method, path) -> requests
        self.enabled = True  # switch faults off (e.g. while a test reads the target directly)
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="faultproxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def script_left(self) -> list[tuple[str, str]]:
        """Scripted faults no request has taken yet."""
        return list(self._script)

    @property
    def injected(self) -> int:
        """Requests answered with a failure (429, 503, dropped), delays not counted."""
        c = self.counts
        return (c["status_429"] + c["status_429_retry_after"] + c["status_503"] + c["status_503_retry_after"]
                + c["dropped_before"] + c["dropped_after"])

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_to(self, prefix: str, method: str | None = None) -> int:
        """Requests whose path (query left out) starts with prefix (and of that method)."""
        with self._count_lock:
            return sum(n for (m, p), n in self.paths.items() if p.startswith(prefix) and method in (None, m))

    def reset_paths(self) -> None:
        with self._count_lock:
            self.paths.clear()

    # -- used by the handler ----------------------------------------------------------

    def _count(self, kind: str) -> None:
        with self._count_lock:
            self.counts[kind] += 1

    def _draw(self, path: str) -> tuple[str, float, str | None]:
        """(fault, delay seconds, Retry-After value or None) for one request."""
        f = self.faults
        with self._rng_lock:
            with self._count_lock:
                self.requests += 1
            if not self.enabled:
                return "forward", 0.0, None
            for i, (fragment, fault) in enumerate(self._script):
                if fragment in path:
                    del self._script[i]
                    return fault, 0.0, None
            delay = self._rng.uniform(*f.delay_range) if self._rng.random() < f.delay else 0.0
            x = self._rng.random()
            retry_after = self._rng.choice(f.retry_after_values) if self._rng.random() < 0.5 else None
        for kind, share in (("429", f.status_429), ("503", f.status_503),
                            ("drop_before", f.drop_before), ("drop_after", f.drop_after)):
            if x < share:
                return kind, delay, retry_after
            x -= share
        return "forward", delay, None


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _handle(self) -> None:
        self.close_connection = True
        proxy = self.owner
        with proxy._count_lock:
            proxy.paths[(self.command, self.path.split("?", 1)[0])] += 1
        fault, delay, retry_after = proxy._draw(self.path)
        if delay:
            proxy._count("delayed")
            time.sleep(delay)
        if fault == "drop_before":
            proxy._count("dropped_before")
            self._drop()
            return
        if fault in ("429", "503"):
            self._discard_body()
            status = int(fault)
            proxy._count(f"status_{fault}" + ("_retry_after" if retry_after is not None else ""))
            body = b'{"error_code": "%s", "message": "injected by the fault proxy"}' % (
                b"REQUEST_LIMIT_EXCEEDED" if status == 429 else b"TEMPORARILY_UNAVAILABLE")
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            return
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=300)
        try:
            response = self._forward(upstream)
            if fault == "drop_after":
                # The server acted; the client never hears of it.
                while response.read(CHUNK):
                    pass
                proxy._count("dropped_after")
                self._drop()
                return
            proxy._count("forwarded")
            self._relay(response)
        except (TimeoutError, ConnectionError, BrokenPipeError, http.client.HTTPException):
            self._drop()
        finally:
            upstream.close()

    # -- request: client -> upstream -------------------------------------------------------

    def _forward(self, upstream: http.client.HTTPConnection) -> http.client.HTTPResponse:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = int(self.headers.get("Content-Length") or 0)
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        upstream.putheader("Host", "%s:%d" % self.owner.upstream)
        for key, value in self.headers.items():
            if key.lower() not in HOP_BY_HOP:
                upstream.putheader(key, value)
        if chunked:
            upstream.putheader("Transfer-Encoding", "chunked")
        elif length or self.command in ("POST", "PUT", "PATCH"):
            upstream.putheader("Content-Length", str(length))
        upstream.putheader("Connection", "close")
        upstream.endheaders()
        if chunked:
            for piece in self._read_chunked():
                upstream.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            upstream.send(b"0\r\n\r\n")
        else:
            left = length
            while left > 0:
                piece = self.rfile.read(min(CHUNK, left))
                if not piece:
                    raise ConnectionError("client closed mid-body")
                upstream.send(piece)
                left -= len(piece)
        return upstream.getresponse()

    def _read_chunked(self):
        while True:
            size_line = self.rfile.readline(1024)
            if not size_line:
                raise ConnectionError("client closed mid-body")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            left = size
            while left > 0:
                piece = self.rfile.read(min(CHUNK, left))
                if not piece:
                    raise ConnectionError("client closed mid-body")
                left -= len(piece)
                yield piece
            self.rfile.readline(16)  # CRLF after the chunk

    def _discard_body(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            for _ in self._read_chunked():
                pass
            return
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            piece = self.rfile.read(min(CHUNK, left))
            if not piece:
                return
            left -= len(piece)

    # -- response: upstream -> client ------------------------------------------------------

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        length = response.getheader("Content-Length")
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        no_body = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        chunked = length is None and not no_body
        if length is not None:
            self.send_header("Content-Length", length)
        elif chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        if no_body:
            return
        while piece := response.read(CHUNK):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop(self) -> None:
        """Close the client's connection without a word."""
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.connection.close()


# -- checking what a transfer left in a server -------------------------------------------------

SOURCE_RUN_ID_TAG = "trackport.source.run_id"
COMPLETE_TAG = "trackport.complete"


def check_server_copies(url: str, source_run_ids: set[str]) -> tuple[dict[str, str], int]:
    """Read every run of the server at url with MLflow's own client and check that each
    source run has exactly one complete copy, that no run lacks the provenance tag, and
    that no incomplete copy is visible as an active run. Returns ({source id: target id},
    the number of incomplete copies left deleted, i.e. partial copies that were replaced)."""
    from collections import Counter

    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    strangers = [r.info.run_id for r in runs if SOURCE_RUN_ID_TAG not in r.data.tags]
    assert strangers == [], f"runs without the provenance tag: {strangers}"
    complete = [r for r in runs if r.data.tags.get(COMPLETE_TAG) == "true"]
    partial = [r for r in runs if r.data.tags.get(COMPLETE_TAG) != "true"]
    visible = [(r.info.run_id, r.data.tags[SOURCE_RUN_ID_TAG]) for r in partial if r.info.lifecycle_stage == "active"]
    assert visible == [], f"partial copies visible as active runs: {visible}"
    counts = Counter(r.data.tags[SOURCE_RUN_ID_TAG] for r in complete)
    duplicates = {k: n for k, n in counts.items() if n > 1}
    assert duplicates == {}, f"source runs with more than one complete copy: {duplicates}"
    assert set(counts) == set(source_run_ids), (
        f"missing: {set(source_run_ids) - set(counts)}, unexpected: {set(counts) - set(source_run_ids)}")
    return {r.data.tags[SOURCE_RUN_ID_TAG]: r.info.run_id for r in complete}, len(partial)
