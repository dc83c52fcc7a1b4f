"""MLflow's REST JSON (runs/search, runs/get, experiments/search) as trackport's domain
objects. MLflow's JSON leaves out fields at their default, so every field is read with one.
"""
from __future__ import annotations

from typing import Any

from trackport.domain import ACTIVE, RUN_NAME_TAG, DatasetInput, Experiment, Run


def _tags(items: list[dict] | None) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in items or () if "key" in t}


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def experiment_from_json(data: dict) -> Experiment:
    return Experiment(
        experiment_id=str(data["experiment_id"]),
        name=data["name"],
        lifecycle_stage=data.get("lifecycle_stage") or ACTIVE,
        artifact_location=data.get("artifact_location") or None,
        creation_time=_int_or_none(data.get("creation_time")),
        last_update_time=_int_or_none(data.get("last_update_time")),
        tags=_tags(data.get("tags")),
    )


def _dataset_input(data: dict) -> DatasetInput:
    ds = data.get("dataset") or {}
    return DatasetInput(
        name=ds.get("name", ""),
        digest=ds.get("digest", ""),
        source_type=ds.get("source_type", ""),
        source=ds.get("source", ""),
        schema=ds.get("schema"),
        profile=ds.get("profile"),
        tags=_tags(data.get("tags")),
    )


def run_from_json(data: dict) -> Run:
    info = data["info"]
    body = data.get("data") or {}
    tags = _tags(body.get("tags"))
    inputs = [_dataset_input(d) for d in (data.get("inputs") or {}).get("dataset_inputs") or ()]
    inputs.sort(key=lambda i: (i.name, i.digest))
    return Run(
        run_id=info.get("run_id") or info["run_uuid"],
        experiment_id=str(info["experiment_id"]),
        run_name=info.get("run_name") or tags.get(RUN_NAME_TAG, ""),
        user_id=info.get("user_id") or "",
        status=info.get("status") or "RUNNING",  # RUNNING is the proto's default value
        start_time=_int_or_none(info.get("start_time")),
        end_time=_int_or_none(info.get("end_time")),
        lifecycle_stage=info.get("lifecycle_stage") or ACTIVE,
        deleted_time=None,  # not exposed over REST
        artifact_uri=info.get("artifact_uri") or None,
        params=_tags(body.get("params")),
        tags=tags,
        inputs=tuple(inputs),
    )


def latest_metrics(data: dict) -> list[dict]:
    """A run's latest metric points as runs/search and runs/get send them."""
    return list((data.get("data") or {}).get("metrics") or ())


def run_order_key(data: dict) -> tuple:
    """trackport.selection.run_order of a run as the server sends it."""
    info = data.get("info") or {}
    start = info.get("start_time")
    return (start is None, int(start or 0), str(info.get("run_id") or info.get("run_uuid") or ""))
