"""Everything a store holds, read with MLflow's own client: the independent side of the
fidelity tests (trackport's code is not used to read what trackport wrote)."""
from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from pathlib import Path

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple]:
    points = client.get_metric_history(run_id, key)
    return sorted((m.step, m.timestamp, repr(m.value)) for m in points)


def _artifacts(client: MlflowClient, run_id: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            root = Path(client.download_artifacts(run_id, "", tmp))
        except Exception:  # noqa: BLE001 - a run without an artifact directory has no artifacts
            return {}
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }


def _deleted_times(uri: str) -> dict[str, int | None]:
    if not uri.startswith("sqlite:///"):
        return {}
    with sqlite3.connect(uri[len("sqlite:///") :]) as db:
        return dict(db.execute("select run_uuid, deleted_time from runs"))


def snapshot(uri: str, prefix: str = "") -> dict:
    """{experiment name: {...fields, runs: {run id: {...fields}}}} for the whole store, or
    for its experiments whose names start with prefix (a shared server holds every test's)."""
    client = MlflowClient(tracking_uri=uri)
    deleted_times = _deleted_times(uri)
    result = {}
    for exp in client.search_experiments(view_type=ViewType.ALL):
        if not exp.name.startswith(prefix):
            continue
        runs = {}
        for run in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=50000):
            info, data = run.info, run.data
            runs[info.run_id] = {
                "experiment_id": info.experiment_id,
                "run_name": info.run_name,
                "user_id": info.user_id,
                "status": info.status,
                "start_time": info.start_time,
                "end_time": info.end_time,
                "lifecycle_stage": info.lifecycle_stage,
                "deleted_time": deleted_times.get(info.run_id),
                "params": data.params,
                "tags": data.tags,
                "metrics": {key: _history(client, info.run_id, key) for key in sorted(data.metrics)},
                "inputs": sorted(
                    (
                        d.dataset.name,
                        d.dataset.digest,
                        d.dataset.source_type,
                        d.dataset.source,
                        d.dataset.schema,
                        d.dataset.profile,
                        tuple(sorted((t.key, t.value) for t in d.tags)),
                    )
                    for d in (run.inputs.dataset_inputs if run.inputs else [])
                ),
                "artifacts": _artifacts(client, info.run_id),
            }
        result[exp.name] = {
            "experiment_id": exp.experiment_id,
            "lifecycle_stage": exp.lifecycle_stage,
            "tags": exp.tags,
            "creation_time": exp.creation_time,
            "last_update_time": exp.last_update_time,
            "runs": runs,
        }
    return result


def count_points(snap: dict) -> int:
    return sum(len(h) for e in snap.values() for r in e["runs"].values() for h in r["metrics"].values())
