"""MLflow 3's model objects as units: logged models, registered models (prompts among
them) and model versions, built the same way by every store that reads them.

A store reads MLflow's fields and hands them to these builders, so that the units of one
object are equal whichever store they come from: ids live only in a unit's refs (named
"run", "run#2", ...; see kinds.Unit), bodies name refs, never ids. The JSON Schemas of the
bodies are schemas/logged-model, registered-model and model-version.schema.json.

Version numbers are kept by writing versions in order: each version refers to the one
before it ("model_version" ref), so the engine writes it first, and names the numbers the
source deleted since (`deleted_before`), which a target that numbers versions itself must
use up and delete again.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Iterable

from trackport.kinds import LOGGED_MODEL, MODEL_VERSION, REGISTERED_MODEL, Unit

PROMPT_TAG = "mlflow.prompt.is_prompt"  # a registered model (and its versions) that is a prompt
PROMPT_EXPERIMENTS_TAG = "_mlflow_experiment_ids"  # ",1,5,": the experiments a prompt is linked to
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # on a logged model: the versions registered from it
PROMPT_SOURCES = ("dummy-source", "prompt-template")  # what MLflow takes as a prompt version's source
STATUSES = ("READY", "PENDING", "FAILED", "UNSPECIFIED")
_RESERVED_ALIAS = re.compile(r"^(latest|[vV]\d+)$", re.IGNORECASE)


def is_prompt(tags: dict[str, str]) -> bool:
    return tags.get(PROMPT_TAG, "false").lower() == "true"


def reserved_alias(alias: str) -> bool:
    """Names MLflow keeps for itself (`latest`, `v<N>`): a server refuses to set them."""
    return bool(_RESERVED_ALIAS.match(alias))


def version_id(name: str, version: int | str) -> str:
    """The unit id of a model version: '<name>/<version>' (a model name holds no '/')."""
    return f"{name}/{int(version)}"


def split_version_id(unit_id: str) -> tuple[str, int]:
    name, _, version = unit_id.rpartition("/")
    return name, int(version)


def model_id_in_source(source: str | None) -> str | None:
    """The logged model a version's source names (`models:/<model id>`), if it does."""
    if source and source.startswith("models:/"):
        rest = source[len("models:/") :].strip("/")
        if rest.startswith("m-") and "/" not in rest:
            return rest
    return None


def metric_value_to_json(value: float) -> float | str:
    """A metric value as a bundle document holds it: NaN and ±inf as MLflow's strings."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float(value)


def metric_value_from_json(value: float | str) -> float:
    return float(value)  # float() reads "NaN", "Infinity" and "-Infinity" too


def status_name(status: Any) -> str:
    """READY / PENDING / FAILED / UNSPECIFIED from what a store holds: MLflow's enum names
    (LOGGED_MODEL_READY), the proto's numbers (the SQL column) or the short name."""
    if isinstance(status, int) or (isinstance(status, str) and status.isdigit()):
        return {1: "PENDING", 2: "READY", 3: "FAILED"}.get(int(status), "UNSPECIFIED")
    text = str(status or "").upper().removeprefix("LOGGED_MODEL_").replace("UPLOAD_FAILED", "FAILED")
    return text if text in STATUSES else "UNSPECIFIED"


@dataclass
class ModelMetric:
    key: str
    value: float
    timestamp: int
    step: int
    run_id: str | None
    dataset_name: str | None = None
    dataset_digest: str | None = None


@dataclass
class LoggedModelFields:
    """A logged model as a store reads it (MLflow's fields; ids as that store has them)."""

    model_id: str
    experiment_id: str
    name: str
    source_run_id: str | None = None
    model_type: str | None = None
    status: str = "READY"
    status_message: str | None = None
    lifecycle_stage: str = "active"
    creation_timestamp: int | None = None
    last_updated_timestamp: int | None = None
    artifact_location: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[ModelMetric] = field(default_factory=list)
    # (run id, "output" | "input", step): the runs that have the model as an output or input.
    links: list[tuple[str, str, int]] = field(default_factory=list)


def logged_model_unit(m: LoggedModelFields) -> Unit:
    refs = {"experiment": m.experiment_id}
    names: dict[str, str] = {}
    if m.source_run_id:
        refs["run"] = m.source_run_id
        names[m.source_run_id] = "run"
    # The other runs are numbered by what they logged, not by their ids, which differ from
    # store to store: so one model's refs are named alike in every store.
    for run_id in _runs_in_content_order(m):
        if run_id not in names:
            names[run_id] = f"run#{len(names) + (1 if m.source_run_id else 2)}"
            refs[names[run_id]] = run_id
    metrics = sorted(
        (
            {
                "key": x.key,
                "value": metric_value_to_json(x.value),
                "timestamp": int(x.timestamp),
                "step": int(x.step),
                "run": names.get(x.run_id) if x.run_id else None,
                "dataset_name": x.dataset_name or None,
                "dataset_digest": x.dataset_digest or None,
            }
            for x in m.metrics
        ),
        key=lambda d: (d["key"], d["step"], d["timestamp"], str(d["value"]), d["run"] or "", d["dataset_name"] or ""),
    )
    links = sorted(({"run": names[r], "direction": d, "step": int(s)} for r, d, s in set(m.links)),
                   key=lambda d: (d["run"], d["direction"], d["step"]))
    body = {
        "model_type": m.model_type or None,
        "status": status_name(m.status),
        "status_message": m.status_message or None,
        "lifecycle_stage": m.lifecycle_stage or "active",
        "creation_timestamp": m.creation_timestamp,
        "last_updated_timestamp": m.last_updated_timestamp,
        "artifact_location": m.artifact_location,
        "params": dict(m.params),
        "tags": dict(m.tags),
        "metrics": metrics,
        "links": links,
    }
    return Unit(LOGGED_MODEL.name, m.model_id, m.experiment_id, m.name, refs, body)


def _runs_in_content_order(m: LoggedModelFields) -> list[str]:
    """The runs a model's metrics and links name, in the order of the points and links
    they logged (ties between runs by id)."""
    points = sorted(
        (x.key, x.step, x.timestamp, str(metric_value_to_json(x.value)), x.dataset_name or "", x.run_id)
        for x in m.metrics if x.run_id
    )
    links = sorted((direction, step, run_id) for run_id, direction, step in m.links)
    return list(dict.fromkeys([p[-1] for p in points] + [link[-1] for link in links]))


def registered_model_unit(
    name: str, description: str | None, tags: dict[str, str], creation_timestamp: int | None,
    last_updated_timestamp: int | None,
) -> Unit:
    """A registered model or prompt; a prompt's linked experiments become refs, named by
    their place in its list (their ids differ from store to store)."""
    refs = {f"experiment#{i}": e for i, e in enumerate(linked_experiments(tags), 1)}
    body = {
        "description": description or None,
        "tags": dict(tags),
        "creation_timestamp": creation_timestamp,
        "last_updated_timestamp": last_updated_timestamp,
    }
    return Unit(REGISTERED_MODEL.name, name, None, name, refs, body)


def linked_experiments(tags: dict[str, str]) -> list[str]:
    return [e for e in tags.get(PROMPT_EXPERIMENTS_TAG, "").split(",") if e]


def relink_experiments(tags: dict[str, str], target_of: dict[str, str]) -> dict[str, str]:
    """A prompt's experiment links naming the target's experiments (source id -> target id)."""
    if PROMPT_EXPERIMENTS_TAG not in tags:
        return tags
    ids = [target_of.get(e, e) for e in linked_experiments(tags)]
    return {**tags, PROMPT_EXPERIMENTS_TAG: f",{','.join(ids)}," if ids else ""}


@dataclass
class VersionFields:
    """A model version as a store reads it."""

    version: int
    source: str
    run_id: str | None = None
    model_id: str | None = None  # else taken from a models:/<id> source
    experiment_id: str | None = None  # of its logged model, else of its run (where known)
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    run_link: str | None = None
    status: str = "READY"
    status_message: str | None = None
    current_stage: str | None = None
    user_id: str | None = None
    creation_timestamp: int | None = None
    last_updated_timestamp: int | None = None


def version_units(name: str, versions: Iterable[VersionFields], deleted: Iterable[int] = ()) -> list[Unit]:
    """The units of one registered model's versions, oldest first, each referring to the
    one before it. deleted: numbers the source deleted, where it knows them (a database
    keeps their rows); numbers missing between two versions are deleted ones too."""
    ordered = sorted(versions, key=lambda v: v.version)
    gone = set(deleted)
    units = []
    previous = 0
    for i, v in enumerate(ordered):
        model_id = v.model_id or model_id_in_source(v.source)
        refs = {"registered_model": name}
        if previous:
            refs["model_version"] = version_id(name, previous)
        if v.experiment_id:
            refs["experiment"] = v.experiment_id
        if v.run_id:
            refs["run"] = v.run_id
        if model_id:
            refs["logged_model"] = model_id
        newest = i == len(ordered) - 1
        body = {
            "version": v.version,
            "description": v.description or None,
            "tags": dict(v.tags),
            "aliases": sorted(set(v.aliases)),
            "source": v.source,
            "run_link": v.run_link or None,
            "status": v.status or "READY",
            "status_message": v.status_message or None,
            "current_stage": None if v.current_stage in (None, "", "None") else v.current_stage,  # MLflow's "None" stage
            "user_id": v.user_id or None,
            "creation_timestamp": v.creation_timestamp,
            "last_updated_timestamp": v.last_updated_timestamp,
            "deleted_before": list(range(previous + 1, v.version)),
            "deleted_after": sorted(n for n in gone if n > v.version) if newest else [],
        }
        units.append(Unit(MODEL_VERSION.name, version_id(name, v.version), None, "", refs, body))
        previous = v.version
    return units


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether --model patterns (`*` and `?` wildcards, case-sensitive as MLflow's names) take name."""
    return any(fnmatchcase(name, p) for p in patterns)
