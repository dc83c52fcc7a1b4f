"""Scale-out (issue 19, docs/scale-out.md): a plan's shards on Spark, and concurrent shards
against tracking servers, with a model of the time for a million runs.

    python benchmarks/scale_out.py [--runs 2000] [--server-runs 300]

1. A workload of --runs runs in nested families (tests/test_shards.nested_store), generated
   straight into a sqlite store, exported in 8 shards as Spark tasks (local[2]) and merged;
   the merged bundle is verified full and compared with a single-process export of the
   same store (0 differences expected), both timed.
2. --server-runs runs of that shape served by an `mlflow server` with 2 workers, copied
   into a fresh server with 2 workers by 1, 2 and 4 shard processes at once (`copy --plan
   PLAN --shard K`); each trial checked with `trackport verify`.
From 2, the rate of one shard and the rate one target server gave its busiest trial make
the model: T(1M runs, N machines) = 1M / min(N x shard rate, servers x server rate).
Results go to benchmarks/results/scale-out-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from servers import MlflowServer, start_all  # noqa: E402
from test_shards import nested_store  # noqa: E402

from trackport.opening import open_source  # noqa: E402
from trackport.stores.base import Selection  # noqa: E402
from trackport.transfer.compare import compare_stores  # noqa: E402
from trackport.transfer.shards import load_plan  # noqa: E402

EVERYTHING = Selection(include_deleted=True)


def trackport(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run(["trackport", *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def families_for(runs: int) -> int:
    return max(1, round(runs / 2.75))  # nested_store makes about 2.75 runs per family


def spark_export(work: Path, runs: int) -> dict:
    from pyspark.sql import SparkSession

    from trackport.spark import export_plan

    store = nested_store(work / "store.db", families=families_for(runs))
    plan = work / "plan.json"
    plan_s = trackport("plan", store, str(plan), "--shards", "8", "--include-deleted")
    spark = (SparkSession.builder.master("local[2]").appName("trackport-bench")
             .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1").getOrCreate())
    spark.sparkContext.parallelize([0], 1).count()  # the JVM and a Python worker up before timing
    try:
        started = time.perf_counter()
        result = export_plan(spark, str(plan), str(work / "parts"), str(work / "merged"), workers=2)
        sharded_s = time.perf_counter() - started
    finally:
        spark.stop()
    verify_s = trackport("bundle", "verify", str(work / "merged"), "--level", "full")
    single_s = trackport("export", store, str(work / "single"), "--include-deleted", "--workers", "2")
    with open_source(str(work / "single")) as one, open_source(str(work / "merged")) as merged:
        differences = len(list(compare_stores(one, merged, EVERYTHING)))
    return {"runs": load_plan(plan).runs, "shards": 8, "plan_s": plan_s, "spark_export_and_merge_s": sharded_s,
            "single_export_s": single_s, "verify_full_s": verify_s, "differences_from_single_export": differences,
            "merged_files": result.files, "hard_linked": result.linked}


def served_source(work: Path, runs: int) -> MlflowServer:
    """nested_store laid out as a server with proxied artifacts keeps it, then served."""
    root = work / "source"
    root.mkdir()
    uri = nested_store(root / "mlflow.db", families=families_for(runs))
    db = Path(uri[len("sqlite:///"):])
    shutil.rmtree(Path(str(db) + ".trackport"), ignore_errors=True)
    artifacts = root / "mlartifacts"
    with sqlite3.connect(db) as con:
        for exp_id, location in con.execute("select experiment_id, artifact_location from experiments").fetchall():
            folder = Path(location.removeprefix("file://"))
            if folder.is_dir():
                shutil.copytree(folder, artifacts / str(exp_id), dirs_exist_ok=True)
        con.execute("update experiments set artifact_location = 'mlflow-artifacts:/' || experiment_id")
        con.execute("update runs set artifact_uri = 'mlflow-artifacts:/' || experiment_id || '/' || run_uuid || '/artifacts'")
    return MlflowServer(root, workers=2, artifacts_destination=str(artifacts))


def concurrent_shards(work: Path, runs: int) -> dict:
    source = served_source(work, runs)
    targets = [MlflowServer(work / f"target-{n}", workers=2) for n in (1, 2, 4)]
    start_all([source, *targets])
    trials = {}
    try:
        for n, target in zip((1, 2, 4), targets):
            plan = work / f"plan-{n}.json"
            trackport("plan", source.url, str(plan), "--shards", str(n), "--include-deleted")
            started = time.perf_counter()
            jobs = [subprocess.Popen(["trackport", "copy", "--plan", str(plan), "--shard", str(k), target.url, "--workers", "2"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in range(n)]
            errors = [job.communicate()[1] for job in jobs]
            wall = time.perf_counter() - started
            assert all(job.returncode == 0 for job in jobs), errors
            verify = subprocess.run(["trackport", "verify", source.url, target.url, "--include-deleted"], capture_output=True, text=True)
            trials[n] = {"wall_s": wall, "runs_per_s": load_plan(plan).runs / wall, "verify_exit": verify.returncode}
    finally:
        for server in (source, *targets):
            server.stop()
    shard_rate = trials[1]["runs_per_s"]
    server_rate = max(t["runs_per_s"] for t in trials.values())
    model = {f"{machines} machines, {servers} target servers": 1_000_000 / min(machines * shard_rate, servers * server_rate) / 3600
             for machines, servers in ((1, 1), (4, 1), (8, 2), (16, 4), (32, 8))}
    return {"runs": load_plan(work / "plan-1.json").runs, "trials": trials, "shard_runs_per_s": shard_rate,
            "server_runs_per_s": server_rate, "model_hours_for_1M_runs": model}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--server-runs", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        work = Path(tmp)
        (work / "spark").mkdir()
        (work / "servers").mkdir()
        results = {"spark": spark_export(work / "spark", args.runs), "servers": concurrent_shards(work / "servers", args.server_runs)}
    out = HERE / "results" / f"scale-out-{int(time.time())}.json"
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
