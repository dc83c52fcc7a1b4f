"""The benchmark harness: real servers, a deterministic workload, trackport against the raw
limit baseline measured in the same run.

    python benchmarks/run.py --preset small [--workers 8] [--server-workers 1] [--interleaved]
                             [--only baseline-read,export,sqlite-export,sqlite-import]

Each phase runs as its own process, so its wall time, CPU seconds (user + system) and peak
RSS are its own. Figures are printed as a table and written to benchmarks/out/<run>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the test suite's server fixture, reused as is

from servers import MlflowServer, start_all  # noqa: E402

from trackport.config import TransferConfig  # noqa: E402
from trackport.domain import METRIC_SCHEMA, ArtifactFile, Experiment, Run  # noqa: E402
from trackport.stores.base import Selection, SourceStore, StoreDescription  # noqa: E402
from trackport.stores.sqlite.store import SqliteStore  # noqa: E402
from trackport.transfer import transfer  # noqa: E402

PRESETS = {
    # runs, metrics per run, steps per metric, params, tags, artifact bytes per run
    "tiny": (10, 10, 100, 20, 10, 100_000),
    "small": (100, 10, 1000, 20, 10, 1_000_000),
    "large": (1000, 10, 1000, 20, 10, 1_000_000),
}
BASE_TIME = 1_700_000_000_000


@dataclass(frozen=True)
class Workload:
    runs: int
    metrics: int
    steps: int
    params: int
    tags: int
    artifact_bytes: int
    # Every run logging at the same milliseconds: the worst case for MLflow's metric primary
    # key (key, timestamp, step, ...), where the runs' points interleave in the index.
    interleaved: bool = False

    @property
    def points(self) -> int:
        return self.runs * self.metrics * self.steps


STEP_MS = 100  # one logged step every 100 ms


class WorkloadSource(SourceStore):
    """The workload, generated deterministically (numpy, seeded per run). Runs follow one
    another, as in a training pipeline: each logs its history between its start and end."""

    def __init__(self, workload: Workload) -> None:
        self.w = workload
        self.experiment = Experiment("1", "benchmark", creation_time=BASE_TIME, last_update_time=BASE_TIME)
        self.run_ms = workload.steps * STEP_MS + 1000

    def describe(self) -> StoreDescription:
        return StoreDescription("benchmark", "benchmark://workload")

    def list_experiments(self, selection: Selection) -> Iterator[Experiment]:
        yield self.experiment

    def _start(self, run_id: str) -> int:
        return BASE_TIME if self.w.interleaved else BASE_TIME + int(run_id, 16) * self.run_ms

    def iter_runs(self, experiment: Experiment, selection: Selection) -> Iterator[Run]:
        for i in range(self.w.runs):
            run_id = f"{i:032x}"
            yield Run(
                run_id=run_id, experiment_id="1", run_name=f"run-{i}", user_id="bench", status="FINISHED",
                start_time=self._start(run_id), end_time=self._start(run_id) + self.run_ms - 500,
                params={f"param_{p}": f"value-{i}-{p}" for p in range(self.w.params)},
                tags={f"tag_{t}": f"tag-value-{i}-{t}" for t in range(self.w.tags)},
            )

    def iter_metric_batches(self, run: Run) -> Iterator[pa.RecordBatch]:
        rng = np.random.default_rng(int(run.run_id, 16))
        steps = np.arange(self.w.steps, dtype=np.int64)
        stamps = self._start(run.run_id) + 500 + steps * STEP_MS
        for k in range(self.w.metrics):
            yield pa.RecordBatch.from_arrays(
                [pa.array([f"metric_{k:02d}"] * self.w.steps), pa.array(steps),
                 pa.array(stamps), pa.array(rng.random(self.w.steps))],
                schema=METRIC_SCHEMA,
            )

    def list_artifacts(self, run: Run) -> Iterator[ArtifactFile]:
        yield ArtifactFile("model/weights.bin", self.w.artifact_bytes)

    def open_artifact(self, run: Run, path: str):
        import io

        return io.BytesIO(np.random.default_rng(int(run.run_id, 16)).bytes(self.w.artifact_bytes))


def build_source_db(workload: Workload, directory: Path) -> Path:
    """The workload written into a sqlite store laid out as a server with proxied
    artifacts keeps it (artifact URIs mlflow-artifacts:/...), ready to be served."""
    db = directory / "mlflow.db"
    store = SqliteStore(f"sqlite:///{db}", create=True, artifact_root=str(directory / "mlartifacts"))
    summary = transfer(WorkloadSource(workload), store, Selection(), config=TransferConfig(workers=2))
    store.close()
    assert summary.failed == 0, summary.failures
    with sqlite3.connect(db) as con:
        con.execute("update experiments set artifact_location = 'mlflow-artifacts:/' || experiment_id")
        con.execute("update runs set artifact_uri = 'mlflow-artifacts:/' || experiment_id || '/' || run_uuid || '/artifacts'")
    shutil.rmtree(Path(str(db) + ".trackport"), ignore_errors=True)
    return db


@dataclass
class Measure:
    phase: str
    wall: float
    cpu: float
    rss_mb: float
    returncode: int
    transfer_s: float | None = None


def measure(phase: str, command: list[str], env: dict | None = None) -> Measure:
    """Wall time, CPU seconds and peak RSS of one command, measured by a small process."""
    answer = subprocess.run([sys.executable, str(HERE / "measure.py"), "--", *command],
                            env={**os.environ, **(env or {})}, capture_output=True, text=True, check=True)
    figures = json.loads(answer.stdout)
    if figures["returncode"] != 0:
        print(f"{phase} failed ({figures['returncode']}): {figures['stderr_tail']}", file=sys.stderr)
    return Measure(phase, figures["wall"], figures["cpu"], figures["rss_mb"], figures["returncode"],
                   _transfer_seconds(figures["stdout_tail"]))


def _template(home: Path) -> Path:
    """The schema template the source store's build left in home (MLflow made it)."""
    from trackport.stores.sqlite.schema import installed_mlflow_version, schema_template

    return schema_template(home, installed_mlflow_version()).path


def _transfer_seconds(stdout: str) -> float | None:
    """The transfer's own time from a `--json` summary (stores already open), if printed."""
    try:
        return json.loads(stdout)["elapsed_seconds"]
    except (ValueError, KeyError, TypeError):
        return None


PHASES = ("baseline-read", "baseline-write", "export", "import", "copy", "sqlite-export", "sqlite-import")
NEEDS = {"baseline-write": ("baseline-read",), "import": ("export",), "sqlite-import": ("sqlite-export",)}
REST_PHASES = {"baseline-read", "baseline-write", "export", "import", "copy"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="small")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--server-workers", type=int, default=1)
    parser.add_argument("--interleaved", action="store_true",
                        help="all runs log at the same milliseconds (worst case for MLflow's metric index)")
    parser.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases of {', '.join(PHASES)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each local phase (the median is kept)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    phases = [p for p in args.only.split(",") if p]
    for phase in phases:
        if phase not in PHASES:
            parser.error(f"unknown phase {phase!r}; phases: {', '.join(PHASES)}")
        for needed in NEEDS.get(phase, ()):
            if needed not in phases:
                parser.error(f"phase {phase} needs phase {needed}")
    workload = Workload(*PRESETS[args.preset], interleaved=args.interleaved)
    work = Path(tempfile.mkdtemp(prefix=f"trackport-bench-{args.preset}-"))
    print(f"workload {args.preset}: {workload.runs} runs, {workload.points:,} metric points, "
          f"{workload.runs * workload.artifact_bytes / 1e6:,.0f} MB artifacts; work dir {work}", flush=True)

    # trackport's home for every phase (the first-use phase has its own): the source store
    # built here leaves MLflow's schema template in it.
    env = {"TRACKPORT_HOME": str(work / "trackport-home")}
    os.environ.update(env)
    t0 = time.perf_counter()
    build_source_db(workload, work / "source")
    print(f"source store built in {time.perf_counter() - t0:.1f}s", flush=True)
    servers = []
    if REST_PHASES & set(phases):
        servers = [MlflowServer(work / name, workers=args.server_workers) for name in ("source", "target-1", "target-2")]
        start_all(servers)
    url = {server.workdir.name: server.url for server in servers}
    trackport = [sys.executable, "-m", "trackport.cli.main"]
    baseline = [sys.executable, str(HERE / "raw_baseline.py")]
    workers = ["--workers", str(args.workers)]
    direct = f"sqlite:///{work / 'source' / 'mlflow.db'}?artifacts_destination={work / 'source' / 'mlartifacts'}"
    first_run = f"{0:032x}"
    local_1, local, first_use = work / "local-1", work / "local", work / "local-first-use"
    # phase -> (name, command, what it writes locally: removed before each repetition, its own
    # environment)
    commands = {
        "baseline-read": [("baseline read", [*baseline, "read", url.get("source"), str(work / "raw")], None)],
        "baseline-write": [("baseline write", [*baseline, "write", str(work / "raw"), url.get("target-1")], None)],
        "export": [("trackport export", [*trackport, "export", url.get("source"), str(work / "bundle")], None)],
        "import": [("trackport import", [*trackport, "import", str(work / "bundle"), url.get("target-1")], None)],
        "copy": [("trackport copy", [*trackport, "copy", url.get("source"), url.get("target-2")], None)],
        "sqlite-export": [("export from sqlite file", [*trackport, "export", direct, str(work / "bundle-direct")],
                           work / "bundle-direct")],
        # The first import on a machine also has MLflow build its schema template (in a
        # trackport home of its own); the next pays only start-up (Python, copying the
        # template) and one run; the difference to the whole import is the steady rate.
        "sqlite-import": [
            ("first import, 1 run", [*trackport, "import", str(work / "bundle-direct"),
                                     f"sqlite:///{first_use / 'mlflow.db'}", "--run-id", first_run], first_use,
             {"TRACKPORT_HOME": str(first_use / "home")}),
            ("import 1 run to sqlite", [*trackport, "import", str(work / "bundle-direct"),
                                        f"sqlite:///{local_1 / 'mlflow.db'}", "--run-id", first_run], local_1),
            ("import to local sqlite", [*trackport, "import", str(work / "bundle-direct"),
                                        f"sqlite:///{local / 'mlflow.db'}", "--json"], local),
            # The limit in the same run: the same rows and files written by a minimal script.
            ("raw sqlite write", [sys.executable, str(HERE / "raw_sqlite_baseline.py"), str(work / "bundle-direct"),
                                  str(_template(work / "trackport-home")), str(work / "raw-sqlite")],
             work / "raw-sqlite"),
        ],
    }
    results: list[Measure] = []
    try:
        for phase in PHASES:
            if phase not in phases:
                continue
            if phase not in REST_PHASES:  # PHASES has them first: the local ones run without servers
                for server in servers:
                    server.stop()
            # Against the servers: once, with the workers given. Local phases take seconds,
            # and one stray disk flush moves a single figure by a third, so they run
            # --repeat times (the median is kept), with trackport's default workers.
            repeats, extra = (1, workers) if phase in REST_PHASES else (args.repeat, [])
            for name, command, output, *own_env in commands[phase]:
                runs = []
                for _ in range(repeats):
                    if output is not None:
                        shutil.rmtree(output, ignore_errors=True)
                    os.sync()  # the previous phase's writes are not this one's to flush
                    runs.append(measure(name, [*command, *extra], env={**env, **(own_env[0] if own_env else {})}))
                result = sorted(runs, key=lambda r: r.wall)[len(runs) // 2]
                results.append(result)
                print(f"  {name:<24}{result.wall:>9.1f}s wall {result.cpu:>8.1f}s cpu {result.rss_mb:>8.0f} MB",
                      flush=True)
    finally:
        for server in servers:
            server.stop()

    by = {r.phase: r for r in results}
    print(f"\n{'phase':<26}{'wall s':>9}{'× base':>8}{'cpu s':>8}{'× base':>8}{'RSS MB':>8}")
    for r in results:
        base = by.get("baseline write" if r.phase in ("trackport import", "trackport copy", "baseline write")
                      else "baseline read")
        if base:
            ratios = f"{r.wall / base.wall:>8.2f}{r.cpu:>8.1f}{r.cpu / base.cpu:>8.2f}"
        else:
            ratios = f"{'':>8}{r.cpu:>8.1f}{'':>8}"
        print(f"{r.phase:<26}{r.wall:>9.1f}{ratios}{r.rss_mb:>8.0f}")
    rates = {}
    if "trackport export" in by:
        rates["REST export points/s"] = workload.points / by["trackport export"].wall
    if "export from sqlite file" in by:
        rates["sqlite-file export points/s"] = workload.points / by["export from sqlite file"].wall
        if "trackport export" in by:
            rates["sqlite-file export speed-up over REST export"] = (
                by["trackport export"].wall / by["export from sqlite file"].wall)
    if "import to local sqlite" in by:
        whole, one = by["import to local sqlite"], by["import 1 run to sqlite"]
        rates["local sqlite import points/s, end to end"] = workload.points / whole.wall
        rates["local sqlite import points/s, after start-up"] = (
            (workload.points - workload.metrics * workload.steps) / (whole.wall - one.wall))
        if whole.transfer_s:
            rates["local sqlite import points/s, transfer alone"] = workload.points / whole.transfer_s
            raw = by["raw sqlite write"]
            rates["raw sqlite write points/s, after start-up"] = workload.points / raw.transfer_s
            rates["local sqlite import transfer alone x raw sqlite write"] = whole.transfer_s / raw.transfer_s
    for name, value in rates.items():
        print(f"{name:<50}{value:>14,.1f}")
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    report = {"preset": args.preset, "workload": vars(workload), "workers": args.workers,
              "server_workers": args.server_workers, "phases": [vars(r) for r in results], "rates": rates}
    label = f"{args.preset}{'-interleaved' if args.interleaved else ''}"
    path = out / f"{label}-w{args.workers}-s{args.server_workers}-{int(time.time())}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {path}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
