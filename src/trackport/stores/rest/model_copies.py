"""Earlier copies of logged models, registered models and versions in a tracking server,
found by provenance.SOURCE_UNIT_TAG and the completion tag (as copies.py finds runs):
LoggedModelCopies per target experiment, RegistryCopies per registered model. Safe for
the engine's workers to share."""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import quote

from trackport.models import MODEL_VERSIONS_TAG, is_prompt
from trackport.provenance import COMPLETE_TAG, DELETED_MODEL_PREFIX, ORIGINAL_MODEL_VERSIONS_TAG, SOURCE_UNIT_TAG
from trackport.stores.rest.copies import COMPLETE_VALUE, ReadOnce
from trackport.stores.rest.http import API, NotFoundError, RestClient
from trackport.stores.rest.models_source import LOGGED_MODELS_PAGE, search_versions

_SIMPLE_ID = re.compile(r"^[\w\-]+$")




def _tag_dict(items: list[dict] | None) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in items or () if "key" in t}


@dataclass
class ModelCopy:
    """A logged model in the target that names a source logged model."""

    target_id: str
    complete: bool
    active: bool  # False: deleted (known from the experiment's record only)


class LoggedModelCopies:
    """For each target experiment, the logged models that carry SOURCE_UNIT_TAG (one
    search) and the deleted copies recorded on the experiment; kept up to date with what
    this sink writes and deletes. Safe for the engine's workers to share."""

    def __init__(self, client: RestClient) -> None:
        self._client = client
        self._indexes = ReadOnce()  # target experiment id -> {source model id -> copies}
        self._lock = self._indexes.lock

    def _search(self, target_experiment_id: str, source_id: str | None = None) -> Iterator[dict]:
        where = f"tags.`{SOURCE_UNIT_TAG}` = '{source_id}'" if source_id else f"tags.`{SOURCE_UNIT_TAG}` != ''"
        body = {"experiment_ids": [target_experiment_id], "filter": where, "max_results": LOGGED_MODELS_PAGE}
        for answer in self._client.pages("POST", f"{API}/logged-models/search", body):
            yield from answer.get("models") or ()

    def _of(self, target_experiment_id: str) -> dict[str, list[ModelCopy]]:
        return self._indexes.get(target_experiment_id, lambda: self._read(target_experiment_id))

    def _read(self, target_experiment_id: str) -> dict[str, list[ModelCopy]]:
        index: dict[str, list[ModelCopy]] = {}
        active = set()
        for found in self._search(target_experiment_id):
            info = found.get("info") or {}
            tags = _tag_dict(info.get("tags"))
            if tags.get(SOURCE_UNIT_TAG):  # the filter says so; a server may not apply it
                copy = ModelCopy(info["model_id"], tags.get(COMPLETE_TAG) == COMPLETE_VALUE, True)
                index.setdefault(tags[SOURCE_UNIT_TAG], []).append(copy)
                active.add(info["model_id"])
        answer = self._client.call("GET", f"{API}/experiments/get", params={"experiment_id": target_experiment_id})
        for key, target_id in _tag_dict((answer.get("experiment") or {}).get("tags")).items():
            if key.startswith(DELETED_MODEL_PREFIX) and target_id not in active:
                index.setdefault(key[len(DELETED_MODEL_PREFIX):], []).append(ModelCopy(target_id, True, False))
        return index

    def find(self, source_id: str, target_experiment_id: str) -> ModelCopy | None:
        """The complete copy of the source logged model, after deleting its partial copies."""
        index = self._of(target_experiment_id)
        with self._lock:
            copies = list(index.get(source_id, ()))
        complete = next((c for c in copies if c.complete and c.active), None) or next((c for c in copies if c.complete), None)
        for copy in copies:
            if not copy.complete and copy.active:  # left by an interrupted transfer
                self.delete(copy.target_id)
        with self._lock:
            if complete is None:
                index.pop(source_id, None)
            else:
                index[source_id] = [complete]
        return complete

    def lookup(self, source_id: str, target_experiment_id: str) -> str | None:
        index = self._of(target_experiment_id)
        with self._lock:
            complete = next((c for c in index.get(source_id, ()) if c.complete), None)
        return complete.target_id if complete is not None else None

    def written(self, target_experiment_id: str, source_id: str, target_id: str) -> None:
        with self._lock:
            index = self._indexes.peek(target_experiment_id)
            if index is not None:
                index[source_id] = [ModelCopy(target_id, True, True)]

    def record_deleted(self, target_experiment_id: str, source_id: str, target_id: str) -> None:
        """Remember on the experiment a copy about to be deleted (see DELETED_MODEL_PREFIX)."""
        body = {"experiment_id": target_experiment_id, "key": DELETED_MODEL_PREFIX + source_id, "value": target_id}
        self._client.call("POST", f"{API}/experiments/set-experiment-tag", body=body)

    def delete(self, target_id: str) -> None:
        try:
            self._client.call("DELETE", f"{API}/logged-models/{quote(target_id, safe='')}")
        except NotFoundError:
            pass

    def delete_incomplete(self, target_experiment_id: str, source_id: str) -> None:
        """Delete the copies of source_id that are not complete: what a create whose answer
        was lost may have made."""
        found = self._search(target_experiment_id, source_id if _SIMPLE_ID.match(source_id) else None)
        for model in found:
            info = model.get("info") or {}
            tags = _tag_dict(info.get("tags"))
            if tags.get(SOURCE_UNIT_TAG) == source_id and tags.get(COMPLETE_TAG) != COMPLETE_VALUE:
                self.delete(info["model_id"])


@dataclass
class TargetVersion:
    number: int
    source_id: str | None  # the SOURCE_UNIT_TAG of a version trackport wrote
    complete: bool


@dataclass
class TargetModel:
    """A registered model (or prompt) of the target, as this sink knows it."""

    name: str
    exists: bool
    ours: bool = False  # it carries SOURCE_UNIT_TAG: trackport made it
    complete: bool = False
    prompt: bool = False
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version number
    versions: dict[int, TargetVersion] | None = None  # read when first needed
    # Held while one of its versions is written: numbers are given one at a time.
    lock: threading.RLock = field(default_factory=threading.RLock)


class RegistryCopies:
    """The target's registered models and their versions, each read once and kept up to
    date with what this sink writes (a model's versions are written one after another:
    each refers to the one before it)."""

    def __init__(self, client: RestClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._models: dict[str, TargetModel] = {}
        self._artifact_uris: dict[tuple[str, str], str | None] = {}

    def artifact_uri(self, kind: str, object_id: str) -> str | None:
        """Where the target keeps the files of a run or logged model (what a version's source
        that is a path under them is moved under). Read once."""
        key = (kind, object_id)
        with self._lock:
            if key in self._artifact_uris:
                return self._artifact_uris[key]
        endpoint, params = ("runs/get", {"run_id": object_id}) if kind == "run" else (
            f"logged-models/{quote(object_id, safe='')}", {"allow_deleted": "true"})
        try:
            answer = self._client.call("GET", f"{API}/{endpoint}", params=params)
            uri = (answer.get("run") or answer.get("model") or {}).get("info", {}).get("artifact_uri")
        except NotFoundError:
            uri = None
        with self._lock:
            self._artifact_uris[key] = uri
        return uri

    def model(self, name: str, *, reread: bool = False) -> TargetModel:
        with self._lock:
            known = self._models.get(name)
        if known is not None and not reread:
            return known
        try:
            data = self._client.call("GET", f"{API}/registered-models/get", params={"name": name})["registered_model"]
        except NotFoundError:
            data = None
        with self._lock:
            model = self._models.setdefault(name, TargetModel(name, False))
            if data is None:
                model.exists = False
            else:
                tags = _tag_dict(data.get("tags"))
                model.exists, model.ours = True, tags.get(SOURCE_UNIT_TAG) == name
                model.complete, model.prompt = tags.get(COMPLETE_TAG) == COMPLETE_VALUE, is_prompt(tags)
                model.aliases = {a["alias"]: str(a["version"]) for a in data.get("aliases") or () if "alias" in a}
            return model

    def versions(self, model: TargetModel) -> dict[int, TargetVersion]:
        """The model's versions the server shows (deleted ones it never does)."""
        with model.lock:
            if model.versions is None:
                model.versions = {}
                for data in search_versions(self._client, model.name, model.prompt):
                    tags = _tag_dict(data.get("tags"))
                    number = int(data["version"])
                    model.versions[number] = TargetVersion(
                        number, tags.get(SOURCE_UNIT_TAG), tags.get(COMPLETE_TAG) == COMPLETE_VALUE
                    )
            return model.versions

    def delete_version(self, model: TargetModel, number: int) -> None:
        try:
            self._client.call("DELETE", f"{API}/model-versions/delete", body={"name": model.name, "version": str(number)})
        except NotFoundError:
            pass
        with model.lock:
            (model.versions or {}).pop(number, None)

    def restore_registrations(self, model_id: str) -> None:
        """Set the logged model's mlflow.modelVersions back to the source's value, kept in
        ORIGINAL_MODEL_VERSIONS_TAG when trackport wrote the copy: the server adds an entry
        for every version registered from it, numbers used up and deleted again included."""
        endpoint = f"{API}/logged-models/{quote(model_id, safe='')}"
        tags = _tag_dict(((self._client.call("GET", endpoint).get("model") or {}).get("info") or {}).get("tags"))
        if ORIGINAL_MODEL_VERSIONS_TAG not in tags:  # not a copy trackport wrote
            return
        original, current = tags[ORIGINAL_MODEL_VERSIONS_TAG], tags.get(MODEL_VERSIONS_TAG)
        if _registered(original) == _registered(current):
            return
        if original:
            self._client.call("PATCH", f"{endpoint}/tags", body={"tags": [{"key": MODEL_VERSIONS_TAG, "value": original}]})
        else:
            self._client.call("DELETE", f"{endpoint}/tags/{quote(MODEL_VERSIONS_TAG, safe='')}")


def _registered(value: str | None) -> set | None:
    """The (name, version) entries of an mlflow.modelVersions value as a set (a server writes
    versions as numbers or text); None for a value that is no such list."""
    try:
        entries = json.loads(value) if value else []
    except ValueError:
        return None
    if not isinstance(entries, list):
        return None
    return {(str(e["name"]), str(e["version"])) for e in entries if isinstance(e, dict) and "name" in e and "version" in e}
