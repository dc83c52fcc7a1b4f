"""Sharded transfers (docs/scale-out.md): a plan, shards run as separate processes the way a
Kubernetes Indexed Job runs them (only JOB_COMPLETION_INDEX differs), the merge, and the
shards of a plan over a bundle imported into one server at the same time."""
from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from memory_source import BASE_TIME, MemorySource, metric_batch
from trackport.domain import PARENT_RUN_ID_TAG, Experiment, Run
from trackport.opening import open_sink, open_source
from trackport.stores.base import Selection
from trackport.transfer import transfer
from trackport.transfer.compare import compare_stores
from trackport.transfer.shards import load_plan

EVERYTHING = Selection(include_deleted=True)


def nested_store(path: Path, families: int = 20) -> str:
    """A sqlite store of three experiments (and one without runs) holding `families` run
    families: a parent with 0 to 4 children, one child with a child of its own, metric
    histories of different lengths, artifacts, some runs deleted."""
    rng = random.Random(5)
    experiments = [Experiment(str(i), f"shards {i}", creation_time=BASE_TIME + i, last_update_time=BASE_TIME + i)
                   for i in range(1, 5)]
    runs, metrics, artifacts = [], {}, {}

    def add(exp: str, parent: str | None, t: int) -> str:
        run_id = f"{rng.getrandbits(128):032x}"
        tags = {"mlflow.runName": f"r{len(runs)}"} | ({PARENT_RUN_ID_TAG: parent} if parent else {})
        deleted = rng.random() < 0.1
        runs.append(Run(run_id, exp, f"r{len(runs)}", "u", "FINISHED", BASE_TIME + t, BASE_TIME + t + 500,
                        lifecycle_stage="deleted" if deleted else "active", deleted_time=BASE_TIME + t + 900 if deleted else None,
                        params={"n": str(t)}, tags=tags))
        keys = rng.randint(1, 4)
        metrics[run_id] = metric_batch((f"m{k}", s, BASE_TIME + t + s, rng.random()) for k in range(keys) for s in range(rng.randint(1, 50)))
        artifacts[run_id] = {"a.txt": run_id.encode(), "d/b.bin": rng.randbytes(rng.randint(0, 3000))}
        return run_id

    t = 0
    for f in range(families):
        exp = str(1 + f % 3)
        parent = add(exp, None, t := t + 10)
        for c in range(rng.randint(0, 4)):
            child = add(exp, parent, t := t + 10)
            if c == 0 and f % 2:
                add(exp, child, t := t + 10)
    uri = f"sqlite:///{path}"
    with open_sink(uri) as sink:
        summary = transfer(MemorySource(experiments, runs, metrics, artifacts), sink, EVERYTHING)
    assert summary.failed == 0, summary.failures
    return uri


def trackport(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(["trackport", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, **popen)


def finished(process: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return nested_store(tmp_path_factory.mktemp("shards") / "mlflow.db")


def test_plan_keeps_families_together_and_balances(store, tmp_path):
    plan_file = tmp_path / "plan.json"
    result = finished(trackport("plan", store, str(plan_file), "--shards", "4", "--include-deleted"))
    assert result.returncode == 0, result.stderr
    plan = load_plan(plan_file)
    with open_source(store) as source:
        runs = {r.run_id: r for e in source.list_experiments(EVERYTHING) for r in source.iter_runs(e, EVERYTHING)}
    shard_of = {r: s.index for s in plan.shards for r in s.run_ids}
    assert sorted(shard_of) == sorted(runs) and plan.runs == len(runs)  # every run once
    for run in runs.values():
        if run.parent_run_id:
            assert shard_of[run.run_id] == shard_of[run.parent_run_id]
    weights = [s.weight for s in plan.shards]
    assert max(weights) <= 1.34 * (sum(weights) / len(weights)), weights
    assert "4" in plan.shards[0].experiment_ids  # the experiment without runs: shard 0's
    # Plans are refused for typos and files that are not plans, in one line.
    assert finished(trackport("plan", store, str(plan_file), "--shards", "4")).returncode == 3  # exists
    (tmp_path / "bad.json").write_text(json.dumps({"format": "trackport-plan", "format_version": "1.0"}))
    bad = finished(trackport("export", "--plan", str(tmp_path / "bad.json"), "--shard", "0", str(tmp_path / "p")))
    assert bad.returncode == 3 and "plan schema" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    over = finished(trackport("export", "--plan", str(plan_file), "--shard", "9", str(tmp_path / "p")))
    assert over.returncode == 3 and "shards 0 to 3" in over.stderr
    assert not (tmp_path / "p").exists()


def test_shards_as_an_indexed_job_merge_into_the_single_export(store, tmp_path):
    plan_file = tmp_path / "plan.json"
    assert finished(trackport("plan", store, str(plan_file), "--shards", "4", "--include-deleted")).returncode == 0
    parts = [tmp_path / f"part-{k}" for k in range(4)]
    # Four processes at once, as four pods of an Indexed Job: the same command, the index differs.
    jobs = [trackport("export", "--plan", str(plan_file), str(part), env={"JOB_COMPLETION_INDEX": str(k)})
            for k, part in enumerate(parts)]
    for job in jobs:
        done = finished(job)
        assert done.returncode == 0, done.stderr
    # A merge without shard 2 is refused, naming it; nothing is written.
    merged = tmp_path / "merged"
    missing = finished(trackport("bundle", "merge", str(merged), *map(str, parts[:2] + parts[3:]), "--plan", str(plan_file)))
    assert missing.returncode == 3 and "shard 2 " in missing.stderr and "--shard 2" in missing.stderr, missing.stderr
    assert not merged.exists()
    # A shard killed half-way and run again alone completes (resume of its own part).
    killed = trackport("export", "--plan", str(plan_file), "--shard", "2", str(tmp_path / "again"), "--workers", "1")
    deadline = time.monotonic() + 120
    while not list((tmp_path / "again").glob("experiments/*/runs/*/run.json")) and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.kill()
    killed.communicate()
    assert killed.returncode == -9 and not (tmp_path / "again" / "manifest.jsonl").exists()
    again = finished(trackport("export", "--plan", str(plan_file), "--shard", "2", str(tmp_path / "again")))
    assert again.returncode == 0, again.stderr
    result = finished(trackport("bundle", "merge", str(merged), *map(str, parts[:2]), str(tmp_path / "again"),
                                str(parts[3]), "--plan", str(plan_file)))
    assert result.returncode == 0, result.stderr
    verified = finished(trackport("bundle", "verify", str(merged), "--level", "full"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # (benchmarks/scale_out.py compares a merge of 2,000 runs with a single export as well)
    with open_source(store) as source, open_source(str(merged)) as other:
        assert list(compare_stores(source, other, EVERYTHING)) == []


def test_shards_of_a_bundle_import_into_one_server_at_once(store, tmp_path, fresh_server):
    bundle = tmp_path / "bundle"
    assert finished(trackport("export", store, str(bundle), "--include-deleted")).returncode == 0
    plan_file = tmp_path / "plan.json"
    assert finished(trackport("plan", str(bundle), str(plan_file), "--shards", "4")).returncode == 0
    jobs = [trackport("import", "--plan", str(plan_file), "--shard", str(k), fresh_server.url) for k in range(4)]
    for job in jobs:
        done = finished(job)
        assert done.returncode == 0, done.stderr
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(fresh_server.url)
    names = [e.name for e in client.search_experiments(view_type=ViewType.ALL)]
    assert sorted(n for n in names if n.startswith("shards")) == [f"shards {i}" for i in range(1, 5)]  # each once
    verified = finished(trackport("verify", str(bundle), fresh_server.url))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_plan_runs_on_spark_in_local_mode(store, tmp_path):
    """The driver plans; 8 Spark tasks export the shards; the merged bundle verifies full and
    holds what the store holds."""
    from pyspark.sql import SparkSession

    from trackport.spark import export_plan

    plan_file = tmp_path / "plan.json"
    assert finished(trackport("plan", store, str(plan_file), "--shards", "8", "--include-deleted")).returncode == 0
    spark = (SparkSession.builder.master("local[2]").appName("trackport-test")
             .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1").getOrCreate())
    try:
        result = export_plan(spark, str(plan_file), str(tmp_path / "parts"), str(tmp_path / "merged"), workers=2)
    finally:
        spark.stop()
    assert result.parts == 8 and result.counts["runs"] == load_plan(plan_file).runs
    verified = finished(trackport("bundle", "verify", str(tmp_path / "merged"), "--level", "full"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    with open_source(store) as source, open_source(str(tmp_path / "merged")) as merged:
        assert list(compare_stores(source, merged, EVERYTHING)) == []


def test_logged_models_go_with_their_runs_and_the_registry_merges_as_its_own_part(model_sample_sqlite, tmp_path):
    store = model_sample_sqlite.uri
    plan_file = tmp_path / "plan.json"
    assert finished(trackport("plan", store, str(plan_file), "--shards", "2", "--include-deleted")).returncode == 0
    parts = [tmp_path / "part-0", tmp_path / "part-1", tmp_path / "registry"]
    for k in range(2):
        done = finished(trackport("export", "--plan", str(plan_file), "--shard", str(k), str(parts[k])))
        assert done.returncode == 0, done.stderr
    done = finished(trackport("export", store, str(parts[2]), "--models-only"))
    assert done.returncode == 0, done.stderr
    merged = tmp_path / "merged"
    done = finished(trackport("bundle", "merge", str(merged), *map(str, parts), "--plan", str(plan_file)))
    assert done.returncode == 0, done.stderr
    assert finished(trackport("bundle", "verify", str(merged), "--level", "full")).returncode == 0
    with open_source(store) as source, open_source(str(merged)) as other:
        assert list(compare_stores(source, other, EVERYTHING)) == []


def test_a_shard_keeps_the_plans_trace_selection(tmp_path):
    """The plan's --trace-filter and --traces-since reach every shard, through the plan file."""
    from trackport.transfer.shards import Shard, ShardPlan, save_plan, shard_selection

    selection = Selection(include_deleted=True, trace_filter="trace.status = 'OK'", traces_since=1_700_000_000_000,
                          leave_kinds=("scorer",))
    plan = ShardPlan("0123456789abcdef", "sqlite:///x.db", selection, (Shard(0, ("r1",), ("1",), 1),), "2026-12-03T00:00:00Z")
    save_plan(plan, tmp_path / "plan.json")
    taken = shard_selection(load_plan(tmp_path / "plan.json"))
    assert (taken.trace_filter, taken.traces_since, taken.leave_kinds) == (
        "trace.status = 'OK'", 1_700_000_000_000, ("scorer",))


def test_a_shard_reads_traces_with_the_selection(tmp_path):
    """A source that reads traces (iter_traces(experiment, selection): a server, a database)
    is handed the selection through the shard, which keeps the traces of its runs (and,
    in the experiment's first shard, those of no run); older traces come back not selected."""
    from trackport.kinds import TRACE, Unit
    from trackport.stores.base import NotSelected, read_units
    from trackport.transfer.shards import Shard, ShardPlan, ShardSource

    experiment = Experiment("1", "traced", creation_time=BASE_TIME, last_update_time=BASE_TIME)

    class TracedSource(MemorySource):
        def iter_traces(self, exp, selection=None):
            for i, run in enumerate(("r1", "r2", None)):
                unit = Unit(TRACE.name, f"tr-{i}", exp.experiment_id, f"t{i}", {"run": run} if run else {}, {"request_time": BASE_TIME + i})
                old = selection is not None and selection.traces_since is not None and BASE_TIME + i < selection.traces_since
                yield NotSelected(TRACE.name, unit.unit_id, unit.name, "old") if old else unit

    selection = Selection(include_deleted=True, traces_since=BASE_TIME + 1)
    plan = ShardPlan("0123456789abcdef", "memory:test", selection,
                     (Shard(0, ("r1",), ("1",), 1), Shard(1, ("r2",), ("1",), 1)), "2026-12-03T00:00:00Z")
    source = TracedSource([experiment], [])
    first, second = (list(read_units(ShardSource(source, plan, i), TRACE, experiment, selection)) for i in (0, 1))
    assert [(type(u).__name__, u.unit_id if isinstance(u, Unit) else u.source_id) for u in first] == [
        ("NotSelected", "tr-0"), ("Unit", "tr-2")]  # its run's old trace, and the trace of no run
    assert [u.unit_id for u in second] == ["tr-1"]
