"""Writing into an MLflow tracking server over its REST API (self-hosted or Databricks).

The server assigns run and experiment ids, so every run carries provenance tags naming its
source, and a completion tag written last: a run without it is the partial copy of an
interrupted transfer, which the next transfer deletes and writes again (copies). Metrics
stream from the source in Arrow batches into log-batch calls filled to MLflow's limits;
artifacts stream through the server's proxied artifact service (artifacts). mlflow itself
is never imported here.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trackport.config import DEFAULT, TransferConfig, state_home
from trackport.domain import (
    MAX_KEY_LENGTH,
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    key_problem,
    DELETED,
    PARENT_RUN_ID_TAG,
    RUN_NAME_TAG,
    Capabilities,
    Experiment,
    Run,
    SourceRunId,
    TargetExperimentId,
    TargetRunId,
)
from trackport.errors import TransientError, UnitError, UnreachableError
from trackport.locking import TargetLock
from trackport.provenance import (
    COMPLETE_TAG,
    LOSSES_TAG,
    SOURCE_EXPERIMENT_ID_TAG,
    SOURCE_RUN_ID_TAG,
    is_provenance_tag,
    rewrite_tag,
)
from trackport.stores.base import (
    existing_model_policy,
    LONG_VALUE_POLICIES,
    ExperimentWriteResult,
    RunContent,
    RunWriteResult,
    SinkStore,
    StoreDescription,
)
from trackport.stores.rest.artifacts import ArtifactUploader
from trackport.stores.rest.copies import COMPLETE_VALUE, Copies
from trackport.stores.rest.genai_sink import GenaiWriter, RestGenaiSink
from trackport.stores.rest.http import API, NotFoundError, RestClient, RestError
from trackport.stores.rest.metric_json import MetricTexts
from trackport.stores.rest.patch import RestPatcher
from trackport.stores.rest.traces_sink import RestTracesSink
from trackport.stores.rest.registry_sink import RestRegistrySink
from trackport.stores.rest.server import ServerInfo
from trackport.stores.s3_artifacts import S3Artifacts, parse_destination

# log-batch limits (MLflow's utils/validation.py, enforced by the server).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
# Asking again for a run or experiment whose creation got no answer (the server may have
# acted): the creation is checked for, and undone or adopted, before each new attempt.
CREATE_ATTEMPTS = 5


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "server"


def state_dir_for_url(state_root: Path, base_url: str) -> Path:
    """Where transfers into the server at base_url keep their id map and ledger."""
    parts = urlsplit(base_url)
    return state_root / _sanitize(f"{parts.hostname or ''}_{parts.port or ''}{parts.path}".replace("__", "_"))


class RestSink(RestRegistrySink, RestTracesSink, RestGenaiSink, RestPatcher, SinkStore):
    def __init__(
        self,
        client: RestClient,
        uri: str,
        info: ServerInfo,
        *,
        on_long_value: str = "error",
        on_existing_model: str = "fail",
        state_root: Path | None = None,
        config: TransferConfig = DEFAULT,
        artifacts_direct: bool = False,
        artifacts_destination: str | None = None,
    ) -> None:
        if on_long_value not in LONG_VALUE_POLICIES:
            raise ValueError(f"on_long_value must be one of {LONG_VALUE_POLICIES}, not {on_long_value!r}")
        self.on_existing_model = existing_model_policy(on_existing_model)
        self.client = client
        self.uri = uri
        self.info = info
        self.on_long_value = on_long_value
        self._config = config
        self._state_root = Path(state_root) if state_root is not None else state_home() / "targets"
        self.capabilities = Capabilities(
            keeps_run_ids=False,
            keeps_experiment_ids=False,
            keeps_times=True,
            keeps_users=not client.connection.is_databricks,
            keeps_deleted_state=True,
            keeps_infinity=not info.clamps_infinity,
            keeps_deleted_time=False,  # the server's clock at runs/delete
            keeps_experiment_times=False,  # creation/last-update times are the server's
            max_param_value_length=MAX_PARAM_VALUE,
            max_tag_value_length=MAX_TAG_VALUE,
            undoes_failed_runs=False,  # runs/delete only marks a run deleted
            keeps_model_ids=False,  # a server makes logged model ids
            keeps_registry_times=False,  # and sets the times of what it is sent
        )
        self._target_lock = TargetLock(self.state_dir(), self.client.base_url)
        self._copies = Copies(client, search_page=config.rest_runs_page)  # runs/search pages
        direct = S3Artifacts(max_connections=max(16, 2 * config.workers)) if artifacts_direct else None
        destination = parse_destination(artifacts_destination)
        if direct is not None and destination is not None:
            direct.check(destination)  # refused credentials stop the transfer before anything is written
        self._artifacts = ArtifactUploader(
            client, multipart_uploads=info.multipart_uploads, direct=direct, destination=destination
        )
        self._init_models()
        self._genai = GenaiWriter(client)  # evaluation datasets and scorers (RestGenaiSink)
        self._trace_ids: dict[tuple[str, str], str] = {}  # RestTracesSink: what find_trace decided, for put_trace

    # ------------------------------------------------------------------ common

    def describe(self) -> StoreDescription:
        return StoreDescription(
            kind="rest", uri=self.uri, mlflow_version=self.info.mlflow_version, identity=self.info.identity
        )

    def close(self) -> None:
        self._target_lock.release()
        self.client.close()

    def state_dir(self) -> Path:
        path = state_dir_for_url(self._state_root, self.client.base_url)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _post(self, endpoint: str, body: dict | bytes, *, idempotent: bool = True) -> dict[str, Any]:
        return self.client.call("POST", f"{API}/{endpoint}", body=body, idempotent=idempotent)

    # ------------------------------------------------------------------ experiments

    def _get_experiment_by_name(self, name: str) -> dict | None:
        try:
            answer = self.client.call("GET", f"{API}/experiments/get-by-name", params={"experiment_name": name})
        except NotFoundError:
            return None
        return answer.get("experiment") or None

    def put_experiment(self, experiment: Experiment) -> ExperimentWriteResult:
        wanted = {k: v for k, v in experiment.tags.items() if not is_provenance_tag(k)}
        existing = self._get_experiment_by_name(experiment.name)
        attempt = 0
        while existing is None:
            attempt += 1
            tags = [{"key": k, "value": v} for k, v in wanted.items()]
            tags.append({"key": SOURCE_EXPERIMENT_ID_TAG, "value": experiment.experiment_id})
            try:
                answer = self._post(
                    "experiments/create", {"name": experiment.name, "tags": tags}, idempotent=False
                )
                return ExperimentWriteResult(TargetExperimentId(str(answer["experiment_id"])), created=True)
            except RestError as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise UnitError(f"experiment {experiment.name!r}: the target refused it: {exc}") from None
            except (UnreachableError, TransientError):
                # No answer: the server may have created it. Look before asking again.
                if attempt >= CREATE_ATTEMPTS:
                    raise
            # Created meanwhile (a retry whose first attempt did arrive, or a race).
            existing = self._get_experiment_by_name(experiment.name)
            if existing is None and attempt >= CREATE_ATTEMPTS:
                raise UnitError(f"experiment {experiment.name!r} exists in the target but cannot be read back")
        target_id = str(existing["experiment_id"])
        have = {t["key"] for t in existing.get("tags", [])}
        for key, value in wanted.items():
            if key not in have:
                self._post("experiments/set-experiment-tag", {"experiment_id": target_id, "key": key, "value": value})
        if existing.get("lifecycle_stage") == DELETED:
            # Runs cannot be written into a deleted experiment; finish_experiment deletes it
            # again if the source experiment is deleted. Restoring also restores its runs.
            try:
                self._post("experiments/restore", {"experiment_id": target_id})
            except RestError:
                # A retried restore whose first attempt arrived finds it active already.
                if self._experiment_stage(target_id) == DELETED:
                    raise
            self._copies.forget(target_id)
        return ExperimentWriteResult(TargetExperimentId(target_id), created=False)

    def finish_experiment(self, experiment: Experiment, target_experiment_id: TargetExperimentId) -> None:
        if experiment.lifecycle_stage != DELETED:
            return
        try:
            self._post("experiments/delete", {"experiment_id": str(target_experiment_id)})
        except RestError as exc:
            # A retried delete whose first attempt arrived finds it deleted already.
            if self._experiment_stage(str(target_experiment_id)) != DELETED:
                raise UnitError(f"experiment {experiment.name!r}: cannot mark it deleted in the target: {exc}") from None

    def _experiment_stage(self, target_id: str) -> str | None:
        try:
            answer = self.client.call("GET", f"{API}/experiments/get", params={"experiment_id": target_id})
        except NotFoundError:
            return None
        return (answer.get("experiment") or {}).get("lifecycle_stage")

    # ------------------------------------------------------------------ finding earlier copies

    def find_run(self, run: Run, target_experiment_id: TargetExperimentId) -> TargetRunId | None:
        found = self._copies.find(run, str(target_experiment_id))
        return TargetRunId(found) if found is not None else None

    def lookup_run(self, source_run_id: SourceRunId, target_experiment_id: TargetExperimentId) -> TargetRunId | None:
        found = self._copies.lookup(source_run_id, str(target_experiment_id))
        return TargetRunId(found) if found is not None else None

    # ------------------------------------------------------------------ writing runs

    def _check_keys_and_values(self, run: Run, params: dict[str, str], tags: dict[str, str], losses: list[str]) -> tuple[dict, dict]:
        """Refuse keys the server would refuse, and apply the long-value policy, before
        anything is written: the server would silently truncate long values
        (MLFLOW_TRUNCATE_LONG_VALUES), so trackport decides instead."""
        out = []
        for kind, values, limit in (("param", params, MAX_PARAM_VALUE), ("tag", tags, MAX_TAG_VALUE)):
            checked = {}
            for key, value in values.items():
                # Checked before the run is created: a run the server would refuse half-way
                # is refused before anything of it is there.
                if key_problem(key):
                    shown = key if len(key) <= 80 else key[:77] + "..."
                    raise UnitError(
                        f"{kind} key {shown!r} ({len(key)} characters) of run {run.run_name!r} is not one the target"
                        f" takes (at most {MAX_KEY_LENGTH} characters: letters, digits, _ - . space : /, no '..' or"
                        " leading '/'); nothing of the run was written"
                    )
                if len(value) > limit:
                    if self.on_long_value == "error":
                        raise UnitError(
                            f"{kind} {key!r} of run {run.run_name!r} has a value of {len(value)} characters; "
                            f"the target keeps at most {limit} (use on_long_value='truncate' to cut it)"
                        )
                    losses.append(f"{kind} {key!r} truncated from {len(value)} to {limit} characters")
                    value = value[:limit]
                checked[key] = value
            out.append(checked)
        return out[0], out[1]

    def put_run(self, run: Run, target_experiment_id: TargetExperimentId, content: RunContent) -> RunWriteResult:
        exp_id = str(target_experiment_id)
        losses: list[str] = []
        params = dict(run.params)
        tags = {
            k: v
            for k, v in run.tags.items()
            if k not in (RUN_NAME_TAG, PARENT_RUN_ID_TAG) and not is_provenance_tag(k)
        }
        params, tags = self._check_keys_and_values(run, params, tags, losses)

        create_tags = [
            {"key": SOURCE_RUN_ID_TAG, "value": run.run_id},
            {"key": SOURCE_EXPERIMENT_ID_TAG, "value": run.experiment_id},
        ]
        body: dict[str, Any] = {"experiment_id": exp_id, "user_id": run.user_id or ""}
        if run.run_name:
            body["run_name"] = run.run_name
            create_tags.append({"key": RUN_NAME_TAG, "value": run.run_name})
        if run.parent_run_id:
            create_tags.append({"key": PARENT_RUN_ID_TAG, "value": run.parent_run_id})
        if run.start_time is not None:
            body["start_time"] = run.start_time
        else:
            losses.append("start_time unknown in the source; the target stores 0")
        body["tags"] = create_tags

        answer = self._create_run(exp_id, run.run_id, body)
        info = answer["run"]["info"]
        target_id = info.get("run_id") or info["run_uuid"]
        result = RunWriteResult(target_run_id=TargetRunId(target_id))
        try:
            tags = {k: rewrite_tag(k, v, run.run_id, target_id) for k, v in tags.items()}
            if self.on_long_value == "truncate":
                tags = {k: v[:MAX_TAG_VALUE] for k, v in tags.items()}
            infinities = self._log_batches(target_id, params, tags, content, result)
            if infinities and not self.capabilities.keeps_infinity:
                losses.append(
                    f"{infinities} ±inf metric points stored as ±1.7976931348623157e308 by the target"
                )
            if run.inputs:
                self._log_inputs(target_id, run)
            self._artifacts.upload(run, target_id, info.get("artifact_uri") or "", content, result)
            update: dict[str, Any] = {"run_id": target_id, "status": run.status}
            if run.end_time is not None:
                update["end_time"] = run.end_time
            self._post("runs/update", update)
            final = []
            if losses:
                final.append({"key": LOSSES_TAG, "value": _losses_value(losses)})
            final.append({"key": COMPLETE_TAG, "value": COMPLETE_VALUE})  # last, always
            for tag in final:
                self._post("runs/set-tag", {"run_id": target_id, **tag})
            if run.lifecycle_stage == DELETED:
                self._post("runs/delete", {"run_id": target_id})
        except BaseException:
            try:
                self._post("runs/delete", {"run_id": target_id})
            except Exception:  # noqa: BLE001 - best effort; the original error matters
                pass
            raise
        result.losses = losses
        self._copies.written(exp_id, run.run_id, target_id, run.lifecycle_stage)
        return result

    def _create_run(self, exp_id: str, source_run_id: str, body: dict) -> dict[str, Any]:
        """runs/create, which is not idempotent. When its answer is lost (connection
        dropped or timed out after the request went out), the server may have created the
        run: such an orphan carries the provenance tag and no completion tag; it is deleted
        before asking again, so it never passes for an ordinary run."""
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                return self._post("runs/create", body, idempotent=False)
            except (UnreachableError, TransientError):
                if attempt >= CREATE_ATTEMPTS:
                    raise
                self._copies.delete_incomplete(exp_id, source_run_id)
        raise AssertionError("unreachable")

    # -- params, tags, metrics

    def _log_batches(
        self, run_id: str, params: dict[str, str], tags: dict[str, str], content: RunContent, result: RunWriteResult
    ) -> int:
        """Send everything in log-batch calls filled to the limits; return the ±inf count."""
        param_items = [{"key": k, "value": v} for k, v in params.items()]
        tag_items = [{"key": k, "value": v} for k, v in tags.items()]
        points = MetricTexts(content.metric_batches())
        while True:
            batch_params = param_items[:MAX_PARAMS_PER_BATCH]
            del param_items[: len(batch_params)]
            batch_tags = tag_items[:MAX_TAGS_PER_BATCH]
            del tag_items[: len(batch_tags)]
            room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(batch_params) - len(batch_tags))
            metrics, count = points.take(room)
            if not (batch_params or batch_tags or count):
                break
            body = (
                f'{{"run_id":{json.dumps(run_id)},"metrics":[{metrics}],'
                f'"params":{json.dumps(batch_params)},"tags":{json.dumps(batch_tags)}}}'
            )
            self._post("runs/log-batch", body.encode())
            result.metric_points += count
        return points.infinities

    def _log_inputs(self, run_id: str, run: Run) -> None:
        datasets = []
        for ds in run.inputs:
            dataset: dict[str, Any] = {
                "name": ds.name,
                "digest": ds.digest,
                "source_type": ds.source_type,
                "source": ds.source,
            }
            if ds.schema is not None:
                dataset["schema"] = ds.schema
            if ds.profile is not None:
                dataset["profile"] = ds.profile
            datasets.append({"tags": [{"key": k, "value": v} for k, v in ds.tags.items()], "dataset": dataset})
        self._post("runs/log-inputs", {"run_id": run_id, "datasets": datasets})


def _losses_value(losses: list[str]) -> str:
    """The losses as a JSON list that fits a tag; the tail is cut (the ledger has all)."""
    value = json.dumps(losses, ensure_ascii=False)
    kept = list(losses)
    while len(value) > MAX_TAG_VALUE and kept:
        kept.pop()
        value = json.dumps(kept + [f"... {len(losses) - len(kept)} more in the transfer ledger"], ensure_ascii=False)
    return value[:MAX_TAG_VALUE]
