"""Writing MLflow 3's logged models (with their files) into a tracking server, and what the
registry's writer (registry_sink) shares with it: creating an object safely, and the end
of a transfer. Mixed into RestSink.

A server makes logged model ids itself, so every logged model trackport writes names its
source in provenance.SOURCE_UNIT_TAG and gets provenance.COMPLETE_TAG last: one without
it is deleted and written again. Calls per logged model: create, a log-batch per run its
metrics were logged in, one per link, one upload per file, finalize, the completion tag.
Its times cannot be set.
"""
from __future__ import annotations

import threading
from typing import Any, Callable
from urllib.parse import quote

from trackport.errors import TransientError, UnitError, UnreachableError
from trackport.kinds import Unit
from trackport.models import MODEL_VERSIONS_TAG
from trackport.models import metric_value_from_json, metric_value_to_json
from trackport.provenance import COMPLETE_TAG, ORIGINAL_MODEL_VERSIONS_TAG, SOURCE_UNIT_TAG, is_provenance_tag, rewrite_mlmodel
from trackport.stores.base import UnitContent, UnitWriteResult
from trackport.stores.rest.artifacts import ArtifactUploader
from trackport.stores.rest.copies import COMPLETE_VALUE
from trackport.stores.rest.model_copies import LoggedModelCopies, RegistryCopies
from trackport.stores.rest.http import API, RestClient, RestError

MAX_METRICS_PER_BATCH = 1000  # log-batch's limit
CREATE_ATTEMPTS = 5  # asking again for an object whose creation got no answer (looked for first)
_FINAL_STATUS = {"READY": "LOGGED_MODEL_READY", "FAILED": "LOGGED_MODEL_UPLOAD_FAILED"}


def tag_list(tags: dict[str, str]) -> list[dict]:
    return [{"key": k, "value": v} for k, v in tags.items()]


def own_tags(tags: dict[str, str], source_id: str) -> dict[str, str]:
    """The source's tags, without provenance tags an earlier copy carried, naming the source."""
    return {**{k: v for k, v in tags.items() if not is_provenance_tag(k)}, SOURCE_UNIT_TAG: source_id}


class RestModelsSink:
    """Logged models and the registry into a tracking server (RestSink's part)."""

    client: RestClient
    on_existing_model: str
    _artifacts: ArtifactUploader

    def _init_models(self) -> None:
        self._logged_copies = LoggedModelCopies(self.client)
        self._registry = RegistryCopies(self.client)
        self._models_lock = threading.Lock()
        self._run_locks: dict[str, threading.Lock] = {}
        self._to_delete: set[str] = set()  # logged models the source deleted (see finish)

    def _call(self, method: str, endpoint: str, body: dict | None = None, *, idempotent: bool = True) -> dict[str, Any]:
        return self.client.call(method, f"{API}/{endpoint}", body=body, idempotent=idempotent)

    def _create(self, what: str, endpoint: str, request: dict, after_lost_answer: Callable[[], Any], *, exists_ok: bool = False) -> Any:
        """POST a creation, which is not idempotent. After a lost answer the server may have
        acted: after_lost_answer() looks (or clears away what it made) before asking again,
        and ends the asking with what it returns, unless None. A refusal is the unit's error;
        exists_ok: "it exists already" ends the asking with None."""
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                return self._call("POST", endpoint, request, idempotent=False)
            except RestError as exc:
                if exists_ok and exc.error_code == "RESOURCE_ALREADY_EXISTS":
                    return None
                raise UnitError(f"{what}: the target refused it: {exc}") from None
            except (UnreachableError, TransientError):
                if attempt >= CREATE_ATTEMPTS:
                    raise
                found = after_lost_answer()
                if found is not None:
                    return found
        raise AssertionError("unreachable")

    def finish(self, counts: dict) -> None:
        """Delete the logged models the source deleted, now that the versions registered from
        them are written (a server refuses to register a version of a deleted model)."""
        with self._models_lock:
            pending, self._to_delete = sorted(self._to_delete), set()
        for model_id in pending:
            self._logged_copies.delete(model_id)

    # ------------------------------------------------------------------ logged models

    def find_logged_model(self, unit: Unit, target_experiment_id: str) -> str | None:
        """The complete copy in the target experiment (partial ones are deleted first)."""
        copy = self._logged_copies.find(unit.unit_id, str(target_experiment_id))
        if copy is None:
            return None
        if unit.body.get("lifecycle_stage") == "deleted" and copy.active:  # stopped before it was deleted
            self._delete_at_the_end(str(target_experiment_id), unit.unit_id, copy.target_id)
        return copy.target_id

    def _delete_at_the_end(self, exp_id: str, source_id: str, target_id: str) -> None:
        """A copy of a logged model the source deleted: recorded on its experiment (a deleted
        one is found by nothing else), deleted when the transfer ends (see finish)."""
        self._logged_copies.record_deleted(exp_id, source_id, target_id)
        with self._models_lock:
            self._to_delete.add(target_id)

    def lookup_logged_model(self, source_id: str, target_experiment_id: str | None) -> str | None:
        return self._logged_copies.lookup(source_id, str(target_experiment_id)) if target_experiment_id else None

    def put_logged_model(self, unit: Unit, target_experiment_id: str, content: UnitContent) -> UnitWriteResult:
        exp_id, body = str(target_experiment_id), unit.body
        tags = own_tags(body.get("tags") or {}, unit.unit_id)
        tags[ORIGINAL_MODEL_VERSIONS_TAG] = tags.get(MODEL_VERSIONS_TAG, "")  # what registering adds is undone
        request: dict[str, Any] = {
            "experiment_id": exp_id, "name": unit.name, "params": tag_list(body.get("params") or {}), "tags": tag_list(tags),
        }
        request.update({k: v for k, v in (("model_type", body.get("model_type")), ("source_run_id", unit.target("run"))) if v})
        info = self._create(f"logged model {unit.name!r} ({unit.unit_id})", "logged-models", request,
                            lambda: self._logged_copies.delete_incomplete(exp_id, unit.unit_id))["model"]["info"]
        model_id, artifact_uri = info["model_id"], info.get("artifact_uri") or ""
        result = UnitWriteResult(model_id)
        try:
            self._log_model_metrics(unit, model_id, result.losses)
            self._link_runs(unit, model_id, result.losses)
            ids = {**unit.id_changes(), unit.unit_id: model_id}
            locations = {body.get("artifact_location") or "": artifact_uri}
            self._artifacts.upload_files(
                f"logged model {unit.unit_id}", artifact_uri, content, result, lambda data: rewrite_mlmodel(data, ids, locations)
            )
            self._finalize(model_id, body, result.losses)
            self._call("PATCH", f"logged-models/{quote(model_id)}/tags", {"tags": [{"key": COMPLETE_TAG, "value": COMPLETE_VALUE}]})
        except BaseException:
            try:
                self._logged_copies.delete(model_id)
            except Exception:  # noqa: BLE001 - best effort; the original error matters
                pass
            raise
        self._logged_copies.written(exp_id, unit.unit_id, model_id)
        if body.get("lifecycle_stage") == "deleted":  # if this stops, the next find does it
            self._delete_at_the_end(exp_id, unit.unit_id, model_id)
        return result

    def _log_model_metrics(self, unit: Unit, model_id: str, losses: list[str]) -> None:
        """A server keeps a logged model's metrics as points of a run logged with model_id."""
        by_run: dict[str, list[dict]] = {}
        unwritten: dict[str, int] = {}
        for metric in unit.body.get("metrics") or ():
            ref = metric.get("run")
            run_id = unit.target(ref) if ref else None
            if run_id is None:
                why = f"their run {unit.refs.get(ref)} is not in the target" if ref else "they were logged in no run"
                unwritten[why] = unwritten.get(why, 0) + 1
                continue
            point = {
                "key": metric["key"],
                "value": metric_value_to_json(metric_value_from_json(metric["value"])),  # NaN as "NaN", never bare
                "timestamp": int(metric["timestamp"]),
                "step": int(metric["step"]),
                "model_id": model_id,
            }
            point.update({k: metric[k] for k in ("dataset_name", "dataset_digest") if metric.get(k)})
            by_run.setdefault(run_id, []).append(point)
        losses += [f"{n} metric point(s) not written: {why}" for why, n in unwritten.items()]
        special = sum(isinstance(p["value"], str) for points in by_run.values() for p in points)
        if special and not self.capabilities.keeps_infinity:  # type: ignore[attr-defined]
            losses.append(f"{special} metric point(s) NaN or ±inf: a SQL-backed server keeps a logged model's NaN as 0"
                          " and ±inf as ±1.7976931348623157e308")
        for run_id, points in by_run.items():
            self._nan_where_the_run_has_it(run_id, points)
            for i in range(0, len(points), MAX_METRICS_PER_BATCH):
                chunk = points[i : i + MAX_METRICS_PER_BATCH]
                self._into_run(run_id, "runs/log-batch", {"run_id": run_id, "metrics": chunk, "params": [], "tags": []})

    def _nan_where_the_run_has_it(self, run_id: str, points: list[dict]) -> None:
        """A SQL-backed server keeps a logged model's NaN as 0.0, and its run's point as NaN.
        Each point sent is logged into the run too: a 0.0 where the run holds NaN (same key,
        step and time) goes as NaN, or the run would get a 0.0 point it never had."""
        for key in sorted({p["key"] for p in points if p["value"] == 0.0}):
            history = self.client.call("GET", f"{API}/metrics/get-history", params={"run_id": run_id, "metric_key": key})
            nan_at = {(int(m.get("step", 0)), int(m.get("timestamp", 0))) for m in history.get("metrics") or () if m.get("value") == "NaN"}
            for point in points:
                if point["key"] == key and point["value"] == 0.0 and (point["step"], point["timestamp"]) in nan_at:
                    point["value"] = "NaN"

    def _link_runs(self, unit: Unit, model_id: str, losses: list[str]) -> None:
        for link in unit.body.get("links") or ():
            run_id = unit.target(link["run"])
            if run_id is None:
                losses.append(f"{link['direction']} link to run {unit.refs.get(link['run'])} not written: the run is not in the target")
            elif link["direction"] == "output":
                body = {"run_id": run_id, "models": [{"model_id": model_id, "step": int(link.get("step", 0))}]}
                self._into_run(run_id, "runs/outputs", body, idempotent=False)  # a second one is refused
            else:
                self._into_run(run_id, "runs/log-inputs", {"run_id": run_id, "datasets": [], "models": [{"model_id": model_id}]}, idempotent=False)

    def _into_run(self, run_id: str, endpoint: str, body: dict, *, idempotent: bool = True) -> None:
        """A write into a target run. A server refuses writes into a deleted run: such a run
        is restored for the write and deleted again (one worker at a time per run)."""
        try:
            self._call("POST", endpoint, body, idempotent=idempotent)
            return
        except RestError as exc:
            if "must be in the 'active' state" not in str(exc):
                raise
        with self._models_lock:
            lock = self._run_locks.setdefault(run_id, threading.Lock())
        with lock:
            self._call("POST", "runs/restore", {"run_id": run_id})
            try:
                self._call("POST", endpoint, body, idempotent=idempotent)
            finally:
                self._call("POST", "runs/delete", {"run_id": run_id})

    def _finalize(self, model_id: str, body: dict, losses: list[str]) -> None:
        status = body.get("status") or "UNSPECIFIED"  # a model is made PENDING
        if status in _FINAL_STATUS:
            self._call("PATCH", f"logged-models/{quote(model_id)}", {"model_id": model_id, "status": _FINAL_STATUS[status]})
        elif status != "PENDING":
            losses.append(f"status {status}: a server sets only READY or FAILED; it stays PENDING")
        if body.get("status_message"):
            losses.append("its status message: a server keeps none it is sent")
