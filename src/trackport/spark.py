"""Sharded exports on Spark (`pip install 'trackport[spark]'`; docs/scale-out.md).

The driver reads the plan, runs one Spark task per shard (each exports its shard into its
own bundle part, as `trackport export --plan PLAN --shard K PART` does), then merges the
parts into one bundle. Spark schedules, retries a failed task and reports; trackport
brings nothing of its own for that. A retried task resumes its part where the failed
attempt left it. On Databricks, run `export_plan` from a job's Python task with the
cluster's `spark` session; there the parts and the output must be on storage every
worker sees (a Unity Catalog volume or DBFS path).

    from trackport.spark import export_plan
    result = export_plan(spark, "plan.json", "/Volumes/main/backups/parts", "/Volumes/main/backups/bundle")
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trackport.bundle.merge import MergeResult, merge_parts
from trackport.config import DEFAULT, TransferConfig
from trackport.errors import TrackportError
from trackport.opening import open_bundle_sink, open_bundle_source, open_source
from trackport.stores.registry import PATH, locate
from trackport.transfer import transfer
from trackport.transfer.shards import ShardSource, load_plan, shard_selection


@dataclass(frozen=True)
class ShardOutcome:
    index: int
    part: str
    counts: dict  # the transfer summary's counts, by kind
    failed: int
    error: str | None = None  # a stop (bad input, a full disk...): the shard did not finish


def export_shard(plan_path: str, index: int, part: str, config: TransferConfig = DEFAULT) -> ShardOutcome:
    """Shard `index` of the plan exported into the bundle directory `part` (resumed if it
    holds an earlier attempt's work)."""
    plan = load_plan(plan_path)
    opener = open_bundle_source if locate(plan.source).kind == PATH else open_source
    try:
        with ShardSource(opener(plan.source, config=config), plan, index) as source:
            with open_bundle_sink(part, config=config) as sink:
                summary = transfer(source, sink, shard_selection(plan), config=config)
    except TrackportError as exc:
        return ShardOutcome(index, part, {}, 0, f"{type(exc).__name__}: {exc}")
    return ShardOutcome(index, part, summary.counts, summary.failed)


def export_plan(spark: Any, plan_path: str, parts_dir: str, out: str, *, workers: int = DEFAULT.workers) -> MergeResult:
    """Every shard of the plan exported as a Spark task, then the parts merged into `out`.
    Raises RuntimeError naming the shards that failed (their parts stay, to be run again)."""
    plan = load_plan(plan_path)
    parts = [str(Path(parts_dir) / f"part-{k:05d}") for k in range(len(plan.shards))]
    config = TransferConfig(workers=workers)
    rdd = spark.sparkContext.parallelize(list(range(len(parts))), len(parts))
    outcomes = rdd.map(lambda k: export_shard(plan_path, k, parts[k], config)).collect()
    bad = [o for o in outcomes if o.error or o.failed]
    if bad:
        raise RuntimeError("; ".join(
            f"shard {o.index}: {o.error or f'{o.failed} units failed'} (part {o.part})" for o in sorted(bad, key=lambda o: o.index)
        ))
    return merge_parts(
        Path(out), [Path(p) for p in parts], [frozenset(s.run_ids) for s in plan.shards],
        source_uri=plan.source, selection=plan.selection.to_json(), plan_id=plan.plan_id, plan_path=plan_path,
    )
