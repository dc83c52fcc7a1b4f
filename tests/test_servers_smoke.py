"""The test servers themselves: up, filled, guarded."""
import requests

from servers import ADMIN_PASSWORD, ADMIN_USER


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
