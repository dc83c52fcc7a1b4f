"""Writing MLflow 3's evaluation datasets and registered scorers into a tracking server:
GenaiWriter, which a RestSink owns, and RestGenaiSink, the sink's methods that hand these
kinds to it (the engine finds them by name: put_<kind>, find_<kind>, lookup_<kind>).

A dataset is created anew (datasets/create: the same name, tags and the target's copies of
the experiments it is linked to; the server gives it a new id, mapped), its records
upserted in batches (datasets/<id>/records; the server gives them new ids and times and
derives the dataset's schema and profile from them), and last the tag trackport.complete
set. The copy carries the source's id in trackport.source.id: a re-run finds it by that
tag, skips a complete one and finishes an incomplete one (upserting a record again changes
nothing: a server keys records by their inputs).

A scorer's versions are registered in version order (scorers/register); the server numbers
them 1, 2, ... (a source whose numbers have gaps is renumbered: a loss of that scorer). A
scorer the target experiment holds with the same versions is complete and skipped; one
holding the first of them gets the rest; one holding others of that name is refused.
"""
from __future__ import annotations

import json
import threading
from urllib.parse import quote

from trackport import kinds
from trackport.errors import UnitError
from trackport.genai import record_to_upsert, scorer_renumbering
from trackport.kinds import Unit
from trackport.provenance import COMPLETE_TAG, COMPLETE_VALUE, SOURCE_UNIT_TAG, is_provenance_tag
from trackport.stores.base import UnitWriteResult
from trackport.stores.rest.http import NotFoundError, RestClient, RestError

DATASETS_API = "/api/3.0/mlflow/datasets"
SCORERS_API = "/api/3.0/mlflow/scorers"
RECORDS_PER_REQUEST = 500

# What a tracking server does not keep of these kinds, said before anything is written.
GENAI_LOSSES = {
    "evaluation_dataset": [
        "evaluation datasets: the target gives new dataset and record ids (mapped in idmap.jsonl; each copy keeps"
        " its source id in trackport.source.id) and sets their times and digest itself",
    ],
    "scorer": [
        "registered scorers: the target sets each version's registration time, and numbers versions 1, 2, ... in"
        " order (a scorer whose source versions have gaps is renumbered, recorded as its loss)",
    ],
}


class GenaiWriter:
    """Evaluation datasets and scorers into a tracking server, and what that needs to keep:
    the copies of datasets the target holds, read once and kept up to date as it writes."""

    def __init__(self, client: RestClient) -> None:
        self.client = client
        self._lock = threading.Lock()  # workers write datasets at once; the index is read once
        self._datasets: dict[str, tuple[str, bool]] | None = None  # source id -> (copy's id, complete)

    # -- evaluation datasets ------------------------------------------------------------------
    def _dataset_copies(self) -> dict[str, tuple[str, bool]]:
        """source id -> (the copy's id, complete) of every dataset trackport wrote into the target."""
        with self._lock:
            if self._datasets is None:
                copies = {}
                try:
                    for page in self.client.pages("POST", f"{DATASETS_API}/search", {"max_results": 1000}):
                        for info in page.get("datasets") or ():
                            tags = json.loads(info.get("tags") or "{}")
                            if tags.get(SOURCE_UNIT_TAG):
                                copies[tags[SOURCE_UNIT_TAG]] = (str(info["dataset_id"]), tags.get(COMPLETE_TAG) == COMPLETE_VALUE)
                except NotFoundError:
                    pass  # no dataset API: nothing written, and put fails with the reason
                self._datasets = copies
            return self._datasets

    def _remember(self, source_id: str, copy_id: str, complete: bool) -> None:
        copies = self._dataset_copies()
        with self._lock:
            copies[source_id] = (copy_id, complete)

    def complete_dataset(self, source_id: str) -> str | None:
        """The id of the target's complete copy of that source dataset, None if it holds none."""
        copy = self._dataset_copies().get(source_id)
        return copy[0] if copy and copy[1] else None

    def put_dataset(self, unit: Unit) -> UnitWriteResult:
        body, what = unit.body, f"evaluation dataset {unit.name!r} ({unit.unit_id})"
        experiments = [unit.refs[n] for n in sorted(unit.refs, key=_ref_order) if kinds.ref_kind(n) == "experiment" and n not in unit.missing]
        tags = {**{k: v for k, v in (body.get("tags") or {}).items() if not is_provenance_tag(k)}, SOURCE_UNIT_TAG: unit.unit_id}
        copy = self._dataset_copies().get(unit.unit_id)
        try:
            if copy is None:  # a new one; else one a stopped transfer began: finished
                # The source id goes in with the creation: a copy is never there without it.
                created = self.client.call("POST", f"{DATASETS_API}/create", idempotent=False,
                                           body={"name": body.get("name") or unit.name, "experiment_ids": experiments, "tags": json.dumps(tags)})
                copy = (str(created["dataset"]["dataset_id"]), False)
                self._remember(unit.unit_id, *copy)
            elif experiments:
                self.client.call("POST", f"{DATASETS_API}/{quote(copy[0], safe='')}/add-experiments", body={"experiment_ids": experiments})
            where = f"{DATASETS_API}/{quote(copy[0], safe='')}"
            # Every record, also into a copy a stopped transfer began: a server keys records
            # by their inputs, so one sent again is updated in place, never doubled.
            records = [record_to_upsert(r) for r in body.get("records") or ()]
            for start in range(0, len(records), RECORDS_PER_REQUEST):
                self.client.call("POST", f"{where}/records", body={"records": json.dumps(records[start : start + RECORDS_PER_REQUEST])})
            self.client.call("PATCH", f"{where}/tags", body={"tags": json.dumps({COMPLETE_TAG: COMPLETE_VALUE})})
        except (RestError, NotFoundError) as exc:
            raise UnitError(f"{what}: the target refused it: {exc}") from None
        self._remember(unit.unit_id, copy[0], True)
        return UnitWriteResult(copy[0])

    # -- scorers ------------------------------------------------------------------------------
    def _target_versions(self, exp_id: str, name: str) -> list[dict]:
        try:
            answer = self.client.call("GET", f"{SCORERS_API}/versions", params={"experiment_id": exp_id, "name": name})
        except NotFoundError:
            return []
        return sorted(answer.get("scorers") or [], key=lambda v: int(v["scorer_version"]))

    def complete_scorer(self, unit: Unit, exp_id: str) -> str | None:
        """The target's scorer of that name in exp_id when it holds every version, in order."""
        held = self._target_versions(exp_id, unit.name)
        wanted = [v["serialized_scorer"] for v in unit.body.get("versions") or ()]
        if held and [v.get("serialized_scorer") for v in held] == wanted:
            return str(held[0].get("scorer_id") or f"{exp_id}/{unit.name}")
        return None

    def put_scorer(self, unit: Unit, exp_id: str) -> UnitWriteResult:
        what = f"scorer {unit.name!r}"
        wanted = [v["serialized_scorer"] for v in unit.body.get("versions") or ()]
        held = [v.get("serialized_scorer") for v in self._target_versions(exp_id, unit.name)]
        if held != wanted[: len(held)]:
            raise UnitError(f"{what}: the target experiment {exp_id} holds other versions of a scorer of that name"
                            f" ({len(held)}); it is not written over")
        result = UnitWriteResult(f"{exp_id}/{unit.name}")
        loss = scorer_renumbering(unit.body)
        if loss:
            result.losses.append(loss)
        # The versions a stopped transfer did not register yet, in order: the server numbers them.
        for serialized in wanted[len(held):]:
            try:
                answer = self.client.call("POST", f"{SCORERS_API}/register", idempotent=False,
                                          body={"experiment_id": exp_id, "name": unit.name, "serialized_scorer": serialized})
            except RestError as exc:
                raise UnitError(f"{what}: the target refused it: {exc}") from None
            result.target_id = str(answer.get("scorer_id") or result.target_id)
        return result


class RestGenaiSink:
    """RestSink's methods for evaluation datasets and scorers, handed to the GenaiWriter it
    makes in its __init__ (as _genai)."""

    _genai: GenaiWriter

    def kind_losses(self, kind_name: str) -> list[str]:
        return list(GENAI_LOSSES.get(kind_name, ()))

    def find_evaluation_dataset(self, unit: Unit, target_experiment_id: str | None) -> str | None:
        return self._genai.complete_dataset(unit.unit_id)

    def lookup_evaluation_dataset(self, source_id: str, target_experiment_id: str | None) -> str | None:
        return self._genai.complete_dataset(source_id)

    def put_evaluation_dataset(self, unit: Unit, target_experiment_id: str | None) -> UnitWriteResult:
        return self._genai.put_dataset(unit)

    def find_scorer(self, unit: Unit, target_experiment_id: str) -> str | None:
        return self._genai.complete_scorer(unit, str(target_experiment_id))

    def put_scorer(self, unit: Unit, target_experiment_id: str) -> UnitWriteResult:
        return self._genai.put_scorer(unit, str(target_experiment_id))


def _ref_order(ref_name: str) -> int:
    return int(ref_name.split("#", 1)[1]) if "#" in ref_name else 1
