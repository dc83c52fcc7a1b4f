"""Bringing a run a tracking server holds up to date in place (trackport.patching), with
MLflow's own calls: runs/update, log-batch, delete-tag, log-inputs, the artifact service,
runs/delete and runs/restore. A server cannot change a deleted run, so a deleted copy is
restored for the change and deleted again after it; nor a param's value once logged, which
is said as a loss.
"""
from __future__ import annotations

from typing import Any, Iterator

from trackport.domain import DELETED, ArtifactFile, Run
from trackport.errors import UnitError
from trackport.patching import RunPatch, RunPatcher
from trackport.stores.base import RunContent, RunWriteResult, SourceStore
from trackport.stores.rest.http import API, NotFoundError, RestError


class _Patched:
    """The source run's content as a patch names it: its new metric points, the artifact
    files it names."""

    def __init__(self, patch: RunPatch, content: RunContent) -> None:
        self._patch = patch
        self._content = content
        self._paths = {f.path for f in patch.artifacts}

    def metric_batches(self):
        return self._patch.metric_points() if self._patch.metric_points else iter(())

    def artifact_files(self) -> Iterator[ArtifactFile]:
        return iter(self._patch.artifacts)

    def open_artifact(self, path: str):
        if path not in self._paths:
            raise UnitError(f"artifact {path!r} is not part of the change")
        return self._content.open_artifact(path)


class RestPatcher(RunPatcher):
    """Mixed into RestSink: uses its client, value checks, batching and artifact uploader."""

    def target_reader(self) -> SourceStore:
        from trackport.stores.rest.source import RestSource

        if getattr(self, "_reader", None) is None:
            self._reader = RestSource(self.client, self.uri, self.info, config=self._config)
        return self._reader

    def rename_experiment(self, target_experiment_id: str, name: str) -> None:
        try:
            self._post("experiments/update", {"experiment_id": target_experiment_id, "new_name": name})
        except NotFoundError:
            pass  # gone from the target: the sync makes it again under the new name
        except RestError as exc:
            raise UnitError(f"experiment {target_experiment_id}: cannot rename it to {name!r} in the target: {exc}") from None

    def patch_run(self, target_run_id: str, patch: RunPatch, content: RunContent) -> RunWriteResult:
        result = RunWriteResult(target_run_id)
        losses: list[str] = []
        if patch.target_deleted and (patch.changes_content or patch.lifecycle_stage != DELETED):
            self._post("runs/restore", {"run_id": target_run_id})
        update: dict[str, Any] = {}
        if patch.run_name is not None:
            update["run_name"] = patch.run_name
        if patch.status is not None:
            update["status"] = patch.status
        if patch.end_time is not None:
            update["end_time"] = patch.end_time
        if update:
            self._post("runs/update", {"run_id": target_run_id, **update})
        for key, value in sorted(patch.changed_params.items()):
            losses.append(f"param {key!r} changed at the source to {value[:80]!r}; a server keeps a param's first value")
        named = Run(target_run_id, "", patch.run_name or target_run_id, "", "", None, None)
        params, tags = self._check_keys_and_values(named, dict(patch.new_params), dict(patch.set_tags), losses)
        patched = _Patched(patch, content)
        infinities = self._log_batches(target_run_id, params, tags, patched, result)
        if infinities and not self.capabilities.keeps_infinity:
            losses.append(f"{infinities} ±inf metric points stored as ±1.7976931348623157e308 by the target")
        for key in patch.delete_tags:
            try:
                self._post("runs/delete-tag", {"run_id": target_run_id, "key": key})
            except RestError:
                # The key came from the copy itself: refused, it is gone already (a retried
                # delete whose first attempt arrived).
                pass
        if patch.inputs:
            self._log_inputs(target_run_id, Run(target_run_id, "", "", "", "", None, None, inputs=patch.inputs))
        if patch.artifacts:
            answer = self.client.call("GET", f"{API}/runs/get", params={"run_id": target_run_id})
            artifact_uri = answer["run"]["info"].get("artifact_uri") or ""
            source_run = Run(_source_id(answer), "", "", "", "", None, None)
            self._artifacts.upload(source_run, target_run_id, artifact_uri, patched, result)
        if patch.lifecycle_stage == DELETED or (patch.target_deleted and patch.changes_content and patch.lifecycle_stage is None):
            self._post("runs/delete", {"run_id": target_run_id})
        result.losses = losses
        return result


def _source_id(answer: dict) -> str:
    """The source run id a copy names (MLmodel files written into it name the copy instead)."""
    from trackport.provenance import SOURCE_RUN_ID_TAG

    for tag in answer["run"].get("data", {}).get("tags", []):
        if tag.get("key") == SOURCE_RUN_ID_TAG:
            return tag.get("value", "")
    return answer["run"]["info"].get("run_id", "")
