"""Registry copy rate: N registered model versions server to server, trackport against a
minimal script making the same writes, in one run on this machine.

Three real `mlflow server`s (sqlite backend, proxied artifacts): a source filled through
REST with one run and a registered model of N versions (`runs:/` sources, a tag each, one
deleted version leaving a gap, two aliases); `trackport copy SOURCE T1 --model bench`;
and the baseline into T2: the reads and writes a hand-written copier needs at least (list
the versions, create the experiment, the run and its artifact, the model, each version
with its tags, delete the gap, set the aliases), sequential as version numbers require.

    python benchmarks/registry_copy.py --versions 200 [--repeat 3] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import MlflowServer, start_all  # noqa: E402

API = "/api/2.0/mlflow"
MLMODEL = b"artifact_path: model\nflavors: {}\n"


def post(http: requests.Session, url: str, path: str, body: dict) -> dict:
    response = http.post(f"{url}{API}/{path}", json=body, timeout=60)
    response.raise_for_status()
    return response.json() if response.content else {}


def delete_version(http: requests.Session, url: str, version: str) -> None:
    http.delete(f"{url}{API}/model-versions/delete", json={"name": "bench", "version": version}, timeout=60).raise_for_status()


def fill(url: str, versions: int) -> None:
    http = requests.Session()
    experiment = post(http, url, "experiments/create", {"name": "bench"})["experiment_id"]
    run = post(http, url, "runs/create", {"experiment_id": experiment, "start_time": 1_700_000_000_000})["run"]["info"]
    root = run["artifact_uri"].split(":", 1)[1].strip("/")
    http.put(f"{url}/api/2.0/mlflow-artifacts/artifacts/{root}/model/MLmodel", data=MLMODEL, timeout=60).raise_for_status()
    post(http, url, "runs/update", {"run_id": run["run_id"], "status": "FINISHED", "end_time": 1_700_000_001_000})
    post(http, url, "registered-models/create", {"name": "bench", "description": "benchmark"})
    for n in range(1, versions + 1):
        post(http, url, "model-versions/create", {
            "name": "bench", "source": f"runs:/{run['run_id']}/model", "run_id": run["run_id"],
            "tags": [{"key": "n", "value": str(n)}], "description": f"version {n}",
        })
    delete_version(http, url, str(versions // 2))
    post(http, url, "registered-models/alias", {"name": "bench", "alias": "champion", "version": str(versions)})
    post(http, url, "registered-models/alias", {"name": "bench", "alias": "challenger", "version": "1"})


def baseline(source: str, target: str) -> float:
    """The same copy by hand: what any copier must read and write, nothing more."""
    started = time.perf_counter()
    http = requests.Session()
    found = http.get(f"{source}{API}/model-versions/search", params={"filter": "name='bench'", "max_results": 10000}).json()
    model = http.get(f"{source}{API}/registered-models/get", params={"name": "bench"}).json()["registered_model"]
    runs = {v["run_id"] for v in found["model_versions"]}
    experiment = post(http, target, "experiments/create", {"name": "bench"})["experiment_id"]
    new_run = {}
    for run_id in runs:
        info = http.get(f"{source}{API}/runs/get", params={"run_id": run_id}).json()["run"]["info"]
        made = post(http, target, "runs/create", {"experiment_id": experiment, "start_time": info["start_time"]})["run"]["info"]
        src_root = info["artifact_uri"].split(":", 1)[1].strip("/")
        dst_root = made["artifact_uri"].split(":", 1)[1].strip("/")
        data = http.get(f"{source}/api/2.0/mlflow-artifacts/artifacts/{src_root}/model/MLmodel").content
        http.put(f"{target}/api/2.0/mlflow-artifacts/artifacts/{dst_root}/model/MLmodel", data=data).raise_for_status()
        post(http, target, "runs/update", {"run_id": made["run_id"], "status": info["status"], "end_time": info["end_time"]})
        new_run[run_id] = made["run_id"]
    post(http, target, "registered-models/create", {"name": "bench", "description": model.get("description", "")})
    live = {int(v["version"]): v for v in found["model_versions"]}
    for n in range(1, max(live) + 1):
        v = live.get(n) or live[min(k for k in live if k > n)]
        made = post(http, target, "model-versions/create", {
            "name": "bench", "source": v["source"].replace(v["run_id"], new_run[v["run_id"]]),
            "run_id": new_run[v["run_id"]], "tags": v.get("tags", []), "description": v.get("description", ""),
        })["model_version"]
        if n not in live:
            delete_version(http, target, made["version"])
    for alias in model.get("aliases", []):
        post(http, target, "registered-models/alias", {"name": "bench", **alias})
    return time.perf_counter() - started


def trackport_copy(source: str, target: str, versions: int) -> tuple[float, float]:
    started = time.perf_counter()
    result = subprocess.run(
        ["trackport", "copy", source, target, "--model", "bench", "--json"], capture_output=True, text=True, timeout=3600
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"trackport failed ({result.returncode}): {result.stderr[-2000:]}")
    summary = json.loads(result.stdout)
    done = summary["counts"]["model_versions"]["done"]
    if done != versions - 1:  # one is deleted
        raise SystemExit(f"trackport moved {done} versions, not {versions - 1}: {summary}")
    return wall, summary["elapsed_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = start_all([MlflowServer(Path(tmp) / "source")])[0]
        try:
            fill(source.url, args.versions)
            for i in range(args.repeat):  # alternated, so drift hits both alike
                targets = start_all([MlflowServer(Path(tmp) / f"t{i}"), MlflowServer(Path(tmp) / f"b{i}")])
                try:
                    wall, transfer = trackport_copy(source.url, targets[0].url, args.versions)
                    base = baseline(source.url, targets[1].url)
                finally:
                    for server in targets:
                        server.stop()
                rows.append({"trackport_wall": wall, "trackport_transfer": transfer, "baseline": base})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            source.stop()
    result = {
        "versions": args.versions,
        "runs": rows,
        "median_trackport_wall": statistics.median(r["trackport_wall"] for r in rows),
        "median_trackport_transfer": statistics.median(r["trackport_transfer"] for r in rows),
        "median_baseline": statistics.median(r["baseline"] for r in rows),
    }
    result["ratio_transfer_to_baseline"] = result["median_trackport_transfer"] / result["median_baseline"]
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"registry-{args.versions}-{int(time.time())}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
