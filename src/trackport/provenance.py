"""Where a run's own id is written inside its data, and how to rewrite it when the target
gives the run a new id. Shared by the sinks that write and by the comparison that checks."""
from __future__ import annotations

import posixpath
import re

PROVENANCE_PREFIX = "trackport."
SOURCE_RUN_ID_TAG = "trackport.source.run_id"
SOURCE_EXPERIMENT_ID_TAG = "trackport.source.experiment_id"
LOSSES_TAG = "trackport.losses"
COMPLETE_TAG = "trackport.complete"  # written last: a run without it is a partial copy

# Tags whose values embed the run's own id (JSON or plain).
SELF_REFERENCING_TAGS = ("mlflow.log-model.history", "mlflow.rootRunId")

MLMODEL_FILE = "MLmodel"


def is_provenance_tag(key: str) -> bool:
    return key.startswith(PROVENANCE_PREFIX)


def rewrite_tag(key: str, value: str, source_run_id: str, target_run_id: str) -> str:
    if key in SELF_REFERENCING_TAGS and source_run_id != target_run_id:
        return value.replace(source_run_id, target_run_id)
    return value


def is_mlmodel(path: str) -> bool:
    return posixpath.basename(path) == MLMODEL_FILE


def rewrite_mlmodel(data: bytes, source_run_id: str, target_run_id: str) -> bytes:
    """An MLmodel file (YAML) names its run in a top-level `run_id:` line; nothing else in
    it is touched, so no YAML library is needed and the rest stays byte for byte."""
    if source_run_id == target_run_id:
        return data
    pattern = re.compile(rb"^(run_id:\s*['\"]?)" + re.escape(source_run_id.encode()) + rb"(['\"]?\s*)$", re.M)
    return pattern.sub(rb"\g<1>" + target_run_id.encode() + rb"\g<2>", data)
