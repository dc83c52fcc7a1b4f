"""The page `trackport runs compare --html` writes, opened in headless Chromium (Debian's
`chromium`, which .ci/run installs): no console error, no request leaving the machine, and
every plot rendered. Chromium is driven over its DevTools pipe (--remote-debugging-pipe:
JSON messages on file descriptors 3 and 4), so nothing beyond the standard library is
needed; its logs on stderr could not tell a console.error from a console.log. Without
chromium the tests fail: they never skip."""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_runs_compare import run_ids_by_name

from trackport.cli.main import cli

CHROMIUM = "chromium"
# WebGL (plotly's parallel coordinates) from the software renderer on a machine without a
# GPU: Chromium no longer falls back to it on its own.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--no-first-run")
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
TIMEOUT = 60  # seconds for any one step: generous for a loaded CI machine; a page takes about 2
RENDERED = """(() => {
  const figures = Array.from(document.querySelectorAll('div.plotly-graph-div'));
  return {
    figures: figures.length,
    rendered: figures.filter(f => f._fullLayout && f.querySelector('.plot-container.plotly .main-svg')).length,
    notices: Array.from(document.querySelectorAll('.notifier-note')).map(n => n.textContent),
    rowKeys: Array.from(document.querySelectorAll('table tr > th:first-child')).map(th => th.textContent),
  };
})()"""
SETTLED = "new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => done(true))))"


@dataclass(frozen=True)
class PageReport:
    errors: list[str]  # uncaught exceptions, console.error/assert calls, errors the browser logged
    requests: list[str]  # URLs the page asked for that are not on this machine
    state: dict  # RENDERED, once every expected figure rendered or the time ran out


class Chromium:
    """One headless browser, spoken to over the DevTools pipe."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="trackport-chromium-")
        to_browser, self._from_us = os.pipe()
        self._to_us, from_browser = os.pipe()
        # --remote-debugging-pipe reads fd 3 and writes fd 4: bash moves the browser's ends
        # there (from fds above 10, so neither is 3 or 4 already), with no preexec_fn.
        reading, writing = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser))
        os.close(to_browser)
        os.close(from_browser)
        command = [binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "about:blank"]
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{reading} 4>&{writing} {reading}<&- {writing}>&-', "bash", *command],
            pass_fds=(reading, writing), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(reading)
        os.close(writing)
        self._pending = b""
        self._last_id = 0
        self.events: list[dict] = []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._from_us, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read(time.monotonic() + TIMEOUT)
            if answer.get("id") == self._last_id:
                assert "error" not in answer, (method, answer["error"])
                return answer["result"]
            self.events.append(answer)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._to_us], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._to_us, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed its pipe (exit code {self.process.poll()})")
            self._pending += chunk
        message, self._pending = self._pending.split(b"\0", 1)
        return json.loads(message)

    def open(self, page: Path, figures: int) -> PageReport:
        """Load the page in a new tab and wait (up to TIMEOUT) until `figures` plotly figures rendered."""
        self.events = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable", session)
        self.send("Page.navigate", session, url=page.resolve().as_uri())
        deadline = time.monotonic() + TIMEOUT
        while not any(event.get("method") == "Page.loadEventFired" for event in self.events):
            self.events.append(self._read(deadline))
        state = self.evaluate(session, RENDERED)
        while state["rendered"] < figures and time.monotonic() < deadline:
            time.sleep(0.1)
            state = self.evaluate(session, RENDERED)
        self.evaluate(session, SETTLED)  # frames scheduled by the plots are drawn (and any error met)
        self.send("Target.closeTarget", targetId=target)
        return PageReport(_errors(self.events), _remote_requests(self.events), state)

    def evaluate(self, session: str, expression: str):
        result = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"]["value"]

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=10)
        except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._from_us)
            os.close(self._to_us)
            shutil.rmtree(self.profile, ignore_errors=True)


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append(f"{details['text']} {details.get('exception', {}).get('description', '')}".strip())
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            found.append(f"console.{params['type']}: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(f"{params['entry']['source']}: {params['entry']['text']}")
    return found


def _remote_requests(events: list[dict]) -> list[str]:
    urls = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return [url for url in urls if not url.startswith(LOCAL_SCHEMES)]


class _Links(HTMLParser):
    """Every src and href attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]


def remote_links(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return [link for link in parser.links if link.strip().lower().startswith(("http:", "https:", "//"))]


@pytest.fixture(scope="module")
def browser():
    binary = shutil.which(CHROMIUM)
    assert binary, "chromium is not installed: apt-get install chromium (.ci/run does)"
    chromium = Chromium(binary)
    yield chromium
    chromium.close()


def test_the_page_renders_every_plot_offline_without_errors(sample_sqlite, tmp_path, browser):
    ids = run_ids_by_name(sample_sqlite)
    page = tmp_path / "compare.html"
    result = CliRunner().invoke(
        cli, ["runs", "compare", sample_sqlite, ids["parent run"], ids["child"], ids["deleted run"], "--only-diff", "--html", str(page)]
    )
    assert result.exit_code == 0, result.output
    # Parallel coordinates, scatter, box, and the history of each of the 6 metrics the runs hold.
    expected = 3 + 6
    assert f"({expected} figures)" in result.stderr
    assert remote_links(page) == []
    report = browser.open(page, expected)
    assert report.errors == []
    assert report.requests == []
    assert report.state["figures"] == report.state["rendered"] == expected, report.state
    assert report.state["notices"] == []  # plotly's own notices: e.g. "WebGL is not supported"
    keys = report.state["rowKeys"]
    assert "lifecycle stage" in keys and "loss" in keys and "lr" in keys
    assert "experiment" not in keys and "status" not in keys  # the same in the three runs: --only-diff


def test_the_check_finds_an_error_a_request_and_a_missing_plot(tmp_path, browser):
    """The checks can fail: a page that throws, logs an error, reaches for the network and
    draws no plot is reported on every count."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<html><body><img src="http://127.0.0.1:9/pixel.png"><div class="plotly-graph-div"></div>'
        "<script>console.error('logged on purpose'); throw new Error('thrown on purpose');</script></body></html>"
    )
    report = browser.open(page, figures=0)  # nothing to wait for: it renders none
    assert any("thrown on purpose" in error for error in report.errors), report.errors
    assert any("logged on purpose" in error for error in report.errors), report.errors
    assert report.requests == ["http://127.0.0.1:9/pixel.png"]
    assert remote_links(page) == ["http://127.0.0.1:9/pixel.png"]
    assert report.state["figures"] == 1 and report.state["rendered"] == 0
