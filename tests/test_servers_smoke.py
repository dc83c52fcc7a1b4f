"""The test servers themselves: up, filled, guarded."""
import os
from pathlib import Path

import requests

from servers import ADMIN_PASSWORD, ADMIN_USER, MlflowServer


def test_source_server_holds_the_sample(source_server):
    response = requests.post(
        f"{source_server.url}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": ["1", "2"], "run_view_type": "ALL", "max_results": 100},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["runs"]) == 6


def test_auth_server_refuses_without_credentials(auth_server):
    url = f"{auth_server.url}/api/2.0/mlflow/experiments/search"
    assert requests.get(url, params={"max_results": 1}, timeout=30).status_code == 401
    ok = requests.get(url, params={"max_results": 1}, auth=(ADMIN_USER, ADMIN_PASSWORD), timeout=30)
    assert ok.status_code == 200, ok.text


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _read_null_separated(path: Path) -> list[str]:
    return [item for item in path.read_bytes().decode().split("\0") if item]


def test_a_direct_server_gets_the_command_and_settings_mlflow_server_gives_its_uvicorn(target_server):
    """The pool's servers skip MLflow's launcher (servers.py): what they run must stay what
    `mlflow server` runs. The session's target was started by `mlflow server`."""
    assert not target_server.direct
    (child,) = _children(target_server.process.pid)
    command = _read_null_separated(Path(f"/proc/{child}/cmdline"))
    environ = dict(item.split("=", 1) for item in _read_null_separated(Path(f"/proc/{child}/environ")))
    launched_by_mlflow = {k: v for k, v in environ.items() if "MLFLOW" in k and os.environ.get(k) != v}
    launched_by_mlflow.pop("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", None)  # ours, given to both

    same = MlflowServer(target_server.workdir, template_db=Path("unused.db"))
    same.port = target_server.port
    direct_command, direct_settings = same.uvicorn_launch()
    assert command == direct_command
    assert len(launched_by_mlflow.pop("_MLFLOW_SERVER_BOOT_ID")) == 32
    direct_settings.pop("_MLFLOW_SERVER_BOOT_ID")
    assert launched_by_mlflow == direct_settings


def test_a_pool_server_starts_directly_and_serves(fresh_server):
    assert fresh_server.direct
    response = requests.post(f"{fresh_server.url}/api/2.0/mlflow/experiments/search", json={"max_results": 5}, timeout=30)
    assert response.status_code == 200, response.text
    assert [e["artifact_location"] for e in response.json()["experiments"]] == ["mlflow-artifacts:/0"]


def test_two_pool_servers_are_told_apart_as_two_new_servers_are(server_pool):
    """trackport knows a server by its Default experiment's creation time: copies of one
    template must not share it."""
    first, second = server_pool.take(), server_pool.take()
    try:
        times = {
            requests.get(f"{server.url}/api/2.0/mlflow/experiments/get", params={"experiment_id": "0"}, timeout=30)
            .json()["experiment"]["creation_time"]
            for server in (first, second)
        }
        assert len(times) == 2
    finally:
        server_pool.give_back(first)
        server_pool.give_back(second)
