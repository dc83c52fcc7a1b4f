"""Writing MLflow 3's model objects into a tracking server: logged models (with their
files), registered models and prompts, model versions. Mixed into RestSink.

A server makes logged model ids and numbers versions itself (one more than the highest
number it ever gave, deleted versions included). So every object trackport writes names
its source in provenance.SOURCE_UNIT_TAG and gets provenance.COMPLETE_TAG last: a logged
model without it is deleted and written again, a registered model or version without it
is finished in place (deleting those would lose versions or shift numbers). Versions are
written oldest first; a number the source deleted (`deleted_before`, and `deleted_after`
once the newest version is complete) is used up by creating a version and deleting it
again. A registered model trackport did not write is left to on_existing_model.

Calls per logged model: create, a log-batch per run its metrics were logged in, one per
link, one upload per file, finalize, the completion tag. Per version: create (and a create
and a delete per number used up), one per alias, one for the stage, the completion tag;
per registered model a GET and a versions search. Times and users cannot be set.
"""
from __future__ import annotations

import threading
from typing import Any, Callable
from urllib.parse import quote

from trackport import kinds
from trackport.errors import TransientError, UnitError, UnreachableError
from trackport.kinds import Unit
from trackport.models import MODEL_VERSIONS_TAG, PROMPT_EXPERIMENTS_TAG, PROMPT_SOURCES, linked_experiments, reserved_alias
from trackport.models import metric_value_from_json, metric_value_to_json, split_version_id, version_id
from trackport.provenance import COMPLETE_TAG, SOURCE_UNIT_TAG, is_provenance_tag, rewrite_mlmodel, rewrite_version_source
from trackport.stores.base import UnitContent, UnitWriteResult
from trackport.stores.rest.artifacts import ArtifactUploader
from trackport.stores.rest.copies import COMPLETE_VALUE, ORIGINAL_MODEL_VERSIONS_TAG, LoggedModelCopies, RegistryCopies
from trackport.stores.rest.copies import TargetModel, TargetVersion
from trackport.stores.rest.http import API, RestClient, RestError

MAX_METRICS_PER_BATCH = 1000  # log-batch's limit
CREATE_ATTEMPTS = 5  # asking again for an object whose creation got no answer (looked for first)
_FINAL_STATUS = {"READY": "LOGGED_MODEL_READY", "FAILED": "LOGGED_MODEL_UPLOAD_FAILED"}


def _tag_list(tags: dict[str, str]) -> list[dict]:
    return [{"key": k, "value": v} for k, v in tags.items()]


def _own_tags(tags: dict[str, str], source_id: str) -> dict[str, str]:
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
        tags = _own_tags(body.get("tags") or {}, unit.unit_id)
        tags[ORIGINAL_MODEL_VERSIONS_TAG] = tags.get(MODEL_VERSIONS_TAG, "")  # what registering adds is undone
        request: dict[str, Any] = {
            "experiment_id": exp_id, "name": unit.name, "params": _tag_list(body.get("params") or {}), "tags": _tag_list(tags),
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

    # ------------------------------------------------------------------ registered models

    def find_registered_model(self, unit: Unit, target_experiment_id: str | None) -> str | None:
        return self.lookup_registered_model(unit.unit_id, target_experiment_id)

    def lookup_registered_model(self, source_id: str, target_experiment_id: str | None) -> str | None:
        """The name, when the target holds a complete copy of ours of that model."""
        model = self._registry.model(source_id)
        return source_id if model.exists and model.ours and model.complete else None

    def put_registered_model(self, unit: Unit, target_experiment_id: str | None) -> UnitWriteResult:
        name, body = unit.unit_id, unit.body
        tags = _own_tags(body.get("tags") or {}, name)
        if PROMPT_EXPERIMENTS_TAG in tags:  # a prompt's linked experiments, as the target numbers them
            target_of = {unit.source_refs.get(n, i): i for n, i in unit.refs.items()
                         if kinds.ref_kind(n) == "experiment" and n not in unit.missing}
            ids = [target_of[e] for e in linked_experiments(tags) if e in target_of]
            tags[PROMPT_EXPERIMENTS_TAG] = f",{','.join(ids)}," if ids else ""
        model, created = self._registry.model(name), False
        if not model.exists:
            model, created = self._create_registered_model(name, body.get("description"), tags)
        if not model.ours:
            return self._someone_elses(name)
        if not created:  # left unfinished by an interrupted transfer: finished in place
            self._call("PATCH", "registered-models/update", {"name": name, "description": body.get("description") or ""})
            for key, value in tags.items():
                self._call("POST", "registered-models/set-tag", {"name": name, "key": key, "value": value})
        self._call("POST", "registered-models/set-tag", {"name": name, "key": COMPLETE_TAG, "value": COMPLETE_VALUE})
        model.complete = True
        return UnitWriteResult(name)

    def _create_registered_model(self, name: str, description: str | None, tags: dict[str, str]) -> tuple[TargetModel, bool]:
        """(the model, whether this call made it). A prompt is made with its prompt tag."""
        request = {"name": name, "tags": _tag_list(tags), **({"description": description} if description else {})}
        # Made meanwhile (by an attempt whose answer was lost, or by someone else): looked at again.
        made = self._create(f"registered model {name!r}", "registered-models/create", request,
                            lambda: self._registry.model(name, reread=True).exists or None, exists_ok=True)
        return self._registry.model(name, reread=True), isinstance(made, dict)

    def _someone_elses(self, name: str) -> UnitWriteResult:
        held = "the target holds a registered model of this name that trackport did not write; "
        if self.on_existing_model == "skip":
            return UnitWriteResult(name, "skipped", reason=held + "it and its versions are left as they are (--on-existing-model skip)")
        if self.on_existing_model == "append":
            return UnitWriteResult(name, "skipped", reason=held + "it is left as it is, and the versions are appended to it"
                                   " with the numbers the target gives (--on-existing-model append)")
        raise UnitError(f"registered model {name!r} exists in the target and was not written by trackport; pass"
                        " --on-existing-model skip to leave it and its versions alone, or --on-existing-model append"
                        " to add the versions to it")

    # ------------------------------------------------------------------ model versions

    def _model_of(self, unit: Unit) -> TargetModel:
        return self._registry.model(unit.target("registered_model") or split_version_id(unit.unit_id)[0])

    def find_model_version(self, unit: Unit, target_experiment_id: str | None) -> str | None:
        """'<name>/<number>' of the complete copy of ours; versions of ours left active on
        numbers the source deleted (by an interrupted transfer) are deleted."""
        model = self._model_of(unit)
        if not model.exists or not (model.ours or self.on_existing_model == "append"):
            return None
        with model.lock:
            copy = self._copy_of(model, unit.unit_id)
            if copy is not None and model.ours:
                self._drop_stand_ins(model, unit)
        return None if copy is None else version_id(model.name, copy.number)

    def lookup_model_version(self, source_id: str, target_experiment_id: str | None) -> str | None:
        model = self._registry.model(split_version_id(source_id)[0])
        copy = self._copy_of(model, source_id) if model.exists else None
        return None if copy is None else version_id(model.name, copy.number)

    def _copy_of(self, model: TargetModel, source_id: str) -> TargetVersion | None:
        """The complete version of ours that copies source_id."""
        return next((v for v in self._registry.versions(model).values() if v.source_id == source_id and v.complete), None)

    def _drop_stand_ins(self, model: TargetModel, unit: Unit) -> set[int]:
        """Delete the versions of ours left on numbers the source deleted (by an interrupted
        transfer); the numbers of the unit's other incomplete copies."""
        stand_ins = set(unit.body.get("deleted_before") or ()) | set(unit.body.get("deleted_after") or ())
        left, dropped = set(), False
        for version in list(self._registry.versions(model).values()):
            if version.source_id == unit.unit_id and not version.complete:
                if version.number in stand_ins:
                    self._registry.delete_version(model, version.number)
                    dropped = True
                else:
                    left.add(version.number)
        if dropped and self._registered_from(unit):
            self._registry.restore_registrations(self._registered_from(unit))
        return left

    def put_model_version(self, unit: Unit, target_experiment_id: str | None) -> UnitWriteResult:
        model = self._model_of(unit)
        if not model.exists:
            raise UnitError(f"model version {unit.unit_id!r}: the target holds no registered model {model.name!r}")
        appending = not model.ours
        if appending and self.on_existing_model != "append":
            why = f"registered model {model.name!r} of the target was not written by trackport (--on-existing-model {self.on_existing_model})"
            if self.on_existing_model == "fail":  # the model failed (and so its versions, before this is asked)
                raise UnitError(why)
            return UnitWriteResult("", "skipped", reason=why)
        wanted, losses = int(unit.body["version"]), []
        with model.lock:
            left = self._drop_stand_ins(model, unit) if not appending else {
                v.number for v in self._registry.versions(model).values() if v.source_id == unit.unit_id and not v.complete}
            request = self._version_request(model, unit)
            if left:  # an interrupted transfer made it: finished in place, never made again
                number = wanted if wanted in left else min(left)
            else:
                number = self._create_numbered(model, unit, request, 0 if appending else wanted)
            if number != wanted:
                why = "appended to a model trackport did not write" if appending else "the target's model holds versions trackport did not write"
                losses.append(f"version {wanted} became {number}: {why}")
            self._finish_version(model, unit, number, appending, losses)
            if unit.body.get("deleted_after") and not appending:  # the numbers after the newest
                self._create_numbered(model, unit, request, max(unit.body["deleted_after"]), use_up=True)
            if not appending and self._registered_from(unit):  # the source's list, not the server's
                self._registry.restore_registrations(self._registered_from(unit))
        return UnitWriteResult(version_id(model.name, number), losses=losses)

    def _version_request(self, model: TargetModel, unit: Unit) -> dict[str, Any]:
        body = unit.body
        run_id, model_id = unit.target("run"), unit.target("logged_model")
        source = body["source"]
        if source not in PROMPT_SOURCES:
            changes = {unit.source_refs[n]: unit.refs[n] for n in ("run", "logged_model") if n in unit.source_refs and unit.target(n)}
            under_a_root = not source.startswith(("models:/", "runs:/"))  # a path under the run's or model's files
            source = rewrite_version_source(
                source, changes,
                run_artifact_uri=self._registry.artifact_uri("run", run_id) if under_a_root and run_id else None,
                model_artifact_location=self._registry.artifact_uri("logged_model", model_id) if under_a_root and model_id else None,
            )
        request: dict[str, Any] = {"name": model.name, "source": source, "tags": _tag_list(_own_tags(body.get("tags") or {}, unit.unit_id))}
        request.update({k: v for k, v in (("description", body.get("description")), ("run_link", body.get("run_link")), ("run_id", run_id)) if v})
        if model_id and not source.startswith("runs:/"):  # a server refuses a runs:/ source with a model
            request["model_id"] = model_id  # it requires one for a models:/ source
        return request

    def _create_numbered(self, model: TargetModel, unit: Unit, request: dict, wanted: int, *, use_up: bool = False) -> int:
        """Create the version until the server gives it `wanted` or more; a lower number is
        one the source deleted, used up (deleted again). use_up: every number up to `wanted` is."""
        while True:
            number = self._create_version(model, unit, request)
            if number < wanted or use_up:  # a number the source deleted: deleted again
                self._registry.delete_version(model, number)
            if number >= wanted:
                return number

    def _registered_from(self, unit: Unit) -> str | None:
        """The logged model of the target a server adds the version to mlflow.modelVersions of."""
        source = unit.body["source"]
        return None if source.startswith(("runs:/", *PROMPT_SOURCES)) else unit.target("logged_model")

    def _create_version(self, model: TargetModel, unit: Unit, request: dict) -> int:
        """A new version; after a lost answer, a version of ours the server made is taken."""
        known = set(self._registry.versions(model))

        def made() -> int | None:
            model.versions = None  # read again
            numbers = [n for n, v in self._registry.versions(model).items() if n not in known and v.source_id == unit.unit_id]
            return max(numbers) if numbers else None

        answer = self._create(f"model version {unit.unit_id!r}", "model-versions/create", request, made)
        number = answer if isinstance(answer, int) else int(answer["model_version"]["version"])
        self._registry.versions(model)[number] = TargetVersion(number, unit.unit_id, False)
        return number

    def _finish_version(self, model: TargetModel, unit: Unit, number: int, appending: bool, losses: list[str]) -> None:
        """Aliases, stage, then the completion tag."""
        body, version = unit.body, str(number)
        for alias in body.get("aliases") or ():
            current = model.aliases.get(alias)
            if reserved_alias(alias):
                losses.append(f"alias {alias!r} not set: a server keeps that name for itself")
            elif appending and current not in (None, version):
                losses.append(f"alias {alias!r} not moved: the target's model has it on its version {current}")
            else:
                self._call("POST", "registered-models/alias", {"name": model.name, "alias": alias, "version": version})
                model.aliases[alias] = version
        stage = body.get("current_stage")
        if stage and stage != "None" and not model.prompt:
            self._call("POST", "model-versions/transition-stage",
                       {"name": model.name, "version": version, "stage": stage, "archive_existing_versions": False})
        if (body.get("status") or "READY") != "READY":
            losses.append(f"status {body['status']}: a server makes every version READY")
        if body.get("status_message"):
            losses.append("its status message: a server keeps none it is sent")
        self._call("POST", "model-versions/set-tag", {"name": model.name, "version": version, "key": COMPLETE_TAG, "value": COMPLETE_VALUE})
        self._registry.versions(model)[number] = TargetVersion(number, unit.unit_id, True)
