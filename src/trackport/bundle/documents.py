"""The JSON documents of a bundle: their one encoding, read back strictly, and their
conversion to and from domain values (experiment, run, generic unit), both directions
side by side so that a field added to one is seen missing in the other.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from trackport.domain import DatasetInput, Experiment, Run
from trackport.kinds import Unit


def dumps(doc: Any) -> str:
    """The one JSON encoding of bundle documents: sorted keys, UTF-8, 2-space indent, no
    NaN/Infinity (ValueError), so the same content always gives the same bytes."""
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, indent=2, allow_nan=False) + "\n"


def short(text: str, limit: int = 300) -> str:
    """A piece of untrusted text cut to fit in a one-line message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON (NaN and Infinity are not allowed)")


def _no_duplicate_keys(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {short(key, 80)!r} appears twice in one object")
        out[key] = value
    return out


def loads(data: bytes | str) -> Any:
    """Strict JSON, as every reader of a bundle parses it: UTF-8, no NaN/Infinity, no key
    twice in one object (Python's json takes the last one silently: two readers could see
    two different documents). ValueError with a one-line reason otherwise."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as e:  # includes UnicodeDecodeError
        raise ValueError(short(str(e))) from None


# -- experiment.json -----------------------------------------------------------------------
def experiment_doc(experiment: Experiment) -> dict:
    return {
        "experiment_id": experiment.experiment_id,
        "name": experiment.name,
        "lifecycle_stage": experiment.lifecycle_stage,
        "artifact_location": experiment.artifact_location,
        "creation_time": experiment.creation_time,
        "last_update_time": experiment.last_update_time,
        "tags": dict(experiment.tags),
    }


def experiment_from_doc(doc: dict) -> Experiment:
    """From a document valid against experiment.schema.json."""
    return Experiment(
        experiment_id=doc["experiment_id"],
        name=doc["name"],
        lifecycle_stage=doc["lifecycle_stage"],
        artifact_location=doc["artifact_location"],
        creation_time=doc["creation_time"],
        last_update_time=doc["last_update_time"],
        tags=dict(doc["tags"]),
    )


# -- run.json ------------------------------------------------------------------------------
def run_doc(run: Run, experiment_id: str, metrics: dict | None, artifacts: list[dict], fingerprint: dict | None = None) -> dict:
    """fingerprint: the run's (format 1.4), recorded so the next increment can compare."""
    doc = {
        "info": {
            "run_id": run.run_id,
            "experiment_id": experiment_id,
            "run_name": run.run_name,
            "user_id": run.user_id,
            "status": run.status,
            "start_time": run.start_time,
            "end_time": run.end_time,
            "lifecycle_stage": run.lifecycle_stage,
            "deleted_time": run.deleted_time,
            "artifact_uri": run.artifact_uri,
        },
        "params": dict(run.params),
        "tags": dict(run.tags),
        "inputs": [asdict(i) for i in run.inputs],
        "metrics": metrics,
        "artifacts": artifacts,
    }
    if fingerprint is not None:
        doc["fingerprint"] = dict(fingerprint)
    return doc


def run_from_doc(doc: dict) -> Run:
    """From a document valid against run.schema.json (its metrics and artifacts records
    are the reader's business: they describe files, not the run)."""
    info = doc["info"]
    return Run(
        run_id=info["run_id"],
        experiment_id=info["experiment_id"],
        run_name=info["run_name"],
        user_id=info["user_id"],
        status=info["status"],
        start_time=info["start_time"],
        end_time=info["end_time"],
        lifecycle_stage=info["lifecycle_stage"],
        deleted_time=info["deleted_time"],
        artifact_uri=info["artifact_uri"],
        params=dict(doc["params"]),
        tags=dict(doc["tags"]),
        inputs=tuple(
            DatasetInput(
                name=i["name"],
                digest=i["digest"],
                source_type=i["source_type"],
                source=i["source"],
                schema=i["schema"],
                profile=i["profile"],
                tags=dict(i["tags"]),
            )
            for i in doc["inputs"]
        ),
    )


# -- units/<kind>/<id>.json ------------------------------------------------------------------
def unit_doc(unit: Unit, experiment_id: str | None, files: list[dict] | None = None) -> dict:
    """The envelope of a generic unit (unit.schema.json); its body is the kind's own;
    files ({path, size, sha256}) for a unit of a kind with files."""
    doc = {
        "kind": unit.kind,
        "id": unit.unit_id,
        "experiment_id": experiment_id,
        "name": unit.name,
        "refs": dict(unit.refs),
        "body": unit.body,
    }
    if files is not None:
        doc["files"] = files
    return doc


def unit_from_doc(doc: dict) -> Unit:
    """From a document valid against unit.schema.json."""
    return Unit(
        kind=doc["kind"],
        unit_id=doc["id"],
        experiment_id=doc["experiment_id"],
        name=doc["name"],
        refs=dict(doc["refs"]),
        body=doc["body"],
    )
