"""--filter on a database source: MLflow's own search semantics, evaluated on the runs read
here by MLflow's SearchUtils (the same code its file store searches with), so a filter
selects what the tracking server itself would."""
from __future__ import annotations

import math

from trackport.domain import Run
from trackport.errors import BadInputError
from trackport.stores.mlflow_db.tables import Database


def filter_runs(db: Database, runs: list[Run], filter_string: str) -> list[Run]:
    """The runs the filter matches, their latest metrics read from latest_metrics. With no
    runs the filter is only parsed, so that a bad one is refused all the same."""
    try:
        from mlflow.entities import (
            Dataset, DatasetInput as MlDatasetInput, InputTag, Metric, Param, RunData, RunInfo,
            RunInputs, RunTag,
        )
        from mlflow.entities import Run as MlRun
        from mlflow.exceptions import MlflowException
        from mlflow.utils.search_utils import SearchUtils
    except ImportError as exc:
        raise BadInputError("--filter needs MLflow's search parser: pip install 'trackport[local]'") from exc
    sa = db.sa
    lm = db.tables["latest_metrics"]
    if not runs:
        try:
            SearchUtils.parse_search_filter(filter_string)
        except MlflowException as exc:
            raise BadInputError(f"--filter {filter_string!r}: {exc.message.splitlines()[0]}") from None
        return []
    latest: dict[str, list] = {r.run_id: [] for r in runs}
    with db.engine.connect() as conn:
        q = sa.select(lm.c.run_uuid, lm.c.key, lm.c.value, lm.c.timestamp, lm.c.step, lm.c.is_nan).where(
            lm.c.run_uuid.in_(list(latest))
        )
        for row in conn.execute(q):
            value = math.nan if row.is_nan else row.value
            latest[row.run_uuid].append(Metric(row.key, value, row.timestamp, row.step))
    by_id: dict[str, Run] = {}
    entities = []
    for run in runs:
        by_id[run.run_id] = run
        info = RunInfo(
            run_id=run.run_id, experiment_id=run.experiment_id, user_id=run.user_id, status=run.status,
            start_time=run.start_time, end_time=run.end_time, lifecycle_stage=run.lifecycle_stage,
            artifact_uri=run.artifact_uri, run_name=run.run_name,
        )
        data = RunData(
            metrics=latest[run.run_id],
            params=[Param(k, v) for k, v in run.params.items()],
            tags=[RunTag(k, v) for k, v in run.tags.items()],
        )
        run_inputs = RunInputs(
            dataset_inputs=[
                MlDatasetInput(
                    Dataset(i.name, i.digest, i.source_type, i.source, i.schema, i.profile),
                    [InputTag(k, v) for k, v in i.tags.items()],
                )
                for i in run.inputs
            ]
        )
        entities.append(MlRun(info, data, run_inputs))
    try:
        matched = SearchUtils.filter(entities, filter_string)
    except MlflowException as exc:
        raise BadInputError(f"--filter {filter_string!r}: {exc.message.splitlines()[0]}") from None
    return [by_id[m.info.run_id] for m in matched]
