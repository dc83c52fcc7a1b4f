"""A tracking server's PostgreSQL database read and restored directly, against its REST API and
a raw psycopg COPY baseline, all in one run (issue 17, "Must show"):

    python benchmarks/server_db.py [--runs 20] [--metrics 10] [--steps 1000] [--workers 8] [--verify]
    python benchmarks/server_db.py --preset small --verify    # the issue's 100-run preset

One throwaway PostgreSQL cluster (tests/dbservers.py), databases made by `mlflow db upgrade`
(one upgrade, copies by CREATE DATABASE ... TEMPLATE), the same workload bundle
(benchmarks/run.py's generator: N runs x metrics x steps, 20 params, 10 tags, a 10 kB file; or
a preset of benchmarks/run.py whole, e.g. `small`: 100 runs of 10,000 points and a 1 MB file):

  restore  (a) REST:    trackport import BUNDLE http://server   (mlflow server on database A)
           (b) direct:  trackport import BUNDLE postgresql+psycopg://.../B
           (b2) bulk:   trackport import BUNDLE postgresql+psycopg://.../B2 --bulk-load (one
                        transaction, the metrics table's keys and indexes made after the load)
           (c) raw:     psycopg COPY of the same metric rows into C's metrics table, nothing
                        else (its runs rows made first, untimed; the rows' CSV made untimed)
  read     (d) REST:    trackport export http://server BUNDLE   (database A, filled by (a))
           (e) direct:  trackport export postgresql+psycopg://.../A BUNDLE
           (f) raw:     psycopg COPY (SELECT ... FROM metrics) TO STDOUT of database A

Each trackport phase is a process of its own (benchmarks/measure.py): wall time, and the
transfer's own time from its --json summary (stores open; the imports a transfer makes on
its first run, such as pandas, which pyarrow loads on its first array, inside it, for every
store alike). The 100-run `small` preset (1M points, 100 MB of artifacts) takes 10 minutes
and more through REST on this 2-core machine, so the default is 20 runs of 10,000 points
with a 10 kB file (200k points); --preset small gives the preset.
Results: benchmarks/results/server-db-<runs>x<metrics>x<steps>-<time>.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from dbservers import PostgresCluster  # noqa: E402
from run import PRESETS, Measure, Workload, WorkloadSource, measure  # noqa: E402
from servers import MlflowServer  # noqa: E402

from trackport.opening import open_bundle_sink, open_source  # noqa: E402
from trackport.stores.base import Selection  # noqa: E402
from trackport.transfer import transfer  # noqa: E402


def trackport(*args: str) -> list[str]:
    return [sys.executable, "-m", "trackport.cli.main", *args, "--json"]


class NamedRuns(WorkloadSource):
    """The workload with each run's name also as its mlflow.runName tag, as MLflow logs it (a
    SQL store keeps both; without the tag, verify would count the one every target adds)."""

    def iter_runs(self, experiment, selection):
        for run in super().iter_runs(experiment, selection):
            run.tags["mlflow.runName"] = run.run_name
            yield run


def make_bundle(workload: Workload, path: Path) -> None:
    with open_bundle_sink(str(path)) as sink:
        summary = transfer(NamedRuns(workload), sink, Selection())
    assert summary.failed == 0, summary.failures


def raw_restore(pg: PostgresCluster, database: str, bundle: Path) -> float:
    """Seconds psycopg's COPY takes to write the bundle's metric rows into the metrics table
    (one COPY, CSV made beforehand): the database's own limit for these rows."""
    with open_source(str(bundle)) as source:
        experiment = next(iter(source.list_experiments(Selection())))
        runs = list(source.iter_runs(experiment, Selection()))
        tables = []
        for run in runs:
            for batch in source.iter_metric_batches(run):
                tables.append(pa.table({
                    "key": batch.column("key"), "value": batch.column("value"), "timestamp": batch.column("timestamp"),
                    "step": batch.column("step"), "is_nan": pa.repeat(pa.scalar(False), batch.num_rows),
                    "run_uuid": pa.repeat(pa.scalar(run.run_id), batch.num_rows),
                }))
    out = io.BytesIO()
    pa_csv.write_csv(pa.concat_tables(tables), out, pa_csv.WriteOptions(include_header=False))
    data = out.getvalue()
    with pg.connect(database) as conn:
        conn.autocommit = False
        conn.execute("INSERT INTO experiments (experiment_id, name, lifecycle_stage, creation_time, last_update_time)"
                     " VALUES (1, 'benchmark', 'active', 0, 0)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status,"
                " start_time, source_version, lifecycle_stage, artifact_uri, experiment_id)"
                " VALUES (%s, '', 'UNKNOWN', '', '', 'bench', 'FINISHED', 0, '', 'active', '', 1)",
                [(r.run_id,) for r in runs],
            )
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
            "COPY metrics (key, value, timestamp, step, is_nan, run_uuid) FROM STDIN WITH (FORMAT csv)"
        ) as copy:
            for start in range(0, len(data), 1 << 20):
                copy.write(data[start : start + (1 << 20)])
        conn.commit()
        return time.perf_counter() - started


def raw_read(pg: PostgresCluster, database: str) -> tuple[float, int]:
    """Seconds to stream every metric row out of the database (COPY TO STDOUT, binary), and the rows."""
    started = time.perf_counter()
    size = 0
    with pg.connect(database) as conn, conn.cursor() as cur, cur.copy(
        "COPY (SELECT run_uuid, key, step, timestamp, value, is_nan FROM metrics) TO STDOUT WITH (FORMAT binary)"
    ) as copy:
        for chunk in copy:
            size += len(chunk)
    seconds = time.perf_counter() - started
    with pg.connect(database) as conn:
        rows = conn.execute("SELECT count(*) FROM metrics").fetchone()[0]
    return seconds, rows


def served_and_verified(bundle: Path, work: Path, db, database: str, workers: list[str], env: dict,
                        mode: str = "direct") -> list[str]:
    """`trackport verify BUNDLE http://server --level full` against an mlflow server started
    on the restored database (its artifacts destination the one the restore wrote)."""
    destination = work / f"{db.name}-{mode}-art"
    server = MlflowServer(work / f"{db.name}-{mode}-served", backend_store_uri=db.url(database),
                          artifacts_destination=str(destination)).start().wait_ready()
    try:
        answer = subprocess.run([sys.executable, "-m", "trackport.cli.main", "verify", str(bundle), server.url,
                                 "--level", "full"], capture_output=True, text=True, env={**os.environ, **env})
    finally:
        server.stop()
    return [f"{db.name} ({mode}): restored database served, verify through REST: exit {answer.returncode}: "
            f"{' | '.join((answer.stdout + answer.stderr).strip().splitlines()[-6:])}"]


def restore_mariadb(bundle: Path, work: Path, workers: list[str], env: dict) -> list[str]:
    """The same bundle restored directly into MariaDB (a database `mlflow db upgrade` made), then verified served."""
    from dbservers import MariaDBServer

    maria = MariaDBServer().start().wait_ready()
    try:
        database = maria.create_database("direct")
        subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", maria.url(database)], check=True, capture_output=True)
        target = f"{maria.url(database)}?artifacts_destination={work / 'mariadb-direct-art'}"
        restored = measure("MariaDB direct import", trackport("import", str(bundle), target, *workers), env)
        lines = [f"mariadb: direct import {restored.wall:.1f} s wall, transfer {restored.transfer_s} s, exit {restored.returncode}"]
        return lines + served_and_verified(bundle, work, maria, database, workers, env)
    finally:
        maria.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--preset", choices=PRESETS, help="a preset of benchmarks/run.py, in place of --runs/--metrics/--steps")
    parser.add_argument("--verify", action="store_true",
                        help="also restore into MariaDB, and verify both restored databases through a server started on each")
    args = parser.parse_args()
    workload = Workload(*PRESETS[args.preset]) if args.preset else Workload(args.runs, args.metrics, args.steps, 20, 10, 10_000)
    work = Path(tempfile.mkdtemp(prefix="trackport-bench-serverdb-"))
    env = {"TRACKPORT_HOME": str(work / "home")}
    os.environ.update(env)
    pg = PostgresCluster().start().wait_ready()
    server = None
    results: list[Measure] = []
    verified: list[str] = []
    try:
        bundle = work / "bundle"
        make_bundle(workload, bundle)
        # The schema revision the installed MLflow expects is read from a template MLflow
        # builds once per version (stores.sqlite.schema; 5-10 s of MLflow's imports): made
        # here, untimed, as any earlier restore or sqlite import on the machine would have.
        from trackport.stores.sqlite.schema import installed_mlflow_version, schema_template

        schema_template(work / "home", installed_mlflow_version())
        template = pg.create_database("tmpl")
        subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", pg.url(template)], check=True, capture_output=True)
        names = {}
        for label in ("rest", "direct", "bulk", "raw"):
            names[label] = f"{label}_{os.getpid()}"
            pg._admin(f"CREATE DATABASE {names[label]} TEMPLATE {template}")
        print(f"workload: {workload.runs} runs, {workload.points:,} metric points; PostgreSQL {pg.port}", flush=True)

        server = MlflowServer(work / "server", backend_store_uri=pg.url(names["rest"])).start().wait_ready()
        workers = ["--workers", str(args.workers)]
        for phase, command in (
            ("(a) REST import", trackport("import", str(bundle), server.url, *workers)),
            ("(b) direct import", trackport("import", str(bundle), f"{pg.url(names['direct'])}?artifacts_destination={work / 'postgresql-direct-art'}", *workers)),
            ("(b2) bulk import", trackport("import", str(bundle), f"{pg.url(names['bulk'])}?artifacts_destination={work / 'postgresql-bulk-art'}",
                                           "--bulk-load", *workers)),
        ):
            results.append(measure(phase, command, env))
            print(f"{phase}: {results[-1].wall:.1f} s wall, transfer {results[-1].transfer_s}", flush=True)
        copy_s = raw_restore(pg, names["raw"], bundle)
        results.append(Measure("(c) raw COPY write", copy_s, 0.0, 0.0, 0, copy_s))
        results.append(measure("(d) REST export", trackport("export", server.url, str(work / "rest-out"), *workers), env))
        server.stop()
        server = None
        results.append(measure("(e) direct export", trackport(
            "export", f"{pg.url(names['rest'])}?artifacts_destination={work / 'server' / 'mlartifacts'}",
            str(work / "direct-out"), *workers), env))
        read_s, rows = raw_read(pg, names["rest"])
        assert rows == workload.points, (rows, workload.points)
        results.append(Measure("(f) raw COPY read", read_s, 0.0, 0.0, 0, read_s))
        if args.verify:
            verified = served_and_verified(bundle, work, pg, names["direct"], workers, env, "direct")
            verified += served_and_verified(bundle, work, pg, names["bulk"], workers, env, "bulk")
    finally:
        if server is not None:
            server.stop()
        pg.stop()
    if args.verify:
        verified += restore_mariadb(bundle, work, workers, env)

    by = {r.phase: r for r in results}
    failed = [r.phase for r in results if r.returncode != 0]
    print(f"\n{'phase':<22}{'wall s':>10}{'transfer s':>12}{'points/s':>14}")
    for r in results:
        seconds = r.transfer_s or r.wall
        print(f"{r.phase:<22}{r.wall:>10.2f}{seconds:>12.2f}{workload.points / seconds:>14,.0f}")
    t = {name: (by[name].transfer_s or by[name].wall) for name in by}
    rates = {
        "restore: direct x REST (transfer)": t["(a) REST import"] / t["(b) direct import"],
        "restore: direct x REST (wall)": by["(a) REST import"].wall / by["(b) direct import"].wall,
        "restore: raw COPY x direct (transfer)": t["(b) direct import"] / t["(c) raw COPY write"],
        "restore: bulk x REST (transfer)": t["(a) REST import"] / t["(b2) bulk import"],
        "restore: bulk x REST (wall)": by["(a) REST import"].wall / by["(b2) bulk import"].wall,
        "restore: bulk x direct (transfer)": t["(b) direct import"] / t["(b2) bulk import"],
        "restore: bulk / raw COPY (transfer)": t["(b2) bulk import"] / t["(c) raw COPY write"],
        "read: direct x REST (transfer)": t["(d) REST export"] / t["(e) direct export"],
        "read: direct x REST (wall)": by["(d) REST export"].wall / by["(e) direct export"].wall,
        "read: raw COPY x direct (transfer)": t["(e) direct export"] / t["(f) raw COPY read"],
    }
    print()
    for name, value in rates.items():
        print(f"{name:<42}{value:>10.1f}x")
    if args.verify:
        for line in verified:
            print(line)
    report = {"preset": args.preset, "workload": vars(workload), "workers": args.workers, "failed": failed,
              "verified": verified if args.verify else None,
              "phases": [vars(r) for r in results], "ratios": rates, "machine": f"{os.cpu_count()} cores"}
    shape = args.preset or f"{workload.runs}x{workload.metrics}x{workload.steps}"
    out = HERE / "results" / f"server-db-{shape}-{int(time.time())}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
