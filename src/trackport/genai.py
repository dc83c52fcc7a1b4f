"""MLflow 3's evaluation datasets and registered scorers as units, built the same way by every
store that reads them.

An evaluation dataset belongs to the workspace and may be linked to several experiments:
its unit has no experiment of its own and names the linked ones as refs "experiment",
"experiment#2", ... (in the order of their ids), which the engine remaps; its body holds the
name, tags, schema, profile, times, users and every record. A server gives a dataset new
ids, and its records too: a record is named by its `input_hash`, the SHA-256 MLflow itself
keys records by (of the inputs as JSON with sorted keys), and what a server sets itself on
each record (its id, times, users) is kept apart in `record_meta`, which verify does not
compare. Bodies: schemas/evaluation-dataset.schema.json.

A registered scorer belongs to one experiment: its unit is the scorer (id: the server's
scorer_id, name: its name) with every version's serialized form, in version order
(schemas/scorer.schema.json). A server numbers the versions it registers 1, 2, ...: a
scorer whose versions have gaps (deleted ones) cannot keep its numbers (scorer_renumbering).
"""
from __future__ import annotations

import dataclasses

import hashlib
import json
from typing import Any

from trackport.kinds import EVALUATION_DATASET, SCORER, Unit

# Record fields a server sets itself, kept in the body's record_meta (by input_hash).
RECORD_META = ("dataset_record_id", "created_time", "last_update_time", "created_by", "last_updated_by")
# Record fields that are the record's content.
RECORD_CONTENT = ("inputs", "outputs", "expectations", "tags", "source")


def input_hash(inputs: Any) -> str:
    """The key MLflow's store finds a record by (sqlalchemy_store.upsert_dataset_records)."""
    return hashlib.sha256(json.dumps(inputs if inputs is not None else {}, sort_keys=True).encode()).hexdigest()


def _json_field(value: Any) -> Any:
    """A field a server sends as JSON text (tags, schema, profile), decoded; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return json.loads(value)
    return value


def dataset_unit(info: dict, experiment_ids: list[str], records: list[dict]) -> Unit:
    """A dataset as a server sends it (proto JSON of Dataset), the ids of the experiments it
    is linked to, and its records (as GetDatasetRecords sends them, decoded)."""
    refs: dict[str, str] = {}
    for n, exp_id in enumerate(sorted({str(e) for e in experiment_ids}, key=lambda e: (len(e), e)), start=1):
        refs["experiment" if n == 1 else f"experiment#{n}"] = exp_id
    content, meta = [], []
    for r in records:
        key = input_hash(r.get("inputs"))
        content.append({"input_hash": key, **{k: r.get(k) for k in RECORD_CONTENT}})
        meta.append({"input_hash": key, **{k: r.get(k) for k in RECORD_META}})
    body = {
        "name": info.get("name") or "",
        "tags": dict(sorted((_json_field(info.get("tags")) or {}).items())),
        "schema": _json_field(info.get("schema")),
        "profile": _json_field(info.get("profile")),
        "digest": info.get("digest"),
        "created_time": _int(info.get("created_time")),
        "last_update_time": _int(info.get("last_update_time")),
        "created_by": info.get("created_by"),
        "last_updated_by": info.get("last_updated_by"),
        "records": sorted(content, key=lambda r: r["input_hash"]),
        "record_meta": sorted(meta, key=lambda r: r["input_hash"]),
    }
    return Unit(EVALUATION_DATASET.name, str(info["dataset_id"]), None, body["name"], refs, body)


def record_to_upsert(record: dict) -> dict:
    """A body's record as UpsertDatasetRecords takes it."""
    return {k: record[k] for k in RECORD_CONTENT if record.get(k) is not None}


def scorer_unit(experiment_id: str, versions: list[dict]) -> Unit:
    """A scorer's versions as a server sends them (proto JSON of Scorer), any order."""
    versions = sorted(versions, key=lambda v: int(v["scorer_version"]))
    name = str(versions[0]["scorer_name"])
    body = {
        "versions": [{"version": int(v["scorer_version"]), "serialized_scorer": v.get("serialized_scorer") or ""} for v in versions],
        # When each version was registered ("1": ms): a server sets it itself (not compared).
        "creation_times": {str(int(v["scorer_version"])): _int(v.get("creation_time")) for v in versions},
    }
    scorer_id = versions[0].get("scorer_id") or f"{experiment_id}/{name}"
    return Unit(SCORER.name, str(scorer_id), str(experiment_id), name, {"experiment": str(experiment_id)}, body)


def scorer_renumbering(body: dict) -> str | None:
    """The loss of a scorer whose version numbers a target registering them in order (1, 2,
    ...) cannot keep, None when it keeps them."""
    numbers = [v["version"] for v in body.get("versions") or ()]
    if numbers == list(range(1, len(numbers) + 1)):
        return None
    new = ", ".join(str(n) for n in range(1, len(numbers) + 1))
    return f"versions renumbered: {', '.join(str(n) for n in numbers)} are registered as {new} (a target numbers them in order)"


def numbered_in_order(unit: Unit) -> Unit:
    """A scorer with its versions numbered 1, 2, ... in their order, as verify compares
    them: a server renumbers a source's gaps (scorer_renumbering, a recorded loss)."""
    versions = [{**v, "version": n} for n, v in enumerate(unit.body.get("versions") or (), start=1)]
    return dataclasses.replace(unit, body={**unit.body, "versions": versions})


def _int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)
