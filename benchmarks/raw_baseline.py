"""The raw limit baseline: only the REST calls a copy needs, nothing else.

Reads: runs/search, metrics/get-history per key, artifacts/list and proxied downloads.
Writes: experiments/create, runs/create, runs/log-batch at full size (1000 metrics, 100
params, 100 tags), proxied artifact uploads, runs/update. No bundle, no checks, no retries:
what a minimal hand-written copier would do, with the same concurrency as trackport.

    python benchmarks/raw_baseline.py read  SOURCE_URL OUT_DIR --workers 8
    python benchmarks/raw_baseline.py write OUT_DIR TARGET_URL --workers 8
"""
from __future__ import annotations

import argparse
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

API = "/api/2.0/mlflow"


def session(workers: int) -> requests.Session:
    s = requests.Session()
    s.mount("http://", HTTPAdapter(pool_maxsize=2 * workers))
    return s


def read(url: str, out: Path, workers: int) -> None:
    http = session(workers)
    experiments = http.get(f"{url}{API}/experiments/search", params={"max_results": 1000}).json()["experiments"]
    runs = []
    for exp in experiments:
        token = None
        while True:
            body = {"experiment_ids": [exp["experiment_id"]], "max_results": 1000, "page_token": token}
            page = http.post(f"{url}{API}/runs/search", json=body).json()
            runs += page.get("runs", [])
            token = page.get("next_page_token")
            if not token:
                break

    def list_files(run_id: str, path: str = "") -> list[str]:
        answer = http.get(f"{url}{API}/artifacts/list", params={"run_id": run_id, "path": path}).json()
        files = []
        for f in answer.get("files", []):
            files += list_files(run_id, f["path"]) if f["is_dir"] else [f["path"]]
        return files

    def one(run: dict) -> None:
        run_id = run["info"]["run_id"]
        directory = out / run_id
        (directory / "artifacts").mkdir(parents=True, exist_ok=True)
        metrics = {}
        for m in run["data"].get("metrics", []):
            history = http.get(
                f"{url}{API}/metrics/get-history", params={"run_id": run_id, "metric_key": m["key"]}
            ).json()["metrics"]
            metrics[m["key"]] = [[p.get("step", 0), p.get("timestamp", 0), p["value"]] for p in history]
        root = run["info"]["artifact_uri"].removeprefix("mlflow-artifacts:").lstrip("/")
        for path in list_files(run_id):
            response = http.get(f"{url}/api/2.0/mlflow-artifacts/artifacts/{root}/{quote(path)}", stream=True)
            target = directory / "artifacts" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                for chunk in response.iter_content(1 << 20):
                    f.write(chunk)
        (directory / "run.json").write_text(json.dumps({"run": run, "metrics": metrics}))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, runs))


def write(src: Path, url: str, workers: int) -> None:
    http = session(workers)
    experiment_ids: dict[str, str] = {}
    runs = [json.loads((d / "run.json").read_text()) for d in sorted(src.iterdir()) if (d / "run.json").exists()]
    for doc in runs:
        name = f"raw-baseline-{doc['run']['info']['experiment_id']}"
        if name not in experiment_ids:
            experiment_ids[name] = http.post(f"{url}{API}/experiments/create", json={"name": name}).json()["experiment_id"]

    def one(doc: dict) -> None:
        info, data = doc["run"]["info"], doc["run"]["data"]
        created = http.post(f"{url}{API}/runs/create", json={
            "experiment_id": experiment_ids[f"raw-baseline-{info['experiment_id']}"],
            "start_time": info.get("start_time", 0), "user_id": info.get("user_id", ""),
            "run_name": info.get("run_name", ""),
        }).json()["run"]["info"]
        run_id = created["run_id"]
        params = data.get("params", [])
        tags = [t for t in data.get("tags", []) if t["key"] != "mlflow.runName"]
        points = [
            {"key": key, "step": s, "timestamp": t, "value": v if not isinstance(v, float) or math.isfinite(v) else str(v)}
            for key, history in doc["metrics"].items() for s, t, v in history
        ]
        first = True
        while first or points:
            batch = {"run_id": run_id, "params": params[:100] if first else [], "tags": tags[:100] if first else []}
            room = 1000 - len(batch["params"]) - len(batch["tags"])
            batch["metrics"], points = points[:room], points[room:]
            http.post(f"{url}{API}/runs/log-batch", json=batch).raise_for_status()
            first = False
        root = created["artifact_uri"].removeprefix("mlflow-artifacts:").lstrip("/")
        artifacts = src / info["run_id"] / "artifacts"
        for path in sorted(p for p in artifacts.rglob("*") if p.is_file()):
            with open(path, "rb") as f:
                rel = quote(path.relative_to(artifacts).as_posix())
                http.put(f"{url}/api/2.0/mlflow-artifacts/artifacts/{root}/{rel}", data=f).raise_for_status()
        http.post(f"{url}{API}/runs/update", json={
            "run_id": run_id, "status": info["status"], "end_time": info.get("end_time", 0)}).raise_for_status()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, runs))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["read", "write"])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", 8)))
    args = parser.parse_args()
    if args.mode == "read":
        read(args.a, Path(args.b), args.workers)
    else:
        write(Path(args.a), args.b, args.workers)


if __name__ == "__main__":
    main()
