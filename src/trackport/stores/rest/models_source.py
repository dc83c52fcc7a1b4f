"""Reading MLflow 3's model objects from a tracking server: logged models (with their
files), registered models and prompts, and model versions. Mixed into RestSource.

What a server does not show, and so a REST source cannot read:

* deleted logged models: logged-models/search leaves them out, and nothing else lists
  their ids (a database source reads them). Those trackport deleted itself, as copies of
  deleted ones, it recorded on their experiment (DELETED_MODEL_PREFIX): they are read;
* deleted model versions: only the gaps they leave in the numbers (models.version_units
  turns those into `deleted_before`);
* a run of another experiment that has a logged model as an input or output: links are
  read from the runs of the model's own experiment.

Calls, per experiment that holds logged models: its logged-models/search pages (10,000
models a page); one runs/get per run of the experiment, since only runs/get returns a
run's model inputs (on config.workers threads; about 20 ms a run against a local server
with one worker, which parallel calls do not speed up: 10,000 runs cost minutes);
the output links come free with the runs listing the source made just before (see
`_remember_links`). Per logged model's files: one listing per directory, one download per
file. The registry: two registered-models/search passes (models, then prompts: a plain
search leaves prompts out), one model-versions/search per registered model, and one GET
per logged model or run behind versions (for the experiment a version belongs to; cached).
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator
from urllib.parse import quote, urlparse

from trackport._files import check_relpath
from trackport.config import TransferConfig
from trackport.domain import ArtifactFile, Experiment
from trackport.errors import UnitError
from trackport.kinds import LOGGED_MODEL, Unit
from trackport.models import (
    PROMPT_TAG,
    LoggedModelFields,
    ModelMetric,
    VersionFields,
    is_prompt,
    logged_model_unit,
    model_id_in_source,
    name_matches,
    registered_model_unit,
    version_id,
    version_units,
)
from trackport.provenance import DELETED_MODEL_PREFIX
from trackport.stores._artifact_path import walk_listing
from trackport.stores.base import Selection, Unreadable
from trackport.stores.rest.http import API, ARTIFACTS_API, NotFoundError, RestClient

LOGGED_MODELS_PAGE = 10_000
REGISTERED_MODELS_PAGE = 1_000  # the server's limit
VERSIONS_PAGE = 10_000
PROMPT_FILTER = f"tags.`{PROMPT_TAG}` = 'true'"
# The UI's route for one file of a logged model whose artifacts the server does not proxy.
LOGGED_MODEL_FILE = "/ajax-api/2.0/mlflow/logged-models/{}/artifacts/files"


def _tags(items: list[dict] | None) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in items or () if "key" in t}


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def version_search_filter(name: str, prompt: bool) -> str | None:
    """The model-versions/search filter for one model's versions (a prompt's need the
    prompt tag too, or the server leaves them out); None for a name holding both kinds of
    quote, which MLflow's filter syntax cannot hold: search without the name then."""
    if "'" not in name:
        clause = f"name='{name}'"
    elif '"' not in name:
        clause = f'name="{name}"'
    else:
        return PROMPT_FILTER if prompt else None
    return f"{clause} AND {PROMPT_FILTER}" if prompt else clause


def search_versions(client: RestClient, name: str, prompt: bool) -> Iterator[dict]:
    """Every version of one registered model or prompt the server shows (deleted ones it never does)."""
    where = version_search_filter(name, prompt)
    params: dict[str, Any] = {"max_results": VERSIONS_PAGE}
    if where:
        params["filter"] = where
    for answer in client.pages("GET", f"{API}/model-versions/search", params, in_body=False):
        for data in answer.get("model_versions") or ():
            if data.get("name") == name:  # the filter may be wider than the name (see above)
                yield data


@dataclass
class _RunLinks:
    """What one listing of an experiment's runs tells about links to logged models."""

    whole: bool  # every run of the experiment, deleted ones too
    run_ids: list[str] = field(default_factory=list)
    outputs: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # model id -> [(run id, step)]

    def saw(self, data: dict) -> None:
        info = data.get("info") or {}
        run_id = info.get("run_id") or info.get("run_uuid")
        if not run_id:
            return
        self.run_ids.append(run_id)
        for output in (data.get("outputs") or {}).get("model_outputs") or ():
            if output.get("model_id"):
                self.outputs.setdefault(output["model_id"], []).append((run_id, int(output.get("step", 0))))


class RestModelsSource:
    """Logged models, registered models and versions of a tracking server (RestSource's part)."""

    client: RestClient
    _config: TransferConfig

    def _init_models(self) -> None:
        self._links: dict[str, _RunLinks] = {}  # the last experiments' run listings
        self._links_lock = threading.Lock()
        # ("logged_model" | "run", id) -> its experiment, None when the server holds no such thing
        self._owners: dict[tuple[str, str], str | None] = {}

    # ---------------------------------------------------------------- logged models

    def _remember_links(self, experiment_id: str, whole: bool, pages: Iterator[dict]) -> Iterator[dict]:
        """The runs listing, passed through: it remembers the runs' output links and ids, so
        that iter_logged_models, asked right after, need not list the runs again."""
        links = _RunLinks(whole)
        for data in pages:
            links.saw(data)
            yield data
        with self._links_lock:  # read to the end: complete
            self._links[experiment_id] = links
            while len(self._links) > 2:  # the engine moves experiments one after another
                del self._links[next(iter(self._links))]

    def _run_links(self, experiment_id: str) -> _RunLinks:
        with self._links_lock:
            links = self._links.pop(experiment_id, None)
        if links is None or not links.whole:
            links = _RunLinks(True)
            for data in self._search_runs(experiment_id, True, None):  # type: ignore[attr-defined]
                links.saw(data)
        return links

    def _model_inputs(self, run_ids: list[str]) -> dict[str, list[str]]:
        """model id -> the runs that have it as an input (runs/get of each run)."""
        def inputs_of(run_id: str) -> list[str]:
            try:
                run = self.client.call("GET", f"{API}/runs/get", params={"run_id": run_id})["run"]
            except NotFoundError:  # deleted for good since it was listed
                return []
            return [m["model_id"] for m in (run.get("inputs") or {}).get("model_inputs") or () if m.get("model_id")]

        found: dict[str, list[str]] = {}
        with ThreadPoolExecutor(max_workers=max(1, self._config.workers), thread_name_prefix="trackport-inputs") as pool:
            for run_id, model_ids in zip(run_ids, pool.map(inputs_of, run_ids)):
                for model_id in model_ids:
                    found.setdefault(model_id, []).append(run_id)
        return found

    def iter_logged_models(self, experiment: Experiment) -> Iterator[Unit | Unreadable]:
        """The experiment's logged models (the deleted ones only where trackport recorded
        them), with the runs of the experiment that have each as an output or input."""
        body = {"experiment_ids": [experiment.experiment_id], "max_results": LOGGED_MODELS_PAGE}
        found = [(m, "active") for answer in self.client.pages("POST", f"{API}/logged-models/search", body) for m in answer.get("models") or ()]
        listed = {str((m.get("info") or {}).get("model_id")) for m, _ in found if isinstance(m, dict)}
        for key, model_id in sorted(experiment.tags.items()):
            if key.startswith(DELETED_MODEL_PREFIX) and model_id not in listed:
                with contextlib.suppress(NotFoundError):  # collected for good since
                    endpoint = f"{API}/logged-models/{quote(model_id, safe='')}"
                    found.append((self.client.call("GET", endpoint, params={"allow_deleted": "true"})["model"], "deleted"))
        if not found:
            return
        links = self._run_links(experiment.experiment_id)
        inputs = self._model_inputs(links.run_ids)
        for data, stage in found:
            info = data.get("info") if isinstance(data, dict) else None
            try:
                yield _logged_model(data, links.outputs, inputs, stage)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                model_id = str((info or {}).get("model_id") or "?") if isinstance(info, dict) else "?"
                yield Unreadable(LOGGED_MODEL.name, model_id, f"server sent an unusable logged model ({exc!r})")

    def list_unit_artifacts(self, unit: Unit) -> Iterator[ArtifactFile]:
        """Every file of a logged model, relative to its artifact root, sorted by path: from
        the proxied artifact service where the server proxies them (a deleted model's too,
        which the logged-models listing refuses), else from that listing."""
        model_id = _logged_model_id(unit)
        location = unit.body.get("artifact_location") or ""
        proxied = urlparse(location).path.strip("/") if location.startswith("mlflow-artifacts:") else None

        def list_dir(directory: str) -> list[dict]:
            if proxied is not None:  # names relative to the directory listed
                answer = self.client.call("GET", f"{ARTIFACTS_API}/artifacts", params={"path": f"{proxied}/{directory}".rstrip("/")})
                return [{**e, "path": f"{directory}/{e.get('path')}".lstrip("/")} for e in answer.get("files") or () if e.get("path")]
            params = {"artifact_directory_path": directory} if directory else None  # paths relative to the model's root
            listing = f"{API}/logged-models/{quote(model_id, safe='')}/artifacts/directories"
            return self.client.call("GET", listing, params=params).get("files") or []

        return iter(walk_listing(list_dir))

    @contextlib.contextmanager
    def open_unit_artifact(self, unit: Unit, path: str) -> Iterator[BinaryIO]:
        model_id = _logged_model_id(unit)
        try:
            clean = check_relpath(path)
        except ValueError as exc:
            raise UnitError(f"logged model {model_id}: artifact path refused: {exc}") from None
        location = unit.body.get("artifact_location") or ""
        if location.startswith("mlflow-artifacts:"):
            prefix = urlparse(location).path.strip("/")
            full = f"{prefix}/{clean}" if prefix else clean
            response = self.client.request("GET", f"{ARTIFACTS_API}/artifacts/{quote(full, safe='/')}", stream=True)
        else:
            endpoint = LOGGED_MODEL_FILE.format(quote(model_id, safe=""))
            response = self.client.request("GET", endpoint, params={"artifact_file_path": clean}, stream=True)
        with self._download(response, f"file {clean!r} of logged model {model_id}") as stream:  # type: ignore[attr-defined]
            yield stream

    # ---------------------------------------------------------------- the registry

    def _registered_models(self, selection: Selection) -> list[dict]:
        """Registered models and prompts, by name; with --model, those it names."""
        found: dict[str, dict] = {}
        for where in (None, PROMPT_FILTER):
            params: dict[str, Any] = {"max_results": REGISTERED_MODELS_PAGE, "order_by": "name ASC"}
            if where:
                params["filter"] = where
            for answer in self.client.pages("GET", f"{API}/registered-models/search", params, in_body=False):
                for data in answer.get("registered_models") or ():
                    if isinstance(data, dict) and isinstance(data.get("name"), str):
                        found.setdefault(data["name"], data)
        names = sorted(n for n in found if not selection.models or name_matches(n, selection.models))
        return [found[n] for n in names]

    def iter_registered_models(self, selection: Selection) -> Iterator[Unit | Unreadable]:
        for data in self._registered_models(selection):
            try:
                yield registered_model_unit(
                    data["name"], data.get("description"), _tags(data.get("tags")),
                    _int_or_none(data.get("creation_timestamp")), _int_or_none(data.get("last_updated_timestamp")),
                )
            except (KeyError, TypeError, ValueError) as exc:
                yield Unreadable("registered_model", data["name"], f"server sent an unusable registered model ({exc!r})")

    def iter_model_versions(self, selection: Selection) -> Iterator[Unit | Unreadable]:
        """Each registered model's versions (prompts' too), models in name order, versions
        oldest first. Deleted versions are never shown: gaps in the numbers stand for them."""
        for model in self._registered_models(selection):
            name = model["name"]
            aliases: dict[str, list[str]] = {}
            for entry in model.get("aliases") or ():
                aliases.setdefault(str(entry.get("version")), []).append(entry.get("alias", ""))
            versions: list[VersionFields] = []
            unreadable: list[Unreadable] = []
            for data in search_versions(self.client, name, is_prompt(_tags(model.get("tags")))):
                number = str(data.get("version", "?"))
                try:
                    versions.append(self._version_fields(data, aliases.get(number, [])))
                except (KeyError, TypeError, ValueError) as exc:
                    unreadable.append(Unreadable("model_version", f"{name}/{number}", f"server sent an unusable model version ({exc!r})"))
            if unreadable:
                # Writing the others would shift numbers (an unreadable one would look deleted).
                yield from unreadable
                yield from (Unreadable("model_version", version_id(name, v.version),
                                       f"not read: {unreadable[0].source_id} of the same model is unusable, and versions keep their numbers only written in order")
                            for v in versions)
                continue
            yield from version_units(name, versions)

    def _version_fields(self, data: dict, aliases: list[str]) -> VersionFields:
        source = data.get("source") or ""
        run_id = data.get("run_id") or None
        model_id = data.get("model_id") or model_id_in_source(source)
        experiment = self._experiment_of("logged_model", model_id) if model_id else None
        if experiment is None and run_id:
            experiment = self._experiment_of("run", run_id)
        return VersionFields(
            version=int(data["version"]),
            source=source,
            run_id=run_id,
            model_id=data.get("model_id") or None,
            experiment_id=experiment,
            description=data.get("description") or None,
            tags=_tags(data.get("tags")),
            aliases=[a for a in aliases if a],
            run_link=data.get("run_link") or None,
            status=data.get("status") or "READY",
            status_message=data.get("status_message") or None,
            current_stage=data.get("current_stage") or None,
            user_id=data.get("user_id") or None,
            creation_timestamp=_int_or_none(data.get("creation_timestamp")),
            last_updated_timestamp=_int_or_none(data.get("last_updated_timestamp")),
        )

    def _experiment_of(self, kind: str, object_id: str) -> str | None:
        """The experiment of a logged model (deleted ones too) or run; None when the server holds none."""
        key = (kind, object_id)
        with self._links_lock:
            if key in self._owners:
                return self._owners[key]
        try:
            if kind == "run":
                answer = self.client.call("GET", f"{API}/runs/get", params={"run_id": object_id})["run"]["info"]
            else:
                endpoint = f"{API}/logged-models/{quote(object_id, safe='')}"
                answer = self.client.call("GET", endpoint, params={"allow_deleted": "true"})["model"]["info"]
            experiment: str | None = str(answer["experiment_id"])
        except NotFoundError:
            experiment = None
        with self._links_lock:
            self._owners[key] = experiment
        return experiment


def _logged_model_id(unit: Unit) -> str:
    if unit.kind != LOGGED_MODEL.name:
        raise UnitError(f"{unit.kind} {unit.unit_id!r}: a tracking server holds files of logged models only")
    return unit.unit_id


def _logged_model(data: dict, outputs: dict[str, list[tuple[str, int]]], inputs: dict[str, list[str]], stage: str) -> Unit:
    info = data["info"]
    content = data.get("data") or {}
    model_id = info["model_id"]
    metrics = [
        ModelMetric(
            key=m["key"],
            value=float(m.get("value", 0.0)),  # float() reads "NaN" / "Infinity" too
            timestamp=int(m.get("timestamp", 0)),
            step=int(m.get("step", 0)),
            run_id=m.get("run_id") or None,
            dataset_name=m.get("dataset_name") or None,
            dataset_digest=m.get("dataset_digest") or None,
        )
        for m in content.get("metrics") or ()
    ]
    links = [(run, "output", step) for run, step in outputs.get(model_id, ())]
    links += [(run, "input", 0) for run in inputs.get(model_id, ())]
    return logged_model_unit(LoggedModelFields(
        model_id=model_id,
        experiment_id=str(info["experiment_id"]),
        name=info.get("name") or "",
        source_run_id=info.get("source_run_id") or None,
        model_type=info.get("model_type") or None,
        status=info.get("status") or "UNSPECIFIED",  # proto JSON drops the default (unspecified)
        status_message=info.get("status_message") or None,
        lifecycle_stage=stage,  # not in a server's answers: known from where it was found
        creation_timestamp=_int_or_none(info.get("creation_timestamp_ms")),
        last_updated_timestamp=_int_or_none(info.get("last_updated_timestamp_ms")),
        artifact_location=info.get("artifact_uri") or None,
        params=_tags(content.get("params")),
        tags=_tags(info.get("tags")),
        metrics=metrics,
        links=links,
    ))
