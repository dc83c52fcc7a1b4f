"""Writing the model registry into a tracking server: registered models and prompts, and
model versions with their numbers kept. Mixed into RestSink (with models_sink's logged models).

A registered model or version trackport writes names its source in
provenance.SOURCE_UNIT_TAG and gets provenance.COMPLETE_TAG last; one without it is
finished in place (deleting a registered model deletes its versions, deleting a version
uses up its number). A server numbers a new version one more than the highest number it
ever gave, deleted versions included: versions are written oldest first, and a number the
source deleted (`deleted_before`, and `deleted_after` once the newest version is complete)
is used up by creating a version and deleting it again. A registered model trackport did
not write is left to on_existing_model.

Calls per version: create (with the completion tag when nothing follows it), one per
alias, one for the stage, the completion tag otherwise, a create and a delete per number
used up, and for a version of a logged model the GET (and PATCH) putting back the source's
mlflow.modelVersions; per registered model a GET and a versions search. Times and users
cannot be set.
"""
from __future__ import annotations

from typing import Any

from trackport import kinds
from trackport.errors import UnitError
from trackport.kinds import Unit
from trackport.models import PROMPT_EXPERIMENTS_TAG, PROMPT_SOURCES, linked_experiments, reserved_alias
from trackport.models import split_version_id, version_id
from trackport.provenance import COMPLETE_TAG, rewrite_version_source
from trackport.stores.base import UnitWriteResult
from trackport.stores.rest.copies import COMPLETE_VALUE
from trackport.stores.rest.model_copies import TargetModel, TargetVersion
from trackport.stores.rest.models_sink import RestModelsSink, own_tags, tag_list


def _finishing(unit: Unit, model: TargetModel) -> bool:
    """Whether a version needs calls after its creation: aliases, a stage, or numbers the
    source deleted to use up around it (a version made while using them up must not pass
    for the complete copy)."""
    body = unit.body
    stage = body.get("current_stage")
    return bool(body.get("aliases") or body.get("deleted_before") or body.get("deleted_after")
                or (stage and stage != "None" and not model.prompt))



class RestRegistrySink(RestModelsSink):
    """Registered models, prompts and versions into a tracking server (RestSink's part)."""


    def find_registered_model(self, unit: Unit, target_experiment_id: str | None) -> str | None:
        return self.lookup_registered_model(unit.unit_id, target_experiment_id)

    def lookup_registered_model(self, source_id: str, target_experiment_id: str | None) -> str | None:
        """The name, when the target holds a complete copy of ours of that model."""
        model = self._registry.model(source_id)
        return source_id if model.exists and model.ours and model.complete else None

    def put_registered_model(self, unit: Unit, target_experiment_id: str | None) -> UnitWriteResult:
        name, body = unit.unit_id, unit.body
        tags = own_tags(body.get("tags") or {}, name)
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
        request = {"name": name, "tags": tag_list(tags), **({"description": description} if description else {})}
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
            # Nothing to do after creating it (no alias, stage or number to use up): it is
            # made complete at once, one call instead of two.
            at_once = not (left or _finishing(unit, model))
            if at_once:
                request["tags"].append({"key": COMPLETE_TAG, "value": COMPLETE_VALUE})
            if left:  # an interrupted transfer made it: finished in place, never made again
                number = wanted if wanted in left else min(left)
            else:
                number = self._create_numbered(model, unit, request, 0 if appending else wanted)
            if number != wanted:
                why = "appended to a model trackport did not write" if appending else "the target's model holds versions trackport did not write"
                losses.append(f"version {wanted} became {number}: {why}")
            self._finish_version(model, unit, number, appending, losses, tagged=at_once)
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
        request: dict[str, Any] = {"name": model.name, "source": source, "tags": tag_list(own_tags(body.get("tags") or {}, unit.unit_id))}
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

    def _finish_version(
        self, model: TargetModel, unit: Unit, number: int, appending: bool, losses: list[str], *, tagged: bool = False
    ) -> None:
        """Aliases, stage, then the completion tag (tagged: it was created with it)."""
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
        if not tagged:
            self._call("POST", "model-versions/set-tag",
                       {"name": model.name, "version": version, "key": COMPLETE_TAG, "value": COMPLETE_VALUE})
        self._registry.versions(model)[number] = TargetVersion(number, unit.unit_id, True)
