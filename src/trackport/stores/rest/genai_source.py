"""Reading MLflow 3's evaluation datasets and registered scorers from a tracking server. Mixed
into RestSource.

Calls: the workspace's datasets with datasets/search (pages of 1000), then per dataset its
linked experiments (datasets/<id>/experiment-ids) and its records (datasets/<id>/records,
pages of 1000); per experiment, scorers/list (the latest version of each) and per scorer
scorers/versions. A server before MLflow 3 (no such routes) holds none.
"""
from __future__ import annotations

import itertools
import json
from typing import Iterator
from urllib.parse import quote

from trackport.domain import Experiment
from trackport.errors import BadInputError, TransientError
from trackport.genai import dataset_unit, scorer_unit
from trackport.kinds import EVALUATION_DATASET, SCORER, Unit
from trackport.stores.base import Selection, Unreadable
from trackport.stores.rest.http import NotFoundError, RestClient, RestError

DATASETS_API = "/api/3.0/mlflow/datasets"
SCORERS_API = "/api/3.0/mlflow/scorers"
PAGE = 1000


class RestGenaiSource:
    """Evaluation datasets and scorers of a tracking server (RestSource's part)."""

    client: RestClient

    def iter_evaluation_datasets(self, selection: Selection) -> Iterator[Unit | Unreadable]:
        pages = self.client.pages("POST", f"{DATASETS_API}/search", {"max_results": PAGE})
        try:
            first = next(pages)
        except (NotFoundError, BadInputError):  # no dataset API: the server holds none
            return
        for page in itertools.chain([first], pages):
            for info in page.get("datasets") or ():
                yield self._read_dataset(info)

    def _read_dataset(self, info: dict) -> Unit | Unreadable:
        dataset_id, name = str(info.get("dataset_id") or "?"), str(info.get("name") or "")
        where = f"{DATASETS_API}/{quote(dataset_id, safe='')}"
        try:
            experiments = self.client.call("GET", f"{where}/experiment-ids").get("experiment_ids") or []
            records: list[dict] = []
            for page in self.client.pages("GET", f"{where}/records", {"max_results": PAGE}, in_body=False):
                records.extend(json.loads(page.get("records") or "[]"))
            return dataset_unit(info, [str(e) for e in experiments], records)
        except (RestError, TransientError, NotFoundError) as exc:
            return Unreadable(EVALUATION_DATASET.name, dataset_id, f"the server did not send it whole: {exc}", name)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return Unreadable(EVALUATION_DATASET.name, dataset_id, f"server sent an unusable dataset ({exc!r})", name)

    def iter_scorers(self, experiment: Experiment) -> Iterator[Unit | Unreadable]:
        exp_id = experiment.experiment_id
        try:
            latest = self.client.call("GET", f"{SCORERS_API}/list", params={"experiment_id": exp_id}).get("scorers") or []
        except (NotFoundError, BadInputError):  # no scorer API: the server holds none
            return
        for scorer in latest:
            name = str(scorer.get("scorer_name") or "")
            try:
                versions = self.client.call("GET", f"{SCORERS_API}/versions", params={"experiment_id": exp_id, "name": name})
                yield scorer_unit(exp_id, versions.get("scorers") or [scorer])
            except (RestError, TransientError, NotFoundError, KeyError, TypeError, ValueError) as exc:
                yield Unreadable(SCORER.name, str(scorer.get("scorer_id") or name), f"its versions could not be read: {exc}", name)
