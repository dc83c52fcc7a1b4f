"""Tracking servers as source or target: bad input gets one line, its exit code, and
nothing is written."""
from __future__ import annotations

import subprocess
import sys

import pytest

from servers import ADMIN_PASSWORD, ADMIN_USER, free_port
from test_cli import assert_one_line_error, trackport, tree


@pytest.fixture
def html_server(tmp_path):
    """Any HTTP server that is not MLflow: answers HTML 404 pages."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import time

    import requests

    for _ in range(100):
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


def test_unreachable_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = trackport("export", url, str(tmp_path / "bundle"))
    assert_one_line_error(result, 6, "cannot reach", url)
    assert not (tmp_path / "bundle").exists()


def test_unreachable_target(sample_bundle, tmp_path):
    result = trackport("import", str(sample_bundle), f"http://127.0.0.1:{free_port()}")
    assert_one_line_error(result, 6, "cannot reach")


def test_not_an_mlflow_server(html_server, sample_bundle, tmp_path):
    result = trackport("export", html_server, str(tmp_path / "bundle"))
    assert_one_line_error(result, 3, "not MLflow", "404")
    assert not (tmp_path / "bundle").exists()
    result = trackport("import", str(sample_bundle), html_server)
    assert_one_line_error(result, 3, "not MLflow")
    assert tree(tmp_path) == []


def test_missing_experiment_name(source_server, tmp_path):
    result = trackport("export", source_server.url, str(tmp_path / "bundle"), "--experiment", "no such experiment")
    assert_one_line_error(result, 3, "no such experiment")
    assert not (tmp_path / "bundle").exists()


def test_credentials_in_the_url_are_refused(source_server, tmp_path):
    url = source_server.url.replace("http://", "http://alice:hunter2@")
    result = trackport("export", url, str(tmp_path / "bundle"))
    assert_one_line_error(result, 3, "MLFLOW_TRACKING_USERNAME")
    assert "hunter2" not in result.stderr + result.stdout


def _runs_on(server_url: str) -> int:
    import requests

    experiments = requests.get(
        f"{server_url}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1000, "view_type": "ALL"}, auth=(ADMIN_USER, ADMIN_PASSWORD), timeout=30,
    ).json().get("experiments", [])
    runs = requests.post(
        f"{server_url}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [e["experiment_id"] for e in experiments], "run_view_type": "ALL", "max_results": 1000},
        auth=(ADMIN_USER, ADMIN_PASSWORD), timeout=30,
    ).json()
    return len(runs.get("runs", []))


@pytest.mark.parametrize(
    "env",
    [
        {"MLFLOW_TRACKING_USERNAME": ADMIN_USER, "MLFLOW_TRACKING_PASSWORD": "wrong-password-123"},
        {"MLFLOW_TRACKING_TOKEN": "a-token-for-another-workspace"},
        {},
    ],
    ids=["wrong password", "wrong token", "no credentials"],
)
def test_authentication_refused(auth_server, sample_bundle, env, monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    before = _runs_on(auth_server.url)
    result = trackport("import", str(sample_bundle), auth_server.url)
    assert_one_line_error(result, 5, "401")
    assert _runs_on(auth_server.url) == before
    for secret in env.values():
        if secret != ADMIN_USER:
            assert secret not in result.stdout + result.stderr


def test_databricks_token_for_the_wrong_workspace(auth_server, tmp_path, monkeypatch):
    # A Databricks workspace answers a foreign token with 401/403 like any MLflow server.
    monkeypatch.setenv("DATABRICKS_HOST", auth_server.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-not-for-this-workspace")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.databrickscfg
    result = trackport("export", "databricks", str(tmp_path / "bundle"))
    assert_one_line_error(result, 5, "DATABRICKS_TOKEN")
    assert "dapi-not-for-this-workspace" not in result.stdout + result.stderr
    assert not (tmp_path / "bundle").exists()


def test_databricks_without_configuration(tmp_path, monkeypatch):
    for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    result = trackport("export", "databricks://staging", str(tmp_path / "bundle"))
    assert_one_line_error(result, 3, "staging")
