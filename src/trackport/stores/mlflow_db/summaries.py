"""Metric summaries of runs read from MLflow's tables: latest points from latest_metrics
(what MLflow's own search compares), whole-history aggregates in SQL (NaN points, stored as
0 with is_nan, left out of MIN and MAX)."""
from __future__ import annotations

import math

from trackport.domain import MetricSummary, Run
from trackport.stores.mlflow_db.tables import Database, chunks


def metric_summaries(
    db: Database, runs: list[Run], keys: frozenset[str] | None, whole_history: bool
) -> dict[str, dict[str, MetricSummary]]:
    sa = db.sa
    lm, m = db.tables["latest_metrics"], db.tables["metrics"]
    found: dict[str, dict[str, MetricSummary]] = {run.run_id: {} for run in runs}
    aggregates: dict[tuple[str, str], tuple] = {}
    with db.engine.connect() as conn:
        for ids in chunks(list(found)):
            q = sa.select(lm.c.run_uuid, lm.c.key, lm.c.value, lm.c.step, lm.c.timestamp, lm.c.is_nan).where(lm.c.run_uuid.in_(ids))
            if keys is not None:
                q = q.where(lm.c.key.in_(sorted(keys)))
            latest = conn.execute(q).all()
            if whole_history:
                number = sa.case((m.c.is_nan == sa.true(), None), else_=m.c.value)
                q = (
                    sa.select(m.c.run_uuid, m.c.key, sa.func.min(number), sa.func.max(number), sa.func.count())
                    .where(m.c.run_uuid.in_(ids))
                    .group_by(m.c.run_uuid, m.c.key)
                )
                if keys is not None:
                    q = q.where(m.c.key.in_(sorted(keys)))
                aggregates.update({(row[0], row[1]): tuple(row[2:]) for row in conn.execute(q)})
            for row in latest:
                low, high, points = aggregates.get((row.run_uuid, row.key), (None, None, None))
                value = math.nan if row.is_nan else float(row.value)
                found[row.run_uuid][row.key] = MetricSummary(value, int(row.step), int(row.timestamp), low, high, points)
    return found
