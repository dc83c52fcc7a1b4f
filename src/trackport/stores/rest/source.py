"""Reading an MLflow tracking server (self-hosted or Databricks) over its REST API.

Everything goes through RestClient: retries, credentials and error mapping live there.
MLflow's JSON leaves out fields at their default (an empty file has no file_size, and a
proto3-style server may drop step 0, timestamp 0, value 0.0 or start_time 0), so every
numeric field is read with a default. NaN comes back as the string "NaN"; infinities as
"Infinity"/"-Infinity" (FileStore) or as +/-1.7976931348623157e308 (SQL servers clamp
them when storing): whatever the server says is kept as it is.
"""
from __future__ import annotations

import contextlib
import re
import threading
from typing import Any, BinaryIO, Iterator
from urllib.parse import quote, urlparse

import pyarrow as pa

from trackport.config import DEFAULT, TransferConfig
from trackport.domain import ArtifactFile, Experiment, Run
from trackport.errors import BadInputError, TransientError, UnitError
from trackport.stores._artifact_path import checked_artifact_path, walk_listing
from trackport.stores._history import history_batches, key_history
from trackport.stores._localfs import local_artifact_dir, open_local_artifact
from trackport.selection import resolve_experiments, select_runs
from trackport.stores.base import Selection, SourceFeatures, SourceStore, StoreDescription, Unreadable
from trackport.search.pushdown import mlflow_filter
from trackport.stores.rest.entities import experiment_from_json, latest_metrics, run_from_json, run_order_key
from trackport.stores.rest.http import API, ARTIFACTS_API, NotFoundError, RestClient
from trackport.stores.rest.metric_summaries import HistorySummaries, latest_summaries
from trackport.stores.rest.genai_source import RestGenaiSource
from trackport.stores.rest.models_source import RestModelsSource
from trackport.stores.rest.traces_source import RestTracesSource
from trackport.stores.rest.server import ServerInfo
from trackport.stores.s3_artifacts import FALLBACK_ERRORS, S3Artifacts, fallback_note, parse_destination, s3_root

_RUN_ID = re.compile(r"^[\w\-]+$")


class _Stream:
    """A downloaded artifact as a read-only binary stream; network failures mid-body
    become TransientError."""

    def __init__(self, response, where: str) -> None:
        self._response = response
        self._raw = response.raw
        self._raw.decode_content = True
        self._where = where

    def read(self, size: int = -1) -> bytes:
        try:
            return self._raw.read(None if size is None or size < 0 else size)
        except Exception as exc:  # noqa: BLE001 - urllib3/requests/socket errors alike
            raise TransientError(f"download of {self._where} broke off: {type(exc).__name__}") from None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> "_Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RestSource(RestModelsSource, RestTracesSource, RestGenaiSource, SourceStore):
    """A tracking server as a source. It owns the client it is given: close() closes it
    (the factory hands the client over and keeps no reference). Page sizes are config's
    rest_* (the server's own limits by default)."""

    def __init__(
        self,
        client: RestClient,
        uri: str,
        info: ServerInfo,
        *,
        config: TransferConfig = DEFAULT,
        artifacts_destination: str | None = None,
    ) -> None:
        self.client = client
        self.uri = uri
        self.info = info
        # What of a filter the server reads as trackport does goes to runs/search
        # (trackport.search.pushdown); a SQL-backed server clamps ±inf.
        self.features = SourceFeatures(clamps_infinity=info.clamps_infinity)
        self._config = config
        # The latest metrics of runs yielded by iter_runs (runs/search sends them), so that
        # filters and iter_metric_batches need no call; at most config.rest_remembered_runs
        # runs' (a run the engine skips is never read), the oldest forgotten first (runs/get then).
        self._latest: dict[str, list[dict]] = {}
        self._keys_lock = threading.Lock()  # the engine may read runs from several threads
        self._histories = HistorySummaries(client, self._history)
        # Artifacts in S3 (an s3:// artifact URI, or mlflow-artifacts:/ under the server's
        # destination named by ?artifacts_destination=) are read there, not through the
        # server; where that fails the server serves them, and the run says so in its notes.
        self._destination = parse_destination(artifacts_destination)
        self._s3 = S3Artifacts(max_connections=max(16, 2 * config.workers))
        self._notes: dict[str, list[str]] = {}
        self._init_models()

    def describe(self) -> StoreDescription:
        return StoreDescription(
            kind="rest", uri=self.uri, mlflow_version=self.info.mlflow_version, identity=self.info.identity
        )

    def close(self) -> None:
        self._latest.clear()
        self.client.close()

    # ---------------------------------------------------------------- experiments

    def _search_experiments(self, include_deleted: bool) -> Iterator[dict]:
        body: dict[str, Any] = {
            "max_results": self._config.rest_experiments_page,
            "view_type": "ALL" if include_deleted else "ACTIVE_ONLY",
        }
        for answer in self.client.pages("POST", f"{API}/experiments/search", body):
            yield from answer.get("experiments") or ()

    def _get_run(self, run_id: str) -> dict:
        return self.client.call("GET", f"{API}/runs/get", params={"run_id": run_id})["run"]

    def list_experiments(self, selection: Selection) -> Iterator[Experiment | Unreadable]:
        experiments = []
        for data in self._search_experiments(include_deleted=True):
            try:
                experiments.append(experiment_from_json(data))
            except (KeyError, TypeError, ValueError) as exc:
                exp_id = str(data.get("experiment_id", "?")) if isinstance(data, dict) else "?"
                experiments.append(Unreadable("experiment", exp_id, f"server sent an unusable experiment ({exc!r})"))
        return iter(resolve_experiments(selection, experiments, self._locate_runs, self.uri))

    def _locate_runs(self, run_ids: list[str]) -> dict[str, str]:
        bad = [i for i in run_ids if not _RUN_ID.match(i)]
        if bad:
            raise BadInputError(f"not a run id: {bad[0]!r}")
        found = {}
        for run_id in run_ids:
            try:
                found[run_id] = str(self._get_run(run_id)["info"]["experiment_id"])
            except NotFoundError:
                pass
        return found

    # ---------------------------------------------------------------- runs

    def _search_runs(self, experiment_id: str, include_deleted: bool, filter_string: str | None) -> Iterator[dict]:
        body: dict[str, Any] = {
            "experiment_ids": [experiment_id],
            "max_results": self._config.rest_runs_page,
            "order_by": ["attributes.start_time ASC"],
            "run_view_type": "ALL" if include_deleted else "ACTIVE_ONLY",
        }
        if filter_string:
            body["filter"] = filter_string
        for answer in self.client.pages("POST", f"{API}/runs/search", body):
            yield from answer.get("runs") or ()

    def iter_runs(self, experiment: Experiment, selection: Selection) -> Iterator[Run | Unreadable]:
        return select_runs(self._runs(experiment, selection), selection)

    def _runs(self, experiment: Experiment, selection: Selection) -> Iterator[Run | Unreadable]:
        """The server's search with the selection pushed down: deleted state, the filter,
        run ids as `attributes.run_id IN (...)` clauses; in run_order, as MLflow sorts
        `attributes.start_time ASC` (no start time last, ties by run id)."""
        user_filter = mlflow_filter(selection) if self._config.search_pushdown else None
        if selection.run_ids:
            ids = list(dict.fromkeys(selection.run_ids))
            bad = [i for i in ids if not _RUN_ID.match(i)]
            if bad:
                raise BadInputError(f"not a run id: {bad[0]!r}")
            collected: dict[str, dict] = {}
            per_filter = self._config.rest_run_ids_per_filter
            for i in range(0, len(ids), per_filter):
                chunk = ids[i : i + per_filter]
                clause = "attributes.run_id IN ({})".format(", ".join(f"'{r}'" for r in chunk))
                where = f"{user_filter} AND {clause}" if user_filter else clause
                for data in self._search_runs(experiment.experiment_id, selection.include_deleted, where):
                    info = data.get("info") or {}
                    collected[info.get("run_id") or info.get("run_uuid") or repr(info)] = data
            # Chunks each come sorted; the whole selection must be too.
            pages: Iterator[dict] = iter(sorted(collected.values(), key=run_order_key))
        else:
            pages = self._search_runs(experiment.experiment_id, selection.include_deleted, user_filter)
        whole = selection.include_deleted and not (selection.run_ids or user_filter)
        pages = self._remember_links(experiment.experiment_id, whole, pages)  # for iter_logged_models
        for data in pages:
            try:
                run = run_from_json(data)
            except (KeyError, TypeError, ValueError) as exc:
                info = data.get("info") if isinstance(data, dict) else None
                run_id = str((info or {}).get("run_id") or (info or {}).get("run_uuid") or "?")
                yield Unreadable("run", run_id, f"server sent an unusable run ({exc!r})")
                continue
            self._remember(run.run_id, latest_metrics(data))
            yield run

    def _remember(self, run_id: str, latest: list[dict]) -> None:
        with self._keys_lock:
            self._latest[run_id] = latest
            while len(self._latest) > self._config.rest_remembered_runs:
                del self._latest[next(iter(self._latest))]

    def _latest_of(self, run_id: str) -> list[dict]:
        with self._keys_lock:
            latest = self._latest.get(run_id)
        return latest if latest is not None else latest_metrics(self._get_run(run_id))

    def metric_summaries(self, runs: list[Run], keys: frozenset[str] | None, whole_history: bool = True) -> dict:
        latest = {run.run_id: latest_summaries(self._latest_of(run.run_id), keys) for run in runs}
        if not whole_history:
            return latest
        return self._histories.read(runs, {run_id: sorted(found) for run_id, found in latest.items()})

    # ---------------------------------------------------------------- metrics

    def _history(self, run_id: str, key: str) -> pa.Table:
        steps: list[int] = []
        stamps: list[int] = []
        values: list[float] = []
        params: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": self._config.rest_history_page}
        for answer in self.client.pages("GET", f"{API}/metrics/get-history", params, in_body=False):
            metrics = answer.get("metrics") or ()
            # Absent fields are zero (proto JSON drops defaults); float() reads the
            # "NaN" / "Infinity" / "-Infinity" strings as well as numbers.
            steps.extend([int(m.get("step", 0)) for m in metrics])
            stamps.extend([int(m.get("timestamp", 0)) for m in metrics])
            values.extend([float(m.get("value", 0.0)) for m in metrics])
        return key_history(key, steps, stamps, values)

    def iter_metric_batches(self, run: Run) -> Iterator[pa.RecordBatch]:
        with self._keys_lock:
            latest = self._latest.pop(run.run_id, None)
        if latest is None:
            latest = latest_metrics(self._get_run(run.run_id))
        keys = sorted({m["key"] for m in latest if "key" in m})
        yield from history_batches(keys, lambda key: self._history(run.run_id, key), self._config.metric_batch_rows)

    # ---------------------------------------------------------------- artifacts

    def _list_dir(self, run_id: str, path: str) -> Iterator[dict]:
        params: dict[str, Any] = {"run_id": run_id}
        if path:
            params["path"] = path
        for answer in self.client.pages("GET", f"{API}/artifacts/list", params, in_body=False):
            yield from answer.get("files") or ()

    def list_artifacts(self, run: Run) -> Iterator[ArtifactFile]:
        root = s3_root(run.artifact_uri, self._destination)
        if root is not None:
            files = self._direct(run, root, lambda: self._s3.list(root))
            if files is not None:
                yield from files
                return
        yield from walk_listing(lambda directory: self._list_dir(run.run_id, directory))

    def _direct(self, run: Run, root, action):
        """action()'s answer from S3; None (and a note on the run) when S3 refused the
        credentials, lacks the bucket or cannot be reached, now or earlier in this transfer."""
        reason = self._s3.broken(root)
        if reason is None:
            try:
                return action()
            except FALLBACK_ERRORS as exc:
                reason = self._s3.mark_broken(root, exc)
        note = fallback_note(root, reason)
        with self._keys_lock:
            notes = self._notes.setdefault(run.run_id, [])
            if note not in notes:
                notes.append(note)
        return None

    def unit_notes(self, run: Run) -> list[str]:
        """What reading the run had to do differently (artifacts read through the server
        because reading them from S3 directly failed), taken once."""
        with self._keys_lock:
            return self._notes.pop(run.run_id, [])

    def _local_root(self, run: Run):
        uri = run.artifact_uri or ""
        parsed = urlparse(uri)
        if not (parsed.scheme == "file" or (uri.startswith("/") and parsed.scheme == "")):
            return None
        try:
            root = local_artifact_dir(uri, run.run_id)
        except UnitError:
            return None
        return root if root is not None and root.is_dir() else None

    @contextlib.contextmanager
    def open_artifact(self, run: Run, path: str) -> Iterator[BinaryIO]:
        clean = checked_artifact_path(run.run_id, path)
        uri = run.artifact_uri or ""
        root = s3_root(uri, self._destination)
        direct = None if root is None else self._direct(run, root, lambda: self._s3.open(root, clean))
        if direct is not None:
            with direct:
                yield direct
            return
        if uri.startswith("mlflow-artifacts:"):
            prefix = urlparse(uri).path.strip("/")
            full = f"{prefix}/{clean}" if prefix else clean
            endpoint = f"{ARTIFACTS_API}/artifacts/{quote(full, safe='/')}"
            response = self.client.request("GET", endpoint, stream=True)
        else:
            root = self._local_root(run)
            if root is not None and (root / clean).is_file():
                with open_local_artifact(root, clean, run.run_id) as handle:
                    yield handle
                return
            response = self.client.request(
                "GET", "/get-artifact", params={"run_id": run.run_id, "path": clean}, stream=True
            )
        with self._download(response, f"artifact {clean!r} of run {run.run_id}") as stream:
            yield stream

    @contextlib.contextmanager
    def _download(self, response, where: str) -> Iterator[BinaryIO]:
        """A streamed response as a binary stream, closed after use."""
        stream = _Stream(response, where)
        try:
            yield stream  # type: ignore[misc]
        finally:
            stream.close()
