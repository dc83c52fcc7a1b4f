"""What trackport writes into a target about where a unit came from (provenance tags), where
ids are written inside data (a run's own id in its tags and MLmodel files, a logged
model's in its MLmodel, a version's run and model in its source), and how to rewrite them
when the target gives new ids. Shared by the sinks that write and the comparison that checks."""
from __future__ import annotations

import posixpath
import re

PROVENANCE_PREFIX = "trackport."
SOURCE_RUN_ID_TAG = "trackport.source.run_id"
SOURCE_EXPERIMENT_ID_TAG = "trackport.source.experiment_id"
LOSSES_TAG = "trackport.losses"
COMPLETE_TAG = "trackport.complete"  # written last: a run without it is a partial copy
COMPLETE_VALUE = "true"
# On a unit of another kind that a target gives a new id (a logged model) or that the target
# may hold already (a registered model, a version appended to one): the source unit's id.
SOURCE_UNIT_TAG = "trackport.source.id"
# On a logged model a server holds: the source's mlflow.modelVersions ("" for none), which
# the server adds to as versions are registered from the copy (it is put back).
ORIGINAL_MODEL_VERSIONS_TAG = "trackport.source.model_versions"
# On an experiment of a server, one tag per deleted logged model copied into it: the source
# id in the key, the copy's id as the value (a server lists no deleted logged model).
DELETED_MODEL_PREFIX = "trackport.deleted_logged_model."

# Tags whose values embed the run's own id (JSON or plain).
SELF_REFERENCING_TAGS = ("mlflow.log-model.history", "mlflow.rootRunId")

MLMODEL_FILE = "MLmodel"


def is_provenance_tag(key: str) -> bool:
    return key.startswith(PROVENANCE_PREFIX)


def is_partial_copy(tags: dict[str, str]) -> bool:
    """A run trackport began writing into a server and never finished (see rest.copies)."""
    return SOURCE_RUN_ID_TAG in tags and tags.get(COMPLETE_TAG) != COMPLETE_VALUE


def rewrite_tag(key: str, value: str, source_run_id: str, target_run_id: str) -> str:
    if key in SELF_REFERENCING_TAGS and source_run_id != target_run_id:
        return value.replace(source_run_id, target_run_id)
    return value


def is_mlmodel(path: str) -> bool:
    return posixpath.basename(path) == MLMODEL_FILE


_MLMODEL_ID_KEYS = (b"run_id", b"model_id", b"model_uuid")


def rewrite_mlmodel(data: bytes, ids: dict[str, str], locations: dict[str, str] | None = None) -> bytes:
    """An MLmodel file (YAML) names its run and logged model in top-level `run_id:`,
    `model_id:` and `model_uuid:` lines, and a logged model's its artifact location in
    `artifact_path:`. Those lines are rewritten (source id -> target id, source location ->
    target location); nothing else in it is touched, so no YAML library is needed and the
    rest stays byte for byte."""
    changes = {k: v for k, v in ids.items() if k != v}
    moved = {k: v for k, v in (locations or {}).items() if k and v and k != v}
    if not changes and not moved:
        return data

    def line(match: re.Match) -> bytes:
        key, quote, value, end = match.group(1), match.group(2), match.group(3).decode(), match.group(4)
        if key in _MLMODEL_ID_KEYS and value in changes:
            value = changes[value]
        elif key == b"artifact_path" and value in moved:
            value = moved[value]
        return key + b": " + quote + value.encode() + quote + end

    pattern = re.compile(rb"^(run_id|model_id|model_uuid|artifact_path):[ \t]*(['\"]?)([^'\"\r\n]*)\2([ \t]*)$", re.M)
    return pattern.sub(line, data)


def rewrite_version_source(
    source: str, ids: dict[str, str], run_artifact_uri: str | None = None, model_artifact_location: str | None = None
) -> str:
    """A model version's source pointing at the copies of what it named (ids: source id ->
    target id, runs and logged models): `models:/<id>` and `runs:/<id>/...` with the
    target's ids; a path under a run's or logged model's artifact root (MLflow makes them
    `.../<run id>/artifacts` and `.../models/<model id>/artifacts`) under the copy's root,
    given as run_artifact_uri / model_artifact_location. Anything else (an object-store
    path of its own, a prompt's placeholder) stays as it is."""
    for scheme in ("models:/", "runs:/"):
        if source.startswith(scheme):
            head, sep, rest = source[len(scheme):].partition("/")
            return scheme + ids.get(head, head) + sep + rest
    for source_id in ids:
        marker = f"/{source_id}/artifacts"
        if marker not in source:
            continue
        target_root = model_artifact_location if source_id.startswith("m-") else run_artifact_uri
        if target_root:
            return target_root.rstrip("/") + source.split(marker, 1)[1]
    return source


def source_shape(source: str, ids: dict[str, str]) -> str:
    """A version's source with the ids it names replaced by their roles (ids: id -> role,
    e.g. {run id: "{run}"}), and a path under a run's or logged model's artifact root cut to
    the part inside it: what two stores' copies of one version must agree on."""
    for scheme in ("models:/", "runs:/"):
        if source.startswith(scheme):
            head, sep, rest = source[len(scheme):].partition("/")
            return scheme + ids.get(head, head) + sep + rest
    for source_id, role in ids.items():
        marker = f"/{source_id}/artifacts"
        if marker in source:
            return role + "/artifacts" + source.split(marker, 1)[1]
    return source
